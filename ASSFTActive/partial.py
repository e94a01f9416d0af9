"""Partial labels: which voxels of a label file an annotator actually annotated.

The convention (one, for every reader and writer of the project):

    A label file is a class-index map on the image's grid. The reserved value :data:`NOT_ANNOTATED` (255) marks a
    voxel that was **not annotated**; every other value ``0..C-1`` is an annotated class (``0`` = annotated
    background). A file without any 255 is a full label, exactly as before.

Why a reserved value and not a sidecar mask: a Slicer segmentation exports every segment as one label value, so a
segment named ``not annotated`` whose label value is 255 (Segmentations module: *Export to files* with a color table
that maps ``not annotated`` to 255, or ``Export visible segments to binary labelmap`` after setting the segment's
label value) round-trips through one ``.nii.gz`` / ``.seg.nrrd``; a sidecar would be a second file to keep in step
with the first, and would be lost the first time someone copies only the label. 255 is the largest ``uint8`` and far
above any class count a model card of this project has, so it can never be a class.

Reading yields ``(labels, annotated)``: the labels with unannotated voxels set to 0 (so downstream code that wants a
class map gets one) and a bool mask of the annotated voxels; only the masked voxels may be used by a loss, a check
or a score. A volume with no annotated voxel is not a labelled volume. The one exception is a semi-supervised round
of Adapt, which fills the unannotated voxels with the teacher's confident classes (:func:`fill_from_teacher`), the
annotated ones keeping the annotator's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .io import GEOMETRY_TOLERANCE_MM, Volume, check_same_geometry, read_label, read_volume, write_volume

__all__ = [
    "NOT_ANNOTATED",
    "PartialLabel",
    "annotated_slices_mask",
    "encode_partial",
    "fill_from_teacher",
    "has_annotation",
    "is_partial",
    "read_partial_label",
    "split_partial",
    "write_partial_label",
]

#: The label value of a voxel that was not annotated (the one convention; see the module docstring).
NOT_ANNOTATED = 255

PathLike = Union[str, Path]


@dataclass(frozen=True)
class PartialLabel:
    """A label read with the partial-label convention.

    Attributes:
        label: class indices ``[I, J, K]`` (``uint8``) on the image grid; unannotated voxels hold 0.
        annotated: bool ``[I, J, K]``, true where the annotator set the class.
    """

    label: Volume
    annotated: np.ndarray

    @property
    def is_partial(self) -> bool:
        """Some voxel is not annotated."""
        return not bool(self.annotated.all())

    @property
    def annotated_voxels(self) -> int:
        return int(np.count_nonzero(self.annotated))

    @property
    def is_labelled(self) -> bool:
        """At least one voxel is annotated (a volume with none is not a labelled volume)."""
        return self.annotated_voxels > 0

    @property
    def voxel_mask(self):
        """The mask a :class:`~ASSFTActive.finetune.training.SupervisedCase` takes: ``None`` for a full label."""
        return self.annotated if self.is_partial else None


def is_partial(array: np.ndarray) -> bool:
    """``array`` (a raw label map) marks some voxel as not annotated."""
    return bool(np.any(np.asarray(array) == NOT_ANNOTATED))


def split_partial(array: np.ndarray, num_classes: int, where: str = "label") -> Tuple[np.ndarray, np.ndarray]:
    """``(labels, annotated)`` of a raw label map ``[I, J, K]``: labels ``uint8`` with 0 where not annotated,
    annotated bool.

    Raises:
        InputError: fractional values, or values that are neither a class ``0..num_classes-1`` nor
            :data:`NOT_ANNOTATED`; a model with 255 or more classes (the reserved value would be a class).
    """
    if num_classes >= NOT_ANNOTATED:
        raise InputError(
            f"{where}: the model has {num_classes} classes, so the value {NOT_ANNOTATED} is a class and "
            "cannot mark unannotated voxels; give full labels for this model."
        )
    values = np.asarray(array)
    if np.issubdtype(values.dtype, np.floating):
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            raise InputError(f"{where}: label values must be whole numbers (class indices); found fractions.")
        values = rounded
    annotated = values != NOT_ANNOTATED
    present = np.unique(values[annotated]) if annotated.any() else np.zeros(0)
    unknown = [int(v) for v in present if v < 0 or v >= num_classes]
    if unknown:
        raise InputError(
            f"{where}: label values {unknown} are neither classes of the model (0..{num_classes - 1}) "
            f"nor {NOT_ANNOTATED} (not annotated). Relabel the file or choose a model card with these "
            "classes."
        )
    labels = np.where(annotated, values, 0).astype(np.uint8)
    return labels, annotated


def read_partial_label(
    path: PathLike, image: Volume, num_classes: int, tolerance_mm: float = GEOMETRY_TOLERANCE_MM
) -> PartialLabel:
    """Read a label file with the partial-label convention, on the grid of ``image`` (a model with 255 classes or
    more reads every label as a full one, :func:`~ASSFTActive.io.read_label`).

    Raises:
        InputError: unreadable file, a grid other than the image's, values that are neither classes nor
            :data:`NOT_ANNOTATED`.
    """
    if num_classes >= NOT_ANNOTATED:  # 255 is a class of this model: every label is a full label
        label = read_label(path, image, num_classes, tolerance_mm)
        return PartialLabel(label, np.ones(label.shape, dtype=bool))
    raw = read_volume(path)
    check_same_geometry(image, raw, tolerance_mm)
    labels, annotated = split_partial(raw.array, num_classes, where=str(raw.path or path))
    return PartialLabel(Volume(array=labels, affine=raw.affine, path=raw.path), annotated)


def has_annotation(path: PathLike, num_classes: int) -> bool:
    """The label file marks at least one voxel as annotated (always true for a model with 255 classes or more, where
    255 is a class); a file of 255 only is not a label of its volume."""
    return num_classes >= NOT_ANNOTATED or bool(np.any(read_volume(path).array != NOT_ANNOTATED))


def encode_partial(labels: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """The stored form ``uint8 [I, J, K]``: ``labels`` where ``annotated``, :data:`NOT_ANNOTATED` elsewhere.

    Raises:
        ValueError: shapes differ, or a label value is not a class below 255.
    """
    labels, annotated = np.asarray(labels), np.asarray(annotated, dtype=bool)
    if labels.shape != annotated.shape:
        raise ValueError(f"labels {labels.shape} and annotated mask {annotated.shape} differ in shape")
    if labels.size and (labels[annotated].min(initial=0) < 0 or labels[annotated].max(initial=0) >= NOT_ANNOTATED):
        raise ValueError(f"label values must lie in 0..{NOT_ANNOTATED - 1} where annotated")
    return np.where(annotated, labels, NOT_ANNOTATED).astype(np.uint8)


def write_partial_label(labels: np.ndarray, annotated: np.ndarray, geometry: Volume, path: PathLike) -> Path:
    """Write ``labels`` with the unannotated voxels as :data:`NOT_ANNOTATED` on ``geometry``'s grid (atomically)."""
    return write_volume(geometry.with_array(encode_partial(labels, annotated)), path)


