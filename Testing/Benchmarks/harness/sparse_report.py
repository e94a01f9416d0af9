"""The effort part of a run's report (issue 27 item 4), from records that carry an ``effort`` (:mod:`.sparse`):
a Dice-versus-effort table and a PNG per setting, and the goal rows of topic ``sparse``.

Per (setting, split), for every arm and budget B (an effort of B whole volumes; a volume arm labels B volumes):
the mean Dice over pools and the mean effort spent (slices touched, slice-equivalents, voxels painted from scratch,
voxels changed from the pre-fill), and that effort in whole-volume equivalents (divided by the pool's mean effort of
one whole volume in the same measure). The floor is the curve's point at effort 0.

Goal rows, per effort measure (``effort``: ``slices``, ``voxels_changed`` or ``voxels_painted``) and split, following
:func:`.report.goal_rows`' form (``split`` named, intervals from :mod:`.stats`):

- ``gap_vs_whole_volume`` (per budget): the sparse arm of the measure (:data:`SPARSE_DEFAULTS`) minus whole-volume
  labelling at the same budget (:data:`WHOLE_VOLUME`: ``assft``, whose voxels changed are those of correcting its
  volumes' pre-fill, or ``prefill_correction`` when run), :func:`.stats.clustered_gap`; target +0.03;
- ``gap_vs_random_slices`` (per budget): the sparse arm minus random slices at the same effort; target +0.02;
- ``effort_ratio_to_95pct_ceiling`` (``budget`` null): the effort the sparse arm needs to reach 95 % of the
  converged whole-pool ceiling's Dice over the effort whole-volume labelling needs (:func:`.stats.effort_ratio`, on
  the curves through the floor at effort 0 and the measured budgets); target <= 0.5. ``bound`` says when a curve
  did not reach it within the measured budgets (``upper``: only the sparse arm did, the ratio is at most the value).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import report as base
from . import stats
from .arms import MEASURES
from .sparse import MEASURE_FIELD

#: Per measure: the sparse arm whose goal rows are written and its random-unit reference.
SPARSE_DEFAULTS = {
    "slices": ("slices_by_score", "slices_random"),
    "voxels_changed": ("slices_by_score_prefill", "slices_random_prefill"),
    "voxels_painted": ("regions_by_score_painted", "regions_random_painted"),
}
#: Per measure: the whole-volume reference, the first one present in the records.
WHOLE_VOLUME = {"slices": ("assft",), "voxels_changed": ("prefill_correction", "assft"), "voxels_painted": ("assft",)}
#: Per measure: the plot's words for it.
MEASURE_TITLES = {
    "slices": "painted slices",
    "voxels_changed": "voxels changed from the pre-fill",
    "voxels_painted": "foreground voxels painted",
}
#: The share of the converged ceiling's Dice the effort ratio is measured at.
CEILING_SHARE = 0.95
#: The effort fields of the table, in order.
EFFORT_FIELDS = ("slices_touched", "slice_equivalents", "voxels_painted", "voxels_changed")


def has_effort(records: Sequence[Mapping[str, Any]]) -> bool:
    """Some record carries an annotation effort (a run of the effort profile or of a slice / region arm)."""
    return any(isinstance(r.get("effort"), Mapping) for r in records)


def _value(record: Mapping[str, Any], measure: str) -> float:
    return float(record["effort"][MEASURE_FIELD[measure]])


def _pool_dice(records: Sequence[Mapping[str, Any]], cases: Sequence[str]) -> float:
    return float(np.nanmean(base._case_matrix(records, cases)))


def _ceiling_per_pool(cells, cases: Sequence[str]) -> Tuple[Optional[int], Dict[int, float]]:
    """The ceiling's step count (the flat point, else the best measured) and its Dice per pool."""
    ceiling = base._ceiling(cells, cases)
    if not ceiling["by_steps"]:
        return None, {}
    steps = ceiling["flat_at"]
    if steps is None:
        steps = int(max(ceiling["by_steps"], key=lambda s: ceiling["by_steps"][s]))
    cell = cells[(f"ceiling_{steps}", 0)]
    return int(steps), {p: _pool_dice(rs, cases) for p, rs in cell.items()}


