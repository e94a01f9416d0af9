"""What the CT-pool walkthrough (``Testing/Benchmarks/walkthrough_ct.py``, issue 26's goal) found, on real MRML through
slicer-core: a pool the model was not made for (every volume out of distribution) was reported as "2 volumes
proposed" with the next step "press Rank Volumes again"; and volumes loaded without a file (from DICOM) lost their
ranking when the scene was loaded again."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, guidance, ranking  # noqa: E402
from ASSFTModuleLib.jobController import DONE, JobController  # noqa: E402
from ASSFTModuleLib.jobFolder import readCaseNodes  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.records import CaseState  # noqa: E402
from slicer_scene import RecordingRunner, Signals, fakeFinishedJob, parameterNode  # noqa: E402

from ASSFTActive.io import Volume  # noqa: E402

CT_REASON = "out of distribution: looks like CT (46 % of voxels below -500 HU) but the model takes MRI"


def flagEveryCase(spec, budget: int = 1) -> None:
    """Turn a finished fake ranking into what the worker writes for a pool that is out of distribution for the
    model: every case flagged, none selected, and the round's plan of ``budget`` volumes in ``config.json``."""
    path = spec.jobDir / "ranking.json"
    data = json.loads(path.read_text())
    for case in data["cases"]:
        case.update(selected=False, ood=CT_REASON, reason=f"not proposed: {CT_REASON}")
    path.write_text(json.dumps(data))
    plan = {"round": 1, "rounds": 1, "round_budgets": [budget], "proposed": budget, "labeled_before": 0}
    (spec.jobDir / "config.json").write_text(json.dumps({"query_round": plan}))


def test_a_pool_held_back_as_out_of_distribution_is_reported_with_what_to_do_not_as_proposed(tmp_path):
    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    node = parameterNode(tmp_path / "work", cardPath, budget=2)
    controller.setParameterNode(node)
    signals = Signals(controller)

    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    flagEveryCase(spec, budget=2)
    controller._runner.end(0)

    outcome = signals.finished[-1]
    assert outcome.status == DONE
    message = signals.status[-1]
    assert "2 volumes proposed" not in message
    assert message.endswith(
        "Query round 1 of 1 (2 volumes): no volume proposed. 2 of 3 volumes not proposed: out of distribution for "
        "this model (see the Why column)."
    )
    # the next step under the buttons says why and what to do (ranking again would change nothing); case b is labelled
    step = guidance.nextStep(node.rankingTable)
    assert "Adapt Model" in step  # one labelled volume: adapting is still the next step
    ranking.setCaseState(node.rankingTable, "case_b", CaseState.UNLABELED)
    step = guidance.nextStep(node.rankingTable)
    assert step.startswith("No volume proposed: 3 of 3 volumes look out of distribution for this model (e.g. looks")
    assert "but the model takes MRI" in step and "press Annotate" in step  # why, and what to do
    assert "Rank Volumes again" not in step


def test_a_partly_flagged_pool_says_how_many_were_held_back():
    note = guidance.outOfDistributionNote((CT_REASON,), total=4, proposed=2)
    assert note.startswith("1 of 4 volumes not proposed: out of distribution for this model (e.g. looks like CT")
    assert "Why column" in note
    assert guidance.outOfDistributionNote((), total=4, proposed=2) == ""


def test_the_browser_next_step_and_caption_say_the_pool_is_out_of_distribution():
    from ASSFTActive.query.rounds import RoundPlan
    from ASSFTWeb.app import _round_line
    from ASSFTWeb.guidance import next_step

    rows = [{"volume": f"ct {n}", "state": "unlabeled", "ood": CT_REASON} for n in range(4)]
    step = next_step(rows, job_running=False)
    assert step.startswith("No volume proposed: 4 of 4 volumes look out of distribution for this model")
    caption = _round_line(RoundPlan(budgets=(2,), round_index=0, size=2, labeled=0), rows)
    assert caption == (
        " No volume proposed. 4 of 4 volumes not proposed: out of distribution for this model (see the Why column)."
    )


