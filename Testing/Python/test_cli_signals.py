"""`assft adapt` handles SIGTERM like the worker: it stops within seconds, exit 130, and the store is unchanged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import make_tiny_card, worker_env, write_dataset

from ASSFTActive.locks import LOCK_FILE


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_sigterm_cancels_adapt_cleanly(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=4, labeled=2)
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "train": {"iterations": 100000, "batch_size": 1},
                "semi_iterations": 4,
                "validation": {"guard": False, "hd95": False},
            }
        )
    )
    store = tmp_path / "store"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ASSFTActive",
            "adapt",
            "--images",
            str(tmp_path / "data" / "images"),
            "--labels",
            str(tmp_path / "data" / "labels"),
            "--model",
            str(card),
            "--store",
            str(store),
            "--config",
            str(settings),
            "--work-dir",
            str(tmp_path / "work"),
            "--device",
            "cpu",
        ],
        env=worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "work" / LOCK_FILE).exists() and process.poll() is None:
            time.sleep(0.2)  # the lock is taken once the engine is imported, just before the model loads
        time.sleep(4.0)  # well into training
        assert process.poll() is None, process.communicate()[1][-2000:]
        started = time.time()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert time.time() - started < 30
    assert err.strip().splitlines()[-1] == "cancelled" and "Traceback" not in err
    assert not [p for p in store.rglob("version.json")]
    assert not [p for p in store.rglob(".pending-*")]


def _cancel_inside_the_reader(monkeypatch):
    """A SIGTERM arriving while a NIfTI file is read: the handler's ``CancelledError`` is raised inside the reader,
    whose catch-all turns any failure into "cannot read the file"."""
    import ASSFTActive.io as io_module
    from ASSFTActive.errors import CancelledError

    def interrupted(path):
        raise CancelledError("cancelled (SIGTERM)")

    monkeypatch.setattr(io_module, "_read_nifti", interrupted)


def test_a_cancel_arriving_while_a_volume_is_read_ends_the_command_as_cancelled_not_as_a_corrupt_file(
    tmp_path, monkeypatch, capsys
):
    from ASSFTActive.cli import EXIT_CANCELLED, main

    images, _ = write_dataset(tmp_path / "data", count=1, labeled=0)
    _cancel_inside_the_reader(monkeypatch)
    code = main(["overlay", "--image", str(next(iter(images.values()))), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == EXIT_CANCELLED, err
    assert err.strip().splitlines()[-1] == "cancelled" and "cannot read" not in err


def test_a_worker_cancelled_while_a_volume_is_read_ends_with_the_cancelled_event_and_exit_130(tmp_path, monkeypatch):
    import io

    from ASSFTActive.jobs import EXIT_CANCELLED, RESULT_CANCELLED, JobSpec, read_job_result, write_job
    from ASSFTActive.worker import run_job

    images, _ = write_dataset(tmp_path / "data", count=2, labeled=0)
    job = tmp_path / "job"
    write_job(job, JobSpec(kind="rank", images={k: str(v) for k, v in images.items()}, budget=1))
    _cancel_inside_the_reader(monkeypatch)
    for variable in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # run_job sets them: undone after
        monkeypatch.setenv(variable, "")  # recorded, so that the value run_job sets is taken back
        monkeypatch.delenv(variable)
    out = io.StringIO()
    code = run_job(job, device="cpu", stdout=out)
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == EXIT_CANCELLED, last
    assert last["event"] == "error" and last["message"] == "cancelled"
    assert read_job_result(job).status == RESULT_CANCELLED
