"""Refuse labels that would train a model on nothing or on the wrong structure, before any training starts.

An all-background label file (an export that lost its segments, a mask saved before painting) trains a model that
predicts nothing; a class that no labelled volume contains (a 0/1 mask of another structure given to a model with
two foreground classes) teaches the network to forget that class. Both look like ordinary label files, so they are
caught here, by looking at what the labelled set contains, and reported with the case names:

* **no foreground**: a label with only background voxels;
* **class never labelled**: a foreground class of the model that no labelled volume contains;
* **far from the prediction** (:func:`require_labels_near_prediction`): the current model predicts each labelled
  volume once; a label whose foreground lies mostly away from anything it predicts (fewer than
  1/``FinetuneConfig.label_prediction_ratio`` (15) of its voxels within :data:`REACH_VOXELS` of the predicted
  foreground) is refused when the model predicts enough to say where the structure is (:func:`model_locates`: a
  mask of another structure). Otherwise, and for a label with 15 times more or less foreground than predicted or
  none predicted at all, it only warns: a model that fails on a new site under- or over-segments, or predicts
  nothing or specks away from the structure, and its labels are exactly what adaptation needs (ACDC under the
  harsh shift: 10 of the 50 development labels lie away from a prediction 13-187 times smaller, or from none);
* **swapped classes** (:func:`find_swap_issues`): two label classes that the model predicts, each, as the other far
  more than as labelled (anterior and posterior swapped in the export);
* **misregistered** (:func:`find_registration_issues`): a label that overlaps the prediction far better when shifted
  by a few millimetres than where it is (drawn on another image, exported with another origin); a smaller gain,
  still beyond any true label's, only warns (:func:`find_registration_warnings`);
* **shape** (:func:`find_shape_issues`, no model needed): an inverted mask (too much of the volume), a painted box
  (too much of its bounding box), a class spanning one slice, a one-voxel-thick outline, a class far larger than
  the anatomy's structure (another organ: a spleen given as hippocampus) or far smaller. The last three are
  expected of a partial label and pass when the labels are declared partial (``FinetuneConfig.partial_labels``,
  ``--partial-labels``).

The limits of the swap, misregistration and shape checks, and how little a model may predict for its prediction's
position to count, are per anatomy (:data:`LABEL_CHECK_THRESHOLDS`, chosen by the card,
:func:`thresholds_for`), measured on each anatomy's development cases so that every true label passes under every
benchmark shift (``scripts/measure_label_checks.py``). Cross-validation cannot see any of these errors (it scores
against the same labels), so they are checked here, before training, and ``assft evaluate`` applies the same checks
(:func:`check_evaluation_labels`).

``FinetuneConfig.allow_implausible_labels`` (``assft adapt --allow-implausible-labels``) turns the refusal into a
warning for the rare case where this is intended (e.g. healthy volumes with truly nothing to segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .cards import card_anatomy
from .errors import InputError
from .plausibility import check_image
from .progress import ProgressCallback, emit

__all__ = [
    "LABEL_CHECK_THRESHOLDS",
    "REACH_VOXELS",
    "SHIFT_REACH_VOXELS",
    "ClassOverlap",
    "EvaluationChecks",
    "ForegroundAgreement",
    "LabelCheckThresholds",
    "LabelIssue",
    "LabelShape",
    "RegistrationShift",
    "check_evaluation_label",
    "class_overlap",
    "find_label_issues",
    "find_prediction_issues",
    "find_registration_issues",
    "find_registration_warnings",
    "find_shape_issues",
    "find_swap_issues",
    "foreground_agreement",
    "label_shape",
    "model_locates",
    "pooled_overlap",
    "predict_agreements",
    "registration_shift",
    "require_labels_near_prediction",
    "require_plausible_labelled_set",
    "require_plausible_labels",
    "thresholds_for",
]

#: A labelled voxel counts as "where the model sees the structure" when it lies within this many face-connected
#: steps of a predicted foreground voxel (a 3-voxel tolerance: the real labels under the scanner shift at strength
#: 1.0 have at least 19 % of their voxels that close to the prediction, but only 3 % inside it).
REACH_VOXELS = 3


@dataclass(frozen=True)
class LabelIssue:
    """One reason to distrust the labelled set.

    Attributes:
        kind: ``"no_foreground"``, ``"class_never_labelled"``, ``"away_from_prediction"``,
            ``"more_foreground_than_predicted"`` (refused only where nothing is predicted, else a warning, like
            ``"less_foreground_than_predicted"``), ``"swapped"``, ``"misregistered"``,
            ``"possibly_misregistered"`` (a warning), or a shape kind of
            :func:`find_shape_issues` (``"inverted"``, ``"filled_box"``, ``"one_slice"``, ``"outline"``,
            ``"class_too_large"``, ``"class_too_small"``).
        cases: the labelled volumes concerned (for ``class_never_labelled``: every labelled volume).
        class_name: the class concerned, or ``None``.
        message: a sentence a user can act on.
    """

    kind: str
    cases: Tuple[str, ...]
    class_name: Optional[str]
    message: str


def find_label_issues(labels: Mapping[str, np.ndarray], class_names: Sequence[str]) -> List[LabelIssue]:
    """What looks wrong in a labelled set.

    Args:
        labels: ``{case_id: class-index label map [I, J, K]}`` of every labelled volume.
        class_names: the model's classes, background first.

    Returns:
        the issues, empty-label cases first, then classes in class order.
    """
    issues: List[LabelIssue] = []
    present = {case: set(int(v) for v in np.unique(np.asarray(array))) for case, array in labels.items()}
    empty = tuple(sorted(case for case, values in present.items() if not values - {0}))
    if empty:
        issues.append(
            LabelIssue(
                "no_foreground",
                empty,
                None,
                (
                    f"{len(empty)} label file(s) contain only background: {', '.join(empty)}. Training on them "
                    "teaches the "
                    "model to predict nothing."
                ),
            )
        )
    labelled = [values for case, values in present.items() if case not in empty]
    if labelled:
        for index, name in enumerate(class_names[1:], start=1):
            if not any(index in values for values in labelled):
                issues.append(
                    LabelIssue(
                        "class_never_labelled",
                        tuple(sorted(present)),
                        name,
                        (
                            f"class {name!r} (value {index}) appears in none of the {len(present)} labelled volume(s) "
                            f"({', '.join(sorted(present)[:8])}{', ...' if len(present) > 8 else ''}); the labels "
                            "may be of "
                            "another structure or use other class values than the model card."
                        ),
                    )
                )
    return issues


def require_plausible_labels(
    labels: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    allow: bool,
    warn: Optional[Callable[[str], None]] = None,
    more: Sequence[LabelIssue] = (),
) -> List[LabelIssue]:
    """Raise on implausible labels unless ``allow``; then each issue is passed to ``warn`` instead.

    Args:
        more: issues found by other checks (e.g. :func:`find_shape_issues`), reported with these.

    Raises:
        InputError: an issue was found and ``allow`` is false; the message lists every issue and how to proceed.
    """
    issues = find_label_issues(labels, class_names) + list(more)
    if issues and not allow:
        raise InputError(
            "the labels look wrong, so the model was not adapted: "
            + " ".join(i.message for i in issues)
            + " Fix the label files (or the model card's class_names), or pass --allow-implausible-labels "
            "(FinetuneConfig.allow_implausible_labels) if this is intended."
        )
    for issue in issues:
        if warn is not None:
            warn(f"training on implausible labels (allowed): {issue.message}")
    return issues


def require_plausible_labelled_set(
    cases: Sequence[Any],
    class_names: Sequence[str],
    allow: bool,
    warn: Optional[Callable[[str], None]] = None,
    *,
    limits: Optional[LabelCheckThresholds] = None,
    partial: bool = False,
) -> List[LabelIssue]:
    """The checks of adaptation's labelled set: every image plausible, then the labels (and their shapes).

    Args:
        cases: records with ``case_id``, ``image`` and ``label`` (:class:`~ASSFTActive.io.Volume`) attributes.
        class_names, allow, warn: as in :func:`require_plausible_labels`.
        limits: the shape limits (:func:`thresholds_for` the card); ``None``: no shape checks.
        partial: the labels are declared partial (:func:`find_shape_issues`).

    Raises:
        InputError: an implausible image (:func:`ASSFTActive.plausibility.check_image`, never allowed), or
            implausible labels when ``allow`` is false.
    """
    for case in cases:
        check_image(case.image)
    labels = {c.case_id: np.asarray(c.label.array) for c in cases}
    shapes = [label_shape(c.case_id, labels[c.case_id], c.image.spacing, len(class_names)) for c in cases]
    more = find_shape_issues(shapes, class_names, limits, partial) if limits is not None else []
    return require_plausible_labels(labels, class_names, allow, warn, more)


# ------------------------------------------------------------------------------------- label meaning (issue 29)


@dataclass(frozen=True)
class LabelShape:
    """What one label map looks like on its own (no model needed), the evidence of the shape checks.

    Attributes:
        case_id: the labelled volume.
        volume_share: share of the volume's voxels that are foreground (an inverted mask: most of them).
        box_fill: share of the foreground's bounding box that is foreground (a filled box: 1).
        thinnest: the fewest slices any present class spans along any axis (a one-slice label, one voxel per
            class: 1).
        interior_share: the lowest, over present classes, share of a class's voxels whose four in-plane neighbours
            hold the same class, in the plane of the two axes with the most voxels (a one-voxel-thick outline: near
            0; the plane is the one a contour is drawn in, and it stays meaningful for thick-slice volumes).
        class_volume_mm3: volume of each foreground class in mm³ (0 when absent).
    """

    case_id: str
    volume_share: float
    box_fill: float
    thinnest: int
    interior_share: float
    class_volume_mm3: Tuple[float, ...]


def label_shape(case_id: str, label: np.ndarray, spacing: Sequence[float], num_classes: int) -> LabelShape:
    """The :class:`LabelShape` of a class-index label map ``[I, J, K]`` with voxel ``spacing`` (mm, ``[3]``)."""
    label = np.asarray(label)
    foreground = label > 0
    count = int(np.count_nonzero(foreground))
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    volumes = tuple(float(np.count_nonzero(label == c)) * voxel_mm3 for c in range(1, num_classes))
    if count == 0:
        return LabelShape(str(case_id), 0.0, 0.0, 0, 0.0, volumes)
    where = np.nonzero(foreground)
    box = tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)
    box_voxels = int(np.prod([b.stop - b.start for b in box]))
    crop = label[box]
    plane = tuple(sorted(np.argsort(label.shape)[-2:]))  # the two axes with the most voxels
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1, 1, 1] = True
    for axis in plane:
        index = [1, 1, 1]
        for offset in (0, 2):
            index[axis] = offset
            cross[tuple(index)] = True
        index[axis] = 1
    thinnest, interior = None, None
    for c in range(1, num_classes):
        mask = crop == c
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        spans = [int(np.count_nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)]
        thinnest = min(spans) if thinnest is None else min(thinnest, min(spans))
        kept = int(np.count_nonzero(ndimage.binary_erosion(mask, structure=cross, border_value=0)))
        interior = kept / n if interior is None else min(interior, kept / n)
    return LabelShape(str(case_id), count / label.size, count / box_voxels, int(thinnest), float(interior), volumes)


@dataclass(frozen=True)
class ClassOverlap:
    """Voxels of each label class inside each predicted class of the current model (the evidence of the swap check).

    Attributes:
        case_id: the labelled volume.
        counts: ``counts[k][j]`` = voxels labelled ``k`` that the model predicts as ``j`` (``[C][C]``, background 0).
    """

    case_id: str
    counts: Tuple[Tuple[int, ...], ...]

    def swap(self, k: int, j: int) -> Tuple[float, float]:
        """``(ratio, share)`` of the hypothesis "label classes ``k`` and ``j`` are swapped", taken both ways: how
        many times more voxels labelled ``k`` the model predicts as ``j`` than as ``k``, and labelled ``j`` as ``k``
        than as ``j``, the smaller of the two (inf when a class is never predicted as labelled but is as the
        other); ``share``: the smaller share of each class's voxels predicted as the other. A model that fails by
        predicting one class for both agrees on that class, so one direction stays low and the pair is not taken
        for a swap, whatever the classes' sizes; a swapped label with a working model crosses both ways.
        ``(0, 0)`` when either class is not labelled."""

        def way(a: int, b: int) -> Tuple[float, float]:
            crossed, agreed, labelled = self.counts[a][b], self.counts[a][a], sum(self.counts[a])
            ratio = crossed / agreed if agreed else (math.inf if crossed else 0.0)
            return ratio, crossed / labelled

        if sum(self.counts[k]) == 0 or sum(self.counts[j]) == 0:
            return 0.0, 0.0
        (r1, s1), (r2, s2) = way(k, j), way(j, k)
        return min(r1, r2), min(s1, s2)


def class_overlap(case_id: str, label: np.ndarray, prediction: np.ndarray, num_classes: int) -> ClassOverlap:
    """:class:`ClassOverlap` of a label map and the model's prediction ``[I, J, K]`` of the same volume."""
    flat = np.asarray(label).astype(np.int64).ravel() * num_classes + np.asarray(prediction).astype(np.int64).ravel()
    table = np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return ClassOverlap(str(case_id), tuple(tuple(int(v) for v in row) for row in table))


