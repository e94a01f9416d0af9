"""The background job protocol (DESIGN.md §4): what a job folder holds and how its files are read and written.

A job is a folder. The caller (the Slicer GUI, a script) writes ``job.json`` with :func:`write_job` and starts
``python -m ASSFTActive.worker JOB_DIR``; the worker writes, inside that folder only (plus the model store):

* ``events.jsonl``: the same JSON lines it prints on stdout (:class:`ASSFTActive.progress.Event`), last one
  ``done`` or ``error``;
* ``log.txt``: human-readable log;
* ``result.json``: ``{"status": "done", "kind", "model_card", "ranking" (when ranked), "predictions":
  {case_id: label_path}, "pseudo_labeled": [case_id, ...], "activated" (adapt), "activation" (adapt),
  "metrics": {...}}``, where ``pseudo_labeled`` lists the cases kept by selective pseudo-labelling (``[]`` for a
  rank job), ``activated`` says whether the new model version became the active one and ``activation`` why
  (the guard's decision: ``activate``, ``reason``, ``method``, ``stop_step``, cross-validated Dice before and
  after, the pool check); on failure
  ``{"status": "error" | "cancelled", "message"}``;
* ``checkpoints/``: what a new run of the same job resumes from;
* ``predictions/``, ``ranking.json`` and other outputs.

This module imports neither torch nor numpy: the GUI process uses it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from .errors import JobError
from .progress import Event

__all__ = [
    "CHECKPOINT_DIR",
    "EVENTS_FILE",
    "EXIT_CANCELLED",
    "EXIT_DONE",
    "EXIT_ERROR",
    "JOB_FILE",
    "JOB_KINDS",
    "JobSpec",
    "LOG_FILE",
    "RESULT_FILE",
    "read_events",
    "read_job",
    "read_result",
    "write_job",
]

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log.txt"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
RANKING_FILE = "ranking.json"
JOB_KINDS = ("rank", "adapt")

#: Worker exit codes: the last event is ``done`` exactly when the code is :data:`EXIT_DONE`.
EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_CANCELLED = 130

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class JobSpec:
    """The inputs of one background job, as stored in ``JOB_DIR/job.json``.

    Attributes:
        kind: ``"rank"`` (score the unlabelled pool and propose ``budget`` volumes) or ``"adapt"`` (fine-tune on
            the labelled volumes plus reliable pseudo-labelled ones, store a new model version, re-rank).
        images: ``{case_id: image path}``, every volume of the pool (labelled or not).
        labels: ``{case_id: label path}`` for the labelled volumes; each id must be in ``images``.
        model: a model card path, ``"default"`` (the embedded model), or a store folder
            (``<store>/<name>`` for its active version, ``<store>/<name>/v<k>``).
        store: model store folder (required for ``adapt``).
        name: model name in the store; ``""`` derives one from the card.
        budget: volumes to propose when ranking.
        query: :class:`ASSFTActive.query.config.QueryConfig` settings (a dict; checked by the worker).
        finetune: :class:`ASSFTActive.finetune.config.FinetuneConfig` settings (a dict; checked here).
    """

    kind: str
    images: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    model: str = "default"
    store: str = ""
    name: str = ""
    budget: int = 0
    query: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {list(JOB_KINDS)}, got {self.kind!r}")
        for key in ("images", "labels"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, (str, os.PathLike))
                                                         for k, v in value.items()):
                raise ValueError(f"{key} must map case ids to file paths")
            object.__setattr__(self, key, {str(k): str(v) for k, v in value.items()})
        if not self.images:
            raise ValueError("images is empty; list the volumes of the pool")
        stray = sorted(set(self.labels) - set(self.images))
        if stray:
            raise ValueError(f"labels {stray} have no image in images; every labelled case needs its image")
        for key in ("model", "store", "name"):
            if not isinstance(getattr(self, key), (str, os.PathLike)):
                raise ValueError(f"{key} must be a string")
            object.__setattr__(self, key, str(getattr(self, key)))
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f"budget must be a whole number >= 0, got {self.budget!r}")
        for key in ("query", "finetune"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key} must be a JSON object of settings")
            object.__setattr__(self, key, dict(getattr(self, key)))
        if self.kind == "adapt":
            if not self.store:
                raise ValueError("an adapt job needs store (the model store folder)")
            if not self.labels:
                raise ValueError("an adapt job needs at least one labelled volume in labels")
        from .finetune.config import FinetuneConfig

        FinetuneConfig.from_dict(self.finetune)

    def finetune_config(self):
        """The :class:`~ASSFTActive.finetune.config.FinetuneConfig` of this job."""
        from .finetune.config import FinetuneConfig

        return FinetuneConfig.from_dict(self.finetune)

    def query_config(self):
        """The :class:`~ASSFTActive.query.config.QueryConfig` of this job (imports the query package).

        Raises:
            JobError: invalid query settings.
        """
        from .query.config import QueryConfig

        try:
            return QueryConfig.from_dict(dict(self.query))
        except ValueError as exc:
            raise JobError(f"job.json: {exc}") from exc

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: (dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), Mapping)
                         else getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build and check a spec.

        Raises:
            ValueError: unknown or missing keys, wrong types, invalid settings.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a job must be a JSON object")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a job has the keys {known}")
        missing = [k for k in ("kind", "images") if k not in data]
        if missing:
            raise ValueError(f"missing key(s) {missing}")
        return cls(**dict(data))


def write_job(job_dir: PathLike, spec: JobSpec) -> Path:
    """Create ``job_dir`` (if needed) and write ``job.json`` atomically; returns its path."""
    folder = Path(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / JOB_FILE
    handle, tmp = tempfile.mkstemp(prefix=f".{JOB_FILE}.", suffix=".tmp", dir=str(folder))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_job(job_dir: PathLike) -> JobSpec:
    """Read and check ``JOB_DIR/job.json``.

    Raises:
        JobError: missing or unreadable file, or an invalid spec (the message names the file and the problem).
    """
    path = Path(job_dir) / JOB_FILE
    if not path.is_file():
        raise JobError(f"{path}: job file not found. Write it with ASSFTActive.jobs.write_job first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"{path}: not a readable JSON job ({exc}).") from exc
    try:
        return JobSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {exc}.") from exc


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


def read_result(job_dir: PathLike) -> Optional[Dict[str, Any]]:
    """``result.json`` as a dict, or ``None`` when the job has not finished."""
    path = Path(job_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
