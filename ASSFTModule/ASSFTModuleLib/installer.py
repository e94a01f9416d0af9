"""Install the worker's Python packages into Slicer's Python on first use (GUI side; needs desktop Slicer).

Nothing is installed at import time. An installed torch is never replaced or upgraded (it may be the CUDA build
the PyTorch extension installed): it is pinned while the other packages are installed. A missing torch comes from
the PyTorch extension's installer (``PyTorchUtils``, light-the-torch: the wheel matches the NVIDIA driver; that
installer imports torch once in Slicer's process), else from pip like the other packages.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import List

import slicer
from slicer.i18n import tr as _

from .requirements import (
    installPlan,
    missingRequirements,
    missingShipped,
    pipInstallArguments,
    readRequirements,
    shippedConstraints,
    torchVersionRequirement,
)


def missingWorkerRequirements(requirementsFile) -> List[str]:
    """The requirements of ``requirementsFile`` not installed in Slicer's Python (checked from metadata)."""
    return missingRequirements(readRequirements(requirementsFile))


def pyTorchExtensionPresent() -> bool:
    """Whether the PyTorch extension's ``PyTorchUtils`` module is installed."""
    return importlib.util.find_spec("PyTorchUtils") is not None


def installTorch(requirement: str, constraintsFile=None) -> None:
    """Install torch (``requirement`` like ``torch>=2.8``) when it is missing.

    With the PyTorch extension: its installer (``PyTorchUtils.PyTorchUtilsLogic().installTorch``, light-the-torch:
    the wheel matches the NVIDIA driver; the same call SlicerNNUnet and MONAIAuto3DSeg make). Without it: pip.
    """
    if pyTorchExtensionPresent():
        import PyTorchUtils

        logging.info("Installing %s with the PyTorch extension", requirement)
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=torchVersionRequirement(requirement)
        )
        if torch is None:
            raise RuntimeError("The PyTorch extension did not install torch; install it in the PyTorch Utils module.")
        return
    slicer.util.pip_install(pipInstallArguments([requirement], constraintsFile))


def ensureWorkerRequirements(requirementsFile, askConfirmation: bool = True) -> bool:
    """Install what the worker needs if something is missing (:func:`~.requirements.installPlan`): an installed
    torch is never replaced (it is pinned while monai and the others are installed); a missing one comes from the
    PyTorch extension when present.

    Returns:
        True when everything is installed (now or before); False when the user declined.

    Raises:
        RuntimeError: Slicer's own packages are broken, the installed torch is too old (what to do is said), or an
            install failed.
    """
    broken = missingShipped()
    if broken:
        raise RuntimeError(
            f"Slicer's Python lacks {', '.join(broken)}, which Slicer ships; ASSFT does not install "
            "them. Reinstall Slicer."
        )
    requirements = readRequirements(requirementsFile)
    missing = missingRequirements(requirements)
    if not missing:
        return True
    plan = installPlan(requirements)
    if plan.problem:
        raise RuntimeError(plan.problem)
    if askConfirmation and not slicer.app.commandOptions().testingEnabled:
        accepted = slicer.util.confirmOkCancelDisplay(
            _(
                "ASSFT needs these Python packages to rank volumes and adapt the model:\n\n  {packages}\n\nThey will "
                "be downloaded and installed into Slicer's Python (this can take several minutes, torch is large). "
                "{torch}"
            ).format(
                packages="\n  ".join(missing),
                torch=_("torch comes from the PyTorch extension (a GPU build when a GPU is found).")
                if plan.torch and pyTorchExtensionPresent()
                else "",
            ),
            _("Install Python packages"),
        )
        if not accepted:
            return False
    with slicer.util.WaitCursor(), tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "assft-constraints.txt"
        if plan.torch:
            constraints.write_text("\n".join(shippedConstraints()) + "\n", encoding="utf-8")
            installTorch(plan.torch, constraints)
            plan = installPlan(requirements)  # torch is now installed: pinned for the rest
        if plan.others:
            constraints.write_text("\n".join(plan.constraints) + "\n", encoding="utf-8")
            slicer.util.pip_install(pipInstallArguments(list(plan.others), constraints))
    stillMissing = missingWorkerRequirements(requirementsFile)
    if stillMissing:
        raise RuntimeError(f"These packages could not be installed: {', '.join(stillMissing)}. See the Python console.")
    return True
