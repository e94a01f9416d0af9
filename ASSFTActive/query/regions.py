"""What the per-case scores need from a probability volume: sums of entropy over the scored regions.

ASD, mean entropy and ClaSP PE are means of voxel maps over regions of the predicted segmentation (the whole volume,
the dilated predicted foreground, each dilated predicted class). Their sums and voxel counts are all a score needs,
so they can be gathered while the sliding window streams out finished rows (``ASSFTActive.inference.reduction``) and the
class probabilities never have to exist for the whole volume at once. :func:`region_sums` computes the same
record from a full probability array; it is the reference definition the streaming reducer is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import AsdReduce, FgMask, QueryConfig
from .voxelwise import _class_foreground_masks, _foreground_mask, _predictive_entropy, check_probs

__all__ = ["RegionSpec", "RegionSums", "region_sums"]


@dataclass(frozen=True)
class RegionSpec:
    """Which regions the sums are taken over (the region settings of :class:`QueryConfig`).

    Attributes:
        dilation: radius in voxels of the city-block dilation of the predicted foreground and classes.
        fg_mask: how the union foreground is found before dilation (:class:`FgMask`).
        fg_prob_threshold: ``1 - p_0`` at or above which a voxel is foreground with ``fg_mask="pred_prob"``.
    """

    dilation: int = 2
    fg_mask: FgMask = FgMask.PRED_ARGMAX
    fg_prob_threshold: float = 0.5

    @classmethod
    def from_config(cls, config: QueryConfig) -> RegionSpec:
        return cls(
            dilation=int(config.fg_dilation),
            fg_mask=FgMask(config.fg_mask),
            fg_prob_threshold=float(config.fg_prob_threshold),
        )


def _count_vector(value: Any, classes: int, what: str) -> np.ndarray:
    vector = np.array(value, dtype=np.float64)
    if vector.shape != (classes,) or not np.all(np.isfinite(vector)) or np.any(vector < 0):
        raise ValueError(f"{what} must be {classes} finite non-negative numbers, got {vector!r}.")
    vector.setflags(write=False)
    return vector


@dataclass(frozen=True, eq=False)
class RegionSums:
    """Sums of the entropy maps over the regions of one predicted volume (model space).

    ``H`` is the normalised entropy in ``[0, 1]``, ``PE = H ln C`` the power (plain) predictive entropy in nats,
    ``M`` the dilated predicted foreground (``spec.fg_mask``), ``M_c = dilate(argmax == c)``.

    Attributes:
        spec: the regions.
        num_classes: C, background included.
        voxels: voxels in the volume.
        entropy_sum: ``sum_v H(v)``.
        power_entropy_sum: ``sum_v PE(v)``.
        foreground_voxels: ``|M|``.
        foreground_entropy_sum: ``sum_{v in M} H(v)``.
        class_voxels: ``[C]``, element c ``|M_c|`` (element 0 unused, 0).
        class_entropy_sums: ``[C]``, ``sum_{v in M_c} H(v)``.
        class_power_entropy_sums: ``[C]``, ``sum_{v in M_c} PE(v) p_c(v)`` (ClaSP PE's class-stratified map).
    """

    spec: RegionSpec
    num_classes: int
    voxels: int
    entropy_sum: float
    power_entropy_sum: float
    foreground_voxels: int
    foreground_entropy_sum: float
    class_voxels: np.ndarray
    class_entropy_sums: np.ndarray
    class_power_entropy_sums: np.ndarray

    def __post_init__(self) -> None:
        if self.num_classes < 2 or self.voxels < 1:
            raise ValueError(
                f"RegionSums needs C >= 2 and at least one voxel, got C={self.num_classes}, {self.voxels} voxels."
            )
        for name in ("class_voxels", "class_entropy_sums", "class_power_entropy_sums"):
            object.__setattr__(self, name, _count_vector(getattr(self, name), self.num_classes, name))

    def check_spec(self, config: QueryConfig) -> None:
        """Raise ``ValueError`` when the sums were taken over other regions than ``config`` asks for."""
        wanted = RegionSpec.from_config(config)
        if wanted != self.spec:
            raise ValueError(
                f"the region sums were computed for {self.spec}, but the query settings ask for {wanted}; "
                "predict again with the query's region settings."
            )

    def mean_entropy(self) -> float:
        """Whole-volume mean of ``H``."""
        return float(np.clip(self.entropy_sum / self.voxels, 0.0, 1.0))

    def asd(self, config: QueryConfig) -> float:
        """ASD (:func:`~.scores.anatomical_segmentation_difficulty`): mean ``H`` over ``M`` or class-balanced."""
        self.check_spec(config)
        if config.asd_reduce == AsdReduce.CLASS_BALANCED:
            present = self.class_voxels[1:] > 0
            if not present.any():
                return float(config.asd_empty_fg)
            means = self.class_entropy_sums[1:][present] / self.class_voxels[1:][present]
            return float(np.clip(np.mean(means), 0.0, 1.0))
        if self.foreground_voxels == 0:
            return float(config.asd_empty_fg)
        return float(np.clip(self.foreground_entropy_sum / self.foreground_voxels, 0.0, 1.0))

    def clasp_scores(self) -> np.ndarray:
        """Volume-level ClaSP PE scores ``[C]`` (:func:`~.scores.clasp_class_scores`)."""
        scores = np.zeros(self.num_classes, dtype=np.float64)
        scores[0] = self.power_entropy_sum / self.voxels
        present = self.class_voxels > 0
        present[0] = False
        scores[present] = self.class_power_entropy_sums[present] / self.class_voxels[present]
        return scores


def region_sums(probs: np.ndarray, spec: RegionSpec) -> RegionSums:
    """The :class:`RegionSums` of a full softmax volume ``probs`` ``[C, I, J, K]`` (the reference definition).

    Dilation is scipy's binary dilation by the 6-connected cross, ``spec.dilation`` times; voxels outside the volume
    are background.
    """
    array = check_probs(probs)
    classes = array.shape[0]
    power = _predictive_entropy(array)
    entropy = np.clip(power / np.float32(math.log(classes)), 0.0, 1.0)
    config = QueryConfig(fg_mask=spec.fg_mask, fg_prob_threshold=spec.fg_prob_threshold, fg_dilation=spec.dilation)
    foreground = _foreground_mask(array, config)
    class_voxels = np.zeros(classes)
    class_entropy = np.zeros(classes)
    class_power = np.zeros(classes)
    for c, mask in enumerate(_class_foreground_masks(array, config), start=1):
        class_voxels[c] = np.count_nonzero(mask)
        class_entropy[c] = float(entropy[mask].sum(dtype=np.float64))
        class_power[c] = float(np.sum(power[mask] * array[c][mask], dtype=np.float64))
    return RegionSums(
        spec=spec,
        num_classes=classes,
        voxels=int(entropy.size),
        entropy_sum=float(entropy.sum(dtype=np.float64)),
        power_entropy_sum=float(power.sum(dtype=np.float64)),
        foreground_voxels=int(np.count_nonzero(foreground)),
        foreground_entropy_sum=float(entropy[foreground].sum(dtype=np.float64)),
        class_voxels=class_voxels,
        class_entropy_sums=class_entropy,
        class_power_entropy_sums=class_power,
    )
