"""Guidance on screen (issue 26 item 8, Slicer side): class colours that never look like the entropy overlay, a
legend for the table, chart and overlay, and the one next step of the round."""

from __future__ import annotations

import colorsys
import sys

import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import guidance, overlay, segmentation  # noqa: E402
from ASSFTModuleLib.jobController import JobController  # noqa: E402
from slicer_scene import RecordingRunner, fakeFinishedJob, parameterNode  # noqa: E402


def hueDistance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return 360.0 * min(d, 1.0 - d)


def test_class_colours_stay_far_from_every_colour_of_the_overlay_heat_map():
    env = slicer_scene.SlicerScene()
    heat = env.scene.GetNodeByID(overlay.HEAT_COLOR_NODE_ID)
    transfer = heat.GetColorTransferFunction()
    low, high = transfer.GetRange()
    overlayHues = []
    for n in range(256):
        rgb = transfer.GetColor(low + (high - low) * n / 255.0)
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        if s > 0.25 and v > 0.25:  # coloured, visible entries (black and white carry no hue)
            overlayHues.append(h)
    assert overlayHues
    for index in range(1, len(segmentation.CLASS_COLORS) + 1):
        h, s, v = colorsys.rgb_to_hsv(*segmentation.classColor(index))
        nearest = min(hueDistance(h, other) for other in overlayHues)
        assert nearest >= 45.0, f"class {index} colour is {nearest:.0f} degrees of hue from the overlay"


def test_legend_explains_states_columns_chart_overlay_and_class_colours():
    entries = guidance.legend(["background", "anterior", "posterior"])
    labels = [entry.label for entry in entries]
    for label in (
        "proposed",
        "labeled",
        "pseudo-labeled",
        "DKD",
        "ASD",
        "Score",
        "All volumes",
        "Proposed",
        "Overlay",
        "anterior",
        "posterior",
    ):
        assert label in labels
    byLabel = {entry.label: entry for entry in entries}
    assert byLabel["anterior"].color == segmentation.classColor(1)
    assert "not comparable" in byLabel["Score"].text
    assert "background" not in labels


def test_next_step_walks_the_round_rank_annotate_adapt(tmp_path):
    env, logic, card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    assert "Rank Volumes" in guidance.nextStep(None)

    spec = controller.startJob("rank")
    assert guidance.nextStep(None, running=controller.isRunning()).startswith("Wait for the job")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    controller._runner.end(0)
    table = controller.parameterNode.rankingTable
    step = guidance.nextStep(table)
    assert step.startswith("Next: click a proposed row (1 left)") and "Adapt Model" in step  # case b is labelled

    for node in nodes:  # the proposed volume gets annotated
        if not logic.isLabeled(node, card):
            segmentationNode = logic.annotationSegmentation(node, card)
            segmentation.fillSegmentationFromClassLabelmap(segmentationNode, slicer_scene_volume(node), card)
    logic.refreshLabeledStates(table, card)
    assert guidance.nextStep(table).startswith("Next: press Adapt Model")


def slicer_scene_volume(node):
    from ASSFTModuleLib import geometry

    from ASSFTActive.io import Volume

    return Volume(slicer_scene.syntheticLabels(), geometry.ijkToRasArray(node))
