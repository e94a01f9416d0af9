"""High-entropy regions: read the engine's regions JSON, show them as markups points, move the views to one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import slicer

from .errors import ResultFormatError
from .records import RegionMarker, RegionSet

ROLE_ATTRIBUTE = "ASSFT.Role"
VOLUME_ATTRIBUTE = "ASSFT.VolumeID"
REGIONS_ROLE = "regions"


def _triple(value, kind, where: str, key: str) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ResultFormatError(f'{where}: "{key}" must be a list of 3 numbers, got {value!r}.')
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ResultFormatError(f'{where}: "{key}" must be a list of 3 numbers, got {value!r}.') from exc


def readRegions(path) -> RegionSet:
    """Read a regions JSON file (regions sorted by importance, most important first).

    Raises:
        ResultFormatError: missing file, invalid JSON, or a region without ``center_ras``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultFormatError(f"{path}: regions file not found; the job did not write it.") from exc
    except (OSError, ValueError) as exc:
        raise ResultFormatError(f"{path}: cannot read the regions ({exc}).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
        raise ResultFormatError(f'{path}: expected an object with a "regions" list.')
    regions = []
    for index, entry in enumerate(data["regions"]):
        where = f"{path}, region {index}"
        if not isinstance(entry, dict):
            raise ResultFormatError(f"{where}: expected an object.")
        regions.append(
            RegionMarker(
                centerRas=_triple(entry.get("center_ras"), float, where, "center_ras"),
                bboxIjkMin=_triple(entry.get("bbox_ijk_min", (0, 0, 0)), int, where, "bbox_ijk_min"),
                bboxIjkMax=_triple(entry.get("bbox_ijk_max", (0, 0, 0)), int, where, "bbox_ijk_max"),
                volumeMm3=float(entry.get("volume_mm3", 0.0)),
                meanEntropy=float(entry.get("mean_entropy", 0.0)),
                voxelCount=int(entry.get("voxel_count", 0)),
            )
        )
    return RegionSet(
        caseId=str(data.get("case_id", "")),
        threshold=float(data.get("threshold", 0.0)),
        regions=tuple(regions),
        path=path,
    )


def _nodesByClass(scene, className: str) -> list:
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def findRegionsNode(scene, volumeNode):
    """The regions markups node of ``volumeNode``, or None."""
    for node in _nodesByClass(scene, "vtkMRMLMarkupsFiducialNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) != REGIONS_ROLE:
            continue
        if node.GetAttribute(VOLUME_ATTRIBUTE) == volumeNode.GetID():
            return node
    return None


def regionsToMarkups(scene, volumeNode, regions: Sequence[RegionMarker], markupsNode=None):
    """Put one control point per region (at its RAS centre, labelled R1, R2, ...) in a locked fiducial node.

    Args:
        scene: the MRML scene.
        volumeNode: the volume the regions belong to (the node is found again through it).
        regions: most important first.
        markupsNode: node to overwrite; by default the volume's regions node, created when missing.

    Returns:
        the ``vtkMRMLMarkupsFiducialNode``.
    """
    if markupsNode is None:
        markupsNode = findRegionsNode(scene, volumeNode)
    if markupsNode is None:
        markupsNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{volumeNode.GetName()} regions")
        markupsNode.CreateDefaultDisplayNodes()
    markupsNode.SetAttribute(ROLE_ATTRIBUTE, REGIONS_ROLE)
    markupsNode.SetAttribute(VOLUME_ATTRIBUTE, volumeNode.GetID())
    wasModifying = markupsNode.StartModify()
    markupsNode.SetLocked(False)
    markupsNode.RemoveAllControlPoints()
    for index, region in enumerate(regions):
        point = markupsNode.AddControlPoint(list(region.centerRas), f"R{index + 1}")
        markupsNode.SetNthControlPointDescription(point, region.describe(index))
    markupsNode.SetLocked(True)
    markupsNode.EndModify(wasModifying)
    return markupsNode


def showOnlyRegionsOf(scene, volumeNode) -> None:
    """Show the regions node of ``volumeNode`` and hide the regions of every other volume."""
    for node in _nodesByClass(scene, "vtkMRMLMarkupsFiducialNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) != REGIONS_ROLE or node.GetDisplayNode() is None:
            continue
        node.GetDisplayNode().SetVisibility(node.GetAttribute(VOLUME_ATTRIBUTE) == volumeNode.GetID())


def regionCenter(markupsNode, index: int) -> Tuple[float, float, float]:
    """RAS position of region ``index`` (0-based) of a regions markups node."""
    if index < 0 or index >= markupsNode.GetNumberOfControlPoints():
        raise IndexError(f"region {index} does not exist (the node has {markupsNode.GetNumberOfControlPoints()})")
    position = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPosition(index, position)
    return (position[0], position[1], position[2])


def sliceOffsets(scene, ras: Sequence[float]) -> Dict[str, float]:
    """Offset of the plane through ``ras`` along each slice view's normal: ``{layout name: offset}``.

    This is the offset a slice view's slider shows once the view passes through ``ras``.
    """
    point = np.asarray(ras, dtype=np.float64)
    offsets = {}
    for sliceNode in _nodesByClass(scene, "vtkMRMLSliceNode"):
        matrix = sliceNode.GetSliceToRAS()
        normal = np.array([matrix.GetElement(row, 2) for row in range(3)])
        offsets[sliceNode.GetLayoutName()] = float(normal @ point)
    return offsets


def jumpSlicesTo(scene, ras: Sequence[float], centered: bool = True) -> Dict[str, float]:
    """Move every slice view to pass through ``ras`` (centred on it when ``centered``).

    Returns:
        the slice offsets of :func:`sliceOffsets` at ``ras``.
    """
    r, a, s = (float(v) for v in ras)
    mode = slicer.vtkMRMLSliceNode.CenteredJumpSlice if centered else slicer.vtkMRMLSliceNode.OffsetJumpSlice
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, mode)
    return sliceOffsets(scene, (r, a, s))
