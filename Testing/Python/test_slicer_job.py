"""End to end with the real worker: the logic prepares a job from a scene, ``python -m ASSFTActive.worker`` runs
it in a child process (this venv's interpreter, as PythonSlicer would in Slicer), and the logic loads the result
back into the scene (ranking table, chart, overlay, regions, predictions, new active model).

Uses three hippocampus cases (not reserved ones) from ``../shared/data/hippocampus`` and the embedded default model.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene
from conftest import HIPPOCAMPUS, read_json
from slicer_scene import RecordingRunner, parameterNode

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, jobProcess, ranking, segmentation  # noqa: E402
from ASSFTModuleLib.jobController import DONE, JobController  # noqa: E402
from ASSFTModuleLib.jobFolder import describeQueryRound  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.parameters import ModelSource, jobQuery  # noqa: E402
from ASSFTModuleLib.records import CaseState  # noqa: E402

from ASSFTActive.io import case_id  # noqa: E402
from ASSFTActive.jobs import RESULT_FILE, read_job  # noqa: E402
from ASSFTActive.progress import Event  # noqa: E402

WORKER_TIMEOUT_S = 600


def hippocampusCases(count: int, reserved) -> list:
    """The first ``count`` hippocampus images that are not reserved."""
    if not (HIPPOCAMPUS / "imagesTr").is_dir():
        pytest.skip(f"{HIPPOCAMPUS} is not available; the end-to-end job test needs the hippocampus sample data")
    images = sorted(p for p in (HIPPOCAMPUS / "imagesTr").glob("*.nii.gz") if case_id(p) not in reserved)
    assert len(images) >= count
    return images[:count]


@pytest.fixture()
def scene(tmp_path, reserved_cases):
    env = slicer_scene.SlicerScene()
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    card = logic.modelCard("default")
    nodes = []
    for path in hippocampusCases(3, reserved_cases):
        nodes.append(env.volumesLogic.AddArchetypeVolume(str(path), path.name[: -len(".nii.gz")], 0))
    # the first volume is annotated: its expert label goes into its class segmentation
    labelPath = HIPPOCAMPUS / "labelsTr" / f"{nodes[0].GetName()}.nii.gz"
    labels = segmentation.readClassLabelmapFile(env.scene, env.volumesLogic, str(labelPath))
    annotation = logic.annotationSegmentation(nodes[0], card)
    segmentation.fillSegmentationFromClassLabelmap(annotation, labels, card)
    return env, logic, card, nodes, tmp_path


def runJob(spec):
    """Run the worker; returns its result and its events (other output lines, e.g. warnings, left out)."""
    outputs = []
    result = jobProcess.runWorker(spec.jobDir, python=sys.executable, onEvent=outputs.append, timeout=WORKER_TIMEOUT_S)
    return result, [item for item in outputs if isinstance(item, Event)]


def test_rank_job_runs_in_the_worker_and_comes_back_as_table_overlay_and_regions(scene):
    env, logic, card, nodes, tmp_path = scene

    spec = logic.prepareJob("rank", tmp_path / "work", "default", budget=2)
    result, events = runJob(spec)
    loaded = logic.loadJobResult(spec.jobDir, "default")

    assert result.status == "done" and result.kind == "rank"
    assert result.pseudoLabeled == () and not result.activated
    assert events[-1].event == "done"
    assert any(e.event == "progress" and e.total > 0 for e in events)
    assert loaded.activeModel is None and loaded.skippedCases == ()
    table = loaded.tableNode
    assert table.GetNumberOfRows() == 3
    column = table.GetTable().GetColumnByName
    states = {column("Case ID").GetValue(r): column("State").GetValue(r) for r in range(3)}
    assert states[nodes[0].GetName()] == CaseState.LABELED
    assert sum(state == CaseState.PROPOSED for state in states.values()) == 2
    assert [column("Rank").GetValue(r) for r in range(3)] == [1, 2, 0]  # the labeled volume is not ranked
    assert column("Case ID").GetValue(2) == nodes[0].GetName()
    for row in (0, 1):  # the two proposed volumes are scored
        assert math.isfinite(column("DKD").GetValue(row)) and math.isfinite(column("ASD").GetValue(row))
    assert loaded.chartNode.GetNthPlotSeriesNode(0).GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter

    # a rank job writes an overlay, regions and a prediction for every volume it ranks, and each of them comes back
    view = logic.showCase(table, 0, threshold=0.3, opacity=0.5)
    assert view.volumeNode in nodes and view.volumeNode is not nodes[0]
    assert view.case.entropyMap is not None and view.overlayNode is not None
    assert geometry.sameGeometry(view.overlayNode, view.volumeNode)
    composites = env.nodes("vtkMRMLSliceCompositeNode")
    assert len(composites) == 3
    assert all(c.GetForegroundVolumeID() == view.overlayNode.GetID() for c in composites)
    assert view.regionsNode is not None and view.regions, "the top-ranked volume has high-entropy regions"
    assert view.regionsNode.GetNumberOfControlPoints() == len(view.regions)
    np.testing.assert_allclose(logic.regionCenter(view.regionsNode, 0), view.regions[0].centerRas)
    assert sorted(loaded.predictionNodes) == sorted(node.GetName() for node in nodes[1:])  # not the labeled one
    for predictionNode in loaded.predictionNodes.values():
        assert segmentation.segmentNames(predictionNode) == list(card.class_names[1:])


@pytest.mark.slow
def test_adapt_job_makes_a_new_active_model_and_refreshes_predictions(scene):
    env, logic, card, nodes, tmp_path = scene
    # the smallest real run: one supervised and one semi-supervised step on 16^3 patches
    # with one labelled volume the guard cannot cross-validate; switched off, the new version is activated
    finetune = {
        "train": {"iterations": 1, "batch_size": 1, "patch_size": [16, 16, 16], "augment": False},
        "semi_iterations": 1,
        "validation": {"guard": False},
    }

    # the panel's two query rounds over a budget of 2 (1 + 1): one volume is labelled, so the re-ranking with the
    # adapted model is round 2 and proposes one volume
    spec = logic.prepareJob("adapt", tmp_path / "work", "default", budget=2, finetune=finetune, query=jobQuery(2))
    assert read_job(spec.jobDir).query == {"rounds": 2}
    result, events = runJob(spec)
    loaded = logic.loadJobResult(spec.jobDir, "default")

    assert result.status == "done" and result.kind == "adapt"
    assert describeQueryRound(loaded.queryRound) == "Query round 2 of 2 (1 + 1 volumes): 1 volume proposed."
    assert loaded.activeModel is not None and Path(loaded.activeModel).is_file()
    assert Path(loaded.activeModel).resolve().is_relative_to((tmp_path / "work" / "models").resolve())
    assert logic.modelCard(loaded.activeModel).class_names == card.class_names
    assert loaded.tableNode is not None and loaded.tableNode.GetNumberOfRows() == 3
    assert any(e.event == "phase" and e.phase == "train" for e in events)
    states = [loaded.tableNode.GetTable().GetColumnByName("State").GetValue(r) for r in range(3)]
    assert states.count(CaseState.LABELED) == 1 and states.count(CaseState.PROPOSED) == 1
    # what the module read is what the worker wrote, each key once (no copies inside the metrics)
    written = read_json(Path(spec.jobDir) / RESULT_FILE)  # the file as written
    assert loaded.result.activated is True and written["activated"] is True
    assert "guard is off" in loaded.result.activationReason == written["activation"]["reason"]
    assert list(loaded.result.pseudoLabeled) == written["pseudo_labeled"]
    assert "activated" not in written["metrics"] and "pseudo_labeled" not in written["metrics"]
    # selective pseudo-labelling keeps the top half of the two unlabelled volumes: ceil(0.5 * 2) = 1
    (pseudoCase,) = loaded.result.pseudoLabeled
    assert pseudoCase != nodes[0].GetName()
    row = ranking.tableRowOfCase(loaded.tableNode, pseudoCase)
    assert states[row] in (CaseState.PSEUDO_LABELED, CaseState.PROPOSED)
    assert loaded.predictionNodes, "an adapt job refreshes the predictions of the pool"
    for caseId, predictionNode in loaded.predictionNodes.items():
        volumeNode = env.scene.GetNodeByID(spec.caseNodeIds[caseId])
        conversion = segmentation.segmentationToClassLabelmap(env.scene, predictionNode, volumeNode, card)
        assert conversion.labels.shape == geometry.volumeFromNode(volumeNode).shape


@pytest.mark.slow
def test_sfr_plus_job_from_the_scene_runs_in_the_worker_and_comes_back_like_adapt(scene):
    env, logic, card, nodes, tmp_path = scene
    # the smallest real SFR+ run: two SAM steps, two re-training steps; one labelled volume, so no folds
    sfr = {
        "method": "sfr_plus",
        "sam": {"iterations": 2, "batch_size": 1},
        "retrain": {"iterations": 2, "batch_size": 1, "patch_size": [16, 16, 16]},
        "validation": {"guard": False},
    }

    spec = logic.prepareJob("sfr", tmp_path / "work", "default", budget=1, sfr=sfr)
    result, events = runJob(spec)
    loaded = logic.loadJobResult(spec.jobDir, "default")

    assert result.status == "done" and result.kind == "sfr" and result.adaptMethod == "SFR+"
    assert any(e.phase == "sfr_finetune" for e in events) and events[-1].event == "done"
    assert loaded.activeModel is not None and loaded.adaptedModel == loaded.activeModel
    assert "guard is off" in loaded.result.activationReason
    assert logic.modelCard(loaded.activeModel).class_names == card.class_names
    written = read_json(Path(spec.jobDir) / RESULT_FILE)  # the file as written
    assert written["metrics"]["method"] == "sfr_plus" and list(loaded.result.pseudoLabeled) == written["pseudo_labeled"]
    assert len(written["pseudo_labeled"]) == 1  # SFR+ keeps ceil(0.5 * 2) of the two unlabelled volumes
    assert loaded.tableNode is not None and loaded.tableNode.GetNumberOfRows() == 3  # re-ranked like adapt
    assert sorted(loaded.predictionNodes) == sorted(node.GetName() for node in nodes[1:])


def test_two_query_rounds_from_the_panel_rank_the_first_rounds_share_in_the_worker(scene):
    """The panel's Query rounds through the job controller into the real worker: budget 4 over 2 rounds is 2 + 2;
    one volume of the pool is labelled already, so round 1 proposes the 1 volume left of its share."""
    env, logic, card, nodes, tmp_path = scene
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    node = parameterNode(tmp_path / "work", Path(""), queryRounds=2, budget=4)
    node.modelSource = ModelSource.Default  # the embedded default model
    controller.setParameterNode(node)
    finished = []
    controller.finished.connect(finished.append)

    spec = controller.startJob("rank")
    assert read_job(spec.jobDir).query == {"rounds": 2}
    result, _ = runJob(spec)
    controller._runner.end(0)

    outcome = finished[-1]
    assert result.status == "done" and outcome.status == DONE
    assert outcome.message == "Done. Query round 1 of 2 (2 + 2 volumes): 1 volume proposed."
    table = outcome.loaded.tableNode
    states = [table.GetTable().GetColumnByName("State").GetValue(r) for r in range(table.GetNumberOfRows())]
    assert states.count(CaseState.PROPOSED) == 1 and states.count(CaseState.LABELED) == 1
