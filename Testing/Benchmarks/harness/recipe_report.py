"""The recipe's part of the harness report (issue 25 items 2 and 5): every arm that changes Adapt Model's recipe,
measured against the default recipe on the *same* labelled sets.

A *recipe arm* is an unguarded arm with ``finetune.*`` overrides (e.g. ``labels_only:strategy=random,
finetune.pseudo.mode=none``). Its reference is the unguarded record of the same query with no override on the same
labelled set (same pool, budget, draw, seed and labelled volumes): for a ``strategy=random`` recipe arm that is the
``random`` arm's draw, so the comparison is paired by set and the set-to-set spread cancels
(:func:`.stats.set_paired_gap`). The choice rule these numbers feed is written in RESULTS.md ("The rule that chooses
the recipe per anatomy").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import stats

#: A labelled set whose model is worse than no adaptation by more than this counts as a set made worse (the guard
#: calibration's false-activation margin, issue 25).
WORSE_MARGIN = 0.01
#: The override that turns the semi-supervised stage off: the reference of ``ssl_gap_vs_labels_only``.
LABELS_ONLY = {"pseudo.mode": "none"}


@dataclass(frozen=True)
class RecipeComparison:
    """One recipe arm against the default recipe at one budget, over the labelled sets both ran.

    Attributes:
        arm, reference: the recipe arm and the default-recipe arm its sets are paired with.
        budget: labelled volumes per set.
        changes: the recipe arm's ``finetune`` overrides (dotted field -> value).
        gap: the paired gap (recipe minus default) with its interval over sets and clustered evaluation cases.
        worst_group_gap: the same on the worst group's cases only (``None`` without groups).
        mean, reference_mean: mean Dice over the paired sets.
        worse, reference_worse: sets whose model is worse than no adaptation by more than :data:`WORSE_MARGIN`.
        seconds, reference_seconds: median Adapt (training) time per set.
        cost_ratio: median over sets of the recipe's Adapt time over the default's on the same set (a median: a
            record made while the machine was busy, e.g. a 4,000 s outlier among 140 s runs, does not decide it).
    """

    arm: str
    reference: str
    budget: int
    changes: Dict[str, Any]
    gap: stats.SetPairedGap
    worst_group_gap: Optional[stats.SetPairedGap]
    mean: float
    reference_mean: float
    worse: int
    reference_worse: int
    seconds: float
    reference_seconds: float
    cost_ratio: float

    @property
    def is_labels_only(self) -> bool:
        return self.changes == LABELS_ONLY

    def to_dict(self) -> Dict[str, Any]:
        return {
            "arm": self.arm,
            "reference": self.reference,
            "budget": self.budget,
            "changes": self.changes,
            "gap": self.gap.to_dict(),
            "worst_group_gap": None if self.worst_group_gap is None else self.worst_group_gap.to_dict(),
            "mean": self.mean,
            "reference_mean": self.reference_mean,
            "worse": self.worse,
            "reference_worse": self.reference_worse,
            "seconds": self.seconds,
            "reference_seconds": self.reference_seconds,
            "cost_ratio": self.cost_ratio,
        }


def _query(record: Mapping[str, Any]) -> str:
    return json.dumps((record.get("arm") or {}).get("query") or {}, sort_keys=True)


def _changes(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The arm's own ``finetune`` overrides: those its profile gives every arm (e.g. the smoke profile's few steps)
    are the run's default recipe, not a change of it."""
    everyone = {k: v for k, v in (record.get("profile") or {}).get("finetune") or []}
    own = (record.get("arm") or {}).get("finetune") or {}
    return {k: v for k, v in own.items() if k not in everyone or everyone[k] != v}


def _unguarded(record: Mapping[str, Any]) -> bool:
    return not (record.get("arm") or {}).get("guard")


def _is_recipe_record(record: Mapping[str, Any]) -> bool:
    return _unguarded(record) and bool(_changes(record))


def is_recipe_arm(cell: Mapping[int, Sequence[Mapping[str, Any]]]) -> bool:
    """Whether one arm's records (``pool -> records``) are a recipe arm's: unguarded, with ``finetune`` overrides."""
    records = [r for rs in cell.values() for r in rs]
    return bool(records) and all(_is_recipe_record(r) for r in records)


def _set_key(record: Mapping[str, Any]) -> Tuple[Any, ...]:
    return record["draw"], record["seed"], _query(record), stats.labelled_set(record)


