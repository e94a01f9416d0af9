"""A job folder on the Slicer side: written from the scene, read back when the worker has finished.

Writing (:func:`planJob`, :meth:`JobPlan.writeFiles`): the pool's volumes (hard-linked or
copied when unchanged since loaded, else written from the scene, off the GUI thread), the labeled volumes' class
label maps, ``job.json`` (the engine's :class:`~ASSFTActive.jobs.JobSpec`) and the scene's case list. Reading:
``result.json`` as a :class:`~.records.FinishedJob`, the worker's error and last lines (:func:`failureReport`), the
ranking's query round. Keeping: which folders pruning may remove (:func:`pruneJobFolders`).

The folder follows the engine's job protocol (:mod:`ASSFTActive.jobs`, which writes and reads ``job.json``,
``events.jsonl`` and ``result.json``)::

    JOB_DIR/job.json            inputs (ASSFTActive.jobs.write_job)
    JOB_DIR/slicer-cases.json   which volume node each case came from (node ID, name, token; for a volume linked
                                from its file that file's path, size and time, for one written from the scene a
                                digest of its voxels and grid: written and read here)
    JOB_DIR/images/<case>.nrrd  the scene's volumes (or <case>.nii.gz etc. linked or copied from their files)
    JOB_DIR/labels/<case>.nrrd  class label maps of the labeled volumes
    JOB_DIR/events.jsonl, log.txt, result.json, ...   written by the worker (JOB_DIR/cancel: a GUI's Cancel)
    JOB_DIR/config.json         the ranking's settings; its query_round (ASSFTActive.jobs.read_query_round)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import slicer
from vtk.util import numpy_support

from ASSFTActive.cards import ModelCard
from ASSFTActive.errors import JobError
from ASSFTActive.io import GEOMETRY_TOLERANCE_MM, Volume, atomic_write_text, read_volume, write_volume
from ASSFTActive.jobs import (
    ADAPT_KINDS,
    JOB_KINDS,
    LOG_FILE,
    RESULT_FILE,
    JobSpec,
    RoundPlan,
    read_events,
    read_job_result,
    read_query_round,
    write_job,
)

from .errors import ASSFTModuleError, JobFailedError, ResultFormatError
from .geometry import ijkToRasArray
from .modelCard import modelReference
from .parameters import queryRoundsValue
from .records import FinishedJob, PreparedJob
from .segmentation import (
    conversionVolume,
    findLabelSegmentation,
    requireKnownSegments,
    segmentationToClassLabelmap,
)
from .unitProposals import annotatedConversion, notLabelledReason, proposalsOf

CASES_FILE = "slicer-cases.json"
IMAGE_SUFFIX = ".nrrd"


def caseIdForName(name: str) -> str:
    """A file-name-safe case id from a node name (letters, digits, ``_``, ``-``).

    Dots are replaced too, so that ``<case id>.nrrd`` gives the same id back through the engine's ``case_id``
    (a name like ``a.seg`` would otherwise lose its ``.seg``).
    """
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip()).strip("_-")
    return text or "volume"


def assignCaseIds(names: Sequence[str]) -> list:
    """Unique case ids for node names, in order (``a``, ``a_2``, ``a_3`` for repeated names)."""
    taken = set()
    ids = []
    for name in names:
        base = caseIdForName(name)
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


def newJobDir(workDir, kind: str) -> Path:
    """Create and return a fresh job folder ``<workDir>/jobs/<date>-<time>-<kind>[-n]``."""
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {JOB_KINDS}, got {kind!r}")
    jobsDir = Path(workDir) / "jobs"
    jobsDir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = jobsDir / (f"{stamp}-{kind}" if attempt == 1 else f"{stamp}-{kind}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ASSFTModuleError(f"{jobsDir}: cannot create a new job folder; remove old job folders.")


def readCaseNodes(jobDir) -> Dict[str, dict]:
    """``{case_id: {"node_id": ..., "name": ...}}`` written by :meth:`JobPlan.writeFiles` (empty when missing)."""
    path = Path(jobDir) / CASES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultFormatError(f"{path}: cannot read the case list ({exc}).") from exc
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def jobDirsNewestFirst(workDir) -> list:
    """Every job folder under ``<workDir>/jobs`` that holds a case list, newest first (by when the case list was
    written, i.e. when the job was prepared; then by name)."""
    jobsDir = Path(workDir) / "jobs"
    if not jobsDir.is_dir():
        return []
    folders = [p for p in jobsDir.iterdir() if (p / CASES_FILE).is_file()]
    return sorted(folders, key=lambda p: ((p / CASES_FILE).stat().st_mtime_ns, p.name), reverse=True)


def savedLabelFile(jobDir, caseId: str) -> Optional[Path]:
    """The class label map a job folder holds for ``caseId`` (written when the job was prepared), or None."""
    path = Path(jobDir) / "labels" / f"{caseId}{IMAGE_SUFFIX}"
    return path if path.is_file() else None


def logTail(jobDir, lines: int = 50) -> str:
    """The last ``lines`` lines of the job's ``log.txt`` ("" when there is none)."""
    path = Path(jobDir) / LOG_FILE
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _failureMessage(jobDir: Path) -> str:
    return failureReport(jobDir)[0]


