"""ASSFT in a web browser: ``assft serve`` on trame-slicer.

A third front end beside the Slicer module (``ASSFTModule``) and the command line (``ASSFTActive.cli``). It stands on
the Slicer module's MRML logic and job controller (``ASSFTModuleLib``: scene in, scene out, no Qt) and on the engine's
job protocol (``python -m ASSFTActive.worker JOB_DIR``); the server process never imports torch.

Layers (imports point down only)::

    ASSFTWeb.app (trame UI, event loop)  ->  ASSFTWeb.session (scene, pool, labels, jobs; no trame)
                                         ->  ASSFTModuleLib (logic, jobController)  ->  ASSFTActive (torch-free parts)

Modules: ``session`` (the annotator's round on one scene), ``label_files`` (saving label maps next to the data
with a backup, never through links), ``plot`` (the DKD-against-ASD chart as SVG), ``guidance`` (the next-step line),
``fields`` (what a browser may change, validated), ``security`` (the server's doors: secret, Host, Origin, message
sizes, no tracebacks), ``app`` (the page), ``__main__`` (command line).
The engine (``ASSFTActive``) never imports this package; ``assft serve`` starts it as a child process.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The repository root (``ASSFTWeb``'s parent) and the Slicer module folder holding ``ASSFTModuleLib``.
REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "ASSFTModule"


def ensure_module_lib_on_path() -> None:
    """Make ``ASSFTModuleLib`` (and through it the engine) importable."""
    for path in (str(REPO_ROOT), str(MODULE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)


ensure_module_lib_on_path()