def summarise(
    records: Sequence[Mapping[str, Any]],
    sparse_defaults: Mapping[str, Tuple[str, str]] = SPARSE_DEFAULTS,
) -> Dict[str, Any]:
    """Per (setting, split): the Dice-versus-effort table, the gaps and the effort ratios (see the module
    docstring)."""
    out: Dict[str, Any] = {}
    for (setting, split), cells in sorted(base._index(records).items()):
        effort_cells = {
            key: cell
            for key, cell in cells.items()
            if key[1] > 0 and all(isinstance(r.get("effort"), Mapping) for rs in cell.values() for r in rs)
        }
        if not effort_cells:
            continue
        any_record = next(iter(next(iter(cells.values())).values()))[0]
        cases, clusters = list(any_record["eval_cases"]), list(any_record["clusters"])
        floor = {p: _pool_dice(rs, cases) for p, rs in cells.get(("floor", 0), {}).items()}
        steps, ceiling = _ceiling_per_pool(cells, cases)
        with_effort = [r for cell in effort_cells.values() for rs in cell.values() for r in rs]
        per_volume = {m: float(np.mean([r["effort"]["per_volume"][m] for r in with_effort])) for m in MEASURES}
        rows = []
        for (arm, budget), cell in sorted(effort_cells.items()):
            flat = [r for rs in cell.values() for r in rs]
            row = {
                "arm": arm,
                "budget": budget,
                "unit": flat[0]["arm"].get("unit", "volume"),
                "measure": flat[0]["arm"].get("measure") or None,
                "pools": sorted(cell),
                "labelled_sets": len(flat),
                "mean_dice": float(np.mean([_pool_dice(rs, cases) for rs in cell.values()])),
                "volumes_labelled": float(np.mean([len(r.get("labelled") or []) for r in flat])),
                **{f: float(np.mean([r["effort"][f] for r in flat])) for f in EFFORT_FIELDS},
            }
            row["volume_equivalents"] = {
                m: (float(np.mean([_value(r, m) for r in flat])) / per_volume[m] if per_volume[m] > 0 else None)
                for m in MEASURES
            }
            rows.append(row)
        entry: Dict[str, Any] = {
            "setting": setting,
            "split": split,
            "cases": len(cases),
            "floor": float(np.mean(list(floor.values()))) if floor else None,
            "ceiling": float(np.mean(list(ceiling.values()))) if ceiling else None,
            "ceiling_steps": steps,
            "per_volume": per_volume,
            "rows": rows,
            "gaps": [],
            "ratios": [],
        }
        for measure in (m for m in MEASURES if m in sparse_defaults):
            arm, random_arm = sparse_defaults[measure]
            whole = next((w for w in WHOLE_VOLUME[measure] if any(k[0] == w for k in effort_cells)), None)
            budgets = sorted({b for (a, b) in effort_cells if a == arm})
            for budget in budgets:
                for goal, reference in (("gap_vs_whole_volume", whole), ("gap_vs_random_slices", random_arm)):
                    gap = _gap(effort_cells, arm, reference, budget, cases, clusters)
                    if gap is not None:
                        entry["gaps"].append(
                            {"goal": goal, "effort": measure, "arm": arm, "reference": reference, "budget": budget}
                            | gap
                        )
            if whole is not None and ceiling and floor:
                ratio = _ratio(effort_cells, arm, whole, measure, cases, floor, ceiling)
                if ratio is not None:
                    entry["ratios"].append({"effort": measure, "arm": arm, "reference": whole} | ratio)
        out[f"{setting}/{split}"] = entry
    return out


def _gap(cells, arm: str, reference: Optional[str], budget: int, cases, clusters) -> Optional[Dict[str, Any]]:
    if reference is None or (arm, budget) not in cells or (reference, budget) not in cells:
        return None
    a, r = cells[(arm, budget)], cells[(reference, budget)]
    pools = sorted(set(a) & set(r))
    if not pools:
        return None
    gap = stats.clustered_gap(
        [base._case_matrix(a[p], cases) for p in pools], [base._case_matrix(r[p], cases) for p in pools], clusters
    )
    return gap.to_dict()


