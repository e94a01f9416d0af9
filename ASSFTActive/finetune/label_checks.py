"""Refuse labels that would train a model on nothing or on the wrong structure, before any training starts.

An all-background label file (an export that lost its segments, a mask saved before painting) trains a model that
predicts nothing; a class that no labelled volume contains (a 0/1 mask of another structure given to a model with
two foreground classes) teaches the network to forget that class. Both look like ordinary label files, so they are
caught here, by looking at what the labelled set contains, and reported with the case names:

* **no foreground**: a label with only background voxels;
* **class never labelled**: a foreground class of the model that no labelled volume contains;
* **far from the prediction** (:func:`require_labels_near_prediction`): the current model predicts each labelled
  volume once; a label with ``FinetuneConfig.label_prediction_ratio`` (15) times more foreground voxels than the
  model predicts there (a filled or inverted mask, a mask of a larger structure), or whose foreground lies mostly
  away from anything the model predicts (fewer than 1/15 of its voxels within :data:`REACH_VOXELS` of the predicted
  foreground: a mask of another structure, e.g. a spinal-cord mask given as "anterior hippocampus"), is refused.
  The evidence for 15 is in the field's docstring. A label with 15 times *less* foreground than predicted only
  warns: a model that fails on a new site often
  over-segments (a model with an untrained head predicts most of the volume), and its labels are exactly what
  adaptation needs. Foreground is every class > 0 together: per-class counts of a shifted site swing too far
  (anterior ratios up to 1529 on real labels under the scanner shift at strength 1.0).

``FinetuneConfig.allow_implausible_labels`` (``assft adapt --allow-implausible-labels``) turns the refusal into a
warning for the rare case where this is intended (e.g. healthy volumes with truly nothing to segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..plausibility import check_image
from ..progress import ProgressCallback, emit

__all__ = ["REACH_VOXELS", "ForegroundAgreement", "LabelIssue", "find_label_issues", "find_prediction_issues",
           "foreground_agreement", "predict_agreements", "require_labels_near_prediction",
           "require_plausible_labelled_set", "require_plausible_labels"]

#: A labelled voxel counts as "where the model sees the structure" when it lies within this many face-connected
#: steps of a predicted foreground voxel (a 3-voxel tolerance: the real labels under the scanner shift at strength
#: 1.0 have at least 19 % of their voxels that close to the prediction, but only 3 % inside it).
REACH_VOXELS = 3


@dataclass(frozen=True)
class LabelIssue:
    """One reason to distrust the labelled set.

    Attributes:
        kind: ``"no_foreground"``, ``"class_never_labelled"``, ``"more_foreground_than_predicted"``,
            ``"away_from_prediction"`` or ``"less_foreground_than_predicted"`` (the last one only warns).
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
        issues.append(LabelIssue("no_foreground", empty, None, (
            f"{len(empty)} label file(s) contain only background: {', '.join(empty)}. Training on them teaches the "
            "model to predict nothing.")))
    labelled = [values for case, values in present.items() if case not in empty]
    if labelled:
        for index, name in enumerate(class_names[1:], start=1):
            if not any(index in values for values in labelled):
                issues.append(LabelIssue("class_never_labelled", tuple(sorted(present)), name, (
                    f"class {name!r} (value {index}) appears in none of the {len(present)} labelled volume(s) "
                    f"({', '.join(sorted(present)[:8])}{', ...' if len(present) > 8 else ''}); the labels may be of "
                    "another structure or use other class values than the model card.")))
    return issues


def require_plausible_labels(labels: Mapping[str, np.ndarray], class_names: Sequence[str], allow: bool,
                             warn: Optional[Callable[[str], None]] = None) -> List[LabelIssue]:
    """Raise on implausible labels unless ``allow``; then each issue is passed to ``warn`` instead.

    Raises:
        InputError: an issue was found and ``allow`` is false; the message lists every issue and how to proceed.
    """
    issues = find_label_issues(labels, class_names)
    if issues and not allow:
        raise InputError(
            "the labels look wrong, so the model was not adapted: " + " ".join(i.message for i in issues)
            + " Fix the label files (or the model card's class_names), or pass --allow-implausible-labels "
            "(FinetuneConfig.allow_implausible_labels) if this is intended."
        )
    for issue in issues:
        if warn is not None:
            warn(f"training on implausible labels (allowed): {issue.message}")
    return issues


def require_plausible_labelled_set(cases: Sequence[Any], class_names: Sequence[str], allow: bool,
                                   warn: Optional[Callable[[str], None]] = None) -> List[LabelIssue]:
    """The checks of adaptation's labelled set: every image plausible, then the labels.

    Args:
        cases: records with ``case_id``, ``image`` and ``label`` (:class:`~ASSFTActive.io.Volume`) attributes.
        class_names, allow, warn: as in :func:`require_plausible_labels`.

    Raises:
        InputError: an implausible image (:func:`ASSFTActive.plausibility.check_image`, never allowed), or
            implausible labels when ``allow`` is false.
    """
    for case in cases:
        check_image(case.image)
    return require_plausible_labels({c.case_id: np.asarray(c.label.array) for c in cases}, class_names, allow, warn)


@dataclass(frozen=True)
class ForegroundAgreement:
    """How one label's foreground (every class > 0) compares with the current model's prediction of its volume.

    Attributes:
        case_id: the labelled volume.
        label_voxels: foreground voxels of the label.
        predicted_voxels: foreground voxels of the prediction.
        near_voxels: label foreground voxels within :data:`REACH_VOXELS` of the predicted foreground.
    """

    case_id: str
    label_voxels: int
    predicted_voxels: int
    near_voxels: int

    @property
    def excess(self) -> float:
        """``label / predicted`` foreground voxels (inf when the model predicts none)."""
        return self.label_voxels / self.predicted_voxels if self.predicted_voxels else math.inf

    @property
    def away(self) -> float:
        """``label / near`` voxels: how many times more label foreground there is than lies near the prediction
        (1 = all of it; inf = none of it)."""
        return self.label_voxels / self.near_voxels if self.near_voxels else math.inf


