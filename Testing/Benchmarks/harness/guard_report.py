"""The guard's part of the harness report (issue 25): per guarded record its decision against the evaluation cases,
the same folds judged again under other rules, the cost against the unguarded run of the same labelled set, the
guard calibration's input and the ``adapt`` / ``speed`` goal rows.

A *guarded* record is an arm run with Adapt Model's guard on (``guard=true``): its record holds the guard's decision
and cross-validation folds, and a refused model is scored too (``candidate_per_case``), so that a false refusal is
visible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import stats

#: Issue 25's guard calibration: a model worse than the source model by more than this on the evaluation cases yet
#: activated is a false activation; one better by more than ``FALSE_REFUSAL_MARGIN`` yet refused is a false refusal.
FALSE_ACTIVATION_MARGIN = 0.01
FALSE_REFUSAL_MARGIN = 0.02
#: Names of the split parts in goal rows (as :mod:`.report` writes them).
SPLIT_NAMES = {"development": "dev", "test": "test"}


def guarded_rows(
    cells: Mapping[Tuple[str, int], Mapping[int, list]], floor: Mapping[int, np.ndarray], cases: Sequence[str]
) -> List[Dict[str, Any]]:
    """Per guarded record (an arm run with Adapt Model's guard): the guard's cross-validated gain and its interval,
    its verdict, and the evaluation-case gain over no adaptation in the same pool (what a guard calibration needs:
    does the fold gain predict the test gain?)."""
    rows = []
    for (arm, budget), cell in sorted(cells.items()):
        for pool, records in sorted(cell.items()):
            for r in records:
                activation = r.get("activation") or {}
                if activation.get("method") in (None, "unguarded") or pool not in floor:
                    continue
                twin = _unguarded_twin(cells, r, budget, pool)
                test = float(np.nanmean(stats.case_dice(r, cases)) - np.nanmean(floor[pool]))
                candidate = _gain(r, floor, cases)
                rows.append(
                    {
                        "arm": arm,
                        "budget": budget,
                        "pool": pool,
                        "draw": r["draw"],
                        "seed": r["seed"],
                        "labelled": r.get("labelled"),
                        "activated": r.get("activated"),
                        "cv_gain": activation.get("gain"),
                        "cv_gain_low": activation.get("gain_low"),
                        "cv_gain_high": activation.get("gain_high"),
                        "stop_step": activation.get("stop_step"),
                        "test_gain_over_floor": test,
                        "candidate_gain_over_floor": candidate,
                        # issue 25's calibration: worse by > 0.01 yet activated, better by > 0.02 yet refused
                        "false_activation": bool(r.get("activated")) and candidate < -FALSE_ACTIVATION_MARGIN,
                        "false_refusal": not r.get("activated") and candidate > FALSE_REFUSAL_MARGIN,
                        "cross_validation": r.get("cross_validation"),
                        "train_seconds": r.get("train_seconds"),
                        "unguarded_train_seconds": None if twin is None else twin.get("train_seconds"),
                    }
                )
    return rows


def guard_variants(
    cells: Mapping[Tuple[str, int], Mapping[int, list]],
    floor: Mapping[int, np.ndarray],
    cases: Sequence[str],
    clusters: Sequence[str],
) -> List[Dict[str, Any]]:
    """Each guarded arm that changes the guard's own settings (``finetune.validation.*``, e.g. ``final =
    fold_average`` or short folds) against each guarded arm of the same query and recipe whose guard settings it
    extends (the shipped guard, without such changes; and e.g. ``final = fold_average`` for ``final =
    fold_average, folds = 2``) on the labelled sets both ran: how often they decided alike, the gap of the
    variant's candidate model over the reference's (:func:`.stats.set_paired_gap`, per-case Dice; a refused model
    is scored as well), the sets it left worse by more than :data:`FALSE_ACTIVATION_MARGIN`, its cost against the
    reference's (mean Adapt seconds on those sets), and both judged again by today's guard
    (:func:`judged_by_todays_guard`): how often they decide alike, how many each activates, and how many of its
    models better than no adaptation by more than :data:`FALSE_REFUSAL_MARGIN` each refuses (``floor``: per pool,
    per-case Dice)."""
    guarded = {
        key: cell
        for key, cell in cells.items()
        if any((r.get("arm") or {}).get("guard") for rs in cell.values() for r in rs)
    }
    out = []
    for (arm, budget), cell in sorted(guarded.items()):
        sample = next(r for rs in cell.values() for r in rs)
        if not _guard_settings(sample):
            continue
        for (reference, b), theirs in sorted(guarded.items()):
            first = next(r for rs in theirs.values() for r in rs)
            extends = guard_settings_extend(first, sample)
            if b != budget or reference == arm or not extends or _recipe(first) != _recipe(sample):
                continue
            pairs = [
                (mine, other)
                for pool in sorted(set(cell) & set(theirs) & set(floor))
                for mine in cell[pool]
                for other in theirs[pool]
                if (mine["draw"], mine["seed"]) == (other["draw"], other["seed"]) and _same_labelled(mine, other)
            ]
            if not pairs:
                continue
            variant = np.stack([_candidate_dice(m, cases) for m, _ in pairs])
            shipped = np.stack([_candidate_dice(o, cases) for _, o in pairs])
            gap = stats.set_paired_gap(variant, shipped, clusters)
            timed = [(m["train_seconds"], o["train_seconds"]) for m, o in pairs if m.get("train_seconds")]
            today = [(judged_by_todays_guard(m), judged_by_todays_guard(o)) for m, o in pairs]
            gains = [(_gain(m, floor, cases), _gain(o, floor, cases)) for m, o in pairs]
            out.append(
                {
                    "arm": arm,
                    "reference": reference,
                    "budget": budget,
                    "sets": len(pairs),
                    "decided_alike": sum(bool(m.get("activated")) == bool(o.get("activated")) for m, o in pairs),
                    "gap": gap.to_dict(),
                    "worse_sets": int(sum(g < -FALSE_ACTIVATION_MARGIN for g in gap.per_set)),
                    "today": {
                        "decided_alike": sum(mine == theirs for mine, theirs in today),
                        "variant": _tally_today([v[0] for v in today], [g[0] for g in gains]),
                        "reference": _tally_today([v[1] for v in today], [g[1] for g in gains]),
                    },
                    "cost_vs_reference": (
                        float(np.mean([t for t, _ in timed]) / np.mean([t for _, t in timed])) if timed else None
                    ),
                }
            )
    return out


def guard_variants_markdown(variants: Sequence[Mapping[str, Any]]) -> List[str]:
    """One line per :func:`guard_variants` entry."""
    lines: List[str] = []
    for v in variants:
        gap, today = v["gap"], v["today"]
        mine, theirs = today["variant"], today["reference"]
        cost = "" if v["cost_vs_reference"] is None else f", {v['cost_vs_reference']:.2f}x its Adapt time"
        lines += [
            f"Guard variant `{v['arm']}` against `{v['reference']}`, B = {v['budget']}, {v['sets']} shared labelled "
            f"sets: decided alike on {v['decided_alike']}; its model minus `{v['reference']}`'s {gap['gap']:+.3f} "
            f"[{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}], {v['worse_sets']} set(s) worse by more than "
            f"{FALSE_ACTIVATION_MARGIN}{cost}. Both judged by today's guard: decided alike on "
            f"{today['decided_alike']}; activated {mine['activated']} against {theirs['activated']} (worse than no "
            f"adaptation by more than {FALSE_ACTIVATION_MARGIN}: {mine['false_activations']} against "
            f"{theirs['false_activations']}); refused {mine['false_refusals']} of its {mine['better_sets']} model(s) "
            f"better by more than {FALSE_REFUSAL_MARGIN} against {theirs['false_refusals']} of "
            f"{theirs['better_sets']}.",
            "",
        ]
    return lines


def _tally_today(activated: Sequence[bool], gains: Sequence[float]) -> Dict[str, int]:
    """One arm's decisions by today's guard on paired sets, against its models' gains over no adaptation."""
    pairs = list(zip(activated, gains))
    return {
        "activated": sum(a for a, _ in pairs),
        "false_activations": sum(a and g < -FALSE_ACTIVATION_MARGIN for a, g in pairs),
        "better_sets": sum(g > FALSE_REFUSAL_MARGIN for _, g in pairs),
        "false_refusals": sum(not a and g > FALSE_REFUSAL_MARGIN for a, g in pairs),
    }


