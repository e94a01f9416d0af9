"""The activation guard: may an adapted model replace the active one, and where should its training stop?

Pure functions on small records, each testable with a known answer:

* :func:`assign_folds` splits the labelled volumes into cross-validation folds (leave-one-out when few), keeping
  the volumes of one subject (:func:`subject_of`) in one fold;
* :class:`CrossValidation` holds, for every labelled volume, its held-out Dice along the training steps of the fold
  that did not train on it (step 0 = the current model), and gives the mean curve, the stopping step and the paired
  per-volume gains with a 95 % interval;
* :func:`check_pool` compares what the current and the adapted model predict on unlabelled volumes and flags a
  collapse (a class that all but disappears, as after training on empty or wrong labels);
* :func:`judge` applies the decision rule (:class:`GuardRule`: the mean gain, the worst fold, optionally the
  interval's lower end) to the folds' gains, for the guard and for its calibration
  (:mod:`.guard_calibration`);
* :func:`decide` turns both into an :class:`ActivationDecision` with a reason a user can read: which check decided,
  with the numbers, and what the folds can and cannot know (at two labelled volumes each fold trains on one).

Why not a held-out labelled split: with two or three labelled volumes there is nothing to spare, and the labelled
volumes are the only ones whose truth is known. Cross-validating the whole recipe uses each of them once as a
held-out case at the price of ``folds`` extra training runs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "ActivationDecision",
    "CrossValidation",
    "GuardRule",
    "Judgement",
    "PoolCheck",
    "assign_folds",
    "check_pool",
    "count_subjects",
    "decide",
    "judge",
    "mean_interval",
    "subject_of",
    "what_folds_can_know",
]


def subject_of(case_ids: Sequence[str], subjects: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``{case_id: subject}`` of ``case_ids``: the subject ``subjects`` names (a patient, or whatever volumes
    share: two frames of one heart, two visits of one patient), else the case id itself (its own subject)."""
    subjects = subjects or {}
    return {c: str(subjects.get(c) or c) for c in case_ids}


def count_subjects(case_ids: Sequence[str], subjects: Optional[Mapping[str, str]] = None) -> int:
    """How many subjects ``case_ids`` come from (:func:`subject_of`): what bounds the guard's folds."""
    return len(set(subject_of(case_ids, subjects).values()))


def assign_folds(
    case_ids: Sequence[str], folds: int, seed: int = 0, subjects: Optional[Mapping[str, str]] = None
) -> List[Tuple[str, ...]]:
    """Held-out case ids of each fold: ``min(folds, subjects)`` folds of near-equal numbers of subjects, ordered
    by a seeded hash of each subject's first case id; every volume of a subject is held out in the same fold (where
    every volume is its own subject, the folds are those of the volumes alone).

    Why by subject: a fold that trains on one frame of a heart and scores the other frame of the same heart scores
    the patient it trained on. On ACDC-Path's development split at B = 4 (`RESULTS.md`, "The guard's folds by
    patient"), the 5 of 20 labelled sets whose folds divided a patient's two frames showed a cross-validated gain
    of +0.045 against +0.018 for the others, while their models gained less on the evaluation patients (+0.008
    against +0.015).

    Args:
        case_ids: the labelled volumes (of at least 2 subjects).
        folds: the most folds wanted (>= 2).
        seed: changes the assignment (the run's training seed).
        subjects: ``{case_id: subject}`` (:func:`subject_of`); without it every volume is its own subject.

    Returns:
        one tuple of held-out ids per fold; every id is held out exactly once.
    """
    ids = sorted(set(case_ids))
    subject = subject_of(ids, subjects)
    names = sorted(set(subject.values()))
    if len(names) < 2:
        raise ValueError(
            f"cross-validation needs labelled volumes of at least 2 subjects, got {len(ids)} volume(s) of {len(names)}"
        )
    count = min(int(folds), len(names))
    first = {name: min(c for c in ids if subject[c] == name) for name in names}
    order = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{first[name]}".encode()).hexdigest())
    held = [set(order[k::count]) for k in range(count)]
    return [tuple(c for c in ids if subject[c] in fold) for fold in held]


