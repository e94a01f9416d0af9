"""Headless Slicer scene for the module's MRML logic tests (real slicer-core classes, no Qt, no fake ``slicer``).

Usage in a test module::

    import slicer_scene
    slicer = slicer_scene.requireSlicer()       # skips the module when slicer-core is not installed

    def test_x(tmp_path):
        env = slicer_scene.SlicerScene()
        ...

``fakeFinishedJob`` writes the files a finished worker job leaves (result, ranking, overlays, predictions), for the
logic and job-controller tests that load a result without running a worker.

The set-up follows ``notes/slicer-stack.md`` section 1 (what trame-slicer's SlicerApp does) plus three slice views
(Red, Yellow, Green) with their composite nodes, as a desktop layout would create them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO_ROOT / "ASSFTModule"
#: The shipped sample pool (images/, labels/) and three of its volumes for tests that load real files.
SAMPLE_POOL = REPO_ROOT / "ASSFTActive" / "resources" / "sample" / "pool"
SAMPLE_CASES = ("hippocampus_011", "hippocampus_023", "hippocampus_026")
for _path in (str(REPO_ROOT), str(MODULE_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def requireSlicer():
    """Import slicer-core's ``slicer`` or skip the calling test module with the reason."""
    try:
        import slicer
    except ImportError as exc:
        pytest.skip(f"slicer-core is not installed ({exc}); MRML logic tests need it", allow_module_level=True)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the installed 'slicer' package is not slicer-core (no vtkMRMLScene)", allow_module_level=True)
    return slicer


