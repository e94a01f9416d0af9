"""The background job protocol (DESIGN.md §4): what a job folder holds and how its files are read and written.

A job is a folder. The caller (the Slicer GUI, a script) writes ``job.json`` with :func:`write_job` and starts
``python -m ASSFTActive.worker JOB_DIR``; the worker writes, inside that folder only (plus the model store):

* ``events.jsonl``: the same JSON lines it prints on stdout (:class:`ASSFTActive.progress.Event`), last one
  ``done`` or ``error``;
* ``log.txt``: human-readable log;
* ``result.json`` (:class:`JobResult`, written with :func:`write_result`, read with :func:`read_job_result`):
  ``{"status": "done", "kind", "model_card", "ranking" (when ranked), "predictions": {case_id: label_path},
  "pseudo_labeled": [case_id, ...], "activated" (adapt, sfr), "activation" (adapt, sfr), "metrics": {...}}``, where
  ``pseudo_labeled`` lists the cases kept by selective pseudo-labelling (``[]`` for a rank job), ``activated``
  says whether the new model version became the active one and ``activation`` why (the guard's decision:
  ``activate``, ``reason``, ``method``, ``stop_step``, cross-validated Dice before and after, the pool check);
  each of these is written once, at the top level (``metrics`` does not repeat them); on failure
  ``{"status": "error" | "cancelled", "message"}``;
* ``ranking.json`` (:class:`RankingFile`, the one schema of a ranking on disk, also written by ``assft rank``;
  :func:`write_ranking_file`, :func:`read_ranking_file`) and ``ranking.csv`` (:meth:`RankingFile.to_csv`);
* ``checkpoints/``: what a new run of the same job resumes from (an ``sfr`` job also keeps its SAM pseudo-labels
  there);
* ``predictions/`` and other outputs.

This module imports neither torch nor numpy: the GUI process uses it, and reads the worker's files through the same
records the worker writes them with.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import JobError
from .progress import Event

__all__ = [
    "CHECKPOINT_DIR",
    "EVENTS_FILE",
    "EXIT_CANCELLED",
    "EXIT_DONE",
    "EXIT_ERROR",
    "JOB_FILE",
    "ADAPT_KINDS",
    "JOB_KINDS",
    "JobResult",
    "JobSpec",
    "LOG_FILE",
    "RANKING_CONFIG_FILE",
    "RANKING_CSV_COLUMNS",
    "RANKING_FILE",
    "RESULT_FILE",
    "RESULT_STATUSES",
    "RankingEntry",
    "RankingFile",
    "RoundPlan",
    "SFR_METHODS",
    "read_events",
    "read_job",
    "read_job_result",
    "read_query_round",
    "read_ranking_file",
    "read_result",
    "write_job",
    "write_ranking_file",
    "write_result",
]

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log.txt"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_DIR = "predictions"
RANKING_FILE = "ranking.json"
RANKING_CSV = "ranking.csv"
JOB_KINDS = ("rank", "adapt", "sfr")
#: The kinds that adapt the model: they store a new version, decide its activation and pseudo-label the pool.
ADAPT_KINDS = ("adapt", "sfr")
#: ``method`` of an ``sfr`` job's settings: the values of :class:`ASSFTActive.sfr.pipeline.SfrMethod` (kept here as
#: plain strings so that this module imports no torch; a test checks that the two agree).
SFR_METHODS = ("sfr", "sfr_plus")

#: Worker exit codes: the last event is ``done`` exactly when the code is :data:`EXIT_DONE`.
EXIT_DONE = 0
EXIT_ERROR = 1
EXIT_CANCELLED = 130

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class JobSpec:
    """The inputs of one background job, as stored in ``JOB_DIR/job.json``.

    Attributes:
        kind: ``"rank"`` (score the unlabelled pool and propose ``budget`` volumes), ``"adapt"`` (fine-tune on
            the labelled volumes plus reliable pseudo-labelled ones, store a new model version, re-rank) or
            ``"sfr"`` (the same with SFR / SFR+: SAM pseudo-labels and Mean-Teacher re-training,
            :func:`ASSFTActive.sfr.pipeline.sfr_adapt`).
        images: ``{case_id: image path}``, every volume of the pool (labelled or not).
        labels: ``{case_id: label path}`` for the labelled volumes; each id must be in ``images``.
        model: a model card path, ``"default"`` (the embedded model), or a store folder
            (``<store>/<name>`` for its active version, ``<store>/<name>/v<k>``).
        store: model store folder (required for ``adapt`` and ``sfr``).
        name: model name in the store; ``""`` derives one from the card.
        budget: volumes to propose when ranking.
        query: :class:`ASSFTActive.query.config.QueryConfig` settings (a dict; checked by the worker).
        finetune: :class:`ASSFTActive.finetune.config.FinetuneConfig` settings (a dict; checked here).
        sfr: :class:`ASSFTActive.sfr.pipeline.SfrConfig` settings of an ``sfr`` job (a dict, e.g.
            ``{"method": "sfr_plus"}``; missing keys take SFR's defaults). ``method`` (one of :data:`SFR_METHODS`)
            is checked here, the rest by :meth:`sfr_config` in the worker (the settings classes need torch).
        sam_prior: SAM prior folder (``sam-card.json`` + weights) of an ``sfr`` job; ``""`` is the embedded
            ``sfr-sam-tiny`` (not Meta's SAM).
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
    sfr: Mapping[str, Any] = field(default_factory=dict)
    sam_prior: str = ""

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
        for key in ("model", "store", "name", "sam_prior"):
            if not isinstance(getattr(self, key), (str, os.PathLike)):
                raise ValueError(f"{key} must be a string")
            object.__setattr__(self, key, str(getattr(self, key)))
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f"budget must be a whole number >= 0, got {self.budget!r}")
        for key in ("query", "finetune", "sfr"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{key} must be a JSON object of settings")
            object.__setattr__(self, key, dict(getattr(self, key)))
        if self.kind in ADAPT_KINDS:
            if not self.store:
                raise ValueError(f"an {self.kind} job needs store (the model store folder)")
            if not self.labels:
                raise ValueError(f"an {self.kind} job needs at least one labelled volume in labels")
        if self.sfr_method not in SFR_METHODS:
            raise ValueError(f"sfr.method must be one of {list(SFR_METHODS)}, got {self.sfr.get('method')!r}")
        from .finetune.config import FinetuneConfig

        FinetuneConfig.from_dict(self.finetune)

    @property
    def sfr_method(self) -> str:
        """The SFR variant of an ``sfr`` job (``sfr`` unless the settings say ``sfr_plus``)."""
        method = self.sfr.get("method", SFR_METHODS[0])
        return method.value if hasattr(method, "value") else method

    def finetune_config(self):
        """The :class:`~ASSFTActive.finetune.config.FinetuneConfig` of this job."""
        from .finetune.config import FinetuneConfig

        return FinetuneConfig.from_dict(self.finetune)

    def sfr_config(self):
        """The :class:`~ASSFTActive.sfr.pipeline.SfrConfig` of this job (imports torch).

        Raises:
            JobError: invalid SFR settings.
        """
        from .errors import InputError
        from .sfr.pipeline import SfrConfig

        try:
            return SfrConfig.from_dict(dict(self.sfr))
        except (InputError, TypeError, ValueError) as exc:
            raise JobError(f"job.json: invalid sfr settings: {exc}") from exc

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
        """The JSON form; ``sfr`` and ``sam_prior`` only for an ``sfr`` job or when set."""
        data = {f.name: (dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), Mapping)
                         else getattr(self, f.name)) for f in fields(self)}
        if self.kind != "sfr":
            for key in ("sfr", "sam_prior"):
                if not data[key]:
                    del data[key]
        return data

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
    return _write_text_atomic(Path(job_dir) / JOB_FILE, json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")


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
    """``result.json`` as the plain JSON dict, or ``None`` when the job has not finished (no checks; readers that act
    on a result use :func:`read_job_result`)."""
    path = Path(job_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_json_if_present(path: Path, what: str) -> Any:
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


# ---------------------------------------------------------------------------------------------------- atomic write
def _write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_keys(data: Any, what: str, required: Sequence[str], optional: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = list(required) + list(optional)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; the keys are {sorted(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")


def _optional_text(value: Any, what: str) -> Optional[str]:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{what} must be a file path or null, got {value!r}")
    return str(value)


def _optional_number(value: Any, what: str) -> Optional[float]:
    """A finite number, or ``None`` for a value that was not computed (NaN in memory, ``null`` in JSON)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number or null, got {value!r}")
    number = float(value)
    if math.isnan(number):
        return None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    return number


# ---------------------------------------------------------------------------------------------------- ranking
@dataclass(frozen=True)
class RankingEntry:
    """One volume of ``ranking.json`` (and one line of ``ranking.csv``).

    Attributes:
        case_id: the volume's case id (file name without suffix).
        rank: 1 = proposed first; ``None`` for a labelled volume (the engine does not rank them).
        selected: among the first ``budget`` ranks (proposed for annotation); never true for a labelled volume.
        labeled: the volume already has an expert label; its embedding anchored diversity.
        dkd, asd, score: the ranking's scores (:class:`ASSFTActive.query.RankedCase`); ``None`` when not computed
            (NaN in memory is ``None`` here: the DKD and score of a labelled volume, ASD at cold start).
        knowledge_divergence: raw KD of the volume (``None`` when not computed).
        image: the image file; entropy_map, regions, prediction: the files written for it (``None`` when not).
    """

    case_id: str
    rank: Optional[int]
    selected: bool
    labeled: bool
    dkd: Optional[float] = None
    asd: Optional[float] = None
    score: Optional[float] = None
    knowledge_divergence: Optional[float] = None
    image: Optional[str] = None
    entropy_map: Optional[str] = None
    regions: Optional[str] = None
    prediction: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id:
            raise ValueError(f"every case needs a \"case_id\" (a non-empty string), got {self.case_id!r}")
        where = f"case {self.case_id!r}"
        for key in ("selected", "labeled"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{where}: \"{key}\" must be true or false, got {getattr(self, key)!r}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int)
                                      or self.rank < 1):
            raise ValueError(f"{where}: \"rank\" must be a whole number >= 1 or null, got {self.rank!r}")
        if self.labeled and self.selected:
            raise ValueError(f"{where}: a labelled volume is not proposed for annotation (\"selected\": false)")
        if not self.labeled and self.rank is None:
            raise ValueError(f"{where}: an unlabelled volume needs a \"rank\"")
        for key in ("dkd", "asd", "score", "knowledge_divergence"):
            object.__setattr__(self, key, _optional_number(getattr(self, key), f"{where}: \"{key}\""))
        for key in ("image", "entropy_map", "regions", "prediction"):
            object.__setattr__(self, key, _optional_text(getattr(self, key), f"{where}: \"{key}\""))

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "case") -> RankingEntry:
        """Build and check one entry.

        Raises:
            ValueError: unknown or missing keys, wrong types.
        """
        names = [f.name for f in fields(cls)]
        _check_keys(data, where, required=("case_id", "rank", "selected", "labeled"),
                    optional=[n for n in names if n not in ("case_id", "rank", "selected", "labeled")])
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


#: Columns of ``ranking.csv``, in order.
RANKING_CSV_COLUMNS = ("rank", "case_id", "selected", "labeled", "dkd", "asd", "score", "knowledge_divergence",
                       "image")


@dataclass(frozen=True)
class RankingFile:
    """``ranking.json``: the one schema of a ranking on disk, written by the engine (:func:`ASSFTActive.api.rank_pool`
    and the worker) and read by the Slicer module and scripts through :func:`read_ranking_file`.

    Attributes:
        strategy: the selection strategy (a :class:`ASSFTActive.query.Strategy` value).
        budget: volumes requested.
        model: the model card's path (its name when it has no file).
        cases: the ranked volumes in rank order, then the labelled ones (``rank`` null).
    """

    strategy: str
    budget: int
    model: str
    cases: Tuple[RankingEntry, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f"\"strategy\" must be a non-empty string, got {self.strategy!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f"\"budget\" must be a whole number >= 0, got {self.budget!r}")
        if not isinstance(self.model, str):
            raise ValueError(f"\"model\" must be a string, got {self.model!r}")
        cases = tuple(self.cases)
        if not all(isinstance(c, RankingEntry) for c in cases):
            raise ValueError("\"cases\" must hold RankingEntry records")
        ids = [c.case_id for c in cases]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"case id(s) {repeated} appear more than once")
        ranks = sorted(c.rank for c in cases if c.rank is not None)
        if ranks != list(range(1, len(ranks) + 1)):
            raise ValueError(f"the ranks must be 1..{len(ranks)}, got {ranks}")
        if sum(c.selected for c in cases) > self.budget:
            raise ValueError(f"more volumes are selected than the budget {self.budget}")
        object.__setattr__(self, "cases", cases)

    @property
    def selected_ids(self) -> Tuple[str, ...]:
        """Case ids proposed for annotation, in rank order."""
        return tuple(c.case_id for c in sorted(self.cases, key=lambda c: c.rank or 0) if c.selected)

    def entry(self, case_id: str) -> RankingEntry:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)

    def to_dict(self) -> Dict[str, Any]:
        return {"strategy": self.strategy, "budget": self.budget, "model": self.model,
                "cases": [case.to_dict() for case in self.cases]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankingFile:
        """Build and check a ranking.

        Raises:
            ValueError: unknown or missing keys, wrong types, inconsistent ranks (the message names the case).
        """
        _check_keys(data, "a ranking", required=("strategy", "budget", "cases"), optional=("model",))
        if not isinstance(data["cases"], (list, tuple)):
            raise ValueError("\"cases\" must be a list")
        cases = tuple(RankingEntry.from_dict(row, where=f"case {index}") for index, row in enumerate(data["cases"]))
        return cls(strategy=data["strategy"], budget=data["budget"], model=data.get("model", ""), cases=cases)

    def to_csv(self) -> str:
        """``ranking.csv``: :data:`RANKING_CSV_COLUMNS`, numbers with 6 decimals, ``None`` as an empty cell."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(RANKING_CSV_COLUMNS)
        for case in self.cases:
            row = case.to_dict()
            writer.writerow([f"{row[k]:.6f}" if isinstance(row[k], float) else ("" if row[k] is None else row[k])
                             for k in RANKING_CSV_COLUMNS])
        return buffer.getvalue()


def write_ranking_file(path: PathLike, ranking: RankingFile) -> Path:
    """Write ``ranking`` as JSON to ``path`` atomically; returns the path."""
    return _write_text_atomic(Path(path), json.dumps(ranking.to_dict(), indent=2, allow_nan=False) + "\n")


def read_ranking_file(path: PathLike) -> RankingFile:
    """Read and check a ``ranking.json``.

    Raises:
        JobError: missing or unreadable file, or an invalid ranking (the message names the file and the problem).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise JobError(f"{path}: ranking file not found; the job did not write it.") from exc
    except (OSError, ValueError) as exc:
        raise JobError(f"{path}: cannot read the ranking ({exc}).") from exc
    try:
        return RankingFile.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {exc}.") from exc


#: The ranking's settings beside ``ranking.json`` (written by ``rank_pool``); its ``query_round`` is a
#: :class:`RoundPlan`.
RANKING_CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class RoundPlan:
    """Where a ranking stands in a multi-round query schedule (``query_round`` of the ranking's ``config.json``;
    made by :func:`ASSFTActive.query.rounds.plan_round`).

    Attributes:
        budgets: the per-round budgets (:func:`~ASSFTActive.query.rounds.round_budgets`); they sum to the
            schedule's total budget.
        round_index: the current round, 0-based (``round_index + 1`` of ``len(budgets)`` for people).
        size: how many volumes this ranking proposes.
        labeled: labelled pool volumes counted when the plan was made.
    """

    budgets: Tuple[int, ...]
    round_index: int
    size: int
    labeled: int

    @property
    def total_rounds(self) -> int:
        return len(self.budgets)

    @property
    def complete(self) -> bool:
        """Every round's volumes are labelled: nothing is left to propose."""
        return self.labeled >= sum(self.budgets)

    def to_dict(self) -> dict:
        return {"round": self.round_index + 1, "rounds": self.total_rounds, "round_budgets": list(self.budgets),
                "proposed": self.size, "labeled_before": self.labeled}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundPlan:
        """Read :meth:`to_dict`'s output.

        Raises:
            ValueError: missing or unknown keys, values that are not whole numbers, ``rounds`` other than the number
                of round budgets, or ``round`` outside ``1..rounds``.
        """
        _check_keys(data, "a query round", required=("round", "rounds", "round_budgets", "proposed",
                                                     "labeled_before"), optional=())

        def whole(value: Any, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        budgets = data["round_budgets"]
        if (not isinstance(budgets, list) or not budgets or not all(whole(b, 0) for b in budgets)
                or not whole(data["rounds"], 1) or data["rounds"] != len(budgets)
                or not whole(data["round"], 1) or data["round"] > data["rounds"]
                or not whole(data["proposed"], 0) or not whole(data["labeled_before"], 0)):
            raise ValueError("'query_round' must hold whole numbers 'round' (1..rounds), 'rounds', 'round_budgets' "
                             f"(one per round), 'proposed' and 'labeled_before', got {dict(data)!r}")
        return cls(budgets=tuple(budgets), round_index=data["round"] - 1, size=data["proposed"],
                   labeled=data["labeled_before"])


def read_query_round(ranking_dir: PathLike) -> Optional[RoundPlan]:
    """The :class:`RoundPlan` of the ranking in ``ranking_dir`` (``query_round`` of its ``config.json``); ``None``
    when there is no ``config.json`` or it has no ``query_round`` (a ranking written before multi-round queries).

    Raises:
        JobError: ``config.json`` is not readable JSON, or its ``query_round`` is malformed (the message names the
            file).
    """
    path = Path(ranking_dir) / RANKING_CONFIG_FILE
    config = _read_json_if_present(path, "the ranking's settings")
    plan = config.get("query_round") if isinstance(config, dict) else None
    if plan is None:
        return None
    try:
        return RoundPlan.from_dict(plan)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {exc}.") from exc


# ---------------------------------------------------------------------------------------------------- result
#: ``status`` of a ``result.json``.
RESULT_DONE, RESULT_ERROR, RESULT_CANCELLED = "done", "error", "cancelled"
RESULT_STATUSES = (RESULT_DONE, RESULT_ERROR, RESULT_CANCELLED)


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
            raise ValueError(f"\"status\" must be one of {list(RESULT_STATUSES)}, got {self.status!r}")
        if not isinstance(self.message, str):
            raise ValueError(f"\"message\" must be a string, got {self.message!r}")
        if self.status == RESULT_DONE and self.kind not in JOB_KINDS:
            raise ValueError(f"\"kind\" of a finished job must be one of {list(JOB_KINDS)}, got {self.kind!r}")
        if self.status != RESULT_DONE and self.kind not in ("",) + JOB_KINDS:
            raise ValueError(f"\"kind\" must be one of {list(JOB_KINDS)}, got {self.kind!r}")
        for key in ("model_card", "ranking"):
            object.__setattr__(self, key, _optional_text(getattr(self, key), f"\"{key}\""))
        predictions = self.predictions
        if not isinstance(predictions, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (str, os.PathLike)) for k, v in predictions.items()):
            raise ValueError("\"predictions\" must map case ids to label files")
        object.__setattr__(self, "predictions", {k: str(v) for k, v in predictions.items()})
        pseudo = self.pseudo_labeled
        if isinstance(pseudo, (str, bytes)) or not isinstance(pseudo, (list, tuple)) or not all(
                isinstance(c, str) for c in pseudo):
            raise ValueError("\"pseudo_labeled\" must be a list of case ids")
        object.__setattr__(self, "pseudo_labeled", tuple(pseudo))
        if not isinstance(self.activated, bool):
            raise ValueError(f"\"activated\" must be true or false, got {self.activated!r}")
        if self.kind not in ADAPT_KINDS and (self.activated or self.activation or self.pseudo_labeled):
            raise ValueError("only an adapt or sfr job activates a model or keeps pseudo-labels")
        for key in ("activation", "metrics"):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"\"{key}\" must be a JSON object")
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
        data: Dict[str, Any] = {"status": self.status, "kind": self.kind, "model_card": self.model_card,
                                "predictions": dict(self.predictions), "pseudo_labeled": list(self.pseudo_labeled),
                                "metrics": dict(self.metrics)}
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
            _check_keys(data, "a failed job's result", required=("status",), optional=("message", "kind"))
            return cls(status=data["status"], message=data.get("message") or "", kind=data.get("kind", ""))
        required = ["status", "kind", "predictions", "pseudo_labeled", "metrics"]
        if data.get("kind") in ADAPT_KINDS:
            required.append("activated")
        _check_keys(data, "a finished job's result", required=required,
                    optional=[f.name for f in fields(cls) if f.name not in required])
        return cls(**dict(data))


def write_result(job_dir: PathLike, result: JobResult) -> Path:
    """Write ``JOB_DIR/result.json`` atomically; returns its path."""
    return _write_text_atomic(Path(job_dir) / RESULT_FILE, json.dumps(result.to_dict(), indent=2, sort_keys=True,
                                                                      default=str) + "\n")


def read_job_result(job_dir: PathLike) -> Optional[JobResult]:
    """``result.json`` as a checked :class:`JobResult`, or ``None`` when the job has not written one.

    Raises:
        JobError: a result file that is not valid JSON or not a valid result (the message names the file).
    """
    path = Path(job_dir) / RESULT_FILE
    data = _read_json_if_present(path, "the job result")
    if data is None:
        return None
    try:
        return JobResult.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {exc}; the worker that wrote it may be older than this reader. Run the job "
                       "again.") from exc
