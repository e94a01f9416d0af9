"""The work-folder lock leaves nothing behind, and events never carry NaN into their JSON lines."""

from __future__ import annotations

import json

import pytest

from ASSFTActive.errors import InputError
from ASSFTActive.locks import LOCK_FILE, folder_lock
from ASSFTActive.progress import Event


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


def test_a_metric_that_was_not_scored_is_null_in_the_event_line():
    line = Event("metric", phase="validate", metrics={"dice": float("nan"), "loss": 0.5}).to_json()
    assert json.loads(line)["metrics"] == {"dice": None, "loss": 0.5}
    assert "NaN" not in line
