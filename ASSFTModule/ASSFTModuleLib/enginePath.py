"""Find the ASSFT engine (``ASSFTActive``) that ships beside this module and make it importable.

Layouts handled:
    * source tree: ``<repo>/ASSFTModule/ASSFTModule.py`` and ``<repo>/ASSFTActive/``;
    * Slicer build or install tree: ``<qt-scripted-modules>/ASSFTModule.py`` and
      ``<qt-scripted-modules>/ASSFTActive/`` (the top-level CMakeLists.txt installs the engine there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

ENGINE_PACKAGE = "ASSFTActive"

_LIB_DIR = Path(__file__).resolve().parent
_MODULE_DIR = _LIB_DIR.parent


def engineRootCandidates() -> List[Path]:
    """Folders that may hold ``ASSFTActive/``, most specific first."""
    return [_MODULE_DIR, _MODULE_DIR.parent]


def engineRoot() -> Optional[Path]:
    """The folder that contains the ``ASSFTActive`` package shipped with this module, or None."""
    for candidate in engineRootCandidates():
        if (candidate / ENGINE_PACKAGE / "__init__.py").is_file():
            return candidate
    return None


def ensureEngineOnPath() -> Optional[Path]:
    """Put the shipped engine's root folder on ``sys.path`` (first) and return it.

    Does nothing when the engine is not shipped beside the module (then an installed ``ASSFTActive`` is used).
    """
    root = engineRoot()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def requirementsPath() -> Path:
    """The Python requirements of the worker: the module's copy when installed, else the source-tree file."""
    candidates = [
        _MODULE_DIR / "Resources" / "ASSFTModule-requirements.txt",
        _MODULE_DIR.parent / "Resources" / "requirements.txt",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1]


def pythonPathWithEngine(existing: Optional[str] = None) -> str:
    """A ``PYTHONPATH`` value whose first entry is the engine root (for the worker process)."""
    root = engineRoot()
    parts = [str(root)] if root is not None else []
    if existing:
        parts.extend(p for p in existing.split(os.pathsep) if p and p not in parts)
    return os.pathsep.join(parts)