@dataclass(frozen=True)
class LabelCheckThresholds:
    """The limits of the label-meaning checks for one anatomy, measured on its development cases.

    ``scripts/measure_label_checks.py`` measures every statistic on the true labels of an anatomy's development
    split (reserved cases never read), under no shift and each benchmark shift, and sets each limit from the worst
    true label with a stated margin; ``Testing/Benchmarks/results/label_check_thresholds.json`` holds the
    measurements, and ``Testing/Python/test_label_meaning.py`` checks that :data:`LABEL_CHECK_THRESHOLDS` equals it.

    Attributes:
        anatomy: what the limits were measured on (``default``, for a card of another anatomy: only the checks
            that do not depend on the structure's shape and size).
        max_volume_share: a label whose foreground covers more of the volume is refused (inverted mask).
        max_box_fill: a label that fills more of its bounding box is refused (a painted box).
        min_thinnest: a class spanning fewer slices along an axis is refused unless labels are declared partial
            (a one-slice label, one voxel per class).
        min_interior_share: a class with a smaller in-plane interior is refused unless declared partial (an
            outline).
        max_swap_ratio, min_swap_share: label classes ``k`` and ``j`` are refused as swapped when, both ways,
            the model predicts more than ``max_swap_ratio`` times as many of a class's voxels as the other class as
            it does as the class, on at least ``min_swap_share`` of each class (:meth:`ClassOverlap.swap`).
        class_volume_mm3: ``{class name: (least, most)}`` mm³ of a complete label's class; outside is another
            structure (most) or a partial label (least, unless declared); ``None``: not measured (no check).
        measured_on: where the numbers come from, in words.
        max_shift_gain: a label is refused as misregistered when shifting it (up to :data:`SHIFT_REACH_VOXELS`
            voxels) makes it overlap the model's prediction more than this many times better than in place
            (:func:`registration_shift`); ``None``: not measured for this anatomy (no check).
        warn_shift_gain: a label whose shift gain lies above this (the largest gain of a true label, measured) but
            not above ``max_shift_gain`` is accepted with a warning (:func:`find_registration_warnings`): a shift of
            about 4 voxels lands there more often than above the refusal limit; ``None``: no warning.
        max_away_excess: the checks that judge a label by where the model predicts (away from the prediction,
            misregistered) refuse only when the label has at most this many times the predicted foreground
            (:func:`model_locates`); with less predicted, the model fails on the image and the label only warns.
            Half the smallest such ratio of a true label lying away from the prediction under any benchmark shift;
            ``None``: ``FinetuneConfig.label_prediction_ratio`` (no true label lay away).
    """

    anatomy: str
    max_volume_share: float
    max_box_fill: float
    min_thinnest: int
    min_interior_share: float
    max_swap_ratio: float
    min_swap_share: float
    class_volume_mm3: Optional[Mapping[str, Tuple[float, float]]]
    measured_on: str
    max_shift_gain: Optional[float] = None
    warn_shift_gain: Optional[float] = None
    max_away_excess: Optional[float] = None