def _curves(cells, arm: str, measure: str, pools: Sequence[int], budgets: Sequence[int], cases, floor):
    """``[P, 1 + len(budgets)]`` efforts and Dice of one arm per pool, through the floor at effort 0, each pool's
    points in increasing effort."""
    efforts, values = [], []
    for p in pools:
        points = [(0.0, floor[p])]
        for b in budgets:
            rs = cells[(arm, b)][p]
            points.append((float(np.mean([_value(r, measure) for r in rs])), _pool_dice(rs, cases)))
        points.sort(key=lambda x: x[0])
        efforts.append([e for e, _ in points])
        values.append([v for _, v in points])
    return np.array(efforts), np.array(values)


def _ratio(cells, arm: str, whole: str, measure: str, cases, floor, ceiling) -> Optional[Dict[str, Any]]:
    def budgets_of(name):
        return sorted(b for (a, b) in cells if a == name)

    arm_budgets, whole_budgets = budgets_of(arm), budgets_of(whole)
    if not arm_budgets or not whole_budgets:
        return None
    pools = sorted(
        set(floor)
        & set(ceiling)
        & set.intersection(*(set(cells[(arm, b)]) for b in arm_budgets))
        & set.intersection(*(set(cells[(whole, b)]) for b in whole_budgets))
    )
    if not pools:
        return None
    a_e, a_v = _curves(cells, arm, measure, pools, arm_budgets, cases, floor)
    w_e, w_v = _curves(cells, whole, measure, pools, whole_budgets, cases, floor)
    targets = [CEILING_SHARE * ceiling[p] for p in pools]
    result = stats.effort_ratio(a_e, a_v, w_e, w_v, targets)
    return {**result.to_dict(), "pools": pools, "share_of_ceiling": CEILING_SHARE}


# ------------------------------------------------------------------------------------------------ goal rows


def goal_rows(summary: Mapping[str, Any], source: str, git: str) -> List[Dict[str, Any]]:
    """The ``sparse`` goal rows of :func:`summarise` (see the module docstring)."""
    targets = {"gap_vs_whole_volume": 0.03, "gap_vs_random_slices": 0.02}
    rows = []
    for entry in summary.values():
        base_row = {
            "topic": "sparse",
            "setting": entry["setting"],
            "split": base.SPLIT_NAMES.get(entry["split"], entry["split"]),
            "source": source,
            "git": git,
        }
        for gap in entry["gaps"]:
            rows.append(
                {
                    **base_row,
                    "goal": gap["goal"],
                    "budget": int(gap["budget"]),
                    "effort": gap["effort"],
                    "value": gap["gap"],
                    "ci_low": gap["ci_low"],
                    "ci_high": gap["ci_high"],
                    "target": targets[gap["goal"]],
                    "higher_is_better": True,
                    "arm": gap["arm"],
                    "reference": gap["reference"],
                }
            )
        for ratio in entry["ratios"]:
            rows.append(
                {
                    **base_row,
                    "goal": "effort_ratio_to_95pct_ceiling",
                    "budget": None,
                    "effort": ratio["effort"],
                    "value": ratio["ratio"],
                    "ci_low": ratio["ci_low"],
                    "ci_high": ratio["ci_high"],
                    "target": 0.5,
                    "higher_is_better": False,
                    "bound": ratio["bound"],
                    "arm": ratio["arm"],
                    "reference": ratio["reference"],
                }
            )
    return rows


# ------------------------------------------------------------------------------------------------- rendering


