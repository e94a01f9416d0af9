"""Which of the worker's Python requirements are missing, checked from package metadata (nothing is imported)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

TORCH = "torch"

#: Packages Slicer's Python ships and the worker uses: never installed, upgraded or replaced by pip. Slicer builds
#: its own SimpleITK (with Slicer's IO classes; its version string can be a pre-release a version check rejects)
#: and its own numpy that Slicer's compiled modules are built against. During installs they are pinned to the
#: installed versions (:func:`shippedConstraints`), so that a dependency cannot pull a replacement in.
SLICER_SHIPPED = ("numpy", "SimpleITK")

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def readRequirements(path) -> List[str]:
    """Requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            lines.append(text)
    return lines


def requirementName(requirement: str) -> str:
    """Distribution name of a requirement line: ``monai>=1.5`` -> ``monai``."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read the package name in requirement {requirement!r}")
    return match.group(1)


def _satisfied(requirement: str, version: str) -> bool:
    specifier = requirement[len(requirementName(requirement)) :].strip()
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # without packaging only presence is checked
        return True
    try:
        return Version(version) in SpecifierSet(specifier)
    except Exception:  # an unparsable local version: presence is enough
        return True


def installedVersion(name: str) -> str:
    """Installed version of distribution ``name``, "" when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def importable(name: str) -> bool:
    """Whether the package of distribution ``name`` can be found on ``sys.path`` (without importing it)."""
    try:
        return importlib.util.find_spec(name.replace("-", "_")) is not None
    except (ImportError, ValueError):
        return False


def missingRequirements(requirements: Sequence[str]) -> List[str]:
    """The requirements that are not installed or not satisfied by the installed version.

    A package without distribution metadata that is importable counts as installed (Slicer bundles SimpleITK that
    way); installing a second copy over it would break Slicer. Packages Slicer ships (:data:`SLICER_SHIPPED`) are
    never listed, whatever their version: see :func:`missingShipped`.
    """
    missing = []
    for requirement in requirements:
        if isShipped(requirement):
            continue
        name = requirementName(requirement)
        version = installedVersion(name)
        if version:
            if not _satisfied(requirement, version):
                missing.append(requirement)
        elif not importable(name):
            missing.append(requirement)
    return missing


def isShipped(requirement: str) -> bool:
    """Whether the requirement names a package Slicer ships (:data:`SLICER_SHIPPED`)."""
    return requirementName(requirement).lower() in {name.lower() for name in SLICER_SHIPPED}


def missingShipped() -> List[str]:
    """The packages of :data:`SLICER_SHIPPED` that cannot be found (a broken Slicer install: not fixed by pip)."""
    return [name for name in SLICER_SHIPPED if not installedVersion(name) and not importable(name)]


def shippedConstraints() -> List[str]:
    """pip constraint lines pinning the installed versions of :data:`SLICER_SHIPPED` (``numpy==2.0.2``).

    A version pip cannot parse is left out (pip would reject the whole constraints file); so is a package
    without distribution metadata (pip does not see it anyway).
    """
    lines = []
    for name in SLICER_SHIPPED:
        version = installedVersion(name)
        if not version:
            continue
        try:
            from packaging.version import InvalidVersion, Version

            try:
                Version(version)
            except InvalidVersion:
                continue
        except ImportError:
            pass
        lines.append(f"{name}=={version}")
    return lines


def pipInstallArguments(requirements: Sequence[str], constraintsFile=None) -> List[str]:
    """Arguments after ``pip install`` for ``requirements``: packages Slicer ships are dropped, and the
    constraints file (from :func:`shippedConstraints`) is passed with ``-c``."""
    arguments = ["-c", str(constraintsFile)] if constraintsFile is not None else []
    return arguments + [r for r in requirements if not isShipped(r)]


@dataclass(frozen=True)
class InstallPlan:
    """What the first-use install does (:func:`installPlan`).

    Attributes:
        torch: the torch requirement to install (``torch>=2.8``), or "" when torch is present: an installed torch
            (a CUDA build from the PyTorch extension, say) is never replaced.
        others: the other missing requirements, installed with pip.
        constraints: pip constraint lines for those installs: the packages Slicer ships and the installed torch
            pinned to their versions, so that no dependency (monai's ``torch>=...``) can pull a replacement in.
        problem: why the install cannot go on ("" when it can): an installed torch older than the requirement,
            with what to do.
    """

    torch: str
    others: Tuple[str, ...]
    constraints: Tuple[str, ...]
    problem: str = ""


def installPlan(requirements: Sequence[str]) -> InstallPlan:
    """The install of the missing ``requirements``: torch left alone when present (pinned while the rest is
    installed); installed only when missing."""
    missing = missingRequirements(requirements)
    torch, others = splitTorch(missing)
    torchRequirement = next((r for r in requirements if requirementName(r).lower() == TORCH), TORCH)
    installed = installedVersion(TORCH)
    constraints = list(shippedConstraints())
    problem = ""
    if installed:
        constraints.append(f"{TORCH}=={installed}")
        if torch:
            problem = (
                f"torch {installed} is installed but ASSFT needs {torchRequirement}. ASSFT does not replace an "
                "installed torch (it may be a GPU build): update it in the PyTorch Utils module (PyTorch "
                "extension) or with Slicer's pip, then restart Slicer."
            )
        return InstallPlan(torch="", others=tuple(others), constraints=tuple(constraints), problem=problem)
    return InstallPlan(torch=torch[0] if torch else "", others=tuple(others), constraints=tuple(constraints))


def torchVersionRequirement(requirement: str) -> str:
    """The version part of a torch requirement (``torch>=2.8`` -> ``>=2.8``), as PyTorchUtils takes it."""
    return requirement[len(requirementName(requirement)) :].strip()


def splitTorch(requirements: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``(torch requirements, other requirements)``: torch is installed differently (PyTorch extension)."""
    torch = [r for r in requirements if requirementName(r).lower() == TORCH]
    others = [r for r in requirements if requirementName(r).lower() != TORCH]
    return torch, others
