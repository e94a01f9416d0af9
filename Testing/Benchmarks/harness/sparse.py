"""Effort as the budget (issue 27 item 4): slices and regions proposed by the product, oracle partial labels, and
the annotation effort an annotator would spend, counted the same way for every arm.

**Effort of one volume's annotation** (:func:`count_effort`, on the image's own grid; the annotation axis is the one
the product proposes slices along, ``UnitConfig.axis`` or the coarsest-spacing axis):

- ``slices_touched``: slices along the annotation axis holding at least one annotated voxel (a whole volume: all
  its slices; a region: every slice it crosses);
- ``slice_equivalents``: annotated voxels / voxels of one slice along that axis (a whole slice counts 1, a whole
  volume its number of slices, a 32 x 32 box on a 256 x 216 slice 0.019 per slice it crosses);
- ``voxels_annotated``: the annotated voxels;
- ``voxels_painted``: annotated foreground voxels (the true class is not 0): what is painted **from scratch**
  (background is what an empty label already says);
- ``voxels_changed``: annotated voxels whose true class differs from the source model's prediction: what is changed
  **when correcting the pre-filled prediction** (the pre-fill the product offers; the first round's model is the
  source model).

**The budget of a sparse arm** (:func:`effort_budget`): an effort equal to B whole volumes, in the arm's measure
(``slices``: slice-equivalents; ``voxels_changed``), is ``B x`` the pool's mean effort of annotating one whole
volume in that measure (``slices``: the mean number of slices along the annotation axis; ``voxels_changed``: the
mean number of voxels where the source model's prediction is wrong). The proposal is the largest product proposal
(``query.units.select_units`` with n = 1, 2, ... units) whose effort stays within that budget
(:func:`select_within_budget`; the effort of overlapping boxes counted once); at least one unit. The effort
actually spent (within the budget, except for the one-unit minimum; below it when the spread rule leaves no more
units) is what the record and the report use.

**Oracle partial labels** (:func:`oracle_partial_label`): the true classes on the proposed units, ``255`` (the
product's ``NOT_ANNOTATED``) everywhere else, written as label files and given to Adapt Model as a user's partial
labels would be; a volume without a proposed unit is not labelled (it stays in the unlabelled pool).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .arms import MEASURES, Arm
from .tasks import Task

#: The record field that holds each measure's value.
MEASURE_FIELD = {"slices": "slice_equivalents", "voxels_changed": "voxels_changed", "voxels_painted": "voxels_painted"}


@dataclass(frozen=True)
class Effort:
    """Annotation effort summed over volumes (see the module docstring for each field)."""

    volumes: int = 0
    slices_touched: int = 0
    slice_equivalents: float = 0.0
    voxels_annotated: int = 0
    voxels_painted: int = 0
    voxels_changed: int = 0

    def __add__(self, other: Effort) -> Effort:
        return Effort(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def value(self, measure: str) -> float:
        """The effort in ``measure`` (:data:`~.arms.MEASURES`)."""
        if measure not in MEASURE_FIELD:
            raise ValueError(f"unknown effort measure {measure!r}; known: {MEASURES}")
        return float(getattr(self, MEASURE_FIELD[measure]))

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def count_effort(truth: np.ndarray, annotated: np.ndarray, prefill: np.ndarray, axis: int) -> Effort:
    """The effort of annotating ``annotated`` in one volume.

    Args:
        truth: true classes ``[I, J, K]``.
        annotated: bool ``[I, J, K]``, the voxels the annotator sets.
        prefill: the pre-filled prediction ``[I, J, K]`` (classes) an annotator would correct.
        axis: the annotation axis (0, 1, 2).

    Raises:
        ValueError: shapes differ or are not 3-D; an axis outside 0..2.
    """
    truth, annotated, prefill = np.asarray(truth), np.asarray(annotated, dtype=bool), np.asarray(prefill)
    if truth.ndim != 3 or truth.shape != annotated.shape or truth.shape != prefill.shape:
        raise ValueError(f"truth {truth.shape}, annotated {annotated.shape}, prefill {prefill.shape}: one [I, J, K]")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    others = tuple(a for a in range(3) if a != axis)
    slice_voxels = truth.size // truth.shape[axis]
    count = int(np.count_nonzero(annotated))
    return Effort(
        volumes=int(count > 0),
        slices_touched=int(np.count_nonzero(annotated.any(axis=others))),
        slice_equivalents=count / slice_voxels,
        voxels_annotated=count,
        voxels_painted=int(np.count_nonzero(annotated & (truth > 0))),
        voxels_changed=int(np.count_nonzero(annotated & (truth != prefill))),
    )


def effort_budget(budget: float, per_volume: Sequence[float]) -> float:
    """The effort equal to ``budget`` whole volumes: ``budget x mean(per_volume)``, ``per_volume`` being the effort
    of annotating each pool volume whole (in one measure).

    Raises:
        ValueError: a negative budget or no volume.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if len(per_volume) == 0:
        raise ValueError("the effort of a whole volume needs at least one pool volume")
    return float(budget) * float(np.mean(per_volume))