_MEASURED = (
    "development split ({n} cases, reserved.txt excluded) by scripts/measure_label_checks.py; "
    "Testing/Benchmarks/results/label_check_thresholds.json"
)

#: The limits per anatomy (:class:`LabelCheckThresholds`), as ``scripts/measure_label_checks.py`` set them, each on
#: its own development split and model (ACDC: the source model of ``scripts/train_acdc_source.py``, measured
#: 2026-12-07); the warning limit of a shifted label is the largest true label's gain under every benchmark shift.
LABEL_CHECK_THRESHOLDS: Dict[str, LabelCheckThresholds] = {
    "hippocampus": LabelCheckThresholds(
        "hippocampus",
        max_volume_share=0.1495,
        max_box_fill=0.6237,
        min_thinnest=2,
        min_interior_share=0.2442,
        max_swap_ratio=1.0,
        min_swap_share=0.2,
        class_volume_mm3={"anterior": (386.0, 7431.0), "posterior": (360.0, 5958.0)},
        measured_on="MSD hippocampus " + _MEASURED.format(n=70) + "; embedded default model, no shift, scanner 0.3 "
        "and 0.7",
        max_shift_gain=1.722,
        warn_shift_gain=1.361,
    ),
    "acdc": LabelCheckThresholds(
        "acdc",
        max_volume_share=0.1356,
        max_box_fill=0.767,
        min_thinnest=2,
        min_interior_share=0.2383,
        max_swap_ratio=1.0,
        min_swap_share=0.2,
        class_volume_mm3={"RV": (231.3, 45465.0), "myocardium": (627.3, 69291.0), "LV": (386.0, 61140.0)},
        measured_on="ACDC " + _MEASURED.format(n=50) + "; ACDC source model, no shift, scanner 0.4 and 0.7",
        max_shift_gain=1.654,
        warn_shift_gain=1.327,
        max_away_excess=6.45,
    ),
    "default": LabelCheckThresholds(
        "default",
        max_volume_share=0.5,
        max_box_fill=1.0,
        min_thinnest=2,
        min_interior_share=0.0,
        max_swap_ratio=1.0,
        min_swap_share=0.2,
        class_volume_mm3=None,
        measured_on="only what does not depend on the structure's shape and size (an inverted mask, a one-slice "
        "class, swapped classes at the measured limit, the loosest measured trust in the prediction); no box, "
        "outline, volume or misregistration limit",
        max_away_excess=6.45,
    ),
}


