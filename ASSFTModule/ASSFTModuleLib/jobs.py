"""Job folders on the Slicer side: case ids from node names, a fresh folder per job, the scene's case list, and
``result.json`` as a :class:`JobResult` (no MRML here; :mod:`jobPreparation` fills a folder from the scene).

The folder follows the engine's job protocol (:mod:`ASSFTActive.jobs`, which writes and reads ``job.json``,
``events.jsonl`` and ``result.json``)::

    JOB_DIR/job.json            inputs (ASSFTActive.jobs.write_job)
    JOB_DIR/slicer-cases.json   which volume node each case came from (written and read here)
    JOB_DIR/images/<case>.nrrd  the scene's volumes
    JOB_DIR/labels/<case>.nrrd  class label maps of the labeled volumes
    JOB_DIR/events.jsonl, log.txt, result.json, ...   written by the worker
    JOB_DIR/config.json         the ranking's settings; its query_round (ASSFTActive.jobs.read_query_round)
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import (
    JOB_KINDS,
    LOG_FILE,
    RESULT_FILE,
    RoundPlan,
    read_events,
    read_job_result,
    read_query_round,
)

from .errors import ASSFTModuleError, JobFailedError, ResultFormatError
from .records import JobResult

CASES_FILE = "slicer-cases.json"
IMAGE_SUFFIX = ".nrrd"


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
    return failureReport(jobDir)[0]


def readJobResult(jobDir) -> JobResult:
    """Read ``result.json`` of a finished job with the engine's reader (:func:`ASSFTActive.jobs.read_job_result`,
    which checks it), paths resolved against the job folder.

    Raises:
        JobFailedError: no result, or a status other than ``done`` (message from the last ``error`` event).
        ResultFormatError: a malformed result file (the engine's message: the file and what is wrong).
    """
    jobDir = Path(jobDir)
    try:
        record = read_job_result(jobDir)
    except JobError as exc:
        raise ResultFormatError(str(exc)) from exc
    if record is None:
        raise JobFailedError(f"Job {jobDir.name} failed: {_failureMessage(jobDir)}.", str(jobDir), logTail(jobDir))
    if not record.done:
        message = record.message or _failureMessage(jobDir)
        raise JobFailedError(f"Job {jobDir.name} ended with status '{record.status}': {message}.", str(jobDir),
                             logTail(jobDir))
    return JobResult(jobDir=jobDir, record=record)


def pruneJobFolders(workDir, keep: int, protect: Sequence = ()) -> list:
    """Remove all but the newest ``keep`` job folders under ``<workDir>/jobs`` (by the time their ``job.json`` was
    written), never one in ``protect`` (e.g. the folder of the ranking shown in the panel, whose images
    and overlays the table points to) and never a folder a worker may still be using (no ``result.json``
    and modified in the last day).

    Returns:
        the removed folders.
    """
    import shutil
    import time

    jobsDir = Path(workDir) / "jobs"
    if not jobsDir.is_dir():
        return []
    protected = {Path(p).resolve() for p in protect if p and str(p) not in (".", "")}
    folders = sorted((p for p in jobsDir.iterdir() if p.is_dir() and (p / "job.json").is_file()),
                     key=lambda p: ((p / "job.json").stat().st_mtime_ns, p.name), reverse=True)
    removed = []
    for folder in folders[max(int(keep), 0):]:
        if folder.resolve() in protected:
            continue
        unfinished = not (folder / RESULT_FILE).is_file()
        if unfinished and time.time() - folder.stat().st_mtime < 24 * 3600:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def latestRankingJobDir(workDir) -> str:
    """The newest job folder under ``<workDir>/jobs`` whose ``result.json`` is ``done`` with a ranking ("" when
    there is none); a malformed result does not count."""
    jobsDir = Path(workDir) / "jobs"
    if not jobsDir.is_dir():
        return ""
    folders = sorted((p for p in jobsDir.iterdir() if (p / RESULT_FILE).is_file()),
                     key=lambda p: ((p / RESULT_FILE).stat().st_mtime_ns, p.name), reverse=True)
    for folder in folders:
        try:
            record = read_job_result(folder)
        except JobError:
            continue
        if record is not None and record.done and record.ranking:
            return str(folder.resolve())
    return ""


def failureReport(jobDir, output: Sequence[str] = (), workerError: str = "", lines: int = 30) -> Tuple[str, str]:
    """``(message, details)`` of a failed job, for the panel and the browser alike.

    Args:
        jobDir: the job folder (None when the job never got one).
        output: the worker's printed lines as the GUI received them (merged stdout/stderr, events as text).
        workerError: the message of the last ``error`` event the worker printed (it prints one even when it refuses
            a job before opening its log, e.g. a job folder with symbolic links).
        lines: how many last lines go into ``details``.

    Returns:
        the worker's error (the message of ``result.json``, else the last ``error`` event of ``events.jsonl``, else
        ``workerError``, else "the worker ended without a result") and the last ``lines`` lines of ``log.txt``,
        else of ``output``.
    """
    message = ""
    if jobDir is not None and Path(jobDir).is_dir():
        try:
            record = read_job_result(jobDir)
        except JobError:
            record = None
        if record is not None and not record.done:
            message = record.message
        errors = [event for event in read_events(jobDir) if event.event == "error"]
        message = message or (errors[-1].message if errors else "")
    details = logTail(jobDir, lines) if jobDir is not None else ""
    if not details:
        details = "\n".join(list(output)[-lines:])
    return message or workerError or "the worker ended without a result", details


def readQueryRound(rankingPath) -> Optional[RoundPlan]:
    """The round of the multi-round query schedule a ranking belongs to (the engine's
    :func:`ASSFTActive.jobs.read_query_round` on the folder of ``rankingPath``); None for a ranking without one.

    Raises:
        ResultFormatError: ``config.json`` is not valid JSON, or its ``query_round`` is malformed (the engine's
            message: the file and what is wrong).
    """
    try:
        return read_query_round(Path(rankingPath).parent)
    except JobError as exc:
        raise ResultFormatError(str(exc)) from exc


def describeQueryRound(plan: RoundPlan) -> str:
    """One plain line, e.g. ``Query round 2 of 2 (2 + 2 volumes): 2 volumes proposed.``"""
    sizes = " + ".join(str(size) for size in plan.budgets)
    where = f"Query round {plan.round_index + 1} of {plan.total_rounds} ({sizes} volume{'' if sizes == '1' else 's'})"
    if plan.total_rounds > 1 and plan.complete:
        return f"{where}: the schedule is complete, no volume proposed."
    return f"{where}: {plan.size} volume{'' if plan.size == 1 else 's'} proposed."
