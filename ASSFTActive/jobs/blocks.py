"""One validator per settings block of a job (``query``, ``finetune``, ``sfr``), standard library only.

:class:`~ASSFTActive.jobs.JobSpec` calls all three when it is built, so a bad setting is refused both when the Slicer
module or the browser writes ``job.json`` and when the worker reads it, with the setting named
(``query: QueryConfig.kd_temperature ...``, ``sfr: ... SfrFinetuneConfig.iterations ...``), before a process is
started or a volume is read. Each validator is its block's own settings class, so the rules live in one place:
:class:`~ASSFTActive.query.config.QueryConfig`, :class:`~ASSFTActive.finetune.config.FinetuneConfig` and
:class:`~ASSFTActive.sfr.config.SfrConfig` (all three torch- and numpy-free).
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["check_finetune", "check_query", "check_sfr"]


def check_query(data: Mapping[str, Any]) -> None:
    """Refuse bad ``query`` settings (:meth:`QueryConfig.from_dict`'s checks).

    Raises:
        ValueError: ``query: <the setting and what is wrong>``.
    """
    from ..query.config import QueryConfig

    try:
        QueryConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"query: {exc}") from None


def check_finetune(data: Mapping[str, Any]) -> None:
    """Refuse bad ``finetune`` settings (:meth:`FinetuneConfig.from_dict`'s checks).

    Raises:
        ValueError: ``finetune: <the setting and what is wrong>``.
    """
    from ..finetune.config import FinetuneConfig

    try:
        FinetuneConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"finetune: {exc}") from None


def check_sfr(data: Mapping[str, Any]) -> None:
    """Refuse bad ``sfr`` settings (:meth:`ASSFTActive.sfr.config.SfrConfig.from_dict`'s checks: every part, with the
    ranges that keep a run finite).

    Raises:
        ValueError: ``sfr: <the setting and what is wrong>``.
    """
    from ..errors import InputError
    from ..sfr.config import SfrConfig

    if not isinstance(data, Mapping):
        raise ValueError(f"sfr must be a JSON object of settings, got {type(data).__name__}.")
    try:
        SfrConfig.from_dict(data)
    except (InputError, TypeError, ValueError) as exc:
        raise ValueError(f"sfr: {exc}") from None