def fill_from_teacher(
    labels: np.ndarray, annotated: np.ndarray, teacher: np.ndarray, confident: Optional[np.ndarray]
) -> Tuple[np.ndarray, np.ndarray]:
    """The target of a partially labelled volume in a semi-supervised round: the annotator's class where annotated,
    the teacher's class where not annotated and the teacher is trusted, nothing elsewhere.

    The supervised stage trains on the annotated voxels only; a semi-supervised round also learns the unannotated
    voxels of the same volume from the teacher, with the confidence rule it applies to the unlabelled pool
    (:func:`~ASSFTActive.finetune.pseudo.voxel_confidence_mask`). An annotated voxel always keeps the annotator's
    class, whatever the teacher says; an unannotated voxel the teacher is not confident about stays out of the loss.

    Args:
        labels: the annotator's classes ``[I, J, K]`` (the values at unannotated voxels are ignored).
        annotated: bool ``[I, J, K]``, true where the annotator set the class.
        teacher: the teacher's classes (argmax) ``[I, J, K]``.
        confident: bool ``[I, J, K]``, true where the teacher's class is trusted; ``None``: every voxel is.

    Returns:
        ``(target, mask)``: ``target`` ``uint8 [I, J, K]`` (``labels`` where annotated, ``teacher`` where not) and
        ``mask`` bool ``[I, J, K]`` = ``annotated | confident`` (the voxels that count in the loss). The inputs are
        not modified.

    Raises:
        ValueError: the shapes differ, or a class is negative or not below :data:`NOT_ANNOTATED`.
    """
    labels, annotated, teacher = np.asarray(labels), np.asarray(annotated, dtype=bool), np.asarray(teacher)
    trusted = np.ones(annotated.shape, dtype=bool) if confident is None else np.asarray(confident, dtype=bool)
    shapes = {a.shape for a in (labels, annotated, teacher, trusted)}
    if len(shapes) != 1 or labels.ndim != 3:
        raise ValueError(
            f"labels, annotated, teacher and confident must be [I, J, K] maps of one shape, got {labels.shape}, "
            f"{annotated.shape}, {teacher.shape}, {trusted.shape}"
        )
    for name, values in (("labels", labels[annotated]), ("teacher", teacher[~annotated])):
        if values.size and (values.min() < 0 or values.max() >= NOT_ANNOTATED):
            raise ValueError(f"{name}: classes must lie in 0..{NOT_ANNOTATED - 1}")
    target = np.where(annotated, labels, teacher).astype(np.uint8)
    return target, annotated | trusted


def annotated_slices_mask(shape: Sequence[int], slices: Iterable[Mapping[str, int]]) -> np.ndarray:
    """Bool ``shape`` mask that is true on each slice ``{"axis": k, "index": i}`` (the ranking's
    ``proposed_slices``, on the image's own voxel axes).

    Raises:
        ValueError: an axis outside 0..2 or an index outside the shape.
    """
    mask = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for item in slices:
        axis, index = int(item["axis"]), int(item["index"])
        if axis not in (0, 1, 2) or not 0 <= index < mask.shape[axis]:
            raise ValueError(f"slice {dict(item)} lies outside a volume of shape {mask.shape}")
        where = [slice(None)] * 3
        where[axis] = index
        mask[tuple(where)] = True
    return mask
