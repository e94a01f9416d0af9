"""Segmentation quality: Dice and HD95 per class, per case, and their means, as tables.

A class that neither the prediction nor the label contains is **not scored**: its Dice is NaN, not 1, and every
mean here skips NaN (:func:`mean_scored`). Scoring it 1 ("nothing to find, nothing found") made a model that
predicts nothing look perfect on an all-background label, and gave a class the network cannot even output a
perfect score. A case with no scored class has a NaN mean and is left out of the overall mean; a mean over
nothing scored is NaN (written ``nan`` in CSV, ``not scored`` in Markdown, ``null`` in JSON).

:func:`evaluate_cases` is the one evaluation loop: ``assft evaluate``, :func:`evaluate_model` (demo, benchmarks) and
adaptation (the current model before, the cross-validation folds) all score through it.
"""

from __future__ import annotations

import csv
import io as _stdio
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .distributed import DistContext, map_shards
from .errors import InputError
from .io import PathLike, Volume, read_volume
from .label_checks import check_evaluation_label, find_label_issues
from .models import LoadedModel, LoadReport, ModelCard
from .partial import read_partial_label
from .progress import ProgressCallback, emit

__all__ = [
    "NOT_SCORED",
    "CaseMetrics",
    "EvaluationReport",
    "LabelledCase",
    "SkippedVolume",
    "dice_per_class",
    "evaluate_cases",
    "evaluate_model",
    "format_score",
    "hd95_per_class",
    "json_ready",
    "mean_scored",
]


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> Tuple[float, ...]:
    """Dice of each foreground class ``1..C-1`` between two label maps ``[I, J, K]``.

    A class absent from both maps is not scored: NaN (see the module docstring), never 1.
    """
    scores = []
    for c in range(1, num_classes):
        p, t = prediction == c, truth == c
        denominator = int(p.sum()) + int(t.sum())
        scores.append(NOT_SCORED if denominator == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denominator)
    return tuple(scores)


#: The score of a class absent from both the prediction and the label.
NOT_SCORED = float("nan")