def _f(x: Optional[float], digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown(summary: Mapping[str, Any]) -> str:
    """The Dice-versus-effort section of the run's Markdown."""
    lines = [
        "## Dice against annotation effort (issue 27)",
        "",
        "B: an effort of B whole volumes in the arm's measure (`slices`: slice-equivalents painted; "
        "`voxels_changed`: voxels changed correcting the source model's pre-fill; `voxels_painted`: foreground voxels "
        "painted from scratch); a volume arm labels B volumes. "
        "Effort columns: mean spent per labelled set; vol-eq: that effort over the pool's mean effort of one whole "
        "volume. Gaps: paired per pool and evaluation case, 95 % intervals over pools, draws and cases.",
        "",
    ]
    for name, entry in summary.items():
        pv = entry["per_volume"]
        lines += [
            f"### {name} (effort)",
            "",
            f"No adaptation {_f(entry['floor'])}; converged ceiling {_f(entry['ceiling'])}"
            + (f" ({entry['ceiling_steps']} steps)" if entry["ceiling_steps"] else "")
            + f". One whole volume: {_f(pv['slices'], 1)} slices, {_f(pv['voxels_painted'], 0)} voxels painted, "
            f"{_f(pv['voxels_changed'], 0)} voxels changed from the pre-fill (pool means).",
            "",
            "| arm | B | measure | mean Dice | volumes | slices touched | slice-eq (vol-eq) | voxels painted (vol-eq) "
            "| voxels changed (vol-eq) | sets |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in entry["rows"]:
            veq = row["volume_equivalents"]
            lines.append(
                f"| {row['arm']} | {row['budget']} | {row['measure'] or 'volumes'} | {_f(row['mean_dice'])} | "
                f"{_f(row['volumes_labelled'], 1)} | {_f(row['slices_touched'], 1)} | "
                f"{_f(row['slice_equivalents'], 1)} ({_f(veq['slices'], 2)}) | {_f(row['voxels_painted'], 0)} "
                f"({_f(veq['voxels_painted'], 2)}) | "
                f"{_f(row['voxels_changed'], 0)} ({_f(veq['voxels_changed'], 2)}) | {row['labelled_sets']} |"
            )
        lines.append("")
        for gap in entry["gaps"]:
            lines.append(
                f"- {gap['goal']} ({gap['effort']}, B = {gap['budget']}): {gap['arm']} − {gap['reference']} "
                f"{base._gap_cell(gap)}"
            )
        for ratio in entry["ratios"]:
            bound = {"upper": " (at most: whole volumes did not reach it)", "lower": " (at least)"}.get(
                ratio["bound"], ""
            )
            lines.append(
                f"- effort_ratio_to_95pct_ceiling ({ratio['effort']}): {ratio['arm']} / {ratio['reference']} "
                f"{_f(ratio['ratio'], 2)}{bound} [{_f(ratio['ci_low'], 2)}, {_f(ratio['ci_high'], 2)}] "
                f"(target Dice {_f(ratio['target'])}; efforts {_f(ratio['arm_effort'], 1)} vs "
                f"{_f(ratio['reference_effort'], 1)})"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path_of) -> List:
    """One PNG per (setting, split): mean Dice against effort in whole-volume equivalents, one panel per measure
    (:data:`MEASURE_TITLES`); every arm through the floor at 0; the ceiling and 95 % of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, entry in summary.items():
        fig, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 4), sharey=True)
        arms = sorted({r["arm"] for r in entry["rows"]})
        for ax, measure in zip(axes, MEASURES):
            title = MEASURE_TITLES[measure]
            for arm in arms:
                rows = sorted((r for r in entry["rows"] if r["arm"] == arm), key=lambda r: r["budget"])
                xs = [0.0] + [r["volume_equivalents"][measure] or np.nan for r in rows]
                ys = [entry["floor"] if entry["floor"] is not None else np.nan] + [r["mean_dice"] for r in rows]
                ax.plot(xs, ys, marker="o", label=arm)
            if entry["ceiling"] is not None:
                ax.axhline(entry["ceiling"], color="black", ls="--", lw=1, label="whole pool (ceiling)")
                ax.axhline(CEILING_SHARE * entry["ceiling"], color="grey", ls=":", lw=1, label="95 % of the ceiling")
            ax.set_xlabel(f"effort in whole volumes ({title})")
            ax.set_title(name)
        axes[0].set_ylabel("mean Dice (evaluation cases)")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        path = path_of(name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
