"""Library caches stay out of the user's home: an ``assft`` command writes only where it is told to."""

from __future__ import annotations

import sys
import types
from pathlib import Path

from ASSFTActive.caches import MATPLOTLIB_VARIABLE, keep_library_caches_out_of_home


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
