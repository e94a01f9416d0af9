"""Shared test fixtures: the repository on sys.path, the shared data (skipping when absent), small volumes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "hippocampus"
FIXTURES = SHARED_DATA / "fixtures"


def require(path: Path) -> Path:
    """``path`` if it exists, else skip the test saying which shared data it needs."""
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data, present in CI; absent in a bare clone)")
    return path


@pytest.fixture
def hippocampus_dir() -> Path:
    return require(HIPPOCAMPUS)


@pytest.fixture
def fixtures_dir() -> Path:
    return require(FIXTURES)


def rotated_affine(angle_deg: float = 30.0, spacing=(0.8, 1.2, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A voxel-to-RAS affine rotated about z with anisotropic spacing."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine
