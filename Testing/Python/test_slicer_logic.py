"""The module logic end to end on real MRML, with job result files written by the test (no worker here).

prepareJob: scene -> job folder (job.json per the engine's protocol, images and labels the engine reads back).
loadJobResult / showCase: result.json + ranking + regions + entropy maps + predictions -> table, chart,
prediction segmentations, overlay, region markups.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, jobFolder, segmentation  # noqa: E402
from ASSFTModuleLib.errors import (  # noqa: E402
    ASSFTModuleError,
    JobFailedError,
    ResultFormatError,
    UnknownSegmentNamesError,
)
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.records import CaseState  # noqa: E402
from slicer_scene import fakeFinishedJob  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402


@pytest.fixture()
def pool(tmp_path):
    """A scene with three rotated volumes; 'case b' has a manual segmentation."""
    return (*slicer_scene.threeVolumeScene(tmp_path), tmp_path)


def test_pool_is_the_grey_level_volumes_only(pool):
    env, logic, card, _, nodes, _ = pool
    logic.showEntropy(nodes[0], Volume(np.zeros((20, 16, 12), np.float32), geometry.ijkToRasArray(nodes[0])), 0.5, 0.5)
    geometry.addVolumeNode(env.scene, Volume(slicer_scene.syntheticLabels(), np.eye(4)), "labels", labelMap=True)

    assert logic.poolVolumeNodes() == nodes
    assert [logic.isLabeled(node, card) for node in nodes] == [False, True, False]


def test_prepare_job_writes_job_json_images_and_labels_the_engine_reads(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool

    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=2, query={"strategy": "assft"})

    job = json.loads((spec.jobDir / "job.json").read_text())
    assert spec.jobDir.parent == tmp_path / "work" / "jobs"
    assert set(job) >= {"kind", "images", "labels", "model", "store", "name", "budget", "query", "finetune"}
    assert job["kind"] == "rank" and job["budget"] == 2 and job["query"] == {"strategy": "assft"}
    assert job["model"] == str(cardPath.resolve()) and job["name"] == ""  # the engine names adapted models
    assert job["store"] == str((tmp_path / "work" / "models").resolve())
    assert list(job["images"]) == ["case_a", "case_b", "case_c"]
    assert list(job["labels"]) == ["case_b"]
    assert spec.caseNodeIds == {"case_a": nodes[0].GetID(), "case_b": nodes[1].GetID(), "case_c": nodes[2].GetID()}
    for caseId, node in zip(["case_a", "case_b", "case_c"], nodes):
        engine = read_volume(job["images"][caseId])
        np.testing.assert_array_equal(engine.array, geometry.volumeFromNode(node).array)
        np.testing.assert_allclose(engine.affine, geometry.ijkToRasArray(node), atol=1e-9)
    label = read_volume(job["labels"]["case_b"])
    np.testing.assert_array_equal(label.array, slicer_scene.syntheticLabels())
    np.testing.assert_allclose(label.affine, geometry.ijkToRasArray(nodes[1]), atol=1e-9)
    assert jobFolder.readCaseNodes(spec.jobDir)["case_c"] == {
        "node_id": nodes[2].GetID(),
        "name": "case/c",
        "token": nodes[2].GetAttribute("ASSFT.CaseToken"),
        # written from the scene (no file to link): its voxels' digest, to find it again after a scene reload
        "content": jobFolder.contentFingerprint(geometry.volumeFromNode(nodes[2])),
    }
    # the engine's own job reader accepts the file as written
    from ASSFTActive.jobs import read_job

    engineSpec = read_job(spec.jobDir)
    assert engineSpec.kind == "rank" and dict(engineSpec.labels) == job["labels"]


def test_volumes_under_one_patient_of_the_subject_hierarchy_are_one_subject_in_the_job(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    alone = json.loads((logic.prepareJob("rank", tmp_path / "w0", cardPath, budget=1).jobDir / "job.json").read_text())
    assert "subjects" not in alone, "no patient in the hierarchy: every volume is its own subject"

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(env.scene)
    constants = slicer.vtkMRMLSubjectHierarchyConstants
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 7")
    hierarchy.SetItemAttribute(patient, constants.GetDICOMPatientIDAttributeName(), "PID-7")
    study = hierarchy.CreateStudyItem(patient, "Cine MRI")
    unnamed = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Anonymous 2")
    for node, parent in zip(nodes, (study, study, unnamed)):
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
        hierarchy.SetItemParent(item, parent)

    spec = logic.prepareJob("adapt", tmp_path / "w1", cardPath, budget=1)
    job = json.loads((spec.jobDir / "job.json").read_text())
    assert job["subjects"] == {"case_a": "PID-7", "case_b": "PID-7", "case_c": "Anonymous 2"}
    from ASSFTActive.jobs import read_job

    assert dict(read_job(spec.jobDir).subjects) == job["subjects"]


def test_default_model_is_named_default_in_the_job(pool, monkeypatch):
    env, logic, card, cardPath, nodes, tmp_path = pool
    monkeypatch.setattr(logic, "modelCard", lambda model: card)

    spec = logic.prepareJob("adapt", tmp_path / "work", "default", budget=1)

    assert json.loads((spec.jobDir / "job.json").read_text())["model"] == "default"


def test_prepare_job_refuses_unknown_segment_names_and_adapt_without_labels(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    segmentationNode = segmentation.findSegmentationForVolume(env.scene, nodes[1])
    segmentationNode.GetSegmentation().AddEmptySegment("t", "tumor", (1, 1, 0))

    with pytest.raises(UnknownSegmentNamesError, match="tumor"):
        logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    with pytest.raises(ASSFTModuleError, match="at least one labeled volume"):
        logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1, volumeNodes=[nodes[0], nodes[2]])
    transform = env.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    nodes[2].SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ASSFTModuleError, match="Harden the transform"):
        logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1, volumeNodes=[nodes[2]])
    with pytest.raises(ASSFTModuleError, match="no volumes"):
        logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1, volumeNodes=[])
    assert not (tmp_path / "work" / "jobs").exists() or not any((tmp_path / "work" / "jobs").iterdir())


def test_foreign_segmentations_do_not_block_rank_and_are_never_edited(pool):
    """A segmentation from another project ("liver") on a pool volume: Rank runs (it is left out, and said so),
    Adapt runs on the real annotations, and Annotate makes the module's own segmentation instead of editing it."""
    env, logic, card, cardPath, nodes, tmp_path = pool
    foreign = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "liver work")
    foreign.SetReferenceImageGeometryParameterFromVolumeNode(nodes[0])
    foreign.GetSegmentation().AddEmptySegment("liver", "liver", (1, 0, 0))
    annotation = segmentation.findSegmentationForVolume(env.scene, nodes[1])
    annotation.GetSegmentation().AddEmptySegment("t", "tumor", (1, 1, 0))

    ranked = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    assert sorted(ranked.job.labels) == ["case_b"]
    assert ranked.ignoredSegments == (f"{annotation.GetName()}: tumor",)
    annotation.GetSegmentation().RemoveSegment("t")
    adapted = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    assert sorted(adapted.job.labels) == ["case_b"] and adapted.ignoredSegments == ()

    created = logic.annotationSegmentation(nodes[0], card)
    assert created is not foreign
    assert segmentation.segmentNames(foreign) == ["liver"] and foreign.GetAttribute(segmentation.ROLE_ATTRIBUTE) is None
    assert segmentation.segmentNames(created) == ["anterior", "posterior"]


