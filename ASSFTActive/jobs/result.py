"""``result.json``: how a job ended and what it produced (:class:`JobResult`), written by the worker, read by the GUI.

The keys: ``{"status": "done", "kind", "model_card", "ranking" (when ranked), "predictions": {case_id: label_path},
"pseudo_labeled": [case_id, ...], "activated" (adapt, sfr), "activation" (adapt, sfr), "metrics": {...}}``, where
``pseudo_labeled`` lists the cases kept by selective pseudo-labelling (``[]`` for a rank job), ``activated`` says
whether the new model version became the active one and ``activation`` why (the guard's decision: ``activate``,
``reason``, ``method``, ``stop_step``, cross-validated Dice before and after, the pool check); each of these is
written once, at the top level (``metrics`` does not repeat them); on failure ``{"status": "error" | "cancelled",
"message"}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import JobError
from ..settings import check_record_keys, optional_text
from .files import ADAPT_KINDS, JOB_KINDS, RESULT_FILE, PathLike, read_json_if_present, write_text_atomic

__all__ = [
    "RESULT_CANCELLED",
    "RESULT_DONE",
    "RESULT_ERROR",
    "RESULT_STATUSES",
    "JobResult",
    "read_job_result",
    "write_result",
]

#: ``status`` of a ``result.json``.
RESULT_DONE, RESULT_ERROR, RESULT_CANCELLED = "done", "error", "cancelled"
RESULT_STATUSES = (RESULT_DONE, RESULT_ERROR, RESULT_CANCELLED)


def _case_files(value: Any, what: str) -> Dict[str, str]:
    """``{case_id: file}`` with string keys and path values."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, os.PathLike)) for k, v in value.items()
    ):
        raise ValueError(f"{what} must map case ids to label files")
    return {k: str(v) for k, v in value.items()}


def _case_ids(value: Any, what: str) -> Tuple[str, ...]:
    """A list of case ids (not a string, whose characters would pass as ids)."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, (list, tuple))
        or not all(isinstance(c, str) for c in value)
    ):
        raise ValueError(f"{what} must be a list of case ids")
    return tuple(value)


@dataclass(frozen=True)
class JobResult:
    """``JOB_DIR/result.json``: how a job ended and what it produced (see the module docstring for the keys).

    Attributes:
        status: ``done``, ``error`` or ``cancelled``.
        message: why a job failed (empty when done).
        kind: ``rank``, ``adapt`` or ``sfr`` (empty for a failure).
        model_card: the card the job ranked with (rank) or the new model version's card (adapt, sfr).
        ranking: the ``ranking.json`` written (``None`` when nothing was ranked).
        predictions: ``{case_id: predicted label file}``.
        pseudo_labeled: case ids kept by selective pseudo-labelling (adapt) or re-trained on with SAM's
            pseudo-label (sfr); empty for a rank job.
        activated: whether the new model version became the active one (always False for rank).
        activation: the guard's decision (``activate``, ``reason``, ``method``, ...; empty for rank).
        metrics: numbers and summaries of the run (written as they come; not re-checked).

    Paths are stored as written (absolute from the worker); :meth:`path` resolves a relative one against the job
    folder.
    """

    status: str
    message: str = ""
    kind: str = ""
    model_card: Optional[str] = None
    ranking: Optional[str] = None
    predictions: Mapping[str, str] = field(default_factory=dict)
    pseudo_labeled: Tuple[str, ...] = ()
    activated: bool = False
    activation: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in RESULT_STATUSES:
            raise ValueError(f'"status" must be one of {list(RESULT_STATUSES)}, got {self.status!r}')
        if not isinstance(self.message, str):
            raise ValueError(f'"message" must be a string, got {self.message!r}')
        kinds = JOB_KINDS if self.status == RESULT_DONE else ("",) + JOB_KINDS
        if self.kind not in kinds:
            raise ValueError(f'"kind" of a {self.status} job must be one of {list(kinds)}, got {self.kind!r}')
        for key in ("model_card", "ranking"):
            object.__setattr__(self, key, optional_text(getattr(self, key), f'"{key}"'))
        object.__setattr__(self, "predictions", _case_files(self.predictions, '"predictions"'))
        object.__setattr__(self, "pseudo_labeled", _case_ids(self.pseudo_labeled, '"pseudo_labeled"'))
        if not isinstance(self.activated, bool):
            raise ValueError(f'"activated" must be true or false, got {self.activated!r}')
        if self.kind not in ADAPT_KINDS and (self.activated or self.activation or self.pseudo_labeled):
            raise ValueError("only an adapt or sfr job activates a model or keeps pseudo-labels")
        for key in ("activation", "metrics"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f'"{key}" must be a JSON object')
            object.__setattr__(self, key, dict(getattr(self, key)))

    @property
    def done(self) -> bool:
        return self.status == RESULT_DONE

    @property
    def activation_reason(self) -> str:
        """Why the guard did or did not activate the new version (empty for rank)."""
        return str(self.activation.get("reason", ""))

    @staticmethod
    def path(value: Optional[str], job_dir: PathLike) -> Optional[Path]:
        """A path of this result as a :class:`~pathlib.Path`, a relative one taken relative to ``job_dir``."""
        if not value:
            return None
        candidate = Path(value)
        return candidate if candidate.is_absolute() else Path(job_dir) / candidate

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form: a failure has ``status`` and ``message`` only; ``activated`` and ``activation`` only for
        adapt and sfr; ``ranking`` only when one was written."""
        if self.status != RESULT_DONE:
            return {"status": self.status, "message": self.message}
        data: Dict[str, Any] = {
            "status": self.status,
            "kind": self.kind,
            "model_card": self.model_card,
            "predictions": dict(self.predictions),
            "pseudo_labeled": list(self.pseudo_labeled),
            "metrics": dict(self.metrics),
        }
        if self.ranking is not None:
            data["ranking"] = self.ranking
        if self.kind in ADAPT_KINDS:
            data["activated"] = self.activated
            data["activation"] = dict(self.activation)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobResult:
        """Build and check a result.

        Raises:
            ValueError: unknown or missing keys, wrong types.
        """
        if not isinstance(data, Mapping):
            raise ValueError("a result must be a JSON object")
        if data.get("status") != RESULT_DONE:
            check_record_keys(data, "a failed job's result", required=("status",), optional=("message", "kind"))
            return cls(status=data["status"], message=data.get("message") or "", kind=data.get("kind", ""))
        required = ["status", "kind", "predictions", "pseudo_labeled", "metrics"]
        if data.get("kind") in ADAPT_KINDS:
            required.append("activated")
        check_record_keys(
            data,
            "a finished job's result",
            required=required,
            optional=[f.name for f in fields(cls) if f.name not in required],
        )
        return cls(**dict(data))


def write_result(job_dir: PathLike, result: JobResult) -> Path:
    """Write ``JOB_DIR/result.json`` atomically; returns its path."""
    return write_text_atomic(
        Path(job_dir) / RESULT_FILE, json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    )


def read_job_result(job_dir: PathLike) -> Optional[JobResult]:
    """``result.json`` as a checked :class:`JobResult`, or ``None`` when the job has not written one.

    Raises:
        JobError: a result file that is not valid JSON or not a valid result (the message names the file).
    """
    path = Path(job_dir) / RESULT_FILE
    data = read_json_if_present(path, "the job result")
    if data is None:
        return None
    try:
        return JobResult.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise JobError(
            f"{path}: {exc}; the worker that wrote it may be older than this reader. Run the job again."
        ) from exc
