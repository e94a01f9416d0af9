"""The one progress channel: typed events with phase, step, total, message and metrics.

Long operations take a ``progress`` callback receiving :class:`Event` records. A callback asks to cancel by raising
:class:`ASSFTActive.errors.CancelledError`; the operation lets it propagate and leaves no partial output behind.
The worker turns the same records into JSON lines.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional

EVENT_KINDS = ("progress", "metric", "phase", "warning", "error", "done")


@dataclass(frozen=True)
class Event:
    """One progress event (see DESIGN.md §4 for the JSON form)."""

    event: str
    phase: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise ValueError(f"event kind {self.event!r} not one of {EVENT_KINDS}")

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form; a metric that is not a finite number (a Dice that was not scored) becomes ``null``."""
        metrics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.metrics.items()}
        return {"event": self.event, "phase": self.phase, "step": self.step, "total": self.total,
                "message": self.message, "metrics": metrics, "time": self.time}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Event:
        data = json.loads(line)
        return cls(event=data["event"], phase=data.get("phase", ""), step=int(data.get("step", 0)),
                   total=int(data.get("total", 0)), message=data.get("message", ""),
                   metrics=dict(data.get("metrics") or {}), time=float(data.get("time", 0.0)))


ProgressCallback = Callable[[Event], None]


def emit(progress: Optional[ProgressCallback], event: str, **kwargs: Any) -> None:
    """Send an event to ``progress`` if there is one."""
    if progress is not None:
        progress(Event(event=event, **kwargs))
