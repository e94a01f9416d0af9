"""One query round against several at the same total budget (issue 15 item 2), from annotation-efficiency runs.

Each input is the JSON of one ``annotation_efficiency.py`` run; the runs differ only in ``--rounds`` (same anatomy,
shift, target-test cases, fine-tuning and query settings, which this script checks). For every arm and budget that
several runs share it prints the mean Dice per number of rounds, the paired gap of R rounds over one round and over
random (``query_stats.paired_gap``: mean over the test cases, two-level bootstrap interval, Wilcoxon p), with
random's draw-to-draw noise floor beside it, and how well the live knowledge divergence predicted the interim
model's error in the later rounds.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/query_rounds.py \\
        Testing/Benchmarks/results/annotation_efficiency_power_harsh.json \\
        Testing/Benchmarks/results/annotation_efficiency_power_harsh_rounds2.json \\
        Testing/Benchmarks/results/annotation_efficiency_power_harsh_rounds4.json \\
        --out Testing/Benchmarks/results/query_rounds_harsh
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from Testing.Benchmarks.harness import stats as query_stats  # noqa: E402

#: Settings that must agree between the runs for their per-case Dice to be paired.
SAME = ("anatomy", "shift", "test", "pool", "train", "semi_iterations", "assft_query", "pseudo", "guard")


def load(paths: Sequence[Path]) -> List[Dict[str, Any]]:
    """The reports, sorted by their number of rounds; exits when they cannot be compared."""
    reports = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["experiment"]["rounds"])
    first = reports[0]["experiment"]
    for report in reports[1:]:
        exp = report["experiment"]
        differ = [k for k in SAME if exp.get(k) != first.get(k)]
        if differ:
            sys.exit(f"error: the runs differ in {differ}; only the number of rounds may differ.")
    rounds = [r["experiment"]["rounds"] for r in reports]
    if len(set(rounds)) != len(rounds):
        sys.exit(f"error: two runs have the same number of rounds ({rounds}).")
    return reports


def _runs(report: Dict[str, Any], arm: str, budget: int) -> Optional[List[Dict[str, Any]]]:
    row = report["arms"].get(arm)
    if row is None:
        return None
    entry = row["budgets"].get(str(budget), row["budgets"].get(budget))
    return None if entry is None else entry["runs"]


def _live_kd(runs: Sequence[Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Mean Spearman rho with the interim error of KD and DKD over the later rounds (``None`` with one round)."""
    out: Dict[str, Optional[float]] = {}
    for name in ("knowledge_divergence", "dkd", "asd_voxel_mean"):
        values = [
            record["score_vs_interim_error"][name]["spearman_rho"]
            for run in runs
            for record in run.get("rounds", [])[1:]
            if record.get("score_vs_interim_error", {}).get(name, {}).get("spearman_rho") is not None
        ]
        out[name] = float(np.mean(values)) if values else None
    return out


def compare(reports: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """``{"rows": [...], "noise_floor": {budget: sd}}``: one row per (arm, budget, rounds) present in 2+ runs."""
    cases = reports[0]["experiment"]["test"]
    random_report = next((r for r in reports if "random" in r["arms"]), None)
    arms = sorted({a for r in reports for a in r["arms"] if a != "random"})
    budgets = sorted({int(b) for r in reports for b in r["experiment"]["budgets"]})
    rows, floors = [], {}
    for budget in budgets:
        random_runs = _runs(random_report, "random", budget) if random_report else None
        random_matrix = query_stats.draw_matrix(random_runs, cases) if random_runs else None
        if random_matrix is not None and random_matrix.shape[0] > 1:
            floors[budget] = float(random_matrix.mean(axis=1).std(ddof=1))
        for arm in arms:
            present = [(r["experiment"]["rounds"], _runs(r, arm, budget)) for r in reports]
            present = [(k, runs) for k, runs in present if runs]
            if len(present) < 2:
                continue
            base_rounds, base_runs = present[0]
            base = query_stats.draw_matrix(base_runs, cases)
            for rounds, runs in present:
                matrix = query_stats.draw_matrix(runs, cases)
                dice = [r["mean_dice"] for r in runs]
                rows.append(
                    {
                        "arm": arm,
                        "budget": budget,
                        "rounds": rounds,
                        "mean_dice": float(np.mean(dice)),
                        "sd": query_stats.spread(dice),
                        "n": len(dice),
                        "vs_first": None
                        if rounds == base_rounds
                        else {**query_stats.paired_gap(matrix, base).to_dict(), "reference_rounds": base_rounds},
                        "vs_random": None
                        if random_matrix is None
                        else query_stats.paired_gap(matrix, random_matrix).to_dict(),
                        "live_kd_rho": _live_kd(runs),
                    }
                )
    return {"rows": rows, "noise_floor": floors}


def _gap(g: Optional[Dict[str, Any]]) -> str:
    if g is None:
        return ""
    p = "" if g["p_wilcoxon"] is None or g["p_wilcoxon"] != g["p_wilcoxon"] else f", p {g['p_wilcoxon']:.3f}"
    return f"{g['gap']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]{p}"


def markdown(reports: Sequence[Dict[str, Any]], result: Dict[str, Any], paths: Sequence[Path]) -> str:
    exp = reports[0]["experiment"]
    lines = [
        f"# Query rounds at equal budget ({exp.get('anatomy', 'hippocampus')}, shift {exp['shift']})",
        "",
        "- Runs: "
        + ", ".join(
            f"`{Path(p).name}` ({r['experiment']['rounds']} round(s), revision {r.get('git', '?')})"
            for p, r in zip(paths, reports)
        ),
        f"- Target test: {len(exp['test'])} cases; training seeds {exp['train_seeds']}; fine-tuning labels only "
        f"unless the arm says otherwise; guard {'on' if exp.get('guard', True) else 'off'}",
        "- Noise floor (random's mean Dice, standard deviation between query seeds): "
        + (", ".join(f"B = {b}: {v:.3f}" for b, v in sorted(result["noise_floor"].items())) or "no random arm"),
        "",
        "Gaps: mean over the test cases of the per-case Dice difference, [95 % two-level bootstrap interval "
        "over test cases and query seeds], Wilcoxon p. Live KD: Spearman rho of the knowledge divergence, DKD "
        "and ASD with the interim model's error over the remaining candidates, mean over the later rounds.",
        "",
        "| arm | B | rounds | mean Dice | vs one round | vs random | live KD / DKD / ASD rho |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        sd = "" if row["sd"] is None else f" ± {row['sd']:.3f}"
        kd = row["live_kd_rho"]
        live = " / ".join(
            "n/a" if kd[k] is None else f"{kd[k]:+.2f}" for k in ("knowledge_divergence", "dkd", "asd_voxel_mean")
        )
        lines.append(
            f"| {row['arm']} | {row['budget']} | {row['rounds']} | {row['mean_dice']:.3f}{sd} (n={row['n']}) "
            f"| {_gap(row['vs_first'])} | {_gap(row['vs_random'])} | {live} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="annotation_efficiency JSON files")
    parser.add_argument("--out", type=Path, required=True, help="output stem (.md and .json are added)")
    args = parser.parse_args()
    reports = load(args.runs)
    result = compare(reports)
    text = markdown(reports, result, args.runs)
    out = args.out if args.out.is_absolute() else HERE / args.out
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"inputs": [str(p) for p in args.runs], **result}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