def judged_by_todays_guard(record: Mapping[str, Any]) -> bool:
    """Whether today's guard (the defaults of :class:`~ASSFTActive.finetune.config.ValidationConfig`) activates a
    guarded record: its folds judged again at its stopping step (:func:`~ASSFTActive.finetune.guard.judge`), and its
    pool check as recorded. Records written under a former rule (e.g. "a fold may lose 0.05") are so compared with
    today's on one rule; the model a record trained does not depend on the rule. ``False`` without folds."""
    from ASSFTActive.finetune.config import ValidationConfig
    from ASSFTActive.finetune.guard import CrossValidation, GuardRule, judge

    activation = record.get("activation") or {}
    if not record.get("cross_validation") or activation.get("method") != "cross_validation":
        return False
    v = ValidationConfig()
    cv = CrossValidation.from_dict(record["cross_validation"])
    step = int(activation["stop_step"])
    folds = judge(cv.fold_gains(step), GuardRule.of(v), cv.gains(step).values())
    return folds.activate and (activation.get("pool") or {}).get("passed", True)


def guard_settings_extend(reference: Mapping[str, Any], variant: Mapping[str, Any]) -> bool:
    """Whether a guarded record's guard settings (``finetune.validation.*``) extend the reference's: every setting
    the reference names, the variant names alike, and it names more. A reference setting of ``null`` (an option
    switched off, e.g. ``fold_budget=null``: whole folds) is what any value of it extends."""
    mine = _guard_settings(variant)
    theirs = {k: v for k, v in _guard_settings(reference).items() if v is not None or mine.get(k) is None}
    return theirs.items() < mine.items()