def addArray(scene, volume: Volume, name: str):
    return geometry.addVolumeNode(scene, volume, name)


def test_a_ranking_of_volumes_made_in_the_scene_comes_back_on_the_same_voxels_after_a_scene_reload(tmp_path):
    """Volumes loaded from DICOM have no file to link: the job writes them from the scene and records a digest of
    their voxels and grid; the ranking comes back on nodes made again with the same voxels, never on changed ones."""
    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    volumes = {node.GetName(): geometry.volumeFromNode(node) for node in nodes}
    volumes = {name: Volume(np.array(v.array), v.affine) for name, v in volumes.items()}
    spec = logic.prepareJob("rank", tmp_path / "work", str(cardPath), budget=1)
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    recorded = readCaseNodes(spec.jobDir)
    assert all("content" in info and "source" not in info for info in recorded.values())

    again = slicer_scene.SlicerScene()  # Slicer restarted, the same series loaded again (new IDs, no tokens)
    changed = volumes["case b"].array.copy()
    changed[0, 0, 0] += 1
    made = [
        addArray(again.scene, volumes["case/c"], "case/c"),
        addArray(again.scene, Volume(changed, volumes["case b"].affine), "case b"),
        addArray(again.scene, volumes["case a"], "case a"),
    ]
    restored = ASSFTSceneLogic(again.scene, again.appLogic).restoreLatestRanking(tmp_path / "work")

    assert restored is not None
    table = restored[1].tableNode
    attached = {}
    for row in range(table.GetNumberOfRows()):
        case, nodeId = ranking.rankedCaseFromTable(table, row)
        if nodeId:
            attached[case.caseId] = again.scene.GetNodeByID(nodeId).GetName()
    assert attached == {"case_a": "case a", "case_c": "case/c"}  # case b's voxels changed: not attached
    assert made[1].GetID() not in attached.values()


def test_the_content_digest_tells_voxels_and_grid_apart():
    from ASSFTModuleLib.jobFolder import contentFingerprint

    image = slicer_scene.syntheticImage()
    affine = slicer_scene.rotatedAffine()
    first = contentFingerprint(Volume(image, affine))
    assert first == contentFingerprint(Volume(image.copy(), affine.copy()))
    moved = affine.copy()
    moved[0, 3] += 0.5
    assert contentFingerprint(Volume(image, moved))["digest"] != first["digest"]
    assert contentFingerprint(Volume(image.astype(np.int32), affine))["dtype"] != first["dtype"]
    other = image.copy()
    other[3, 4, 5] += 1
    assert contentFingerprint(Volume(other, affine))["digest"] != first["digest"]


def test_a_half_labelled_volume_is_flagged_with_what_to_do_when_its_labels_come_back(tmp_path):
    from ASSFTModuleLib import segmentation

    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    labels = slicer_scene.syntheticLabels()
    labels[labels == 2] = 0  # only 'anterior' painted
    annotation = logic.annotationSegmentation(nodes[0], card)
    segmentation.fillSegmentationFromClassLabelmap(annotation, Volume(labels, geometry.ijkToRasArray(nodes[0])), card)

    issues = logic.labelIssues(nodes[0], card)
    line = guidance.labelCheckLine(nodes[0].GetName(), issues)

    assert issues and "'posterior'" in line
    assert line.startswith("Check the labels of case a: ")
    assert "Press Annotate and paint every class of the model" in line and "Train anyway" in line
    assert guidance.labelCheckLine("case b", logic.labelIssues(nodes[1], card)) == ""


class GuiQueue:
    """Calls posted for the GUI thread (``jobRunner.MainThreadCalls`` in Slicer); the test runs them one by one."""

    def __init__(self):
        self.calls = []

    def post(self, call):
        self.calls.append(call)

    def runOne(self):
        self.calls.pop(0)()