def oracle_partial_label(truth: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """The label file's array an oracle annotator saves: ``truth`` on ``annotated``, 255 (not annotated)
    elsewhere (``uint8 [I, J, K]``, the product's :func:`~ASSFTActive.partial.encode_partial`)."""
    from ASSFTActive.partial import encode_partial

    return encode_partial(truth, annotated)


def unit_mask(shape: Sequence[int], units: Sequence[Any]) -> np.ndarray:
    """Bool ``shape`` mask of ``units`` (``ProposedUnit`` slices or regions of one volume).

    Raises:
        ValueError: a slice or box outside the volume.
    """
    from ASSFTActive.partial import annotated_slices_mask

    shape = tuple(int(s) for s in shape)
    slices = [{"axis": u.axis, "index": u.index} for u in units if u.index is not None]
    mask = annotated_slices_mask(shape, slices)
    for u in units:
        if u.index is not None:
            continue
        start, size = tuple(int(v) for v in u.start), tuple(int(v) for v in u.size)
        if any(a < 0 or a + s > n for a, s, n in zip(start, size, shape)):
            raise ValueError(f"box {start} + {size} lies outside a volume of shape {shape}")
        mask[tuple(slice(a, a + s) for a, s in zip(start, size))] = True
    return mask


def _unit_slices(u) -> Tuple[slice, ...]:
    """The index of one ``ProposedUnit`` into its volume ``[I, J, K]``."""
    if u.index is not None:
        where = [slice(None)] * 3
        where[int(u.axis)] = slice(int(u.index), int(u.index) + 1)
        return tuple(where)
    return tuple(slice(int(a), int(a) + int(s)) for a, s in zip(u.start, u.size))


@dataclass(frozen=True, eq=False)
class VolumeView:
    """What the effort benchmark needs of one pool volume, all on the image's grid ``[I, J, K]``.

    Attributes:
        case: case id.
        truth: true classes (the collection's label).
        prefill: the source model's hard prediction (the pre-fill an annotator corrects).
        entropy: normalised entropy as uint8 levels ``round(255 H)`` (``Prediction.entropy_levels``).
        region: bool, ASD's dilated predicted foreground (``Prediction.region``).
        spacing: voxel spacing (mm), which fixes the default annotation axis.
    """

    case: str
    truth: np.ndarray
    prefill: np.ndarray
    entropy: np.ndarray
    region: np.ndarray
    spacing: Tuple[float, float, float]

    def axis(self, config) -> int:
        from ASSFTActive.query.units import slice_axis

        return slice_axis(self.spacing, config.axis)


def unit_config(arm: Arm):
    """The arm's ``UnitConfig``: its unit and unit fields; a random arm's units are scored by chance alone (no
    volume prior)."""
    from ASSFTActive.query.units import UnitConfig

    data = dict(arm.unit_fields)
    if arm.strategy == "random":
        data["prior_weight"] = 0.0
    return UnitConfig(unit=arm.unit, **data)


def whole_volume_effort(view: VolumeView, axis: int) -> Effort:
    """The effort of annotating every voxel of ``view``."""
    return count_effort(view.truth, np.ones(view.truth.shape, dtype=bool), view.prefill, axis)


def select_within_budget(
    pick: Callable[[int], Sequence[Any]], cost: Callable[[Sequence[Any]], float], budget: float, most: int
) -> List[Any]:
    """The largest proposal ``pick(n)`` (n = 1, 2, ..., ``most``) whose ``cost`` stays within ``budget``; the scan
    stops at the first n that exceeds it or that ``pick`` cannot fill; at least ``pick(1)``."""
    best: Optional[Sequence[Any]] = None
    for n in range(1, int(most) + 1):
        chosen = pick(n)
        if len(chosen) < n or cost(chosen) > budget:
            break
        best = chosen
    return list(best if best is not None else pick(1))


@dataclass(frozen=True)
class Proposal:
    """What a sparse arm annotates in one pool.

    Attributes:
        units: the proposed units (``ProposedUnit``), in pick order.
        masks: ``{case: bool [I, J, K]}`` of the volumes holding a unit.
        effort: the effort spent (:func:`count_effort` summed over those volumes).
        budget: the effort allowed, in ``measure``.
        measure: the arm's measure.
        per_volume: ``{measure: the pool's mean effort of one whole volume}`` for every measure.
    """

    units: Tuple[Any, ...]
    masks: Dict[str, np.ndarray]
    effort: Effort
    budget: float
    measure: str
    per_volume: Dict[str, float]


def per_volume_effort(views: Mapping[str, VolumeView], config) -> Dict[str, float]:
    """``{measure: mean whole-volume effort over the pool}`` (the annotation axis of ``config``)."""
    efforts = [whole_volume_effort(v, v.axis(config)) for v in views.values()]
    return {m: float(np.mean([e.value(m) for e in efforts])) for m in MEASURES}


def candidates(views: Mapping[str, VolumeView], arm: Arm, config, seed: int) -> List[Any]:
    """Every candidate unit of the pool (``query.units.volume_units``); a random arm's scores are uniform draws
    seeded by ``seed``."""
    from ASSFTActive.query.units import volume_units

    units = [u for c, v in views.items() for u in volume_units(c, v.entropy, v.region, v.spacing, config)]
    if arm.strategy == "random":
        rng = np.random.default_rng([int(seed), 27])
        draws = rng.random(len(units))
        units = [replace(u, asd=float(d), score=float(d)) for u, d in zip(units, draws)]
    return units


def propose(
    views: Mapping[str, VolumeView], arm: Arm, budget: float, ranked_ids: Sequence[str], seed: int = 0
) -> Proposal:
    """The units a sparse arm annotates at an effort of ``budget`` whole volumes.

    Args:
        views: the pool's volumes.
        arm: a slice or region arm (its measure, unit fields, strategy).
        budget: whole volumes (B).
        ranked_ids: the volume ranking (rank order) of the arm's strategy, the units' prior; ignored by a random arm.
        seed: a random arm's draw seed.
    """
    from ASSFTActive.query.units import select_units, volume_priors

    if not arm.sparse:
        raise ValueError(f"arm {arm.name} annotates whole volumes; propose() is for slice / region arms")
    config = unit_config(arm)
    per_volume = per_volume_effort(views, config)
    allowed = effort_budget(budget, [per_volume[arm.measure]])
    pool = candidates(views, arm, config, seed)
    priors = {c: 0.0 for c in views} if arm.strategy == "random" else volume_priors(list(ranked_ids))
    missing = sorted(set(views) - set(priors))
    if missing:
        raise ValueError(f"the volume ranking misses pool volumes {missing}")
    changed = {c: v.truth != v.prefill for c, v in views.items()}

    def unit_cost(u) -> float:  # one slice alone, in the arm's measure (slices never overlap)
        view = views[u.case_id]
        where = _unit_slices(u)
        if arm.measure == "voxels_changed":
            return float(np.count_nonzero(changed[u.case_id][where]))
        return float(view.truth[where].size) / (view.truth.size // view.truth.shape[view.axis(config)])

    costs: Dict[Tuple[Any, ...], float] = {}

    def cost(chosen) -> float:
        if arm.unit == "region":  # boxes of one volume overlap at its edges: the union's effort
            total = Effort()
            for case in {u.case_id for u in chosen}:
                view = views[case]
                mask = unit_mask(view.truth.shape, [u for u in chosen if u.case_id == case])
                total = total + count_effort(view.truth, mask, view.prefill, view.axis(config))
            return total.value(arm.measure)
        out = 0.0
        for u in chosen:
            key = (u.case_id, u.axis, u.index)
            if key not in costs:
                costs[key] = unit_cost(u)
            out += costs[key]
        return out

    chosen = select_within_budget(lambda n: select_units(pool, n, priors, config), cost, allowed, len(pool))
    masks: Dict[str, np.ndarray] = {}
    spent = Effort()
    for case in views:
        mine = [u for u in chosen if u.case_id == case]
        if not mine:
            continue
        view = views[case]
        masks[case] = unit_mask(view.truth.shape, mine)
        spent = spent + count_effort(view.truth, masks[case], view.prefill, view.axis(config))
    return Proposal(tuple(chosen), masks, spent, allowed, arm.measure, per_volume)


# ------------------------------------------------------------------------------ through the product (one unit)


def pool_views(task: Task) -> Dict[str, VolumeView]:
    """:class:`VolumeView` of every pool volume, from the cached ranking pass (:func:`.work.analyse_pool`)."""
    from . import work

    analysis = work.analyse_pool(task)
    views = {}
    for case in task.pool:
        a = analysis[case]
        views[case] = VolumeView(
            case=case,
            truth=np.asarray(work.case_pair(task, case)[1].array),
            prefill=np.asarray(a["prefill"]),
            entropy=a["entropy_levels"],
            region=a["region"],
            spacing=tuple(a["spacing"]),
        )
    return views


def volume_ranking(task: Task, arm: Arm, draw: int) -> List[str]:
    """The pool's volume ranking (rank order) of the arm's strategy, as ``assft rank --unit`` computes it before
    proposing units; empty for a random arm."""
    from ASSFTActive.query import select

    from . import work

    if arm.strategy == "random":
        return []
    config = work.query_config(arm, draw, task.replicate)
    analysis = work.analyse_pool(task)
    scoring = replace(config, strategy="assft")
    evidence = [work.evidence_of(analysis[c], scoring) for c in task.pool]
    ranking = select(evidence, len(task.pool), config, round_index=0, total_rounds=1)
    return [c.case_id for c in ranking.cases]


def effort_record(effort: Effort, measure: str, budget: Optional[float], per_volume: Mapping[str, float]) -> Dict:
    """The record's ``effort``: what was spent, the measure and the allowed budget (``None``: a volume arm, whose
    budget counts volumes), and the pool's whole-volume effort per measure."""
    return {
        **effort.to_dict(),
        "measure": measure or None,
        "budget": budget,
        "per_volume": dict(per_volume),
    }


def volume_arm_effort(task: Task, arm: Arm, labelled: Sequence[str]) -> Dict[str, Any]:
    """The ``effort`` of a volume arm that labelled ``labelled`` whole (default annotation axis)."""
    from ASSFTActive.query.units import UnitConfig

    views = pool_views(task)
    config = UnitConfig()
    spent = Effort()
    for case in labelled:
        spent = spent + whole_volume_effort(views[case], views[case].axis(config))
    return effort_record(spent, arm.measure, None, per_volume_effort(views, config))


def execute_sparse(task: Task, unit, work_dir: Path) -> Dict[str, Any]:
    """One record of a slice / region arm: propose the units, write the oracle partial labels, run Adapt Model on
    them (:func:`.work.adapt_and_evaluate`) and score it; the record adds ``proposed`` (per volume, the ranking
    file's ``proposed_slices`` / ``proposed_regions`` form) and ``effort``."""
    from ASSFTActive.partial import write_partial_label

    from . import work

    arm = unit.arm
    views = pool_views(task)
    seed = work._seed_of(task.key, arm.name, unit.budget, unit.draw)
    proposal = propose(views, arm, unit.budget, volume_ranking(task, arm, unit.draw), seed=seed)
    labelled = sorted(proposal.masks)
    folder = Path(work_dir) / "partial_labels" / unit.key.replace("/", "_")
    paths = {}
    try:
        for case in labelled:
            image = work.case_pair(task, case)[0]
            path = folder / f"{case}.nii.gz"
            write_partial_label(views[case].truth, proposal.masks[case], image, path)
            paths[case] = str(path)
        result = work.adapt_and_evaluate(task, arm, labelled, unit.seed, Path(work_dir), labels=paths)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "labelled": labelled,
        "labelled_source_dice": list(work.pool_dice(task, labelled)),
        "proposed": {c: [u.to_record() for u in proposal.units if u.case_id == c] for c in labelled},
        "effort": effort_record(proposal.effort, arm.measure, proposal.budget, proposal.per_volume),
        **result,
    }