def _guard_settings(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The guard's own settings an arm changes (``finetune.validation.*``)."""
    finetune = (record.get("arm") or {}).get("finetune") or {}
    return {k: v for k, v in finetune.items() if k.startswith("validation.")}


def _gain(record: Mapping[str, Any], floor: Mapping[int, np.ndarray], cases: Sequence[str]) -> float:
    """The candidate model's (activated or not) mean Dice minus no adaptation's in the record's pool (``floor``: per
    pool, per-case Dice)."""
    return float(np.nanmean(_candidate_dice(record, cases)) - np.nanmean(floor[record["pool"]]))


def _candidate_dice(record: Mapping[str, Any], cases: Sequence[str]) -> np.ndarray:
    """Per-case Dice ``[N]`` of the model a guarded run trained, activated or not."""
    if not record.get("activated") and record.get("candidate_per_case") is not None:
        return stats.case_dice({"per_case": record["candidate_per_case"]}, cases)
    return stats.case_dice(record, cases)


def _recipe(record: Mapping[str, Any]) -> Tuple[str, str]:
    """A record's query and training recipe, the guard's own settings (``validation.*``) left out."""
    arm = record.get("arm") or {}
    finetune = {k: v for k, v in (arm.get("finetune") or {}).items() if not k.startswith("validation.")}
    return json.dumps(arm.get("query") or {}, sort_keys=True), json.dumps(finetune, sort_keys=True)


def _unguarded_twin(
    cells: Mapping[Tuple[str, int], Mapping[int, list]], guarded: Mapping[str, Any], budget: int, pool: int
) -> Optional[Mapping[str, Any]]:
    """The unguarded record of the same query and recipe on the same labelled set (pool, budget, draw, seed): the
    unit of the guard's cost ratio (issue 25: a guarded Adapt against an unguarded one on the same volumes)."""
    for (_, b), cell in cells.items():
        for r in cell.get(pool, []) if b == budget else []:
            same_set = (r["draw"], r["seed"]) == (guarded["draw"], guarded["seed"])
            if same_set and not (r.get("arm") or {}).get("guard") and _recipe(r) == _recipe(guarded):
                if _same_labelled(r, guarded):
                    return r
    return None


@dataclass(frozen=True)
class GuardTally:
    """One guarded arm's labelled sets counted once, for its Markdown lines and its goal rows.

    Attributes:
        sets, activated: labelled sets and how many the guard activated.
        worse, false_activations: sets worse than no adaptation by more than :data:`FALSE_ACTIVATION_MARGIN`, and
            how many of them were activated.
        better, false_refusals: sets better by more than :data:`FALSE_REFUSAL_MARGIN`, and how many were refused.
        timed, guarded_seconds, unguarded_seconds: sets with an unguarded twin, and their mean Adapt times.
        distinct: how many different labelled sets ``sets`` are (pools that share volumes can draw the same one).
    """

    sets: int
    activated: int
    worse: int
    false_activations: int
    better: int
    false_refusals: int
    timed: int
    guarded_seconds: float
    unguarded_seconds: float
    distinct: int

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]]) -> GuardTally:
        timed = [g for g in rows if g.get("train_seconds") and g.get("unguarded_train_seconds")]
        return cls(
            sets=len(rows),
            activated=sum(bool(g["activated"]) for g in rows),
            worse=sum(g["candidate_gain_over_floor"] < -FALSE_ACTIVATION_MARGIN for g in rows),
            false_activations=sum(bool(g["false_activation"]) for g in rows),
            better=sum(g["candidate_gain_over_floor"] > FALSE_REFUSAL_MARGIN for g in rows),
            false_refusals=sum(bool(g["false_refusal"]) for g in rows),
            timed=len(timed),
            guarded_seconds=float(np.mean([g["train_seconds"] for g in timed])) if timed else float("nan"),
            unguarded_seconds=float(np.mean([g["unguarded_train_seconds"] for g in timed])) if timed else float("nan"),
            distinct=stats.distinct_labelled_sets(rows),
        )

    @property
    def cost_ratio(self) -> float:
        return self.guarded_seconds / self.unguarded_seconds if self.timed else float("nan")