@dataclass(frozen=True)
class RankJob:
    """A rank job of a :class:`JobController` on ``slicer_scene.threeVolumeScene``, its worker's results written."""

    env: object
    logic: ASSFTSceneLogic
    card: object
    nodes: list
    gui: GuiQueue
    controller: JobController
    node: object  # the parameter node
    signals: Signals  # connected before the job started


def rankJobWritten(tmp_path) -> RankJob:
    """Start a rank job (budget 1, work folder ``tmp_path/work``) and write a finished worker's results, up to the
    moment the worker's process ends (``job.controller._runner.end(0)``, left to the test)."""
    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    gui = GuiQueue()
    controller = JobController(
        logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable, callInMainThread=gui.post
    )
    node = parameterNode(tmp_path / "work", cardPath, budget=1)
    controller.setParameterNode(node)
    signals = Signals(controller)
    spec = controller.startJob("rank")
    assert controller.waitUntilWritten(60)
    gui.runOne()  # the writer hands the start back: the worker starts
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    return RankJob(env, logic, card, nodes, gui, controller, node, signals)


def test_a_finished_job_shows_its_predictions_one_volume_per_gui_turn_not_all_at_once(tmp_path):
    """Each CT prediction takes 0.2-0.4 s to become a segmentation: all of them in the call that ends the job froze
    the panel for seconds (walkthrough: 2.7 s). The table comes first; each prediction follows in a turn of its own."""
    from ASSFTModuleLib import segmentation

    job = rankJobWritten(tmp_path)
    env, card, nodes, gui = job.env, job.card, job.nodes, job.gui

    job.controller._runner.end(0)

    outcome = job.signals.finished[-1]
    assert outcome.status == DONE and outcome.loaded.tableNode is job.node.rankingTable
    assert outcome.loaded.predictionNodes == {}
    assert len(gui.calls) == 3  # one per volume with a prediction
    shown = []
    while gui.calls:
        gui.runOne()
        shown.append(sum(segmentation.findSegmentationForVolume(env.scene, n, "prediction") is not None for n in nodes))
    assert shown == [1, 2, 3]
    for volume in nodes:
        prediction = segmentation.findSegmentationForVolume(env.scene, volume, "prediction")
        assert not prediction.GetDisplayNode().GetVisibility()  # refreshed, hidden as before
        assert segmentation.segmentNames(prediction) == list(card.class_names[1:])


def test_a_prediction_whose_volume_left_the_scene_before_its_turn_is_skipped(tmp_path):
    from ASSFTModuleLib import segmentation

    job = rankJobWritten(tmp_path)
    env, nodes, gui = job.env, job.nodes, job.gui
    job.controller._runner.end(0)

    env.scene.RemoveNode(nodes[0])
    while gui.calls:
        gui.runOne()

    assert segmentation.findSegmentationForVolume(env.scene, nodes[1], "prediction") is not None
    assert env.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 3  # case b's labels + 2 predictions


def test_a_volume_read_from_the_scene_keeps_slicers_memory_order_and_is_a_copy(tmp_path):
    """Reordering a 512 x 512 x 75 CT's memory into C order cost the GUI thread 0.1-0.25 s per read (three reads per
    Annotate); the [I, J, K] array is a Fortran-ordered view of a private copy instead."""
    env = slicer_scene.SlicerScene()
    image = slicer_scene.syntheticImage()
    node = addArray(env.scene, Volume(image, slicer_scene.rotatedAffine()), "ct")

    volume = geometry.volumeFromNode(node)

    assert volume.array.flags.f_contiguous and volume.array.shape == image.shape
    np.testing.assert_array_equal(volume.array, image)
    volume.array[0, 0, 0] += 7  # a copy: the scene's voxels are unchanged
    np.testing.assert_array_equal(geometry.volumeFromNode(node).array, image)


def entropyMapOf(volumeNode, path, value: float = 0.9):
    from ASSFTActive.io import write_volume

    shape = geometry.volumeFromNode(volumeNode).shape
    entropy = np.zeros(shape, np.float32)
    entropy[2:8, 3:9, 2:6] = value
    return entropy, write_volume(Volume(entropy, geometry.ijkToRasArray(volumeNode)), path)


