"""Proposals smaller than a volume: slices or regions, scored where the model is unsure and spread over the pool.

The unit of annotation may be a whole volume (the default), one slice, or one box ("region") of a stated size. The
steps follow the rest of the query package: a voxel map (the normalised entropy on the image's own grid, the
dilated predicted foreground ``M`` of ASD) -> one score per unit -> a spread-out selection.

* **Per-unit score** (:func:`slice_scores`, :func:`region_scores`): ASD restricted to the unit, i.e. the mean
  normalised entropy over the unit's voxels of ``M`` (method-spec §1.5, foreground entropy). A unit with fewer
  foreground voxels than :attr:`UnitConfig.min_foreground_share` (0.2) of the volume's largest unit gets 0 (one stray
  foreground voxel of high entropy says little about where to paint).
* **Volume prior** (:func:`volume_priors`): the existing per-volume ranking (DKD, ASD, or whichever strategy) as a
  rank-based prior ``p = (n - rank) / (n - 1)`` in ``[0, 1]`` (1 for the first volume); a unit's score is
  ``asd_unit · (1 + prior_weight · p)``, so the volume ranking orders units of equal uncertainty.
* **Spread** (:func:`select_units`): greedy by descending score, at most ``ceil(budget / n_volumes) + 1`` units per
  volume (:attr:`UnitConfig.per_volume_extra`), and slices of one volume at least :attr:`UnitConfig.min_gap`
  apart; if the caps leave budget unspent, a second pass lifts the per-volume cap (never the gap).

Slices and regions index the **image's own voxel grid** (the input file's axes, not model space): the entropy and
region maps are brought back onto the input grid before scoring (:class:`~ASSFTActive.inference.Prediction`), and
the default slice axis is the input's coarsest-spacing axis (the acquisition axis an annotator steps through).

References:
    Lüth, Traub et al., "nnActive", TMLR 2025 (arXiv 2511.19183): uncertainty aggregated per 3D patch, top-n
    non-overlapping patches. UGTST / STDR (query-research §1, §3): slice-level queries at 2.5-20 % of the slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "ProposedUnit",
    "Unit",
    "UnitConfig",
    "region_scores",
    "select_units",
    "slice_axis",
    "slice_scores",
    "volume_priors",
    "volume_units",
]


class Unit(str, Enum):
    """What one proposal is: a whole volume, a slice, or a box of ``UnitConfig.region_size`` voxels."""

    VOLUME = "volume"
    SLICE = "slice"
    REGION = "region"


@dataclass(frozen=True)
class UnitConfig:
    """Settings of slice / region proposals.

    Attributes:
        unit: ``volume`` (the classic ranking; nothing here applies), ``slice`` or ``region``.
        axis: slice axis of the input file's voxel grid (0, 1, 2); ``None``: the coarsest-spacing axis (the last one
            on a tie).
        region_size: a region's size in voxels of the input grid ``(I, J, K)``; the volume is tiled by such boxes
            (clipped at the volume's edge).
        min_gap: slices proposed in one volume are at least this many slices apart (1: any two distinct slices).
        per_volume_extra: at most ``ceil(budget / n_volumes) + per_volume_extra`` units per volume.
        prior_weight: weight of the volume ranking in a unit's score (0: the unit's uncertainty alone).
        min_foreground_share: a unit with fewer foreground voxels than this share of the volume's largest unit
            scores 0. A mean over a few voxels is high wherever a structure ends or a stray blob is predicted: on the
            shipped sample pool with 0.05, a slice of hippocampus_023 holding a 15-voxel blob apart from the
            structure (largest slice: 296) ranked third; 0.2 keeps it out.
    """

    unit: Unit = Unit.VOLUME
    axis: Optional[int] = None
    region_size: Tuple[int, int, int] = (32, 32, 32)
    min_gap: int = 3
    per_volume_extra: int = 1
    prior_weight: float = 1.0
    min_foreground_share: float = 0.2

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "unit", Unit(self.unit))
        except ValueError:
            raise ValueError(f"unit must be one of {[u.value for u in Unit]}, got {self.unit!r}") from None
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1, 2 or None, got {self.axis!r}")
        size = tuple(int(s) for s in self.region_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"region_size must be three whole numbers >= 1, got {self.region_size!r}")
        object.__setattr__(self, "region_size", size)
        if int(self.min_gap) < 1 or int(self.per_volume_extra) < 0:
            raise ValueError(
                f"min_gap must be >= 1 and per_volume_extra >= 0, got {self.min_gap}, {self.per_volume_extra}"
            )
        if not self.prior_weight >= 0 or not 0 <= self.min_foreground_share <= 1:
            raise ValueError("prior_weight must be >= 0 and min_foreground_share in [0, 1]")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "unit": self.unit.value,
            "axis": self.axis,
            "region_size": list(self.region_size),
            "min_gap": self.min_gap,
            "per_volume_extra": self.per_volume_extra,
            "prior_weight": self.prior_weight,
            "min_foreground_share": self.min_foreground_share,
        }


@dataclass(frozen=True)
class ProposedUnit:
    """One slice or region of one volume, with its scores.

    Attributes:
        case_id: the volume.
        unit: ``slice`` or ``region``.
        axis, index: the slice (``axis`` of the input grid, ``index`` along it); ``None`` for a region.
        start, size: the region's first voxel ``(i, j, k)`` and size in voxels; ``None`` for a slice.
        asd: the unit's foreground entropy (0 below the foreground floor).
        score: ``asd · (1 + prior_weight · prior)`` (:func:`select_units`); the unit's ``asd`` until then.
    """

    case_id: str
    unit: Unit
    asd: float
    score: float
    axis: Optional[int] = None
    index: Optional[int] = None
    start: Optional[Tuple[int, int, int]] = None
    size: Optional[Tuple[int, int, int]] = None

    def to_record(self) -> Dict[str, Any]:
        """The ranking file's form: ``{"axis", "index", "score"}`` or ``{"start", "size", "score"}``."""
        if self.unit == Unit.SLICE:
            return {"axis": int(self.axis), "index": int(self.index), "score": float(self.score)}
        return {"start": [int(v) for v in self.start], "size": [int(v) for v in self.size], "score": float(self.score)}