def readJobResult(jobDir) -> FinishedJob:
    """Read ``result.json`` of a finished job with the engine's reader (:func:`ASSFTActive.jobs.read_job_result`,
    which checks it), paths resolved against the job folder.

    Raises:
        JobFailedError: no result, or a status other than ``done`` (message from the last ``error`` event).
        ResultFormatError: a malformed result file (the engine's message: the file and what is wrong).
    """
    jobDir = Path(jobDir)
    try:
        record = read_job_result(jobDir)
    except JobError as exc:
        raise ResultFormatError(str(exc)) from exc
    if record is None:
        raise JobFailedError(f"Job {jobDir.name} failed: {_failureMessage(jobDir)}.", str(jobDir), logTail(jobDir))
    if not record.done:
        message = record.message or _failureMessage(jobDir)
        raise JobFailedError(
            f"Job {jobDir.name} ended with status '{record.status}': {message}.", str(jobDir), logTail(jobDir)
        )
    return FinishedJob(jobDir=jobDir, record=record)


def pruneJobFolders(workDir, keep: int, protect: Sequence = ()) -> list:
    """Remove all but the newest ``keep`` job folders under ``<workDir>/jobs`` (by the time their ``job.json`` was
    written), never one in ``protect`` (e.g. the folder of the ranking shown in the panel, whose images
    and overlays the table points to) and never a folder a worker may still be using (no ``result.json``
    and modified in the last day).

    Returns:
        the removed folders.
    """
    import shutil
    import time

    jobsDir = Path(workDir) / "jobs"
    if not jobsDir.is_dir():
        return []
    protected = {Path(p).resolve() for p in protect if p and str(p) not in (".", "")}
    folders = sorted(
        (p for p in jobsDir.iterdir() if p.is_dir() and (p / "job.json").is_file()),
        key=lambda p: ((p / "job.json").stat().st_mtime_ns, p.name),
        reverse=True,
    )
    removed = []
    for folder in folders[max(int(keep), 0) :]:
        if folder.resolve() in protected:
            continue
        unfinished = not (folder / RESULT_FILE).is_file()
        if unfinished and time.time() - folder.stat().st_mtime < 24 * 3600:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def latestRankingJobDir(workDir) -> str:
    """The newest job folder under ``<workDir>/jobs`` whose ``result.json`` is ``done`` with a ranking ("" when
    there is none); a malformed result does not count."""
    jobsDir = Path(workDir) / "jobs"
    if not jobsDir.is_dir():
        return ""
    folders = sorted(
        (p for p in jobsDir.iterdir() if (p / RESULT_FILE).is_file()),
        key=lambda p: ((p / RESULT_FILE).stat().st_mtime_ns, p.name),
        reverse=True,
    )
    for folder in folders:
        try:
            record = read_job_result(folder)
        except JobError:
            continue
        if record is not None and record.done and record.ranking:
            return str(folder.resolve())
    return ""


