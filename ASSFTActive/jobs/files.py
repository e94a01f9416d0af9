"""What a job folder holds, by name, and the few ways its text files are written and read.

Standard library only (the Slicer GUI process uses it). Every file of the protocol is written through
:func:`write_text_atomic`: a temporary file in the same folder, renamed over the target, with the permissions of
any other output (``0666`` less the umask, so ``0644`` under the usual umask; ``mkstemp`` alone would leave
``0600`` and others on a shared lab folder could not read a ranking).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, List, Union

from ..confine import output_mode, write_confined
from ..errors import JobError
from ..progress import Event

__all__ = [
    "ADAPT_KINDS",
    "CHECKPOINT_DIR",
    "EVENTS_FILE",
    "EXIT_CANCELLED",
    "EXIT_DONE",
    "EXIT_ERROR",
    "JOB_FILE",
    "JOB_KINDS",
    "LOG_FILE",
    "RESULT_FILE",
    "CANCEL_FILE",
    "SFR_METHODS",
    "PathLike",
    "read_events",
    "read_json_if_present",
    "write_text_atomic",
]

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log.txt"
RESULT_FILE = "result.json"
#: Written by a GUI to ask the worker to stop (polled at every event): the polite stop on Windows, where a
#: console-less child gets no signal the worker could handle.
CANCEL_FILE = "cancel"
CHECKPOINT_DIR = "checkpoints"
JOB_KINDS = ("rank", "adapt", "sfr")
#: The kinds that adapt the model: they store a new version, decide its activation and pseudo-label the pool.
ADAPT_KINDS = ("adapt", "sfr")
#: ``method`` of an ``sfr`` job's settings: the values of :class:`ASSFTActive.sfr.config.SfrMethod` (kept here as
#: plain strings so that this module imports no torch; a test checks that the two agree).
SFR_METHODS = ("sfr", "sfr_plus")

#: Worker exit codes: the last event is ``done`` exactly when the code is :data:`EXIT_DONE`.
EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_CANCELLED = 130

PathLike = Union[str, "os.PathLike[str]"]


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename; the file gets
    mode ``0666 & ~umask`` like every other output."""
    path = Path(path)
    if write_confined(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), ".txt", output_mode()):
        return path  # inside the worker's job folder: no link on the way is followed (ASSFTActive.confine)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json_if_present(path: Path, what: str) -> Any:
    """The JSON value in ``path``; ``None`` when there is no such file.

    Raises:
        JobError: the file exists but is not readable JSON (the message names the file and ``what`` it holds).
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"{path}: cannot read {what} ({exc}).") from exc


def read_events(job_dir: PathLike) -> List[Event]:
    """Every event of ``events.jsonl`` (a line cut short by a kill at the very end is ignored)."""
    path = Path(job_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    # errors="replace": a kill may cut the last line inside a multi-byte character
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            events.append(Event.from_json(line))
        except (ValueError, KeyError, TypeError):
            continue
    return events
