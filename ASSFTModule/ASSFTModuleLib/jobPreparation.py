"""Fill a job folder from the scene: the pool's volumes, the labeled volumes' class label maps, ``job.json``
(the engine's :class:`~ASSFTActive.jobs.JobSpec`) and the scene's case list."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from vtk.util import numpy_support

from ASSFTActive.cards import ModelCard
from ASSFTActive.io import GEOMETRY_TOLERANCE_MM, Volume, atomic_write_text, read_volume, write_volume
from ASSFTActive.jobs import ADAPT_KINDS, JobSpec, write_job

from .errors import ASSFTModuleError
from .geometry import ijkToRasArray
from .jobs import CASES_FILE, IMAGE_SUFFIX, assignCaseIds, caseIdForName, newJobDir
from .modelCard import modelReference
from .parameters import queryRoundsValue
from .records import PreparedJob
from .segmentation import (
    conversionVolume,
    findLabelSegmentation,
    requireKnownSegments,
    segmentationToClassLabelmap,
)

#: Source files a job may link instead of copying: one file per volume that the engine reads the same way.
LINKABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def sourceFileCandidate(volumeNode) -> Optional[Path]:
    """The file ``volumeNode`` was loaded from when it may hold exactly the node's voxels (not modified since it was
    read, one file of a linkable format); else None. Cheap: the file is not read (see :func:`sameVoxels`)."""
    storage = volumeNode.GetStorageNode()
    if storage is None or volumeNode.GetModifiedSinceRead() or storage.GetNumberOfFileNames() > 0:
        return None
    fileName = storage.GetFileName() or ""
    if not fileName.lower().endswith(LINKABLE_SUFFIXES) or not os.path.isfile(fileName):
        return None
    return Path(fileName)


def sameVoxels(fileName: Path, inScene: Volume) -> bool:
    """Whether the engine reads exactly ``inScene``'s voxels and geometry from ``fileName`` (reads the file; no
    MRML, so it runs off the GUI thread)."""
    try:
        onDisk = read_volume(fileName)
    except Exception:  # anything the engine cannot read is written from the scene instead
        return False
    return (onDisk.array.shape == inScene.array.shape
            and np.allclose(onDisk.affine, inScene.affine, atol=GEOMETRY_TOLERANCE_MM)
            and np.array_equal(onDisk.array, inScene.array))


def voxelSnapshot(volumeNode) -> Volume:
    """The node's voxels ``[I, J, K]`` and affine without copying them: a view of the node's current VTK array,
    which the view keeps alive (a filter that replaces the node's image data leaves this array as it was). For
    writing the volume off the GUI thread."""
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ASSFTModuleError(f"Volume '{volumeNode.GetName()}' has no voxel data. Load the image again.")
    scalars = image.GetPointData().GetScalars()
    if scalars.GetNumberOfComponents() != 1:
        raise ASSFTModuleError(
            f"Volume '{volumeNode.GetName()}' has {scalars.GetNumberOfComponents()} components per voxel; "
            "ASSFT needs a scalar (grey-level) volume.")
    i, j, k = image.GetDimensions()
    kji = numpy_support.vtk_to_numpy(scalars).reshape(k, j, i)
    return Volume(array=kji.transpose(2, 1, 0), affine=ijkToRasArray(volumeNode))


def linkOrCopy(source: Path, target: Path) -> Path:
    """``target`` as a hard link to ``source``, else (another filesystem, a filesystem without hard links) a copy.

    Never a symbolic link: the worker refuses job folders that hold links it would have to follow.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(str(Path(source).resolve()), str(target))
    except (OSError, NotImplementedError):
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(str(source), str(partial))
        os.replace(str(partial), str(target))
    return target


#: Attribute of a pool volume node: a token written into the job's case list, so that a job's results are attached
#: only to the node it was prepared from (Slicer reuses node IDs after a scene is closed).
CASE_TOKEN_ATTRIBUTE = "ASSFT.CaseToken"


def caseToken(volumeNode) -> str:
    """The node's :data:`CASE_TOKEN_ATTRIBUTE`, set to a new random token the first time."""
    token = volumeNode.GetAttribute(CASE_TOKEN_ATTRIBUTE)
    if not token:
        token = uuid.uuid4().hex
        volumeNode.SetAttribute(CASE_TOKEN_ATTRIBUTE, token)
    return token


def caseNodesInScene(scene, cases) -> dict:
    """``{case_id: volume node}`` of a job's case list (:func:`~.jobs.readCaseNodes`) whose node is still the one
    the job was prepared from: same ID *and* same :data:`CASE_TOKEN_ATTRIBUTE` (a case list without tokens, from an
    older version, needs the same ID and name). A node that took over a reused ID after the scene was closed is not
    the case's node."""
    nodes = {}
    for caseId, info in cases.items():
        node = scene.GetNodeByID(info.get("node_id", "") or "")
        if node is None:
            continue
        token = info.get("token")
        if token is not None and node.GetAttribute(CASE_TOKEN_ATTRIBUTE) != token:
            continue
        if token is None and node.GetName() != info.get("name"):
            continue
        nodes[caseId] = node
    return nodes


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """A job taken from the scene, its files not written yet: :meth:`writeFiles` writes them without touching MRML,
    so it runs off the GUI thread (re-encoding a 512 x 512 x 100 volume takes about a second).

    Attributes:
        prepared: the job as it will be once written (folder, ``job.json``'s spec with the final image paths).
        volumes: ``{case_id: (source file that may be linked or None, the node's voxels)}``.
        labels: ``{case_id: class label map}`` of the labeled volumes.
    """

    prepared: PreparedJob
    volumes: Dict[str, Tuple[Optional[Path], Volume]]
    labels: Dict[str, Volume]

    @property
    def jobDir(self) -> Path:
        return self.prepared.jobDir

    def writeFiles(self, cancelled: Callable[[], bool] = lambda: False) -> Optional[PreparedJob]:
        """Link, copy or write every image, write the label maps, then ``job.json`` (last: a folder with ``job.json``
        is complete). Returns the prepared job, or None when ``cancelled()`` became true (the folder is removed)."""
        job = self.prepared.job
        for caseId, (source, inScene) in self.volumes.items():
            if cancelled():
                shutil.rmtree(self.jobDir, ignore_errors=True)
                return None
            target = Path(job.images[caseId])
            if source is not None and sameVoxels(source, inScene):
                linkOrCopy(source, target)
            else:
                write_volume(inScene, target)
        for caseId, labels in self.labels.items():
            write_volume(labels, job.labels[caseId])
        Path(job.store).mkdir(parents=True, exist_ok=True)
        write_job(self.jobDir, job)
        return self.prepared


def prepareJob(scene, workDir, kind: str, volumeNodes: Sequence, modelCard: ModelCard, model: str, budget: int,
               storeDir=None, modelName: str = "", query: Optional[dict] = None,
               finetune: Optional[dict] = None, sfr: Optional[dict] = None) -> PreparedJob:
    """Write the scene's volumes and labels into a new job folder with its ``job.json`` (:func:`planJob`, then
    :meth:`JobPlan.writeFiles` in this thread); arguments and errors as :func:`planJob`."""
    return planJob(scene, workDir, kind, volumeNodes, modelCard, model, budget, storeDir=storeDir,
                   modelName=modelName, query=query, finetune=finetune, sfr=sfr).writeFiles()


def planJob(scene, workDir, kind: str, volumeNodes: Sequence, modelCard: ModelCard, model: str, budget: int,
            storeDir=None, modelName: str = "", query: Optional[dict] = None,
            finetune: Optional[dict] = None, sfr: Optional[dict] = None) -> JobPlan:
    """Take a job from the scene (the GUI-thread part: checks, label maps, a view of each volume's voxels, the job
    folder and its case list); :meth:`JobPlan.writeFiles` writes the volumes, labels and ``job.json``.

    A volume loaded from a NIfTI/NRRD/MetaImage file and unchanged since is linked into the job folder
    (:func:`linkOrCopy`, after :func:`sameVoxels` checked it) rather than re-encoded; others are written from the
    scene.

    A volume counts as labeled when its segmentation (:func:`~.segmentation.findLabelSegmentation`) has a
    non-empty segment named after a model class; its class label map goes to ``labels/``. Segments with other
    names are never guessed: a ``rank`` job leaves them out (listed in ``PreparedJob.ignoredSegments``); an
    ``adapt`` or ``sfr`` job refuses a labeled segmentation that has them (a misnamed class would train as
    background).

    Args:
        scene: the MRML scene.
        workDir: folder for jobs (``<workDir>/jobs``) and, by default, the model store (``<workDir>/models``).
        kind: ``rank``, ``adapt`` or ``sfr`` (Adapt Model with SFR / SFR+).
        volumeNodes: the pool (scalar volume nodes).
        modelCard: the active model's card (class names).
        model: ``"default"`` or the card path, as the user chose it.
        budget: volumes to propose; with ``query["rounds"]`` R > 1 the schedule's total over R rounds.
        storeDir: model store folder; default ``<workDir>/models``.
        modelName: name of the adapted model in the store; default ``""``: the engine names it
            (``ASSFTActive.finetune.adapt.default_name``: an adapted model's next version keeps its name, a
            pre-trained model's becomes ``<card name>-adapted``). The rule lives in the engine only.
        query, finetune: engine configuration dictionaries passed through unchanged, except ``query["rounds"]``
            (the multi-round schedule, :func:`~.parameters.queryRoundsValue`), checked and written as a whole
            number; the worker uses it for a ``rank`` job and for the re-rank after an ``adapt`` / ``sfr`` job.
        sfr: the SFR settings of an ``sfr`` job (``JobSpec.sfr``, e.g. ``{"method": "sfr_plus"}``), unchanged.

    Returns:
        :class:`JobPlan`.

    Raises:
        ASSFTModuleError: no volumes, a volume under a transform, ``adapt`` / ``sfr`` without any labeled volume,
            query rounds that are not a whole number >= 1, or settings the engine's
            :class:`~ASSFTActive.jobs.JobSpec` refuses (budget, ``finetune``, ``sfr``).
        UnknownSegmentNamesError: an ``adapt`` / ``sfr`` job, and a labeled segmentation has segments that are not
            model classes.
    """
    if not volumeNodes:
        raise ASSFTModuleError("There are no volumes to work on. Load the unlabeled volumes into the scene first.")
    for node in volumeNodes:
        transform = node.GetParentTransformNode()
        if transform is not None:
            raise ASSFTModuleError(
                f"Volume '{node.GetName()}' is under transform '{transform.GetName()}'. Harden the transform "
                "(Data module: right-click, Harden transform) or remove it, so that the engine sees the geometry "
                "shown on screen."
            )
    caseIds = assignCaseIds([node.GetName() for node in volumeNodes])
    conversions = {}
    ignored = []
    for caseId, node in zip(caseIds, volumeNodes):
        segmentationNode = findLabelSegmentation(scene, node, modelCard)
        if segmentationNode is None:
            continue
        conversion = segmentationToClassLabelmap(scene, segmentationNode, node, modelCard)
        if conversion.unknownSegments:
            if kind in ADAPT_KINDS and conversion.isLabeled:  # training labels must not drop a misnamed class
                requireKnownSegments(conversion, segmentationNode, modelCard)
            ignored.append(f"{segmentationNode.GetName()}: {', '.join(conversion.unknownSegments)}")
        if conversion.isLabeled:
            conversions[caseId] = conversion
    if kind in ADAPT_KINDS and not conversions:
        raise ASSFTModuleError(
            "Adapt Model needs at least one labeled volume: annotate a proposed volume (Annotate) so that its "
            "segmentation has a non-empty segment named after a model class."
        )

    if int(budget) < 1:
        raise ASSFTModuleError(f"The budget must be at least 1 volume, got {budget}.")
    query = dict(query or {})
    if "rounds" in query:
        query["rounds"] = queryRoundsValue(query["rounds"])
    sources = {caseId: sourceFileCandidate(node) for caseId, node in zip(caseIds, volumeNodes)}
    snapshots = {caseId: voxelSnapshot(node) for caseId, node in zip(caseIds, volumeNodes)}
    jobDir = newJobDir(workDir, kind).resolve()
    images = {caseId: jobDir / "images" / f"{caseId}{_suffixOf(sources[caseId])}" for caseId in caseIds}
    labels = {caseId: jobDir / "labels" / f"{caseId}{IMAGE_SUFFIX}" for caseId in caseIds if caseId in conversions}
    store = (Path(storeDir) if storeDir else Path(workDir) / "models").resolve()
    try:
        job = JobSpec(kind=kind, images=images, labels=labels, model=modelReference(model), store=str(store),
                      name=caseIdForName(modelName) if modelName else "", budget=int(budget),
                      query=query, finetune=dict(finetune or {}), sfr=dict(sfr or {}))
    except ValueError as exc:
        jobDir.rmdir()  # still empty: nothing was written yet
        raise ASSFTModuleError(f"Cannot prepare the {kind} job: {exc}.") from exc
    caseNodeIds = {caseId: node.GetID() for caseId, node in zip(caseIds, volumeNodes)}
    cases = {caseId: {"node_id": node.GetID(), "name": node.GetName(), "token": caseToken(node)}
             for caseId, node in zip(caseIds, volumeNodes)}
    atomic_write_text(jobDir / CASES_FILE, json.dumps(cases, indent=2))
    prepared = PreparedJob(jobDir=jobDir, job=job, caseNodeIds=caseNodeIds, ignoredSegments=tuple(ignored))
    return JobPlan(prepared=prepared, volumes={caseId: (sources[caseId], snapshots[caseId]) for caseId in caseIds},
                   labels={caseId: conversionVolume(conversion) for caseId, conversion in conversions.items()})


def _suffixOf(source: Optional[Path]) -> str:
    """The image suffix in the job: the source file's (linked, copied, or written in its format when the scene's
    voxels differ), else :data:`~.jobs.IMAGE_SUFFIX`."""
    if source is None:
        return IMAGE_SUFFIX
    return next(s for s in LINKABLE_SUFFIXES if source.name.lower().endswith(s))

