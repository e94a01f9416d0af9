"""Annotation efficiency (issues 5 and 15): the reports of the committed runs, re-rendered or merged from their JSON.

What the committed runs measured. Setting (issue 5): the pre-trained model is the embedded default (a small MONAI
UNet trained on the *source* split of MSD Hippocampus). The target domain is the other non-reserved cases under a
seeded scanner-appearance shift (``harness.shifts``; kind and strength are parameters), split deterministically into
a target pool (candidates for labelling) and a target test set (``harness.splits``). The 40 cases of
``reserved.txt`` were never read.

Two anatomies (``experiment.anatomy``, issue 15 item 5), each with its data folder, split, pre-trained model and a
mild and a harsh shift (``experiment.shift``; ``harness.shifts.BENCHMARK_SHIFTS``):

* ``hippocampus`` (default): MSD Hippocampus, split by case, the embedded default model;
* ``acdc``: ACDC cine cardiac MRI (RV, myocardium, LV), split by patient (both frames of a patient in one part,
  ``harness.splits.split_acdc``), the ACDC source model that ``scripts/train_acdc_source.py`` writes to
  ``~/.cache/assft/acdc-source`` (not shipped: ACDC is non-commercial).

For each strategy and budget B the pool is ranked, B volumes get their (hidden) expert labels, the pre-trained
model is fine-tuned with the same number of steps and the same seed for every arm, and Dice is measured on the
shifted target-test cases. Arms:

* baselines, supervised fine-tuning on the labelled volumes only: ``random`` (several seeds), ``fg_random``
  (foreground-size-aware random, several seeds: random among the volumes whose predicted foreground is at least
  ``QueryConfig.fg_random_min_share`` of the pool's median), ``mean_entropy``, ``coreset`` (k-centre), ``clasp_pe``
  (volume-level ClaSP PE), ``mc_dropout`` (MONAI Label epistemic) and ``bald`` (MC-dropout mutual information,
  from the same passes);
* ``assft``: the method, DKD+ASD query and selective pseudo-labels;
* ablations: ``dkd_only`` and ``asd_only`` (query ablations, same selective fine-tuning as ``assft``),
  ``assft_no_pseudo`` and ``assft_all_pseudo`` (same query as ``assft``, fine-tuning ablations) and
  ``random_selective`` (random query with ASSFT's selective fine-tuning: separates the query from the SSL);
* ``ceiling``: every pool volume labelled; ``floor``: no adaptation.

One query round (the quick and power profiles) ranked the whole budget from one cold-start pass of the
pre-trained model over the pool, shared by every strategy (MC dropout adds its own stochastic passes). With
``rounds`` R the budget was split over R rounds and each later round re-ranks the pool with a model fine-tuned
on the volumes labelled so far (the frozen pre-trained encoder runs beside it, so DKD's knowledge divergence is
no longer zero).

Outputs: ``results/annotation_efficiency_<profile><tag>.md`` (tables), ``.json`` (everything, per case),
``.png`` (Dice against budget).

**The computing path is superseded by the benchmark harness** (``Testing/Benchmarks/harness``, issue 23:
development / test splits, replicated pools, the random-subset distribution, a converged ceiling; ``python -m
Testing.Benchmarks.harness run ...``); its copies of the data, split, shift and fine-tuning code were deleted. This
script keeps what regenerates the committed issue-15 reports from their JSON (no computation):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --report results/A.json  # re-render
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --tag harsh_variants \
        --merge results/A.json results/B.json                          # one report of both
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from Testing.Benchmarks.harness import stats as query_stats  # noqa: E402

RESULTS = HERE / "results"

#: How a report names each anatomy's split unit and classes (the anatomies of the committed issue-15 reports).
ANATOMY_TEXT = {"hippocampus": ("case", "the two hippocampus classes"), "acdc": ("patient", "RV, myocardium and LV")}


def _home_relative(path: str) -> str:
    """``path`` with the user's home folder written ``~`` (reports name no machine's home)."""
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + "/") else path


def _aubc_cell(row: Dict[str, Any]) -> str:
    """The AUBC of the mean curve, ± the spread of the per-run AUBCs (runs present at every budget)."""
    sd = query_stats.spread(row.get("aubc_runs", []))
    return f"{row['aubc']:.3f}" if sd is None else f"{row['aubc']:.3f} ± {sd:.3f}"


def _cell(entry: Dict[str, Any]) -> str:
    if entry["sd"] is None:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _runs(report: Dict[str, Any], arm: str, budget: int) -> List[Dict[str, Any]]:
    row = report["arms"][arm]
    return row["budgets"][_k(row, budget)]["runs"]


def gap(report: Dict[str, Any], arm: str, reference: str, budget: int):
    """``query_stats.PairedGap`` of ``arm`` over ``reference`` at ``budget``, paired over the target-test cases."""
    cases = report["experiment"]["test"]
    return query_stats.paired_gap(
        query_stats.draw_matrix(_runs(report, arm, budget), cases),
        query_stats.draw_matrix(_runs(report, reference, budget), cases),
    )


def _gap_cell(g) -> str:
    p = "" if math.isnan(g.p_wilcoxon) else f", p {g.p_wilcoxon:.3f}"
    return f"{g.gap:+.3f} [{g.low:+.3f}, {g.high:+.3f}]{p}"


#: Arms that run ASSFT's query with labels-only fine-tuning: the candidates of issue 15's goal.
QUERY_ARMS = (
    "assft_no_pseudo",
    "assft_class_balanced_no_pseudo",
    "asd_only_no_pseudo",
    "dkd_only_no_pseudo",
    "assft_two_stage_no_pseudo",
)
#: The strongest simple baselines of issue 15's goal.
STRONG_BASELINES = ("coreset", "clasp_pe")
#: Issue 15's goal: at least this much over random (bootstrap interval above 0) and over the best strong baseline.
GOAL_OVER_RANDOM, GOAL_OVER_BEST = 0.05, 0.02


def headroom(report: Dict[str, Any], budget: int) -> float:
    """Ceiling minus random's mean Dice at ``budget``: the most any query could gain over random here."""
    random_row = report["arms"]["random"]
    return float(report["ceiling"]["mean"] - random_row["budgets"][_k(random_row, budget)]["mean"])


