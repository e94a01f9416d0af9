"""The work-folder lock leaves nothing behind and has one holder under churn; events never carry NaN into JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ASSFTActive.errors import InputError
from ASSFTActive.locks import LOCK_FILE, folder_lock
from ASSFTActive.progress import Event

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree


def test_a_lock_on_a_folder_it_created_leaves_no_folder_behind(tmp_path):
    work = tmp_path / "work"
    with folder_lock(work, "--work-dir"):
        assert (work / LOCK_FILE).is_file()
        with pytest.raises(InputError, match="in use by another process"):
            with folder_lock(work, "--work-dir"):
                pass
    assert not work.exists()


def test_a_lock_never_removes_the_users_files(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    with folder_lock(work):
        pass
    assert (work / "notes.txt").read_text() == "mine" and not (work / LOCK_FILE).exists()


#: One contender of the stress test: acquire/release the lock many times; inside, take an O_EXCL marker beside the
#: folder (a second holder would find it taken). Prints the counts as JSON.
_CONTENDER = """
import json, os, sys, time
from pathlib import Path
from ASSFTActive.errors import InputError, OutputError
from ASSFTActive.locks import folder_lock
work, marker, start, seconds = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
counts = {"held": 0, "busy": 0, "overlap": 0, "failed": 0}
time.sleep(max(0.0, start - time.time()))
while time.time() < start + seconds:
    try:
        with folder_lock(work, "--work-dir"):
            counts["held"] += 1
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                counts["overlap"] += 1
                continue
            time.sleep(0.0002)
            os.close(fd)
            os.unlink(marker)
    except InputError:
        counts["busy"] += 1
    except OutputError as exc:
        counts["failed"] += 1
        print(exc, file=sys.stderr)
print(json.dumps(counts))
"""


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_the_lock_has_one_holder_at_a_time_while_three_processes_take_and_release_it(tmp_path):
    """The churn probe (29.20): holders remove the lock file and folder at release while others open them; a
    process that won the lock on a removed file must not count as a holder."""
    repo = Path(__file__).resolve().parents[2]
    work, marker = tmp_path / "work", tmp_path / "marker"
    start = f"{time.time() + 1.5:.3f}"  # all three start together, after their interpreters are up
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(work), str(marker), start, "2.0"],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["held"] for r in results) > 200  # the lock really changed hands
    assert sum(r["overlap"] for r in results) == 0, results
    assert sum(r["failed"] for r in results) == 0, results


def test_a_metric_that_was_not_scored_is_null_in_the_event_line():
    line = Event("metric", phase="validate", metrics={"dice": float("nan"), "loss": 0.5}).to_json()
    assert json.loads(line)["metrics"] == {"dice": None, "loss": 0.5}
    assert "NaN" not in line
