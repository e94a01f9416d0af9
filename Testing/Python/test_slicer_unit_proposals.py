"""Annotating at the unit Rank proposed (issue 27 item 3), on real MRML: a slice / region ranking's proposals reach
their volumes, Next steps through them best first skipping the done ones and centres the views, Mark done records
them, and the saved label is 255 (not annotated) outside the done units; a volume with none done is not labelled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer_scene
from slicer_scene import fakeFinishedJob

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, unitProposals  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.parameters import jobQuery  # noqa: E402
from ASSFTModuleLib.unitProposals import UnitProposal  # noqa: E402

from ASSFTActive.io import read_volume  # noqa: E402
from ASSFTActive.jobs import read_job  # noqa: E402
from ASSFTActive.partial import NOT_ANNOTATED, read_partial_label  # noqa: E402


@pytest.fixture()
def pool(tmp_path):
    """Three rotated volumes [20, 16, 12]; 'case b' (nodes[1]) is painted with slicer_scene.syntheticLabels."""
    return (*slicer_scene.threeVolumeScene(tmp_path), tmp_path)


SLICES = [
    {"axis": 2, "index": 5, "score": 0.9},
    {"axis": 2, "index": 2, "score": 0.5},
    {"axis": 2, "index": 9, "score": 0.3},
]


def rankedBySlice(pool):
    """A rank job prepared with unit slice, finished as the worker would, 'case a' given SLICES; loaded."""
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=3, query=jobQuery(1, unit="slice"))
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    path = spec.jobDir / "ranking.json"
    record = json.loads(path.read_text())
    record["unit"] = "slice"
    for case in record["cases"]:
        if case["case_id"] == "case_a":
            case["proposed_slices"] = SLICES
    path.write_text(json.dumps(record))
    return spec, logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)


def test_a_slice_ranking_job_asks_the_worker_for_slices(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=3, query=jobQuery(1, unit="slice"))
    job = read_job(spec.jobDir)
    assert job.query["units"] == {"unit": "slice"}
    assert job.unit_config().unit.value == "slice" and job.query_config().rounds == 1
    assert "units" not in jobQuery(1, unit="volume")
    with pytest.raises(ASSFTModuleError, match="annotation unit"):
        jobQuery(1, unit="cube")


@pytest.mark.parametrize(
    "units, message",
    [
        ({"unit": "cube"}, "query: unit must be one of"),
        ({"unit": "slice", "axis": 3}, "query: axis must be 0, 1, 2"),
        ({"unit": "slice", "depth": 2}, "query: units has settings that do not"),
        ("slice", "query: units must be a JSON object"),
    ],
)
def test_job_json_refuses_bad_unit_settings_naming_them(units, message):
    from ASSFTActive.jobs import JobSpec

    with pytest.raises(ValueError, match=message):
        JobSpec(kind="rank", images={"a": "/x/a.nii.gz"}, store="/s", query={"units": units})
    spec = JobSpec(
        kind="rank",
        images={"a": "/x/a.nii.gz"},
        store="/s",
        query={"units": {"unit": "region", "region_size": [8, 8, 4]}},
    )
    assert spec.unit_config().region_size == (8, 8, 4)


def test_proposals_reach_their_volume_and_next_steps_best_first_skipping_done_and_wrapping(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    rankedBySlice(pool)
    assert [p.index for p in logic.proposals(nodes[0])] == [5, 2, 9]
    assert logic.proposals(nodes[1]) == () and logic.proposals(nodes[2]) == ()

    assert logic.jumpToNextProposal(nodes[0]) == 0
    logic.markProposalDone(nodes[0])
    assert logic.jumpToNextProposal(nodes[0]) == 1
    assert logic.jumpToNextProposal(nodes[0]) == 2
    logic.markProposalDone(nodes[0])
    assert logic.jumpToNextProposal(nodes[0]) == 1  # wraps round past the done 0
    assert unitProposals.progressLine(nodes[0]) == "2 of 3 proposed slices done; now: slice 2 (axis 2)"
    logic.markProposalDone(nodes[0])
    assert logic.jumpToNextProposal(nodes[0]) is None
    assert [u.index for u in unitProposals.doneUnits(nodes[0])] == [5, 9, 2]


def test_mark_done_before_any_step_says_what_to_do(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    rankedBySlice(pool)
    with pytest.raises(ASSFTModuleError, match="Next proposed slice"):
        logic.markProposalDone(nodes[0])
    with pytest.raises(ASSFTModuleError, match="no number 4"):
        logic.markProposalDone(nodes[0], 3)


def test_next_centres_every_slice_view_on_the_proposed_slice(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    rankedBySlice(pool)
    position = logic.jumpToNextProposal(nodes[0])
    expected = (geometry.ijkToRasArray(nodes[0]) @ [9.5, 7.5, 5.0, 1.0])[:3]  # middle of slice k = 5 of 20x16x12
    np.testing.assert_allclose(
        unitProposals.proposalCenterRas(nodes[0], logic.proposals(nodes[0])[position]), expected, atol=1e-9
    )
    for sliceNode in env.nodes("vtkMRMLSliceNode"):
        matrix = sliceNode.GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(r, 3) for r in range(3)], expected, atol=1e-6)


def test_saved_labels_are_not_annotated_outside_the_done_slices_and_keep_the_painted_classes_inside(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    painted = slicer_scene.syntheticLabels()
    unitProposals.setProposals(
        nodes[1], [UnitProposal("slice", axis=0, index=4), UnitProposal("slice", axis=0, index=12)]
    )
    logic.markProposalDone(nodes[1], 0)  # slice i = 4: class 1 in [3:8, 2:6], background elsewhere

    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)

    saved = read_volume(spec.job.labels["case_b"]).array
    expected = np.full(painted.shape, NOT_ANNOTATED, np.uint8)
    expected[4] = painted[4]
    np.testing.assert_array_equal(saved, expected)
    assert int(np.count_nonzero(saved[4] == 0)) == 16 * 12 - 5 * 4  # annotated background inside the done slice
    partial = read_partial_label(spec.job.labels["case_b"], read_volume(spec.job.images["case_b"]), 3)
    assert partial.annotated_voxels == 16 * 12 and partial.is_partial
    conversion = logic.savedLabels(nodes[1], card)
    assert conversion.voxelCounts == {"anterior": 20, "posterior": 0}


def test_a_volume_with_proposals_and_none_done_is_not_labelled_and_the_reason_is_given(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    unitProposals.setProposals(nodes[1], [UnitProposal("slice", axis=0, index=4)])

    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    assert "case_b" not in spec.job.labels
    assert spec.notLabelled == (
        "'case b' has 1 proposed slices and none is marked done, so it is not a labelled "
        "volume: paint a proposed slice, then Mark done.",
    )
    assert logic.savedLabels(nodes[1], card) is None
    with pytest.raises(ASSFTModuleError, match="none is marked done"):
        logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)


def test_a_done_slice_left_unpainted_is_annotated_background_and_the_volume_is_labelled(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    unitProposals.setProposals(nodes[1], [UnitProposal("slice", axis=0, index=0)])  # no class painted at i = 0
    assert not logic.isLabeled(nodes[1], card)
    logic.markProposalDone(nodes[1], 0)
    assert logic.isLabeled(nodes[1], card)

    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)

    saved = read_volume(spec.job.labels["case_b"]).array
    assert int(np.count_nonzero(saved[0] == 0)) == 16 * 12 and int(np.count_nonzero(saved[1:] != NOT_ANNOTATED)) == 0


def test_done_regions_are_clipped_at_the_volume_edge_and_the_rest_is_not_annotated():
    labels = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6) % 3
    region = UnitProposal("region", start=(2, 3, 4), size=(4, 4, 4))
    out = unitProposals.partialLabels(labels, [region])
    assert out.shape == labels.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2:, 3:, 4:], labels[2:, 3:, 4:])
    assert int(np.count_nonzero(out != NOT_ANNOTATED)) == 2 * 2 * 2
    assert unitProposals.partialLabels(labels, []) is None
    with pytest.raises(ASSFTModuleError, match="outside the volume"):
        UnitProposal("region", start=(4, 0, 0), size=(1, 1, 1)).voxelSlices(labels.shape)


def test_units_done_stay_done_when_a_new_ranking_proposes_others(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    unitProposals.setProposals(nodes[1], [UnitProposal("slice", axis=0, index=4)])
    logic.markProposalDone(nodes[1], 0)
    unitProposals.setProposals(nodes[1], [UnitProposal("slice", axis=0, index=10)])
    assert [u.index for u in unitProposals.doneUnits(nodes[1])] == [4]
    assert logic.jumpToNextProposal(nodes[1]) == 0


def test_a_slice_rank_job_in_the_real_worker_proposes_slices_the_logic_steps_to_and_saves_partially(tmp_path):
    """The panel's unit slice through job.json, the worker and ranking.json back onto the volumes (shipped sample)."""
    import sys

    from ASSFTModuleLib import jobProcess
    from ASSFTModuleLib.geometry import loadVolumeFile
    from ASSFTModuleLib.logic import ASSFTSceneLogic

    env = slicer_scene.SlicerScene()
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    nodes = [
        loadVolumeFile(logic.volumesLogic, str(slicer_scene.SAMPLE_POOL / "images" / f"{case}.nii.gz"))
        for case in slicer_scene.SAMPLE_CASES
    ]
    spec = logic.prepareJob("rank", tmp_path / "work", "default", budget=4, query=jobQuery(1, unit="slice"))
    result = jobProcess.runWorker(spec.jobDir, python=sys.executable, onEvent=lambda item: None, timeout=600)
    assert result.status == "done", result
    logic.loadJobResult(spec.jobDir, "default", showPredictions=False)

    proposed = {node.GetName(): logic.proposals(node) for node in nodes}
    assert sum(len(p) for p in proposed.values()) == 4
    assert all(u.unit == "slice" for p in proposed.values() for u in p)
    node = next(n for n in nodes if proposed[n.GetName()])
    first = logic.jumpToNextProposal(node)
    assert first == 0
    shape = node.GetImageData().GetDimensions()
    unit = logic.proposals(node)[0]
    assert 0 <= unit.index < shape[unit.axis]
    card = logic.modelCard("default")
    segmentationNode = logic.annotationSegmentation(node, card)
    assert logic.savedLabels(node, card, segmentationNode) is None  # nothing done yet: not labelled
    logic.markProposalDone(node)
    saved = logic.savedLabels(node, card, segmentationNode).labels
    assert int(np.count_nonzero(saved != NOT_ANNOTATED)) == int(np.prod(shape)) // shape[unit.axis]