def failureReport(jobDir, output: Sequence[str] = (), workerError: str = "", lines: int = 30) -> Tuple[str, str]:
    """``(message, details)`` of a failed job, for the panel and the browser alike.

    Args:
        jobDir: the job folder (None when the job never got one).
        output: the worker's printed lines as the GUI received them (merged stdout/stderr, events as text).
        workerError: the message of the last ``error`` event the worker printed (it prints one even when it refuses
            a job before opening its log, e.g. a job folder with symbolic links).
        lines: how many last lines go into ``details``.

    Returns:
        the worker's error (the message of ``result.json``, else the last ``error`` event of ``events.jsonl``, else
        ``workerError``, else "the worker ended without a result") and the last ``lines`` lines of ``log.txt``,
        else of ``output``.
    """
    message = ""
    if jobDir is not None and Path(jobDir).is_dir():
        try:
            record = read_job_result(jobDir)
        except JobError:
            record = None
        if record is not None and not record.done:
            message = record.message
        errors = [event for event in read_events(jobDir) if event.event == "error"]
        message = message or (errors[-1].message if errors else "")
    details = logTail(jobDir, lines) if jobDir is not None else ""
    if not details:
        details = "\n".join(list(output)[-lines:])
    return message or workerError or "the worker ended without a result", details


def readQueryRound(rankingPath) -> Optional[RoundPlan]:
    """The round of the multi-round query schedule a ranking belongs to (the engine's
    :func:`ASSFTActive.jobs.read_query_round` on the folder of ``rankingPath``); None for a ranking without one.

    Raises:
        ResultFormatError: ``config.json`` is not valid JSON, or its ``query_round`` is malformed (the engine's
            message: the file and what is wrong).
    """
    try:
        return read_query_round(Path(rankingPath).parent)
    except JobError as exc:
        raise ResultFormatError(str(exc)) from exc


def describeQueryRound(plan: RoundPlan, proposed: Optional[int] = None) -> str:
    """One plain line, e.g. ``Query round 2 of 2 (2 + 2 volumes): 2 volumes proposed.``

    Args:
        plan: the round.
        proposed: the volumes the ranking actually proposed, when known (fewer than the round's size when volumes
            were held back as out of distribution); default: the round's size.
    """
    sizes = " + ".join(str(size) for size in plan.budgets)
    where = f"Query round {plan.round_index + 1} of {plan.total_rounds} ({sizes} volume{'' if sizes == '1' else 's'})"
    if plan.total_rounds > 1 and plan.complete:
        return f"{where}: the schedule is complete, no volume proposed."
    count = plan.size if proposed is None else int(proposed)
    if count == 0:
        return f"{where}: no volume proposed."
    return f"{where}: {count} volume{'' if count == 1 else 's'} proposed."


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
    return (
        onDisk.array.shape == inScene.array.shape
        and np.allclose(onDisk.affine, inScene.affine, atol=GEOMETRY_TOLERANCE_MM)
        and np.array_equal(onDisk.array, inScene.array)
    )


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
            "ASSFT needs a scalar (grey-level) volume."
        )
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
    """``{case_id: volume node}`` of a job's case list (:func:`readCaseNodes`) whose node is still the one
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


def sourceFingerprint(path) -> dict:
    """``{"path", "size", "mtime_ns"}`` of a volume's file: what says, without reading it, that a volume loaded
    again later (after a restart of the browser server, or a scene reload) is the very file a job was prepared
    from."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def contentFingerprint(volume: Volume) -> dict:
    """``{"shape", "dtype", "digest"}`` of a volume's voxels and geometry: what says that a volume made in the scene
    again later (loaded from the same DICOM series after a restart or a scene reload: no file to link) holds exactly
    the voxels, on exactly the grid, that a job wrote from the scene. The digest is BLAKE2b over the voxels in the
    node's own memory order ``[K, J, I]`` (no copy for :func:`voxelSnapshot`'s view) and the affine rounded to
    1e-4 mm; about 0.1 s for a 512 x 512 x 100 volume."""
    kji = np.ascontiguousarray(volume.array.transpose(2, 1, 0))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str((kji.shape, kji.dtype.str)).encode("ascii"))
    digest.update(np.round(np.asarray(volume.affine, np.float64), 4).tobytes())
    digest.update(memoryview(kji).cast("B"))
    return {"shape": [int(n) for n in volume.array.shape], "dtype": kji.dtype.str, "digest": digest.hexdigest()}


