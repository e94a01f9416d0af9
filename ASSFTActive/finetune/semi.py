"""Parts of teacher-student training: the student's strong view (intensity, and optionally a small spatial
jitter that moves the targets with it), labelled boxes pasted into pseudo-labelled patches, and class-aware voxel
confidence masks.

Each part is a small function or class on batched tensors ``[B, C, X, Y, Z]`` so that it can be tested alone and
combined by :func:`~ASSFTActive.finetune.training.train_supervised` (ASSFT's selective self-training) or by any
other teacher-student recipe (Mean Teacher re-training in SFR).

References:
    Sohn et al., "FixMatch", NeurIPS 2020 and Yang et al., "UniMatch", CVPR 2023 (weak view for the teacher, strong
    view for the student); Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation",
    CVPR 2023 (copy-paste between labelled and unlabelled volumes); Zhang et al., "FlexMatch", NeurIPS 2021
    (class-wise thresholds, so hard classes keep pseudo-labels).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

__all__ = [
    "SpatialJitter",
    "StrongView",
    "confident_from_maps",
    "confident_voxels",
    "paste_labelled_boxes",
    "teacher_targets",
]


def confident_voxels(probs: torch.Tensor, threshold: float, class_keep_min: float = 0.0) -> torch.Tensor:
    """Voxels whose pseudo-label is trusted: ``max_c p_c(v) >= t_k`` where ``k`` is the voxel's predicted class.

    ``t_k = threshold`` when ``class_keep_min`` is 0. Otherwise ``t_k`` is lowered, per sample and per predicted
    class, to the confidence of the ``class_keep_min`` quantile from the top, so that every predicted class keeps at
    least that share of its voxels (ties at the cut may keep a few more). A class the teacher is unsure about
    everywhere (typically a small foreground structure under a domain shift) is then not removed from the loss.

    MONAI has no class-wise confidence mask (its ``ConfidenceMask``-like utilities threshold globally), hence this
    function.

    Args:
        probs: class probabilities ``[B, C, X, Y, Z]`` or ``[C, X, Y, Z]``.
        threshold: the global confidence threshold in ``[0, 1]``.
        class_keep_min: share in ``[0, 1]`` of each predicted class's voxels that is always kept.

    Returns:
        bool mask ``[B, X, Y, Z]`` (or ``[X, Y, Z]``).
    """
    return teacher_targets(probs, threshold, class_keep_min)[1]


def confident_from_maps(
    confidence: torch.Tensor, hard: torch.Tensor, threshold: float, class_keep_min: float = 0.0
) -> torch.Tensor:
    """:func:`confident_voxels` from the maximum probability and the predicted class, ``[B, X, Y, Z]`` or
    ``[X, Y, Z]`` each (what the streaming predictor keeps)."""
    single = confidence.dim() == 3
    confidence, hard = (confidence[None], hard[None]) if single else (confidence, hard)
    mask = confidence >= threshold
    if class_keep_min > 0.0:
        for b in range(confidence.shape[0]):
            for k in torch.unique(hard[b]).tolist():
                values = confidence[b][hard[b] == k]
                keep = int(np.ceil(class_keep_min * values.numel()))
                if keep == 0:
                    continue
                cut = torch.kthvalue(values.float().flatten(), values.numel() - keep + 1).values
                mask[b] |= (hard[b] == k) & (confidence[b] >= min(float(cut), threshold))
    return mask[0] if single else mask


def teacher_targets(
    probs: torch.Tensor, threshold: Optional[float], class_keep_min: float = 0.0
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The online teacher's targets from its class probabilities, in one reduction over the classes: the predicted
    class of every voxel (the first class on ties, as ``argmax``) and the voxels whose pseudo-label is trusted
    (:func:`confident_voxels`; ``None`` when ``threshold`` is ``None``: every voxel counts).

    One ``max`` gives the class and its probability together; on CPU ``argmax`` over the class dimension of a
    ``[B, C, X, Y, Z]`` batch took about 9x as long as ``max`` (0.1 s a training step on the hippocampus's patches,
    measured under cProfile in a semi-supervised round), and the mask needed the ``max`` anyway.

    Args:
        probs: class probabilities ``[B, C, X, Y, Z]`` or ``[C, X, Y, Z]``.
        threshold: the global confidence threshold, or ``None`` for no mask.
        class_keep_min: see :func:`confident_voxels`.

    Returns:
        ``(labels, mask)``: int64 labels ``[B, X, Y, Z]`` (or ``[X, Y, Z]``) and a bool mask of that shape or ``None``.
    """
    confidence, hard = probs.max(dim=-4)
    if threshold is None:
        return hard, None
    return hard, confident_from_maps(confidence, hard, threshold, class_keep_min)