def thresholds_for(card: Any) -> LabelCheckThresholds:
    """The limits for a model card: those of its anatomy (:func:`ASSFTActive.cards.card_anatomy`), else ``default``.
    A class-volume range is used only when the card's foreground class names are the measured ones."""
    anatomy = card_anatomy(card, LABEL_CHECK_THRESHOLDS)
    limits = LABEL_CHECK_THRESHOLDS[anatomy or "default"]
    if limits.class_volume_mm3 is not None and set(limits.class_volume_mm3) != set(card.class_names[1:]):
        limits = replace(limits, class_volume_mm3=None)
    return limits


def find_shape_issues(
    shapes: Sequence[LabelShape], class_names: Sequence[str], limits: LabelCheckThresholds, partial: bool = False
) -> List[LabelIssue]:
    """Labels whose shape says they mark something else than a complete structure of the model's classes.

    Args:
        shapes: one per labelled volume (an all-background label is left to :func:`find_label_issues`).
        class_names: the model's classes, background first.
        limits: :func:`thresholds_for` the model's card.
        partial: the labels are declared partial (``FinetuneConfig.partial_labels``, ``--partial-labels``): a
            one-slice label, an outline or a class smaller than a complete one is then expected.

    Returns:
        the issues (kinds ``inverted``, ``filled_box``, ``one_slice``, ``outline``, ``class_too_large``,
        ``class_too_small``), in case order.
    """
    issues: List[LabelIssue] = []
    partial_hint = " If the labels are deliberately partial, declare it with --partial-labels."
    for s in shapes:
        if s.thinnest == 0:
            continue
        c = s.case_id
        if s.volume_share > limits.max_volume_share:
            issues.append(
                LabelIssue(
                    "inverted",
                    (c,),
                    None,
                    (
                        f"{c}: {100 * s.volume_share:.0f} % of the volume is foreground (at most "
                        f"{100 * limits.max_volume_share:.0f} % in true {limits.anatomy} labels); an inverted mask?"
                    ),
                )
            )
        if s.box_fill > limits.max_box_fill:
            issues.append(
                LabelIssue(
                    "filled_box",
                    (c,),
                    None,
                    (
                        f"{c}: the foreground fills {100 * s.box_fill:.0f} % of its bounding box (at most "
                        f"{100 * limits.max_box_fill:.0f} % in true {limits.anatomy} labels); a painted box, not a "
                        "structure?"
                    ),
                )
            )
        for index, name in enumerate(class_names[1:]):
            volume = s.class_volume_mm3[index] if index < len(s.class_volume_mm3) else 0.0
            span = (limits.class_volume_mm3 or {}).get(name)
            if span is None or volume == 0:
                continue
            if volume > span[1]:
                issues.append(
                    LabelIssue(
                        "class_too_large",
                        (c,),
                        name,
                        (
                            f"{c}: class {name!r} covers {volume:.0f} mm³, more than any true {limits.anatomy} label "
                            "allows "
                            f"({span[1]:.0f} mm³); the label marks another structure?"
                        ),
                    )
                )
            elif volume < span[0] and not partial:
                issues.append(
                    LabelIssue(
                        "class_too_small",
                        (c,),
                        name,
                        (
                            f"{c}: class {name!r} covers only {volume:.0f} mm³ (a complete {limits.anatomy} label "
                            "has at "
                            f"least {span[0]:.0f} mm³); a partial or misplaced label?" + partial_hint
                        ),
                    )
                )
        if partial:
            continue
        if s.thinnest < limits.min_thinnest:
            issues.append(
                LabelIssue(
                    "one_slice",
                    (c,),
                    None,
                    (
                        f"{c}: a class spans only {s.thinnest} slice(s) along an axis; a one-slice label trains the "
                        "rest of "
                        "the structure as background." + partial_hint
                    ),
                )
            )
        elif s.interior_share < limits.min_interior_share:
            issues.append(
                LabelIssue(
                    "outline",
                    (c,),
                    None,
                    (
                        f"{c}: only {100 * s.interior_share:.0f} % of a class's voxels lie inside it (at least "
                        f"{100 * limits.min_interior_share:.0f} % in true {limits.anatomy} labels); an outline "
                        "trains the "
                        "interior as background. Fill the outline." + partial_hint
                    ),
                )
            )
    return issues


