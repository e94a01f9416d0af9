"""Partial labels annotated at the region (or slice) unit survive a restart (issue 27 item 3): a saved label read back
by the Slicer module's logic or by the browser marks its proposed units done again and keeps its unannotated voxels
not annotated (255), instead of refusing the file or turning those voxels into background; a later ranking that
proposes nothing for the volume does not turn them into background either (real slicer-core MRML)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import slicer_scene
from slicer_scene import RecordingRunner, fakeFinishedJob

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, segmentation, unitProposals  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.parameters import jobQuery  # noqa: E402
from ASSFTModuleLib.unitProposals import UnitProposal  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402
from ASSFTActive.partial import NOT_ANNOTATED  # noqa: E402
from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402

NAMES = ("case_a", "case_b", "case_c")
#: Region proposals of 'case_b' (20 x 16 x 12 voxels, tiles of 8 x 8 x 6): the two done ones overlap at the edge tile
#: (i 8..16 and 12..20), so their union is one box that is neither of them.
REGIONS = [
    {"start": [8, 8, 6], "size": [8, 8, 6], "score": 0.9},
    {"start": [0, 0, 0], "size": [8, 8, 6], "score": 0.6},
    {"start": [12, 8, 6], "size": [8, 8, 6], "score": 0.4},
]


def region(record) -> UnitProposal:
    return UnitProposal.fromRecord(record)


# ------------------------------------------------------------------ the rule: units whose union is the annotated mask


def test_units_from_a_mask_are_its_slices_or_its_boxes_and_their_union_is_exactly_the_mask():
    mask = np.zeros((6, 5, 4), bool)
    mask[:, :, [1, 3]] = True
    assert [u.toRecord(False) for u in unitProposals.unitsFromMask(mask)] == [
        {"axis": 2, "index": 1},
        {"axis": 2, "index": 3},
    ]
    boxes = np.zeros((6, 5, 4), bool)
    boxes[0:2, 0:3, 0:2] = True
    boxes[4:6, 2:5, 1:4] = True
    assert [u.toRecord(False) for u in unitProposals.unitsFromMask(boxes)] == [
        {"start": [0, 0, 0], "size": [2, 3, 2]},
        {"start": [4, 2, 1], "size": [2, 3, 3]},
    ]
    odd = np.zeros((6, 5, 4), bool)  # an L shape and a lone voxel: any union of boxes will do, but exactly
    odd[1:4, 1, 1:3] = True
    odd[1, 1:4, 1:3] = True
    odd[5, 4, 3] = True
    units = unitProposals.unitsFromMask(odd)
    np.testing.assert_array_equal(unitProposals.unitMask(odd.shape, units), odd)
    assert unitProposals.unitsFromMask(np.zeros((6, 5, 4), bool)) == ()


def test_units_from_a_mask_take_the_proposals_lying_wholly_inside_it_first():
    mask = np.zeros((20, 16, 12), bool)
    mask[8:20, 8:16, 6:12] = True  # REGIONS[0] and REGIONS[2]
    mask[0, 0, 0] = True  # and one voxel no proposal holds
    proposals = [region(r) for r in REGIONS]
    units = unitProposals.unitsFromMask(mask, proposals)
    assert units[:2] == (proposals[0], proposals[2])
    assert [u.toRecord(False) for u in units[2:]] == [{"start": [0, 0, 0], "size": [1, 1, 1]}]


def test_a_mask_that_is_no_few_boxes_is_refused_saying_so():
    checker = np.indices((16, 16, 16)).sum(axis=0) % 2 == 0
    with pytest.raises(ASSFTModuleError, match="not annotated in slices or regions"):
        unitProposals.unitsFromMask(checker, limit=100)


# ------------------------------------------------------------------ Slicer: the MRML logic


@pytest.fixture()
def files(tmp_path):
    """Three rotated volumes as files in ``data/``; the painted labels of 'case_b'."""
    data = tmp_path / "data"
    for n, name in enumerate(NAMES):
        affine = slicer_scene.rotatedAffine(angleDegrees=10.0 * n, origin=(n, -n, 2 * n))
        write_volume(Volume(slicer_scene.syntheticImage(seed=n), affine), data / f"{name}.nii.gz")
    return data


def openScene(files, cardPath=None, folder=None):
    """A fresh scene (Slicer started again) with the volumes loaded from their files: ``(env, logic, card, nodes)``."""
    env = slicer_scene.SlicerScene()
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    cardPath = cardPath or slicer_scene.writeModelCard(folder / "model")
    nodes = [geometry.loadVolumeFile(logic.volumesLogic, str(files / f"{name}.nii.gz")) for name in NAMES]
    return env, logic, logic.modelCard(cardPath), cardPath, nodes


def regionRanking(logic, cardPath, nodes, tmp_path):
    """A rank job with unit region, finished as the worker would, REGIONS proposed for 'case_b'; loaded."""
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=3, query=jobQuery(1, unit="region"))
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    path = spec.jobDir / "ranking.json"
    record = json.loads(path.read_text())
    record["unit"] = "region"
    for case in record["cases"]:
        if case["case_id"] == "case_b":
            case["proposed_regions"] = REGIONS
    path.write_text(json.dumps(record))
    logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)
    return spec


def paintAndMarkTwo(logic, card, node):
    """Paint 'case_b' with syntheticLabels, mark REGIONS[0] and REGIONS[2] done; the label as it must be saved."""
    painted = slicer_scene.syntheticLabels()
    segmentation.fillSegmentationFromClassLabelmap(
        logic.annotationSegmentation(node, card), Volume(painted, geometry.ijkToRasArray(node)), card
    )
    logic.markProposalDone(node, 0)
    logic.markProposalDone(node, 2)
    expected = np.full(painted.shape, NOT_ANNOTATED, np.uint8)
    expected[8:20, 8:16, 6:12] = painted[8:20, 8:16, 6:12]
    return expected


def test_a_later_ranking_that_proposes_nothing_for_the_volume_keeps_its_unannotated_voxels_not_annotated(
    files, tmp_path
):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    regionRanking(logic, cardPath, nodes, tmp_path)
    expected = paintAndMarkTwo(logic, card, nodes[1])
    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    np.testing.assert_array_equal(read_volume(spec.job.labels["case_b"]).array, expected)

    fakeFinishedJob(spec, nodes, tmp_path, kind="adapt")  # Adapt's re-rank: 'case_b' is labelled, nothing proposed
    logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)

    assert {u.key for u in unitProposals.doneUnits(nodes[1])} == {region(REGIONS[0]).key, region(REGIONS[2]).key}
    np.testing.assert_array_equal(logic.savedLabels(nodes[1], card).labels, expected)
    again = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    np.testing.assert_array_equal(read_volume(again.job.labels["case_b"]).array, expected)


@pytest.mark.parametrize("rankingFirst", [False, True], ids=["labels-then-ranking", "ranking-then-labels"])
def test_after_a_restart_a_saved_region_label_marks_its_proposed_regions_done_and_keeps_the_rest_not_annotated(
    files, tmp_path, rankingFirst
):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    regionRanking(logic, cardPath, nodes, tmp_path)
    expected = paintAndMarkTwo(logic, card, nodes[1])
    saved = Path(logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1).job.labels["case_b"])
    np.testing.assert_array_equal(read_volume(saved).array, expected)

    env, logic, card, cardPath, nodes = openScene(files, cardPath)  # Slicer started again: a new scene
    if rankingFirst:
        assert logic.restoreLatestRanking(tmp_path / "work") is not None
    logic.loadSavedLabels(nodes[1], saved, card)
    if not rankingFirst:
        assert logic.restoreLatestRanking(tmp_path / "work") is not None

    assert [p.key for p in logic.proposals(nodes[1])] == [region(r).key for r in REGIONS]
    assert {u.key for u in unitProposals.doneUnits(nodes[1])} == {region(REGIONS[0]).key, region(REGIONS[2]).key}
    assert unitProposals.progressLine(nodes[1]) == "2 of 3 proposed regions done"
    assert logic.jumpToNextProposal(nodes[1]) == 1
    np.testing.assert_array_equal(logic.savedLabels(nodes[1], card).labels, expected)


def test_a_saved_full_label_is_read_back_whole_and_a_label_with_no_annotated_voxel_is_refused(files, tmp_path):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    affine = geometry.ijkToRasArray(nodes[1])
    full = write_volume(Volume(slicer_scene.syntheticLabels(), affine), tmp_path / "full.nii.gz")
    logic.loadSavedLabels(nodes[1], full, card)
    assert unitProposals.doneUnits(nodes[1]) == () and logic.proposals(nodes[1]) == ()
    np.testing.assert_array_equal(logic.savedLabels(nodes[1], card).labels, slicer_scene.syntheticLabels())
    empty = write_volume(Volume(np.full((20, 16, 12), NOT_ANNOTATED, np.uint8), affine), tmp_path / "none.nii.gz")
    with pytest.raises(ASSFTModuleError, match="no annotated voxel"):
        logic.loadSavedLabels(nodes[1], empty, card)


def paint(logic, card, node, labels):
    """Paint ``labels`` (class indices on the node's grid) into the node's annotation segmentation."""
    segmentation.fillSegmentationFromClassLabelmap(
        logic.annotationSegmentation(node, card), Volume(labels, geometry.ijkToRasArray(node)), card
    )


def test_after_a_restart_the_panel_reads_the_labels_back_from_the_newest_job_of_each_volume(files, tmp_path):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    regionRanking(logic, cardPath, nodes, tmp_path)
    expected = paintAndMarkTwo(logic, card, nodes[1])
    full = slicer_scene.syntheticLabels()
    paint(logic, card, nodes[2], full)
    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    assert sorted(spec.job.labels) == ["case_b", "case_c"]

    env, logic, card, cardPath, nodes = openScene(files, cardPath)  # Slicer started again, the scene not saved
    assert logic.restoreLatestRanking(tmp_path / "work") is not None
    restored = logic.restoreSavedLabels(tmp_path / "work", card)

    assert sorted(restored.volumes) == ["case_b", "case_c"] and restored.unreadableJobs == ()
    assert restored.volumes["case_b"] == Path(spec.job.labels["case_b"])
    assert "2 volume(s): case_b, case_c" in restored.statusLine()
    assert {u.key for u in unitProposals.doneUnits(nodes[1])} == {region(REGIONS[0]).key, region(REGIONS[2]).key}
    np.testing.assert_array_equal(logic.savedLabels(nodes[1], card).labels, expected)
    np.testing.assert_array_equal(logic.classLabelmap(nodes[2], card).labels, full)
    assert segmentation.findLabelSegmentation(env.scene, nodes[0], card) is None, "case_a was never labelled"
    assert logic.restoreSavedLabels(tmp_path / "work", card).volumes == {}, "a second call replaces nothing"


def test_labels_in_the_scene_are_never_replaced_and_labels_removed_before_the_newest_job_stay_removed(files, tmp_path):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    full = slicer_scene.syntheticLabels()
    for node in nodes[1:]:
        paint(logic, card, node, full)
    logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)  # saves both labels
    removed = segmentation.findLabelSegmentation(env.scene, nodes[2], card)
    env.scene.RemoveNode(removed)  # the user deleted case_c's labels, then ranked again
    newest = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    assert sorted(newest.job.labels) == ["case_b"]

    env, logic, card, cardPath, nodes = openScene(files, cardPath)
    other = full.copy()
    other[other > 0] = 1  # case_b painted again, differently, before the panel restores anything
    paint(logic, card, nodes[1], other)
    restored = logic.restoreSavedLabels(tmp_path / "work", card)

    assert restored.volumes == {} and restored.statusLine() == ""
    np.testing.assert_array_equal(logic.classLabelmap(nodes[1], card).labels, other)
    assert segmentation.findLabelSegmentation(env.scene, nodes[2], card) is None, "deleted labels came back"


def twoRankJobsWithLabels(files, tmp_path):
    """'case_b' painted, then two rank jobs prepared one after the other: ``(cardPath, older, newest)``."""
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    paint(logic, card, nodes[1], slicer_scene.syntheticLabels())
    older = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    return cardPath, older, logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)


def test_a_job_folder_with_a_broken_case_list_is_named_and_the_other_jobs_labels_still_come_back(files, tmp_path):
    cardPath, older, broken = twoRankJobsWithLabels(files, tmp_path)
    (broken.jobDir / "slicer-cases.json").write_text("{not json")

    env, logic, card, cardPath, nodes = openScene(files, cardPath)
    restored = logic.restoreSavedLabels(tmp_path / "work", card)

    assert restored.volumes == {"case_b": Path(older.job.labels["case_b"])}
    assert restored.unreadableJobs == (broken.jobDir,)
    assert broken.jobDir.name in restored.statusLine() and "not read back" in restored.statusLine()


def test_older_job_folders_are_not_read_once_the_newest_job_has_decided_every_volume(files, tmp_path):
    cardPath, older, newest = twoRankJobsWithLabels(files, tmp_path)
    cases = older.jobDir / "slicer-cases.json"
    cases.write_text("{not json")
    stamp = (newest.jobDir / "slicer-cases.json").stat().st_mtime_ns - 10**9
    os.utime(cases, ns=(stamp, stamp))  # prepared a second before the newest job

    env, logic, card, cardPath, nodes = openScene(files, cardPath)
    restored = logic.restoreSavedLabels(tmp_path / "work", card)

    assert restored.volumes == {"case_b": Path(newest.job.labels["case_b"])}
    assert restored.unreadableJobs == (), "the newest job held every volume, so the older one was not read"


def test_labels_are_not_read_back_onto_a_volume_loaded_from_another_file(files, tmp_path):
    env, logic, card, cardPath, nodes = openScene(files, folder=tmp_path)
    full = slicer_scene.syntheticLabels()
    paint(logic, card, nodes[1], full)
    logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    image = read_volume(files / "case_b.nii.gz")
    write_volume(Volume(image.array + 1, image.affine), files / "case_b.nii.gz")  # the file changed since

    env, logic, card, cardPath, nodes = openScene(files, cardPath)
    assert logic.restoreSavedLabels(tmp_path / "work", card).volumes == {}
    assert segmentation.findLabelSegmentation(env.scene, nodes[1], card) is None


# ------------------------------------------------------------------ the browser


SAMPLE = slicer_scene.SAMPLE_POOL
CASE = "hippocampus_011"  # 36 x 50 x 31 voxels


def startServer(data):
    """What ``assft serve --data DATA`` does at start, on a fresh scene: load the pool and labels, the last ranking."""
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=data), RecordingRunner)
    session.env = env
    session.load_pool()
    session.restore_ranking()
    return session


def test_a_restarted_server_marks_the_done_regions_again_and_saves_the_same_partial_label(tmp_path):
    data = tmp_path / "data"
    (data / "labels").mkdir(parents=True)
    shutil.copy(SAMPLE / "images" / f"{CASE}.nii.gz", data)
    shutil.copy(SAMPLE / "labels" / f"{CASE}.nii.gz", data / "labels")
    full = read_volume(data / "labels" / f"{CASE}.nii.gz").array
    boxes = [
        UnitProposal("region", start=(10, 16, 8), size=(16, 16, 16)),
        UnitProposal("region", start=(0, 0, 0), size=(16, 16, 8)),
        UnitProposal("region", start=(20, 34, 15), size=(16, 16, 16)),
    ]
    session = startServer(data)
    node = session.volume_node(CASE)
    unitProposals.setProposals(node, boxes)
    session.next_proposal(node)
    session.mark_done(node)
    session.next_proposal(node)
    session.next_proposal(node)
    assert session.mark_done(node) == "2 of 3 proposed regions done; now: region at [20, 34, 15], 16x16x16 voxels"
    written = read_volume(session.save_labels(node).path).array
    expected = np.full(full.shape, NOT_ANNOTATED, np.uint8)
    for box in (boxes[0], boxes[2]):
        where = box.voxelSlices(full.shape)
        expected[where] = full[where]
    np.testing.assert_array_equal(written, expected)

    again = startServer(data)  # stopped and started again

    assert not [m for m in again.messages if "not used" in m], again.messages
    node = again.volume_node(CASE)
    assert {u.key for u in unitProposals.doneUnits(node)} == {boxes[0].key, boxes[2].key}
    assert again.voxel_counts(node) == {"anterior": int(np.sum(expected == 1)), "posterior": int(np.sum(expected == 2))}
    np.testing.assert_array_equal(read_volume(again.save_labels(node).path).array, expected)
