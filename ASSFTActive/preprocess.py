"""Bring a volume into the space a model expects (orientation, spacing, intensity) and results back.

The round trip is exact in geometry: :func:`from_model_space` returns arrays on the input volume's voxel grid, so
overlays and predictions carry the input's affine unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .io import Volume

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


def normalise_intensity(array: np.ndarray, preprocessing: Mapping) -> np.ndarray:
    """Intensity profile of a model card; returns float32 of the same shape.

    ``zscore_nonzero``: (x - mean) / std over the non-zero voxels (hippocampus crops are stored as uint8, float up
    to 1e4 or up to 1.7e6, so scaling must be per volume). ``ct_window``: clip to ``[a_min, a_max]`` HU and scale to
    ``[0, 1]``.
    """
    x = np.asarray(array, dtype=np.float32)
    profile = preprocessing["profile"]
    if profile == "ct_window":
        a_min, a_max = float(preprocessing["a_min"]), float(preprocessing["a_max"])
        return np.clip((x - a_min) / (a_max - a_min), 0.0, 1.0).astype(np.float32)
    mask = x != 0
    values = x[mask] if mask.any() else x.ravel()
    mean, std = float(values.mean()), float(values.std())
    return ((x - mean) / max(std, 1e-6)).astype(np.float32)


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


def to_model_space(volume: Volume, card) -> Tuple[torch.Tensor, ModelSpace]:
    """The network input for ``volume``: a float32 tensor ``[1, X, Y, Z]`` and the mapping back.

    Steps: reorient to the closest RAS voxel order (when the card asks), resample to the card's spacing (trilinear,
    when it differs by more than 1 %), then apply the card's intensity profile.
    """
    import nibabel.orientations as nio

    ornt = _orientation(volume, card.orientation)
    array = nio.apply_orientation(np.asarray(volume.array), ornt)
    spacing = _oriented_spacing(volume.spacing, ornt)
    oriented_shape = tuple(int(s) for s in array.shape)
    model_shape = _target_shape(oriented_shape, spacing, card.spacing)
    x = torch.from_numpy(normalise_intensity(array, card.preprocessing))[None]
    if model_shape != oriented_shape:
        x = F.interpolate(x[None], size=model_shape, mode="trilinear", align_corners=False)[0]
    space = ModelSpace(ornt=ornt, oriented_shape=oriented_shape, model_shape=model_shape,
                       original_shape=volume.shape)
    return x.contiguous(), space


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
        index = [np.minimum((np.arange(out) * (size / out)).astype(np.int64), size - 1)
                 for size, out in zip(array.shape, space.oriented_shape)]
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
        values = F.interpolate(values[None, None], size=space.oriented_shape, mode="trilinear",
                               align_corners=False)[0, 0]
    else:
        values = values.clone()
    quantised = values.mul_(levels).round_().clamp_(0, levels).to(torch.uint8).numpy()
    return np.ascontiguousarray(nio.apply_orientation(quantised, _inverse_ornt(space.ornt)))
