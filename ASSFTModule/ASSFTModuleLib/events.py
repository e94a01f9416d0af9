"""The worker's output as the GUI reads it: engine events (``ASSFTActive.progress.Event``) line by line from a
stream that also carries plain text (stderr is merged into stdout), and their plain-text form for the log.

The JSON form of an event and ``events.jsonl`` belong to the engine (:meth:`Event.from_json`,
:func:`ASSFTActive.jobs.read_events`); this file only adds what a live, merged output stream needs.
"""

from __future__ import annotations

from typing import List, Optional, Union

from ASSFTActive.progress import Event

from .records import OutputLine

#: One line of worker output: an engine event, or any other text as it was printed.
WorkerOutput = Union[Event, OutputLine]


def parseEventLine(line: str) -> Optional[WorkerOutput]:
    """One output line -> an :class:`Event`; an :class:`OutputLine` for any other text; None for a blank line."""
    text = line.strip()
    if not text:
        return None
    try:
        return Event.from_json(text)
    except (ValueError, KeyError, TypeError):  # not JSON, not an object, or not an event of the protocol
        return OutputLine(text)


class EventLineBuffer:
    """Turns chunks of process output (which may end mid-line) into items, one per complete line."""

    def __init__(self):
        self._pending = ""

    def feed(self, chunk: str) -> List[WorkerOutput]:
        """Add output text; return the items of the lines it completed."""
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        return [item for item in (parseEventLine(line) for line in lines) if item is not None]

    def flush(self) -> List[WorkerOutput]:
        """The item of the last line when the output ended without a newline."""
        rest, self._pending = self._pending, ""
        item = parseEventLine(rest)
        return [item] if item is not None else []


def eventFraction(event: Event) -> Optional[float]:
    """Progress within the event's phase in [0, 1], or None when the event carries no step/total."""
    if event.total and event.total > 0:
        return min(max(event.step / event.total, 0.0), 1.0)
    return None


def formatEvent(item: WorkerOutput) -> str:
    """A plain-text log line (no markup; the widget decides how to show it)."""
    if isinstance(item, OutputLine):
        return item.text
    parts = [f"[{item.phase}]" if item.phase else f"[{item.event}]"]
    if item.event in ("warning", "error"):
        parts.append(f"{item.event.upper()}:")
    if item.total:
        parts.append(f"{item.step}/{item.total}")
    if item.message:
        parts.append(item.message)
    if item.metrics:
        parts.append(", ".join(f"{key}={_formatValue(value)}" for key, value in sorted(item.metrics.items())))
    return " ".join(parts)


def _formatValue(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