def mean_interval(values: Sequence[float]) -> Tuple[float, float, float]:
    """Mean and a 95 % t-interval ``(mean, low, high)`` of the non-NaN values (a NaN is a volume whose classes were
    all "not scored", see :mod:`ASSFTActive.evaluate`); the interval is NaN for fewer than 2 values."""
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(array.mean())
    if array.size < 2:
        return mean, float("nan"), float("nan")
    from scipy import stats

    half = float(stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class CrossValidation:
    """Held-out Dice of every labelled volume along the training steps of its fold.

    Attributes:
        steps: the global training steps scored, ascending, starting with 0 (the current model).
        dice: ``{case_id: (mean foreground Dice at each step)}``, same length as ``steps``.
        dice_per_class: ``{case_id: ((Dice of each foreground class) at each step)}``.
        folds: the held-out case ids of each fold.
    """

    steps: Tuple[int, ...]
    dice: Mapping[str, Tuple[float, ...]]
    dice_per_class: Mapping[str, Tuple[Tuple[float, ...], ...]] = field(default_factory=dict)
    folds: Tuple[Tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0] != 0 or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be ascending, distinct and start at 0, got {self.steps}")
        for case, values in self.dice.items():
            if len(values) != len(self.steps):
                raise ValueError(f"{case}: {len(values)} Dice values for {len(self.steps)} steps")

    @property
    def cases(self) -> Tuple[str, ...]:
        return tuple(sorted(self.dice))

    def curve(self) -> np.ndarray:
        """Mean held-out Dice over the labelled volumes at each step ``[S]``."""
        return np.array([mean_interval([self.dice[c][i] for c in self.cases])[0] for i in range(len(self.steps))])

    def stop_step(self) -> int:
        """The step after 0 where the mean held-out Dice is highest (the earliest of equal ones)."""
        if len(self.steps) < 2:
            raise ValueError("no training step was scored")
        curve = self.curve()
        best = 1 + int(np.argmax(np.nan_to_num(curve[1:], nan=-1.0)))
        return int(self.steps[best])

    def gains(self, step: int) -> Dict[str, float]:
        """Paired per-volume gain ``Dice(step) - Dice(0)``."""
        index = self.steps.index(step)
        return {c: float(self.dice[c][index] - self.dice[c][0]) for c in self.cases}

    def fold_cases(self) -> Tuple[Tuple[str, ...], ...]:
        """The held-out volumes of each fold (one volume per fold when the folds were not recorded)."""
        return tuple(self.folds) if self.folds else tuple((c,) for c in self.cases)

    def fold_gains(self, step: int) -> Tuple[float, ...]:
        """Mean gain of each fold's held-out volumes at ``step`` (NaN when none of them was scored)."""
        gains = self.gains(step)
        out = []
        for held in self.fold_cases():
            values = np.array([gains[c] for c in held if c in gains], dtype=np.float64)
            values = values[~np.isnan(values)]
            out.append(float(values.mean()) if values.size else float("nan"))
        return tuple(out)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "steps": list(self.steps),
            "dice": {c: list(v) for c, v in self.dice.items()},
            "dice_per_class": {c: [list(x) for x in v] for c, v in self.dice_per_class.items()},
            "folds": [list(f) for f in self.folds],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossValidation:
        return cls(
            steps=tuple(int(s) for s in data["steps"]),
            dice={str(c): tuple(float(x) for x in v) for c, v in data["dice"].items()},
            dice_per_class={
                str(c): tuple(tuple(float(y) for y in x) for x in v) for c, v in data.get("dice_per_class", {}).items()
            },
            folds=tuple(tuple(str(c) for c in f) for f in data.get("folds", ())),
        )


@dataclass(frozen=True)
class PoolCheck:
    """Predicted voxels per foreground class on a sample of unlabelled volumes, current vs adapted model.

    Attributes:
        cases: the unlabelled volumes predicted.
        current: voxels of each foreground class summed over ``cases``, current model.
        adapted: the same for the adapted model.
        class_names: foreground class names.
        collapsed: the classes whose adapted count is below ``collapse_ratio`` × the current count.
    """

    cases: Tuple[str, ...]
    current: Tuple[int, ...]
    adapted: Tuple[int, ...]
    class_names: Tuple[str, ...]
    collapsed: Tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.collapsed

    def to_dict(self) -> Dict[str, Any]:
        return {
            "cases": list(self.cases),
            "class_names": list(self.class_names),
            "current_voxels": list(self.current),
            "adapted_voxels": list(self.adapted),
            "collapsed": list(self.collapsed),
            "passed": self.passed,
        }


def check_pool(
    current: Mapping[str, Sequence[int]],
    adapted: Mapping[str, Sequence[int]],
    class_names: Sequence[str],
    collapse_ratio: float,
    labelled_mean: Optional[Sequence[float]] = None,
) -> PoolCheck:
    """Flag the classes the adapted model all but stops predicting on unlabelled volumes.

    The reference amount of a class is what the current model predicts on the same volumes, capped by what the
    expert labels suggest (``labelled_mean`` voxels per volume × the number of volumes) when the labels contain the
    class: a poor current model that over-segments must not make a correct shrink look like a collapse. A class
    absent from every label keeps the current model as its reference, so training on empty (or other) labels is
    caught.

    Args:
        current: ``{case_id: voxels of each foreground class}`` predicted by the current model.
        adapted: the same cases predicted by the adapted model.
        class_names: foreground class names (one per count).
        collapse_ratio: a class collapses when ``adapted < collapse_ratio · reference`` (and the reference is not 0).
        labelled_mean: mean voxels of each foreground class per labelled volume (expert labels), or ``None``.
    """
    cases = tuple(sorted(current))
    if set(adapted) != set(cases):
        raise ValueError("both models must be scored on the same cases")
    width = len(class_names)
    now = np.array([current[c] for c in cases], dtype=np.int64).reshape(len(cases), width).sum(axis=0)
    new = np.array([adapted[c] for c in cases], dtype=np.int64).reshape(len(cases), width).sum(axis=0)
    reference = now.astype(np.float64)
    if labelled_mean is not None:
        expected = np.asarray(labelled_mean, dtype=np.float64) * len(cases)
        reference = np.where(expected > 0, np.minimum(reference, expected), reference)
    collapsed = tuple(name for name, ref, b in zip(class_names, reference, new) if ref > 0 and b < collapse_ratio * ref)
    return PoolCheck(
        cases=cases,
        current=tuple(int(x) for x in now),
        adapted=tuple(int(x) for x in new),
        class_names=tuple(class_names),
        collapsed=collapsed,
    )


@dataclass(frozen=True)
class GuardRule:
    """When cross-validated evidence is enough to activate (see :class:`~.config.ValidationConfig`).

    Attributes:
        min_gain: the mean held-out gain over the labelled volumes must reach this.
        min_fold_gain: every fold must gain at least this (a fold's gain is the mean gain of its held-out
            volumes; negative: a fold may lose up to its size); ``None`` = no such limit. This is what refuses a
            model whose mean gain hides a fold below, or barely above, zero.
        min_gain_low: the lower end of the 95 % t-interval of the gain over the labelled volumes must reach this;
            ``None`` = not used. With 2-3 labelled volumes the interval is very wide (t at 1-2 degrees of freedom),
            so this refuses almost everything there.
    """

    min_gain: float = 0.005
    min_fold_gain: Optional[float] = None
    min_gain_low: Optional[float] = None

    @classmethod
    def of(cls, validation: Any) -> GuardRule:
        """The thresholds a :class:`~.config.ValidationConfig` sets (the rule the guard applies by default there)."""
        return cls(validation.min_gain, validation.min_fold_gain, validation.min_gain_low)

    def to_dict(self) -> Dict[str, Any]:
        return {"min_gain": self.min_gain, "min_fold_gain": self.min_fold_gain, "min_gain_low": self.min_gain_low}


@dataclass(frozen=True)
class Judgement:
    """The rule applied to the gains: ``activate``, and ``failed``, the first check that refused (``"mean"``,
    ``"worst_fold"``, ``"lower_bound"``; empty when activated). ``worst_fold`` is the index of the fold with the
    smallest gain (-1 when no fold was scored)."""

    activate: bool
    failed: str
    mean: float
    low: float
    high: float
    worst_gain: float
    worst_fold: int


def judge(fold_gains: Sequence[float], rule: GuardRule, volume_gains: Optional[Sequence[float]] = None) -> Judgement:
    """Apply ``rule`` to the held-out gains of one labelled set (pure: the guard and its calibration share it).

    Args:
        fold_gains: the mean held-out gain of each fold (NaN = nothing scored in that fold).
        rule: the thresholds.
        volume_gains: the gain of each labelled volume (the mean and the interval are taken over these);
            default ``fold_gains`` (leave-one-out: one volume per fold).
    """
    folds = np.asarray(fold_gains, dtype=np.float64)
    mean, low, high = mean_interval(list(folds if volume_gains is None else volume_gains))
    scored = np.where(np.isnan(folds), np.inf, folds)
    worst = int(np.argmin(scored)) if folds.size and np.isfinite(scored).any() else -1
    worst_gain = float(folds[worst]) if worst >= 0 else float("nan")

    def verdict(failed: str) -> Judgement:
        return Judgement(not failed, failed, mean, low, high, worst_gain, worst)

    if not mean >= rule.min_gain:  # a NaN gain (nothing scored) is no evidence of a gain
        return verdict("mean")
    if rule.min_fold_gain is not None and not worst_gain >= rule.min_fold_gain:
        return verdict("worst_fold")
    if rule.min_gain_low is not None and not low >= rule.min_gain_low:  # NaN with one volume: refused
        return verdict("lower_bound")
    return verdict("")


@dataclass(frozen=True)
class ActivationDecision:
    """Whether a new version becomes active, and why (stored in the version's provenance and the job result).

    Attributes:
        activate: the verdict.
        reason: what was checked and what it showed, for the user (several sentences).
        method: ``cross_validation``, ``too_few_labels``, ``too_few_subjects`` or ``unguarded``.
        stop_step: the training step the final model stopped at.
        dice_before: cross-validated mean Dice of the current model (NaN without cross-validation).
        dice_after: cross-validated mean Dice of the recipe at ``stop_step``.
        gain: ``dice_after - dice_before``; ``gain_low``/``gain_high``: its 95 % interval over labelled volumes.
        pool: the pool check (``None`` when not run).
        fold_gains: the mean held-out gain of each cross-validation fold at ``stop_step``.
        volume_gains: ``{case_id: held-out gain}`` of each labelled volume at ``stop_step``.
        rule: the thresholds the verdict applied (``None`` without cross-validation).
        failed: the check that refused (``mean``, ``worst_fold``, ``lower_bound``, ``pool``, ``too_few_labels``,
            ``too_few_subjects``), empty otherwise.
        label_meaning: what the guard cannot see and what checked it instead: cross-validation scores against the
            same labels, so labels of the wrong meaning (swapped classes, another structure) pass it; whether the
            label checks refused such labels before training or were overridden (set by the adaptation run).
    """

    activate: bool
    reason: str
    method: str
    stop_step: int
    dice_before: float = float("nan")
    dice_after: float = float("nan")
    gain: float = float("nan")
    gain_low: float = float("nan")
    gain_high: float = float("nan")
    pool: Optional[PoolCheck] = None
    fold_gains: Tuple[float, ...] = ()
    volume_gains: Mapping[str, float] = field(default_factory=dict)
    rule: Optional[GuardRule] = None
    failed: str = ""
    label_meaning: str = ""

    def to_dict(self) -> Dict[str, Any]:
        def clean(x: float) -> Optional[float]:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "activate": self.activate,
            "reason": self.reason,
            "method": self.method,
            "stop_step": self.stop_step,
            "dice_before": clean(self.dice_before),
            "dice_after": clean(self.dice_after),
            "gain": clean(self.gain),
            "gain_low": clean(self.gain_low),
            "gain_high": clean(self.gain_high),
            "pool": None if self.pool is None else self.pool.to_dict(),
            "fold_gains": [clean(g) for g in self.fold_gains],
            "volume_gains": {c: clean(g) for c, g in self.volume_gains.items()},
            "rule": None if self.rule is None else self.rule.to_dict(),
            "failed": self.failed,
            "label_meaning": self.label_meaning,
        }


