"""Volume nodes <-> engine volumes, with the voxel-to-RAS geometry kept exactly.

Slicer stores voxels ``[k, j, i]`` (numpy view of vtkImageData) and the geometry in the node
(``GetIJKToRASMatrix``); the engine's :class:`ASSFTActive.io.Volume` holds ``array [i, j, k]`` and ``affine``
(voxel ``(i, j, k, 1)`` -> RAS mm). The conversion is a transpose and a matrix copy, nothing is resampled.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from ASSFTActive.io import Volume

#: Largest allowed difference (mm) between two IJK->RAS matrices for them to count as the same grid.
GEOMETRY_TOLERANCE_MM = 1e-4


def vtkMatrixFromArray(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A ``vtkMatrix4x4`` from a ``[4, 4]`` array."""
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``[4, 4]`` float64 array from a ``vtkMatrix4x4``."""
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)], dtype=np.float64)


def ijkToRasArray(volumeNode) -> np.ndarray:
    """``[4, 4]`` voxel -> RAS matrix of a volume node (its own grid, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return arrayFromVtkMatrix(matrix)


def voxelArrayKji(volumeNode) -> np.ndarray:
    """A copy of the node's voxels ``[K, J, I]`` (Slicer order)."""
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no voxel data. Load the image again.")
    i, j, k = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(
            f"Volume '{volumeNode.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel; "
            "ASSFT needs a scalar (grey-level) volume."
        )
    return numpy_support.vtk_to_numpy(scalars).reshape(k, j, i).copy()


def volumeFromNode(volumeNode) -> Volume:
    """The engine :class:`Volume` of a scalar or label map volume node.

    Returns:
        ``Volume(array [I, J, K], affine [4, 4] voxel -> RAS)``; the array is a copy (not a view of VTK memory), in
        Slicer's memory order (a Fortran-ordered ``[I, J, K]`` view of a ``[K, J, I]`` copy): reordering the memory
        of a 512 x 512 x 100 CT would cost the GUI thread about 0.2 s, and numpy, nibabel and the way back to VTK
        (:func:`setNodeFromVolume`) do not need it.
    """
    kji = voxelArrayKji(volumeNode)
    return Volume(array=kji.transpose(2, 1, 0), affine=ijkToRasArray(volumeNode))


def setNodeFromVolume(volumeNode, volume: Volume) -> None:
    """Replace the voxels and geometry of ``volumeNode`` with those of ``volume`` (deep copy)."""
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume [I, J, K], got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    kji = np.ascontiguousarray(array.transpose(2, 1, 0))
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[0], array.shape[1], array.shape[2])
    vtkArray = numpy_support.numpy_to_vtk(kji.ravel(), deep=True)
    vtkArray.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtkArray)
    wasModifying = volumeNode.StartModify()
    volumeNode.SetIJKToRASMatrix(vtkMatrixFromArray(np.asarray(volume.affine, dtype=np.float64)))
    volumeNode.SetAndObserveImageData(image)
    volumeNode.EndModify(wasModifying)


def addVolumeNode(scene, volume: Volume, name: str, labelMap: bool = False):
    """Add a new scalar (or label map) volume node holding ``volume``, with default display nodes."""
    className = "vtkMRMLLabelMapVolumeNode" if labelMap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(className, name)
    setNodeFromVolume(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def sameGeometry(first, second, toleranceMm: float = GEOMETRY_TOLERANCE_MM) -> bool:
    """Whether two volume nodes lie on the same voxel grid (dimensions and IJK->RAS within tolerance)."""
    firstImage, secondImage = first.GetImageData(), second.GetImageData()
    if firstImage is None or secondImage is None:
        return False
    if tuple(firstImage.GetDimensions()) != tuple(secondImage.GetDimensions()):
        return False
    return float(np.max(np.abs(ijkToRasArray(first) - ijkToRasArray(second)))) <= toleranceMm


def loadVolumeFile(volumesLogic, path: str, name: Optional[str] = None, labelMap: bool = False):
    """Load a NIfTI/NRRD/MetaImage file into the scene with Slicer's own reader (no nibabel needed).

    Args:
        volumesLogic: the ``vtkSlicerVolumesLogic`` registered with the scene.
        path: image file.
        name: node name (default: file name without suffix).
        labelMap: load as ``vtkMRMLLabelMapVolumeNode``.

    Raises:
        FileNotFoundError, ValueError: missing or unreadable file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: file not found. The job folder may have been moved or deleted.")
    if name is None:
        from ASSFTActive.io import case_id

        name = case_id(path)
    node = volumesLogic.AddArchetypeVolume(str(path), name, 1 if labelMap else 0)
    if node is None:
        raise ValueError(f"{path}: Slicer could not read this file as a volume. It may be truncated or corrupt.")
    return node
