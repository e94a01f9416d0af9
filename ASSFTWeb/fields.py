"""What a browser may change on the server, checked in one place before it reaches the page's state.

Every field the page lets the user edit has a validator here (a whole number in range, a number in [0, 1], a choice,
a yes/no, a bounded text); a value that fails is refused with a message naming the field and what it accepts, and the
server keeps the value in use (nothing is clamped or guessed). The server's own fields (the ranking rows, the status,
the folders shown, ...) cannot be set from a browser at all. :class:`StateGuard` applies both rules to each state
update a browser sends (``ASSFTWeb.security`` puts it in front of trame's ``trame.state.update``); keys that are not
ASSFT's (trame's and trame-slicer's own widgets) pass unchanged.

No trame import: the rules are plain functions, tested alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

#: Longest text a browser may put into a text field (a model path or store folder).
MAX_TEXT_LENGTH = 4096


class FieldError(ValueError):
    """A value a browser sent for a field was refused; the message says which field and what it accepts."""


Bound = Union[int, Callable[[], int]]


def _bound(value: Bound) -> int:
    return int(value() if callable(value) else value)


def whole_number(label: str, low: Bound, high: Bound) -> Callable[[Any], int]:
    """A validator of a whole number in ``[low, high]`` (a number field may send ``3``, ``3.0`` or ``"3"``).

    ``high`` may be a function (e.g. the number of volumes in the pool, read when the value arrives).
    """

    def check(value: Any) -> int:
        number = None
        if isinstance(value, str):
            text = value.strip()
            number = int(text) if text.lstrip("+-").isdigit() and len(text) <= 20 else None
        elif isinstance(value, float):
            number = int(value) if math.isfinite(value) and value.is_integer() else None
        elif isinstance(value, int) and not isinstance(value, bool):
            number = int(value)
        lo, hi = _bound(low), _bound(high)
        if number is None or not lo <= number <= hi:
            raise FieldError(f"{label} must be a whole number from {lo} to {hi}, got {_shown(value)}.")
        return number

    return check


def number_in(label: str, low: float, high: float) -> Callable[[Any], float]:
    """A validator of a finite number in ``[low, high]``."""

    def check(value: Any) -> float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip()) if len(value) <= 40 else None
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or not low <= number <= high:
            raise FieldError(f"{label} must be a number from {low:g} to {high:g}, got {_shown(value)}.")
        return number

    return check


def boolean(label: str) -> Callable[[Any], bool]:
    """A validator of a yes/no value (``true`` / ``false`` only; no truthy strings or numbers)."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise FieldError(f"{label} must be true or false, got {_shown(value)}.")
        return value

    return check


def choice(label: str, values: Iterable[str]) -> Callable[[Any], str]:
    """A validator of one of ``values``."""
    allowed = tuple(values)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise FieldError(f"{label} must be one of {', '.join(allowed)}, got {_shown(value)}.")
        return value

    return check


def text(label: str, max_length: int = MAX_TEXT_LENGTH) -> Callable[[Any], str]:
    """A validator of a text of at most ``max_length`` characters, without control characters."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise FieldError(f"{label} must be text, got {_shown(value)}.")
        if len(value) > max_length:
            raise FieldError(f"{label} must be at most {max_length} characters, got {len(value)}.")
        if any(ord(c) < 32 for c in value):
            raise FieldError(f"{label} must not contain control characters.")
        return value

    return check


def _shown(value: Any) -> str:
    """``value`` as a message shows it: short, whatever a browser sent."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


@dataclass(frozen=True)
class GuardResult:
    """What :meth:`StateGuard.check` made of one update: the accepted values (parsed) and the refusals.

    Attributes:
        accepted: ``{key: value}`` to put into the state (validated fields parsed, other keys as sent).
        refused: ``{key: message}`` for each refused key.
        fixed: the fields that had a refused value before and now got a good one (their message can go).
    """

    accepted: Dict[str, Any]
    refused: Dict[str, str]
    fixed: Tuple[str, ...]


class StateGuard:
    """The rules for state updates sent by a browser.

    Args:
        fields: ``{key: validator}`` of the fields a browser may edit; a validator returns the parsed value or raises
            :class:`FieldError`.
        server_owned: keys only the server writes; a browser's value for one is refused.

    Attributes:
        errors: ``{key: message}`` of the fields whose last value from a browser was refused (a field shows a value
            the server does not use until it is corrected; Rank and Adapt refuse to start meanwhile).
    """

    def __init__(self, fields: Mapping[str, Callable[[Any], Any]], server_owned: Iterable[str]):
        self.fields = dict(fields)
        self.server_owned = frozenset(server_owned) - frozenset(self.fields)
        self.errors: Dict[str, str] = {}

    def check(self, changes: Any) -> GuardResult:
        """Check the change list of one ``trame.state.update`` (``[{"key": ..., "value": ...}, ...]``).

        Raises:
            FieldError: the update is not such a list (nothing of it is applied).
        """
        if not isinstance(changes, list) or not all(
            isinstance(c, dict) and isinstance(c.get("key"), str) for c in changes
        ):
            raise FieldError("A state update must be a list of {key, value} entries; this one was ignored.")
        accepted: Dict[str, Any] = {}
        refused: Dict[str, str] = {}
        fixed: List[str] = []
        for change in changes:
            key, value = change["key"], change.get("value")
            if key in self.server_owned:
                refused[key] = f"The page cannot set '{key}': only the server writes it."
                continue
            validator = self.fields.get(key)
            if validator is None:
                accepted[key] = value
                continue
            try:
                accepted[key] = validator(value)
            except FieldError as error:
                refused[key] = self.errors[key] = str(error)
                accepted.pop(key, None)
                continue
            if self.errors.pop(key, None) is not None:
                fixed.append(key)
        return GuardResult(accepted=accepted, refused=refused, fixed=tuple(fixed))

    def pending(self) -> Optional[str]:
        """The refusals still shown in the page's fields, as one message (None when every field is good)."""
        if not self.errors:
            return None
        return "Correct the page's fields first: " + " ".join(self.errors.values())
