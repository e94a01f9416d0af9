"""Install the worker's Python packages into Slicer's Python on first use (GUI side; needs desktop Slicer).

Nothing is installed at import time. torch goes through light-the-torch as the PyTorch extension (PyTorchUtils)
does it, so the wheel matches the NVIDIA driver; it runs in a child process so that the GUI process never
imports torch. Without the PyTorch extension torch comes from pip like the other packages.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import List

import slicer

from .requirements import (
    missingRequirements,
    missingShipped,
    pipInstallArguments,
    readRequirements,
    shippedConstraints,
    splitTorch,
)
from .workerProcess import pythonExecutable


def missingWorkerRequirements(requirementsFile) -> List[str]:
    """The requirements of ``requirementsFile`` not installed in Slicer's Python (checked from metadata)."""
    return missingRequirements(readRequirements(requirementsFile))


def pyTorchExtensionPresent() -> bool:
    """Whether the PyTorch extension's ``PyTorchUtils`` module is installed."""
    return importlib.util.find_spec("PyTorchUtils") is not None


def installTorch(requirement: str, constraintsFile=None) -> None:
    """Install torch (``requirement`` like ``torch>=2.4``) without importing it in this process."""
    if not pyTorchExtensionPresent():
        slicer.util.pip_install(pipInstallArguments([requirement], constraintsFile))
        return
    if importlib.util.find_spec("light_the_torch") is None:
        slicer.util.pip_install("light-the-torch>=0.5")
    command = [pythonExecutable(), "-m", "light_the_torch", "install", requirement]
    logging.info("Installing %s with light-the-torch: %s", requirement, " ".join(command))
    process = slicer.util.launchConsoleProcess(command)
    slicer.util.logProcessOutput(process)


def ensureWorkerRequirements(requirementsFile, askConfirmation: bool = True) -> bool:
    """Install what the worker needs if something is missing.

    Returns:
        True when everything is installed (now or before); False when the user declined.
    """
    broken = missingShipped()
    if broken:
        raise RuntimeError(f"Slicer's Python lacks {', '.join(broken)}, which Slicer ships; ASSFT does not install "
                           "them. Reinstall Slicer.")
    missing = missingWorkerRequirements(requirementsFile)
    if not missing:
        return True
    if askConfirmation and not slicer.app.commandOptions().testingEnabled:
        accepted = slicer.util.confirmOkCancelDisplay(
            "ASSFT needs these Python packages to rank volumes and adapt the model:\n\n  "
            + "\n  ".join(missing)
            + "\n\nThey will be downloaded and installed into Slicer's Python (this can take several minutes, "
            "torch is large).",
            "Install Python packages",
        )
        if not accepted:
            return False
    torch, others = splitTorch(missing)
    with slicer.util.WaitCursor(), tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "slicer-shipped-constraints.txt"
        constraints.write_text("\n".join(shippedConstraints()) + "\n", encoding="utf-8")
        for requirement in torch:
            installTorch(requirement, constraints)
        if others:
            slicer.util.pip_install(pipInstallArguments(others, constraints))
    stillMissing = missingWorkerRequirements(requirementsFile)
    if stillMissing:
        raise RuntimeError(f"These packages could not be installed: {', '.join(stillMissing)}. See the Python console.")
    return True
