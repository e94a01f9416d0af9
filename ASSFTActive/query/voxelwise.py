"""Voxel maps computed from a class-probability volume: entropy, adaptive foreground, class-stratified entropy.

All functions are pure: they never modify their input and return new ``float32`` (or ``bool``) arrays.
``probs`` is always a softmax output ``[C, I, J, K]`` with class 0 = background and ``C >= 2``.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
from scipy import ndimage

from .config import FgMask, QueryConfig

__all__ = [
    "check_probs",
    "class_foreground_masks",
    "dilate",
    "foreground_mask",
    "normalized_entropy",
    "power_entropy_class_maps",
    "predictive_entropy",
]

#: Largest allowed deviation of ``sum_c p_c`` from 1 before the input is refused as not being probabilities.
PROBABILITY_SUM_TOLERANCE = 1e-3


def check_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a ``float32`` array ``[C, I, J, K]`` after checking it is a softmax output.

    The result may share memory with the input; callers must not write into it.

    Raises:
        ValueError: wrong number of dimensions, fewer than 2 classes, non-finite values, negative values or
            class sums away from 1 (logits passed instead of probabilities).
    """
    array = np.asarray(probs, dtype=np.float32)
    if array.ndim != 4:
        raise ValueError(f"{name} must have shape [C, I, J, K] (classes first), got shape {array.shape}.")
    if array.shape[0] < 2:
        raise ValueError(
            f"{name} has {array.shape[0]} class channel; ASSFT needs a softmax over background and at least one "
            "foreground class (C >= 2)."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if float(array.min()) < -1e-6:
        raise ValueError(f"{name} has negative values; pass softmax probabilities, not logits.")
    deviation = float(np.max(np.abs(array.sum(axis=0, dtype=np.float32) - 1.0)))
    if deviation > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"{name} does not sum to 1 over the class axis (largest deviation {deviation:.3g}); pass softmax "
            "probabilities with classes on axis 0."
        )
    return array


def _neg_xlogx(p: np.ndarray) -> np.ndarray:
    """``-p log p`` with ``0 log 0 = 0``, as a new ``float32`` array."""
    positive = p > 0
    return -np.where(positive, p * np.log(np.where(positive, p, 1.0)), 0.0).astype(np.float32, copy=False)


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """Unnormalised predictive entropy ``PE(v) = -sum_c p_c(v) ln p_c(v)`` (nats).

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.

    Returns:
        ``float32`` ``[I, J, K]`` in ``[0, ln C]``.
    """
    return _predictive_entropy(check_probs(probs))


def _predictive_entropy(array: np.ndarray) -> np.ndarray:
    entropy = np.zeros(array.shape[1:], dtype=np.float32)
    for channel in array:  # one class at a time keeps memory at a few [I, J, K] arrays
        entropy += _neg_xlogx(channel)
    return np.clip(entropy, 0.0, math.log(array.shape[0]), out=entropy)


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy ``H(v) = -sum_c p_c(v) log p_c(v) / log C`` (method-spec.md §1.5).

    Args:
        probs: softmax probabilities ``[C, I, J, K]``, ``C >= 2``.

    Returns:
        ``float32`` ``[I, J, K]`` in ``[0, 1]``: 1 for a uniform prediction, 0 for a one-hot one.
    """
    return _normalized_entropy(check_probs(probs))


def _normalized_entropy(array: np.ndarray) -> np.ndarray:
    entropy = _predictive_entropy(array)
    entropy /= np.float32(math.log(array.shape[0]))
    return np.clip(entropy, 0.0, 1.0, out=entropy)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 3D mask by ``radius`` voxels.

    The structuring element is the 6-connected cross (``scipy.ndimage.generate_binary_structure(3, 1)``) applied
    ``radius`` times, i.e. a city-block (L1) ball of that radius. Voxels outside the volume count as background.
    ``radius = 0`` returns a copy of the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if radius == 0 or not mask.any():
        return mask.copy()
    cross = ndimage.generate_binary_structure(3, 1)
    return ndimage.binary_dilation(mask, structure=cross, iterations=int(radius))


def foreground_mask(probs: np.ndarray, config: QueryConfig) -> np.ndarray:
    """The adaptive foreground of ASD (method-spec.md §1.5): predicted foreground, dilated.

    ``config.fg_mask == "pred_argmax"``: voxels whose most probable class is not 0 (a tie with background goes to
    background, as ``numpy.argmax`` takes the first index); ``"pred_prob"``: voxels with
    ``1 - p_0 >= config.fg_prob_threshold``. Then :func:`dilate` by ``config.fg_dilation`` voxels.

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.
        config: query settings.

    Returns:
        ``bool`` ``[I, J, K]``.
    """
    return _foreground_mask(check_probs(probs), config)


def _foreground_mask(array: np.ndarray, config: QueryConfig) -> np.ndarray:
    if config.fg_mask == FgMask.PRED_PROB:
        mask = (1.0 - array[0]) >= np.float32(config.fg_prob_threshold)
    else:
        mask = np.argmax(array, axis=0) != 0
    return dilate(mask, config.fg_dilation)


def class_foreground_masks(probs: np.ndarray, config: QueryConfig) -> List[np.ndarray]:
    """Per-class predicted masks ``dilate(argmax == c)`` for the foreground classes ``c = 1 .. C-1``.

    The class decision is always the argmax (``config.fg_mask`` only chooses the union mask of
    :func:`foreground_mask`); ``config.fg_dilation`` applies. Dilated masks of neighbouring classes may overlap.

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.
        config: query settings.

    Returns:
        ``C - 1`` ``bool`` arrays ``[I, J, K]``; element ``c - 1`` belongs to class ``c`` (all False if absent).
    """
    return _class_foreground_masks(check_probs(probs), config)


def _class_foreground_masks(array: np.ndarray, config: QueryConfig) -> List[np.ndarray]:
    labels = np.argmax(array, axis=0)
    return [dilate(labels == c, config.fg_dilation) for c in range(1, array.shape[0])]


def power_entropy_class_maps(probs: np.ndarray) -> np.ndarray:
    """ClaSP PE uncertainty maps (method-spec.md §3.2): plain and class-stratified predictive entropy.

    ``U_0(v) = PE(v)`` and ``U_c(v) = PE(v) * p_c(v)`` for the foreground classes, with the unnormalised
    ``PE(v) = -sum_c p_c(v) ln p_c(v)`` of :func:`predictive_entropy`.

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.

    Returns:
        ``float32`` ``[C, I, J, K]``: index 0 is ``PE``, index ``c >= 1`` is ``PE * p_c``.

    References:
        Lüth et al., "ClaSP PE: class-stratified scheduled power predictive entropy", arXiv 2601.13677 (TMLR
        2026); nnActive ``class_power_pe66_exp`` (github.com/MIC-DKFZ/nnActive).
    """
    return _power_entropy_class_maps(check_probs(probs))


def _power_entropy_class_maps(array: np.ndarray) -> np.ndarray:
    entropy = _predictive_entropy(array)
    maps = np.empty(array.shape, dtype=np.float32)
    maps[0] = entropy
    for c in range(1, array.shape[0]):
        np.multiply(entropy, array[c], out=maps[c])
    return maps