def test_job_links_unchanged_source_files_instead_of_copying_them(tmp_path):
    """A volume loaded from a file and not changed since is linked into the job (same file on disk); an edited
    one, and one whose file Slicer and the engine read differently, are written from the scene."""
    import os

    from ASSFTActive.io import case_id

    env = slicer_scene.SlicerScene()
    cardPath = slicer_scene.writeModelCard(tmp_path / "model")
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    nodes = []
    for n in range(2):
        path = write_volume(
            Volume(slicer_scene.syntheticImage(seed=n), slicer_scene.rotatedAffine()),
            tmp_path / "data" / f"scan{n}.nii.gz",
        )
        nodes.append(env.volumesLogic.AddArchetypeVolume(str(path), f"scan{n}", 0))
    edited = nodes[1].GetImageData()
    edited.GetPointData().GetScalars().SetValue(0, 4321)
    edited.Modified()
    nodes[1].Modified()

    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)

    linked, written = Path(spec.job.images["scan0"]), Path(spec.job.images["scan1"])
    assert linked.parent == written.parent == spec.jobDir / "images"
    assert os.path.samefile(linked, tmp_path / "data" / "scan0.nii.gz")
    assert not os.path.samefile(written, tmp_path / "data" / "scan1.nii.gz") and written.suffix == ".nrrd"
    assert read_volume(written).array.flat[0] == 4321
    assert json.loads((spec.jobDir / "job.json").read_text())["images"]["scan0"] == str(linked)
    assert all(case_id(path) == caseId for caseId, path in spec.job.images.items())


