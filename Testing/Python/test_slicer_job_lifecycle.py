"""What an annotator hit in the job lifecycle (issue 26), on real MRML through slicer-core: other cases' labels over
the case shown, the shown ranking's folder pruned, links across filesystems, a silent worker failure, results
attached to new volumes after the scene was closed, automatic segmentations used as expert labels, one progress
bar per job."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, jobFolder, ranking, segmentation  # noqa: E402
from ASSFTModuleLib.jobController import CANCELLED, DONE, ERROR, JobController  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.records import OutputLine  # noqa: E402
from slicer_scene import RecordingRunner, Signals, fakeFinishedJob, parameterNode  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402
from ASSFTActive.progress import Event  # noqa: E402


def controllerFor(tmp_path):
    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    return env, logic, card, controller, Signals(controller), nodes


def rowOf(table, volumeNode) -> int:
    return next(
        row
        for row in range(table.GetNumberOfRows())
        if ranking.rankedCaseFromTable(table, row)[1] == volumeNode.GetID()
    )


def visible(node) -> bool:
    return bool(node.GetDisplayNode().GetVisibility())


def test_showing_a_case_hides_every_other_cases_labels(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    controller._runner.end(0)
    table = controller.parameterNode.rankingTable
    otherAnnotation = logic.annotationSegmentation(nodes[0], card)  # painted on case a
    userOnOther = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my work on case b")
    userOnOther.CreateDefaultDisplayNodes()
    userOnOther.SetReferenceImageGeometryParameterFromVolumeNode(nodes[1])
    view = logic.showCase(table, rowOf(table, nodes[2]), threshold=0.3, opacity=0.5)

    assert view.volumeNode is nodes[2]
    caseB = segmentation.findSegmentationForVolume(env.scene, nodes[1])
    assert not visible(otherAnnotation) and not visible(caseB) and not visible(userOnOther)
    ownAnnotation = logic.annotationSegmentation(nodes[2], card)
    assert visible(ownAnnotation)
    # back to case a: its own annotation is drawn again, case c's is not
    logic.showCase(table, rowOf(table, nodes[0]), threshold=0.3, opacity=0.5)
    assert visible(otherAnnotation) and not visible(ownAnnotation)


def test_failed_and_cancelled_jobs_never_push_the_shown_ranking_out(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    controller.keepJobFolders = 2
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    controller._runner.end(0)
    rankingDir = spec.jobDir
    table = controller.parameterNode.rankingTable
    assert logic.rankingJobDirectory(table) == str(rankingDir.resolve())

    for n in range(4):  # three failed Adapts and a cancelled one
        failed = controller.startJob("adapt")
        status = "cancelled" if n == 3 else "error"
        (failed.jobDir / "result.json").write_text(json.dumps({"status": status, "message": "the labels look wrong"}))
        controller._runner.end(1, cancelled=n == 3)
    assert signals.finished[-1].status == CANCELLED

    assert rankingDir.is_dir()
    view = logic.showCase(table, 2, threshold=0.3, opacity=0.5)  # an unviewed row still has its overlay
    assert view.overlayNode is not None and view.regions
    # with the table gone (a new scene), the newest successful ranking is still protected
    assert str(rankingDir.resolve()) in logic.protectedJobFolders(tmp_path / "work", None)


def test_image_on_another_filesystem_is_copied_never_symlinked(tmp_path, monkeypatch):
    env = slicer_scene.SlicerScene()
    cardPath = slicer_scene.writeModelCard(tmp_path / "model")
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    source = write_volume(
        Volume(slicer_scene.syntheticImage(), slicer_scene.rotatedAffine()), tmp_path / "data" / "scan.nii.gz"
    )
    env.volumesLogic.AddArchetypeVolume(str(source), "scan", 0)

    def crossDevice(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(jobFolder.os, "link", crossDevice)
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)

    image = Path(spec.job.images["scan"])
    assert image.name == "scan.nii.gz" and not image.is_symlink() and image.is_file()
    assert not os.path.samefile(image, source)
    assert image.read_bytes() == source.read_bytes()
    assert not any(p.is_symlink() for p in (spec.jobDir / "images").iterdir())


def test_worker_refusal_before_its_log_shows_the_error_and_its_last_lines(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    states = []
    controller.progressStateChanged.connect(states.append)
    spec = controller.startJob("rank")
    refusal = "the job folder contains symbolic links (images/case_a.nrrd); the worker refuses to follow links"
    controller._onEvent(OutputLine("Traceback is not needed here: the worker explains"))
    controller._onEvent(Event("error", phase="error", message=refusal))
    controller._runner.end(1)

    outcome = signals.finished[-1]
    assert outcome.status == ERROR and refusal in outcome.message
    assert "the worker explains" in outcome.details and refusal in outcome.details
    assert controller.failureReport(spec.jobDir)[0] == refusal
    assert states[-1].status == "failed" and states[-1].fraction < 1.0 and "failed at" in states[-1].describe()


def test_closing_the_scene_mid_job_never_attaches_results_to_new_volumes_with_reused_ids(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    spec = controller.startJob("adapt")
    fakeFinishedJob(spec, nodes, tmp_path)
    oldIds = [node.GetID() for node in nodes]
    env.scene.Clear(0)  # File > Close Scene; the panel binds the new scene's parameter node
    controller.setParameterNode(parameterNode(tmp_path / "work", controller.parameterNode.modelCardPath))
    newNodes = [
        geometry.addVolumeNode(
            env.scene, Volume(slicer_scene.syntheticImage(seed=9), slicer_scene.rotatedAffine()), f"unrelated {n}"
        )
        for n in range(3)
    ]
    assert [node.GetID() for node in newNodes] == oldIds  # Slicer reuses the IDs

    controller._runner.end(0)

    outcome = signals.finished[-1]
    assert outcome.status == DONE
    assert outcome.loaded.predictionNodes == {} and sorted(outcome.loaded.skippedCases) == sorted(spec.job.images)
    assert env.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_an_automatic_segmentation_counts_as_labels_only_when_the_user_marks_it(tmp_path):
    env = slicer_scene.SlicerScene()
    cardPath = slicer_scene.writeModelCard(tmp_path / "model")
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    card = logic.modelCard(cardPath)
    volume = geometry.addVolumeNode(
        env.scene, Volume(slicer_scene.syntheticImage(), slicer_scene.rotatedAffine()), "ct"
    )
    automatic = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    automatic.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.fillSegmentationFromClassLabelmap(
        automatic, Volume(slicer_scene.syntheticLabels(), geometry.ijkToRasArray(volume)), card
    )

    assert not logic.isLabeled(volume, card)
    assert logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1).job.labels == {}
    assert segmentation.expertLabelCandidates(env.scene, volume, card) == [automatic]

    segmentation.setExpertLabel(automatic, True)
    assert logic.isLabeled(volume, card)
    job = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1).job
    np.testing.assert_array_equal(read_volume(job.labels["ct"]).array, slicer_scene.syntheticLabels())


def test_case_list_without_tokens_from_an_older_version_still_needs_the_same_name(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    cases = {
        "case_a": {"node_id": nodes[0].GetID(), "name": "case a"},
        "case_b": {"node_id": nodes[1].GetID(), "name": "renamed"},
    }
    assert jobFolder.caseNodesInScene(env.scene, cases) == {"case_a": nodes[0]}
    assert jobFolder.readCaseNodes(tmp_path) == {}


class MainThread:
    """What ``jobRunner.MainThreadCalls`` does in Slicer: calls posted from the writer thread run when the GUI thread
    next processes them (here: when the test calls :meth:`process`)."""

    def __init__(self):
        self.calls = []

    def post(self, call):
        self.calls.append(call)

    def process(self):
        calls, self.calls = self.calls, []
        for call in calls:
            call()


def test_volumes_that_cannot_be_linked_are_written_off_the_gui_thread(tmp_path):
    """A 512 x 512 x 100 CT-like volume made in the scene (as DICOM loads it: no file to link) next to the three
    small ones: taking the job from the scene stays under 0.5 s; writing it (gzip NRRD, 1-3 s here) happens in the
    writer thread, and the worker starts only once the volumes are on disk."""
    import time

    env, logic, card, _, _, _ = controllerFor(tmp_path)
    rng = np.random.default_rng(0)
    geometry.addVolumeNode(
        env.scene,
        Volume(
            rng.integers(-1000, 2000, (512, 512, 100), dtype=np.int16),
            slicer_scene.rotatedAffine(spacing=(0.7, 0.7, 2.5)),
        ),
        "ct 1",
    )
    gui = MainThread()
    controller = JobController(
        logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable, callInMainThread=gui.post
    )
    controller.setParameterNode(parameterNode(tmp_path / "work2", controller_card(tmp_path)))

    began = time.perf_counter()
    spec = controller.startJob("rank")
    gui_seconds = time.perf_counter() - began

    assert gui_seconds < 0.5, f"the GUI thread was blocked {gui_seconds:.2f} s"
    assert controller.isRunning() and controller.isWritingJob() and controller._runner.commands == []
    assert controller.waitUntilWritten(120)
    gui.process()
    assert controller._runner.commands and not controller.isWritingJob()
    for caseId, path in spec.job.images.items():
        assert Path(path).is_file(), caseId
    ct = read_volume(spec.job.images["ct_1"])
    assert ct.array.shape == (512, 512, 100)
    assert (spec.jobDir / "job.json").is_file()


def controller_card(tmp_path):
    return tmp_path / "model" / "card.json"


def test_cancel_while_the_job_is_being_written_removes_the_folder_and_starts_nothing(tmp_path, monkeypatch):
    import threading

    env, logic, card, _, signals0, nodes = controllerFor(tmp_path)
    gui = MainThread()
    controller = JobController(
        logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable, callInMainThread=gui.post
    )
    controller.setParameterNode(parameterNode(tmp_path / "work", controller_card(tmp_path)))
    signals = Signals(controller)
    release = threading.Event()
    realWrite = jobFolder.write_volume

    def slowWrite(volume, path):
        release.wait(30)
        return realWrite(volume, path)

    monkeypatch.setattr(jobFolder, "write_volume", slowWrite)
    spec = controller.startJob("rank")
    controller.cancel()
    release.set()
    assert controller.waitUntilWritten(60)
    gui.process()

    assert signals.finished[-1].status == CANCELLED and controller._runner.commands == []
    assert not spec.jobDir.exists() and not controller.isRunning()
    assert signals.finished[-1].progress.describe().startswith("Rank cancelled at")


def test_train_anyway_sets_the_jobs_allow_implausible_labels_and_the_refusal_offers_it(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    spec = controller.startJob("adapt")
    assert "allow_implausible_labels" not in spec.job.finetune
    refusal = (
        "the labels look wrong, so the model was not adapted: class 'posterior' (value 2) appears in none of "
        "the 1 labelled volume(s) (case_b). Fix the label files (or the model card's class_names), or pass "
        "--allow-implausible-labels (FinetuneConfig.allow_implausible_labels) if this is intended."
    )
    (spec.jobDir / "result.json").write_text(json.dumps({"status": "error", "message": refusal}))
    controller._runner.end(1)

    outcome = signals.finished[-1]
    assert outcome.labelsRefused and "--allow" not in outcome.message
    assert outcome.message.endswith("or choose Train anyway if this is intended.")
    again = controller.startJob("adapt", trainAnyway=True)
    assert again.job.finetune == {"allow_implausible_labels": True}
    controller._runner.end(1)
    assert not signals.finished[-1].labelsRefused  # a failure that is not a label refusal offers nothing


def test_a_half_labelled_volume_is_flagged_with_what_adapt_would_say(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    half = logic.annotationSegmentation(nodes[0], card)
    labels = np.where(slicer_scene.syntheticLabels() == 1, 1, 0).astype(np.uint8)  # anterior only
    segmentation.fillSegmentationFromClassLabelmap(half, Volume(labels, geometry.ijkToRasArray(nodes[0])), card)

    issues = logic.labelIssues(nodes[0], card)
    assert len(issues) == 1 and "'posterior'" in issues[0]
    assert logic.labelIssues(nodes[1], card) == ()  # case b has both classes


def test_windows_cancel_asks_the_worker_first_then_kills_without_console_windows(tmp_path, monkeypatch):
    """On Windows the polite stop is the job's cancel file; the kill after the timeout runs taskkill with
    CREATE_NO_WINDOW. (Simulated here: the process look-ups and taskkill are recorded.)"""
    from ASSFTModuleLib import jobProcess

    calls = []
    monkeypatch.setattr(jobProcess, "IS_WINDOWS", True)
    monkeypatch.setattr(jobProcess, "NO_WINDOW", 0x08000000)
    monkeypatch.setattr(jobProcess, "descendantPids", lambda pid: [pid + 1])
    alive = {"value": True}
    monkeypatch.setattr(jobProcess, "isRunning", lambda pid: alive["value"])
    monkeypatch.setattr(jobProcess.subprocess, "run", lambda command, **kwargs: calls.append((command, kwargs)))
    clock = Clock()
    jobDir = tmp_path / "job"
    jobDir.mkdir()
    cancelFile = jobProcess.cancelFileOf(["PythonSlicer", "-m", "ASSFTActive.worker", str(jobDir)])
    assert cancelFile == jobDir / "cancel"
    assert jobProcess.cancelFileOf(["PythonSlicer", "-m", "ASSFTActive", "check-card", "default"]) is None

    stopper = jobProcess.ProcessTreeStopper(100, timeout=10.0, clock=clock, cancelFile=cancelFile)
    stopper.start()
    assert cancelFile.is_file() and calls == []  # asked, not killed
    clock.now = 5.0
    assert not stopper.poll() and calls == []
    clock.now = 10.5
    stopper.poll()
    assert [command[:3] for command, _ in calls] == [["taskkill", "/PID", "101"], ["taskkill", "/PID", "100"]]
    assert all(kwargs["creationflags"] == 0x08000000 for _, kwargs in calls)

    calls.clear()  # a probe (no cancel file) is killed at once, still without a console window
    jobProcess.ProcessTreeStopper(200, timeout=10.0, clock=clock).start()
    assert [command[2] for command, _ in calls] == ["201", "200"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_worker_stops_at_its_next_event_when_the_cancel_file_appears(tmp_path):
    from ASSFTActive.errors import CancelledError
    from ASSFTActive.worker import _Cancel

    cancel = _Cancel(tmp_path / "cancel")
    cancel.check()  # nothing asked yet
    (tmp_path / "cancel").write_text("cancel\n")
    with pytest.raises(CancelledError):
        cancel.check()
    assert cancel.requested


def test_marking_and_unmarking_an_automatic_segmentation_updates_the_rows_state(tmp_path):
    env, logic, card, controller, signals, nodes = controllerFor(tmp_path)
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    controller._runner.end(0)
    table = controller.parameterNode.rankingTable
    automatic = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    automatic.SetReferenceImageGeometryParameterFromVolumeNode(nodes[2])
    segmentation.fillSegmentationFromClassLabelmap(
        automatic, Volume(slicer_scene.syntheticLabels(), geometry.ijkToRasArray(nodes[2])), card
    )

    def state():
        case = ranking.rankedCaseFromTable(table, rowOf(table, nodes[2]))[0]
        return case.labeled, case.selected

    assert logic.refreshLabeledStates(table, card) == 0 and state()[0] is False  # not the user's labels
    segmentation.setExpertLabel(automatic, True)
    assert logic.refreshLabeledStates(table, card) == 1 and state()[0] is True
    segmentation.setExpertLabel(automatic, False)
    assert logic.refreshLabeledStates(table, card) == 1 and state()[0] is False
