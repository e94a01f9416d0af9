"""An output that cannot be written is refused before the training, not after it (29.16)."""

from __future__ import annotations

import time

import pytest
from conftest import make_tiny_card, write_dataset

from ASSFTActive.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adapt_with_a_predictions_folder_that_cannot_be_created_fails_before_training(tmp_path, capsys):
    card = make_tiny_card(tmp_path / "base")
    write_dataset(tmp_path / "data", count=4, labeled=2)
    (tmp_path / "file").write_text("in the way")
    started = time.monotonic()
    code = main(
        [
            "adapt",
            "--images",
            str(tmp_path / "data" / "images"),
            "--labels",
            str(tmp_path / "data" / "labels"),
            "--model",
            str(card),
            "--store",
            str(tmp_path / "store"),
            "--predictions",
            str(tmp_path / "file" / "predictions"),
            "--iterations",
            "200",
            "--semi-iterations",
            "200",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "predictions folder cannot be created" in err and str(tmp_path / "file") in err
    assert time.monotonic() - started < 30  # 400 training steps were not run first
    assert not (tmp_path / "store").exists()