def guard_goal_rows(summary: Mapping[str, Any], source: str, git: str) -> List[Dict[str, Any]]:
    """Issue 25's goal rows of every guarded arm, per setting and budget: ``worst_set_gap_vs_floor`` (the active
    model's Dice minus no adaptation's on the labelled set where it is lowest; 0 when refused),
    ``false_activation_rate`` and ``false_refusal_rate`` (topic ``adapt``; ``None`` when no labelled set was worse /
    better, with the counts) and
    ``guard_cost_ratio`` (topic ``speed``: guarded over unguarded Adapt on the same labelled sets). The row's
    ``setting`` is ``<setting>:<arm>``, so that the shipped guard and a variant (short folds) keep their own rows."""
    rows = []
    for entry in summary.values():
        guarded = entry.get("guarded") or []
        for arm, budget in sorted({(g["arm"], g["budget"]) for g in guarded}):
            group = [g for g in guarded if g["arm"] == arm and g["budget"] == budget]
            base = {
                "setting": f"{entry['setting']}:{arm}",
                "budget": int(budget),
                "split": SPLIT_NAMES.get(entry["split"], entry["split"]),
                "source": source,
                "git": git,
                "ci_low": None,
                "ci_high": None,
                "sets": len(group),
            }
            tally = GuardTally.of(group)
            rows.append(
                {
                    **base,
                    "topic": "adapt",
                    "goal": "worst_set_gap_vs_floor",
                    "value": round(min(g["test_gain_over_floor"] for g in group), 4),
                    "target": -FALSE_ACTIVATION_MARGIN,
                    "higher_is_better": True,
                }
            )
            rows.append(
                {
                    **base,
                    "topic": "adapt",
                    "goal": "false_activation_rate",
                    "value": tally.false_activations / tally.worse if tally.worse else None,
                    "count": f"{tally.false_activations} / {tally.worse}",
                    "target": 0.0,
                    "higher_is_better": False,
                }
            )
            rows.append(
                {
                    **base,
                    "topic": "adapt",
                    "goal": "false_refusal_rate",
                    "value": tally.false_refusals / tally.better if tally.better else None,
                    "count": f"{tally.false_refusals} / {tally.better}",
                    "target": 0.2,
                    "higher_is_better": False,
                }
            )
            if tally.timed:
                rows.append(
                    {
                        **base,
                        "topic": "speed",
                        "goal": "guard_cost_ratio",
                        "value": round(tally.cost_ratio, 3),
                        "sets": tally.timed,
                        "target": 2.0,
                        "higher_is_better": False,
                    }
                )
    return rows


#: Rules under which the report judges every guarded labelled set again, from the same cross-validation folds
#: (issue 25 item 1's candidates, RESULTS.md's rules): every ``min_gain`` with every ``min_fold_gain``; (0.005, none)
#: is the guard before its first calibration, (0.005, -0.05) the limit it chose first (a fold may lose 0.05), and
#: (0.005, 0.02) today's default (every fold gains 0.02; ``ValidationConfig``).
GUARD_MIN_GAINS: Tuple[float, ...] = (0.0, 0.005, 0.01)
GUARD_MIN_FOLD_GAINS: Tuple[Optional[float], ...] = (None, -0.1, -0.05, -0.02, 0.0, 0.01, 0.02, 0.03)


