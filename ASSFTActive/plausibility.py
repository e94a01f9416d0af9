"""Is an image plausible input for a segmentation model? Refuse volumes that only look like images.

A 1×1×1 file, a volume whose voxels all hold one value (e.g. an all-zero export), or a float64 volume whose values
overflow float32 (the type every network computes in) passes the file readers, yet gives meaningless
probabilities; a pool ranking then proposes exactly these volumes first, because the model is most "uncertain"
about them. :func:`check_image` refuses them with an :class:`~ASSFTActive.errors.InputError` naming the file:

* **too small**: fewer than :data:`MIN_EDGE_VOXELS` voxels along an axis;
* **constant**: every voxel holds the same value (zero variance), including all-zero volumes;
* **not finite as float32**: values beyond ±3.4e38 that become infinite when cast to float32.

Refused everywhere an image is read for ranking, overlays, evaluation and adaptation (labelled volumes). Label maps
are not checked here (an all-background label is a label-plausibility question, see
:mod:`ASSFTActive.label_checks`).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .io import Volume

__all__ = ["MIN_EDGE_VOXELS", "check_image"]

#: Fewest voxels an image may have along each axis.
MIN_EDGE_VOXELS = 4

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_image(volume: Volume) -> Volume:
    """Return ``volume`` unchanged if it is plausible input for a network, else raise.

    Args:
        volume: an image (``array`` ``[I, J, K]`` or ``[I, J, K, C]``).

    Raises:
        InputError: too small, constant, or not finite after the cast to float32; the message names the file.
    """
    where = volume.path if volume.path is not None else "image"
    shape = tuple(int(s) for s in volume.shape)
    if min(shape) < MIN_EDGE_VOXELS:
        raise InputError(
            f"{where}: the image is only {'×'.join(map(str, shape))} voxels; ASSFT needs at least {MIN_EDGE_VOXELS} "
            "voxels along every axis. Check that the right file was exported (not a thumbnail or a single slice)."
        )
    array = np.asarray(volume.array)
    if array.size == 0:
        raise InputError(f"{where}: the image holds no voxels.")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating) and max(abs(float(low)), abs(float(high))) > _FLOAT32_MAX:
        raise InputError(
            f"{where}: voxel values reach {max(abs(float(low)), abs(float(high))):.3g}, beyond the float32 range "
            "(±3.4e38) the network computes in; rescale the image."
        )
    if low == high:
        raise InputError(
            f"{where}: every voxel has the value {low.item()!r} (a constant image, no contrast); it holds nothing to "
            "segment. Check the export (e.g. an empty or all-zero volume)."
        )
    return volume
