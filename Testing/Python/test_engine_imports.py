"""The engine never imports a GUI or Slicer package, in a clean interpreter."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import ASSFTActive

FORBIDDEN = ("slicer", "qt", "vtk", "vtkmodules", "trame", "ctk", "PythonQt")


def test_importing_every_engine_module_loads_no_slicer_qt_vtk_or_trame():
    modules = sorted(
        m.name for m in pkgutil.walk_packages(ASSFTActive.__path__, "ASSFTActive.") if not m.name.endswith("__main__")
    )
    assert "ASSFTActive.api" in modules and "ASSFTActive.query" in modules
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    repo = Path(ASSFTActive.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    offending = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m.split(".")[0].lower() in ("pyqt5", "pyside6")]
    assert offending == []


def test_the_job_protocol_and_card_modules_load_without_torch():
    """What the Slicer GUI process imports from the engine: the job protocol, events and the process probe without
    torch or numpy, model cards and the store listing without torch."""
    code = (
        "import json, sys\n"
        "import ASSFTActive.jobs, ASSFTActive.processes, ASSFTActive.progress\n"
        "light = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'monai'))\n"
        "import ASSFTActive.cards, ASSFTActive.store\n"
        "print(json.dumps([light, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai'))]))\n"
    )
    repo = Path(ASSFTActive.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [[], []]
