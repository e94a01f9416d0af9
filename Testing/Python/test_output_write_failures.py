"""An output that cannot be written (the disk is full, a file size limit) ends in one ``error:`` line, exit 2, and
leaves no partial file in the output folder: ``assft rank`` (written through a staging folder), ``overlay`` and
``evaluate``, and ``adapt`` writing its new version or a ``--work-dir`` checkpoint (red-team catalogue 1.6
``rank_out_full_30k``, ``adapt_store_full``, ``adapt_workdir_full``, ``overlay_out_ro``, ``evaluate_out_ro``).

The command runs in a child process whose file size limit (``RLIMIT_FSIZE``, ``SIGXFSZ`` ignored) is 100 bytes, so
every output write fails with ``EFBIG`` as a full disk fails with ``ENOSPC``: the same ``OSError`` path, without root
or a small file system.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample"
IMAGE = SAMPLE / "test" / "images" / "hippocampus_014.nii.gz"

TRAIN = ["--iterations", "2", "--semi-iterations", "1", "--batch-size", "1", "--patch-size", "32", "32", "32"]
TRAIN += ["--pseudo", "none", "--no-guard", "--quiet", "--device", "cpu"]


def _command(name: str, tmp: Path):
    """``(arguments, the folder that must hold no file afterwards)`` of each command."""
    out = tmp / "out"
    adapt = ["adapt", "--images", str(SAMPLE / "test" / "images"), "--labels", str(SAMPLE / "test" / "labels")]
    if name == "rank":
        return ["rank", "--images", str(SAMPLE / "test" / "images"), "--budget", "1", "--quiet", "--out", str(out)], out
    if name == "overlay":
        return ["overlay", "--image", str(IMAGE), "--out", str(out)], out
    if name == "evaluate":
        labels = str(SAMPLE / "test" / "labels")
        return ["evaluate", "--images", str(IMAGE), "--labels", labels, "--no-hd95", "--out", str(out)], out
    if name == "adapt_store":  # the new version's files: nothing of it may stay in the store
        return adapt + ["--store", str(out), *TRAIN], out
    config = tmp / "every_step.json"  # a checkpoint at every step: the work dir's first write fails
    config.write_text('{"checkpoint_every": 1}')
    return adapt + [
        "--store",
        str(tmp / "store"),
        "--work-dir",
        str(out),
        "--config",
        str(config),
        *TRAIN,
    ], tmp / "store"


COMMANDS = ("rank", "overlay", "evaluate", "adapt_store", "adapt_work_dir")


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_write_that_fails_is_one_error_line_and_leaves_no_partial_file(tmp_path, command):
    args, out = _command(command, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env["MPLCONFIGDIR"] = str(tmp_path / "mpl")
    done = subprocess.run(
        [sys.executable, "-m", "ASSFTActive", *args],
        preexec_fn=_limited(100),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and "cannot be written" in errors[0], done.stderr
    assert [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")] == []