_OVERRIDE = "Stored but not activated (assft models activate makes it active anyway)."


def what_folds_can_know(cv: CrossValidation, low: float, high: float) -> str:
    """One or two sentences on what this cross-validation can and cannot show (said with every verdict)."""
    n = len(cv.cases)
    if n == 2:
        return (
            "With 2 labelled volumes each fold adapts on one volume and scores the other: this shows whether "
            "adapting on one labelled volume helped the other, not how the model trained on both does on the "
            "rest of the site, and 2 values give no useful interval. Label more volumes for firmer evidence."
        )
    interval = f"[{low:+.3f}, {high:+.3f}]" if not math.isnan(low) else "not available"
    return (
        f"The 95 % interval of the gain over the {n} labelled volumes is {interval}; it says how the recipe "
        f"does on volumes like these {n}, not on the whole site."
    )


def decide(
    cv: Optional[CrossValidation],
    pool: Optional[PoolCheck],
    min_gain: float,
    stop_step: int,
    labelled: int,
    min_fold_gain: Optional[float] = None,
    min_gain_low: Optional[float] = None,
    subjects: Optional[int] = None,
) -> ActivationDecision:
    """The guard's verdict.

    Activate only when cross-validation over at least two labelled volumes passes :func:`judge` at the stopping
    step (a mean held-out Dice gain of at least ``min_gain``, every fold gaining at least ``min_fold_gain``, and
    the interval's lower end at least ``min_gain_low``, the last two when set), and the pool check (when run)
    found no collapsed class. The reason says which check decided, with the numbers, and what the folds can and
    cannot know (:func:`what_folds_can_know`).

    Args:
        cv: the cross-validation (``None`` with fewer than two labelled volumes, or subjects).
        pool: the pool check, or ``None``.
        min_gain: the smallest mean gain that activates.
        stop_step: the step the final model was trained to (with cross-validation, one of ``cv.steps``: the
            verdict is read there).
        labelled: number of usable labelled volumes.
        min_fold_gain: the smallest gain every fold must show (``None``: not checked).
        min_gain_low: the smallest allowed lower end of the gain's 95 % interval (``None``: not checked).
        subjects: number of subjects the labelled volumes come from (:func:`subject_of`; ``None``: one each).
    """
    if cv is None and labelled >= 2 and subjects is not None and subjects < 2:
        return ActivationDecision(
            activate=False,
            method="too_few_subjects",
            stop_step=stop_step,
            pool=pool,
            failed="too_few_subjects",
            reason=(
                f"the {labelled} labelled volumes all come from one subject: a fold that trains on one of them and "
                "scores another scores the subject it trained on, so nothing shows that the adapted model is "
                "better on other subjects; it was stored but not activated. Label a volume of another subject, or "
                "activate it yourself (assft models activate)."
            ),
        )
    if cv is None:
        return ActivationDecision(
            activate=False,
            method="too_few_labels",
            stop_step=stop_step,
            pool=pool,
            failed="too_few_labels",
            reason=(
                f"only {labelled} labelled volume(s): nothing can be held out to check that the adapted model is "
                "better, so it was stored but not activated. Label at least one more volume, or activate it "
                "yourself (assft models activate)."
            ),
        )
    rule = GuardRule(min_gain=min_gain, min_fold_gain=min_fold_gain, min_gain_low=min_gain_low)
    volume_gains = cv.gains(stop_step)
    fold_gains = cv.fold_gains(stop_step)
    verdict = judge(fold_gains, rule, list(volume_gains.values()))
    index = cv.steps.index(stop_step)
    before = mean_interval([cv.dice[c][0] for c in cv.cases])[0]
    after = mean_interval([cv.dice[c][index] for c in cv.cases])[0]
    common = dict(
        method="cross_validation",
        stop_step=stop_step,
        dice_before=before,
        dice_after=after,
        gain=verdict.mean,
        gain_low=verdict.low,
        gain_high=verdict.high,
        pool=pool,
        fold_gains=tuple(fold_gains),
        volume_gains=dict(volume_gains),
        rule=rule,
    )
    scores = f"cross-validated mean Dice {before:.3f} -> {after:.3f} on {len(cv.cases)} labelled volume(s)"
    limits = what_folds_can_know(cv, verdict.low, verdict.high)
    mean = verdict.mean
    worst = _fold_words(cv, verdict, volume_gains)
    if verdict.failed == "mean":
        return ActivationDecision(
            activate=False,
            failed="mean",
            **common,
            reason=(
                f"likely not better than the current model ({scores}, gain {mean:+.3f} < {min_gain:+.3f}). {limits} "
                + _OVERRIDE
            ),
        )
    if verdict.failed == "worst_fold":
        return ActivationDecision(
            activate=False,
            failed="worst_fold",
            **common,
            reason=(
                f"not activated although the mean gain is {mean:+.3f} ({scores}): {worst} changed by "
                f"{verdict.worst_gain:+.3f}, below the {min_fold_gain:+.3f} every fold must reach "
                f"(validation.min_fold_gain). The folds do not agree that it helps, so the adapted model may be no "
                f"better, or worse, on part of the site. {limits} " + _OVERRIDE
            ),
        )
    if verdict.failed == "lower_bound":
        return ActivationDecision(
            activate=False,
            failed="lower_bound",
            **common,
            reason=(
                f"not activated although the mean gain is {mean:+.3f} ({scores}): the lower end of its 95 % interval, "
                f"{verdict.low:+.3f}, is below the {min_gain_low:+.3f} required (validation.min_gain_low). {limits} "
                + _OVERRIDE
            ),
        )
    if pool is not None and not pool.passed:
        return ActivationDecision(
            activate=False,
            failed="pool",
            **common,
            reason=(
                f"its predictions on the unlabelled pool collapsed for {', '.join(pool.collapsed)} (far fewer voxels "
                f"than the current model predicts), although {scores}; the labels may be empty or of another "
                "structure. " + _OVERRIDE
            ),
        )
    if min_fold_gain is not None:
        spread = f"every fold reached the {min_fold_gain:+.3f} required (worst: {worst}, {verdict.worst_gain:+.3f})"
    elif verdict.worst_gain < 0:
        spread = f"note: {worst} lost {-verdict.worst_gain:.3f}; no fold is required to gain (validation.min_fold_gain)"
    else:
        spread = f"every fold gained (worst: {worst}, {verdict.worst_gain:+.3f})"
    return ActivationDecision(
        activate=True,
        **common,
        reason=(f"better than the current model: {scores} (gain {mean:+.3f} >= {min_gain:+.3f}); {spread}. {limits}"),
    )


def _fold_words(cv: CrossValidation, verdict: Judgement, volume_gains: Mapping[str, float]) -> str:
    """``fold 2 (case_a -0.150, case_b +0.080)``: the fold with the smallest gain, with each volume's gain when it
    holds several."""
    if verdict.worst_fold < 0:
        return "no fold"
    held = cv.fold_cases()[verdict.worst_fold]
    if len(held) == 1:
        return f"fold {verdict.worst_fold + 1} ({held[0]})"
    return f"fold {verdict.worst_fold + 1} ({', '.join(f'{c} {volume_gains.get(c, math.nan):+.3f}' for c in held)})"
