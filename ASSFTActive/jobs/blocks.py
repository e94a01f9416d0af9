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

__all__ = ["check_finetune", "check_query", "check_sfr", "unit_config"]


def check_query(data: Mapping[str, Any]) -> None:
    """Refuse bad ``query`` settings (:meth:`QueryConfig.from_dict`'s checks).

    Raises:
        ValueError: ``query: <the setting and what is wrong>``.
    """
    from ..query.config import QueryConfig

    try:
        settings = dict(data)
        units = settings.pop("units", None)
        QueryConfig.from_dict(settings)
        if units is not None:  # UnitConfig's module loads numpy: only a slice / region job pays for it
            unit_config(units)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"query: {exc}") from None


def unit_config(data: Any):
    """The :class:`~ASSFTActive.query.units.UnitConfig` of a job's ``query.units`` block (``None`` or absent: whole
    volumes), e.g. ``{"unit": "slice", "axis": 2}`` (the settings of ``assft rank --unit``; ``region_size`` as a list
    of three whole numbers). Unlike the other blocks this one imports numpy (the units module's).

    Raises:
        ValueError: ``units`` is not an object of UnitConfig settings, or a value is invalid.
    """
    from dataclasses import fields

    from ..query.units import UnitConfig

    if data is None:
        return UnitConfig()
    if not isinstance(data, Mapping):
        raise ValueError(f"units must be a JSON object of unit settings, got {type(data).__name__}")
    known = {f.name for f in fields(UnitConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"units has settings that do not exist: {unknown} (known: {sorted(known)})")
    settings = dict(data)
    if "region_size" in settings and isinstance(settings["region_size"], list):
        settings["region_size"] = tuple(settings["region_size"])
    return UnitConfig(**settings)


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
