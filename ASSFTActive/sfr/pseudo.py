"""SAM predictions on stitched volumes, un-stitched into 3D probabilities, and SFR+'s confidence selection.

A volume ``[I, J, K]`` is cut into slices along ``slice_axis`` (SFR uses axial slices; ``K`` is axial for the
RAS-aligned arrays the engine reads), stitched on SAM's canvas, segmented in one forward pass, and the softmax is
un-stitched back to ``[C, I, J, K]``. SFR uses the hard argmax as the pseudo-label; :func:`sfr_pseudo_labels` gives
it for a pool of :class:`~ASSFTActive.io.Volume` on each volume's own grid, with the confidence maps. SFR+ (not in
the released code; method-spec §2.4, [inferred]) scores each unlabelled volume by SAM's mean max-probability inside
its predicted foreground, keeps the top ``kappa`` share of the pool, and may keep only voxels above a confidence
threshold. Those three steps reuse ASSFT's selection code (:mod:`ASSFTActive.finetune.pseudo`), so the two methods
share one definition of confidence.

References:
    Li et al., SFR / SFR+, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.1 (un-stitching), §2.3 (hard
    pseudo-labels), §2.4 and §4.2 (``sfr_plus_conf_metric`` = FG mean max-prob, ``kappa`` 20-50 %,
    ``voxel_thresh`` 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..finetune.config import ConfidenceMetric, PseudoLabelConfig, PseudoMode, SelectMode
from ..finetune.pseudo import (
    PseudoCandidate,
    PseudoDecision,
    foreground_confidence,
    select_reliable,
    voxel_confidence_mask,
)
from ..inference import from_model_space, to_model_space
from ..io import Volume
from ..progress import ProgressCallback, emit
from .inputs import SamInput
from .stitching import StitchLayout, plan_layout, stitch, unstitch

__all__ = [
    "SfrPseudoLabel",
    "predict_volume",
    "sfr_pseudo_labels",
    "sfr_plus_confidence",
    "sfr_plus_select",
    "sfr_plus_voxel_mask",
    "volume_layout",
]


def volume_layout(shape: Sequence[int], canvas: int, slice_axis: int = 2, resize: bool = True) -> StitchLayout:
    """The stitch layout of a ``[I, J, K]`` volume cut along ``slice_axis``."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3D volume shape, got {tuple(shape)}")
    depth = int(shape[slice_axis])
    rest = tuple(int(s) for a, s in enumerate(shape) if a != slice_axis)
    return plan_layout(depth, (rest[0], rest[1]), canvas=canvas, resize=resize)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: np.ndarray,
    slice_axis: int = 2,
    canvas: Optional[int] = None,
    resize: bool = True,
    device: Optional[torch.device] = None,
) -> np.ndarray:
    """SAM's class probabilities of a whole volume from one stitched canvas.

    Args:
        model: a :class:`~ASSFTActive.sfr.sam.Sam` (or any module mapping ``[1, 1, S, S]`` to ``[1, C, S, S]``
            logits with a ``config.image_size``), already in eval mode.
        volume: the preprocessed image ``[I, J, K]`` (SFR z-scores it; SAM's pixel mean/std are 0/1).
        slice_axis: the axis the slices are taken along.
        canvas: canvas side; the model's image size by default.
        resize: allow shrinking slices that do not fit the canvas (see :func:`plan_layout`).
        device: where the model runs; the model's device by default.

    Returns:
        float32 probabilities ``[C, I, J, K]`` summing to 1 over ``C``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"expected a volume [I, J, K], got shape {volume.shape}")
    side = int(canvas if canvas is not None else model.config.image_size)
    layout = volume_layout(volume.shape, side, slice_axis, resize)
    if device is None:
        device = next(model.parameters()).device
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, slice_axis, 0)))
    image = stitch(slices, layout)[None, None].to(device)
    probs = torch.softmax(model(image).float(), dim=1)[0].cpu()  # [C, S, S]
    back = unstitch(probs, layout)  # [C, D, H, W]
    return np.ascontiguousarray(np.moveaxis(back.numpy(), 1, slice_axis + 1), dtype=np.float32)


def _maps(probs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] < 2:
        raise ValueError(f"probs must be [C, I, J, K] with C >= 2, got shape {probs.shape}")
    return np.argmax(probs, axis=0), probs.max(axis=0).astype(np.float32)


def sfr_plus_confidence(probs: np.ndarray, empty_value: float = 0.0) -> float:
    """SFR+'s volume confidence: mean ``max_c p_c`` over SAM's predicted-foreground voxels (``[C, I, J, K]``);
    ``empty_value`` when SAM predicts no foreground."""
    label, max_prob = _maps(probs)
    return foreground_confidence(
        label, max_prob, np.zeros_like(max_prob), ConfidenceMetric.FG_MAX_PROB, empty_value=empty_value
    )


def sfr_plus_select(
    case_ids: Sequence[str], confidences: Sequence[float], kappa: float = 0.5
) -> Tuple[PseudoDecision, ...]:
    """Keep the ``ceil(kappa * N)`` most confident unlabelled volumes (SFR+ selective fine-tuning/re-training).

    ASSFT's top-k selection with the distance weight at 0, so the ranking is by confidence alone (ties: listed
    first wins). One decision per volume, in the order given.
    """
    if len(case_ids) != len(confidences):
        raise ValueError(f"{len(case_ids)} case ids but {len(confidences)} confidences")
    if not 0.0 < kappa <= 1.0:
        raise ValueError(f"kappa must lie in (0, 1], got {kappa}")
    config = PseudoLabelConfig(
        mode=PseudoMode.SELECTIVE, select_mode=SelectMode.TOPK, keep_fraction=kappa, dist_weight=0.0
    )
    candidates = [PseudoCandidate(str(c), float(v), 0.0) for c, v in zip(case_ids, confidences)]
    return select_reliable(candidates, config)


def sfr_plus_voxel_mask(probs: np.ndarray, threshold: float = 0.9) -> np.ndarray:
    """SFR+'s selective re-training at voxel level: voxels with ``max_c p_c >= threshold``, bool ``[I, J, K]``."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    label, max_prob = _maps(probs)
    return np.asarray(voxel_confidence_mask(label, max_prob, float(threshold)), dtype=bool)