def mean_scored(values: Iterable[float]) -> float:
    """Mean of the scored values (not NaN, not ``None`` as NaN reads back from JSON); NaN when nothing was scored
    (without the warning of ``np.nanmean``)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else NOT_SCORED


def hd95_per_class(
    prediction: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> Tuple[float, ...]:
    """95th-percentile symmetric Hausdorff distance (mm) of each foreground class; NaN when a map lacks the class.

    MONAI's edge and surface-distance pieces (``get_mask_edges``, ``get_surface_distance``), combined as
    ``compute_hausdorff_distance(percentile=95)`` does (the larger of the two directed 95th percentiles), called
    without the argument MONAI 1.5+ deprecates: ``compute_hausdorff_distance`` itself passes
    ``always_return_as_numpy`` and prints a FutureWarning on every call.
    """
    import torch
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    out = []
    for c in range(1, num_classes):
        p, t = prediction == c, truth == c
        if not p.any() or not t.any():
            out.append(float("nan"))
            continue
        edges_p, edges_t = get_mask_edges(torch.from_numpy(p), torch.from_numpy(t), crop=True)
        steps = [float(s) for s in spacing]
        forward = torch.as_tensor(get_surface_distance(edges_p, edges_t, spacing=steps), dtype=torch.float64)
        backward = torch.as_tensor(get_surface_distance(edges_t, edges_p, spacing=steps), dtype=torch.float64)
        out.append(max(float(torch.quantile(d, 0.95)) if d.numel() else 0.0 for d in (forward, backward)))
    return tuple(out)


@dataclass(frozen=True)
class CaseMetrics:
    case_id: str
    dice: Tuple[float, ...]  # per foreground class
    hd95: Tuple[float, ...]  # per foreground class, mm (NaN if undefined)
    #: voxels the label file marks as not annotated (:data:`ASSFTActive.partial.NOT_ANNOTATED`), left out of the score
    not_annotated: int = 0


@dataclass(frozen=True)
class SkippedVolume:
    """A volume left out of training or scoring, and why (the message names the file)."""

    case_id: str
    path: str
    reason: str

    def to_dict(self) -> Dict[str, str]:
        return {"case_id": self.case_id, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class LabelledCase:
    """One volume with its expert label; either may still be a file, read when the case is scored.

    A label file that marks voxels as not annotated (:data:`ASSFTActive.partial.NOT_ANNOTATED`), or a case with an
    ``annotated`` mask (adaptation's ``LabeledVolume``), is scored on its annotated voxels only: the prediction is
    set to background elsewhere, as the label is, so Dice counts the annotated voxels alone.
    """

    case_id: str
    image: Union[Volume, PathLike]
    label: Union[Volume, PathLike]


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf as ``None`` and numpy numbers as Python numbers (recursively), ready for JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_ready(value.item())
    return value


@dataclass(frozen=True)
class EvaluationReport:
    """Per-case metrics of one model on one set of labelled volumes, and the volumes that could not be scored."""

    class_names: Tuple[str, ...]  # foreground classes
    cases: Tuple[CaseMetrics, ...]
    skipped: Tuple[SkippedVolume, ...] = ()

    def mean_dice_per_class(self) -> Dict[str, float]:
        """Mean Dice of each class over the cases where it was scored (NaN when it never was)."""
        return {name: mean_scored(c.dice[i] for c in self.cases) for i, name in enumerate(self.class_names)}

    def mean_hd95_per_class(self) -> Dict[str, float]:
        return {name: mean_scored(c.hd95[i] for c in self.cases) for i, name in enumerate(self.class_names)}

    def mean_dice(self) -> float:
        """Mean over cases of each case's mean Dice over its scored classes; cases with none scored are left out."""
        return mean_scored(mean_scored(c.dice) for c in self.cases)

    def scored_cases(self) -> int:
        """How many cases had at least one scored class."""
        return sum(1 for c in self.cases if not math.isnan(mean_scored(c.dice)))

    def summary(self) -> Dict[str, Any]:
        """``{"mean_dice", "dice": {class: x}, "hd95": {class: mm or None}, "cases": n}``, ready for JSON."""
        return json_ready(
            {
                "mean_dice": self.mean_dice(),
                "dice": self.mean_dice_per_class(),
                "hd95": self.mean_hd95_per_class(),
                "cases": len(self.cases),
            }
        )

    def to_csv(self) -> str:
        buffer = _stdio.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case_id"] + [f"dice_{n}" for n in self.class_names] + [f"hd95_{n}" for n in self.class_names])
        for c in self.cases:
            writer.writerow([c.case_id] + [f"{d:.4f}" for d in c.dice] + [f"{h:.2f}" for h in c.hd95])
        writer.writerow(
            ["mean"]
            + [f"{v:.4f}" for v in self.mean_dice_per_class().values()]
            + [f"{v:.2f}" for v in self.mean_hd95_per_class().values()]
        )
        return buffer.getvalue()

    def to_markdown(self) -> str:
        header = "| class | Dice | HD95 (mm) |\n|---|---|---|\n"
        dice, hd = self.mean_dice_per_class(), self.mean_hd95_per_class()
        rows = "".join(f"| {n} | {format_score(dice[n])} | {format_score(hd[n], 2)} |\n" for n in self.class_names)
        return header + rows + f"| **mean** | **{format_score(self.mean_dice())}** | |\n"


def format_score(value: Optional[float], digits: int = 3) -> str:
    """A score for people: ``0.812``, or ``not scored`` for NaN/``None`` (a class absent from prediction and label)."""
    return "not scored" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def evaluate_cases(
    model: LoadedModel,
    cases: Sequence[LabelledCase],
    *,
    hd95: bool = True,
    device: Optional[torch.device] = None,
    progress: Optional[ProgressCallback] = None,
    phase: str = "evaluate",
    skip_unreadable: bool = False,
    ctx: Optional[DistContext] = None,
    label_checks: Any = None,
) -> EvaluationReport:
    """Predict every case and score Dice (and HD95) per foreground class.

    Args:
        model: the network with its card.
        cases: labelled volumes; a file is read when its case is scored (an image through the plausibility check).
        hd95: also compute HD95 (slower); NaN otherwise.
        device: compute device (default: CUDA when present); ``ctx.device`` when ``ctx`` is given.
        progress: a ``progress`` event per scored case, a ``warning`` per skipped one.
        phase: the events' phase.
        skip_unreadable: a case whose files cannot be used (:class:`~ASSFTActive.errors.InputError`) is skipped
            and listed in ``report.skipped``; otherwise the error propagates.
        ctx: under data parallelism, each rank scores its share and every rank gets the whole report.
        label_checks: an :class:`~ASSFTActive.label_checks.EvaluationChecks`: each label is checked as
            Adapt checks it (all background, shape, far from or swapped against the prediction,
            :func:`~ASSFTActive.label_checks.check_evaluation_label`) and a refused label is skipped (or,
            without ``skip_unreadable``, raises) unless the checks allow it, then it is scored with a warning; a
            class that no label contains is refused for the whole set. ``None`` (adaptation, benchmarks: labels
            already checked or known to be true): no checks.

    Returns:
        the :class:`EvaluationReport`, cases in the order given.

    Raises:
        InputError: an unusable case without ``skip_unreadable``, or (with ``label_checks``, not allowed) a model
            class that none of the labels contains.
    """
    from .inference import Predictor
    from .plausibility import check_image

    predictor = Predictor(model, device=ctx.device if ctx is not None else device)
    n = model.card.num_classes
    cases = list(cases)
    steps = iter(range(1, len(cases) + 1))  # this rank's count, as its progress events say

    def skip(case, exc: InputError) -> SkippedVolume:
        if not skip_unreadable:
            raise exc
        emit(progress, "warning", phase=phase, message=f"skipped {case.label}: {exc}")
        return SkippedVolume(case.case_id, str(case.label), str(exc))

    def score(case) -> Tuple[Union[CaseMetrics, SkippedVolume], Tuple[int, ...]]:
        step = next(steps)
        try:
            image = case.image if isinstance(case.image, Volume) else check_image(read_volume(case.image))
            annotated = getattr(case, "annotated", None)  # adaptation's LabeledVolume of a partial label
            if isinstance(case.label, Volume):
                truth = case.label
            else:
                partial = read_partial_label(case.label, image, n)
                truth, annotated = partial.label, partial.voxel_mask
        except InputError as exc:
            return skip(case, exc), ()
        prediction = predictor.predict(image).label
        if annotated is not None:  # a partial label: only the annotated voxels are scored (truth is 0 elsewhere)
            prediction = np.where(annotated, prediction, 0).astype(prediction.dtype)
        truth_array = np.asarray(truth.array)
        present = tuple(int(v) for v in np.unique(truth_array))
        if label_checks is not None:
            checks = label_checks if annotated is None else replace(label_checks, partial=True)  # on annotated part
            refused, warned = check_evaluation_label(case.case_id, truth_array, prediction, image.spacing, checks)
            if refused and not label_checks.allow:
                return skip(
                    case,
                    InputError(
                        "the label looks wrong for this model, so it is not scored: "
                        + " ".join(i.message for i in refused)
                        + " Fix the label file (or the model card's class_names), "
                        "or pass --allow-implausible-labels to score it anyway."
                    ),
                ), present
            for issue in refused + warned:
                emit(
                    progress,
                    "warning",
                    phase=phase,
                    message=("scored although implausible (allowed): " if issue in refused else "") + issue.message,
                )
        hd = hd95_per_class(prediction, truth_array, n, image.spacing) if hd95 else tuple([NOT_SCORED] * (n - 1))
        unknown = (
            0 if annotated is None or isinstance(case.label, Volume) else int(np.size(annotated) - annotated.sum())
        )
        metrics = CaseMetrics(case.case_id, dice_per_class(prediction, truth_array, n), hd, not_annotated=unknown)
        emit(progress, "progress", phase=phase, step=step, total=len(cases), message=f"scored {case.case_id}")
        return metrics, present

    scored = map_shards(ctx, cases, score)
    results = [r for r, _ in scored]
    if label_checks is not None:
        labels = {c.case_id: np.asarray(present) for c, (r, present) in zip(cases, scored) if present}
        never = [i for i in find_label_issues(labels, label_checks.class_names) if i.kind == "class_never_labelled"]
        if never and not label_checks.allow:
            raise InputError(
                "the labels do not mark every class of the model, so no score would mean what it says: "
                + " ".join(i.message for i in never)
                + " Fix the label files (or the model card's "
                "class_names), or pass --allow-implausible-labels to score them anyway."
            )
        for issue in never:
            emit(progress, "warning", phase=phase, message=f"scored although implausible (allowed): {issue.message}")
    return EvaluationReport(
        class_names=tuple(model.card.class_names[1:]),
        cases=tuple(r for r in results if isinstance(r, CaseMetrics)),
        skipped=tuple(r for r in results if isinstance(r, SkippedVolume)),
    )


def evaluate_model(
    network: Union[nn.Module, LoadedModel],
    card: Optional[ModelCard],
    cases: Sequence[Tuple[Volume, Union[str, Path, Volume]]],
    hd95: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> EvaluationReport:
    """Predict every ``(image, label)`` pair and score Dice (and HD95) per foreground class (:func:`evaluate_cases`
    with each image's name as its case id).

    Args:
        network: a network (with ``card``) or a :class:`LoadedModel`.
        cases: image volumes with their label path or label volume.
    """
    model = network if isinstance(network, LoadedModel) else LoadedModel(card, network, LoadReport(0, (), ()))
    return evaluate_cases(
        model, [LabelledCase(image.name, image, label) for image, label in cases], hd95=hd95, progress=progress
    )
