"""The worker writes only inside its job folder: planted links are refused, relative paths mean the job folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import worker_env

from ASSFTActive.jobs import EXIT_DONE, EXIT_ERROR, JobSpec, write_job
from ASSFTActive.models import EMBEDDED_DEFAULT_CARD
from ASSFTActive.worker import _resolve_in_job, find_links

SAMPLE_IMAGES = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample" / "pool" / "images"


def _rank_job(job_dir: Path, model: str = "default") -> Path:
    images = sorted(SAMPLE_IMAGES.glob("*.nii.gz"))[:2]
    write_job(job_dir, JobSpec(kind="rank", images={p.name[:-7]: str(p) for p in images}, model=model, budget=1))
    return job_dir


def _run(job_dir: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", str(job_dir)],
        cwd=str(cwd),
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("planted", ["log.txt", "events.jsonl", "predictions", "overlays"])
def test_a_symlink_planted_in_the_job_folder_stops_the_job_and_nothing_is_written_through_it(tmp_path, planted):
    job = _rank_job(tmp_path / "job")
    outside = tmp_path / "outside"
    if planted in ("predictions", "overlays"):
        outside.mkdir()
        (job / planted).symlink_to(outside, target_is_directory=True)
    else:
        outside.write_text("precious\n")
        (job / planted).symlink_to(outside)
    done = _run(job, tmp_path / "cwd")
    assert done.returncode == EXIT_ERROR
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "symbolic links" in last["message"] and planted in last["message"]
    if outside.is_dir():
        assert list(outside.iterdir()) == []
    else:
        assert outside.read_text() == "precious\n"
    assert not (job / "result.json").exists()


def test_links_are_found_at_any_depth_without_following_them(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x").symlink_to(tmp_path)
    assert find_links(tmp_path) == [tmp_path / "a" / "b" / "x"]


def test_relative_paths_of_a_job_are_relative_to_the_job_folder(tmp_path):
    assert _resolve_in_job(tmp_path, "store") == str(tmp_path / "store")
    assert _resolve_in_job(tmp_path, "default") == "default"
    assert _resolve_in_job(tmp_path, str(tmp_path / "x")) == str(tmp_path / "x")


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_a_rank_job_reads_a_relative_model_from_its_folder_and_leaves_home_alone(tmp_path):
    job = tmp_path / "job"
    shutil.copytree(EMBEDDED_DEFAULT_CARD.parent, job / "model")
    _rank_job(job, model="model/card.json")
    home = tmp_path / "home"
    home.mkdir()
    done = _run(job, tmp_path / "cwd", HOME=str(home), XDG_CACHE_HOME="", XDG_CONFIG_HOME="")
    assert done.returncode == EXIT_DONE, done.stderr[-2000:]
    assert list(home.rglob("*")) == [], "the worker wrote into $HOME"
    assert json.loads((job / "result.json").read_text())["model_card"] == str((job / "model" / "card.json").resolve())
