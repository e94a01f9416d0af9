"""The entropy overlay: a float volume node on its image's grid, heat colours, shown in the slice views.

The overlay goes in the foreground layer of every slice composite node (every slice view), above its image in the
background layer; voxels below the threshold are transparent.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable, Optional, Tuple

import numpy as np

from ASSFTActive.io import Volume, read_volume

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


#: Bytes of entropy maps held read ahead at most (three 512 x 512 x 100 float maps).
READ_AHEAD_BYTES = 320 * 2**20
#: Entropy maps read ahead at most per ranking.
READ_AHEAD_MAPS = 4


class ReadAhead:
    """Entropy map files read before the user clicks their row, in a background thread (the engine's reader, no
    MRML): reading a 512 x 512 x 75 float map with Slicer's reader took the GUI thread 0.35 s of CPU (about 1 s on
    a loaded machine) at the first click on each row. :func:`loadOverlay` takes a map from here when the file is
    unchanged since it was read, and reads the file itself otherwise.

    Args:
        maxBytes: voxel bytes held at most; reading stops before a map would go beyond it.
        read: the file reader (:func:`ASSFTActive.io.read_volume`).
    """

    def __init__(self, maxBytes: int = READ_AHEAD_BYTES, read: Callable[[str], Volume] = read_volume):
        self.maxBytes = maxBytes
        self._read = read
        self._lock = threading.Lock()
        self._volumes: OrderedDict[Tuple[str, int, int], Volume] = OrderedDict()

    @staticmethod
    def _key(path) -> Optional[Tuple[str, int, int]]:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return (str(Path(path).resolve()), int(stat.st_size), int(stat.st_mtime_ns))

    def heldBytes(self) -> int:
        with self._lock:
            return sum(volume.array.nbytes for volume in self._volumes.values())

    def start(self, paths: Iterable, limit: int = READ_AHEAD_MAPS) -> threading.Thread:
        """Read the first ``limit`` of ``paths`` (in that order, best rows first) in a daemon thread; returns it.
        Maps held for other files are dropped (they belong to an older ranking). Files that cannot be read are left
        to :func:`loadOverlay`, which reports them when their row is clicked."""
        wanted = [str(path) for path in paths if path][:limit]
        keep = {str(Path(path).resolve()) for path in wanted}
        with self._lock:  # a new ranking: the maps of the last one are not clicked any more
            for key in [key for key in self._volumes if key[0] not in keep]:
                del self._volumes[key]
        thread = threading.Thread(target=self._readAll, args=(wanted,), daemon=True, name="ASSFT overlay read-ahead")
        thread.start()
        return thread

    def _readAll(self, paths) -> None:
        for path in paths:
            key = self._key(path)
            if key is None:
                continue
            with self._lock:
                if key in self._volumes:
                    continue
            try:
                volume = self._read(path)
            except Exception:  # read again, and reported, when the row is clicked
                continue
            volume = Volume(np.asarray(volume.array, dtype=np.float32), volume.affine)
            with self._lock:
                held = sum(v.array.nbytes for v in self._volumes.values())
                if held + volume.array.nbytes > self.maxBytes:
                    return
                self._volumes[key] = volume

    def take(self, path) -> Optional[Volume]:
        """The map of ``path`` when it was read ahead and the file is unchanged since (it is no longer held)."""
        key = self._key(path)
        with self._lock:
            stale = [k for k in self._volumes if k[0] == (key[0] if key else None) and k != key]
            for k in stale:
                del self._volumes[k]
            return self._volumes.pop(key, None) if key is not None else None


#: The read-ahead of the GUI process (the job controller fills it when a ranking comes back).
READ_AHEAD = ReadAhead()


def loadOverlay(scene, volumesLogic, volumeNode, entropyMapPath: str, readAhead: Optional[ReadAhead] = None):
    """Load an entropy map file as the overlay of ``volumeNode`` (reused when the same file is already loaded; taken
    from ``readAhead``, default :data:`READ_AHEAD`, when it was read ahead).

    Raises:
        FileNotFoundError, ValueError: missing/unreadable file, or a map on another voxel grid.
    """
    overlayNode = findOverlayNode(scene, volumeNode)
    if overlayNode is not None and overlayNode.GetAttribute(SOURCE_ATTRIBUTE) == str(entropyMapPath):
        return overlayNode
    ahead = (readAhead if readAhead is not None else READ_AHEAD).take(entropyMapPath)
    name = f"{volumeNode.GetName()} entropy"
    if ahead is not None:
        loaded = addVolumeNode(scene, ahead, name)
    else:
        loaded = loadVolumeFile(volumesLogic, str(entropyMapPath), name=name)
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