def recipe_comparisons(
    cells: Mapping[Tuple[str, int], Mapping[int, list]],
    floor: Mapping[int, np.ndarray],
    cases: Sequence[str],
    clusters: Sequence[str],
    worst_idx: Sequence[int] = (),
) -> List[RecipeComparison]:
    """Every recipe arm of one (setting, split) against its default-recipe twins, per budget.

    Args:
        cells: ``(arm, budget) -> pool -> records`` (the report's index).
        floor: per pool, the source model's per-case Dice ``[N]`` (no adaptation).
        cases, clusters: the N evaluation cases and the cluster (patient) of each.
        worst_idx: the indices of the worst group's cases (by the source model), or none.
    """
    defaults: Dict[Tuple[int, int], Dict[Tuple[Any, ...], Mapping[str, Any]]] = {}
    for (_, budget), cell in cells.items():
        for pool, records in cell.items():
            for r in records:
                if budget > 0 and _unguarded(r) and not _changes(r):
                    defaults.setdefault((budget, pool), {})[_set_key(r)] = r
    out = []
    for (arm, budget), cell in sorted(cells.items()):
        pairs, worse, reference_worse = [], 0, 0
        for pool, records in sorted(cell.items()):
            for r in records:
                if budget <= 0 or not _is_recipe_record(r) or pool not in floor:
                    continue
                twin = defaults.get((budget, pool), {}).get(_set_key(r))
                if twin is None:
                    continue
                pairs.append((r, twin, _changes(r)))
                floor_dice = np.nanmean(floor[pool])
                worse += np.nanmean(stats.case_dice(r, cases)) < floor_dice - WORSE_MARGIN
                reference_worse += np.nanmean(stats.case_dice(twin, cases)) < floor_dice - WORSE_MARGIN
        if not pairs:
            continue
        mine = np.stack([stats.case_dice(r, cases) for r, _, _ in pairs])  # [S, N]
        theirs = np.stack([stats.case_dice(t, cases) for _, t, _ in pairs])
        mine_seconds = np.array([r.get("train_seconds") or np.nan for r, _, _ in pairs], dtype=np.float64)
        their_seconds = np.array([t.get("train_seconds") or np.nan for _, t, _ in pairs], dtype=np.float64)
        out.append(
            RecipeComparison(
                arm=arm,
                reference=pairs[0][1]["arm"]["name"],
                budget=int(budget),
                changes=pairs[0][2],
                gap=stats.set_paired_gap(mine, theirs, clusters),
                worst_group_gap=(
                    stats.set_paired_gap(mine[:, worst_idx], theirs[:, worst_idx], [clusters[i] for i in worst_idx])
                    if len(worst_idx)
                    else None
                ),
                mean=float(np.nanmean(mine)),
                reference_mean=float(np.nanmean(theirs)),
                worse=int(worse),
                reference_worse=int(reference_worse),
                seconds=float(np.median(mine_seconds)),
                reference_seconds=float(np.median(their_seconds)),
                cost_ratio=float(np.median(mine_seconds / their_seconds)),
            )
        )
    return out


def recipe_markdown(comparisons: Sequence[Mapping[str, Any]]) -> List[str]:
    """The recipe table of one (setting, split), from :meth:`RecipeComparison.to_dict` rows."""
    if not comparisons:
        return []
    lines = [
        "Recipe changes (issue 25), each against Adapt Model's default recipe on the same labelled sets (gap: "
        "recipe minus default, 95 % interval over sets and evaluation cases by cluster):",
        "",
        "| arm | change | B | sets | mean Dice (default) | gap [95 %] | worst-group gap | sets worse than no "
        "adaptation (default) | Adapt time vs default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        change = ", ".join(f"`{k}={v}`" for k, v in sorted(c["changes"].items()))
        gap = c["gap"]
        interval = f"{gap['gap']:+.3f} [{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}]"
        worst = c.get("worst_group_gap")
        worst_cell = f"{worst['gap']:+.3f} [{worst['ci_low']:+.3f}, {worst['ci_high']:+.3f}]" if worst else "–"
        lines.append(
            f"| {c['arm']} | {change} | {c['budget']} | {gap['sets']} | {c['mean']:.3f} ({c['reference_mean']:.3f}) "
            f"| {interval} | {worst_cell} | {c['worse']} ({c['reference_worse']}) | {c['cost_ratio']:.2f}x |"
        )
    return lines + [""]


def recipe_goal_rows(summary: Mapping[str, Any], source: str, git: str, split_names: Mapping[str, str]) -> List[Dict]:
    """``ssl_gap_vs_labels_only`` (topic ``adapt``) per setting and budget where a labels-only arm ran: the default
    recipe minus labels only on the same labelled sets, with the interval turned round."""
    rows = []
    for entry in summary.values():
        for c in entry.get("recipes") or []:
            if c["changes"] != LABELS_ONLY:
                continue
            gap = c["gap"]
            rows.append(
                {
                    "topic": "adapt",
                    "goal": "ssl_gap_vs_labels_only",
                    "setting": entry["setting"],
                    "budget": int(c["budget"]),
                    "split": split_names.get(entry["split"], entry["split"]),
                    "value": -gap["gap"],
                    "ci_low": -gap["ci_high"],
                    "ci_high": -gap["ci_low"],
                    "sets": gap["sets"],
                    "target": 0.02,
                    "higher_is_better": True,
                    "source": source,
                    "git": git,
                }
            )
    return rows
