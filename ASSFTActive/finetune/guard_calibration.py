"""Calibration of the guard's decision rule: how often it activates a worse model and refuses a better one.

Input: one record per labelled set of a benchmark (the development split), with the cross-validated gains the guard
saw and the gain the adapted model really had on that split's test cases. The same :func:`~.guard.judge` the guard
uses is applied under each candidate rule, and two rates come out:

* **false activation**: among the sets whose adapted model is worse than the current one on the test cases by more
  than ``worse`` (0.01), the share the rule activates;
* **false refusal**: among the sets whose adapted model is better by more than ``better`` (0.02), the share the rule
  refuses.

A rate is ``None`` when no set falls in its group (nothing to err on); the counts are always given. Input JSON::

    {"sets": [{"setting": "hippocampus_mild", "budget": 4, "set": "draw0",
               "fold_gains": [0.03, -0.01, 0.02], "volume_gains": [0.03, -0.02, 0.0, 0.02],
               "test_gain": 0.015}, ...]}

``fold_gains`` / ``volume_gains`` may instead come as the guard's own record, ``"activation": {...}`` (the
``activation`` of a job result or of a version's provenance, which holds both), or as the cross-validation itself,
``"cross_validation": {...}`` (:meth:`~.guard.CrossValidation.to_dict`, as the result's metrics hold it) with
``"stop_step"`` (default: the curve's peak, as the guard reads it). ``volume_gains`` is optional (the fold gains
stand in for it, as at leave-one-out); so are ``dice_before``, the current model's cross-validated Dice (the
activation record's, or step 0 of the cross-validation), and the activation record's pool check (``"pool":
{"passed": false}``: the adapted model collapsed on the pool, refused under every rule).

``test_gain`` must be the *adapted* model's gain on the test cases whether or not the guard activated it (a
refused model is stored as a version, so it can be scored): the active model's gain is 0 for every refused set and
would hide every false refusal.

Command line (prints a table, writes JSON with ``--out``)::

    python -m ASSFTActive.finetune.guard_calibration sets.json [more.json ...] --min-fold-gain none 0.02 --out c.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..io import atomic_write_text
from .guard import CrossValidation, GuardRule, judge

__all__ = ["CalibrationRecord", "calibrate", "fold_agreement", "main", "read_records", "sweep"]


@dataclass(frozen=True)
class CalibrationRecord:
    """One labelled set: what the guard saw (held-out gains per fold and per volume) and the truth on the test cases.

    Attributes:
        setting: e.g. ``hippocampus_mild``; ``budget``: labelled volumes; ``labelled_set``: the set's name.
        fold_gains: mean held-out gain of each cross-validation fold at the stopping step.
        volume_gains: held-out gain of each labelled volume (``None``: the fold gains stand in).
        test_gain: adapted minus current mean Dice on the split's test cases.
        dice_before: the current model's cross-validated mean Dice on the labelled volumes (how well it does on
            them before adapting; NaN = not known).
        pool_passed: the guard's pool check passed (a set whose adapted model collapsed is refused by any rule).
    """

    setting: str
    budget: int
    labelled_set: str
    fold_gains: Tuple[float, ...]
    volume_gains: Optional[Tuple[float, ...]]
    test_gain: float
    dice_before: float = math.nan
    pool_passed: bool = True

    def activated(self, rule: GuardRule) -> bool:
        """Whether the guard under ``rule`` activates this set's model."""
        return judge(self.fold_gains, rule, self.volume_gains).activate and self.pool_passed


