"""Library caches stay out of the user's home: an ``assft`` command writes only where it is told to."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

from ASSFTActive.caches import MATPLOTLIB_VARIABLE, keep_library_caches_out_of_home

REPO = Path(__file__).resolve().parents[2]


def test_the_matplotlib_cache_goes_to_a_temporary_folder_unless_the_user_chose_one(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    chosen = {MATPLOTLIB_VARIABLE: str(tmp_path / "mine")}
    assert keep_library_caches_out_of_home(chosen) is None and chosen[MATPLOTLIB_VARIABLE] == str(tmp_path / "mine")
    environ: dict = {}
    folder = keep_library_caches_out_of_home(environ)
    assert folder is not None and folder.is_dir() and environ[MATPLOTLIB_VARIABLE] == str(folder)
    assert Path.home() not in folder.parents
    folder.rmdir()
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    late: dict = {}
    assert keep_library_caches_out_of_home(late) is None and late == {}  # too late: matplotlib read it already


def test_an_assft_command_leaves_the_home_folder_empty(tmp_path):
    """``import monai`` imports matplotlib, whose font cache went to ``$HOME/.cache/matplotlib``."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != MATPLOTLIB_VARIABLE}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ASSFT_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "ASSFTActive", "check-card", "default"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
