"""The background job protocol (DESIGN.md §4): what a job folder holds and how its files are read and written.

A job is a folder. The caller (the Slicer GUI, the browser, a script) writes ``job.json`` with :func:`write_job`
(:mod:`.spec`; every settings block checked by :mod:`.blocks` before anything is written) and starts
``python -m ASSFTActive.worker JOB_DIR``; the worker writes, inside that folder only (plus the model store):

* ``events.jsonl``: the same JSON lines it prints on stdout (:class:`ASSFTActive.progress.Event`), last one
  ``done`` or ``error``;
* ``log.txt``: human-readable log;
* ``result.json`` (:class:`JobResult`, :mod:`.result`);
* ``ranking.json`` (:class:`~ASSFTActive.query.ranking_file.RankingFile`, the one schema of a ranking on disk, also
  written by ``assft rank``; :func:`write_ranking_file`, :func:`read_ranking_file`, :mod:`.ranking`) and
  ``ranking.csv``;
* ``checkpoints/``: what a new run of the same job resumes from (an ``sfr`` job also keeps its SAM pseudo-labels
  there);
* ``predictions/`` and other outputs.

Standard library only (a test checks that importing it loads neither torch nor numpy): the GUI process uses it and
reads the worker's files through the same records the worker writes them with. The ranking records and
:class:`~ASSFTActive.query.rounds.RoundPlan` live with the query (re-exported here for the protocol's readers).
"""

from __future__ import annotations

from ..query.ranking_file import RANKING_CSV_COLUMNS, RankingEntry, RankingFile
from ..query.rounds import RoundPlan
from .blocks import check_finetune, check_query, check_sfr
from .files import (
    ADAPT_KINDS,
    CANCEL_FILE,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    EXIT_CANCELLED,
    EXIT_DONE,
    EXIT_ERROR,
    JOB_FILE,
    JOB_KINDS,
    LOG_FILE,
    RESULT_FILE,
    SFR_METHODS,
    read_events,
)
from .ranking import (
    RANKING_CONFIG_FILE,
    RANKING_CSV,
    RANKING_FILE,
    read_query_round,
    read_ranking_file,
    write_ranking_file,
)
from .result import (
    RESULT_CANCELLED,
    RESULT_DONE,
    RESULT_ERROR,
    RESULT_STATUSES,
    JobResult,
    read_job_result,
    write_result,
)
from .spec import JobSpec, read_job, write_job

__all__ = [
    "ADAPT_KINDS",
    "CHECKPOINT_DIR",
    "CANCEL_FILE",
    "EVENTS_FILE",
    "EXIT_CANCELLED",
    "EXIT_DONE",
    "EXIT_ERROR",
    "JOB_FILE",
    "JOB_KINDS",
    "LOG_FILE",
    "RANKING_CONFIG_FILE",
    "RANKING_CSV",
    "RANKING_CSV_COLUMNS",
    "RANKING_FILE",
    "RESULT_CANCELLED",
    "RESULT_DONE",
    "RESULT_ERROR",
    "RESULT_FILE",
    "RESULT_STATUSES",
    "JobResult",
    "JobSpec",
    "RankingEntry",
    "RankingFile",
    "RoundPlan",
    "SFR_METHODS",
    "check_finetune",
    "check_query",
    "check_sfr",
    "read_events",
    "read_job",
    "read_job_result",
    "read_query_round",
    "read_ranking_file",
    "write_job",
    "write_ranking_file",
    "write_result",
]
