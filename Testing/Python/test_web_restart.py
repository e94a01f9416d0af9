"""The last ranking survives a restart of ``assft serve`` (issue 26.11): a new server on the same data folder shows the
last successful ranking again (table, probably-wrong list, overlays, regions, predictions) on the volumes it ranked,
and only on volumes loaded from the very same, unchanged files (real slicer-core MRML; no trame, no browser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import jobFolder, ranking  # noqa: E402
from slicer_scene import SAMPLE_CASES as CASES  # noqa: E402
from slicer_scene import SAMPLE_POOL as SAMPLE  # noqa: E402
from slicer_scene import RecordingRunner, finishSampleRankJob  # noqa: E402

from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402


def start_server(data: Path) -> AnnotatorSession:
    """What ``assft serve --data DATA`` does at start, on a fresh scene: load the pool, show the last ranking."""
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=data), RecordingRunner)
    session.env = env  # the scene's logics live as long as the session
    session.load_pool()
    session.restore_ranking()
    return session


def ranked(session) -> list:
    return [(r["volume"], r["rank"], r["score"], r["state"], r["wrong"]) for r in session.ranking_rows()]


def node_of_row(session, case: str):
    table = session.parameters.rankingTable
    for row in range(table.GetNumberOfRows()):
        entry, node_id = ranking.rankedCaseFromTable(table, row)
        if entry.caseId == case:
            return session.scene.GetNodeByID(node_id) if node_id else None
    raise AssertionError(f"{case} is not in the ranking")


@pytest.fixture()
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for case in CASES:
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", folder)
    return folder


def ranked_server(data: Path) -> AnnotatorSession:
    session = start_server(data)
    assert session.ranking_rows() == []  # nothing ranked yet in this work folder
    spec = session.start_job("rank")
    finishSampleRankJob(spec)
    session.controller._runner.end(0)
    assert session.controller.lastOutcome.status == "done", session.controller.lastOutcome.message
    return session


def test_a_restarted_server_shows_the_last_ranking_again_on_the_same_files(data):
    first = ranked_server(data)
    before = ranked(first)
    assert [row[0] for row in before] == list(reversed(CASES))

    again = start_server(data)  # stopped and started again: a new scene, the same data and work folder

    assert ranked(again) == before
    assert again.probably_wrong_evidence() == "Spearman 0.5 on the development split"
    for case in CASES:
        node = node_of_row(again, case)
        assert node is not None and node.GetName() == case and node.GetScene() is again.scene
    view = again.show_row(0)
    assert view.volumeNode is again.volume_node(CASES[-1])
    assert view.overlayNode is not None and len(view.regions) == 1
    prediction = again.annotate(view.volumeNode, prefill=True)  # pre-fill finds the ranking's prediction
    assert again.voxel_counts(view.volumeNode, prediction)["anterior"] == 64


def test_results_are_never_attached_to_a_volume_whose_file_changed(data):
    ranked_server(data)
    changed = data / f"{CASES[1]}.nii.gz"
    shutil.copy(SAMPLE / "images" / "hippocampus_035.nii.gz", changed)  # another image under the same name
    os.utime(changed, ns=(1, 1))

    again = start_server(data)

    assert node_of_row(again, CASES[0]) is again.volume_node(CASES[0])
    assert node_of_row(again, CASES[2]) is again.volume_node(CASES[2])
    assert node_of_row(again, CASES[1]) is None  # its row stays (the job's own image), no loaded volume gets it
    segmentations = [
        again.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        for i in range(again.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))
    ]
    changed_node = again.volume_node(CASES[1])
    assert all(
        s.GetNodeReferenceID(s.GetReferenceImageGeometryReferenceRole()) != changed_node.GetID() for s in segmentations
    )
    assert again.logic.caseForVolume(again.parameters.rankingTable, changed_node) is None


def test_a_server_on_other_data_with_the_same_work_folder_shows_no_ranking(data, tmp_path):
    ranked_server(data)
    other = tmp_path / "other"
    other.mkdir()
    for case in CASES:  # the same names and voxels, but other files
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", other)
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(
        env.scene, env.appLogic, ServeConfig(data_dir=other, work_dir=data / ".assft"), RecordingRunner
    )
    session.load_pool()
    assert session.restore_ranking() is None and session.ranking_rows() == []


def test_cases_linked_from_their_files_record_which_file_they_are(data):
    session = start_server(data)
    spec = session.start_job("rank")
    cases = jobFolder.readCaseNodes(spec.jobDir)
    for case in CASES:
        stat = (data / f"{case}.nii.gz").stat()
        assert cases[case]["source"] == {
            "path": str((data / f"{case}.nii.gz").resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
        }


@pytest.mark.slow
def test_a_real_ranking_is_shown_again_after_a_restart(data):
    """The worker's own ranking (not written by the test) comes back after a restart, row for row."""
    session = start_server(data)
    spec = session.start_job("rank")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", str(spec.jobDir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    session.controller._runner.end(0)
    before = ranked(session)
    assert len(before) == len(CASES) and any(row[4] for row in before)  # the probably-wrong list is there

    again = start_server(data)

    assert ranked(again) == before
    assert again.show_row(0).overlayNode is not None


def test_the_restarted_page_shows_the_ranking_caption_rows_and_next_step(data):
    """The page itself (the trame app, no browser): a server started on a folder ranked before shows the rows, says
    where they come from, opens the first row and names the next step."""
    pytest.importorskip("trame_slicer", reason="the browser extra (trame-slicer) is not installed")
    from trame.app import get_server

    from ASSFTWeb.app import ASSFTWebApp

    first = ASSFTWebApp(ServeConfig(data_dir=data), server=get_server("assft-first-start"))
    assert first.state.rows == [] and first.state.ranking_caption == "Not ranked yet."
    spec = first.session.logic.prepareJob("rank", data / ".assft", "default", budget=1)
    finishSampleRankJob(spec)

    again = ASSFTWebApp(ServeConfig(data_dir=data), server=get_server("assft-second-start"))

    assert [row["volume"] for row in again.state.rows] == list(reversed(CASES))
    assert again.state.ranking_caption.startswith(f"Last ranking, shown again from job {spec.jobDir.name}")
    assert again.state.current_volume == CASES[-1] and not again.state.error
    assert "proposed" in again.state.next_step
