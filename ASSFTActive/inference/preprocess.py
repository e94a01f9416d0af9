"""Bring a volume into the space a model expects (orientation, spacing, intensity) and results back.

The round trip is exact in geometry: :func:`from_model_space` returns arrays on the input volume's voxel grid, so
overlays and predictions carry the input's affine unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..io import SLAB_VOXELS, Volume, slab_rows, storage_slabs

#: Relative spacing difference below which no resampling is done.
SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class ModelSpace:
    """How a volume was mapped into model space, to map results back.

    Attributes:
        ornt: nibabel orientation array ``[3, 2]`` from the volume's voxel axes to the model's (identity if none).
        oriented_shape: shape ``[3]`` after reorientation, before resampling.
        model_shape: shape ``[3]`` the network sees.
        original_shape: the input volume's shape ``[3]``.
    """

    ornt: np.ndarray
    oriented_shape: Tuple[int, int, int]
    model_shape: Tuple[int, int, int]
    original_shape: Tuple[int, int, int]


#: Value of the voxels added around a volume smaller than the network's patch, in model space (after intensity
#: normalisation). Sliding-window inference and the training patch sampler must pad alike: a network fine-tuned on
#: patches padded otherwise than what it sees at inference learns a border it never meets, and its predictions
#: degrade (measured: RESULTS.md, "Few-label fine-tuning").
PAD_VALUE = 0.0


@dataclass(frozen=True)
class IntensityTransform:
    """The affine-then-clip intensity map ``clip(scale * x + offset, low, high)`` of one volume, from its card.

    ``zscore_nonzero``: ``(x - mean) / std`` over the non-zero voxels (hippocampus crops are stored as uint8, float
    up to 1e4 or up to 1.7e6, so scaling must be per volume; all-zero volumes are left at 0). ``ct_window``: clip
    to ``[a_min, a_max]`` HU and scale to ``[0, 1]``. ``nnunet``: nnU-Net's schemes
    (:func:`nnunet_intensity_transform`); ``zero_stays_zero`` keeps voxels that are 0 at 0 (its
    masked z-score leaves the voxels outside the non-zero mask alone; ``zscore_nonzero`` with ``"keep_zeros": true`` is
    MONAI's ``NormalizeIntensity(nonzero=True)``, which normalises only the non-zero voxels).
    """

    scale: float
    offset: float
    low: float = -np.inf
    high: float = np.inf
    zero_stays_zero: bool = False

    @classmethod
    def of(cls, array: np.ndarray, preprocessing: Mapping) -> IntensityTransform:
        """The transform of the card's ``preprocessing`` profile for ``array`` ``[I, J, K]`` (read slab by slab)."""
        if preprocessing["profile"] == "nnunet":
            return nnunet_intensity_transform(array, preprocessing)
        if preprocessing["profile"] == "ct_window":
            a_min, a_max = float(preprocessing["a_min"]), float(preprocessing["a_max"])
            return cls(scale=1.0 / (a_max - a_min), offset=-a_min / (a_max - a_min), low=0.0, high=1.0)
        mean, std = nonzero_mean_std(array)
        scale = 1.0 / max(std, 1e-6)
        return cls(scale=scale, offset=-mean * scale, zero_stays_zero=bool(preprocessing.get("keep_zeros", False)))

    def __call__(self, slab: np.ndarray) -> torch.Tensor:
        """Apply to ``slab`` (any shape and dtype): a new float32 tensor of the same shape (``slab`` is left as is)."""
        x = torch.from_numpy(np.array(slab, dtype=np.float32, copy=True))
        zeros = x == 0 if self.zero_stays_zero else None
        x.mul_(self.scale).add_(self.offset)
        if np.isfinite(self.low) or np.isfinite(self.high):
            x.clamp_(self.low, self.high)
        if zeros is not None:
            x[zeros] = 0.0
        return x


def nonzero_box(array: np.ndarray) -> Tuple[slice, ...]:
    """The bounding box of the non-zero voxels of ``array`` ``[I, J, K]`` (nnU-Net's ``crop_to_nonzero``; the
    whole array when all voxels are zero)."""
    box = []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        hits = np.flatnonzero(np.any(array != 0, axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, array.shape[axis]))
    return tuple(box)


def nnunet_intensity_transform(array: np.ndarray, preprocessing: Mapping) -> IntensityTransform:
    """The :class:`IntensityTransform` of nnU-Net's normalisation (the card's ``"nnunet"`` profile, read from the
    plans by :mod:`ASSFTActive.sources.nnunet`) for ``array`` ``[I, J, K]``.

    - ``CTNormalization``: ``clip(x, p0.5, p99.5)`` then ``(x - mean) / max(std, 1e-8)`` with the plans' foreground
      statistics; the same as the affine map followed by a clip to the mapped bounds.
    - ``ZScoreNormalization`` without mask: mean and standard deviation over the non-zero bounding box (nnU-Net
      crops to it before normalising); with ``use_mask_for_norm``: over nnU-Net's non-zero mask (holes filled) and
      voxels that are zero stay zero (nnU-Net leaves the voxels outside the mask alone; zeros inside holes of the
      mask are the one difference).
    - ``NoNormalization``: unchanged.
    """
    scheme = preprocessing["scheme"]
    if scheme == "NoNormalization":
        return IntensityTransform(scale=1.0, offset=0.0)
    if scheme == "CTNormalization":
        mean, std = float(preprocessing["mean"]), max(float(preprocessing["std"]), 1e-8)
        low, high = float(preprocessing["percentile_00_5"]), float(preprocessing["percentile_99_5"])
        return IntensityTransform(scale=1.0 / std, offset=-mean / std, low=(low - mean) / std, high=(high - mean) / std)
    box = nonzero_box(array)
    region = np.asarray(array[box])
    if preprocessing.get("use_mask_for_norm", False):
        from scipy.ndimage import binary_fill_holes

        values = region[binary_fill_holes(region != 0)].astype(np.float64)
    else:
        values = region.astype(np.float64).ravel()
    mean = float(values.mean()) if values.size else 0.0
    std = max(float(values.std()) if values.size else 0.0, 1e-8)
    return IntensityTransform(
        scale=1.0 / std, offset=-mean / std, zero_stays_zero=bool(preprocessing.get("use_mask_for_norm", False))
    )


def nonzero_mean_std(array: np.ndarray) -> Tuple[float, float]:
    """Mean and population standard deviation of the non-zero voxels of ``array`` ``[I, ...]``; ``(0, 0)`` if none.

    Accumulated in float64 over slabs along the axis the voxels are stored slowest on (so each slab is one
    contiguous block of memory, or of a memory-mapped file), merged with Chan et al.'s pairwise update: the peak
    extra memory is one slab whatever the volume's size.

    References:
        Chan, Golub, LeVeque, "Updating formulae and a pairwise algorithm for computing sample variances", 1979.
    """
    count, mean, m2 = 0, 0.0, 0.0
    for slab in storage_slabs(array, SLAB_VOXELS):
        values = slab[slab != 0].astype(np.float64)
        n = int(values.size)
        if n == 0:
            continue
        slab_mean = float(values.mean())
        slab_m2 = float(np.square(values - slab_mean).sum())
        total = count + n
        delta = slab_mean - mean
        mean += delta * n / total
        m2 += slab_m2 + delta * delta * count * n / total
        count = total
    if count == 0:
        return 0.0, 0.0
    return mean, float(np.sqrt(m2 / count))


def _slabs(shape: Sequence[int]):
    """``(first, stop)`` row ranges along axis 0 of at most :data:`SLAB_VOXELS` voxels each (at least one row)."""
    rows = slab_rows(shape, SLAB_VOXELS)
    for first in range(0, int(shape[0]), rows):
        yield first, min(first + rows, int(shape[0]))


def _orientation(volume: Volume, orientation: Optional[str]) -> np.ndarray:
    import nibabel.orientations as nio

    if orientation is None:
        return np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return nio.io_orientation(volume.affine)


def _target_shape(shape, spacing, target_spacing) -> Tuple[int, int, int]:
    if target_spacing is None:
        return tuple(int(s) for s in shape)
    ratio = np.asarray(spacing, dtype=float) / np.asarray(target_spacing, dtype=float)
    if np.all(np.abs(ratio - 1.0) < SPACING_TOLERANCE):
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(s * r))) for s, r in zip(shape, ratio))