#: The product's default query (labels-only arm), the reference of :func:`variant_lines`.
DEFAULT_QUERY_ARM = "assft_no_pseudo"


def variant_lines(report: Dict[str, Any]) -> List[str]:
    """The paired gap of each query variant to the default query: the evidence a default change needs."""
    rows = report["arms"]
    variants = [a for a in QUERY_ARMS if a in rows and a != DEFAULT_QUERY_ARM]
    if DEFAULT_QUERY_ARM not in rows or not variants:
        return []
    budgets = report["experiment"]["budgets"]
    lines = [
        "",
        f"Difference of each query variant to the default ({rows[DEFAULT_QUERY_ARM]['label']}): mean "
        "over the test cases of the per-case Dice difference, [95 % bootstrap interval], Wilcoxon p (same "
        "model, same fine-tuning):",
        "",
        "| variant | " + " | ".join(f"B = {b}" for b in budgets) + " |",
        "|" + "---|" * (len(budgets) + 1),
    ]
    for name in variants:
        lines.append(
            f"| {rows[name]['label']} | "
            + " | ".join(_gap_cell(gap(report, name, DEFAULT_QUERY_ARM, b)) for b in budgets)
            + " |"
        )
    return lines


def comparison_lines(report: Dict[str, Any]) -> List[str]:
    """The paired gaps to random, the noise floor, and the goal of issue 15 (met / missed)."""
    exp = report["experiment"]
    budgets = exp["budgets"]
    rows = report["arms"]
    if "random" not in rows:
        return []
    floors = [gap(report, "random", "random", b).noise_floor for b in budgets]
    lines = [
        "",
        "Difference to random: mean over the target-test cases of the per-case Dice difference (each side "
        "averaged over its runs), [95 % interval] from a two-level bootstrap that resamples the test cases "
        "and the query seeds together, and the two-sided Wilcoxon signed-rank p over the test cases. "
        "Noise floor: the standard deviation of random's mean Dice between its query seeds "
        + ", ".join(f"B = {b}: {f:.3f}" for b, f in zip(budgets, floors))
        + ".",
        "",
    ]
    lines += [
        "| strategy | " + " | ".join(f"B = {b}" for b in budgets) + " | noise floor |",
        "|" + "---|" * (len(budgets) + 2),
    ]
    for name, row in rows.items():
        if name == "random":
            continue
        cells = [_gap_cell(gap(report, name, "random", b)) for b in budgets]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " | " + " / ".join(f"{f:.3f}" for f in floors) + " |")
    candidates = [a for a in QUERY_ARMS if a in rows]
    baselines = [a for a in STRONG_BASELINES if a in rows]
    if not candidates:
        return lines
    lines += [
        "",
        f"Goal of issue 15 (labels-only fine-tuning): ASSFT's query >= random + {GOAL_OVER_RANDOM} with the "
        f"interval above 0, and >= the best of {' / '.join(baselines) or 'the strong baselines'} + "
        f"{GOAL_OVER_BEST} (the best chosen per budget by its mean). Headroom: the ceiling (every pool "
        "volume labelled, same fine-tuning) minus random; where it is below "
        f"{GOAL_OVER_RANDOM}, no query can reach the goal over random in this setting.",
        "",
        "| query | B | vs random | vs best strong baseline | headroom | goal |",
        "|---|---|---|---|---|---|",
    ]
    for name in candidates:
        for b in budgets:
            over_random = gap(report, name, "random", b)
            best = max(baselines, key=lambda a: rows[a]["budgets"][_k(rows[a], b)]["mean"]) if baselines else None
            over_best = gap(report, name, best, b) if best else None
            met = (
                over_random.gap >= GOAL_OVER_RANDOM
                and over_random.low > 0
                and (over_best is None or over_best.gap >= GOAL_OVER_BEST)
            )
            lines.append(
                f"| {rows[name]['label']} | {b} | {_gap_cell(over_random)} | "
                + (f"{best}: {_gap_cell(over_best)}" if best else "n/a")
                + f" | "
                f"{headroom(report, b):+.3f} | {'met' if met else 'missed'} |"
            )
    return lines