class SlicerScene:
    """A scene with application logic, Colors/Volumes/Segmentations/Markups/Plots logics and three slice views."""

    SLICE_VIEWS = (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal"))

    def __init__(self):
        import slicer
        import vtk

        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        colors = self.appLogic.GetColorLogic()
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.appLogic.SetModuleLogic("Colors", colors)
        self.volumesLogic = self._register(slicer.vtkSlicerVolumesLogic(), "Volumes")
        self.segmentationsLogic = self._register(slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
        self.markupsLogic = self._register(slicer.vtkSlicerMarkupsLogic(), "Markups")
        self.plotsLogic = self._register(slicer.vtkSlicerPlotsLogic(), "Plots")
        self.tablesLogic = self._register(slicer.vtkSlicerTablesLogic(), "Tables")

        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene)
        self.sliceLogics = []
        collection = vtk.vtkCollection()
        for layoutName, orientation in self.SLICE_VIEWS:
            sliceLogic = slicer.vtkMRMLSliceLogic()
            sliceLogic.SetMRMLScene(self.scene)
            sliceLogic.SetMRMLApplicationLogic(self.appLogic)
            sliceNode = sliceLogic.AddSliceNode(layoutName)
            sliceNode.SetOrientation(orientation)
            sliceNode.SetDimensions(256, 256, 1)
            self.sliceLogics.append(sliceLogic)
            collection.AddItem(sliceLogic)
        self.appLogic.SetSliceLogics(collection)

    def _register(self, logic, name):
        logic.SetMRMLScene(self.scene)
        logic.SetMRMLApplicationLogic(self.appLogic)
        self.appLogic.SetModuleLogic(name, logic)
        return logic

    def nodes(self, className: str) -> list:
        count = self.scene.GetNumberOfNodesByClass(className)
        return [self.scene.GetNthNodeByClass(i, className) for i in range(count)]


def rotatedAffine(spacing=(0.8, 1.2, 2.5), angleDegrees=30.0, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A voxel -> RAS matrix rotated about S (and tilted about R) with anisotropic spacing."""
    a = np.deg2rad(angleDegrees)
    b = np.deg2rad(angleDegrees / 3.0)
    rotationS = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rotationR = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rotationS @ rotationR @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def syntheticImage(shape=(20, 16, 12), seed=0) -> np.ndarray:
    """An int16 image ``[I, J, K]`` whose voxels all differ along every axis (a transposition would show)."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    return (i * 1000 + j * 30 + k + rng.integers(0, 3, size=shape)).astype(np.int16)


def syntheticLabels(shape=(20, 16, 12)) -> np.ndarray:
    """Class indices ``[I, J, K]`` with classes 1 and 2 in two separate boxes."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:7, 3:8, 2:6] = 1
    labels[10:16, 6:12, 5:10] = 2
    return labels


def writeModelCard(folder: Path, classNames=("background", "anterior", "posterior"), name="test-unet") -> Path:
    """A valid model card JSON: the embedded card's network with another name and class names (the module reads
    the card with the engine's checks, and uses its name and class names)."""
    from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "card.json"
    card = json.loads(EMBEDDED_DEFAULT_CARD.read_text(encoding="utf-8"))
    card.update(name=name, class_names=list(classNames))
    card["arguments"]["out_channels"] = len(classNames)
    path.write_text(json.dumps(card), encoding="utf-8")
    return path


def fakeFinishedJob(spec, nodes, tmp_path, kind="adapt", activated=True, selected=1):
    """Write what the worker writes at the end of a job: result, ranking, regions, entropy maps, predictions.

    The logic and job-controller tests load these files without running a worker; ``nodes`` are the job's volume
    nodes in the order of ``spec.job.images``; the ``selected`` best-ranked volumes are proposed. Returns the card of
    the new model version (adapt jobs).
    """
    from ASSFTModuleLib import geometry

    from ASSFTActive.io import Volume, write_volume

    jobDir = spec.jobDir
    caseIds = list(spec.job.images)
    proposed = [caseId for caseId in reversed(caseIds) if caseId not in spec.job.labels][:selected]
    cases = []
    predictions = {}
    for rank, (caseId, node) in enumerate(zip(reversed(caseIds), reversed(nodes)), start=1):
        affine = geometry.ijkToRasArray(node)
        entropy = np.zeros((20, 16, 12), np.float32)
        entropy[8:12, 4:9, 3:7] = 0.9
        entropyPath = write_volume(Volume(entropy, affine), jobDir / "overlays" / f"{caseId}_entropy.nii.gz")
        center = (affine @ [9.5, 6.0, 4.5, 1.0])[:3]
        regionsPath = jobDir / "overlays" / f"{caseId}_regions.json"
        regionsPath.write_text(
            json.dumps(
                {
                    "case_id": caseId,
                    "threshold": 0.5,
                    "regions": [
                        {
                            "center_ras": center.tolist(),
                            "bbox_ijk_min": [8, 4, 3],
                            "bbox_ijk_max": [11, 8, 6],
                            "volume_mm3": 193.0,
                            "mean_entropy": 0.9,
                            "voxel_count": 80,
                        }
                    ],
                }
            )
        )
        predictionPath = write_volume(Volume(syntheticLabels(), affine), jobDir / "predictions" / f"{caseId}.nii.gz")
        predictions[caseId] = str(predictionPath)
        cases.append(
            {
                "case_id": caseId,
                "image": spec.job.images[caseId],
                "dkd": 1.0 / rank,
                "asd": 0.1 * rank,
                "score": 1.0 / rank,
                "rank": rank,
                "selected": caseId in proposed,
                "labeled": caseId in spec.job.labels,
                "entropy_map": str(entropyPath),
                "regions": str(regionsPath),
                "prediction": str(predictionPath),
            }
        )
    ranked = {"strategy": "assft", "budget": max(1, len(proposed)), "model": "m", "cases": cases}
    (jobDir / "ranking.json").write_text(json.dumps(ranked))
    newCard = writeModelCard(tmp_path / "store" / "test-unet-adapted-v2", name="test-unet-adapted")
    result = {
        "status": "done",
        "kind": kind,
        "ranking": str(jobDir / "ranking.json"),
        "predictions": predictions,
        "pseudo_labeled": ["case_a"] if kind == "adapt" else [],
        "metrics": {
            "dice": 0.8,
            "activated": activated,
            "pseudo": [{"case_id": "case_a", "kept": True, "rank": 1}, {"case_id": "case_c", "kept": False, "rank": 2}],
        },
        "model_card": str(newCard) if kind == "adapt" else "card-used-for-ranking.json",
    }
    if kind == "adapt":
        result["activated"] = activated
    (jobDir / "result.json").write_text(json.dumps(result))
    (jobDir / "events.jsonl").write_text(json.dumps({"event": "done", "phase": "adapt", "message": "ok"}) + "\n")
    return newCard


def threeVolumeScene(folder: Path):
    """A scene with three rotated volumes ('case b' has a manual segmentation of the model's classes) and the
    logic over it: ``(env, logic, card, cardPath, nodes)``."""
    from ASSFTModuleLib import geometry, segmentation
    from ASSFTModuleLib.logic import ASSFTSceneLogic

    from ASSFTActive.io import Volume

    env = SlicerScene()
    cardPath = writeModelCard(Path(folder) / "model")
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    card = logic.modelCard(cardPath)
    nodes = []
    for n, name in enumerate(["case a", "case b", "case/c"]):
        affine = rotatedAffine(angleDegrees=10.0 * n, origin=(n, -n, 2 * n))
        nodes.append(geometry.addVolumeNode(env.scene, Volume(syntheticImage(seed=n), affine), name))
    labeled = logic.annotationSegmentation(nodes[1], card)
    segmentation.fillSegmentationFromClassLabelmap(
        labeled, Volume(syntheticLabels(), geometry.ijkToRasArray(nodes[1])), card
    )
    return env, logic, card, cardPath, nodes


class RecordingRunner:
    """The job runner interface (start, cancel, isRunning) for job-controller tests: records the commands; the test
    ends the run with :meth:`end` (real runners are tested with real processes in ``test_slicer_cancel.py``)."""

    def __init__(self, onEvent, onFinished):
        self.onEvent, self.onFinished = onEvent, onFinished
        self.commands = []
        self.running = False
        self.cancelled = False

    def start(self, command, environment, workingDirectory):
        self.commands.append(list(command))
        self.running = True

    def isRunning(self):
        return self.running

    def cancel(self):
        self.cancelled = True

    def end(self, exitCode=0, cancelled=False, errorText=""):
        self.running = False
        self.onFinished(exitCode, cancelled, errorText)


def parameterNode(workDirectory, cardPath=None, queryRounds=1, budget=1, method=None):
    """The fields of the module's parameter node the job controller reads and writes (the real node needs desktop
    Slicer): the embedded default model when ``cardPath`` is None, else that card."""
    import types

    from ASSFTModuleLib.parameters import AdaptMethodChoice, ModelSource

    return types.SimpleNamespace(
        modelSource=ModelSource.CardFile if cardPath else ModelSource.Default,
        modelCardPath=Path(cardPath) if cardPath else Path(""),
        workDirectory=workDirectory,
        budget=budget,
        queryRounds=queryRounds,
        adaptMethod=method or AdaptMethodChoice.ASSFT,
        rankingTable=None,
        lastJobDirectory="",
    )


class Signals:
    """What a job controller emitted: status lines, device, failures, outcomes, running states."""

    def __init__(self, controller):
        self.status, self.device, self.failed, self.finished, self.running = [], [], [], [], []
        controller.statusChanged.connect(self.status.append)
        controller.deviceChanged.connect(self.device.append)
        controller.failed.connect(lambda message, details: self.failed.append(message))
        controller.finished.connect(self.finished.append)
        controller.runningChanged.connect(self.running.append)


def finishSampleRankJob(spec, wrongCases=SAMPLE_CASES[1::-1]) -> None:
    """What the worker leaves after ranking: ranking.json with a probably-wrong list, entropy maps and regions on
    each image's grid, predictions, result.json (rank 1 = the last case)."""
    from ASSFTActive.io import Volume, read_volume, write_volume

    job_dir = spec.jobDir
    cases, predictions = [], {}
    for rank, case in enumerate(reversed(list(spec.job.images)), start=1):
        image = read_volume(spec.job.images[case])
        entropy = np.zeros(image.array.shape, np.float32)
        entropy[10:20, 10:20, 10:20] = 0.9
        entropy_path = write_volume(Volume(entropy, image.affine), job_dir / "overlays" / f"{case}_entropy.nii.gz")
        centre = (image.affine @ [15.0, 15.0, 15.0, 1.0])[:3]
        regions_path = job_dir / "overlays" / f"{case}_regions.json"
        regions_path.write_text(
            json.dumps(
                {
                    "case_id": case,
                    "threshold": 0.5,
                    "regions": [
                        {
                            "center_ras": centre.tolist(),
                            "bbox_ijk_min": [10, 10, 10],
                            "bbox_ijk_max": [19, 19, 19],
                            "volume_mm3": 1000.0,
                            "mean_entropy": 0.9,
                            "voxel_count": 1000,
                        }
                    ],
                }
            )
        )
        labels = np.zeros(image.array.shape, np.uint8)
        labels[12:16, 12:16, 12:16] = 1
        prediction = write_volume(Volume(labels, image.affine), job_dir / "predictions" / f"{case}.nii.gz")
        predictions[case] = str(prediction)
        cases.append(
            {
                "case_id": case,
                "image": spec.job.images[case],
                "dkd": 1.0 / rank,
                "asd": 0.1 * rank,
                "score": 1.0 / rank,
                "rank": rank,
                "selected": rank == 1,
                "labeled": False,
                "entropy_map": str(entropy_path),
                "regions": str(regions_path),
                "prediction": str(prediction),
            }
        )
    wrong = {"score": "mean_entropy", "evidence": "Spearman 0.5 on the development split", "cases": list(wrongCases)}
    (job_dir / "ranking.json").write_text(
        json.dumps({"strategy": "assft", "budget": 1, "model": "default", "cases": cases, "probably_wrong": wrong})
    )
    (job_dir / "result.json").write_text(
        json.dumps(
            {
                "status": "done",
                "kind": "rank",
                "ranking": str(job_dir / "ranking.json"),
                "predictions": predictions,
                "model_card": "default",
                "pseudo_labeled": [],
                "metrics": {},
            }
        )
    )
    (job_dir / "events.jsonl").write_text(json.dumps({"event": "done", "phase": "rank", "message": "ok"}) + "\n")
