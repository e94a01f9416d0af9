"""First-use install of the worker's packages: an installed (CUDA) torch is never replaced, and the floors Slicer
installs agree with the engine's (pyproject.toml)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ASSFTModule"))

from ASSFTModuleLib import requirements  # noqa: E402


def floors(lines):
    found = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line.split(";")[0])
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_slicer_requirements_and_pyproject_name_the_same_floors():
    slicerFloors = floors(requirements.readRequirements(REPO / "Resources" / "requirements.txt"))
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = pyproject[pyproject.index("dependencies = [") :]
    engineFloors = floors(re.findall(r'"([^"]+)"', block[: block.index("]")]))
    shared = set(slicerFloors) & set(engineFloors)
    assert {"torch", "monai", "scipy", "nibabel"} <= shared
    assert {name: slicerFloors[name] for name in shared} == {name: engineFloors[name] for name in shared}


@pytest.fixture()
def installed(monkeypatch):
    versions = {"numpy": "2.0.2", "SimpleITK": "2.4.0"}
    monkeypatch.setattr(requirements, "installedVersion", lambda name: versions.get(name, ""))
    monkeypatch.setattr(requirements, "importable", lambda name: name in versions)
    return versions


WORKER = ["torch>=2.8", "monai>=1.5.2", "scipy>=1.13"]


def test_an_installed_cuda_torch_is_pinned_never_replaced(installed):
    installed["torch"] = "2.8.0+cu126"
    installed["scipy"] = "1.13.1"
    plan = requirements.installPlan(WORKER)
    assert plan.torch == "" and plan.problem == ""
    assert plan.others == ("monai>=1.5.2",)
    assert "torch==2.8.0+cu126" in plan.constraints and "numpy==2.0.2" in plan.constraints


def test_a_torch_older_than_the_floor_is_left_alone_with_what_to_do(installed):
    installed["torch"] = "2.4.1+cu121"
    plan = requirements.installPlan(WORKER)
    assert plan.torch == "" and "torch" not in " ".join(plan.others)
    assert "2.4.1+cu121" in plan.problem and "PyTorch Utils" in plan.problem


def test_a_missing_torch_is_installed_first_with_its_version_requirement(installed):
    plan = requirements.installPlan(WORKER)
    assert plan.torch == "torch>=2.8" and requirements.torchVersionRequirement(plan.torch) == ">=2.8"
    assert not any(line.startswith("torch") for line in plan.constraints)