def find_registration_issues(
    agreements: Sequence[ForegroundAgreement], limits: LabelCheckThresholds, max_ratio: float
) -> List[LabelIssue]:
    """Labels that overlap the current model's prediction far better when shifted: drawn on another image or
    exported with another origin (misregistered by a few millimetres).

    ``max_ratio`` (``FinetuneConfig.label_prediction_ratio``): a label where the model predicts too little to say
    where the structure is (:func:`model_locates`) is not refused here (:func:`find_registration_warnings` warns):
    it fails on that image (ACDC's patient006_frame01 under the harsh shift: 1,468 predicted voxels, all away from
    the heart), as for the "away from the prediction" check."""
    if limits.max_shift_gain is None:
        return []
    issues = []
    for a in agreements:
        if a.shift is not None and a.shift.gain > limits.max_shift_gain and model_locates(a, max_ratio, limits):
            gain = "only when shifted" if math.isinf(a.shift.gain) else f"{a.shift.gain:.1f} times better"
            issues.append(
                LabelIssue(
                    "misregistered",
                    (a.case_id,),
                    None,
                    (
                        f"{a.case_id}: the label overlaps the current model's prediction {gain} when shifted by "
                        f"{a.shift.offset_mm:.1f} mm than where it is ({100 * a.shift.share:.0f} % of the label then "
                        f"overlaps; true {limits.anatomy} labels at most {limits.max_shift_gain:g} times); was it "
                        "drawn on "
                        "another image, or exported with another origin? (A model that fails on this image and "
                        "predicts a "
                        "blob elsewhere gives the same sign.)"
                    ),
                )
            )
    return issues


def find_registration_warnings(
    agreements: Sequence[ForegroundAgreement], limits: LabelCheckThresholds, max_ratio: float
) -> List[LabelIssue]:
    """Labels that overlap the prediction better when shifted than any true label did (``warn_shift_gain``), but
    not enough to be refused (``max_shift_gain``, :func:`find_registration_issues`): possibly misregistered by a
    few millimetres; and labels above the refusal limit where the model predicts too little to say where the
    structure is (:func:`model_locates`: it fails on the image). Accepted with a warning so neither is silent."""
    if limits.warn_shift_gain is None and limits.max_shift_gain is None:
        return []
    floor = limits.warn_shift_gain if limits.warn_shift_gain is not None else limits.max_shift_gain
    ceiling = limits.max_shift_gain if limits.max_shift_gain is not None else math.inf
    issues = []
    for a in agreements:
        if a.shift is None or a.shift.gain <= floor:
            continue
        gain = "only when shifted" if math.isinf(a.shift.gain) else f"{a.shift.gain:.2f} times better"
        where = (
            f"{a.case_id}: the label overlaps the current model's prediction {gain} when shifted by "
            f"{a.shift.offset_mm:.1f} mm than where it is"
        )
        if a.shift.gain <= ceiling:
            message = (
                f"{where} (true {limits.anatomy} labels at most {limits.warn_shift_gain:g} times; refused above "
                f"{ceiling:g}); check that it was drawn on this image."
            )
        elif not model_locates(a, max_ratio, limits):
            message = (
                f"{where}, but the model predicts only {a.predicted_voxels} foreground voxels against the label's "
                f"{a.label_voxels}, so it likely fails on this image and its prediction says little about where the "
                "structure is; check that the label was drawn on this image."
            )
        else:
            continue  # refused by find_registration_issues
        issues.append(LabelIssue("possibly_misregistered", (a.case_id,), None, message))
    return issues


def pooled_overlap(overlaps: Sequence[ClassOverlap]) -> Optional[ClassOverlap]:
    """The labelled set as one :class:`ClassOverlap` (counts summed over its volumes), ``None`` when empty: a class
    map swapped in the export swaps every label, and the sum shows it where each volume alone rests on too few
    voxels."""
    if not overlaps:
        return None
    counts = np.sum([np.asarray(o.counts) for o in overlaps], axis=0)
    return ClassOverlap(
        f"the {len(overlaps)} labelled volumes together", tuple(tuple(int(v) for v in row) for row in counts)
    )