def _floats(values: Iterable[Any], where: str) -> Tuple[float, ...]:
    try:
        return tuple(float("nan") if v is None else float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a list of numbers (null = not scored)") from None


def read_records(data: Mapping[str, Any]) -> List[CalibrationRecord]:
    """The records of the input JSON (see the module docstring).

    Raises:
        ValueError: no ``sets`` list, or a set without gains or ``test_gain``, naming the set.
    """
    sets = data.get("sets") if isinstance(data, Mapping) else None
    if not isinstance(sets, list) or not sets:
        raise ValueError('the calibration input must be a JSON object with a non-empty list "sets"')
    records = []
    for index, item in enumerate(sets):
        where = f"sets[{index}]"
        source = item.get("activation") or item
        if "fold_gains" not in source and item.get("cross_validation"):
            cv = CrossValidation.from_dict(item["cross_validation"])
            step = int(item["stop_step"]) if item.get("stop_step") is not None else cv.stop_step()
            source = {"fold_gains": cv.fold_gains(step), "volume_gains": cv.gains(step), "dice_before": cv.curve()[0]}
        if "fold_gains" not in source or "test_gain" not in item:
            raise ValueError(
                f'{where}: needs "fold_gains" (or "activation" or "cross_validation" giving them) and "test_gain"'
            )
        volumes = source.get("volume_gains")
        if isinstance(volumes, Mapping):
            volumes = list(volumes.values())
        records.append(
            CalibrationRecord(
                setting=str(item.get("setting", "")),
                budget=int(item.get("budget", 0)),
                labelled_set=str(item.get("set", index)),
                fold_gains=_floats(source["fold_gains"], where),
                volume_gains=None if volumes is None else _floats(volumes, where),
                test_gain=float(item["test_gain"]),
                dice_before=_floats([source.get("dice_before")], where)[0],
                pool_passed=bool((source.get("pool") or {}).get("passed", True)),
            )
        )
    return records


def _rate(count: int, total: int) -> Optional[float]:
    return None if total == 0 else count / total


def calibrate(
    records: Sequence[CalibrationRecord], rule: GuardRule, worse: float = 0.01, better: float = 0.02
) -> Dict[str, Any]:
    """False activation and false refusal of ``rule`` over ``records``, overall and per (setting, budget).

    Returns:
        ``{"rule", "sets", "activated", "worse_sets", "false_activations", "false_activation_rate", "better_sets",
        "false_refusals", "false_refusal_rate", "by_setting": {"<setting> B=<budget>": {same counts}}}``.
    """

    def count(group: Sequence[CalibrationRecord]) -> Dict[str, Any]:
        verdicts = [r.activated(rule) for r in group]
        worse_sets = [a for r, a in zip(group, verdicts) if r.test_gain < -worse]
        better_sets = [a for r, a in zip(group, verdicts) if r.test_gain > better]
        false_activations, false_refusals = sum(worse_sets), sum(not a for a in better_sets)
        return {
            "sets": len(group),
            "activated": sum(verdicts),
            "worse_sets": len(worse_sets),
            "false_activations": false_activations,
            "false_activation_rate": _rate(false_activations, len(worse_sets)),
            "better_sets": len(better_sets),
            "false_refusals": false_refusals,
            "false_refusal_rate": _rate(false_refusals, len(better_sets)),
        }

    groups: Dict[str, List[CalibrationRecord]] = {}
    for record in records:
        groups.setdefault(f"{record.setting} B={record.budget}", []).append(record)
    result = {"rule": rule.to_dict(), "worse": worse, "better": better}
    result.update(count(records))
    result["by_setting"] = {key: count(group) for key, group in sorted(groups.items())}
    return result


def fold_agreement(records: Sequence[CalibrationRecord]) -> Tuple[Optional[float], int]:
    """How well the folds predict: Spearman's rank correlation of each set's mean cross-validated gain (the mean of
    its volume gains, else of its fold gains) with its gain on the test cases, and the number of sets it is over
    (those with a finite mean gain). ``None`` with fewer than 3 such sets or when either side is constant.

    A rule can only sort better from worse models as far as this allows: near 0, every threshold on the folds
    refuses better models about as often as worse ones.
    """
    from scipy import stats

    pairs = []
    for record in records:
        values = [v for v in (record.volume_gains or record.fold_gains) if not math.isnan(v)]
        if values and not math.isnan(record.test_gain):
            pairs.append((sum(values) / len(values), record.test_gain))
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return None, len(pairs)
    rho = stats.spearmanr([p[0] for p in pairs], [p[1] for p in pairs])[0]
    return float(rho), len(pairs)


def sweep(
    records: Sequence[CalibrationRecord],
    min_gains: Sequence[float],
    min_fold_gains: Sequence[Optional[float]],
    worse: float = 0.01,
    better: float = 0.02,
) -> List[Dict[str, Any]]:
    """:func:`calibrate` for every pair of ``min_gain`` and ``min_fold_gain``."""
    return [
        calibrate(records, GuardRule(min_gain=g, min_fold_gain=m), worse, better)
        for g in min_gains
        for m in min_fold_gains
    ]


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() == "none" else float(text)


def _show(rate: Optional[float]) -> str:
    return "-" if rate is None or (isinstance(rate, float) and math.isnan(rate)) else f"{100 * rate:.0f} %"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ASSFTActive.finetune.guard_calibration",
        description="False activation / refusal of guard rules over labelled sets.",
    )
    parser.add_argument(
        "input", type=Path, nargs="+", help='JSON files, each with a list "sets" (see the module docstring)'
    )
    parser.add_argument("--arm", nargs="+", help='only the sets whose "arm" is one of these (harness guard sets)')
    parser.add_argument("--min-gain", type=float, nargs="+", default=[0.005])
    parser.add_argument(
        "--min-fold-gain",
        type=_optional_float,
        nargs="+",
        default=[None],
        help="smallest gains every fold must show to try, e.g. none -0.05 0.02 ('none' = not checked)",
    )
    parser.add_argument("--worse", type=float, default=0.01, help="a test loss beyond this makes activation false")
    parser.add_argument("--better", type=float, default=0.02, help="a test gain beyond this makes refusal false")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    records: List[CalibrationRecord] = []
    for path in args.input:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if args.arm and isinstance(data, Mapping) and isinstance(data.get("sets"), list):
                data = {"sets": [s for s in data["sets"] if isinstance(s, Mapping) and s.get("arm") in args.arm]}
            records += read_records(data)
        except (OSError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
    rows = sweep(records, args.min_gain, args.min_fold_gain, args.worse, args.better)
    print(f"{len(records)} labelled sets from {', '.join(str(p) for p in args.input)}")
    print("| min_gain | min_fold_gain | activated | false activation | false refusal |")
    print("|---|---|---|---|---|")
    for row in rows:
        rule = row["rule"]
        print(
            f"| {rule['min_gain']:.3f} | {rule['min_fold_gain'] if rule['min_fold_gain'] is not None else 'none'} "
            f"| {row['activated']}/{row['sets']} | {_show(row['false_activation_rate'])} "
            f"({row['false_activations']}/{row['worse_sets']}) | {_show(row['false_refusal_rate'])} "
            f"({row['false_refusals']}/{row['better_sets']}) |"
        )
    by_budget = {}
    for record in records:
        by_budget.setdefault(record.budget, []).append(record)
    agreement = {}
    for budget, group in sorted(by_budget.items()):
        rho, n = fold_agreement(group)
        agreement[str(budget)] = {"spearman": rho, "sets": n}
        shown = "-" if rho is None else f"{rho:+.2f}"
        print(f"B = {budget}: Spearman of the cross-validated gain with the test gain {shown} over {n} sets")
    if args.out is not None:
        payload = {"input": [str(p) for p in args.input], "rows": rows, "fold_agreement_by_budget": agreement}
        atomic_write_text(args.out, json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
