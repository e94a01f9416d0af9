"""The last ranking survives a restart of ``assft serve`` (issue 26.11): a new server on the same data folder shows the
last successful ranking again (table, probably-wrong list, overlays, regions, predictions) on the volumes it ranked,
and only on volumes loaded from the very same, unchanged files (real slicer-core MRML; no trame, no browser)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import jobFolder, ranking  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402
from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"
CASES = ("hippocampus_011", "hippocampus_023", "hippocampus_026")


class RecordingRunner:
    """Runner interface of the job controller; nothing is started, the run stays 'running' until :meth:`end`."""

    def __init__(self, onEvent, onFinished):
        self.onFinished = onFinished
        self.running = False

    def start(self, command, environment, workingDirectory):
        self.running = True

    def isRunning(self):
        return self.running

    def cancel(self):
        pass

    def end(self, exitCode=0):
        self.running = False
        self.onFinished(exitCode, False, "")


def start_server(data: Path) -> AnnotatorSession:
    """What ``assft serve --data DATA`` does at start, on a fresh scene: load the pool, show the last ranking."""
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=data), RecordingRunner)
    session.env = env  # the scene's logics live as long as the session
    session.load_pool()
    session.restore_ranking()
    return session


def finish_rank_job(spec) -> None:
    """What the worker leaves after ranking: ranking.json with a probably-wrong list, entropy maps and regions on
    each image's grid, predictions, result.json (rank 1 = the last case)."""
    job_dir = spec.jobDir
    cases, predictions = [], {}
    for rank, case in enumerate(reversed(list(spec.job.images)), start=1):
        image = read_volume(spec.job.images[case])
        entropy = np.zeros(image.array.shape, np.float32)
        entropy[10:20, 10:20, 10:20] = 0.9
        entropy_path = write_volume(Volume(entropy, image.affine), job_dir / "overlays" / f"{case}_entropy.nii.gz")
        centre = (image.affine @ [15.0, 15.0, 15.0, 1.0])[:3]
        regions_path = job_dir / "overlays" / f"{case}_regions.json"
        regions_path.write_text(json.dumps({"case_id": case, "threshold": 0.5, "regions": [
            {"center_ras": centre.tolist(), "bbox_ijk_min": [10, 10, 10], "bbox_ijk_max": [19, 19, 19],
             "volume_mm3": 1000.0, "mean_entropy": 0.9, "voxel_count": 1000}]}))
        labels = np.zeros(image.array.shape, np.uint8)
        labels[12:16, 12:16, 12:16] = 1
        prediction = write_volume(Volume(labels, image.affine), job_dir / "predictions" / f"{case}.nii.gz")
        predictions[case] = str(prediction)
        cases.append({"case_id": case, "image": spec.job.images[case], "dkd": 1.0 / rank, "asd": 0.1 * rank,
                      "score": 1.0 / rank, "rank": rank, "selected": rank == 1, "labeled": False,
                      "entropy_map": str(entropy_path), "regions": str(regions_path), "prediction": str(prediction)})
    wrong = {"score": "mean_entropy", "evidence": "Spearman 0.5 on the development split",
             "cases": [CASES[1], CASES[0]]}
    (job_dir / "ranking.json").write_text(json.dumps({"strategy": "assft", "budget": 1, "model": "default",
                                                      "cases": cases, "probably_wrong": wrong}))
    (job_dir / "result.json").write_text(json.dumps({"status": "done", "kind": "rank",
                                                     "ranking": str(job_dir / "ranking.json"),
                                                     "predictions": predictions, "model_card": "default",
                                                     "pseudo_labeled": [], "metrics": {}}))
    (job_dir / "events.jsonl").write_text(json.dumps({"event": "done", "phase": "rank", "message": "ok"}) + "\n")


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
    finish_rank_job(spec)
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
    segmentations = [again.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
                     for i in range(again.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    changed_node = again.volume_node(CASES[1])
    assert all(s.GetNodeReferenceID(s.GetReferenceImageGeometryReferenceRole()) != changed_node.GetID()
               for s in segmentations)
    assert again.logic.caseForVolume(again.parameters.rankingTable, changed_node) is None


def test_a_server_on_other_data_with_the_same_work_folder_shows_no_ranking(data, tmp_path):
    ranked_server(data)
    other = tmp_path / "other"
    other.mkdir()
    for case in CASES:  # the same names and voxels, but other files
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", other)
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=other, work_dir=data / ".assft"),
                               RecordingRunner)
    session.load_pool()
    assert session.restore_ranking() is None and session.ranking_rows() == []


def test_cases_linked_from_their_files_record_which_file_they_are(data):
    session = start_server(data)
    spec = session.start_job("rank")
    cases = jobFolder.readCaseNodes(spec.jobDir)
    for case in CASES:
        stat = (data / f"{case}.nii.gz").stat()
        assert cases[case]["source"] == {"path": str((data / f"{case}.nii.gz").resolve()), "size": stat.st_size,
                                         "mtime_ns": stat.st_mtime_ns}


@pytest.mark.slow
def test_a_real_ranking_is_shown_again_after_a_restart(data):
    """The worker's own ranking (not written by the test) comes back after a restart, row for row."""
    session = start_server(data)
    spec = session.start_job("rank")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ASSFTActive.worker", str(spec.jobDir)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    session.controller._runner.end(0)
    before = ranked(session)
    assert len(before) == len(CASES) and any(row[4] for row in before)  # the probably-wrong list is there

    again = start_server(data)

    assert ranked(again) == before
    assert again.show_row(0).overlayNode is not None