def caseNodesFromFiles(cases, volumeNodes: Sequence) -> dict:
    """``{case_id: volume node}`` for the cases of a job's case list (:func:`readCaseNodes`) whose volume a node of
    ``volumeNodes`` is again: for a case linked from its file, the node was loaded from that file, unchanged since
    (:func:`sourceFingerprint`: same path, size and modification time; the node not modified since it was read); for
    a case written from the scene (e.g. loaded from DICOM), the node has no file to link and holds the same voxels
    on the same grid (:func:`contentFingerprint`, computed only for nodes of the recorded shape and type). Nodes
    loaded from other files, from the same file since changed, or with other voxels are never matched; each node
    matches one case at most."""
    nodes = _caseNodesFromSourceFiles(cases, volumeNodes)
    rest = [node for node in volumeNodes if node not in nodes.values() and sourceFileCandidate(node) is None]
    nodes.update(_caseNodesFromContent({c: info for c, info in cases.items() if c not in nodes}, rest))
    return nodes


def _caseNodesFromContent(cases, volumeNodes: Sequence) -> dict:
    wanted = {caseId: info["content"] for caseId, info in cases.items() if isinstance(info.get("content"), dict)}
    nodes = {}
    fingerprints = {}
    for caseId, recorded in wanted.items():
        for node in volumeNodes:
            if node in nodes.values():
                continue
            image = node.GetImageData()
            scalars = image.GetPointData().GetScalars() if image is not None else None
            if scalars is None or list(image.GetDimensions()) != list(recorded.get("shape", [])):
                continue
            if node not in fingerprints:
                try:
                    fingerprints[node] = contentFingerprint(voxelSnapshot(node))
                except ASSFTModuleError:  # no voxels or not a scalar volume: never a case's volume
                    fingerprints[node] = {}
            if fingerprints[node].get("digest") == recorded.get("digest") and fingerprints[node].get(
                "dtype"
            ) == recorded.get("dtype"):
                nodes[caseId] = node
                break
    return nodes


def _caseNodesFromSourceFiles(cases, volumeNodes: Sequence) -> dict:
    byFile = {}
    for node in volumeNodes:
        source = sourceFileCandidate(node)
        if source is None:
            continue
        try:
            fingerprint = sourceFingerprint(source)
        except OSError:
            continue
        byFile.setdefault((fingerprint["path"], fingerprint["size"], fingerprint["mtime_ns"]), node)
    nodes = {}
    for caseId, info in cases.items():
        recorded = info.get("source")
        if not isinstance(recorded, dict):
            continue
        key = (str(recorded.get("path", "")), recorded.get("size"), recorded.get("mtime_ns"))
        node = byFile.pop(key, None)
        if node is not None:
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
        sources = {}
        for caseId, (source, inScene) in self.volumes.items():
            if cancelled():
                shutil.rmtree(self.jobDir, ignore_errors=True)
                return None
            target = Path(job.images[caseId])
            if source is not None and sameVoxels(source, inScene):
                sources[caseId] = {"source": sourceFingerprint(source)}
                linkOrCopy(source, target)
            else:
                sources[caseId] = {"content": contentFingerprint(inScene)}
                write_volume(inScene, target)
        # which file each linked case is, or which voxels a case written from the scene has (a volume loaded from
        # DICOM), for re-attaching the results after a restart or a scene reload
        cases = readCaseNodes(self.jobDir)
        for caseId, fingerprint in sources.items():
            if caseId in cases:
                cases[caseId].update(fingerprint)
        atomic_write_text(self.jobDir / CASES_FILE, json.dumps(cases, indent=2))
        for caseId, labels in self.labels.items():
            write_volume(labels, job.labels[caseId])
        Path(job.store).mkdir(parents=True, exist_ok=True)
        write_job(self.jobDir, job)
        return self.prepared


