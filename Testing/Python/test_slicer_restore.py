"""The Slicer module after a scene close (or a restart of Slicer) with the same volumes loaded again: the work
folder's last ranking comes back on them (ASSFTSceneLogic.restoreLatestRanking, what the panel does when entered),
and never on a volume loaded from another file (real slicer-core MRML; the job's result written by the test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import ranking  # noqa: E402
from ASSFTModuleLib.geometry import loadVolumeFile  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from slicer_scene import SAMPLE_CASES as CASES  # noqa: E402
from slicer_scene import SAMPLE_POOL as SAMPLE  # noqa: E402
from slicer_scene import finishSampleRankJob  # noqa: E402


def load(logic, data: Path):
    return [loadVolumeFile(logic.volumesLogic, str(data / f"{case}.nii.gz")) for case in CASES]


def rows(scene, table):
    out = []
    for row in range(table.GetNumberOfRows()):
        case, node_id = ranking.rankedCaseFromTable(table, row)
        node = scene.GetNodeByID(node_id) if node_id else None
        out.append((case.caseId, case.rank, node.GetName() if node is not None else None))
    return out


def sampleDataAndScene(tmp_path: Path):
    """``tmp_path/data`` with the sample cases' images, an empty real MRML scene and the module's logic on it."""
    data = tmp_path / "data"
    data.mkdir()
    for case in CASES:
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", data)
    env = slicer_scene.SlicerScene()
    return data, env, ASSFTSceneLogic(env.scene, env.appLogic)


def test_after_a_scene_close_the_last_ranking_comes_back_on_the_volumes_loaded_again(tmp_path):
    data, env, logic = sampleDataAndScene(tmp_path)
    nodes = load(logic, data)
    spec = logic.prepareJob("rank", tmp_path / "work", "default", budget=1)
    finishSampleRankJob(spec)
    before = rows(env.scene, logic.loadJobResult(spec.jobDir, "default").tableNode)
    assert [name for _, _, name in before] == list(reversed(CASES))

    env.scene.Clear(0)  # File > Close Scene: node IDs are reused by what is loaded next
    assert logic.restoreLatestRanking(tmp_path / "work") is None  # nothing loaded: nothing to attach to
    shutil.copy(SAMPLE / "images" / "hippocampus_035.nii.gz", data / "other.nii.gz")
    other = loadVolumeFile(logic.volumesLogic, str(data / "other.nii.gz"))  # takes the first reused ID
    nodes = load(logic, data)
    assert other.GetID() == "vtkMRMLScalarVolumeNode1"

    job_dir, loaded = logic.restoreLatestRanking(tmp_path / "work")

    assert job_dir == spec.jobDir and rows(env.scene, loaded.tableNode) == before
    assert set(loaded.predictionNodes) == set(CASES) and not loaded.skippedCases
    assert logic.caseForVolume(loaded.tableNode, other) is None
    assert all(logic.caseForVolume(loaded.tableNode, node) is not None for node in nodes)


def test_the_panel_restores_the_table_at_once_and_each_prediction_on_a_later_turn_skipping_removed_volumes(tmp_path):
    """What the panel's enter() asks for (a CT pool froze it for 1.5 s building every prediction in one call)."""
    data, env, logic = sampleDataAndScene(tmp_path)
    load(logic, data)
    finishSampleRankJob(logic.prepareJob("rank", tmp_path / "work", "default", budget=1))
    env.scene.Clear(0)
    nodes = load(logic, data)

    later = []
    _, loaded = logic.restoreLatestRanking(tmp_path / "work", schedule=later.append)

    assert loaded.tableNode is not None and loaded.predictionNodes == {}
    assert len(later) == len(CASES) and not env.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems()
    env.scene.RemoveNode(nodes[0])  # the user closed one volume before its turn came
    shown = [show() for show in later]
    assert sum(node is not None for node in shown) == len(CASES) - 1
    assert env.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == len(CASES) - 1
