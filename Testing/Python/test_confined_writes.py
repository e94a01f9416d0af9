"""Inside a job folder no write follows a symbolic link, even one planted after the job started (29.12)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_tiny_card, write_dataset

from ASSFTActive.confine import confined_to, replace_into
from ASSFTActive.errors import OutputError
from ASSFTActive.io import atomic_write_text

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")


def _outside_link(job: Path, name: str, tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (job / name).symlink_to(outside, target_is_directory=True)
    return outside


def test_an_atomic_write_through_a_linked_folder_inside_the_root_is_refused_naming_the_link(tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    outside = _outside_link(job, "predictions", tmp_path)
    with confined_to(job):
        atomic_write_text(job / "checkpoints" / "a" / "state.json", "{}")  # real folders, created on the way
        with pytest.raises(OutputError, match="predictions.*symbolic link"):
            atomic_write_text(job / "predictions" / "case.json", "{}")
        with pytest.raises(OutputError, match="predictions.*symbolic link"):
            atomic_write_text(job / "predictions" / "deeper" / "case.json", "{}")
    assert (job / "checkpoints" / "a" / "state.json").read_text() == "{}"
    assert list(outside.iterdir()) == []
    # outside a confinement (a user's own output folder) a link is the user's choice and is followed as before
    atomic_write_text(job / "predictions" / "case.json", "{}")
    assert (outside / "case.json").is_file()


def test_a_move_into_a_linked_folder_is_refused_and_the_source_stays(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    source = job / "staged.nii.gz"
    source.write_bytes(b"x")
    outside = _outside_link(job, "overlays", tmp_path)
    with confined_to(job), pytest.raises(OutputError, match="overlays"):
        replace_into(source, job / "overlays" / "case.nii.gz")
    assert source.exists() and list(outside.iterdir()) == []


def test_confined_files_keep_the_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with confined_to(tmp_path):
            path = atomic_write_text(tmp_path / "a" / "b.txt", "x")
    finally:
        os.umask(previous)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]  # no temporary file left


def test_a_link_planted_in_the_ranking_folder_mid_ranking_receives_nothing(tmp_path):
    """The red-team probe: ``predictions/`` and ``overlays/`` become links 0.2 s after the job started. Here they are
    planted when the first volume is reported, before the ranking publishes its files."""
    import torch

    from ASSFTActive.api import rank_pool
    from ASSFTActive.models import load_card

    card = load_card(make_tiny_card(tmp_path / "base"))
    images, labels = write_dataset(tmp_path / "data", count=3, labeled=1)
    job = tmp_path / "job"
    job.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()

    def plant(event):
        if event.event == "progress" and not (job / "predictions").is_symlink():
            (job / "predictions").symlink_to(outside, target_is_directory=True)
            (job / "overlays").symlink_to(outside, target_is_directory=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with confined_to(job), pytest.raises(OutputError, match="symbolic link"):
            rank_pool(
                [images[k] for k in sorted(images)],
                card,
                1,
                job,
                labeled_ids=sorted(labels),
                device=torch.device("cpu"),
                progress=plant,
            )
    finally:
        torch.set_num_threads(threads)
    assert list(outside.iterdir()) == []


def test_the_protocols_own_files_are_confined_too(tmp_path):
    from ASSFTActive.jobs import RankingFile, write_ranking_file

    job = tmp_path / "job"
    job.mkdir()
    outside = _outside_link(job, "sub", tmp_path)
    with confined_to(job), pytest.raises(OutputError, match="sub.*symbolic link"):
        write_ranking_file(job / "sub" / "ranking.json", RankingFile(strategy="assft", budget=0, model="m", cases=()))
    assert list(outside.iterdir()) == []
