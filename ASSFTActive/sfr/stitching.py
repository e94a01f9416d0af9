"""Stitching: a volume's slices tiled into one square 2D canvas, and the exact inverse (SFR stage 1).

A volume ``[D, H, W]`` (D slices of H x W) is laid out row-major on an ``n_row x n_col`` grid of cells inside a
``canvas x canvas`` image, so that a 2D foundation model (SAM) sees the whole volume, with the context of adjacent
slices, in one image. The steps, in the order :func:`stitch` applies them:

1. the slice stack is padded in depth to ``n_row * n_col`` cells, *symmetrically*: ``(n_row*n_col - D) // 2`` blank
   slices before the first slice and the rest (the odd one) after the last;
2. each slice is resized to the placed shape when the layout needs it (only when the canvas is too small for the
   native slices, e.g. a small canvas for a tiny SAM on a CPU), then padded symmetrically to the cell;
3. the cells are tiled row-major, and the grid is padded symmetrically to the canvas.

Images are padded with ``fill`` (0, as SFR's code does); labels with :data:`IGNORE_INDEX` (255), which the
fine-tuning loss ignores (``CrossEntropyLoss(ignore_index=255)``, a masked Dice). :func:`unstitch` is the exact
inverse of :func:`stitch` (index arithmetic only) when the layout does not resize; with resizing the cells are
resized back to ``[H, W]`` (bilinear for images and probabilities, nearest for labels).

Pure torch (numpy arrays in give numpy arrays out), no MONAI: stitching is specific to SFR and MONAI has no
equivalent transform.

References:
    Li, Qi, Yu, Huo, Shi, Gao, "Stitching, Fine-tuning, Re-training: A SAM-enabled Framework for Semi-supervised 3D
    Medical Image Segmentation", arXiv:2403.11229, IEEE TMI 44(10), 2025; ``shared/research/method-spec.md`` §2.1
    (with the correction of issue 13: blank cells are padded symmetrically in depth).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

__all__ = [
    "IGNORE_INDEX",
    "StitchLayout",
    "StitchingError",
    "plan_layout",
    "stitch",
    "stitch_labels",
    "unstitch",
    "unstitch_labels",
]

IGNORE_INDEX = 255
"""Label of padding pixels on a stitched label canvas (SFR's code); the fine-tuning loss ignores it."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class StitchingError(InputError, ValueError):
    """The slices of a volume do not fit on the canvas (or a stitched input has the wrong shape)."""


@dataclass(frozen=True)
class StitchLayout:
    """Where each slice of a ``[D, H, W]`` volume lies on a ``canvas x canvas`` image.

    Attributes:
        depth: ``D``, the number of slices of the volume.
        slice_shape: ``(H, W)`` of one slice of the volume.
        n_row, n_col: the grid of cells; ``n_row * n_col >= depth``.
        canvas: side of the square canvas in pixels (1024 for SAM ViT-B).
        placed_shape: ``(h, w)`` of a slice as placed in its cell; equal to ``slice_shape`` unless resized.
        pad_before: blank cells before the first slice, ``(n_row * n_col - depth) // 2``.
    """

    depth: int
    slice_shape: Tuple[int, int]
    n_row: int
    n_col: int
    canvas: int
    placed_shape: Tuple[int, int]
    pad_before: int

    def __post_init__(self) -> None:
        h, w = self.placed_shape
        if self.depth < 1 or min(self.slice_shape) < 1 or min(self.placed_shape) < 1:
            raise StitchingError(f"a stitch layout needs a non-empty volume and cells, got {self}")
        if self.n_cells < self.depth:
            raise StitchingError(f"{self.depth} slices do not fit on a {self.n_row} x {self.n_col} grid")
        if h > self.cell_shape[0] or w > self.cell_shape[1]:
            raise StitchingError(f"placed slices {self.placed_shape} are larger than the cells {self.cell_shape}")
        if self.pad_before != (self.n_cells - self.depth) // 2:
            raise StitchingError(f"pad_before must be (n_cells - depth) // 2 = {(self.n_cells - self.depth) // 2}")

    @property
    def n_cells(self) -> int:
        return self.n_row * self.n_col

    @property
    def pad_after(self) -> int:
        """Blank cells after the last slice (the odd one of an odd number of blank cells is here)."""
        return self.n_cells - self.depth - self.pad_before

    @property
    def cell_shape(self) -> Tuple[int, int]:
        """``(canvas // n_row, canvas // n_col)``: the pixels each cell owns."""
        return self.canvas // self.n_row, self.canvas // self.n_col

    @property
    def grid_offset(self) -> Tuple[int, int]:
        """Top-left corner of the grid on the canvas (the canvas margin left by integer cells, split evenly)."""
        ch, cw = self.cell_shape
        return (self.canvas - self.n_row * ch) // 2, (self.canvas - self.n_col * cw) // 2

    @property
    def slice_offset(self) -> Tuple[int, int]:
        """Top-left corner of the placed slice inside its cell (symmetric padding, the odd pixel after)."""
        ch, cw = self.cell_shape
        return (ch - self.placed_shape[0]) // 2, (cw - self.placed_shape[1]) // 2

    @property
    def resized(self) -> bool:
        return tuple(self.placed_shape) != tuple(self.slice_shape)

    def cell_of_slice(self, k: int) -> Tuple[int, int]:
        """``(row, col)`` of slice ``k`` (0-based) of the volume."""
        if not 0 <= k < self.depth:
            raise IndexError(f"slice {k} outside 0..{self.depth - 1}")
        return divmod(k + self.pad_before, self.n_col)

    def slice_box(self, k: int) -> Tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` canvas pixels of slice ``k`` as placed (bottom/right exclusive)."""
        row, col = self.cell_of_slice(k)
        ch, cw = self.cell_shape
        gy, gx = self.grid_offset
        sy, sx = self.slice_offset
        top, left = gy + row * ch + sy, gx + col * cw + sx
        return top, left, top + self.placed_shape[0], left + self.placed_shape[1]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StitchLayout:
        values = dict(data)
        values["slice_shape"] = tuple(values["slice_shape"])
        values["placed_shape"] = tuple(values["placed_shape"])
        return cls(**values)


def plan_layout(
    depth: int, slice_shape: Tuple[int, int], canvas: int = 1024, resize: bool = True, min_cell: int = 4
) -> StitchLayout:
    """The layout SFR uses for a ``[depth, H, W]`` volume on a ``canvas x canvas`` image.

    Native slices first: ``n_row = canvas // H``, ``n_col = canvas // W`` (SFR's grid; LA ``112 x 112 x 80`` on
    1024 gives 9 x 9 cells). When that grid holds fewer than ``depth`` cells and ``resize`` is true, the slices are
    shrunk: of the grids with at least ``depth`` cells, the one that leaves the slices largest (then the fewest
    cells, then the fewest rows) is chosen, and each slice is resized, aspect ratio kept, to fit its cell.

    Args:
        depth: number of slices ``D``.
        slice_shape: ``(H, W)``.
        canvas: side of the square canvas (1024 for SAM ViT-B; smaller for a CPU-sized SAM).
        resize: allow shrinking the slices when they do not fit natively.
        min_cell: the smallest allowed side of a placed slice, in pixels, when resizing.

    Raises:
        StitchingError (a ``ValueError``): when the slices do not fit, saying how many would and what to change.
    """
    h, w = int(slice_shape[0]), int(slice_shape[1])
    depth, canvas = int(depth), int(canvas)
    if depth < 1 or h < 1 or w < 1 or canvas < 1:
        raise StitchingError(f"cannot stitch a volume of {depth} slices of {h} x {w} on a {canvas}-pixel canvas")
    n_row, n_col = canvas // h, canvas // w
    if n_row * n_col >= depth:
        return StitchLayout(depth, (h, w), n_row, n_col, canvas, (h, w), (n_row * n_col - depth) // 2)
    native = n_row * n_col
    if not resize:
        raise StitchingError(
            f"{depth} slices of {h} x {w} do not fit on a {canvas} x {canvas} canvas: its {n_row} x {n_col} grid "
            f"holds {native} slices. Crop the volume to at most {native} slices, use a larger canvas, or allow "
            "resizing the slices"
        )
    best: Optional[Tuple[float, int, int, Tuple[int, int]]] = None
    for rows in range(1, depth + 1):
        cols = math.ceil(depth / rows)
        ch, cw = canvas // rows, canvas // cols
        scale = min(ch / h, cw / w)
        placed = (min(ch, int(math.floor(h * scale + 1e-9))), min(cw, int(math.floor(w * scale + 1e-9))))
        if min(placed) < min_cell:
            continue
        key = (-scale, rows * cols, rows, placed)  # largest slices, then fewest cells, then fewest rows
        if best is None or key < best:
            best = key
    if best is None:
        raise StitchingError(
            f"{depth} slices of {h} x {w} do not fit on a {canvas} x {canvas} canvas even when shrunk to cells of "
            f"{min_cell} pixels. Crop the volume in depth or use a larger canvas"
        )
    _, _, rows, placed = best
    cols = math.ceil(depth / rows)
    return StitchLayout(depth, (h, w), rows, cols, canvas, placed, (rows * cols - depth) // 2)


def _as_tensor(array: Union[np.ndarray, torch.Tensor]) -> Tuple[torch.Tensor, bool]:
    if isinstance(array, torch.Tensor):
        return array, False
    return torch.from_numpy(np.ascontiguousarray(array)), True


def _back(tensor: torch.Tensor, was_numpy: bool) -> Any:
    return tensor.numpy() if was_numpy else tensor


def _resize(x: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize the last two axes of ``x`` (any leading axes) with ``F.interpolate``."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, x.shape[-2], x.shape[-1])
    if mode == "nearest":
        out = F.interpolate(flat.float(), size=size, mode="nearest-exact").to(x.dtype)
    else:
        out = F.interpolate(
            flat.float(),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=size[0] < x.shape[-2] or size[1] < x.shape[-1],
        ).to(x.dtype)
    return out.reshape(*lead, size[0], size[1])


def _stitch(x: torch.Tensor, layout: StitchLayout, fill: float, mode: str) -> torch.Tensor:
    if x.dim() < 3 or tuple(x.shape[-3:]) != (layout.depth, *layout.slice_shape):
        raise StitchingError(
            f"expected a volume [..., {layout.depth}, {layout.slice_shape[0]}, "
            f"{layout.slice_shape[1]}] for this layout, got shape {tuple(x.shape)}"
        )
    lead = x.shape[:-3]
    if layout.resized:
        x = _resize(x, layout.placed_shape, mode)
    ph, pw = layout.placed_shape
    ch, cw = layout.cell_shape
    sy, sx = layout.slice_offset
    gy, gx = layout.grid_offset
    # depth, then cell padding: F.pad pads the last axes first (W, H, D)
    x = F.pad(x, (sx, cw - pw - sx, sy, ch - ph - sy, layout.pad_before, layout.pad_after), value=fill)
    x = x.reshape(*lead, layout.n_row, layout.n_col, ch, cw)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 1, n + 3).reshape(*lead, layout.n_row * ch, layout.n_col * cw)
    return F.pad(
        x, (gx, layout.canvas - layout.n_col * cw - gx, gy, layout.canvas - layout.n_row * ch - gy), value=fill
    )


def _unstitch(canvas: torch.Tensor, layout: StitchLayout, mode: str) -> torch.Tensor:
    if canvas.dim() < 2 or tuple(canvas.shape[-2:]) != (layout.canvas, layout.canvas):
        raise StitchingError(
            f"expected a canvas [..., {layout.canvas}, {layout.canvas}] for this layout, got shape "
            f"{tuple(canvas.shape)}"
        )
    lead = canvas.shape[:-2]
    n = len(lead)
    ch, cw = layout.cell_shape
    gy, gx = layout.grid_offset
    sy, sx = layout.slice_offset
    ph, pw = layout.placed_shape
    grid = canvas[..., gy : gy + layout.n_row * ch, gx : gx + layout.n_col * cw]
    cells = grid.reshape(*lead, layout.n_row, ch, layout.n_col, cw).permute(*range(n), n, n + 2, n + 1, n + 3)
    cells = cells.reshape(*lead, layout.n_cells, ch, cw)
    x = cells[..., layout.pad_before : layout.pad_before + layout.depth, sy : sy + ph, sx : sx + pw]
    if layout.resized:
        x = _resize(x, layout.slice_shape, mode)
    return x.contiguous()


def stitch(volume: ArrayT, layout: StitchLayout, fill: float = 0.0) -> ArrayT:
    """Tile an image volume ``[..., D, H, W]`` into a canvas ``[..., canvas, canvas]``.

    Leading axes (batch, channels) are kept. Padding (blank cells, cell margins, canvas margin) is ``fill``;
    resizing, when the layout needs it, is bilinear with anti-aliasing.
    """
    x, was_numpy = _as_tensor(volume)
    return _back(_stitch(x, layout, fill, "bilinear"), was_numpy)


def stitch_labels(labels: ArrayT, layout: StitchLayout, ignore_index: int = IGNORE_INDEX) -> ArrayT:
    """Tile a label volume ``[..., D, H, W]`` (integers) into a canvas; padding is ``ignore_index``, resizing
    nearest-neighbour. The dtype is kept (it must hold ``ignore_index``)."""
    x, was_numpy = _as_tensor(labels)
    if x.is_floating_point() or x.dtype == torch.bool:
        raise StitchingError(f"labels must be an integer array, got {x.dtype}")
    if x.dtype == torch.uint8 and not 0 <= ignore_index <= 255:
        raise StitchingError(f"ignore_index {ignore_index} does not fit the labels' dtype uint8")
    return _back(_stitch(x, layout, ignore_index, "nearest"), was_numpy)


def unstitch(canvas: ArrayT, layout: StitchLayout) -> ArrayT:
    """The inverse of :func:`stitch`: ``[..., canvas, canvas]`` back to ``[..., D, H, W]``.

    Exact (pure indexing) when ``layout.resized`` is false; otherwise each cell is resized back bilinearly, which
    suits images, logits and probabilities (use :func:`unstitch_labels` for hard labels).
    """
    x, was_numpy = _as_tensor(canvas)
    return _back(_unstitch(x, layout, "bilinear"), was_numpy)


def unstitch_labels(canvas: ArrayT, layout: StitchLayout) -> ArrayT:
    """The inverse of :func:`stitch_labels` (nearest-neighbour when the layout resizes)."""
    x, was_numpy = _as_tensor(canvas)
    return _back(_unstitch(x, layout, "nearest"), was_numpy)
