"""Checks shared by every settings record (``QueryConfig``, ``FinetuneConfig`` and its parts).

Pure standard library, so the job protocol and the Slicer GUI can validate settings without torch or numpy. Each
check names the setting as ``<Owner>.<name>`` and says what is allowed, so a user who wrote a bad value in a JSON
settings file knows which key to fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from enum import Enum
from typing import Any, Collection, Dict, Mapping, Optional, Tuple, Type, TypeVar

__all__ = [
    "Range",
    "check_enum",
    "check_fields",
    "check_flag",
    "check_keys",
    "check_number",
    "check_record_keys",
    "check_whole",
    "optional_number",
    "optional_text",
    "plain",
]

_E = TypeVar("_E", bound=Enum)


def check_enum(enum_type: Type[_E], value: Any, owner: str, name: str) -> _E:
    """``value`` as a member of ``enum_type`` (a member or its string value)."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"{owner}.{name}={value!r} is not valid; use one of {allowed}.") from None


def check_number(
    value: Any, owner: str, name: str, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}.")
    if (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        wanted = f"{'>' if low_open else '>='} {low}" if math.isinf(high) else f"in {bracket}{low}, {high}]"
        raise ValueError(f"{owner}.{name} must be {wanted}, got {value}.")
    return float(value)


def check_whole(value: Any, owner: str, name: str, minimum: int) -> int:
    """A whole number (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be a whole number, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}.")
    return int(value)


def check_flag(value: Any, owner: str, name: str) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be true or false, got {value!r}.")
    return value


#: ``(low, high, low end open)`` of a number setting; ``high`` may be ``math.inf``.
Range = Tuple[float, float, bool]


def check_fields(
    record: Any,
    *,
    enums: Optional[Mapping[str, Type[Enum]]] = None,
    numbers: Optional[Mapping[str, Range]] = None,
    wholes: Optional[Mapping[str, int]] = None,
    flags: Collection[str] = (),
    optional: Collection[str] = (),
) -> None:
    """Check the named fields of a frozen settings dataclass in its ``__post_init__``; enums given as strings are
    stored as their member and numbers as floats.

    Args:
        record: the dataclass instance; messages name its fields ``<ClassName>.<field>``.
        enums: ``{field: enum type}``.
        numbers: ``{field: (low, high, low_open)}``; every value must be finite.
        wholes: ``{field: minimum}`` of whole-number fields.
        flags: true/false fields.
        optional: fields that may also be ``None`` (then left unchecked).

    Raises:
        ValueError: the first field that is not valid, named.
    """
    owner = type(record).__name__

    def given(name: str) -> bool:
        return not (name in optional and getattr(record, name) is None)

    for name, enum_type in (enums or {}).items():
        if given(name):
            object.__setattr__(record, name, check_enum(enum_type, getattr(record, name), owner, name))
    for name, (low, high, low_open) in (numbers or {}).items():
        if given(name):
            object.__setattr__(record, name, check_number(getattr(record, name), owner, name, low, high, low_open))
    for name, minimum in (wholes or {}).items():
        if given(name):
            check_whole(getattr(record, name), owner, name, minimum)
    for name in flags:
        if given(name):
            check_flag(getattr(record, name), owner, name)


def check_keys(cls: type, data: Any, what: str = "") -> Dict[str, Any]:
    """``data`` as a dict when it is a mapping whose keys are all fields of the dataclass ``cls``.

    Args:
        what: how the messages name these settings (default: the class name).
    """
    what = what or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} settings must be a JSON object (mapping), got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(
            f"unknown {what} setting(s) {', '.join(repr(k) for k in unknown)}; known settings are "
            f"{', '.join(sorted(known))}. Check the spelling or remove the key."
        )
    return dict(data)


def check_record_keys(data: Any, what: str, required: Collection[str], optional: Collection[str]) -> None:
    """Refuse a JSON record (``ranking.json``, ``result.json``, ...) that is not an object, has keys outside
    ``required`` and ``optional``, or lacks a ``required`` one; ``what`` names the record in the message."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = list(required) + list(optional)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; the keys are {sorted(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")


def optional_text(value: Any, what: str) -> Optional[str]:
    """A file path as a string, or ``None`` for ``None`` and ``""``."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{what} must be a file path or null, got {value!r}")
    return str(value)


def optional_number(value: Any, what: str) -> Optional[float]:
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


def plain(value: Any) -> Any:
    """JSON-ready form of a setting: enums as their strings, tuples as lists (recursively)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
