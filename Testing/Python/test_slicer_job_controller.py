"""The job controller the widget receives: jobs, the device probe and the end of a job, on real MRML.

The process runner is replaced by a recording runner here (what a real runner does is tested with real
processes in ``test_slicer_cancel.py``); the scene, the logic, the job folders and the result files are real.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import jobFolder  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.guiBinding import GuiBinding  # noqa: E402
from ASSFTModuleLib.jobController import CANCELLED, DONE, ERROR, JobController  # noqa: E402
from ASSFTModuleLib.jobProcess import SubprocessJobRunner  # noqa: E402
from ASSFTModuleLib.logic import RANKING_JOB_ATTRIBUTE  # noqa: E402
from ASSFTModuleLib.parameters import (  # noqa: E402
    ModelSource,
    cardPathText,
    initialCardPath,
    modelReferenceFor,
)
from slicer_scene import RecordingRunner, Signals, fakeFinishedJob, parameterNode  # noqa: E402


@pytest.fixture()
def setup(tmp_path):
    env, logic, _card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    return env, logic, controller, Signals(controller), nodes, cardPath, tmp_path


def sliceViewState(env):
    state = []
    for sliceLogic in env.sliceLogics:
        sliceNode, composite = sliceLogic.GetSliceNode(), sliceLogic.GetSliceCompositeNode()
        matrix = [sliceNode.GetSliceToRAS().GetElement(i, j) for i in range(4) for j in range(4)]
        state.append(
            (
                composite.GetBackgroundVolumeID(),
                composite.GetForegroundVolumeID(),
                tuple(sliceNode.GetFieldOfView()),
                tuple(matrix),
            )
        )
    return state


def test_finished_adapt_job_loads_results_switches_model_and_leaves_the_slice_views(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    for sliceLogic in env.sliceLogics:  # the user is painting on 'case b'
        sliceLogic.GetSliceCompositeNode().SetBackgroundVolumeID(nodes[1].GetID())
        sliceLogic.GetSliceNode().SetFieldOfView(37.0, 41.0, 1.0)
    before = sliceViewState(env)

    spec = controller.startJob("adapt")
    assert controller._runner.commands[0][1:] == ["-m", "ASSFTActive.worker", str(spec.jobDir)]
    assert signals.running == [True] and controller.isRunning()
    newCard = fakeFinishedJob(spec, nodes, tmp_path)
    controller._runner.end(0)

    outcome = signals.finished[-1]
    assert outcome.status == DONE and outcome.message.startswith("Adapted model is now active")
    node = controller.parameterNode
    assert node.modelSource == ModelSource.CardFile and node.modelCardPath == newCard
    assert node.rankingTable is outcome.loaded.tableNode and node.rankingTable.GetNumberOfRows() == 3
    assert node.lastJobDirectory == str(spec.jobDir)
    assert sliceViewState(env) == before
    assert signals.running[-1] is False and signals.failed == []


def test_job_ending_after_the_scene_was_closed_reports_where_the_results_are(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    controller.setParameterNode(None)  # the widget does this on StartCloseEvent

    controller._runner.end(0)

    outcome = signals.finished[-1]
    assert outcome.status == DONE and outcome.loaded is None
    assert "scene was closed" in outcome.message and str(spec.jobDir) in outcome.message
    assert signals.failed == []


def test_cancelled_job_ends_cancelled_even_when_the_launcher_exit_looks_like_a_crash(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    spec = controller.startJob("rank")
    controller.cancel()
    assert controller._runner.cancelled and signals.status[-1] == "Cancelling..."
    (spec.jobDir / "result.json").write_text(json.dumps({"status": "cancelled", "message": "cancelled"}))

    controller._runner.end(-1, cancelled=True)

    assert signals.finished[-1].status == CANCELLED and signals.failed == []
    assert signals.status[-1] == "Cancelled. The active model is unchanged."


def test_failed_job_reports_the_workers_error(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    spec = controller.startJob("rank")
    (spec.jobDir / "result.json").write_text(json.dumps({"status": "error", "message": "disk full"}))

    controller._runner.end(1)

    assert signals.finished[-1].status == ERROR and "disk full" in signals.failed[-1]


def test_declining_the_install_says_so_and_starts_nothing(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    controller.ensureRequirements = lambda: False

    assert controller.startJob("rank") is None

    assert controller._runner.commands == [] and "not installed" in signals.status[-1]
    assert not (tmp_path / "work" / "jobs").exists()


def test_device_probe_that_cannot_start_says_so(setup, tmp_path):
    env, logic, _, _, nodes, cardPath, _ = setup
    controller = JobController(
        logic, runnerFactory=SubprocessJobRunner, environment=dict, python=str(tmp_path / "no-such-PythonSlicer")
    )
    signals = Signals(controller)

    controller.probeDevice()
    controller._probe.wait(30)

    assert len(signals.device) == 1 and signals.device[0].startswith("unknown (")
    assert "could not start" in signals.device[0]


def test_device_probe_reports_the_device_of_a_child_process(setup):
    env, logic, _, _, nodes, cardPath, tmp_path = setup
    import os

    controller = JobController(
        logic, runnerFactory=SubprocessJobRunner, environment=lambda: dict(os.environ), python=sys.executable
    )
    signals = Signals(controller)

    controller.probeDevice()
    assert controller._probe.wait(120)

    assert len(signals.device) == 1 and signals.device[0].split()[0] in ("CPU", "GPU")


def cardChecks(controller):
    checks, status, log = [], [], []
    controller.cardChecked.connect(checks.append)
    controller.statusChanged.connect(status.append)
    controller.logLine.connect(log.append)
    return checks, status, log


def test_card_check_in_a_child_process_gives_the_verdict_and_the_module_names(setup):
    env, logic, _, _, nodes, cardPath, tmp_path = setup
    from ASSFTModuleLib.jobProcess import workerEnvironment

    controller = JobController(
        logic, runnerFactory=SubprocessJobRunner, environment=workerEnvironment, python=sys.executable
    )
    controller.setParameterNode(parameterNode(tmp_path / "work"))  # the embedded default model
    checks, status, log = cardChecks(controller)

    assert controller.checkCard() == "default"
    assert controller._cardCheck.wait(180)

    assert len(checks) == 1 and checks[0].usable, checks[0].output
    names = [name for name, _ in checks[0].modules]
    assert "model.0" in names and names == sorted(set(names), key=names.index)
    assert checks[0].encoderStages and set(checks[0].encoderStages) <= set(names)
    assert status[0].startswith("Checking the model card default") and status[-1].startswith("Card check passed")
    assert any(line.startswith("* ") and checks[0].encoderStages[0] in line for line in log)


def test_card_check_of_a_card_contradicting_its_network_reports_the_engines_error(setup):
    env, logic, _, _, nodes, cardPath, tmp_path = setup
    from ASSFTModuleLib.jobProcess import workerEnvironment

    bad = json.loads(cardPath.read_text(encoding="utf-8"))
    bad["arguments"]["out_channels"] = 2  # three class names, a two-channel network
    cardPath.write_text(json.dumps(bad), encoding="utf-8")
    controller = JobController(
        logic, runnerFactory=SubprocessJobRunner, environment=workerEnvironment, python=sys.executable
    )
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    checks, status, _ = cardChecks(controller)

    controller.checkCard()
    assert controller._cardCheck.wait(180)

    assert len(checks) == 1 and not checks[0].usable and checks[0].modules == ()
    assert "out_channels" in checks[0].message and str(cardPath) in checks[0].message
    assert status[-1] == f"Card check failed: {checks[0].message}"


def test_card_check_that_cannot_start_says_so_and_a_second_check_waits_for_the_first(setup, tmp_path):
    env, logic, _, _, nodes, cardPath, _ = setup
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    checks, status, _ = cardChecks(controller)

    controller.checkCard()
    assert controller._cardCheck.commands == [
        [sys.executable, "-m", "ASSFTActive", "check-card", str(cardPath), "--modules"]
    ]
    with pytest.raises(ASSFTModuleError, match="already running"):
        controller.checkCard()
    controller._cardCheck.end(exitCode=-1, errorText="the worker could not start: no such file")

    assert len(checks) == 1 and not checks[0].usable
    assert checks[0].message == "the worker could not start: no such file"
    assert not controller.isCheckingCard()


def test_old_job_folders_are_pruned_but_the_shown_ranking_is_kept(setup):
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    controller.keepJobFolders = 2
    folders, shown = [], None
    for n in range(4):
        if shown is not None:  # the panel still shows the first ranking: its table points into that folder
            controller.parameterNode.rankingTable.SetAttribute(RANKING_JOB_ATTRIBUTE, str(shown))
        spec = controller.startJob("rank")
        fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
        controller._runner.end(0)
        folders.append(spec.jobDir)
        if n == 0:
            shown = spec.jobDir

    remaining = set((tmp_path / "work" / "jobs").iterdir())
    assert remaining == {shown, folders[-1], folders[-2]}


def test_pruning_keeps_unfinished_recent_folders(tmp_path):
    import os

    for age, name in enumerate(("20260101-000002-rank", "20260101-000001-rank", "20260101-000000-rank")):
        folder = tmp_path / "jobs" / name
        folder.mkdir(parents=True)
        (folder / "job.json").write_text("{}")
        os.utime(folder / "job.json", ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    (tmp_path / "jobs" / "20260101-000001-rank" / "result.json").write_text("{}")

    removed = jobFolder.pruneJobFolders(tmp_path, keep=1)

    assert [p.name for p in removed] == ["20260101-000001-rank"]


def test_second_adapt_leaves_the_model_name_to_the_engine(setup):
    """Adapting an adapted model writes the next version of the same model (the engine's default_name)."""
    env, logic, controller, signals, nodes, cardPath, tmp_path = setup
    from ASSFTActive.cards import load_card
    from ASSFTActive.finetune.adapt import default_name

    adaptedCard = json.loads(cardPath.read_text())
    adaptedCard.update(name="test-unet-adapted", pretrained=str(cardPath))
    adaptedPath = tmp_path / "store" / "test-unet-adapted" / "v1" / "card.json"
    adaptedPath.parent.mkdir(parents=True)
    adaptedPath.write_text(json.dumps(adaptedCard))
    controller.setParameterNode(parameterNode(tmp_path / "work", adaptedPath))

    spec = controller.startJob("adapt")

    assert spec.job.name == ""  # job.json: the worker derives the name from the card
    assert default_name(load_card(adaptedPath)) == "test-unet-adapted"
    assert default_name(load_card(cardPath)) == "test-unet-adapted"


def test_model_reference_of_the_panel_and_the_card_field_never_shows_a_dot():
    from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD

    assert initialCardPath(Path("")) == EMBEDDED_DEFAULT_CARD and str(initialCardPath(Path(""))) != "."
    assert initialCardPath(Path("/x/card.json")) == Path("/x/card.json")
    assert modelReferenceFor(ModelSource.CardFile, initialCardPath(Path(""))) == str(EMBEDDED_DEFAULT_CARD)
    assert modelReferenceFor(ModelSource.Default, Path("")) == "default"
    assert cardPathText(Path("")) == "" and cardPathText(None) == "" and cardPathText("a/card.json") == "a/card.json"
    with pytest.raises(Exception, match="Choose a model card file"):
        modelReferenceFor(ModelSource.CardFile, Path(""))


class ParameterNodeLike:
    """What GuiBinding needs of a parameterNodeWrapper: ``parameterNode``, ``connectGui``, ``disconnectGui``."""

    def __init__(self, mrmlNode, tag):
        self.parameterNode, self.tag, self.connects, self.disconnects = mrmlNode, tag, [], []

    def connectGui(self, ui):
        self.connects.append(ui)
        return self.tag

    def disconnectGui(self, tag):
        self.disconnects.append(tag)


@pytest.mark.parametrize("tag", [None, "tag"], ids=["slicer-5.8-no-tag", "tag"])
def test_gui_is_connected_once_per_parameter_node(tag):
    mrmlNode, other = slicer.vtkMRMLScriptedModuleNode(), slicer.vtkMRMLScriptedModuleNode()
    first, sameAgain = ParameterNodeLike(mrmlNode, tag), ParameterNodeLike(mrmlNode, tag)
    binding = GuiBinding(ui="panel")

    assert binding.bind(first) is True
    for _ in range(3):  # enter() wraps the same MRML node again each time
        assert binding.bind(sameAgain) is False
    assert first.connects == ["panel"] and sameAgain.connects == []

    replacement = ParameterNodeLike(other, tag)
    assert binding.bind(replacement) is True
    assert replacement.connects == ["panel"]
    assert first.disconnects == ([tag] if tag else [])
    binding.bind(None)
    assert binding.node is None and np.all([replacement.disconnects == ([tag] if tag else [])])
