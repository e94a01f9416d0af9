"""Where the engine computes: CUDA, else Apple's MPS, else the CPU; the worker's environment lets MPS fall back to
the CPU for operations it lacks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_apple_silicon_computes_on_mps_when_there_is_no_cuda(monkeypatch):
    from ASSFTActive.inference import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")


def test_device_mps_without_apple_silicon_is_refused_with_what_to_do(monkeypatch):
    from ASSFTActive.cli.common import resolve_device
    from ASSFTActive.errors import InputError

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="--device cpu or auto"):
        resolve_device("mps")


def test_worker_environment_lets_mps_fall_back_to_the_cpu():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ASSFTModule"))
    from ASSFTModuleLib.jobProcess import DEVICE_PROBE_CODE, workerEnvironment

    assert workerEnvironment({})["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    assert workerEnvironment({"PYTORCH_ENABLE_MPS_FALLBACK": "0"})["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"
    assert "Apple MPS" in DEVICE_PROBE_CODE
