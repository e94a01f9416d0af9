"""Annotating at the unit Rank proposed: the proposed slices or regions of a volume, stepping to the next one, marking
one done, and the partial label a volume's painting becomes (MRML logic: scene in, scene out, no Qt).

A ranking made with ``--unit slice|region`` lists per volume ``proposed_slices`` (``{axis, index, score}``) or
``proposed_regions`` (``{start, size, score}``) on the image's own voxel grid (``ASSFTActive.query.ranking_file``).
:func:`attachProposals` stores them on the volume node (attribute :data:`PROPOSALS_ATTRIBUTE`, best first); the
annotator steps through them (:func:`nextProposal`, :func:`jumpToProposal`, which centres every slice view on the
unit the way region markers do) and marks each one done (:func:`markDone`; attribute :data:`DONE_ATTRIBUTE`, the
units themselves, so a later ranking with other proposals keeps what was annotated).

A volume that has proposals is annotated **only in its done units**: :func:`partialLabels` turns the painted class
map into a label where every voxel outside the done units is ``ASSFTActive.partial.NOT_ANNOTATED`` (255) and every
voxel inside keeps its class (0 inside a done unit is annotated background). A volume with proposals and no done unit
is not a labelled volume (:func:`notLabelledReason` says why). A volume without proposals (a ``--unit volume``
ranking) is labelled as a whole, as before.

What a saved label records is its annotated voxels (everything but 255). Read back after a restart of Slicer or the
browser (:func:`restoreSavedLabels`), they are turned into done units again (:func:`unitsFromMask`: the volume's
proposals lying wholly inside them, then whole slices or boxes for the rest), so the volume stays annotated in
exactly those voxels whatever order the label and the ranking come back in; :func:`setProposals` keeps the done
units when a later ranking proposes other units, or none (a labelled volume gets none), for the same reason.

The node's IJK grid is the image file's voxel grid (Slicer reads files with ITK, as the engine does), so the engine's
``(axis, index)`` and ``start`` apply to the node's ``[I, J, K]`` array (:func:`~.geometry.volumeFromNode`) unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ASSFTActive.partial import NOT_ANNOTATED

from . import regions
from .errors import ASSFTModuleError
from .geometry import ijkToRasArray
from .records import LabelConversion

__all__ = [
    "DONE_ATTRIBUTE",
    "PROPOSALS_ATTRIBUTE",
    "UnitProposal",
    "annotatedConversion",
    "attachProposals",
    "currentProposal",
    "doneUnits",
    "jumpToProposal",
    "markDone",
    "nextProposal",
    "notLabelledReason",
    "partialLabels",
    "progressLine",
    "proposalCenterRas",
    "proposalsFromRanking",
    "proposalsOf",
    "restoreDone",
    "restoreSavedLabels",
    "setProposals",
    "unitMask",
    "unitsFromMask",
    "doneSlicesFromMask",
]

#: Volume node attribute: the volume's proposed units, best first (JSON list of :meth:`UnitProposal.toRecord`).
PROPOSALS_ATTRIBUTE = "ASSFT.ProposedUnits"
#: Volume node attribute: the units marked done (JSON list of :meth:`UnitProposal.toRecord`, without scores).
DONE_ATTRIBUTE = "ASSFT.DoneUnits"
#: Volume node attribute: the position in the proposal list the views were last centred on.
CURRENT_ATTRIBUTE = "ASSFT.CurrentUnit"
#: :func:`unitsFromMask` refuses a mask that takes more boxes than this (not annotated in slices or regions).
MAX_RESTORED_UNITS = 4096


@dataclass(frozen=True)
class UnitProposal:
    """One proposed slice or region of a volume, on its voxel grid.

    Attributes:
        unit: ``slice`` or ``region``.
        axis, index: a slice: ``index`` along voxel ``axis`` (0, 1, 2); ``None`` for a region.
        start, size: a region: first voxel ``(i, j, k)`` and size in voxels; ``None`` for a slice.
        score: the ranking's score (0 when not given).
    """

    unit: str
    axis: Optional[int] = None
    index: Optional[int] = None
    start: Optional[Tuple[int, int, int]] = None
    size: Optional[Tuple[int, int, int]] = None
    score: float = 0.0

    @classmethod
    def fromRecord(cls, record: Mapping[str, Any]) -> UnitProposal:
        """From ``{axis, index[, score]}`` or ``{start, size[, score]}`` (``ranking.json`` or the node attribute).

        Raises:
            ASSFTModuleError: neither form, or not whole numbers.
        """
        try:
            score = float(record.get("score", 0.0) or 0.0)
            if "axis" in record and "index" in record:
                axis, index = int(record["axis"]), int(record["index"])
                if axis not in (0, 1, 2) or index < 0:
                    raise ValueError("axis must be 0, 1 or 2 and index >= 0")
                return cls(unit="slice", axis=axis, index=index, score=score)
            start = tuple(int(v) for v in record["start"])
            size = tuple(int(v) for v in record["size"])
            if len(start) != 3 or len(size) != 3 or min(start) < 0 or min(size) < 1:
                raise ValueError("start must be three whole numbers >= 0 and size three >= 1")
            return cls(unit="region", start=start, size=size, score=score)
        except (KeyError, TypeError, ValueError) as exc:
            raise ASSFTModuleError(f"A proposed slice or region {dict(record)!r} cannot be read: {exc}.") from None

    def toRecord(self, withScore: bool = True) -> Dict[str, Any]:
        record: Dict[str, Any] = (
            {"axis": self.axis, "index": self.index}
            if self.unit == "slice"
            else {"start": list(self.start), "size": list(self.size)}
        )
        if withScore:
            record["score"] = self.score
        return record

    @property
    def key(self) -> Tuple:
        """What identifies the unit (not its score)."""
        return (self.axis, self.index) if self.unit == "slice" else (self.start, self.size)

    def voxelSlices(self, shape: Sequence[int]) -> Tuple[slice, slice, slice]:
        """The unit as index slices of an ``[I, J, K]`` array of ``shape`` (a region clipped at the edge).

        Raises:
            ASSFTModuleError: the unit lies outside the volume (a ranking of another image).
        """
        shape = tuple(int(s) for s in shape[:3])
        if self.unit == "slice":
            if self.index >= shape[self.axis]:
                raise ASSFTModuleError(
                    f"Proposed slice {self.index} on axis {self.axis} is outside the volume "
                    f"{shape}; rank this volume again."
                )
            where = [slice(None)] * 3
            where[self.axis] = slice(self.index, self.index + 1)
            return tuple(where)
        if any(s >= n for s, n in zip(self.start, shape)):
            raise ASSFTModuleError(
                f"Proposed region at {list(self.start)} is outside the volume {shape}; rank this volume again."
            )
        return tuple(slice(s, min(s + z, n)) for s, z, n in zip(self.start, self.size, shape))

    def describe(self) -> str:
        """One line for the UI, e.g. ``slice 12 (axis 2)`` or ``region at [0, 32, 0], 32x32x32``."""
        if self.unit == "slice":
            return f"slice {self.index} (axis {self.axis})"
        return f"region at {list(self.start)}, {'x'.join(str(s) for s in self.size)} voxels"


def proposalsFromRanking(rankingPath) -> Dict[str, Tuple[UnitProposal, ...]]:
    """``{case_id: proposals, best first}`` of a ``ranking.json`` (empty for a ``--unit volume`` ranking).

    Raises:
        ASSFTModuleError: the file cannot be read as a ranking.
    """
    from ASSFTActive.query.ranking_file import RankingFile

    try:
        record = RankingFile.from_dict(json.loads(Path(rankingPath).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ASSFTModuleError(f"Cannot read the ranking {rankingPath}: {exc}") from exc
    found = {}
    for case in record.cases:
        units = case.proposed_slices or case.proposed_regions
        if units:
            found[case.case_id] = tuple(UnitProposal.fromRecord(u) for u in units)
    return found


def _readUnits(volumeNode, attribute: str) -> Tuple[UnitProposal, ...]:
    text = volumeNode.GetAttribute(attribute)
    if not text:
        return ()
    try:
        records = json.loads(text)
    except ValueError as exc:
        raise ASSFTModuleError(f"Volume '{volumeNode.GetName()}' has an unreadable {attribute}: {exc}.") from exc
    return tuple(UnitProposal.fromRecord(r) for r in records)


def _writeUnits(volumeNode, attribute: str, units: Iterable[UnitProposal], withScore: bool) -> None:
    volumeNode.SetAttribute(attribute, json.dumps([u.toRecord(withScore) for u in units]))


def _inside(unit: UnitProposal, shape: Sequence[int]) -> bool:
    try:
        unit.voxelSlices(shape)
    except ASSFTModuleError:
        return False
    return True


def setProposals(volumeNode, proposals: Sequence[UnitProposal]) -> None:
    """Store ``proposals`` (best first) on the volume; the voxels of the units already marked done stay done.

    A new proposal lying wholly inside the done units is marked done itself (a ranking read back after a label whose
    done units were restored as boxes, :func:`restoreSavedLabels`); a done unit that the new proposals do not cover
    stays among the proposals, after them, so that the volume stays annotated in exactly its done units (a later
    ranking proposes nothing for a labelled volume; without this its unannotated voxels would be saved as
    background).
    """
    proposals = tuple(proposals)
    done = doneUnits(volumeNode)
    if done:
        shape = tuple(volumeNode.GetImageData().GetDimensions())
        covered = unitMask(shape, done)
        matched = [p for p in proposals if _inside(p, shape) and covered[p.voxelSlices(shape)].all()]
        byMatched = unitMask(shape, matched)
        kept = [u for u in done if not byMatched[u.voxelSlices(shape)].all()]
        done = tuple(dict((u.key, u) for u in [*matched, *kept]).values())
        _writeUnits(volumeNode, DONE_ATTRIBUTE, done, withScore=False)
        keys = {p.key for p in proposals}
        proposals += tuple(u for u in done if u.key not in keys)
    _writeUnits(volumeNode, PROPOSALS_ATTRIBUTE, proposals, withScore=True)
    volumeNode.SetAttribute(CURRENT_ATTRIBUTE, "")


def attachProposals(rankingPath, caseNodes: Mapping[str, Any]) -> int:
    """Store each ranked volume's proposals from ``ranking.json`` on its node (``{case_id: volume node}``); a node
    whose case has none (a volume ranking, a labelled volume) keeps no proposals. Returns how many volumes got some."""
    found = proposalsFromRanking(rankingPath)
    for caseId, node in caseNodes.items():
        setProposals(node, found.get(caseId, ()))
    return sum(1 for caseId in caseNodes if caseId in found)


def proposalsOf(volumeNode) -> Tuple[UnitProposal, ...]:
    """The volume's proposed units, best first (empty: the volume is annotated as a whole)."""
    return _readUnits(volumeNode, PROPOSALS_ATTRIBUTE)


def doneUnits(volumeNode) -> Tuple[UnitProposal, ...]:
    """The units of the volume marked done, in the order they were marked."""
    return _readUnits(volumeNode, DONE_ATTRIBUTE)


def markDone(volumeNode, position: int, done: bool = True) -> Tuple[UnitProposal, ...]:
    """Mark proposal ``position`` (0-based, best first) done (or not done); returns the done units.

    Raises:
        ASSFTModuleError: the volume has no such proposal.
    """
    proposals = proposalsOf(volumeNode)
    if not 0 <= position < len(proposals):
        raise ASSFTModuleError(
            f"Volume '{volumeNode.GetName()}' has {len(proposals)} proposed slices or regions; "
            f"there is no number {position + 1}."
        )
    unit = proposals[position]
    kept = [u for u in doneUnits(volumeNode) if u.key != unit.key]
    if done:
        kept.append(unit)
    _writeUnits(volumeNode, DONE_ATTRIBUTE, kept, withScore=False)
    return tuple(kept)


def currentProposal(volumeNode) -> Optional[int]:
    """The proposal the views were last centred on (:func:`jumpToProposal`), or None."""
    text = volumeNode.GetAttribute(CURRENT_ATTRIBUTE)
    return int(text) if text else None


def nextProposal(volumeNode, after: Optional[int] = None) -> Optional[int]:
    """The position of the next proposal not yet done after ``after`` (default: the current one), best first and
    wrapping round; None when every proposal is done or there are none."""
    proposals = proposalsOf(volumeNode)
    done = {u.key for u in doneUnits(volumeNode)}
    if after is None:
        after = currentProposal(volumeNode)
    start = -1 if after is None else after
    for step in range(1, len(proposals) + 1):
        position = (start + step) % len(proposals)
        if proposals[position].key not in done:
            return position
    return None


def proposalCenterRas(volumeNode, proposal: UnitProposal) -> Tuple[float, float, float]:
    """RAS of the unit's centre: the middle voxel of a slice (on its index along the axis), a region's centre."""
    shape = volumeNode.GetImageData().GetDimensions()
    where = proposal.voxelSlices(shape)
    ijk = np.array(
        [(s.start + s.stop - 1) / 2.0 if s.start is not None else (n - 1) / 2.0 for s, n in zip(where, shape)] + [1.0]
    )
    ras = ijkToRasArray(volumeNode) @ ijk
    return (float(ras[0]), float(ras[1]), float(ras[2]))


def jumpToProposal(scene, volumeNode, position: int) -> Dict[str, float]:
    """Centre every slice view on proposal ``position`` (as region markers do) and remember it as the current one.

    Returns:
        ``{slice view: offset}`` (:func:`~.regions.sliceOffsets`).
    """
    proposals = proposalsOf(volumeNode)
    if not 0 <= position < len(proposals):
        raise ASSFTModuleError(
            f"Volume '{volumeNode.GetName()}' has {len(proposals)} proposed slices or regions; "
            f"there is no number {position + 1}."
        )
    offsets = regions.jumpSlicesTo(scene, proposalCenterRas(volumeNode, proposals[position]))
    volumeNode.SetAttribute(CURRENT_ATTRIBUTE, str(position))
    return offsets


def unitMask(shape: Sequence[int], units: Iterable[UnitProposal]) -> np.ndarray:
    """Bool ``[I, J, K]``: true inside any of ``units``."""
    mask = np.zeros(tuple(int(s) for s in shape[:3]), dtype=bool)
    for unit in units:
        mask[unit.voxelSlices(mask.shape)] = True
    return mask


def partialLabels(labels: np.ndarray, done: Sequence[UnitProposal]) -> Optional[np.ndarray]:
    """The label to save for a volume annotated in its ``done`` units.

    Args:
        labels: painted class indices ``[I, J, K]`` (0 = background).

    Returns:
        ``uint8 [I, J, K]``: the class inside the done units (background 0 there is annotated background) and
        ``NOT_ANNOTATED`` (255) everywhere else; None when no unit is done (not a labelled volume).

    Raises:
        ASSFTModuleError: a class index of 255 or more (it would read as not annotated).
    """
    if not done:
        return None
    if labels.size and int(labels.max()) >= NOT_ANNOTATED:
        raise ASSFTModuleError(
            f"A class index of {int(labels.max())} cannot be saved as a partial label "
            f"({NOT_ANNOTATED} means not annotated)."
        )
    out = np.full(labels.shape[:3], NOT_ANNOTATED, dtype=np.uint8)
    inside = unitMask(labels.shape, done)
    out[inside] = labels[inside]
    return out


def annotatedConversion(volumeNode, conversion: LabelConversion) -> Optional[LabelConversion]:
    """The labels of ``volumeNode`` as saved (job folder, browser's label file): unchanged without proposals; with
    proposals the :func:`partialLabels` of its done units (``voxelCounts`` counted inside them), or None when no unit
    is done (not a labelled volume; :func:`notLabelledReason`)."""
    if not proposalsOf(volumeNode):
        return conversion
    labels = partialLabels(conversion.labels, doneUnits(volumeNode))
    if labels is None:
        return None
    counts = {name: int(np.count_nonzero(labels == index)) for index, name in enumerate(conversion.voxelCounts, 1)}
    return dataclasses.replace(conversion, labels=labels, voxelCounts=counts)


def doneSlicesFromMask(annotated: np.ndarray) -> Optional[Tuple[UnitProposal, ...]]:
    """The slices a saved partial label was annotated in: the whole slices of one axis whose union is exactly the
    annotated mask (bool ``[I, J, K]``), trying axis 2, 1, 0; None when it is not such a union (e.g. regions)."""
    for axis in (2, 1, 0):
        other = tuple(a for a in range(3) if a != axis)
        full = np.flatnonzero(annotated.all(axis=other))
        if full.size and int(np.count_nonzero(annotated)) == full.size * annotated.size // annotated.shape[axis]:
            return tuple(UnitProposal("slice", axis=axis, index=int(i)) for i in full)
    return None


def _boxes(mask: np.ndarray, limit: int) -> List[UnitProposal]:
    """Disjoint boxes whose union is ``mask`` (bool ``[I, J, K]``): from the first voxel left in C order, the
    longest run along K, then as many rows along J and planes along I as are wholly left."""
    left = np.array(mask, dtype=bool, order="C")
    flat = left.reshape(-1)  # a view: clearing a box in ``left`` clears it here
    shape, cursor, boxes = left.shape, 0, []
    while True:
        rest = flat[cursor:]
        if not rest.any():
            return boxes
        if len(boxes) == limit:
            raise ASSFTModuleError(
                f"its annotated voxels (not {NOT_ANNOTATED}) are not annotated in slices or regions: they need more "
                f"than {limit} boxes. Save labels from the proposed slices or regions, or a full label."
            )
        cursor += int(np.argmax(rest))
        i, j, k = (int(v) for v in np.unravel_index(cursor, shape))
        run = left[i, j, k:]
        k1 = k + (int(np.argmin(run)) if not run.all() else run.size)
        j1 = j + 1
        while j1 < shape[1] and left[i, j1, k:k1].all():
            j1 += 1
        i1 = i + 1
        while i1 < shape[0] and left[i1, j:j1, k:k1].all():
            i1 += 1
        left[i:i1, j:j1, k:k1] = False
        boxes.append(UnitProposal("region", start=(i, j, k), size=(i1 - i, j1 - j, k1 - k)))


def unitsFromMask(
    annotated: np.ndarray, proposals: Sequence[UnitProposal] = (), limit: int = MAX_RESTORED_UNITS
) -> Tuple[UnitProposal, ...]:
    """Units whose union is exactly the ``annotated`` voxels of a saved label (bool ``[I, J, K]``).

    First the ``proposals`` lying wholly inside the mask (in their order: the proposed units the annotator marked
    done), then for the voxels they leave: whole slices of one axis when those voxels are such a union
    (:func:`doneSlicesFromMask`), else boxes (regions) covering them, disjoint, found in voxel order.

    Raises:
        ASSFTModuleError: the rest takes more than ``limit`` boxes (a scattered mask, not annotated in slices or
            regions).
    """
    annotated = np.asarray(annotated, dtype=bool)
    shape = annotated.shape
    taken = [p for p in proposals if _inside(p, shape) and annotated[p.voxelSlices(shape)].all()]
    rest = annotated & ~unitMask(shape, taken)
    if not rest.any():
        return tuple(taken)
    slices = doneSlicesFromMask(rest)
    return tuple(taken) + (slices if slices is not None else tuple(_boxes(rest, limit)))


def restoreDone(volumeNode, done: Sequence[UnitProposal]) -> None:
    """Mark ``done`` units done again (a partial label read back) in place of those marked so far; those that are not
    among the volume's proposals join them (:func:`setProposals`), so that it stays annotated in those units only."""
    _writeUnits(volumeNode, DONE_ATTRIBUTE, done, withScore=False)
    setProposals(volumeNode, proposalsOf(volumeNode))


def restoreSavedLabels(volumeNode, labels: np.ndarray) -> np.ndarray:
    """A saved label read back onto its volume (Slicer or the browser started again): the class map to paint.

    A full label (no :data:`~ASSFTActive.partial.NOT_ANNOTATED`) is returned as it is and changes nothing. A partial
    one marks the units whose union is its annotated voxels done (:func:`unitsFromMask`, preferring the volume's
    proposals), so that the volume is saved again with exactly the same voxels not annotated, and returns the
    classes with 0 where not annotated (nothing is painted there).

    Args:
        labels: the saved label ``[I, J, K]`` on the volume's grid.

    Raises:
        ASSFTModuleError: no annotated voxel (not a label of its volume), or annotated voxels that are no union of
            slices or a few boxes.
    """
    labels = np.asarray(labels)
    annotated = labels != NOT_ANNOTATED
    if annotated.all():
        return labels
    if not annotated.any():
        raise ASSFTModuleError(
            f"it has no annotated voxel (every voxel is {NOT_ANNOTATED}, not annotated), so it is not a label of "
            f"'{volumeNode.GetName()}'."
        )
    restoreDone(volumeNode, unitsFromMask(annotated, proposalsOf(volumeNode)))
    return np.where(annotated, labels, 0).astype(labels.dtype)


def notLabelledReason(volumeNode) -> str:
    """Why the volume's painting is not saved as labels ('' when it is, or when it is annotated as a whole)."""
    proposals = proposalsOf(volumeNode)
    if not proposals or doneUnits(volumeNode):
        return ""
    word = "slices" if proposals[0].unit == "slice" else "regions"
    return (
        f"'{volumeNode.GetName()}' has {len(proposals)} proposed {word} and none is marked done, so it is not a "
        f"labelled volume: paint a proposed {word[:-1]}, then Mark done."
    )


def progressLine(volumeNode) -> str:
    """``3 of 5 proposed slices done; now: slice 12 (axis 2)`` ('' without proposals)."""
    proposals: List[UnitProposal] = list(proposalsOf(volumeNode))
    if not proposals:
        return ""
    done = {u.key for u in doneUnits(volumeNode)}
    word = "slices" if proposals[0].unit == "slice" else "regions"
    line = f"{sum(1 for p in proposals if p.key in done)} of {len(proposals)} proposed {word} done"
    current = currentProposal(volumeNode)
    if current is not None and current < len(proposals):
        line += f"; now: {proposals[current].describe()}"
    return line
