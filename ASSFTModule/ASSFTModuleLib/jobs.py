"""Job folders for the background worker: ``job.json`` and the case list in, ``result.json`` out (no MRML here;
:mod:`jobPreparation` fills a folder from the scene).

The folder layout follows the engine's job protocol (``ASSFTActive.worker``)::

    JOB_DIR/job.json            inputs (written here)
    JOB_DIR/slicer-cases.json   which volume node each case came from (written here, read on load)
    JOB_DIR/images/<case>.nrrd  the scene's volumes (written here)
    JOB_DIR/labels/<case>.nrrd  class label maps of the labeled volumes (written here)
    JOB_DIR/events.jsonl, log.txt, result.json, ...   written by the worker
"""

from __future__ import annotations

import datetime
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from .errors import ASSFTModuleError, JobFailedError, ResultFormatError
from .events import readEvents
from .records import JobResult

JOB_KINDS = ("rank", "adapt")
JOB_FILE = "job.json"
CASES_FILE = "slicer-cases.json"
RESULT_FILE = "result.json"
LOG_FILE = "log.txt"
IMAGE_SUFFIX = ".nrrd"


def atomicWriteText(path: Path, text: str) -> None:
    """Write ``text`` so that a reader (the worker) sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def caseIdForName(name: str) -> str:
    """A file-name-safe case id from a node name (letters, digits, ``_``, ``-``).

    Dots are replaced too, so that ``<case id>.nrrd`` gives the same id back through the engine's ``case_id``
    (a name like ``a.seg`` would otherwise lose its ``.seg``).
    """
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", name.strip()).strip("_-")
    return text or "volume"


def assignCaseIds(names: Sequence[str]) -> list:
    """Unique case ids for node names, in order (``a``, ``a_2``, ``a_3`` for repeated names)."""
    taken = set()
    ids = []
    for name in names:
        base = caseIdForName(name)
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate)
        ids.append(candidate)
    return ids


def newJobDir(workDir, kind: str) -> Path:
    """Create and return a fresh job folder ``<workDir>/jobs/<date>-<time>-<kind>[-n]``."""
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {JOB_KINDS}, got {kind!r}")
    jobsDir = Path(workDir) / "jobs"
    jobsDir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = jobsDir / (f"{stamp}-{kind}" if attempt == 1 else f"{stamp}-{kind}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ASSFTModuleError(f"{jobsDir}: cannot create a new job folder; remove old job folders.")


def writeJobFile(jobDir, kind: str, images: Mapping[str, Path], labels: Mapping[str, Path], model: str, store,
                 name: str, budget: int, query: Optional[dict] = None, finetune: Optional[dict] = None) -> Path:
    """Write ``job.json`` as the worker expects it (absolute paths; ``model`` is a card path or ``"default"``).

    Returns:
        the path of ``job.json``.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {JOB_KINDS}, got {kind!r}")
    if int(budget) < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    job = {
        "kind": kind,
        "images": {caseId: str(Path(path).resolve()) for caseId, path in images.items()},
        "labels": {caseId: str(Path(path).resolve()) for caseId, path in labels.items()},
        "model": model,
        "store": str(Path(store).resolve()),
        "name": name,
        "budget": int(budget),
        "query": dict(query or {}),
        "finetune": dict(finetune or {}),
    }
    path = Path(jobDir) / JOB_FILE
    atomicWriteText(path, json.dumps(job, indent=2))
    return path


def readCaseNodes(jobDir) -> Dict[str, dict]:
    """``{case_id: {"node_id": ..., "name": ...}}`` written by :func:`prepareJob` (empty when missing)."""
    path = Path(jobDir) / CASES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultFormatError(f"{path}: cannot read the case list ({exc}).") from exc
    return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}


def logTail(jobDir, lines: int = 50) -> str:
    """The last ``lines`` lines of the job's ``log.txt`` ("" when there is none)."""
    path = Path(jobDir) / LOG_FILE
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _failureMessage(jobDir: Path) -> str:
    errors = [event for event in readEvents(jobDir) if event.event == "error"]
    if errors:
        return errors[-1].message or "the worker reported an error"
    return "the worker ended without a result"


def readJobResult(jobDir) -> JobResult:
    """Read ``result.json`` of a finished job.

    Raises:
        JobFailedError: no result, or a status other than ``done`` (message from the last ``error`` event).
        ResultFormatError: a malformed result file.
    """
    jobDir = Path(jobDir)
    path = jobDir / RESULT_FILE
    if not path.is_file():
        raise JobFailedError(f"Job {jobDir.name} failed: {_failureMessage(jobDir)}.", str(jobDir), logTail(jobDir))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultFormatError(f"{path}: cannot read the job result ({exc}).") from exc
    if not isinstance(data, dict):
        raise ResultFormatError(f"{path}: expected a JSON object.")
    status = str(data.get("status", ""))
    if status != "done":
        message = str(data.get("message") or "") or _failureMessage(jobDir)
        raise JobFailedError(f"Job {jobDir.name} ended with status '{status}': {message}.", str(jobDir),
                             logTail(jobDir))

    def resolve(value) -> Optional[Path]:
        if not value:
            return None
        candidate = Path(str(value))
        return candidate if candidate.is_absolute() else jobDir / candidate

    predictions = data.get("predictions") or {}
    if not isinstance(predictions, dict):
        raise ResultFormatError(f"{path}: \"predictions\" must map case ids to label files.")
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ResultFormatError(f"{path}: \"metrics\" must be a JSON object.")
    return JobResult(
        status=status,
        kind=str(data.get("kind", "")),
        jobDir=jobDir,
        modelCard=resolve(data.get("model_card")),
        ranking=resolve(data.get("ranking")),
        predictions={str(k): resolve(v) for k, v in predictions.items() if v},
        metrics=dict(metrics),
        pseudoLabeled=_pseudoLabeled(data, metrics),
        activated=bool(metrics.get("activated", True)),
    )


def _pseudoLabeled(data: dict, metrics: dict) -> tuple:
    """Case ids used as pseudo-labels: ``pseudo_labeled`` ids, or the ``kept`` decisions in ``metrics.pseudo``."""
    listed = data.get("pseudo_labeled", metrics.get("pseudo_labeled"))
    if isinstance(listed, (list, tuple)):
        return tuple(str(caseId) for caseId in listed)
    decisions = metrics.get("pseudo")
    if isinstance(decisions, (list, tuple)):
        return tuple(str(d["case_id"]) for d in decisions if isinstance(d, dict) and d.get("kept") and d.get("case_id"))
    return ()