def test_an_entropy_map_read_ahead_becomes_the_overlay_without_reading_the_file_on_the_gui_thread(tmp_path):
    """Slicer's reader took the GUI thread 0.35 s of CPU (1 s on a loaded machine) at the first click on a CT's
    row; a map read ahead in a background thread is only handed to the scene."""
    from ASSFTModuleLib import overlay

    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    entropy, path = entropyMapOf(nodes[0], tmp_path / "a_entropy.nii.gz")
    ahead = overlay.ReadAhead()
    ahead.start([path]).join(30)

    node = overlay.loadOverlay(env.scene, None, nodes[0], str(path), readAhead=ahead)  # no reader: not read here

    np.testing.assert_allclose(geometry.volumeFromNode(node).array, entropy)
    assert geometry.sameGeometry(node, nodes[0]) and node.GetAttribute(overlay.SOURCE_ATTRIBUTE) == str(path)
    assert overlay.findOverlayNode(env.scene, nodes[0]) is node and ahead.heldBytes() == 0  # handed over once


def test_a_map_changed_after_it_was_read_ahead_is_read_from_its_file_again(tmp_path):
    import os

    from ASSFTModuleLib import overlay

    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    _, path = entropyMapOf(nodes[0], tmp_path / "a_entropy.nii.gz", value=0.9)
    ahead = overlay.ReadAhead()
    ahead.start([path]).join(30)
    entropy, _ = entropyMapOf(nodes[0], path, value=0.4)  # the job folder was written again
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    node = overlay.loadOverlay(env.scene, env.volumesLogic, nodes[0], str(path), readAhead=ahead)

    np.testing.assert_allclose(geometry.volumeFromNode(node).array, entropy)
    assert ahead.heldBytes() == 0


def test_the_read_ahead_stops_at_its_memory_budget_best_rows_first(tmp_path):
    from ASSFTModuleLib import overlay

    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    paths = [entropyMapOf(node, tmp_path / f"{n}_entropy.nii.gz")[1] for n, node in enumerate(nodes)]
    oneMap = 20 * 16 * 12 * 4
    ahead = overlay.ReadAhead(maxBytes=2 * oneMap)
    ahead.start([tmp_path / "missing.nii.gz"] + paths).join(30)  # a missing file is skipped, not fatal

    assert ahead.heldBytes() == 2 * oneMap
    assert ahead.take(paths[0]) is not None and ahead.take(paths[1]) is not None and ahead.take(paths[2]) is None


def test_a_finished_ranking_reads_its_entropy_maps_ahead(tmp_path, monkeypatch):
    import time

    from ASSFTModuleLib import overlay

    ahead = overlay.ReadAhead()
    monkeypatch.setattr(overlay, "READ_AHEAD", ahead)
    job = rankJobWritten(tmp_path)
    logic, node = job.logic, job.node

    job.controller._runner.end(0)

    deadline = time.monotonic() + 30
    while ahead.heldBytes() < 2 * 20 * 16 * 12 * 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ahead.heldBytes() == 2 * 20 * 16 * 12 * 4  # the two unlabelled rows; case b is labelled
    view = logic.showCase(node.rankingTable, 0, 0.3, 0.5)
    assert view.overlayNode is not None and ahead.heldBytes() == 20 * 16 * 12 * 4


def test_a_new_read_ahead_drops_the_maps_of_the_last_ranking(tmp_path):
    from ASSFTModuleLib import overlay

    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    first = entropyMapOf(nodes[0], tmp_path / "old_entropy.nii.gz")[1]
    second = entropyMapOf(nodes[1], tmp_path / "new_entropy.nii.gz")[1]
    ahead = overlay.ReadAhead()
    ahead.start([first]).join(30)
    ahead.start([second]).join(30)

    assert ahead.take(first) is None and ahead.take(second) is not None