def test_case_ids_are_unique_and_file_safe():
    from ASSFTActive.io import case_id

    names = ["a b", "a b", "a_b", "../x", "", "a b", "scan.seg", "t1.nii", "ü-ß"]
    ids = jobFolder.assignCaseIds(names)

    assert ids == ["a_b", "a_b_2", "a_b_3", "x", "volume", "a_b_4", "scan_seg", "t1_nii", "volume_2"]
    # the engine derives the same id from the file the job writes
    assert all(case_id(f"/jobs/images/{caseId}{jobFolder.IMAGE_SUFFIX}") == caseId for caseId in ids)


def test_load_job_result_fills_table_chart_predictions_and_active_model(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    newCard = fakeFinishedJob(spec, nodes, tmp_path)

    loaded = logic.loadJobResult(spec.jobDir, cardPath)

    assert loaded.activeModel == newCard and loaded.adaptedModel == newCard
    assert loaded.result.metrics["dice"] == 0.8 and loaded.result.pseudoLabeled == ("case_a",)
    table = loaded.tableNode
    column = table.GetTable().GetColumnByName
    assert [column("Volume").GetValue(r) for r in range(3)] == ["case/c", "case b", "case a"]
    assert [column("State").GetValue(r) for r in range(3)] == [
        CaseState.PROPOSED,
        CaseState.LABELED,
        CaseState.PSEUDO_LABELED,
    ]
    assert loaded.chartNode.GetNumberOfPlotSeriesNodes() == 2
    assert sorted(loaded.predictionNodes) == ["case_a", "case_b", "case_c"]
    for caseId, node in zip(["case_a", "case_b", "case_c"], nodes):
        prediction = loaded.predictionNodes[caseId]
        assert prediction is not segmentation.findSegmentationForVolume(env.scene, node)
        conversion = segmentation.segmentationToClassLabelmap(env.scene, prediction, node, card)
        np.testing.assert_array_equal(conversion.labels, slicer_scene.syntheticLabels())
    # refreshing again reuses the same nodes
    again = logic.loadJobResult(spec.jobDir, cardPath, tableNode=table)
    assert again.tableNode is table and again.predictionNodes["case_a"] is loaded.predictionNodes["case_a"]


def test_show_case_puts_volume_overlay_and_regions_in_the_views(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    loaded = logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)

    other = logic.showCase(loaded.tableNode, 1, threshold=0.4, opacity=0.6)
    view = logic.showCase(loaded.tableNode, 0, threshold=0.4, opacity=0.6)

    assert not other.regionsNode.GetDisplayNode().GetVisibility() and view.regionsNode.GetDisplayNode().GetVisibility()
    assert loaded.activeModel is None and loaded.predictionNodes == {}
    assert view.case.caseId == "case_c" and view.volumeNode is nodes[2]
    assert geometry.sameGeometry(view.overlayNode, nodes[2])
    for composite in env.nodes("vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == nodes[2].GetID()
        assert composite.GetForegroundVolumeID() == view.overlayNode.GetID()
    expected = (geometry.ijkToRasArray(nodes[2]) @ [9.5, 6.0, 4.5, 1.0])[:3]
    np.testing.assert_allclose(logic.regionCenter(view.regionsNode, 0), expected, atol=1e-9)
    assert view.regions[0].voxelCount == 80
    assert logic.caseForVolume(loaded.tableNode, nodes[2]) == view.case
    assert logic.caseForVolume(loaded.tableNode, nodes[0]).caseId == "case_a"
    offsets = logic.jumpToRegion(view.regionsNode, 0)
    assert offsets["Red"] == pytest.approx(float(expected[2]))


def test_case_whose_volume_left_the_scene_is_loaded_from_the_job_image(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    env.scene.RemoveNode(nodes[2])

    loaded = logic.loadJobResult(spec.jobDir, cardPath)
    view = logic.showCase(loaded.tableNode, 0, threshold=0.4, opacity=0.6)

    assert loaded.skippedCases == ("case_c",)
    assert view.volumeNode.GetName() == "case_c"
    np.testing.assert_array_equal(geometry.volumeFromNode(view.volumeNode).array, slicer_scene.syntheticImage(seed=2))


def test_failed_job_reports_the_workers_error(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    (spec.jobDir / "events.jsonl").write_text(
        json.dumps({"event": "phase", "phase": "rank", "message": "start"})
        + "\n"
        + json.dumps({"event": "error", "phase": "rank", "message": "cancelled"})
        + "\n"
    )
    (spec.jobDir / "log.txt").write_text("line 1\nline 2\n")

    with pytest.raises(JobFailedError, match="cancelled") as caught:
        logic.loadJobResult(spec.jobDir, cardPath)
    assert caught.value.logTail == "line 1\nline 2"

    (spec.jobDir / "result.json").write_text(json.dumps({"status": "cancelled", "message": "stopped by the user"}))
    with pytest.raises(JobFailedError, match="status 'cancelled': stopped by the user"):
        logic.loadJobResult(spec.jobDir, cardPath)


def test_logic_imports_headless_without_qt_or_torch():
    code = (
        f"import sys; sys.path[:0] = [{str(slicer_scene.REPO_ROOT)!r}, {str(slicer_scene.MODULE_DIR)!r}]\n"
        "import ASSFTModuleLib.logic, ASSFTModuleLib.jobFolder, ASSFTModuleLib.jobProcess\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'qt', 'ctk', 'PythonQt')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert output.stdout.strip() == "[]"


def test_annotating_a_proposed_volume_marks_its_row_labeled(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("rank", tmp_path / "work", cardPath, budget=1)
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    loaded = logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)
    assert logic.refreshLabeledStates(loaded.tableNode, card) == 0

    annotation = logic.annotationSegmentation(nodes[2], card, predictionPath=loaded.result.predictions["case_c"])

    np.testing.assert_array_equal(
        logic.classLabelmap(nodes[2], card, annotation).labels, slicer_scene.syntheticLabels()
    )
    assert logic.refreshLabeledStates(loaded.tableNode, card) == 1
    assert loaded.tableNode.GetTable().GetColumnByName("State").GetValue(0) == CaseState.LABELED


def test_adapted_model_that_was_not_activated_leaves_the_active_model(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    newCard = fakeFinishedJob(spec, nodes, tmp_path, activated=False)

    loaded = logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)

    assert loaded.activeModel is None and loaded.adaptedModel == newCard
    assert not loaded.result.activated


def test_result_without_the_top_level_activated_and_pseudo_labeled_keys_is_refused(pool):
    env, logic, card, cardPath, nodes, tmp_path = pool
    spec = logic.prepareJob("adapt", tmp_path / "work", cardPath, budget=1)
    fakeFinishedJob(spec, nodes, tmp_path)
    path = spec.jobDir / "result.json"
    complete = json.loads(path.read_text())

    # only the top-level keys count; the copies in metrics are there for older readers
    path.write_text(json.dumps(dict(complete, activated=False, pseudo_labeled=[])))
    loaded = logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)
    assert loaded.activeModel is None and loaded.result.pseudoLabeled == ()
    for key in ("activated", "pseudo_labeled"):
        path.write_text(json.dumps({k: v for k, v in complete.items() if k != key}))
        with pytest.raises(ResultFormatError, match=key):
            logic.loadJobResult(spec.jobDir, cardPath, showPredictions=False)