class StrongView:
    """The student's strongly perturbed view of a batch of patches (intensity only, labels stay valid).

    MONAI's random intensity transforms, applied per sample: contrast (gamma), Gaussian noise, Gaussian smoothing,
    intensity scale and shift. No spatial transforms here: the pseudo-labels come from the unperturbed (weak)
    view and must stay aligned with the student's input; :class:`SpatialJitter` moves the view and its labels
    together.

    Args:
        seed: seeds the transforms (each call draws new parameters).
    """

    def __init__(self, seed: int):
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandGaussianNoise,
            RandGaussianSmooth,
            RandScaleIntensity,
            RandShiftIntensity,
        )

        self.transform = Compose(
            [
                RandAdjustContrast(prob=0.8, gamma=(0.5, 2.0)),
                RandGaussianNoise(prob=0.5, mean=0.0, std=0.15),
                RandGaussianSmooth(prob=0.3, sigma_x=(0.5, 1.2), sigma_y=(0.5, 1.2), sigma_z=(0.5, 1.2)),
                RandScaleIntensity(prob=0.8, factors=0.25),
                RandShiftIntensity(prob=0.8, offsets=0.25),
            ]
        )
        self.transform.set_random_state(seed=int(seed) % (2**32))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` -> the same shape, a new tensor (the input is not modified)."""
        views = [torch.as_tensor(self.transform(image.clone())).as_subclass(torch.Tensor) for image in images]
        return torch.stack(views).to(images.dtype)  # MONAI returns MetaTensors; plain tensors go on


class SpatialJitter:
    """A small random rotation and scaling of the student's view, applied to its targets and voxel mask alike.

    The teacher labels the unperturbed (weak) patch; the student then sees the patch rotated by up to ``rotate``
    radians about each axis and scaled by up to ``1 ± scale``, and learns the teacher's labels moved the same way
    (nearest-neighbour), so the labels stay aligned with what the student sees. Voxels that come from outside the
    patch get mask 0 and do not count in the loss. MONAI's ``RandAffined`` does the resampling (one draw per sample,
    shared by the three keys).

    Args:
        seed: seeds the draws (each call draws new parameters).
        rotate: largest rotation about each axis, radians; 0.15 (about 9 degrees).
        scale: largest relative scaling per axis; 0.1.
    """

    def __init__(self, seed: int, rotate: float = 0.15, scale: float = 0.1):
        from monai.transforms import RandAffined

        self.transform = RandAffined(
            keys=("image", "label", "mask"),
            prob=1.0,
            rotate_range=(rotate,) * 3,
            scale_range=(scale,) * 3,
            mode=("bilinear", "nearest", "nearest"),
            padding_mode="zeros",
        )
        self.transform.set_random_state(seed=int(seed) % (2**32))

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``images [B, 1, X, Y, Z]``, ``labels [B, X, Y, Z]`` (integer), ``masks [B, X, Y, Z]`` -> the jittered
        triple, same shapes and dtypes, new tensors on the inputs' devices."""
        out_images, out_labels, out_masks = [], [], []
        for image, label, mask in zip(images.cpu(), labels.cpu(), masks.cpu()):
            moved = self.transform({"image": image.clone(), "label": label[None].float(), "mask": mask[None].float()})
            out_images.append(torch.as_tensor(moved["image"]).as_subclass(torch.Tensor))
            out_labels.append(torch.as_tensor(moved["label"]).as_subclass(torch.Tensor)[0].round())
            out_masks.append(torch.as_tensor(moved["mask"]).as_subclass(torch.Tensor)[0])
        return (
            torch.stack(out_images).to(images.device, images.dtype),
            torch.stack(out_labels).to(labels.device, labels.dtype),
            torch.stack(out_masks).to(masks.device, masks.dtype),
        )


def paste_labelled_boxes(
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    source_images: torch.Tensor,
    source_labels: torch.Tensor,
    probability: float,
    rng: np.random.Generator,
    size: Tuple[float, float] = (0.25, 0.5),
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy a random box of a labelled patch, with its expert labels, into pseudo-labelled patches.

    For each pseudo-labelled sample ``b``, with chance ``probability``, a box whose sides are a random share
    ``size`` of the patch is copied from labelled sample ``b mod B_l`` at the same position; inside it the target is
    the expert label and the mask is 1. Mixed patches carry the two domains' context into each other and put expert
    voxels into the pseudo-labelled loss.

    Args:
        images: pseudo-labelled patches ``[B, 1, X, Y, Z]``.
        labels: their (pseudo) labels ``[B, X, Y, Z]``.
        masks: their voxel weights ``[B, X, Y, Z]``.
        source_images: labelled patches ``[B_l, 1, X, Y, Z]`` of the same patch size.
        source_labels: their expert labels ``[B_l, X, Y, Z]``.
        probability: chance per sample of a pasted box.
        rng: the run's random generator.
        size: range of the box side as a share of the patch side.

    Returns:
        new ``(images, labels, masks)``; the inputs are not modified.
    """
    if probability <= 0.0 or len(source_images) == 0:
        return images, labels, masks
    images, labels, masks = images.clone(), labels.clone(), masks.clone()
    shape = np.array(labels.shape[1:])
    for b in range(images.shape[0]):
        if rng.random() >= probability:
            continue
        side = np.maximum(1, (shape * rng.uniform(size[0], size[1], size=3)).astype(int))
        start = np.array([rng.integers(0, s - w + 1) for s, w in zip(shape, side)])
        box = tuple(slice(int(a), int(a + w)) for a, w in zip(start, side))
        source = b % len(source_images)
        images[(b, slice(None)) + box] = source_images[(source, slice(None)) + box]
        labels[(b,) + box] = source_labels[(source,) + box]
        masks[(b,) + box] = 1.0
    return images, labels, masks
