"""The worker's JSON-line events: parse them from a stream or from ``events.jsonl``; plain-text summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from .records import JobEvent

EVENT_KINDS = ("progress", "metric", "phase", "warning", "error", "done")
#: ``JobEvent.event`` of a stdout/stderr line that is not a JSON event (shown in the log as it is).
LOG_EVENT = "log"


def parseEventLine(line: str) -> Optional[JobEvent]:
    """One output line -> :class:`JobEvent`; None for a blank line; a ``log`` event for any non-event text."""
    text = line.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return JobEvent(event=LOG_EVENT, message=text)
    if not isinstance(data, dict) or data.get("event") not in EVENT_KINDS:
        return JobEvent(event=LOG_EVENT, message=text)
    metrics = data.get("metrics") or {}
    try:
        step = int(data.get("step") or 0)
        total = int(data.get("total") or 0)
        time = float(data.get("time") or 0.0)
    except (TypeError, ValueError):
        return JobEvent(event=LOG_EVENT, message=text)
    return JobEvent(
        event=str(data["event"]),
        phase=str(data.get("phase") or ""),
        step=step,
        total=total,
        message=str(data.get("message") or ""),
        metrics=dict(metrics) if isinstance(metrics, dict) else {},
        time=time,
    )


class EventLineBuffer:
    """Turns chunks of process output (which may end mid-line) into events, one per complete line."""

    def __init__(self):
        self._pending = ""

    def feed(self, chunk: str) -> List[JobEvent]:
        """Add output text; return the events of the lines it completed."""
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        return [event for event in (parseEventLine(line) for line in lines) if event is not None]

    def flush(self) -> List[JobEvent]:
        """Events of the last line when the output ended without a newline."""
        rest, self._pending = self._pending, ""
        event = parseEventLine(rest)
        return [event] if event is not None else []


def readEvents(path) -> List[JobEvent]:
    """All events of an ``events.jsonl`` file (or of a job folder); an empty list when the file is missing."""
    path = Path(path)
    if path.is_dir():
        path = path / "events.jsonl"
    if not path.is_file():
        return []
    events = (parseEventLine(line) for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [event for event in events if event is not None]


def formatEvent(event: JobEvent) -> str:
    """A plain-text log line for an event (no markup; the widget decides how to show it)."""
    if event.event == LOG_EVENT:
        return event.message
    parts = [f"[{event.phase}]" if event.phase else f"[{event.event}]"]
    if event.event in ("warning", "error"):
        parts.append(f"{event.event.upper()}:")
    if event.total:
        parts.append(f"{event.step}/{event.total}")
    if event.message:
        parts.append(event.message)
    if event.metrics:
        parts.append(", ".join(f"{key}={_formatValue(value)}" for key, value in sorted(event.metrics.items())))
    return " ".join(parts)


def _formatValue(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
