"""Loss on partially labelled volumes: only the annotated voxels count (:mod:`ASSFTActive.partial`).

:func:`masked_dice_ce_loss` is Dice + cross-entropy restricted to a voxel mask; :class:`PartialLabelTerm` is a
:class:`~.training.LossTerm` that adds it on patches drawn from partially labelled volumes (slices or regions an
annotator labelled), each patch centred on an annotated voxel so that a sparse annotation is not missed by most
draws, as the trainer's own sampler (centred on labelled foreground or anywhere) would miss it.

Why not MONAI's ``DiceCELoss`` as it is: it has no mask argument, and its cross-entropy averages over every voxel.
So the cross-entropy is computed with ``reduction="none"``, multiplied by the mask and averaged over the annotated
voxels, and MONAI's :class:`monai.losses.DiceLoss` is applied to masked tensors (softmax probabilities and one-hot
targets both multiplied by the mask), which removes the unannotated voxels from its intersection and from both sums
of its denominator. An unannotated voxel therefore contributes exactly nothing: its logits receive a zero gradient.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ..inference import PAD_VALUE, label_to_model_space, to_model_space
from .training import Batch, LossTerm, SupervisedCase, TrainState

__all__ = ["PartialLabelTerm", "masked_dice_ce_loss"]

#: Dice over the batch and the foreground classes, smoothing as MONAI's defaults (``1e-5``).
_DICE = DiceLoss(include_background=False, to_onehot_y=False, softmax=False, batch=True)


def masked_dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of soft Dice loss (foreground classes, over the batch) and cross-entropy, on the masked voxels only.

    Args:
        logits: ``[B, C, X, Y, Z]``.
        target: class indices ``[B, X, Y, Z]`` (int64); values at unmasked voxels are ignored.
        mask: ``[B, X, Y, Z]``, 1 (or a weight) where a voxel was annotated, 0 where it was not.

    Returns:
        a scalar; 0 (with a zero gradient) when no voxel is masked in.
    """
    if logits.ndim != 5 or target.shape != logits.shape[:1] + logits.shape[2:] or mask.shape != target.shape:
        raise ValueError(
            f"expected logits [B, C, X, Y, Z] with target and mask [B, X, Y, Z], got "
            f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
        )
    weight = mask.to(logits.dtype)
    if not bool(weight.sum() > 0):
        return logits.sum() * 0.0
    ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum()
    w = weight[:, None]
    probs = torch.softmax(logits, dim=1) * w
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).to(logits.dtype) * w
    return ce + _DICE(probs, onehot)


class _AnnotatedPatches:
    """Random patches of partially labelled cases in model space, each centred on an annotated voxel.

    Items hold image ``[1, X, Y, Z]``, label ``[X, Y, Z]``, mask ``[X, Y, Z]`` and the annotated voxels'
    coordinates (foreground ones first choice, with probability ``foreground_fraction``).
    """

    def __init__(self, state: TrainState, cases: Sequence[SupervisedCase]):
        self.patch, self.rng, self.fraction = state.patch, state.rng, state.config.foreground_fraction
        self.items: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]] = []
        for case in cases:
            image, space = to_model_space(case.image, state.card)
            label = torch.from_numpy(label_to_model_space(case.label.array, space)).long()
            mask = torch.from_numpy(label_to_model_space(case.voxel_mask.astype(np.uint8), space)).float()
            image, label, mask = self._pad(image, label, mask)
            annotated = torch.nonzero(mask > 0).numpy()
            if not len(annotated):
                continue  # annotated voxels lost to resampling: nothing to learn from this case
            foreground = torch.nonzero((mask > 0) & (label > 0)).numpy()
            self.items.append((image, label, mask, annotated, foreground))

    def _pad(self, image: torch.Tensor, label: torch.Tensor, mask: torch.Tensor):
        pads: List[int] = []
        for size, want in zip(reversed(image.shape[1:]), reversed(self.patch)):
            extra = max(0, want - size)
            pads += [extra // 2, extra - extra // 2]
        if any(pads):
            image = F.pad(image, pads, value=PAD_VALUE)
            label, mask = F.pad(label, pads, value=0), F.pad(mask, pads, value=0.0)
        return image, label, mask

    def sample(self, count: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images [B, 1, X, Y, Z], labels [B, X, Y, Z], masks [B, X, Y, Z])``."""
        images, labels, masks = [], [], []
        for _ in range(count):
            image, label, mask, annotated, foreground = self.items[self.rng.integers(len(self.items))]
            pool = foreground if len(foreground) and self.rng.random() < self.fraction else annotated
            centre = pool[self.rng.integers(len(pool))]
            shape = np.array(label.shape)
            start = np.clip(centre - np.array(self.patch) // 2, 0, shape - np.array(self.patch))
            where = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch))
            images.append(image[(slice(None),) + where])
            labels.append(label[where])
            masks.append(mask[where])
        return torch.stack(images), torch.stack(labels), torch.stack(masks)


class PartialLabelTerm(LossTerm):
    """``weight · masked_dice_ce_loss`` on ``batch_size`` patches per step of partially labelled cases.

    Args:
        cases: volumes whose ``voxel_mask`` marks the annotated voxels (``[I, J, K]`` bool on the image grid; the
            label outside it is ignored). A case without a mask, or with no annotated voxel, is refused.
        weight: the term's weight beside the trainer's supervised loss.

    Raises:
        ValueError: a case without annotated voxels (a volume with none is not a labelled volume), or a negative
            weight.
    """

    def __init__(self, cases: Sequence[SupervisedCase], weight: float = 1.0):
        if weight < 0:
            raise ValueError(f"PartialLabelTerm weight must be >= 0, got {weight}")
        for case in cases:
            if case.voxel_mask is None or not np.any(case.voxel_mask):
                raise ValueError(f"{case.case_id}: no annotated voxel; a volume with none is not a labelled volume")
            if case.voxel_mask.shape != case.label.shape:
                raise ValueError(
                    f"{case.case_id}: voxel_mask {case.voxel_mask.shape} differs from label {case.label.shape}"
                )
        self.cases, self.weight = list(cases), float(weight)
        self.sampler: Optional[_AnnotatedPatches] = None

    def on_train_start(self, state: TrainState) -> None:
        self.sampler = _AnnotatedPatches(state, self.cases) if self.cases else None
        if self.sampler is not None and not self.sampler.items:
            self.sampler = None

    def add(self, loss: torch.Tensor, batch: Batch, state: TrainState) -> torch.Tensor:
        if self.sampler is None:
            return loss
        images, labels, masks = self.sampler.sample(state.config.batch_size)
        device = state.device
        part = masked_dice_ce_loss(state.network(images.to(device)), labels.to(device), masks.to(device))
        state.metrics.update(loss_partial=float(part.detach()))
        return loss + self.weight * part
