"""The browser annotator's server side without a browser: the pool, labels next to the data, one job at a time,
and ``assft serve`` as a user types it (on real slicer-core MRML; no trame needed)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402

from ASSFTActive.cli import build_parser  # noqa: E402
from ASSFTActive.cli.serve import server_command  # noqa: E402
from ASSFTActive.io import Volume, read_volume  # noqa: E402
from ASSFTWeb.label_files import save_label_file  # noqa: E402
from ASSFTWeb.plot import scores_svg  # noqa: E402
from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"


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


@pytest.fixture()
def pool(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for case in ("hippocampus_011", "hippocampus_023"):
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", data)
    (data / "labels").mkdir()
    shutil.copy(SAMPLE / "labels" / "hippocampus_011.nii.gz", data / "labels")
    (data / "notes.txt").write_text("not a volume")
    (data / "broken.nii.gz").write_bytes(b"not an image")
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=data), RecordingRunner)
    return session, data


def test_the_pool_loads_volumes_and_their_labels_and_reports_files_it_skips(pool):
    session, data = pool
    messages = session.load_pool()
    assert session.volume_names() == ["hippocampus_011", "hippocampus_023"]
    assert any(m.startswith("Skipped broken.nii.gz") and "could not read" in m for m in messages)
    assert any(m.startswith("Skipped notes.txt") for m in messages)
    on_disk = read_volume(data / "labels" / "hippocampus_011.nii.gz").array
    counts = session.voxel_counts(session.volume_node("hippocampus_011"))
    assert counts == {"anterior": int(np.sum(on_disk == 1)), "posterior": int(np.sum(on_disk == 2))}
    assert session.voxel_counts(session.volume_node("hippocampus_023")) == {}


def test_a_hidden_volume_file_is_reported_not_dropped_without_a_word(pool):
    session, data = pool
    shutil.copy(SAMPLE / "images" / "hippocampus_011.nii.gz", data / "..nii.gz")
    (data / ".DS_Store").write_bytes(b"finder")  # hidden non-volumes stay quiet
    messages = session.load_pool()
    assert "..nii.gz" not in session.volume_names()
    assert any(m.startswith("Skipped ..nii.gz: a hidden file") and "rename" in m for m in messages), messages
    assert not any(".DS_Store" in m for m in messages)


def test_a_label_file_on_another_voxel_grid_is_reported_and_not_used(pool):
    session, data = pool
    shutil.copy(SAMPLE / "labels" / "hippocampus_011.nii.gz", data / "labels" / "hippocampus_023.nii.gz")
    messages = session.load_pool()
    assert any(
        m.startswith("Label file hippocampus_023.nii.gz not used") and "voxel grid differs" in m for m in messages
    ), messages
    assert session.voxel_counts(session.volume_node("hippocampus_023")) == {}
    assert session.voxel_counts(session.volume_node("hippocampus_011"))["anterior"] > 0


def test_a_second_job_is_refused_while_one_runs(pool):
    session, _ = pool
    session.load_pool()
    session.start_job("adapt")
    assert session.is_running()
    with pytest.raises(ASSFTModuleError, match="already running"):
        session.start_job("adapt")


def test_the_adapt_method_chosen_on_the_page_decides_the_adapt_job(pool):
    from ASSFTActive.jobs import read_job

    session, _ = pool
    session.load_pool()
    session.set_adapt_method("sfr_plus")
    job = read_job(session.start_job("adapt").jobDir)
    assert job.kind == "sfr" and job.sfr == {"method": "sfr_plus"} and list(job.labels) == ["hippocampus_011"]
    assert job.store == str((session.config.work_folder / "models").resolve())  # the server's store, as for adapt
    with pytest.raises(ASSFTModuleError, match="Unknown adapt method 'sam'"):
        session.set_adapt_method("sam")


def test_the_query_rounds_chosen_on_the_page_go_into_rank_and_adapt_jobs(pool):
    from ASSFTActive.jobs import read_job

    session, _ = pool
    session.load_pool()
    assert session.parameters.queryRounds == 1  # the single-shot query unless the page says otherwise
    assert session.set_query_rounds("3") == 3  # a number field may send text
    rank = read_job(session.start_job("rank").jobDir)
    assert rank.kind == "rank" and rank.query == {"rounds": 3} and rank.query_config().rounds == 3
    session.controller._runner.end(1)  # let the next job start (this one failed without a result)
    session.set_adapt_method("sfr")
    adapt = read_job(session.start_job("adapt").jobDir)
    assert adapt.kind == "sfr" and adapt.query == {"rounds": 3}  # the re-ranking after Adapt Model follows it


@pytest.mark.parametrize("rounds", [0, -2, 1.5, "", "x"])
def test_query_rounds_below_one_are_refused_on_the_page_and_the_value_in_use_is_kept(pool, rounds):
    session, data = pool
    session.load_pool()
    session.set_query_rounds(2)
    with pytest.raises(ASSFTModuleError, match="Query rounds must be a whole number of at least 1"):
        session.set_query_rounds(rounds)
    assert session.parameters.queryRounds == 2
    # a value that reaches the controller some other way is refused there, before any job folder is written
    session.parameters.queryRounds = rounds
    with pytest.raises(ASSFTModuleError, match="Query rounds must be a whole number of at least 1"):
        session.start_job("rank")
    assert not session.is_running() and not (session.config.work_folder / "jobs").exists()


def test_the_servers_query_settings_start_the_field_and_reach_every_job_with_the_pages_rounds(tmp_path):
    from ASSFTActive.jobs import read_job

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(SAMPLE / "images" / "hippocampus_011.nii.gz", data)
    env = slicer_scene.SlicerScene()
    config = ServeConfig(data_dir=data, query={"rounds": 2, "strategy": "random"})
    session = AnnotatorSession(env.scene, env.appLogic, config, RecordingRunner)
    session.load_pool()
    assert session.parameters.queryRounds == 2
    session.set_query_rounds(4)
    assert read_job(session.start_job("rank").jobDir).query == {"rounds": 4, "strategy": "random"}
    assert config.query == {"rounds": 2, "strategy": "random"}  # the server's settings are not changed


def test_the_server_refuses_query_rounds_below_one_with_one_error_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ASSFTWeb", "--data", str(tmp_path), "--query-json", '{"rounds": 0}'],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: --query-json: Query rounds must be a whole number of at least 1") and "got 0" in line


def test_save_labels_writes_next_to_the_data_and_keeps_the_old_file_as_backup(pool):
    session, data = pool
    session.load_pool()
    node = session.volume_node("hippocampus_011")
    before = (data / "labels" / "hippocampus_011.nii.gz").read_bytes()
    saved = session.save_labels(node)
    assert saved.path == data / "labels" / "hippocampus_011.nii.gz"
    assert saved.backup is not None and saved.backup.parent == data / "labels" / "backup"
    assert saved.backup.read_bytes() == before
    # the labels read at start went through the class segmentation and back unchanged, on the image's grid
    np.testing.assert_array_equal(read_volume(saved.path).array, read_volume(saved.backup).array)
    with pytest.raises(ASSFTModuleError, match="no labeled voxels"):
        session.save_labels(
            session.volume_node("hippocampus_023"), session.annotate(session.volume_node("hippocampus_023"))
        )


def test_label_file_backups_never_overwrite_each_other(tmp_path):
    volume = Volume(array=np.ones((4, 4, 4), dtype=np.uint8), affine=np.eye(4))
    first = save_label_file(volume, tmp_path, "case")
    second = save_label_file(volume, tmp_path, "case")
    third = save_label_file(volume, tmp_path, "case")
    assert first.backup is None and second.backup is not None and third.backup is not None
    assert second.backup != third.backup and second.backup.is_file() and third.backup.is_file()


def test_the_scores_chart_has_one_dot_per_finite_case():
    rows = [
        {"volume": "a", "dkd": 0.1, "asd": 0.2, "state": "proposed"},
        {"volume": "b", "dkd": 0.3, "asd": 0.1, "state": "labeled"},
        {"volume": "c", "dkd": float("nan"), "asd": 0.1, "state": "labeled"},
    ]
    svg = scores_svg(rows)
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and "#ff9800" in svg


def test_assft_serve_passes_its_options_to_the_server_package():
    args = build_parser().parse_args(
        [
            "serve",
            "--data",
            "pool",
            "--labels",
            "labs",
            "--port",
            "9000",
            "--finetune-json",
            '{"train": {"iterations": 5}}',
        ]
    )
    assert isinstance(args, argparse.Namespace)
    command = server_command(args)
    assert command[1:3] == ["-m", "ASSFTWeb"]
    assert command[command.index("--data") + 1] == "pool" and command[command.index("--labels") + 1] == "labs"
    assert command[command.index("--host") + 1] == "127.0.0.1" and command[command.index("--port") + 1] == "9000"
    assert command[command.index("--finetune-json") + 1] == '{"train": {"iterations": 5}}'
    assert "--allow-host" not in command
    args = build_parser().parse_args(
        ["serve", "--data", "pool", "--host", "0.0.0.0", "--allow-host", "gpu01", "--allow-host", "gpu01.lab.example"]
    )
    command = server_command(args)
    assert [command[i + 1] for i, part in enumerate(command) if part == "--allow-host"] == [
        "gpu01",
        "gpu01.lab.example",
    ]


def test_the_server_refuses_a_missing_data_folder_with_one_error_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ASSFTWeb", "--data", str(tmp_path / "nope")],
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: data folder not found. Pass an existing folder to --data."
    ]


def test_the_web_server_process_never_imports_torch():
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[web]')")
    code = (
        "import json, sys\nimport ASSFTWeb.app, ASSFTWeb.session\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_train_anyway_turns_the_label_checks_refusal_into_warnings_for_that_one_job(pool):
    from ASSFTActive.jobs import read_job

    session, _ = pool
    session.load_pool()
    anyway = read_job(session.start_job("adapt", allow_implausible_labels=True).jobDir)
    assert anyway.finetune.get("allow_implausible_labels") is True
    session.controller._runner.end(1)
    plain = read_job(session.start_job("adapt").jobDir)  # the next Adapt checks the labels again
    assert "allow_implausible_labels" not in plain.finetune
    session.controller._runner.end(1)
    session.set_adapt_method("sfr")
    sfr = read_job(session.start_job("adapt", allow_implausible_labels=True).jobDir)
    assert sfr.kind == "sfr" and sfr.sfr.get("allow_implausible_labels") is True


def test_a_label_file_that_is_a_link_is_reported_and_not_used(pool):
    session, data = pool
    target = data.parent / "elsewhere.nii.gz"
    shutil.copy(SAMPLE / "labels" / "hippocampus_011.nii.gz", target)
    (data / "labels" / "hippocampus_011.nii.gz").unlink()
    (data / "labels" / "hippocampus_011.nii.gz").symlink_to(target)
    messages = session.load_pool()
    assert any(m.startswith("Label file hippocampus_011.nii.gz not used: it is a symbolic link") for m in messages)
    assert session.voxel_counts(session.volume_node("hippocampus_011")) == {}
