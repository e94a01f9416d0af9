"""Segmentations whose segments are the model's classes, and their conversion to and from class label maps.

A segment maps to a class only by its name (``ModelCard.class_names``); a segment with any other name is
reported (:class:`LabelConversion.unknownSegments`, :class:`UnknownSegmentNamesError`), never guessed.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ASSFTActive.cards import ModelCard
from ASSFTActive.io import Volume

from .errors import UnknownSegmentNamesError
from .geometry import ijkToRasArray, loadVolumeFile, sameGeometry, volumeFromNode, vtkMatrixFromArray
from .records import LabelConversion

#: Node attribute naming what an ASSFT node is for (annotation, prediction, entropy, regions, ranking, ...).
ROLE_ATTRIBUTE = "ASSFT.Role"
#: Node attribute holding the ID of the volume node an ASSFT node belongs to.
VOLUME_ATTRIBUTE = "ASSFT.VolumeID"

ANNOTATION_ROLE = "annotation"
PREDICTION_ROLE = "prediction"

#: Attribute of a segmentation the module did not create: ``"1"`` when the user marked it as expert labels of its
#: volume (the tick per volume). Without it an automatic segmentation (TotalSegmentator, MONAI Auto3DSeg) whose
#: segments are named after the model's classes is not used as labels.
EXPERT_LABEL_ATTRIBUTE = "ASSFT.ExpertLabel"

#: Segment colours by foreground class (cycled when a model has more classes): blues, greens, cyans and purples
#: only, so that no class colour can be taken for the entropy overlay's dark-red-to-yellow heat map (PET-Heat).
CLASS_COLORS = (
    (0.20, 0.45, 0.95),  # blue
    (0.20, 0.80, 0.35),  # green
    (0.10, 0.80, 0.85),  # cyan
    (0.60, 0.35, 0.95),  # purple
    (0.90, 0.30, 0.85),  # magenta
    (0.45, 0.70, 1.00),  # sky blue
    (0.10, 0.50, 0.30),  # dark green
    (0.35, 0.20, 0.65),  # violet
)

_REFERENCE_ROLE = "referenceImageGeometryRef"


def classColor(classIndex: int) -> tuple:
    """Display colour of a foreground class (index >= 1)."""
    return CLASS_COLORS[(classIndex - 1) % len(CLASS_COLORS)]


def classIndexOfSegment(modelCard: ModelCard, segmentName: str) -> Optional[int]:
    """Class index of a segment name (exact match after stripping spaces), None when it is not a class."""
    try:
        return modelCard.class_names.index(segmentName.strip())
    except ValueError:
        return None


def segmentNames(segmentationNode) -> List[str]:
    """Names of the segments, in segment order."""
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def _segmentIdByName(segmentationNode, name: str) -> Optional[str]:
    segmentation = segmentationNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        if segmentation.GetNthSegment(i).GetName().strip() == name:
            return segmentation.GetNthSegmentID(i)
    return None


def _nodesByClass(scene, className: str) -> list:
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def findSegmentationForVolume(scene, volumeNode, role: str = ANNOTATION_ROLE):
    """The ASSFT segmentation of ``volumeNode`` for ``role`` (one this module made), or None.

    A segmentation the user made on the volume is not returned: the module never edits it (see
    :func:`findLabelSegmentation` for reading labels from it).
    """
    volumeId = volumeNode.GetID()
    for node in _nodesByClass(scene, "vtkMRMLSegmentationNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == role and node.GetAttribute(VOLUME_ATTRIBUTE) == volumeId:
            return node
    return None


def userSegmentationsForVolume(scene, volumeNode) -> list:
    """Segmentations made outside the module on ``volumeNode`` (reference geometry set to it, no ASSFT role)."""
    return [
        node
        for node in _nodesByClass(scene, "vtkMRMLSegmentationNode")
        if node.GetAttribute(ROLE_ATTRIBUTE) is None and node.GetNodeReferenceID(_REFERENCE_ROLE) == volumeNode.GetID()
    ]


def isExpertLabel(segmentationNode) -> bool:
    """Whether a segmentation counts as expert labels: the module's annotation segmentation (made with Annotate),
    or another segmentation the user marked so (:func:`setExpertLabel`)."""
    if segmentationNode.GetAttribute(ROLE_ATTRIBUTE) == ANNOTATION_ROLE:
        return True
    return segmentationNode.GetAttribute(EXPERT_LABEL_ATTRIBUTE) == "1"


def setExpertLabel(segmentationNode, expert: bool) -> None:
    """Mark (or unmark) a segmentation the module did not create as the expert labels of its volume."""
    segmentationNode.SetAttribute(EXPERT_LABEL_ATTRIBUTE, "1" if expert else "0")


def expertLabelCandidates(scene, volumeNode, modelCard: ModelCard) -> list:
    """Segmentations made outside the module on ``volumeNode`` with a segment named after a model class: what the
    per-volume "expert labels" tick offers (each with :func:`isExpertLabel`)."""
    return [node for node in userSegmentationsForVolume(scene, volumeNode) if hasClassSegment(node, modelCard)]


def showOnlySegmentationsOf(scene, volumeNode) -> int:
    """Hide every segmentation drawn on another volume: ASSFT annotations and predictions of other volumes, and
    segmentations whose reference geometry is another volume. The volume's own annotation is shown.

    Returns:
        the number of segmentations hidden.
    """
    volumeId = volumeNode.GetID()
    hidden = 0
    for node in _nodesByClass(scene, "vtkMRMLSegmentationNode"):
        display = node.GetDisplayNode()
        if display is None:
            continue
        role = node.GetAttribute(ROLE_ATTRIBUTE)
        owner = node.GetAttribute(VOLUME_ATTRIBUTE) if role else node.GetNodeReferenceID(_REFERENCE_ROLE)
        if owner and owner != volumeId:
            if display.GetVisibility():
                display.SetVisibility(False)
                hidden += 1
        elif role == ANNOTATION_ROLE:
            display.SetVisibility(True)
    return hidden


def hasClassSegment(segmentationNode, modelCard: ModelCard) -> bool:
    """Whether a segment is named after a foreground class of the model."""
    return any((classIndexOfSegment(modelCard, name) or 0) > 0 for name in segmentNames(segmentationNode))


def findLabelSegmentation(scene, volumeNode, modelCard: ModelCard):
    """The segmentation the labels of ``volumeNode`` are read from, or None.

    The ASSFT annotation segmentation when there is one; else the first segmentation made outside the module on the
    volume that the user marked as expert labels (:func:`setExpertLabel`) and that has a segment named after a
    model class (read only). An unmarked segmentation (an automatic one from TotalSegmentator, say) is never used
    as labels, and one with other names only (a "liver" from another project) is not an annotation for this model.
    """
    node = findSegmentationForVolume(scene, volumeNode)
    if node is not None:
        return node
    for candidate in expertLabelCandidates(scene, volumeNode, modelCard):
        if isExpertLabel(candidate):
            return candidate
    return None


def ensureClassSegmentation(scene, volumeNode, modelCard: ModelCard, role: str = ANNOTATION_ROLE, name: str = ""):
    """Find or create the ASSFT segmentation of ``volumeNode`` with one segment per foreground class.

    Existing segments are kept (their content too); missing class segments are added empty, named and coloured
    after the class. A new annotation segmentation starts with copies of the class-named segments of a
    segmentation the user made on the volume; the user's own segmentation is never changed.

    Returns:
        the ``vtkMRMLSegmentationNode``.
    """
    node = findSegmentationForVolume(scene, volumeNode, role)
    if node is None:
        userNode = findLabelSegmentation(scene, volumeNode, modelCard) if role == ANNOTATION_ROLE else None
        suffix = "segmentation" if role == ANNOTATION_ROLE else role
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volumeNode.GetName()} {suffix}")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        node.SetAttribute(VOLUME_ATTRIBUTE, volumeNode.GetID())
        if userNode is not None:
            source = userNode.GetSegmentation()
            for i in range(source.GetNumberOfSegments()):
                if (classIndexOfSegment(modelCard, source.GetNthSegment(i).GetName()) or 0) > 0:
                    node.GetSegmentation().CopySegmentFromSegmentation(source, source.GetNthSegmentID(i))
    segmentation = node.GetSegmentation()
    for classIndex, className in enumerate(modelCard.class_names):
        if classIndex == 0 or _segmentIdByName(node, className) is not None:
            continue
        segmentId = segmentation.GenerateUniqueSegmentID(className)
        segmentation.AddEmptySegment(segmentId, className, classColor(classIndex))
    return node


def _orientedMask(mask: np.ndarray, affine: np.ndarray):
    """A ``vtkOrientedImageData`` (uint8) from a boolean ``[I, J, K]`` mask and its voxel -> RAS matrix."""
    i, j, k = mask.shape
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, i - 1, 0, j - 1, 0, k - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    view = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(k, j, i)
    view[:] = mask.transpose(2, 1, 0)  # no intermediate copies: a 512 x 512 x 100 mask is 26 MB
    image.SetImageToWorldMatrix(vtkMatrixFromArray(affine))
    return image


def fillSegmentationFromClassLabelmap(segmentationNode, labels: Volume, modelCard: ModelCard) -> Dict[str, int]:
    """Set every class segment to the voxels of its class in ``labels`` (replacing the segment's content).

    Args:
        segmentationNode: a segmentation with the class segments (see :func:`ensureClassSegmentation`).
        labels: class indices ``[I, J, K]`` with their voxel -> RAS affine (e.g. a model prediction).
        modelCard: gives the class names.

    Returns:
        voxels written per foreground class name.

    Raises:
        ValueError: ``labels`` holds values that are not classes of the model.
    """
    values = np.asarray(labels.array)
    outside = (values < 0) | (values >= len(modelCard.class_names))  # not np.unique: a sort of every voxel
    unknown = [int(v) for v in np.unique(values[outside])] if outside.any() else []
    if unknown:
        raise ValueError(
            f"Label map values {unknown} are not classes of model '{modelCard.name}' "
            f"(0..{len(modelCard.class_names) - 1}); use the prediction of this model."
        )
    counts: Dict[str, int] = {}
    for classIndex, className in enumerate(modelCard.class_names):
        if classIndex == 0:
            continue
        segmentId = _segmentIdByName(segmentationNode, className)
        if segmentId is None:
            segmentId = segmentationNode.GetSegmentation().AddEmptySegment(className, className, classColor(classIndex))
        mask = values == classIndex
        counts[className] = int(np.count_nonzero(mask))
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            _orientedMask(mask, labels.affine),
            segmentationNode,
            segmentId,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        )
    return counts


def _classColorTable(scene, classNames: Sequence[str]):
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "ASSFT class colours (temporary)")
    table.SetHideFromEditors(True)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(classNames))
    for classIndex, className in enumerate(classNames):
        color = (0.0, 0.0, 0.0) if classIndex == 0 else classColor(classIndex)
        table.SetColor(classIndex, className, color[0], color[1], color[2], 0.0 if classIndex == 0 else 1.0)
    return table


def segmentationToClassLabelmap(scene, segmentationNode, volumeNode, modelCard: ModelCard) -> LabelConversion:
    """Convert a segmentation into class indices on the grid of ``volumeNode``, mapping segments by name.

    Segments named after a foreground class get that class's index; a segment named ``background`` is ignored;
    any other name is listed in ``unknownSegments`` and left out. Where segments overlap the higher class wins.

    Returns:
        :class:`LabelConversion` with ``labels [I, J, K]`` and ``affine`` equal to the volume's IJK->RAS.
    """
    classNames = modelCard.class_names
    known: List[tuple] = []
    unknown: List[str] = []
    segmentation = segmentationNode.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetNthSegment(i).GetName()
        classIndex = classIndexOfSegment(modelCard, name)
        if classIndex is None:
            unknown.append(name)
        elif classIndex > 0:
            known.append((classIndex, segmentation.GetNthSegmentID(i)))
    known.sort()

    image = volumeNode.GetImageData()
    if image is None:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has no voxel data. Load the image again.")
    shape = tuple(int(n) for n in image.GetDimensions())  # [I, J, K]; the voxels themselves are not needed
    dtype = np.uint8 if len(classNames) <= 256 else np.int16
    labels = np.zeros(shape, dtype=dtype, order="F")
    if known:
        segmentIds = vtk.vtkStringArray()
        for _, segmentId in known:
            segmentIds.InsertNextValue(segmentId)
        colorTable = _classColorTable(scene, classNames)
        labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ASSFT export (temporary)")
        try:
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode,
                segmentIds,
                labelmapNode,
                volumeNode,
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                colorTable,
            )
            if not ok:
                raise RuntimeError(
                    f"Slicer could not export segmentation '{segmentationNode.GetName()}' onto volume "
                    f"'{volumeNode.GetName()}'."
                )
            exported = volumeFromNode(labelmapNode)
            if exported.shape != shape:
                raise RuntimeError(f"Exported label map shape {exported.shape} differs from volume shape {shape}.")
            labels = exported.array.astype(dtype, copy=False)
        finally:
            _removeNodeAndDisplay(scene, labelmapNode)
            scene.RemoveNode(colorTable)
    counts = {name: int(np.count_nonzero(labels == index)) for index, name in enumerate(classNames) if index > 0}
    return LabelConversion(
        labels=labels, affine=ijkToRasArray(volumeNode), voxelCounts=counts, unknownSegments=tuple(unknown)
    )


def requireKnownSegments(conversion: LabelConversion, segmentationNode, modelCard: ModelCard) -> None:
    """Raise :class:`UnknownSegmentNamesError` when the conversion found segments that are not model classes."""
    if conversion.unknownSegments:
        raise UnknownSegmentNamesError(segmentationNode.GetName(), conversion.unknownSegments, modelCard.class_names)


def conversionVolume(conversion: LabelConversion) -> Volume:
    """The class label map of a conversion as an engine :class:`Volume` (for ``ASSFTActive.io.write_volume``)."""
    return Volume(array=conversion.labels, affine=conversion.affine)


def readClassLabelmapFile(scene, volumesLogic, path: str) -> Volume:
    """Read a class label map file (e.g. a prediction) with Slicer's reader; no node stays in the scene."""
    node = loadVolumeFile(volumesLogic, str(path), name="ASSFT label map (temporary)", labelMap=True)
    try:
        return volumeFromNode(node)
    finally:
        _removeNodeAndDisplay(scene, node)


def readClassLabelmapFileOnGrid(scene, volumesLogic, path: str, volumeNode) -> Volume:
    """Read a class label map file that must lie on the voxel grid of ``volumeNode`` (e.g. a label file saved
    for it); no node stays in the scene.

    Raises:
        FileNotFoundError, ValueError: missing or unreadable file, or a label map on another voxel grid.
    """
    node = loadVolumeFile(volumesLogic, str(path), name="ASSFT label map (temporary)", labelMap=True)
    try:
        if not sameGeometry(node, volumeNode):
            raise ValueError(
                f"its voxel grid differs from that of '{volumeNode.GetName()}'; it belongs to another image"
            )
        return volumeFromNode(node)
    finally:
        _removeNodeAndDisplay(scene, node)


def prefillFromPrediction(
    scene,
    volumesLogic,
    segmentationNode,
    predictionPath: str,
    modelCard: ModelCard,
    overwrite: bool = False,
    volumeNode=None,
) -> bool:
    """Fill the class segments from a prediction label map file.

    Manual work is never overwritten silently: when the segmentation already has non-empty class segments
    the prediction is not applied unless ``overwrite`` is true.

    Returns:
        True when the prediction was applied.
    """
    if not overwrite and volumeNode is not None:
        conversion = segmentationToClassLabelmap(scene, segmentationNode, volumeNode, modelCard)
        if conversion.isLabeled:
            return False
    labels = readClassLabelmapFile(scene, volumesLogic, predictionPath)
    fillSegmentationFromClassLabelmap(segmentationNode, labels, modelCard)
    return True


def showPredictionSegmentation(scene, volumeNode, labels: Volume, modelCard: ModelCard):
    """Create or refresh the read-only prediction segmentation of a volume (kept apart from manual work)."""
    node = ensureClassSegmentation(
        scene, volumeNode, modelCard, role=PREDICTION_ROLE, name=f"{volumeNode.GetName()} prediction"
    )
    fillSegmentationFromClassLabelmap(node, labels, modelCard)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetOpacity2DFill(0.3)
    return node


def _removeNodeAndDisplay(scene, node) -> None:
    if node is None:
        return
    attached = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    attached.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for other in attached:
        if other is not None:
            scene.RemoveNode(other)