@dataclass(frozen=True)
class SfrPseudoLabel:
    """SAM's pseudo-label of one unlabelled volume, on the volume's own grid.

    Attributes:
        label: the hard argmax (SFR's pseudo-label) as a uint8 :class:`~ASSFTActive.io.Volume` with the image's
            affine.
        max_prob: ``max_c p_c`` float32 ``[I, J, K]``.
        confidence: SFR+'s volume confidence, mean ``max_prob`` over the predicted foreground
            (:func:`sfr_plus_confidence`).
    """

    case_id: str
    label: Volume
    max_prob: np.ndarray
    confidence: float

    def voxel_mask(self, threshold: float = 0.9) -> np.ndarray:
        """SFR+'s confident voxels, ``max_prob >= threshold``, bool ``[I, J, K]`` (the rule of
        :func:`~ASSFTActive.finetune.pseudo.voxel_confidence_mask`)."""
        mask = voxel_confidence_mask(np.asarray(self.label.array), self.max_prob, float(threshold))
        return np.asarray(mask, dtype=bool)


@torch.no_grad()
def sfr_pseudo_labels(
    model: nn.Module,
    images: Sequence[Volume],
    sam_input: Optional[SamInput] = None,
    case_ids: Optional[Sequence[str]] = None,
    progress: Optional[ProgressCallback] = None,
    device: Optional[torch.device] = None,
) -> Tuple[SfrPseudoLabel, ...]:
    """SAM's 3D pseudo-labels of an unlabelled pool (SFR stage 3's targets, SFR+'s candidates).

    Each volume is brought into SAM's input space (:class:`~.inputs.SamInput`), stitched, segmented in one forward
    pass, un-stitched, and the probabilities are mapped back onto the volume's own grid (trilinear, renormalised)
    before the argmax, so the pseudo-label has the image's shape and affine.

    Args:
        model: a fine-tuned :class:`~.sam.Sam` (put in eval mode here).
        images: the unlabelled volumes.
        sam_input: the space the SAM was fine-tuned in (the same as for :func:`~.finetune.finetune_sam`).
        case_ids: names of the volumes; their file names by default.
        progress: one ``progress`` event per volume (phase ``sfr_pseudo_labels``); may cancel.
        device: where SAM runs; the model's device by default.

    Returns:
        one :class:`SfrPseudoLabel` per volume, in the order given.
    """
    if case_ids is not None and len(case_ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(case_ids)} case ids")
    sam_input = sam_input if sam_input is not None else SamInput()
    model.eval()
    side = int(model.config.image_size)
    results = []
    for index, image in enumerate(images):
        case = str(case_ids[index]) if case_ids is not None else image.name
        x, space = to_model_space(image, sam_input)
        probs = predict_volume(
            model, x[0].numpy(), slice_axis=sam_input.slice_axis, canvas=side, resize=sam_input.resize, device=device
        )
        back = from_model_space(torch.from_numpy(probs), space)
        back = back / np.clip(back.sum(0, keepdims=True), 1e-6, None)
        label = np.argmax(back, axis=0).astype(np.uint8)
        max_prob = back.max(axis=0).astype(np.float32)
        confidence = foreground_confidence(label, max_prob, np.zeros_like(max_prob), ConfidenceMetric.FG_MAX_PROB)
        results.append(SfrPseudoLabel(case, image.with_array(label), max_prob, confidence))
        emit(
            progress,
            "progress",
            phase="sfr_pseudo_labels",
            step=index + 1,
            total=len(images),
            message=f"SAM pseudo-label {index + 1}/{len(images)}: {case} (confidence {confidence:.3f})",
            metrics={"confidence": confidence},
        )
    return tuple(results)