def find_swap_issues(
    overlaps: Sequence[ClassOverlap], class_names: Sequence[str], limits: LabelCheckThresholds
) -> List[LabelIssue]:
    """Pairs of label classes that the current model predicts the other way round far more than as labelled
    (classes swapped in the label file or the card, e.g. anterior and posterior), per labelled volume."""
    issues: List[LabelIssue] = []
    for overlap in overlaps:
        for k in range(1, len(class_names)):
            for j in range(k + 1, len(class_names)):
                ratio, share = overlap.swap(k, j)
                if share >= limits.min_swap_share and ratio > limits.max_swap_ratio:
                    times = "" if math.isinf(ratio) else f" ({ratio:.1f} times or more as many as as labelled)"
                    issues.append(
                        LabelIssue(
                            "swapped",
                            (overlap.case_id,),
                            class_names[k],
                            (
                                f"{overlap.case_id}: at least {100 * share:.0f} % of the voxels labelled "
                                f"{class_names[k]!r} "
                                f"(value {k}) lie where the current model predicts {class_names[j]!r} (value {j}), "
                                "and of "
                                f"those labelled {class_names[j]!r} where it predicts {class_names[k]!r}{times}; true "
                                f"{limits.anatomy} labels at most {limits.max_swap_ratio:g} times. Are classes {k} "
                                f"and {j} "
                                "swapped in the label file or the model card?"
                            ),
                        )
                    )
    return issues


#: Largest shift (voxels, per axis) :func:`registration_shift` tries.
SHIFT_REACH_VOXELS = 12
#: Voxels of the label's box (with the reach) above which :func:`registration_shift` subsamples the grid.
_SHIFT_VOXELS = 1 << 21


@dataclass(frozen=True)
class RegistrationShift:
    """Where the label overlaps the model's predicted foreground best, among shifts of up to
    :data:`SHIFT_REACH_VOXELS` voxels per axis.

    Attributes:
        offset_mm: length of the best shift (mm).
        gain: overlap at the best shift / overlap in place (1 = the label lies best where it is; inf when it does
            not overlap in place at all).
        share: the overlap at the best shift as a share of the label's foreground (what the gain rests on: a
            failing model's small blob elsewhere can give a large gain on a small share).
    """

    offset_mm: float
    gain: float
    share: float = 1.0