def foreground_agreement(case_id: str, label: np.ndarray, prediction: np.ndarray) -> ForegroundAgreement:
    """Compare a label with a prediction of the same volume.

    Args:
        label: class-index label map ``[I, J, K]``.
        prediction: the model's class-index map ``[I, J, K]`` on the same grid.
    """
    truth, predicted = np.asarray(label) > 0, np.asarray(prediction) > 0
    near = 0
    if truth.any() and predicted.any():
        # only the label's bounding box (plus the reach) matters: a predicted voxel outside it is too far away
        where = np.nonzero(truth)
        box = tuple(slice(max(int(w.min()) - REACH_VOXELS, 0), int(w.max()) + REACH_VOXELS + 1) for w in where)
        grown = ndimage.binary_dilation(predicted[box], iterations=REACH_VOXELS)
        near = int(np.count_nonzero(truth[box] & grown))
    return ForegroundAgreement(str(case_id), int(np.count_nonzero(truth)), int(np.count_nonzero(predicted)), near)


def find_prediction_issues(agreements: Sequence[ForegroundAgreement],
                           max_ratio: float) -> Tuple[List[LabelIssue], List[LabelIssue]]:
    """Labels far from the current model's prediction.

    Args:
        agreements: one per labelled volume; a label without foreground is left to :func:`find_label_issues`.
        max_ratio: ``FinetuneConfig.label_prediction_ratio``.

    Returns:
        ``(refused, warned)``: labels with ``max_ratio`` times more foreground than predicted or mostly away from
        the prediction; labels with ``max_ratio`` times less foreground than predicted.
    """
    refused: List[LabelIssue] = []
    warned: List[LabelIssue] = []
    for a in agreements:
        if a.label_voxels == 0:
            continue
        counts = f"{a.label_voxels} labelled foreground voxels, {a.predicted_voxels} predicted"
        if a.predicted_voxels == 0:
            refused.append(LabelIssue("more_foreground_than_predicted", (a.case_id,), None, (
                f"{a.case_id}: the current model predicts no foreground at all where the label has "
                f"{a.label_voxels} voxels; the label may be of another structure, or the model fails completely "
                "on this image.")))
        elif a.excess > max_ratio:
            refused.append(LabelIssue("more_foreground_than_predicted", (a.case_id,), None, (
                f"{a.case_id}: the label has {a.excess:.0f} times more foreground than the current model predicts "
                f"({counts}; more than {max_ratio:g} times); a filled or inverted mask, or a larger structure?")))
        elif a.away > max_ratio:
            share = a.near_voxels / a.label_voxels
            refused.append(LabelIssue("away_from_prediction", (a.case_id,), None, (
                f"{a.case_id}: only {100 * share:.1f} % of the label's foreground lies within {REACH_VOXELS} voxels "
                f"of what the current model predicts ({counts}; less than 1/{max_ratio:g}); a mask of another "
                "structure?")))
        elif a.excess < 1.0 / max_ratio:
            warned.append(LabelIssue("less_foreground_than_predicted", (a.case_id,), None, (
                f"{a.case_id}: the label has {1.0 / a.excess:.0f} times less foreground than the current model "
                f"predicts ({counts}); a partial label, or a model that over-segments this image.")))
    return refused, warned


def predict_agreements(cases: Sequence[Any], model: Any, *, ctx: Any = None, device: Any = None,
                       progress: Optional[ProgressCallback] = None,
                       phase: str = "load") -> List[ForegroundAgreement]:
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
    from ..distributed import merge_shards
    from ..inference import Predictor

    predictor = Predictor(model, device=ctx.device if ctx is not None else device)
    indexed = [(str(i), case) for i, case in enumerate(cases)]
    mine = {}
    for step, (key, case) in enumerate(indexed if ctx is None else ctx.shard(indexed)):
        prediction = predictor.predict(case.image).label
        mine[key] = foreground_agreement(case.case_id, np.asarray(case.label.array), prediction)
        emit(progress, "progress", phase=phase, step=step + 1, total=len(indexed),
             message=f"compared the label of {case.case_id} with the current model's prediction")
    shards = ctx.all_gather(mine) if ctx is not None else [mine]
    return merge_shards(shards, [key for key, _ in indexed])


def require_labels_near_prediction(cases: Sequence[Any], model: Any, max_ratio: float, allow: bool,
                                   warn: Optional[Callable[[str], None]] = None, *, ctx: Any = None,
                                   device: Any = None, progress: Optional[ProgressCallback] = None
                                   ) -> List[ForegroundAgreement]:
    """Refuse labels far from the current model's prediction (:func:`find_prediction_issues`) unless ``allow``.

    Args:
        cases, model, ctx, device, progress: as in :func:`predict_agreements`.
        max_ratio: ``FinetuneConfig.label_prediction_ratio``.
        allow: ``FinetuneConfig.allow_implausible_labels``: refusals become warnings.
        warn: receives each warning.

    Returns:
        the agreements (one per case).

    Raises:
        InputError: a label is refused and ``allow`` is false; the message names every such case.
    """
    agreements = predict_agreements(cases, model, ctx=ctx, device=device, progress=progress)
    refused, warned = find_prediction_issues(agreements, max_ratio)
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
