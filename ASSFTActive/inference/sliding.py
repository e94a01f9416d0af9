"""Sliding-window inference whose blended output streams out in finished slabs instead of filling a volume.

MONAI's :func:`~monai.inferers.sliding_window_inference` blends every window into one output tensor the size of the
whole volume (``[C, X, Y, Z]``; its ``buffer_steps`` option buffers windows on the device but still writes into that
full output). For a CT of 512×512×300 voxels and a 100-class model this is tens of gigabytes, which is why MONAI has
nothing that fits here. This module keeps MONAI's window positions (:func:`~monai.data.utils.dense_patch_slices`
with its scan interval), its importance map (:func:`~monai.data.utils.compute_importance_map`), its padding of
volumes smaller than the window and its window order, so the blended values are MONAI's to float tolerance, but it
keeps only a rolling slab of ``roi[0]`` rows along the first axis. Windows are ordered by their start on that axis
(MONAI's order); once every window starting at ``s`` has been added, the rows before the next start can receive no
more windows, so they are divided by their weight and handed to ``on_rows`` while still on the compute device.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

#: ``on_rows(blended, first_row)``: ``blended`` is ``[C, n, Y, Z]`` (finished rows ``first_row .. first_row + n - 1``
#: of the unpadded volume, on the compute device), called in increasing row order, each row exactly once.
RowsCallback = Callable[[torch.Tensor, int], None]


def stream_sliding_window(
    image: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    on_rows: RowsCallback,
    *,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    device: torch.device = torch.device("cpu"),
    cval: float = 0.0,
) -> None:
    """Run ``predictor`` over windows of ``image`` and stream the blended output to ``on_rows``.

    Args:
        image: the network input ``[1, X, Y, Z]`` (one channel, any device; windows are moved to ``device``).
        roi_size: the window ``[3]``.
        predictor: maps a batch of windows ``[B, 1, *roi]`` to outputs ``[B, C, *roi]`` (logits, float32).
        on_rows: receives the finished rows (see :data:`RowsCallback`).
        overlap: fraction of overlap of neighbouring windows (MONAI's ``overlap``), in ``[0, 1)``.
        mode: ``gaussian`` or ``constant`` blending (MONAI's ``mode``, sigma scale 0.125).
        sw_batch_size: windows per forward pass.
        device: where the windows run and where the rolling slab lives.
        cval: value of the voxels added around a volume smaller than the window.
    """
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be [1, X, Y, Z], got shape {tuple(image.shape)}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    roi = tuple(int(r) for r in roi_size)
    original = tuple(int(s) for s in image.shape[1:])
    pad_before = [max(r - s, 0) // 2 for r, s in zip(roi, original)]
    pad_after = [max(r - s, 0) - b for r, s, b in zip(roi, original, pad_before)]
    if any(pad_before) or any(pad_after):
        pads: List[int] = []
        for axis in (2, 1, 0):  # F.pad lists the last axis first
            pads += [pad_before[axis], pad_after[axis]]
        image = F.pad(image, pads, mode="constant", value=cval)
    size = tuple(int(s) for s in image.shape[1:])
    interval = _get_scan_interval(size, roi, 3, (overlap,) * 3)
    windows = [tuple((int(s.start), int(s.stop)) for s in w) for w in dense_patch_slices(size, roi, interval)]
    weight = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device=device, dtype=torch.float32)

    groups: Dict[int, List[Tuple[Tuple[int, int], ...]]] = {}
    for window in windows:  # MONAI's order: the first axis varies slowest, so groups keep the window order
        groups.setdefault(window[0][0], []).append(window)
    starts = sorted(groups)
    crop_y = slice(pad_before[1], pad_before[1] + original[1])
    crop_z = slice(pad_before[2], pad_before[2] + original[2])
    state = _Slab(size, roi[0], device)

    def emit(stop: int) -> None:
        """Hand rows ``state.base .. stop - 1`` (padded coordinates) to ``on_rows`` and drop them from the slab."""
        first = max(state.base, pad_before[0])
        last = min(stop, pad_before[0] + original[0])
        if last > first:
            rows = slice(first - state.base, last - state.base)
            blended = state.values[:, rows, crop_y, crop_z] / state.weights[:, rows, crop_y, crop_z]
            on_rows(blended, first - pad_before[0])
        state.advance(stop)

    for start in starts:
        emit(start)
        group = groups[start]
        for offset in range(0, len(group), sw_batch_size):
            batch = group[offset : offset + sw_batch_size]
            data = torch.cat([image[None, :, x0:x1, y0:y1, z0:z1] for (x0, x1), (y0, y1), (z0, z1) in batch])
            output = predictor(data.to(device))
            for window, out in zip(batch, output):
                state.add(window, out.float() * weight, weight)
    emit(size[0])


class _Slab:
    """The rolling ``[C, roi0, Y, Z]`` sums of weighted outputs and weights, starting at padded row ``base``."""

    def __init__(self, size: Tuple[int, int, int], depth: int, device: torch.device):
        self.size, self.depth, self.device = size, depth, device
        self.base = 0
        self.values = None  # created at the first window, when the class count is known
        self.weights = torch.zeros((1, depth) + size[1:], dtype=torch.float32, device=device)

    def add(self, window: Tuple[Tuple[int, int], ...], weighted: torch.Tensor, weight: torch.Tensor) -> None:
        if self.values is None:
            self.values = torch.zeros(
                (weighted.shape[0], self.depth) + self.size[1:], dtype=torch.float32, device=self.device
            )
        (x0, x1), (y0, y1), (z0, z1) = window
        rows = slice(x0 - self.base, x1 - self.base)
        self.values[:, rows, y0:y1, z0:z1] += weighted
        self.weights[:, rows, y0:y1, z0:z1] += weight

    def advance(self, stop: int) -> None:
        """Drop the rows before ``stop``: the remaining ones move to the front, the freed ones are zeroed."""
        shift = stop - self.base
        if shift <= 0:
            return
        for tensor in (self.values, self.weights):
            if tensor is None:
                continue
            keep = self.depth - shift
            if keep > 0:
                tensor[:, :keep] = tensor[:, shift:].clone()
                tensor[:, keep:] = 0
            else:
                tensor.zero_()
        self.base = stop
