"""Reduce class probabilities to the few maps and sums ASSFT uses, as the sliding window streams out rows.

Everything downstream of one pass needs far less than the softmax ``[C, X, Y, Z]``: the label (argmax), the
maximum probability (pseudo-label confidence), the foreground probability ``1 - p_0``, the normalised entropy
(overlays) and the dilated predicted foreground (the high-entropy regions), all one channel, plus the
:class:`~ASSFTActive.query.regions.RegionSums` of the scores. :class:`MapReducer` computes them from finished rows of
blended logits on the compute device (:mod:`.sliding`), so the full softmax never exists for a whole volume
and the cost per voxel does not grow with the class count beyond the softmax itself.

Dilations are city-block balls of radius r (scipy's 6-connected cross applied r times, the reference of
``query.regions``). With few classes each present class gets its own dilated mask. With many, the per-class sums use
that a voxel belongs to ``dilate(argmax == c)`` exactly when class c is the label of a voxel within the ball around
it: they gather the labels at the ball's offsets, keep each class once per voxel and add into per-class sums
(``index_add_``), so no per-class mask is built. MONAI's morphology works on one mask at a time and has no such
gathering, hence this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..query.config import FgMask
from ..query.regions import RegionSpec, RegionSums

#: Up to this many foreground classes, each present class gets its own dilated mask (cost grows with C); beyond,
#: the labels of the ball's offsets are gathered and sorted per voxel (cost independent of C).
PER_CLASS_LIMIT = 8

#: Voxels per chunk of the region gathering (each holds one gathered value per ball offset: 25 for r = 2).
CHUNK_VOXELS = 1 << 18


@dataclass(frozen=True, eq=False)
class VoxelMaps:
    """The per-voxel maps of one pass in model space (the network's grid), and their region sums.

    Attributes:
        label: ``[X, Y, Z]`` argmax class, ``uint8`` (``int16`` beyond 256 classes).
        max_prob: ``[X, Y, Z]`` float32 ``max_c p_c``.
        foreground_prob: ``[X, Y, Z]`` float32 ``1 - p_0``.
        entropy: ``[X, Y, Z]`` float32 normalised entropy in ``[0, 1]``.
        region: ``[X, Y, Z]`` bool, the dilated predicted foreground of ``sums.spec`` (ASD's ``M``).
        sums: the entropy sums of the scores.
    """

    label: np.ndarray
    max_prob: np.ndarray
    foreground_prob: np.ndarray
    entropy: np.ndarray
    region: np.ndarray
    sums: RegionSums

    @property
    def num_classes(self) -> int:
        return self.sums.num_classes


def ball_offsets(radius: int) -> List[Tuple[int, int, int]]:
    """Offsets of the city-block ball of ``radius`` (the cross applied ``radius`` times), centre first."""
    r = int(radius)
    offsets = [
        (x, y, z)
        for x in range(-r, r + 1)
        for y in range(-r, r + 1)
        for z in range(-r, r + 1)
        if abs(x) + abs(y) + abs(z) <= r
    ]
    return sorted(offsets, key=lambda o: (abs(o[0]) + abs(o[1]) + abs(o[2]), o))


class MapReducer:
    """Streams rows of probabilities (or logits) in, :class:`VoxelMaps` out.

    Rows arrive in order along the first axis (:meth:`add_logits` / :meth:`add_probs`). The one-channel maps of a
    row are written at once; its region sums wait until the labels ``spec.dilation`` rows further are known, so only
    that many rows of probabilities are held back.

    Args:
        shape: the volume ``[X, Y, Z]`` (model space).
        num_classes: C, at least 2.
        spec: the regions of the sums.
        device: where the reductions run (the sliding window's device).
    """

    def __init__(
        self,
        shape: Tuple[int, int, int],
        num_classes: int,
        spec: RegionSpec,
        device: torch.device = torch.device("cpu"),
    ):
        if num_classes < 2:
            raise ValueError(f"a reduction needs C >= 2 classes, got {num_classes}")
        self.shape = tuple(int(s) for s in shape)
        self.classes = int(num_classes)
        self.spec = spec
        self.device = device
        self.radius = int(spec.dilation)
        self.offsets = ball_offsets(self.radius)
        label_dtype = torch.uint8 if num_classes <= 256 else torch.int16
        self.label = torch.zeros(self.shape, dtype=label_dtype)
        self.max_prob = torch.zeros(self.shape, dtype=torch.float32)
        self.foreground_prob = torch.zeros(self.shape, dtype=torch.float32)
        self.entropy = torch.zeros(self.shape, dtype=torch.float32)
        self.region = torch.zeros(self.shape, dtype=torch.bool)
        self._rows_in = 0  # rows whose one-channel maps are written
        self._rows_reduced = 0  # rows whose region sums are added
        self._pending: Optional[torch.Tensor] = None  # [C, n, Y, Z] probabilities of rows not yet reduced
        self._power: Optional[torch.Tensor] = None  # [n, Y, Z] their power entropy (nats)
        zeros = torch.zeros(self.classes, dtype=torch.float64, device=device)
        self._class_voxels, self._class_entropy, self._class_power = zeros.clone(), zeros.clone(), zeros.clone()
        self._totals = torch.zeros(4, dtype=torch.float64, device=device)  # H sum, PE sum, |M|, H sum over M

    # ------------------------------------------------------------------------------------------- rows in

    def add_logits(self, logits: torch.Tensor, first_row: int) -> None:
        """Rows ``[C, n, Y, Z]`` of blended logits starting at ``first_row``."""
        self.add_probs(torch.softmax(logits.float(), dim=0), first_row)

    def add_probs(self, probs: torch.Tensor, first_row: int) -> None:
        """Rows ``[C, n, Y, Z]`` of probabilities starting at ``first_row`` (rows must come in order)."""
        if first_row != self._rows_in:
            raise ValueError(f"rows must arrive in order: expected row {self._rows_in}, got {first_row}")
        if probs.shape[0] != self.classes or tuple(probs.shape[2:]) != self.shape[1:]:
            raise ValueError(f"rows of shape {tuple(probs.shape)} do not fit C={self.classes}, volume {self.shape}")
        probs = probs.to(self.device, torch.float32)
        rows = slice(first_row, first_row + probs.shape[1])
        max_prob, label = probs.max(dim=0)
        neg = torch.where(probs > 0, -probs * torch.log(probs.clamp_min(1e-30)), torch.zeros((), device=self.device))
        power = neg.sum(dim=0).clamp_(0.0, math.log(self.classes))
        entropy = (power / math.log(self.classes)).clamp_(0.0, 1.0)
        self.label[rows] = label.to(self.label.dtype).cpu()
        self.max_prob[rows] = max_prob.cpu()
        self.foreground_prob[rows] = (1.0 - probs[0]).cpu()
        self.entropy[rows] = entropy.cpu()
        self._totals[0] += entropy.sum(dtype=torch.float64)
        self._totals[1] += power.sum(dtype=torch.float64)
        self._pending = probs if self._pending is None else torch.cat([self._pending, probs], dim=1)
        self._power = power if self._power is None else torch.cat([self._power, power], dim=0)
        self._rows_in = rows.stop
        ready = self.shape[0] if self._rows_in == self.shape[0] else self._rows_in - self.radius
        self._reduce_until(ready)

    # ------------------------------------------------------------------------------------------- result

    def result(self) -> VoxelMaps:
        """The maps and sums; every row must have arrived."""
        if self._rows_in != self.shape[0] or self._rows_reduced != self.shape[0]:
            raise RuntimeError(f"only {self._rows_in} of {self.shape[0]} rows arrived")
        totals = self._totals.cpu().numpy()
        sums = RegionSums(
            spec=self.spec,
            num_classes=self.classes,
            voxels=int(np.prod(self.shape)),
            entropy_sum=float(totals[0]),
            power_entropy_sum=float(totals[1]),
            foreground_voxels=int(round(totals[2])),
            foreground_entropy_sum=float(totals[3]),
            class_voxels=self._class_voxels.cpu().numpy(),
            class_entropy_sums=self._class_entropy.cpu().numpy(),
            class_power_entropy_sums=self._class_power.cpu().numpy(),
        )
        return VoxelMaps(
            label=self.label.numpy(),
            max_prob=self.max_prob.numpy(),
            foreground_prob=self.foreground_prob.numpy(),
            entropy=self.entropy.numpy(),
            region=self.region.numpy(),
            sums=sums,
        )

    # ------------------------------------------------------------------------------------------- region sums

    def _reduce_until(self, stop: int) -> None:
        start = self._rows_reduced
        if stop <= start:
            return
        _, y, z = self.shape
        step = max(1, CHUNK_VOXELS // (y * z))
        for a in range(start, stop, step):
            self._reduce_rows(a, min(stop, a + step))
        done = stop - start
        self._pending = self._pending[:, done:]
        self._power = self._power[done:]
        self._rows_reduced = stop

    def _neighbourhood(self, a: int, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Labels (``-1`` outside the volume) and union-foreground flags of rows ``a - r .. b + r - 1``, padded by
        ``r`` on every side: ``[n + 2r, Y + 2r, Z + 2r]`` each."""
        r = self.radius
        lo, hi = max(0, a - r), min(self.shape[0], b + r)
        labels = self.label[lo:hi].to(self.device).long()
        if self.spec.fg_mask == FgMask.PRED_PROB:
            foreground = self.foreground_prob[lo:hi].to(self.device) >= np.float32(self.spec.fg_prob_threshold)
        else:
            foreground = labels != 0
        pad = (r, r, r, r, lo - (a - r), (b + r) - hi)
        labels = torch.nn.functional.pad(labels, pad, value=-1)
        foreground = torch.nn.functional.pad(foreground, pad, value=False)
        return labels, foreground

    def _reduce_rows(self, a: int, b: int) -> None:
        r = self.radius
        n, (_, y, z) = b - a, self.shape
        offset = a - self._rows_reduced
        probs = self._pending[:, offset : offset + n]  # [C, n, Y, Z]
        power = self._power[offset : offset + n]  # [n, Y, Z]
        entropy = self.entropy[a:b].to(self.device)  # [n, Y, Z]
        labels, foreground = self._neighbourhood(a, b)
        crop = (slice(r, r + n), slice(r, r + y), slice(r, r + z))
        region = dilate_cross(foreground, r)[crop]
        self.region[a:b] = region.cpu()
        self._totals[2] += region.sum(dtype=torch.float64)
        self._totals[3] += (entropy * region).sum(dtype=torch.float64)
        if self.classes - 1 <= PER_CLASS_LIMIT:
            for c in torch.unique(labels).tolist():  # few classes: one dilated mask per class present
                if c <= 0:
                    continue
                mask = dilate_cross(labels == c, r)[crop]
                self._class_voxels[c] += mask.sum(dtype=torch.float64)
                self._class_entropy[c] += (entropy * mask).sum(dtype=torch.float64)
                self._class_power[c] += (power * probs[c] * mask).sum(dtype=torch.float64)
            return
        shifted = torch.stack(
            [labels[r + dx : r + dx + n, r + dy : r + dy + y, r + dz : r + dz + z] for dx, dy, dz in self.offsets]
        )  # [K, n, Y, Z]
        ordered = shifted.sort(dim=0).values
        first = torch.ones_like(ordered[:1], dtype=torch.bool)
        distinct = torch.cat([first, ordered[1:] != ordered[:-1]]) & (ordered > 0)  # each class once per voxel
        classes = ordered[distinct]
        if classes.numel() == 0:
            return
        gathered = probs.gather(0, ordered.clamp_min(0))  # [K, n, Y, Z]: p_c(v) of the class c at offset
        weighted = (power[None] * gathered)[distinct]
        entropies = entropy[None].expand_as(gathered)[distinct]
        self._class_voxels.index_add_(0, classes, torch.ones_like(weighted, dtype=torch.float64))
        self._class_entropy.index_add_(0, classes, entropies.double())
        self._class_power.index_add_(0, classes, weighted.double())


def dilate_cross(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of a 3D bool mask by the 6-connected cross applied ``radius`` times (scipy's
    ``binary_dilation(mask, generate_binary_structure(3, 1), iterations=radius)``); outside counts as background."""
    for _ in range(int(radius)):
        out = mask.clone()
        out[1:] |= mask[:-1]
        out[:-1] |= mask[1:]
        out[:, 1:] |= mask[:, :-1]
        out[:, :-1] |= mask[:, 1:]
        out[:, :, 1:] |= mask[:, :, :-1]
        out[:, :, :-1] |= mask[:, :, 1:]
        mask = out
    return mask


def reduce_probs(probs: np.ndarray, spec: RegionSpec, device: torch.device = torch.device("cpu")) -> VoxelMaps:
    """:class:`VoxelMaps` of a full probability volume ``[C, X, Y, Z]`` (all rows at once)."""
    array = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    reducer = MapReducer(tuple(array.shape[1:]), array.shape[0], spec, device)
    reducer.add_probs(array, 0)
    return reducer.result()
