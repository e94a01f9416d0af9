"""Command line of the harness (from the repository root):

    .venv/bin/python -m Testing.Benchmarks.harness splits                 # write the committed split files
    .venv/bin/python -m Testing.Benchmarks.harness plan --profile development   # units and CPU-time estimate
    .venv/bin/python -m Testing.Benchmarks.harness run --profile development --name dev1 [--settings ...]
        [--pools 0 1] [--arms random coreset strategy=typicality] [--budgets 2] [--threads 1]
    .venv/bin/python -m Testing.Benchmarks.harness report --name dev1     # Markdown, JSON, PNG, goal rows
    .venv/bin/python -m Testing.Benchmarks.harness rule --names dev2 dev  # the default-query choice rule

A run writes one record per unit under ``Testing/Benchmarks/results/harness/<name>/``; running it again skips the
records that exist (resume). ``report`` reads only the records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from . import report, runner
from .splits import BENCHMARK_SPLIT_RULE
from .tasks import ANATOMIES, SPLITS_DIR


def write_splits(out_dir: Path = SPLITS_DIR) -> List[Path]:
    """One JSON file per anatomy: the rule, the reserved cases left out, and the case lists of each part."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, anatomy in ANATOMIES.items():
        split = anatomy.split()
        data = {
            "anatomy": name,
            "rule": BENCHMARK_SPLIT_RULE,
            "data": f"../shared/data/{anatomy.data.name}",
            "reserved_excluded": len(anatomy.reserved()),
            "command": "python -m Testing.Benchmarks.harness splits",
            **split.to_dict(),
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        written.append(path)
    return written


def apply_query_rule(names: List[str], records: Path, out_dir: Path) -> int:
    """Summarise each record folder, apply :mod:`.query_rule` and write ``query_rule.{md,json}``."""
    from dataclasses import asdict

    from . import query_rule
    from .runner import load_records

    summaries = [(name, report.summarise(load_records(records / name))) for name in names]
    decision = query_rule.apply_rule(query_rule.cells_from_summaries(summaries))
    command = "python -m Testing.Benchmarks.harness rule --names " + " ".join(names)
    text = f"# The default-query rule on the development records\n\n`{command}`\n\n" + query_rule.markdown(decision)
    data = {
        "command": command,
        "git": runner.git_revision(),
        "default": decision.default,
        "reason": decision.reason,
        "verdicts": [{**asdict(v), "qualifies": v.qualifies, "failed": v.failed} for v in decision.verdicts],
        "cells": [
            {"candidate": a, "setting": s, "budget": b, **asdict(c)} for (a, s, b), c in sorted(decision.cells.items())
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "query_rule.md").write_text(text)
    (out_dir / "query_rule.json").write_text(json.dumps(data, indent=1) + "\n")
    print(text)
    print("wrote", out_dir / "query_rule.md", out_dir / "query_rule.json")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m Testing.Benchmarks.harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("splits", help="write Testing/Benchmarks/splits/<anatomy>.json")
    run = sub.add_parser("run", help="compute the missing records of a profile")
    run.add_argument("--profile", choices=sorted(runner.PROFILES), required=True)
    run.add_argument("--name", help="record folder name (default: the profile's name)")
    run.add_argument("--settings", nargs="+", help="only these settings")
    run.add_argument("--pools", type=int, nargs="+", help="only these pool replicates")
    run.add_argument("--arms", nargs="+", help="arm names or strategy=<QueryConfig strategy>[,field=value]")
    run.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        help="these budgets instead of the profile's (and the floor; 0 = the whole-pool ceiling)",
    )
    run.add_argument("--draws", type=int, help="only the first N draws of each seeded arm (the rest later)")
    run.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    run.add_argument("--records", type=Path, default=runner.RECORDS, help="parent folder of the record folders")
    plan = sub.add_parser("plan", help="count a profile's units and estimate their CPU time")
    plan.add_argument("--profile", choices=sorted(runner.PROFILES), required=True)
    plan.add_argument("--settings", nargs="+")
    plan.add_argument("--arms", nargs="+")
    plan.add_argument("--budgets", type=int, nargs="+")
    rule = sub.add_parser("rule", help="apply the default-query choice rule to development records")
    rule.add_argument(
        "--names", nargs="+", required=True, help="record folders, the first with a complete cell wins (dev2 dev)"
    )
    rule.add_argument("--records", type=Path, default=runner.RECORDS)
    rule.add_argument("--out-dir", type=Path, default=runner.RESULTS)
    rep = sub.add_parser("report", help="tables, plots and goal rows from the records")
    rep.add_argument("--name", required=True)
    rep.add_argument("--default-arm", default="assft", help="the arm whose goal rows are written")
    rep.add_argument("--records", type=Path, default=runner.RECORDS)
    rep.add_argument("--out-dir", type=Path, default=runner.RESULTS)
    rep.add_argument("--goals", default=str(report.GOALS), help="goals file ('' = do not write rows)")
    args = parser.parse_args(argv)
    if args.command == "splits":
        for path in write_splits():
            print(f"wrote {path}")
        return 0
    if args.command == "plan":
        units = runner.plan(runner.PROFILES[args.profile], settings=args.settings, arms=args.arms, budgets=args.budgets)
        hours = runner.estimate_cpu_hours(units)
        for name, value in hours.items():
            print(f"{name}: {sum(u.setting == name for u in units)} units, ~{value:.1f} CPU hours (one thread)")
        print(f"total: {len(units)} units, ~{sum(hours.values()):.1f} CPU hours")
        return 0
    if args.command == "run":
        import torch

        torch.set_num_threads(args.threads)
        profile = runner.PROFILES[args.profile]
        units = runner.plan(
            profile, settings=args.settings, pools=args.pools, arms=args.arms, budgets=args.budgets, draws=args.draws
        )
        root = args.records / (args.name or args.profile)
        print(f"{len(units)} units under {root}", flush=True)
        summary = runner.run(units, root, profile, log=lambda line: print(line, flush=True))
        print(f"done {summary.done}, skipped {summary.skipped} (already there), {summary.seconds:.0f} s")
        return 0
    if args.command == "rule":
        return apply_query_rule(args.names, args.records, args.out_dir)
    suffix = "" if args.default_arm == "assft" else f"_{args.default_arm}"
    stem = args.out_dir / f"harness_{args.name}{suffix}"
    command = (
        f"python -m Testing.Benchmarks.harness report --name {args.name}"
        + (f" --default-arm {args.default_arm}" if suffix else "")
        + ("" if args.goals else " --goals ''")
    )
    result = report.write(
        args.records / args.name,
        stem,
        default_arm=args.default_arm,
        goals=Path(args.goals) if args.goals else None,
        git=runner.git_revision(),
        command=command,
    )
    print(stem.with_suffix(".md").read_text())
    print("wrote", stem.with_suffix(".md"), stem.with_suffix(".json"), *result["png"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