#: Voxels per slab when summing slices (the temporaries of :func:`slice_scores` are one slab, 32 MB in float64).
_SLAB_VOXELS = 1 << 22


def slice_axis(spacing: Sequence[float], axis: Optional[int] = None) -> int:
    """``axis`` when given, else the axis of the largest voxel spacing (the last such axis on a tie)."""
    if axis is not None:
        return int(axis)
    spacing = np.asarray(spacing, dtype=np.float64)
    return int(len(spacing) - 1 - np.argmax(spacing[::-1] >= spacing.max() * (1 - 1e-6)))


def _floored(sums: np.ndarray, counts: np.ndarray, share: float) -> np.ndarray:
    """Mean ``sums / counts`` where ``counts`` reaches ``share`` of its maximum (and is > 0), else 0."""
    floor = max(1.0, share * float(counts.max(initial=0)))
    means = np.divide(sums, counts, out=np.zeros_like(sums, dtype=np.float64), where=counts > 0)
    return np.where(counts >= floor, means, 0.0)


def slice_scores(
    entropy: np.ndarray, region: np.ndarray, axis: int, min_foreground_share: float = 0.2
) -> Tuple[np.ndarray, np.ndarray]:
    """Foreground entropy of every slice along ``axis``.

    Args:
        entropy: normalised entropy ``[I, J, K]`` in ``[0, 1]`` on the input grid (or its ``uint8`` levels
            ``round(255 H)``, read as ``H = level / 255``).
        region: bool ``[I, J, K]``, ASD's dilated predicted foreground on the same grid.
        axis: 0, 1 or 2.

    Returns:
        ``(scores [n], foreground voxels [n])`` with ``n = shape[axis]``: the mean entropy over the slice's
        foreground voxels (0 below the floor of :class:`UnitConfig`), and how many there are.
    """
    entropy, region, scale = _check_maps(entropy, region)
    n = entropy.shape[axis]
    sums, counts = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    rows = max(1, _SLAB_VOXELS // max(1, entropy.shape[1] * entropy.shape[2]))
    for first in range(0, entropy.shape[0], rows):  # slabs of rows: temporaries of one slab, not of the volume
        inside = region[first : first + rows]
        values = np.where(inside, entropy[first : first + rows], 0).astype(np.float64) * scale
        if axis == 0:
            sums[first : first + rows] = values.sum(axis=(1, 2))
            counts[first : first + rows] = inside.sum(axis=(1, 2))
        else:
            rest = (0, 2) if axis == 1 else (0, 1)
            sums += values.sum(axis=rest)
            counts += inside.sum(axis=rest)
    return _floored(sums, counts, min_foreground_share), counts


def _tiles(length: int, size: int) -> List[int]:
    """Starts of boxes of ``size`` tiling ``[0, length)``; the last box ends at the edge (it may overlap the one
    before when ``size`` does not divide ``length``); one box from 0 when the volume is smaller."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def region_scores(
    entropy: np.ndarray, region: np.ndarray, size: Sequence[int], min_foreground_share: float = 0.2
) -> List[Tuple[Tuple[int, int, int], Tuple[int, int, int], float]]:
    """Foreground entropy of every box of a tiling of the volume by ``size``.

    Args:
        entropy, region: as in :func:`slice_scores`.
        size: box size in voxels ``(I, J, K)`` (clipped to the volume).

    Returns:
        ``[(start, size, score)]`` in tiling order; ``score`` as in :func:`slice_scores`.
    """
    entropy, region, scale = _check_maps(entropy, region)
    size = tuple(min(int(s), n) for s, n in zip(size, region.shape))
    boxes, sums, counts = [], [], []
    for i in _tiles(region.shape[0], size[0]):
        for j in _tiles(region.shape[1], size[1]):
            for k in _tiles(region.shape[2], size[2]):
                where = (slice(i, i + size[0]), slice(j, j + size[1]), slice(k, k + size[2]))
                mask = region[where]
                boxes.append((i, j, k))
                counts.append(float(mask.sum()))
                sums.append(float(np.where(mask, entropy[where], 0).sum(dtype=np.float64)) * scale)
    scores = _floored(np.array(sums), np.array(counts), min_foreground_share)
    return [(start, size, float(score)) for start, score in zip(boxes, scores)]


def _check_maps(entropy: np.ndarray, region: np.ndarray) -> Tuple[np.ndarray, np.ndarray, float]:
    """``(entropy, region, scale)``: the maps as arrays (not copied) and the factor from ``entropy``'s values to
    ``H`` (``1 / 255`` for uint8 levels, else 1)."""
    entropy, region = np.asarray(entropy), np.asarray(region, dtype=bool)
    if entropy.ndim != 3 or entropy.shape != region.shape:
        raise ValueError(f"entropy {entropy.shape} and region {region.shape} must be the same [I, J, K] grid")
    return entropy, region, (1.0 / 255.0 if entropy.dtype == np.uint8 else 1.0)


def volume_units(
    case_id: str, entropy: np.ndarray, region: np.ndarray, spacing: Sequence[float], config: UnitConfig
) -> Tuple[ProposedUnit, ...]:
    """Every candidate unit of one volume (``score = asd`` until :func:`select_units` adds the prior); none for
    ``unit = volume``."""
    if config.unit == Unit.SLICE:
        axis = slice_axis(spacing, config.axis)
        scores, _ = slice_scores(entropy, region, axis, config.min_foreground_share)
        return tuple(
            ProposedUnit(case_id, Unit.SLICE, float(s), float(s), axis=axis, index=i) for i, s in enumerate(scores)
        )
    if config.unit == Unit.REGION:
        return tuple(
            ProposedUnit(case_id, Unit.REGION, s, s, start=start, size=size)
            for start, size, s in region_scores(entropy, region, config.region_size, config.min_foreground_share)
        )
    return ()


def volume_priors(ranked_ids: Sequence[str]) -> Dict[str, float]:
    """``{case_id: (n - rank) / (n - 1)}`` for volumes in rank order (1 for the first, 0 for the last; 1 alone)."""
    n = len(ranked_ids)
    return {case: 1.0 if n == 1 else (n - 1 - r) / (n - 1) for r, case in enumerate(ranked_ids)}


@dataclass
class _Taken:
    count: Dict[str, int] = field(default_factory=dict)
    slices: Dict[Tuple[str, int], List[int]] = field(default_factory=dict)


def _too_close(unit: ProposedUnit, taken: _Taken, min_gap: int) -> bool:
    if unit.unit != Unit.SLICE:
        return False
    return any(abs(unit.index - other) < min_gap for other in taken.slices.get((unit.case_id, unit.axis), ()))


def select_units(
    candidates: Sequence[ProposedUnit], budget: int, priors: Mapping[str, float], config: UnitConfig
) -> List[ProposedUnit]:
    """The ``budget`` units to annotate, best first, spread over the volumes.

    Args:
        candidates: every unit of every eligible volume (:func:`volume_units`); volumes not in ``priors`` are
            skipped (labelled, or held back as out of distribution).
        budget: how many units.
        priors: :func:`volume_priors` of the eligible volumes.
        config: the diversity rule (``min_gap``, ``per_volume_extra``) and ``prior_weight``.

    Returns:
        at most ``budget`` units with ``score = asd · (1 + prior_weight · prior)``, in pick order; fewer when the gap
        rule leaves no more.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    scored = [
        ProposedUnit(
            u.case_id,
            u.unit,
            u.asd,
            u.asd * (1.0 + config.prior_weight * priors[u.case_id]),
            u.axis,
            u.index,
            u.start,
            u.size,
        )
        for u in candidates
        if u.case_id in priors
    ]
    order = {case: i for i, case in enumerate(sorted(priors, key=lambda c: -priors[c]))}
    scored.sort(key=lambda u: (-u.score, order[u.case_id], u.index or 0, u.start or (0, 0, 0)))
    n_volumes = len({u.case_id for u in scored})
    cap = math.ceil(budget / max(1, n_volumes)) + config.per_volume_extra
    taken, chosen, picked = _Taken(), [], set()
    for limit in (cap, None):  # a second pass lifts the per-volume cap, never the gap
        for unit in scored:
            if len(chosen) == budget:
                return chosen
            if id(unit) in picked or _too_close(unit, taken, config.min_gap):
                continue
            if limit is not None and taken.count.get(unit.case_id, 0) >= limit:
                continue
            chosen.append(unit)
            picked.add(id(unit))
            taken.count[unit.case_id] = taken.count.get(unit.case_id, 0) + 1
            if unit.unit == Unit.SLICE:
                taken.slices.setdefault((unit.case_id, unit.axis), []).append(unit.index)
    return chosen
