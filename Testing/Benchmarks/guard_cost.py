"""What does the guard cost? Wall time of a guarded Adapt as a ratio to an unguarded Adapt of the same recipe.

One process, one thread (``torch.set_num_threads(1)``), the variants one after the other on the same volumes: the
shipped sample's pool (12 hippocampus volumes under a simulated scanner shift), the first ``--labelled`` of them
labelled with their shipped labels, the embedded default model, the product's recipe with ``--steps`` steps per
stage (the default recipe has 100) and held-out scoring every ``--every`` steps (so a fold is scored about as
often as with 100 steps and ``every`` 25). Variants:

* ``unguarded``: ``validation.guard = false`` (one training run; the unit of the ratio);
* ``guarded``: the guard as shipped (three folds as long as the final run, then the final run);
* ``fast_<f>`` (``--fast f``): folds of fraction ``f`` of every stage's steps (``validation.fold_fraction``);
  ``fast_<f>_pool<p>`` (``--fast f:p``): also only ``p`` unlabelled volumes pseudo-labelled inside the folds
  (``validation.fold_pool_cases``).

Writes ``Testing/Benchmarks/results/guard_cost.json`` (the runs, their decisions and the ratios) and merges one goal
row per guarded variant (topic ``speed``, goal ``guard_cost_ratio``, split ``dev``: the sample is no test split)
into ``Testing/Benchmarks/results/goals.json`` by key, leaving other rows as they are.

Usage (about 3 minutes on one core; check that the machine is otherwise idle):
    .venv/bin/python Testing/Benchmarks/guard_cost.py
    .venv/bin/python Testing/Benchmarks/guard_cost.py --steps 20 --every 5 --fast 0.5 0.34 0.34:3 0.25:3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "Testing" / "Benchmarks" / "results"
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"
if str(REPO) not in sys.path:  # the goals file's merge lives in the harness package
    sys.path.insert(0, str(REPO))


def revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ASSFTActive"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        return head + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_goal_rows(path: Path, report: Dict[str, Any], source: Path) -> None:
    """Merge :func:`goal_rows` into the goals file; a variant ``source`` no longer holds leaves no stale row."""
    from Testing.Benchmarks.harness.goals import merge_goal_rows

    merge_goal_rows(path, goal_rows(report, source), drop_source_rows=True)


def goal_rows(report: Dict[str, Any], source: Path) -> List[Dict[str, Any]]:
    """One ``guard_cost_ratio`` row per guarded variant of a report."""
    return [
        {
            "topic": "speed",
            "goal": "guard_cost_ratio",
            "setting": f"sample_tiny_{r['variant']}",
            "budget": len(report["setting"]["labelled"]),
            "split": "dev",
            "value": r["ratio"],
            "ci_low": None,
            "ci_high": None,
            "target": 2.0,
            "higher_is_better": False,
            "source": str(source.resolve().relative_to(REPO)),
            "git": report["revision"],
        }
        for r in report["runs"][1:]
    ]


def run_variant(
    name: str,
    validation: Dict[str, Any],
    images: Dict[str, Path],
    labels: Dict[str, Path],
    steps: int,
    every: int,
    work: Path,
) -> Dict[str, Any]:
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig

    config = FinetuneConfig.from_dict(
        {
            "train": {"iterations": steps},
            "semi_iterations": steps,
            "validation": dict({"every": every, "hd95": False}, **validation),
        }
    )
    started, cpu = time.perf_counter(), time.process_time()
    result = adapt_model(images, labels, store=work / name, model="default", name="site", config=config)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    decision = result.decision
    print(
        f"{name:>12}: {seconds:7.1f} s wall, {cpu:7.1f} s CPU, activated {result.activated}, "
        f"stop step {decision.stop_step}, gain {decision.gain:+.3f}",
        flush=True,
    )
    return {
        "variant": name,
        "validation": validation,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "activated": result.activated,
        "stop_step": decision.stop_step,
        "failed": decision.failed,
        "gain": None if decision.gain != decision.gain else round(decision.gain, 4),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per stage (default recipe: 100)")
    parser.add_argument("--every", type=int, default=3, help="held-out scoring interval of the full folds")
    parser.add_argument("--labelled", type=int, default=3, help="labelled volumes (the demo's budget: 3)")
    parser.add_argument(
        "--fast",
        nargs="*",
        default=["0.5", "0.34", "0.34:3", "0.25:3"],
        help="fast variants: a fold fraction, or fraction:unlabelled volumes pseudo-labelled in folds",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "guard_cost.json")
    parser.add_argument("--goals", type=Path, default=RESULTS / "goals.json")
    parser.add_argument(
        "--goals-only", action="store_true", help="measure nothing: write the goal rows of the existing --json again"
    )
    args = parser.parse_args(argv)
    if args.goals_only:
        report = json.loads(args.json.read_text(encoding="utf-8"))
        write_goal_rows(args.goals, report, args.json)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    images = {p.name.split(".")[0]: p for p in sorted((SAMPLE / "images").glob("*.nii.gz"))}
    labelled = sorted(images)[: args.labelled]
    labels = {c: SAMPLE / "labels" / images[c].name for c in labelled}
    variants = [("unguarded", {"guard": False}), ("guarded", {})]
    for spec in args.fast:
        fraction, _, pool = spec.partition(":")
        fast: Dict[str, Any] = {"fold_fraction": float(fraction)}
        if pool:
            fast["fold_pool_cases"] = int(pool)
        variants.append((f"fast_{float(fraction):g}" + (f"_pool{int(pool)}" if pool else ""), fast))
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for name, validation in variants:
            runs.append(run_variant(name, validation, images, labels, args.steps, args.every, Path(work)))
    for run in runs:
        run["ratio"] = round(run["cpu_seconds"] / runs[0]["cpu_seconds"], 3)
        run["wall_ratio"] = round(run["seconds"] / runs[0]["seconds"], 3)
    git = revision()
    report = {
        "what": (
            "time of a guarded Adapt / an unguarded Adapt of the same recipe on the same volumes; 'ratio' is of "
            "the process's CPU time (one thread, so it equals wall time on an idle machine and is much less "
            "inflated than wall time by other processes on a shared one: the unguarded run took 17.3 s CPU at "
            "load 2.6 and 19.6 s at load 4-5), 'wall_ratio' of wall time"
        ),
        "command": " ".join(
            ["python", "Testing/Benchmarks/guard_cost.py"] + list(sys.argv[1:] if argv is None else argv)
        ),
        "machine": {
            "platform": platform.platform(),
            "threads": 1,
            "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
        },
        "revision": git,
        "split": "dev",
        "setting": {
            "data": "shipped sample pool (12 hippocampus volumes, simulated scanner shift)",
            "labelled": labelled,
            "model": "embedded default",
            "steps_per_stage": args.steps,
            "every": args.every,
            "predict_pool": False,
        },
        "runs": runs,
        "ratio": {r["variant"]: r["ratio"] for r in runs[1:]},
        "same_decision_as_guarded": {
            r["variant"]: (r["activated"], r["failed"]) == (runs[1]["activated"], runs[1]["failed"]) for r in runs[2:]
        },
    }
    from ASSFTActive.io import atomic_write_text

    atomic_write_text(args.json, json.dumps(report, indent=1) + "\n")
    write_goal_rows(args.goals, report, args.json)
    print(json.dumps(report["ratio"]), "written to", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
