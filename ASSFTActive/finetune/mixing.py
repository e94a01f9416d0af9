"""Bidirectional copy-paste (BCP) between labelled and unlabelled patches, for the Mean Teacher.

Each pair of a labelled patch ``l`` (expert label ``y``) and an unlabelled patch ``u`` (the teacher's pseudo-label
``ŷ`` and voxel weights ``m``) gives two mixed patches with one box mask ``M``:

* **labelled into unlabelled**: image ``u·(1-M) + l·M``, target ``ŷ`` outside the box and ``y`` inside;
* **unlabelled into labelled**: image ``l·(1-M) + u·M``, target ``y`` outside the box and ``ŷ`` inside.

The targets follow the pasted box: wherever a voxel came from the labelled patch its target is the expert label
(weight 1), wherever it came from the unlabelled one its target is the pseudo-label (weight ``α·m``, BCP's α = 0.5
for the unlabelled part). The student learns on both mixed patches, so labelled and unlabelled data share every
patch's statistics and context, the mismatch BCP targets at few labels.

MONAI has no bidirectional, label-following copy-paste (its ``CutMix``-style transforms mix labels by area
weights, not per voxel), hence these functions.

References:
    Bai, Chen, Li, Shen, Wei, Wang, "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
    CVPR 2023 (arXiv 2305.00673): a zero-centred box of 2/3 of each side, α = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["MixedBatch", "bidirectional_copy_paste", "random_boxes"]


def random_boxes(count: int, shape: Sequence[int], share: float, rng: np.random.Generator) -> torch.Tensor:
    """``count`` box masks ``[count, X, Y, Z]`` (bool): each box has sides ``round(share × side)`` (at least 1) at
    a uniformly drawn position inside the patch."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"the box share must be in (0, 1], got {share}")
    shape = tuple(int(s) for s in shape)
    boxes = torch.zeros((count,) + shape, dtype=torch.bool)
    sides = [max(1, int(round(share * s))) for s in shape]
    for b in range(count):
        start = [int(rng.integers(0, s - w + 1)) for s, w in zip(shape, sides)]
        boxes[(b,) + tuple(slice(a, a + w) for a, w in zip(start, sides))] = True
    return boxes


@dataclass(frozen=True)
class MixedBatch:
    """The student's mixed patches: the first ``B`` labelled-into-unlabelled, the next ``B`` unlabelled-into-labelled.

    Attributes:
        images: ``[2B, 1, X, Y, Z]``.
        targets: ``[2B, X, Y, Z]`` (int64): expert label where the voxel came from a labelled patch, pseudo-label
            elsewhere.
        weights: ``[2B, X, Y, Z]`` (float): 1 on expert voxels, ``pseudo_weight × pseudo mask`` elsewhere.
        expert: ``[2B, X, Y, Z]`` (bool): the voxel came from a labelled patch.
    """

    images: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor
    expert: torch.Tensor


def bidirectional_copy_paste(
    labelled_images: torch.Tensor,
    labels: torch.Tensor,
    unlabelled_images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    pseudo_masks: torch.Tensor,
    boxes: torch.Tensor,
    pseudo_weight: float = 0.5,
) -> MixedBatch:
    """Mix each unlabelled patch ``b`` with labelled patch ``b mod B_l`` both ways, inside box ``boxes[b]``.

    Args:
        labelled_images: ``[B_l, 1, X, Y, Z]``; ``labels``: their expert labels ``[B_l, X, Y, Z]``.
        unlabelled_images: ``[B, 1, X, Y, Z]``; ``pseudo_labels``: the teacher's labels ``[B, X, Y, Z]``;
            ``pseudo_masks``: the teacher's voxel weights ``[B, X, Y, Z]`` (1 = trusted, 0 = left out).
        boxes: bool ``[B, X, Y, Z]`` (:func:`random_boxes`).
        pseudo_weight: BCP's α, the weight of pseudo-labelled voxels relative to expert ones.

    Returns:
        the :class:`MixedBatch`; the inputs are not modified.
    """
    if labelled_images.shape[2:] != unlabelled_images.shape[2:] or boxes.shape[1:] != unlabelled_images.shape[2:]:
        raise ValueError(
            "labelled patches, unlabelled patches and boxes must have the same spatial size, got "
            f"{tuple(labelled_images.shape)}, {tuple(unlabelled_images.shape)}, {tuple(boxes.shape)}"
        )
    count = unlabelled_images.shape[0]
    pick = torch.arange(count) % labelled_images.shape[0]
    l_img, l_lab = labelled_images[pick], labels[pick].long()
    u_img, u_lab = unlabelled_images, pseudo_labels.long()
    box = boxes.to(u_img.device)
    box_img = box[:, None]
    u_weight = pseudo_weight * pseudo_masks.to(torch.float32)
    ones = torch.ones_like(u_weight)
    into_unlabelled = (
        torch.where(box_img, l_img, u_img),
        torch.where(box, l_lab, u_lab),
        torch.where(box, ones, u_weight),
        box,
    )
    into_labelled = (
        torch.where(box_img, u_img, l_img),
        torch.where(box, u_lab, l_lab),
        torch.where(box, u_weight, ones),
        ~box,
    )
    return MixedBatch(*(torch.cat([a, b]) for a, b in zip(into_unlabelled, into_labelled)))