def markdown(report: Dict[str, Any]) -> str:
    exp = report["experiment"]
    budgets = exp["budgets"]
    m = report["machine"]
    t = report["timings"]
    guard = "on" if exp.get("guard", True) else "off"
    anatomy_name = exp.get("anatomy", "hippocampus")
    grouping, classes = ANATOMY_TEXT[anatomy_name]
    where = "" if anatomy_name == "hippocampus" else f", {anatomy_name}"
    lines = [f"# Annotation efficiency ({exp['profile']} profile{where}{' ' + exp['tag'] if exp['tag'] else ''})", ""]
    lines += [
        f"- Command: `{exp['command']}`",
        f"- Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram']} RAM, torch {m['torch']}, "
        f"GPU {'yes' if m['gpu'] else 'no'}; load average at start {m['load_average_at_start']}; "
        f"{exp['workers']} worker process(es) x 1 torch thread; revision {report['git']}",
        f"- Wall time: **{t['total_s'] / 60:.1f} min** (cold-start analysis {t['cold_start_analysis_s']:.0f} s, "
        f"selection {t['selection_s']:.0f} s, fine-tuning + evaluation {t['finetune_s']:.0f} s; "
        f"{t['mean_train_seconds_per_run']:.1f} s of training per run on average)",
        f"- Shift: `{exp['shift']}`; target pool {len(exp['pool'])} cases ({exp['pool'][0]} .. {exp['pool'][-1]}), "
        f"target test {len(exp['test'])} cases ({exp['test'][0]} .. {exp['test'][-1]}) (hash split, reserved cases "
        "excluded)",
        f"- Fine-tuning, identical for every arm: {exp['train']['iterations']} supervised steps + "
        f"{exp['semi_iterations']} second-stage steps through `adapt_model` (guard {guard}; batch "
        f"{exp['train']['batch_size']} patches {exp['train']['patch_size'] or 'of the card'}, AdamW lr "
        f"{exp['train']['learning_rate']}, pseudo-loss weight {exp['train']['pseudo_weight']} ramped over "
        f"{exp['train']['rampup_fraction']:.0%} of the stage), training seeds {exp['train_seeds']}; query rounds "
        f"{exp['rounds']}; random seeds {exp['random_seeds']}; MC dropout {exp['mc_samples']} passes",
        f"- ASSFT query settings: `{ {k: v for k, v in exp['assft_query'].items() if k in _SHOWN_QUERY} }`; "
        f"pseudo-labels: `{ {k: v for k, v in exp['pseudo'].items() if k in _SHOWN_PSEUDO} }`",
    ]
    for index, part in enumerate(exp.get("merged_from", [])):
        lines.insert(
            3 + index,
            f"- Merged from `{part['file']}` (revision {part['git']}, "
            f"{part['total_s'] / 60:.1f} min): `{part['command']}`",
        )
    if anatomy_name != "hippocampus":
        lines.insert(
            3, f"- Anatomy: {anatomy_name}, pre-trained model `{_home_relative(exp['model'])}` (split by {grouping})"
        )
    lines += [
        "",
        f"Mean target-test Dice (mean of {classes}); ± is the standard deviation over "
        "runs (random query seeds x training seeds), shown where an arm has more than one run. AUBC: "
        "normalised area under the Dice-versus-budget curve on a log2 budget axis, ± the spread of the "
        "per-run AUBCs.",
        "",
    ]
    header = "| strategy | fine-tuning | " + " | ".join(f"B = {b}" for b in budgets) + " | AUBC |"
    lines += [header, "|" + "---|" * (len(budgets) + 3)]
    lines.append(
        "| no adaptation (floor) | none | "
        + " | ".join(f"{report['floor']['mean_dice']:.3f}" for _ in budgets)
        + f" | {report['floor']['mean_dice']:.3f} |"
    )
    for row in report["arms"].values():
        cells = [_cell(row["budgets"][_k(row, b)]) for b in budgets]
        n = row["budgets"][_k(row, budgets[0])]["n"]
        lines.append(
            f"| {row['label']}{f' (n={n})' if n > 1 else ''} | {row['pseudo']} | "
            + " | ".join(cells)
            + f" | {_aubc_cell(row)} |"
        )
    ceiling = report["ceiling"]
    lines.append(
        f"| all {len(exp['pool'])} pool volumes labelled (ceiling) | none | "
        + " | ".join(_cell(ceiling) for _ in budgets)
        + f" | {ceiling['mean']:.3f} |"
    )
    lines += comparison_lines(report)
    lines += variant_lines(report)
    lines += [
        "",
        "Mean cold-start Dice of the pre-trained model on the volumes each arm chose (low = the arm "
        "picked volumes the model fails on; hidden labels, diagnostic only):",
        "",
    ]
    lines += ["| strategy | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    for row in report["arms"].values():
        cells = [
            f"{np.mean([r['selected_pretrained_dice'] for r in row['budgets'][_k(row, b)]['runs']]):.3f}"
            for b in budgets
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    diag = report["pool_diagnostics"]
    lines += [
        "",
        f"Pool under the shift, pre-trained model: mean Dice {diag['pool_pretrained_mean_dice']:.3f} "
        f"(range {diag['pool_pretrained_dice_range'][0]:.3f} to {diag['pool_pretrained_dice_range'][1]:.3f}). "
        "Spearman correlation of each cold-start score with the model's error (1 - Dice) over the pool:",
        "",
    ]
    lines += ["| score | rho | p |", "|---|---|---|"]
    for name, v in diag["score_vs_pretrained_error"].items():
        if v["spearman_rho"] is None:
            lines.append(f"| {name} | n/a (constant over the pool) | |")
        else:
            lines.append(f"| {name} | {v['spearman_rho']:+.2f} | {v['p']:.3f} |")
    lines += interim_table(report)
    pseudo_rows = []
    for row in report["arms"].values():
        if row["pseudo"] == "none":
            continue
        for b in budgets:
            runs = row["budgets"][_k(row, b)]["runs"]
            kept = [len(r["train"]["kept"]) for r in runs]
            quality = [r["train"].get("kept_pseudo_dice") for r in runs if r["train"].get("kept_pseudo_dice")]
            shown = f"{np.mean(quality):.3f}" if quality else "not recorded"
            pseudo_rows.append(f"| {row['label']} | {b} | {np.mean(kept):.1f} | {shown} |")
    if pseudo_rows:
        lines += [
            "",
            "Pseudo-labelled volumes used, and their true Dice against the hidden labels (diagnostic):",
            "",
            "| strategy | B | volumes | Dice of the pseudo-labels |",
            "|---|---|---|---|",
        ] + pseudo_rows
    lines += ["", f"![Dice against budget]({Path(report['png']).name})", ""]
    return "\n".join(lines)


_INTERIM_SCORES = (
    "asd_voxel_mean",
    "asd_class_balanced",
    "clasp_class_mean",
    "mean_entropy",
    "dkd",
    "knowledge_divergence",
    "mc_dropout",
    "bald",
)


def interim_rhos(row: Dict[str, Any]) -> Dict[str, List[float]]:
    """``{score: [Spearman rho with the interim model's error]}`` over the later rounds of every run of an arm."""
    collected: Dict[str, List[float]] = {}
    for entry in row["budgets"].values():
        for run in entry["runs"]:
            for record in run.get("rounds", [])[1:]:
                for name, value in record.get("score_vs_interim_error", {}).items():
                    if value.get("spearman_rho") is not None:
                        collected.setdefault(name, []).append(value["spearman_rho"])
    return collected


def interim_table(report: Dict[str, Any]) -> List[str]:
    """With several rounds: Spearman rho of each score with the interim (adapted) model's error over the remaining
    candidates, mean over the later rounds of every path of an arm (hidden labels, diagnostic only)."""
    rows = []
    for row in report["arms"].values():
        collected = {n: v for n, v in interim_rhos(row).items() if not n.startswith("kd_")}
        if collected:
            cells = [f"{np.mean(collected[n]):+.2f}" if n in collected else "n/a" for n in _INTERIM_SCORES]
            rows.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return _interim_lines(rows) + kd_variant_table(report)


def kd_variant_table(report: Dict[str, Any]) -> List[str]:
    """With several rounds: Spearman rho of the knowledge divergence of each metric and number of deepest encoder
    stages with the interim model's error (``ASSFTActive.query.kd_variant_correlations``), mean over the later
    rounds of an arm's paths, with the number of rounds averaged (hidden labels, diagnostic only)."""
    rows, names = [], []
    for row in report["arms"].values():
        collected = {n: v for n, v in interim_rhos(row).items() if n.startswith("kd_")}
        if collected:
            names = names or list(collected)
            count = max(len(v) for v in collected.values())
            rows.append(
                f"| {row['label']} | {count} | "
                + " | ".join(f"{np.mean(collected[n]):+.2f}" if n in collected else "n/a" for n in names)
                + " |"
            )
    if not rows:
        return []
    return [
        "",
        "Knowledge divergence variants after adaptation: Spearman rho with the interim model's error over "
        "the remaining candidates, per divergence and number of deepest encoder stages (features globally "
        "mean-pooled), mean over the arm's later rounds (hidden labels, diagnostic only):",
        "",
        "| strategy | rounds | " + " | ".join(n[3:] for n in names) + " |",
        "|" + "---|" * (len(names) + 2),
    ] + rows


def _interim_lines(rows: List[str]) -> List[str]:
    return [
        "",
        "After adaptation (rounds 2+): Spearman rho of each score with the interim model's error over the "
        "remaining candidates, mean over the arm's later rounds (KD is live here; hidden labels, diagnostic "
        "only):",
        "",
        "| strategy | " + " | ".join(_INTERIM_SCORES) + " |",
        "|" + "---|" * (len(_INTERIM_SCORES) + 1),
    ] + rows


_SHOWN_QUERY = (
    "combine",
    "dkd_weight",
    "asd_reduce",
    "div_space",
    "fg_mask",
    "fg_dilation",
    "kd_metric",
    "kd_stages",
    "normalise_scores",
)
_SHOWN_PSEUDO = ("select_mode", "keep_fraction", "dist_weight", "confidence", "voxel_threshold", "teacher")


def _k(row: Dict[str, Any], budget: int):
    return budget if budget in row["budgets"] else str(budget)


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = report["experiment"]
    budgets = exp["budgets"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"assft": dict(color="C3", lw=2.5, marker="o"), "random": dict(color="k", lw=2, marker="s")}
    for index, (name, row) in enumerate(report["arms"].items()):
        means = [row["budgets"][_k(row, b)]["mean"] for b in budgets]
        sds = [row["budgets"][_k(row, b)]["sd"] or 0.0 for b in budgets]
        style = styles.get(
            name,
            dict(
                color=f"C{(index + 4) % 10}",
                lw=1.2,
                marker=".",
                ls="--" if name.startswith(("assft_", "dkd", "asd", "random_")) else "-",
            ),
        )
        ax.errorbar(budgets, means, yerr=sds if any(sds) else None, label=name, capsize=3, **style)
    ax.axhline(report["floor"]["mean_dice"], color="grey", ls=":", label="no adaptation")
    ax.axhline(report["ceiling"]["mean"], color="grey", ls="-.", label=f"all {len(exp['pool'])} labelled")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labelled target volumes (budget)")
    ax.set_ylabel("target-test mean Dice")
    anatomy = exp.get("anatomy", "hippocampus")
    ax.set_title(
        f"Annotation efficiency{'' if anatomy == 'hippocampus' else ', ' + anatomy}, {exp['profile']} "
        f"profile, shift {exp['shift']['kind']} {exp['shift']['strength']}"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: re-render or merge committed reports (the computing path is the harness's)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="", help="suffix of the output names (for variants)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="write one report from the arms of several runs of the same experiment (no "
        "computation; name it with --tag)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="only re-render the .md and .png of an earlier run's JSON (no computation)",
    )
    return parser


#: Experiment settings two runs must share for their arms to stand in one table.
MERGE_KEYS = (
    "anatomy",
    "model",
    "data",
    "pool",
    "test",
    "budgets",
    "rounds",
    "shift",
    "train",
    "semi_iterations",
    "pseudo",
    "assft_query",
    "random_seeds",
    "train_seeds",
    "mc_samples",
    "guard",
    "profile",
)


#: How far two runs' floor, ceiling or shared arm may differ and still be the same experiment: CPU training of one
#: seeded run repeats to about 1e-5 mean Dice between processes (measured: ceilings 2e-6 and 6e-6 apart), far below
#: the reported digits and every noise floor.
MERGE_TOLERANCE = 1e-4


def merge_reports(reports: Sequence[Dict[str, Any]], names: Sequence[str] = ()) -> Dict[str, Any]:
    """One report holding the arms of several runs of the same experiment (add arms without re-running the rest).

    Each run seeds every arm by itself, so an arm's numbers do not depend on which other arms ran beside it; only
    runs with equal :data:`MERGE_KEYS` settings and the same floor and ceiling (within :data:`MERGE_TOLERANCE`) may
    be merged. The first run
    gives the machine, the pool diagnostics and the pool evidence; ``experiment["merged_from"]`` keeps each run's
    command, revision and wall time, and the timings are their sums.

    Raises:
        ValueError: fewer than two reports, a setting that differs, or one arm with different results in two runs.
    """
    if len(reports) < 2:
        raise ValueError("merging needs at least two reports.")
    names = list(names) or [f"report {i + 1}" for i in range(len(reports))]
    first = reports[0]
    for name, other in zip(names[1:], reports[1:]):
        for key in MERGE_KEYS:
            if first["experiment"].get(key) != other["experiment"].get(key):
                raise ValueError(f"cannot merge {name}: its setting {key!r} differs from {names[0]}'s.")
        for part, key in (("floor", "mean_dice"), ("ceiling", "mean")):
            if not math.isclose(first[part][key], other[part][key], abs_tol=MERGE_TOLERANCE):
                raise ValueError(
                    f"cannot merge {name}: its {part} ({other[part][key]:.6f}) differs from "
                    f"{names[0]}'s ({first[part][key]:.6f}); the runs are not the same experiment."
                )
    arms: Dict[str, Any] = {}
    for name, report in zip(names, reports):
        for arm, row in report["arms"].items():
            if arm in arms and not math.isclose(arms[arm]["aubc"], row["aubc"], abs_tol=MERGE_TOLERANCE):
                raise ValueError(f"arm {arm!r} has different results in {name} and an earlier report.")
            arms.setdefault(arm, row)
    merged = json.loads(json.dumps(first))
    merged["arms"] = arms
    merged["experiment"]["arms"] = list(arms)
    merged["experiment"]["merged_from"] = [
        {"file": name, "command": r["experiment"]["command"], "git": r["git"], "total_s": r["timings"]["total_s"]}
        for name, r in zip(names, reports)
    ]
    merged["git"] = " + ".join(dict.fromkeys(r["git"] for r in reports))
    merged["timings"] = {key: float(sum(r["timings"][key] for r in reports)) for key in first["timings"]}
    runs = sum(
        r["timings"]["finetune_s"] / r["timings"]["mean_train_seconds_per_run"]
        for r in reports
        if r["timings"]["mean_train_seconds_per_run"]
    )
    merged["timings"]["mean_train_seconds_per_run"] = (
        float(sum(r["timings"]["finetune_s"] for r in reports) / runs) if runs else 0.0
    )
    return merged


def report_stem(out_dir: Path, anatomy: str, profile: str, tag: str) -> Path:
    """The one naming rule of the outputs: ``annotation_efficiency_[<anatomy>_]<profile>[_<tag>]`` (no suffix)."""
    where = "" if anatomy == "hippocampus" else f"{anatomy}_"
    return out_dir / f"annotation_efficiency_{where}{profile}{('_' + tag) if tag else ''}"


def write_report(report: Dict[str, Any], stem: Path, with_json: bool = True) -> None:
    """Write ``stem``.md and .png (and .json unless ``with_json`` is false) and print the tables."""
    report["png"] = str(stem.with_suffix(".png"))
    plot(report, stem.with_suffix(".png"))
    if with_json:
        stem.with_suffix(".json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    text = markdown(_jsonable(report))
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


def render(json_path: Path) -> None:
    """Re-render the tables and the plot of an earlier run from its JSON (after a change of the report only)."""
    write_report(json.loads(json_path.read_text()), json_path.with_suffix(""), with_json=False)


def main() -> None:
    global ARGS
    ARGS = build_parser().parse_args()
    if ARGS.report is not None:
        render(ARGS.report)
        return
    if ARGS.merge:
        missing = [str(path) for path in ARGS.merge if not path.is_file()]
        if missing:
            raise SystemExit(f"error: --merge: no such report: {', '.join(missing)}")
        reports = [json.loads(path.read_text()) for path in ARGS.merge]
        try:
            merged = merge_reports(reports, [path.name for path in ARGS.merge])
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error
        merged["experiment"]["tag"] = ARGS.tag
        merged["experiment"]["command"] = " ".join(
            ["PYTHONPATH=. .venv/bin/python", "Testing/Benchmarks/annotation_efficiency.py", *sys.argv[1:]]
        )
        stem = report_stem(ARGS.out_dir, merged["experiment"]["anatomy"], merged["experiment"]["profile"], ARGS.tag)
        if any(stem.with_suffix(".json").resolve() == path.resolve() for path in ARGS.merge):
            raise SystemExit(f"--merge would overwrite its input {stem}.json; give another --tag.")
        ARGS.out_dir.mkdir(parents=True, exist_ok=True)
        write_report(merged, stem)
        return
    raise SystemExit(
        "error: pass --report JSON or --merge JSON...; runs are made by the benchmark harness now: "
        "python -m Testing.Benchmarks.harness run --profile development (see RESULTS.md)"
    )


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