def planJob(
    scene,
    workDir,
    kind: str,
    volumeNodes: Sequence,
    modelCard: ModelCard,
    model: str,
    budget: int,
    storeDir=None,
    modelName: str = "",
    query: Optional[dict] = None,
    finetune: Optional[dict] = None,
    sfr: Optional[dict] = None,
) -> JobPlan:
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

    Volumes under one patient in the scene's subject hierarchy go into the job as one subject (:func:`subjectOf`),
    so that the guard's cross-validation never trains on a patient it scores.

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
    subjects = {caseId: subjectOf(scene, node) for caseId, node in zip(caseIds, volumeNodes)}
    conversions = {}
    ignored = []
    notLabelled = []
    for caseId, node in zip(caseIds, volumeNodes):
        segmentationNode = findLabelSegmentation(scene, node, modelCard)
        if segmentationNode is None:
            continue
        conversion = annotatedConversion(node, segmentationToClassLabelmap(scene, segmentationNode, node, modelCard))
        if conversion is None:  # proposed slices / regions, none marked done: not a labelled volume
            notLabelled.append(notLabelledReason(node))
            continue
        if conversion.unknownSegments:
            if kind in ADAPT_KINDS and conversion.isLabeled:  # training labels must not drop a misnamed class
                requireKnownSegments(conversion, segmentationNode, modelCard)
            ignored.append(f"{segmentationNode.GetName()}: {', '.join(conversion.unknownSegments)}")
        if conversion.isLabeled or proposalsOf(node):  # a done unit's unpainted voxels are annotated background
            conversions[caseId] = conversion
    if kind in ADAPT_KINDS and not conversions:
        raise ASSFTModuleError(
            "Adapt Model needs at least one labeled volume: annotate a proposed volume (Annotate) so that its "
            "segmentation has a non-empty segment named after a model class." + "".join(f" {n}" for n in notLabelled)
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
        job = JobSpec(
            kind=kind,
            images=images,
            labels=labels,
            subjects={caseId: subject for caseId, subject in subjects.items() if subject},
            model=modelReference(model),
            store=str(store),
            name=caseIdForName(modelName) if modelName else "",
            budget=int(budget),
            query=query,
            finetune=dict(finetune or {}),
            sfr=dict(sfr or {}),
        )
    except ValueError as exc:
        jobDir.rmdir()  # still empty: nothing was written yet
        raise ASSFTModuleError(f"Cannot prepare the {kind} job: {exc}.") from exc
    caseNodeIds = {caseId: node.GetID() for caseId, node in zip(caseIds, volumeNodes)}
    cases = {
        caseId: {"node_id": node.GetID(), "name": node.GetName(), "token": caseToken(node)}
        for caseId, node in zip(caseIds, volumeNodes)
    }
    atomic_write_text(jobDir / CASES_FILE, json.dumps(cases, indent=2))
    prepared = PreparedJob(
        jobDir=jobDir, job=job, caseNodeIds=caseNodeIds, ignoredSegments=tuple(ignored), notLabelled=tuple(notLabelled)
    )
    return JobPlan(
        prepared=prepared,
        volumes={caseId: (sources[caseId], snapshots[caseId]) for caseId in caseIds},
        labels={caseId: conversionVolume(conversion) for caseId, conversion in conversions.items()},
    )


def subjectOf(scene, volumeNode) -> str:
    """The patient ``volumeNode`` belongs to in the scene's subject hierarchy (the Data module's tree): the DICOM
    Patient ID of the nearest patient-level item above it, else that item's name; ``""`` when it is under none.
    Volumes of one patient (two frames of one heart, two scans of one patient) are held out together by the
    engine's guard (``JobSpec.subjects``): a volume loaded from DICOM is under its patient; a NIfTI volume is once
    the user drags it under a patient ("Create new subject" in the Data module)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return ""
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    root = hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(volumeNode)
    while item and item != root:
        if hierarchy.GetItemLevel(item) == constants.GetDICOMLevelPatient():
            patientId = hierarchy.GetItemAttribute(item, constants.GetDICOMPatientIDAttributeName()).strip()
            return patientId or hierarchy.GetItemName(item).strip()
        item = hierarchy.GetItemParent(item)
    return ""


def _suffixOf(source: Optional[Path]) -> str:
    """The image suffix in the job: the source file's (linked, copied, or written in its format when the scene's
    voxels differ), else :data:`IMAGE_SUFFIX`."""
    if source is None:
        return IMAGE_SUFFIX
    return next(s for s in LINKABLE_SUFFIXES if source.name.lower().endswith(s))