def guard_sets(name: str, guarded: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The guarded labelled sets as the guard calibration reads them (``ASSFTActive.finetune.guard_calibration``:
    the folds' curves and the candidate's gain over no adaptation on the evaluation cases); sets without
    cross-validation (one labelled volume) are left out."""
    return [
        {
            "setting": name,
            "budget": g["budget"],
            "set": f"{g['arm']}/pool{g['pool']}/d{g['draw']}_s{g['seed']}",
            "arm": g["arm"],
            "cross_validation": g["cross_validation"],
            "stop_step": g.get("stop_step"),
            "test_gain": g["candidate_gain_over_floor"],
        }
        for g in guarded
        if g.get("cross_validation")
    ]


def guard_markdown(name: str, guarded: Sequence[Mapping[str, Any]]) -> List[str]:
    """Per guarded arm and budget: its decisions against the evaluation cases, how well its folds predicted them
    (:func:`~ASSFTActive.finetune.guard_calibration.fold_agreement`), the same folds judged under every rule of
    :data:`GUARD_MIN_GAINS` x :data:`GUARD_MIN_FOLD_GAINS`, and how often two guarded arms on the same labelled sets
    decided alike (e.g. the guard with short folds)."""
    from ASSFTActive.finetune.guard_calibration import fold_agreement, read_records, sweep

    lines: List[str] = []
    arms = sorted({g["arm"] for g in guarded})
    for arm, budget in sorted({(g["arm"], g["budget"]) for g in guarded}):
        rows = [g for g in guarded if g["arm"] == arm and g["budget"] == budget]
        tally = GuardTally.of(rows)
        n = tally.sets
        lines += [
            f"Guard (issue 25 calibration), `{arm}`, B = {budget}, {n} guarded labelled sets ({tally.distinct} "
            f"distinct): activated {tally.activated}; false activations (worse than no adaptation by > "
            f"{FALSE_ACTIVATION_MARGIN} yet active) {tally.false_activations} / {n}; false refusals (better by > "
            f"{FALSE_REFUSAL_MARGIN} yet refused) {tally.false_refusals} / {n}.",
            "",
        ]
        if tally.timed:
            lines += [
                f"Cost: {tally.guarded_seconds:.0f} s per guarded Adapt against {tally.unguarded_seconds:.0f} s "
                f"unguarded (same query, recipe and labelled sets, {tally.timed} sets): **{tally.cost_ratio:.2f}x**.",
                "",
            ]
        sets = guard_sets(name, rows)
        if not sets:
            continue
        records = read_records({"sets": sets})
        rho, scored = fold_agreement(records)
        shown = "- (too few sets that vary)" if rho is None else f"{rho:+.2f}"
        lines += [
            f"How well the folds predict: Spearman of the cross-validated mean gain with the evaluation-case gain "
            f"{shown} over {scored} sets.",
            "",
            "| min_gain | min_fold_gain | activated | false activation (of the worse sets) | false refusal (of the "
            "better sets) |",
            "|---|---|---|---|---|",
        ]
        for row in sweep(records, GUARD_MIN_GAINS, GUARD_MIN_FOLD_GAINS, FALSE_ACTIVATION_MARGIN, FALSE_REFUSAL_MARGIN):
            rule = row["rule"]
            limit = "none" if rule["min_fold_gain"] is None else f"{rule['min_fold_gain']:+g}"
            lines.append(
                f"| {rule['min_gain']:g} | {limit} | {row['activated']} / {row['sets']} | "
                f"{row['false_activations']} / {row['worse_sets']} | {row['false_refusals']} / {row['better_sets']} |"
            )
        lines.append("")
    for i, first in enumerate(arms):
        for second in arms[i + 1 :]:
            pairs = _same_sets(guarded, first, second)
            if pairs:
                same = sum(bool(a["activated"]) == bool(b["activated"]) for a, b in pairs)
                lines += [f"`{first}` and `{second}` decided alike on {same} of {len(pairs)} shared labelled sets.", ""]
    return lines


def _same_sets(guarded: Sequence[Mapping[str, Any]], first: str, second: str) -> List[Tuple[Mapping, Mapping]]:
    key = lambda g: (g["pool"], g["budget"], g["draw"], g["seed"])  # noqa: E731
    other = {key(g): g for g in guarded if g["arm"] == second}
    return [
        (g, other[key(g)])
        for g in guarded
        if g["arm"] == first and key(g) in other and _same_labelled(g, other[key(g)])
    ]


def _same_labelled(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """Two records trained on the same labelled volumes (:func:`.stats.labelled_set`)."""
    return stats.labelled_set(first) == stats.labelled_set(second)
