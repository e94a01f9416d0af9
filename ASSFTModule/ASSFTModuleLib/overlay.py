"""The entropy overlay: a float volume node on its image's grid, heat colours, shown in the slice views.

The overlay goes in the foreground layer of every slice composite node (every slice view), above its image in the
background layer; voxels below the threshold are transparent.
"""

from __future__ import annotations

from typing import Optional

from ASSFTActive.io import Volume

from .geometry import addVolumeNode, loadVolumeFile, sameGeometry, setNodeFromVolume

ROLE_ATTRIBUTE = "ASSFT.Role"
VOLUME_ATTRIBUTE = "ASSFT.VolumeID"
SOURCE_ATTRIBUTE = "ASSFT.SourcePath"
ENTROPY_ROLE = "entropy"

#: Colour node of the overlay (a procedural colour node that every Slicer scene has).
HEAT_COLOR_NODE_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
#: Upper end of the colour window: the engine's entropy is normalised to [0, 1].
ENTROPY_MAXIMUM = 1.0


def _nodesByClass(scene, className: str) -> list:
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def findOverlayNode(scene, volumeNode):
    """The entropy overlay node of ``volumeNode``, or None."""
    for node in _nodesByClass(scene, "vtkMRMLScalarVolumeNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) != ENTROPY_ROLE:
            continue
        if node.GetAttribute(VOLUME_ATTRIBUTE) == volumeNode.GetID():
            return node
    return None


def _markOverlay(overlayNode, volumeNode, source: str) -> None:
    overlayNode.SetAttribute(ROLE_ATTRIBUTE, ENTROPY_ROLE)
    overlayNode.SetAttribute(VOLUME_ATTRIBUTE, volumeNode.GetID())
    overlayNode.SetAttribute(SOURCE_ATTRIBUTE, source)


def _checkGeometry(overlayNode, volumeNode) -> None:
    if not sameGeometry(overlayNode, volumeNode):
        raise ValueError(
            f"Entropy map '{overlayNode.GetName()}' does not lie on the voxel grid of '{volumeNode.GetName()}'. "
            "It was computed for another image; rank the volumes again."
        )


def overlayFromVolume(scene, volumeNode, entropy: Volume):
    """Create or update the overlay of ``volumeNode`` from an in-memory entropy map ``[I, J, K]`` in [0, 1]."""
    overlayNode = findOverlayNode(scene, volumeNode)
    if overlayNode is None:
        overlayNode = addVolumeNode(scene, entropy, f"{volumeNode.GetName()} entropy")
    else:
        setNodeFromVolume(overlayNode, entropy)
    _markOverlay(overlayNode, volumeNode, "")
    _checkGeometry(overlayNode, volumeNode)
    return overlayNode


def loadOverlay(scene, volumesLogic, volumeNode, entropyMapPath: str):
    """Load an entropy map file as the overlay of ``volumeNode`` (reused when the same file is already loaded).

    Raises:
        FileNotFoundError, ValueError: missing/unreadable file, or a map on another voxel grid.
    """
    overlayNode = findOverlayNode(scene, volumeNode)
    if overlayNode is not None and overlayNode.GetAttribute(SOURCE_ATTRIBUTE) == str(entropyMapPath):
        return overlayNode
    loaded = loadVolumeFile(volumesLogic, str(entropyMapPath), name=f"{volumeNode.GetName()} entropy")
    try:
        _checkGeometry(loaded, volumeNode)
    except ValueError:
        scene.RemoveNode(loaded)
        raise
    if overlayNode is not None:
        scene.RemoveNode(overlayNode)
    _markOverlay(loaded, volumeNode, str(entropyMapPath))
    return loaded


def setOverlayDisplay(overlayNode, threshold: float) -> None:
    """Heat colours from ``threshold`` to 1; voxels below ``threshold`` are not drawn."""
    display = overlayNode.GetDisplayNode()
    if display is None:
        overlayNode.CreateDefaultDisplayNodes()
        display = overlayNode.GetDisplayNode()
    wasModifying = display.StartModify()
    display.SetAndObserveColorNodeID(HEAT_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(float(threshold), ENTROPY_MAXIMUM)
    display.AutoThresholdOff()
    display.SetApplyThreshold(1)
    display.SetThreshold(float(threshold), ENTROPY_MAXIMUM)
    display.SetInterpolate(0)
    display.EndModify(wasModifying)


def showOverlay(scene, volumeNode, overlayNode, threshold: float, opacity: float) -> int:
    """Show ``volumeNode`` in the background and its overlay in the foreground of every slice view.

    Returns:
        the number of slice composite nodes (slice views) updated.
    """
    setOverlayDisplay(overlayNode, threshold)
    composites = _nodesByClass(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        wasModifying = composite.StartModify()
        composite.SetBackgroundVolumeID(volumeNode.GetID())
        composite.SetForegroundVolumeID(overlayNode.GetID())
        composite.SetForegroundOpacity(float(opacity))
        composite.EndModify(wasModifying)
    return len(composites)


def setOverlayOpacity(scene, opacity: float, overlayNode: Optional[object] = None) -> None:
    """Change the foreground opacity of the slice views that show ``overlayNode`` (all views when None)."""
    for composite in _nodesByClass(scene, "vtkMRMLSliceCompositeNode"):
        if overlayNode is None or composite.GetForegroundVolumeID() == overlayNode.GetID():
            composite.SetForegroundOpacity(float(opacity))


def hideOverlay(scene) -> None:
    """Remove any ASSFT overlay from the slice views' foreground."""
    for composite in _nodesByClass(scene, "vtkMRMLSliceCompositeNode"):
        foreground = scene.GetNodeByID(composite.GetForegroundVolumeID() or "")
        if foreground is not None and foreground.GetAttribute(ROLE_ATTRIBUTE) == ENTROPY_ROLE:
            composite.SetForegroundVolumeID(None)