def linear_source_rows(size_in: int, size_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size_out`` output rows, the two input rows and the weight of the second one: ``[size_out]`` each.

    PyTorch's rule for ``interpolate(..., mode="linear"/"trilinear", align_corners=False)`` with an output size:
    source coordinate ``(o + 0.5) * size_in / size_out - 0.5``, clamped at 0, between rows ``floor`` and
    ``floor + 1`` (the last row repeated at the end).
    """
    source = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lower = np.minimum(source.astype(np.int64), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, (source - lower).astype(np.float32)


def to_model_space(volume: Volume, card) -> Tuple[torch.Tensor, ModelSpace]:
    """The network input for ``volume``: a float32 tensor ``[1, X, Y, Z]`` and the mapping back.

    Steps: reorient to the closest RAS voxel order (when the card asks; a view, no copy), resample to the card's
    spacing (trilinear, when it differs by more than 1 %), after the card's intensity profile. The input is
    streamed: intensity statistics are gathered slab by slab, then each slab of input rows is normalised,
    resampled in-plane (bilinear) and blended along the first axis into its output rows, which equals one
    trilinear ``F.interpolate`` of the whole normalised volume to float tolerance. Extra memory beyond the input
    and the output is one slab (:data:`SLAB_VOXELS`), where the whole-volume version held about three float32
    copies of the input at once (1 GB more for a 512×512×300 CT, and 6 s instead of 1.2 s on 2 cores). A
    memory-mapped input (uncompressed NIfTI) is read from disk as the slabs reach it.
    """
    import nibabel.orientations as nio

    ornt = _orientation(volume, card.orientation)
    array = nio.apply_orientation(volume.array, ornt)
    spacing = _oriented_spacing(volume.spacing, ornt)
    oriented_shape = tuple(int(s) for s in array.shape)
    model_shape = _target_shape(oriented_shape, spacing, card.spacing)
    transform = IntensityTransform.of(array, card.preprocessing)
    out = torch.empty((1,) + model_shape, dtype=torch.float32)
    if model_shape == oriented_shape:
        for first, stop in _slabs(oriented_shape):
            out[0, first:stop] = transform(array[first:stop])
    else:
        _resample_rows(array, transform, out[0])
    space = ModelSpace(ornt=ornt, oriented_shape=oriented_shape, model_shape=model_shape, original_shape=volume.shape)
    return out, space


def _resample_rows(array: np.ndarray, transform: IntensityTransform, out: torch.Tensor) -> None:
    """Fill ``out`` ``[X, Y, Z]`` with the trilinear resampling of ``transform(array)`` ``[I, J, K]``, slab-wise."""
    lower, upper, weight = linear_source_rows(array.shape[0], out.shape[0])
    plane = tuple(int(s) for s in out.shape[1:])
    same_plane = plane == tuple(int(s) for s in array.shape[1:])
    rows_in, rows_out = slab_rows(array.shape, SLAB_VOXELS), slab_rows(out.shape, SLAB_VOXELS)
    first_out = 0
    while first_out < out.shape[0]:
        stop_out = first_out + 1  # grow the output chunk while it and its input rows fit in one slab each
        while (
            stop_out < out.shape[0] and stop_out - first_out < rows_out and upper[stop_out] - lower[first_out] < rows_in
        ):
            stop_out += 1
        base, end = int(lower[first_out]), int(upper[stop_out - 1]) + 1
        slab = transform(array[base:end])
        if not same_plane:
            slab = F.interpolate(slab[:, None], size=plane, mode="bilinear", align_corners=False)[:, 0]
        w = torch.from_numpy(weight[first_out:stop_out])[:, None, None]
        below = slab[torch.from_numpy(lower[first_out:stop_out] - base)]
        above = slab[torch.from_numpy(upper[first_out:stop_out] - base)]
        out[first_out:stop_out] = below + w * (above - below)
        first_out = stop_out


def _oriented_spacing(spacing: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    out = np.empty(3)
    for axis, (target, _flip) in enumerate(ornt):
        out[int(target)] = spacing[axis]
    return out


def from_model_space(maps: torch.Tensor, space: ModelSpace) -> np.ndarray:
    """Map per-voxel maps ``[C, X, Y, Z]`` in model space back onto the input grid: ``[C, I, J, K]`` float32.

    Resampling is trilinear (for probabilities, renormalise afterwards if needed), then the reorientation is undone.
    """
    import nibabel.orientations as nio

    if tuple(maps.shape[1:]) != space.oriented_shape:
        maps = F.interpolate(maps[None].float(), size=space.oriented_shape, mode="trilinear", align_corners=False)[0]
    array = maps.float().cpu().numpy()
    inverse = _inverse_ornt(space.ornt)
    out = np.stack([nio.apply_orientation(channel, inverse) for channel in array])
    return np.ascontiguousarray(out, dtype=np.float32)


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``apply_orientation(x, ornt)``."""
    inverse = np.empty_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (axis, flip)
    return inverse


def label_to_model_space(label: np.ndarray, space: ModelSpace) -> np.ndarray:
    """A label map ``[I, J, K]`` on the input grid, mapped like the image: ``[X, Y, Z]`` (nearest neighbour)."""
    import nibabel.orientations as nio

    oriented = nio.apply_orientation(np.asarray(label), space.ornt)
    if tuple(space.model_shape) != tuple(space.oriented_shape):
        t = torch.from_numpy(np.ascontiguousarray(oriented)).float()[None, None]
        oriented = F.interpolate(t, size=space.model_shape, mode="nearest")[0, 0].numpy()
    return np.ascontiguousarray(oriented).astype(np.int64)


def label_from_model_space(label: np.ndarray, space: ModelSpace) -> np.ndarray:
    """A map of labels or flags ``[X, Y, Z]`` in model space back on the input grid ``[I, J, K]``; the dtype is kept.

    Nearest neighbour by index (torch's ``nearest`` rule, source index ``floor(i * in / out)``), so the output is
    built in the map's own dtype (one byte per voxel for a label map of a CT), then the reorientation is undone.
    """
    import nibabel.orientations as nio

    array = np.asarray(label)
    if tuple(array.shape) != tuple(space.oriented_shape):
        index = [
            np.minimum((np.arange(out) * (size / out)).astype(np.int64), size - 1)
            for size, out in zip(array.shape, space.oriented_shape)
        ]
        array = array[np.ix_(*index)]
    return np.ascontiguousarray(nio.apply_orientation(array, _inverse_ornt(space.ornt)))


def unit_levels_from_model_space(unit_map: np.ndarray, space: ModelSpace, levels: int = 255) -> np.ndarray:
    """A map with values in ``[0, 1]`` ``[X, Y, Z]`` in model space on the input grid as uint8 ``round(levels * v)``.

    Trilinear like :func:`from_model_space`, quantised in place, so a CT-sized grid holds one float32 copy at most
    once and ends at one byte per voxel (what :func:`~ASSFTActive.io.write_unit_map` stores).
    """
    import nibabel.orientations as nio

    values = torch.from_numpy(np.ascontiguousarray(unit_map, dtype=np.float32))
    if tuple(values.shape) != tuple(space.oriented_shape):
        values = F.interpolate(values[None, None], size=space.oriented_shape, mode="trilinear", align_corners=False)[
            0, 0
        ]
    else:
        values = values.clone()
    quantised = values.mul_(levels).round_().clamp_(0, levels).to(torch.uint8).numpy()
    return np.ascontiguousarray(nio.apply_orientation(quantised, _inverse_ornt(space.ornt)))
