"""A ranking folder's files: ``ranking.json`` (the record :class:`~ASSFTActive.query.ranking_file.RankingFile`),
``ranking.csv`` and the ranking's settings ``config.json`` with its ``query_round``
(:class:`~ASSFTActive.query.rounds.RoundPlan`). The records live with the query; reading and writing them as files
of a job or of ``assft rank --out`` is the protocol's part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..errors import JobError
from ..query.ranking_file import RankingFile
from ..query.rounds import RoundPlan
from .files import PathLike, read_json_if_present, write_text_atomic

__all__ = [
    "RANKING_CONFIG_FILE",
    "RANKING_CSV",
    "RANKING_FILE",
    "read_query_round",
    "read_ranking_file",
    "write_ranking_file",
]

RANKING_FILE = "ranking.json"
RANKING_CSV = "ranking.csv"


def write_ranking_file(path: PathLike, ranking: RankingFile) -> Path:
    """Write ``ranking`` as JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(Path(path), json.dumps(ranking.to_dict(), indent=2, allow_nan=False) + "\n")


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


def read_query_round(ranking_dir: PathLike) -> Optional[RoundPlan]:
    """The :class:`RoundPlan` of the ranking in ``ranking_dir`` (``query_round`` of its ``config.json``); ``None``
    when there is no ``config.json`` or it has no ``query_round`` (a ranking written before multi-round queries).

    Raises:
        JobError: ``config.json`` is not readable JSON, or its ``query_round`` is malformed (the message names the
            file).
    """
    path = Path(ranking_dir) / RANKING_CONFIG_FILE
    config = read_json_if_present(path, "the ranking's settings")
    plan = config.get("query_round") if isinstance(config, dict) else None
    if plan is None:
        return None
    try:
        return RoundPlan.from_dict(plan)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {exc}.") from exc