def registration_shift(
    label: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], reach: int = SHIFT_REACH_VOXELS
) -> Optional[RegistrationShift]:
    """How much better a label's foreground (bool ``[I, J, K]``) overlaps the prediction's (bool, same grid) when
    shifted, by cross-correlation (FFT) over the label's bounding box; ``None`` when either is empty. Large boxes are
    subsampled so at most about 2 M voxels are transformed (the gain is a ratio of overlaps, robust to it)."""
    truth, predicted = np.asarray(label, bool), np.asarray(prediction, bool)
    if not truth.any() or not predicted.any():
        return None
    from scipy.signal import fftconvolve

    where = np.nonzero(truth)
    low = [int(w.min()) for w in where]
    high = [int(w.max()) + 1 for w in where]
    step = 1
    while np.prod([(h - lo + 2 * reach) / step for lo, h in zip(low, high)]) > _SHIFT_VOXELS:
        step += 1
    reach_steps = max(1, reach // step)
    box = tuple(slice(lo, h, step) for lo, h in zip(low, high))
    inner = truth[box].astype(np.float32)
    padded = np.pad(predicted, [(reach_steps * step, reach_steps * step)] * 3)
    around = padded[tuple(slice(lo, h + 2 * reach_steps * step, step) for lo, h in zip(low, high))]
    around = around[tuple(slice(0, n + 2 * reach_steps) for n in inner.shape)].astype(np.float32)
    corr = fftconvolve(around, inner[::-1, ::-1, ::-1], mode="valid")  # [2 reach + 1] per axis, centre = no shift
    corr = np.rint(corr)
    centre = tuple(n // 2 for n in corr.shape)
    best = np.unravel_index(int(np.argmax(corr)), corr.shape)
    offset = (np.asarray(best) - np.asarray(centre)) * step * np.asarray([float(x) for x in spacing])
    in_place = float(corr[centre])
    gain = float(corr[best]) / in_place if in_place > 0 else (math.inf if corr[best] > 0 else 1.0)
    return RegistrationShift(float(np.linalg.norm(offset)), gain, float(corr[best]) / float(inner.sum()))


@dataclass(frozen=True)
class ForegroundAgreement:
    """How one label's foreground (every class > 0) compares with the current model's prediction of its volume.

    Attributes:
        case_id: the labelled volume.
        label_voxels: foreground voxels of the label.
        predicted_voxels: foreground voxels of the prediction.
        near_voxels: label foreground voxels within :data:`REACH_VOXELS` of the predicted foreground.
        overlap: the per-class comparison (:func:`class_overlap`), when computed.
        shift: the label's registration against the prediction (:func:`registration_shift`), when computed.
    """

    case_id: str
    label_voxels: int
    predicted_voxels: int
    near_voxels: int
    overlap: Optional[ClassOverlap] = None
    shift: Optional[RegistrationShift] = None

    @property
    def excess(self) -> float:
        """``label / predicted`` foreground voxels (inf when the model predicts none)."""
        return self.label_voxels / self.predicted_voxels if self.predicted_voxels else math.inf

    @property
    def away(self) -> float:
        """``label / near`` voxels: how many times more label foreground there is than lies near the prediction
        (1 = all of it; inf = none of it)."""
        return self.label_voxels / self.near_voxels if self.near_voxels else math.inf


def foreground_agreement(
    case_id: str,
    label: np.ndarray,
    prediction: np.ndarray,
    num_classes: Optional[int] = None,
    spacing: Optional[Sequence[float]] = None,
) -> ForegroundAgreement:
    """Compare a label with a prediction of the same volume.

    Args:
        label: class-index label map ``[I, J, K]``.
        prediction: the model's class-index map ``[I, J, K]`` on the same grid.
        num_classes: also compare class by class (:func:`class_overlap`).
        spacing: voxel size in mm ``[3]``: also measure the label's registration (:func:`registration_shift`).
    """
    truth, predicted = np.asarray(label) > 0, np.asarray(prediction) > 0
    near = 0
    if truth.any() and predicted.any():
        # only the label's bounding box (plus the reach) matters: a predicted voxel outside it is too far away
        where = np.nonzero(truth)
        box = tuple(slice(max(int(w.min()) - REACH_VOXELS, 0), int(w.max()) + REACH_VOXELS + 1) for w in where)
        grown = ndimage.binary_dilation(predicted[box], iterations=REACH_VOXELS)
        near = int(np.count_nonzero(truth[box] & grown))
    overlap = class_overlap(case_id, label, prediction, num_classes) if num_classes else None
    shift = registration_shift(truth, predicted, spacing) if spacing is not None else None
    return ForegroundAgreement(
        str(case_id), int(np.count_nonzero(truth)), int(np.count_nonzero(predicted)), near, overlap, shift
    )


def model_locates(a: ForegroundAgreement, max_ratio: float, limits: LabelCheckThresholds) -> bool:
    """Whether the model predicts enough of a label's foreground for *where* it predicts to judge the label: at
    least one voxel, and at most ``limits.max_away_excess`` (else ``max_ratio``) times fewer than the label has. A
    model that fails on an image predicts nothing or specks, often away from the structure (ACDC under the harsh
    shift: 10 of the 50 development labels, 13-187 times less predicted or none), and says nothing about a label
    there; the checks that rest on the prediction's position then only warn."""
    trusted = max_ratio if limits.max_away_excess is None else min(max_ratio, limits.max_away_excess)
    return a.predicted_voxels > 0 and a.excess <= trusted


def find_prediction_issues(
    agreements: Sequence[ForegroundAgreement], max_ratio: float, limits: LabelCheckThresholds
) -> Tuple[List[LabelIssue], List[LabelIssue]]:
    """Labels far from the current model's prediction.

    Args:
        agreements: one per labelled volume; a label without foreground is left to :func:`find_label_issues`.
        max_ratio: ``FinetuneConfig.label_prediction_ratio``.
        limits: the anatomy's limits (``max_away_excess``, :func:`model_locates`).

    Returns:
        ``(refused, warned)``: labels that lie mostly away from a prediction the model makes with confidence
        (:func:`model_locates`: a mask of another structure); labels away from a failing model's prediction, where it
        predicts nothing, or with ``max_ratio`` times more or less foreground than predicted only warn (a filled box,
        an inverted mask and a larger structure are refused by their shape, :func:`find_shape_issues`, which needs no
        model that works on the image).
    """
    refused: List[LabelIssue] = []
    warned: List[LabelIssue] = []
    for a in agreements:
        if a.label_voxels == 0:
            continue
        counts = f"{a.label_voxels} labelled foreground voxels, {a.predicted_voxels} predicted"
        if a.predicted_voxels == 0:
            warned.append(
                LabelIssue(
                    "more_foreground_than_predicted",
                    (a.case_id,),
                    None,
                    (
                        f"{a.case_id}: the current model predicts no foreground at all where the label has "
                        f"{a.label_voxels} voxels; it likely fails on this image (the label is then what adaptation "
                        "needs); check that the label marks the right structure."
                    ),
                )
            )
        elif a.away > max_ratio:
            share = a.near_voxels / a.label_voxels
            away = (
                f"{a.case_id}: only {100 * share:.1f} % of the label's foreground lies within {REACH_VOXELS} voxels of "
                f"what the current model predicts ({counts}; less than 1/{max_ratio:g})"
            )
            if model_locates(a, max_ratio, limits):
                refused.append(
                    LabelIssue("away_from_prediction", (a.case_id,), None, f"{away}; a mask of another structure?")
                )
            else:
                warned.append(
                    LabelIssue(
                        "away_from_prediction",
                        (a.case_id,),
                        None,
                        f"{away}, but the model predicts {a.excess:.0f} times less foreground than the label has, too "
                        "little to say where the structure is: it likely fails on this image (the label is then what "
                        "adaptation needs); check that the label marks the right structure.",
                    )
                )
        elif a.excess > max_ratio:
            warned.append(
                LabelIssue(
                    "more_foreground_than_predicted",
                    (a.case_id,),
                    None,
                    (
                        f"{a.case_id}: the label has {a.excess:.0f} times more foreground than the current model "
                        "predicts "
                        f"({counts}); the model under-segments this image (its label is what adaptation needs), or the "
                        "label marks a larger structure."
                    ),
                )
            )
        elif a.excess < 1.0 / max_ratio:
            warned.append(
                LabelIssue(
                    "less_foreground_than_predicted",
                    (a.case_id,),
                    None,
                    (
                        f"{a.case_id}: the label has {1.0 / a.excess:.0f} times less foreground than the current model "
                        f"predicts ({counts}); a partial label, or a model that over-segments this image."
                    ),
                )
            )
    return refused, warned


def predict_agreements(
    cases: Sequence[Any],
    model: Any,
    *,
    ctx: Any = None,
    device: Any = None,
    progress: Optional[ProgressCallback] = None,
    phase: str = "load",
) -> List[ForegroundAgreement]:
    """Predict every labelled volume once with ``model`` and compare (:func:`foreground_agreement`).

    Args:
        cases: records with ``case_id``, ``image`` and ``label`` volumes (e.g. adaptation's ``LabeledVolume``).
        model: the current model (:class:`~ASSFTActive.models.LoadedModel`).
        ctx: under data parallelism each rank predicts its share (:class:`~ASSFTActive.distributed.DistContext`).
        device: compute device without ``ctx`` (default: CUDA when present).
        progress: one ``progress`` event per volume.

    Returns:
        one agreement per case, in the order given.
    """
    from .distributed import map_shards
    from .inference import Predictor

    predictor = Predictor(model, device=ctx.device if ctx is not None else device)
    cases = list(cases)
    steps = iter(range(1, len(cases) + 1))  # this rank's count, as its progress events say

    def compare(case: Any) -> ForegroundAgreement:
        step = next(steps)
        prediction = predictor.predict(case.image).label
        annotated = getattr(case, "annotated", None)
        if annotated is not None:  # a partial label (ASSFTActive.partial): compared on its annotated voxels only
            prediction = np.where(annotated, prediction, 0).astype(prediction.dtype)
        agreement = foreground_agreement(
            case.case_id, np.asarray(case.label.array), prediction, model.card.num_classes, case.image.spacing
        )
        emit(
            progress,
            "progress",
            phase=phase,
            step=step,
            total=len(cases),
            message=f"compared the label of {case.case_id} with the current model's prediction",
        )
        return agreement

    return map_shards(ctx, cases, compare)


def require_labels_near_prediction(
    cases: Sequence[Any],
    model: Any,
    max_ratio: float,
    allow: bool,
    warn: Optional[Callable[[str], None]] = None,
    *,
    ctx: Any = None,
    device: Any = None,
    progress: Optional[ProgressCallback] = None,
    limits: Optional[LabelCheckThresholds] = None,
) -> List[ForegroundAgreement]:
    """Refuse labels far from the current model's prediction (:func:`find_prediction_issues`) or with classes
    swapped against it (:func:`find_swap_issues`, with ``limits``) unless ``allow``.

    Args:
        cases, model, ctx, device, progress: as in :func:`predict_agreements`.
        max_ratio: ``FinetuneConfig.label_prediction_ratio``.
        allow: ``FinetuneConfig.allow_implausible_labels``: refusals become warnings.
        warn: receives each warning.
        limits: the swap limits (:func:`thresholds_for` the card); ``None``: no swap check.

    Returns:
        the agreements (one per case).

    Raises:
        InputError: a label is refused and ``allow`` is false; the message names every such case.
    """
    agreements = predict_agreements(cases, model, ctx=ctx, device=device, progress=progress)
    refused, warned = find_prediction_issues(agreements, max_ratio, limits)
    if limits is not None:
        overlaps = [a.overlap for a in agreements if a.overlap is not None]
        swapped = find_swap_issues(overlaps, model.card.class_names, limits)
        named = {c for i in swapped for c in i.cases}
        pooled = pooled_overlap(overlaps) if len(overlaps) > 1 else None
        if pooled is not None and named != {o.case_id for o in overlaps}:
            swapped += [
                replace(
                    i,
                    cases=tuple(o.case_id for o in overlaps),
                    message=i.message + " (Volumes: " + ", ".join(o.case_id for o in overlaps) + ".)",
                )
                for i in find_swap_issues([pooled], model.card.class_names, limits)
            ]
        refused += swapped + find_registration_issues(agreements, limits, max_ratio)
        warned += find_registration_warnings(agreements, limits, max_ratio)
    if refused and not allow:
        raise InputError(
            "the labels do not fit the current model's prediction, so the model was not adapted: "
            + " ".join(i.message for i in refused)
            + " Check that each label file belongs to its image and marks the model's classes (or the model card's "
            "class_names). If the model fails completely on these images, or this is intended, pass "
            "--allow-implausible-labels (FinetuneConfig.allow_implausible_labels)."
        )
    if warn is not None:
        for issue in refused:
            warn(f"training on implausible labels (allowed): {issue.message}")
        for issue in warned:
            warn(issue.message)
    return agreements


@dataclass(frozen=True)
class EvaluationChecks:
    """The label checks ``assft evaluate`` applies to each labelled volume (the ones Adapt applies).

    Attributes:
        class_names: the model's classes, background first.
        limits: :func:`thresholds_for` the model's card.
        max_ratio: the ``label_prediction_ratio`` of :func:`find_prediction_issues`.
        partial: the labels are declared partial (:func:`find_shape_issues`).
        allow: score refused labels anyway, with a warning each.
    """

    class_names: Tuple[str, ...]
    limits: LabelCheckThresholds
    max_ratio: float = 15.0
    partial: bool = False
    allow: bool = False


def check_evaluation_label(
    case_id: str, label: np.ndarray, prediction: np.ndarray, spacing: Sequence[float], checks: EvaluationChecks
) -> Tuple[List[LabelIssue], List[LabelIssue]]:
    """``(refused, warned)`` issues of one labelled volume scored against ``prediction`` (the evaluated model's
    class-index map ``[I, J, K]`` on the label's grid): an all-background label, its shape, its distance from the
    prediction and swapped classes. The set-level check (a class no label contains) is
    :func:`find_label_issues` on all labels."""
    label = np.asarray(label)
    n = len(checks.class_names)
    if not np.any(label > 0):
        return [
            LabelIssue(
                "no_foreground",
                (case_id,),
                None,
                (f"{case_id}: the label contains only background; a score against it says nothing."),
            )
        ], []
    refused = find_shape_issues(
        [label_shape(case_id, label, spacing, n)], checks.class_names, checks.limits, checks.partial
    )
    agreement = foreground_agreement(case_id, label, prediction, n, spacing)
    far, warned = find_prediction_issues([agreement], checks.max_ratio, checks.limits)
    refused += far + find_swap_issues([agreement.overlap], checks.class_names, checks.limits)
    refused += find_registration_issues([agreement], checks.limits, checks.max_ratio)
    return refused, warned + find_registration_warnings([agreement], checks.limits, checks.max_ratio)
