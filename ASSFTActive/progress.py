"""The one progress channel: typed events with phase, step, total, message and metrics, and one progress model for a
whole job.

Long operations take a ``progress`` callback receiving :class:`Event` records. A callback asks to cancel by raising
:class:`ASSFTActive.errors.CancelledError`; the operation lets it propagate and leaves no partial output behind.
The worker turns the same records into JSON lines.

:class:`JobProgress` turns the events of one job (a ``rank``, ``adapt`` or ``sfr`` job, or a command-line run)
into one :class:`ProgressState`: an overall fraction that only moves forward, a time-left estimate, and a final
state in words (done / failed / cancelled). Phases are weighted by their measured cost (:data:`PHASE_COST_S`), so
the fraction tracks time rather than restarting at every phase. The command-line bar, the Slicer panel and the
browser all read it. Pure Python (no torch): the GUIs import it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

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


# ---------------------------------------------------------------------------------------------- one job's progress

#: Seconds one unit (one step of the phase's ``step / total``) costs, measured on the shipped sample on 2 CPU cores
#: (hippocampus volumes, the embedded U-Net): the worker's start (Python, torch and MONAI imports) 9 s; ``load``
#: 1.07 s per step (reading a labelled volume, then comparing its label with the model's prediction; the model's
#: own loading falls in the first step); scoring one labelled volume 0.20 s; one optimiser step 1.2 s; predicting or
#: ranking one pool volume 0.25 s; committing a model version 1 s. Only the ratios matter for the fraction; a
#: faster machine scales all of them alike.
PHASE_COST_S: Mapping[str, float] = {
    "start": 9.0, "load": 1.07, "evaluate": 0.2, "train": 1.2, "sfr_pseudo_labels": 0.4, "sfr_finetune": 1.2,
    "predict": 0.25, "rank": 0.25, "commit": 1.0,
}
#: Phases that run inside another one's step count (an adapt job's cross-validation scoring and the
#: pseudo-labelling rounds run between training steps, whose ``total`` already spans every fold and stage): they
#: only update the message; their time shows in the time left as slower training.
INNER_PHASES = frozenset({"validate", "pseudo", "resume"})
#: Cost of a phase missing from :data:`PHASE_COST_S`, per unit.
DEFAULT_PHASE_COST_S = 0.5

#: The phases of each job kind in the order they run, with the units expected before their first event
#: (``None``: the number of pool volumes; the train phase's units come with its first event). Phases of
#: :data:`INNER_PHASES` are not listed: they run inside ``train``.
JOB_PHASES: Mapping[str, Tuple[Tuple[str, Optional[int]], ...]] = {
    "rank": (("start", 1), ("rank", None)),
    "adapt": (("start", 1), ("load", None), ("evaluate", 1), ("train", 100), ("predict", None), ("commit", 1),
              ("rank", None)),
    "sfr": (("start", 1), ("load", None), ("sfr_pseudo_labels", None), ("sfr_finetune", 100), ("train", 100),
            ("predict", None), ("commit", 1), ("rank", None)),
    "evaluate": (("evaluate", None),),
}

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
PROGRESS_STATUSES = (RUNNING, DONE, FAILED, CANCELLED)
#: The colour a UI gives each status (a name every toolkit knows; the bar's fill).
STATUS_COLOURS: Mapping[str, str] = {RUNNING: "steelblue", DONE: "green", FAILED: "red", CANCELLED: "grey"}


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


@dataclass(frozen=True)
class ProgressState:
    """Where one job stands.

    Attributes:
        kind: the job kind (``rank``, ``adapt``, ``sfr``) or the command, for the text.
        status: ``running``, ``done``, ``failed`` or ``cancelled``.
        fraction: the whole job's progress in [0, 1]; never decreases; 1 only for ``done``.
        phase: the phase of the latest event.
        step, total: the latest event's step within its phase (0 when it had none).
        message: the latest event's message (or the failure's).
        elapsed_s: seconds since the job started.
        remaining_s: estimated seconds left; None until there is enough progress to estimate it, and when ended.
    """

    kind: str
    status: str
    fraction: float
    phase: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    elapsed_s: float = 0.0
    remaining_s: Optional[float] = None

    @property
    def ended(self) -> bool:
        return self.status != RUNNING

    @property
    def colour(self) -> str:
        """:data:`STATUS_COLOURS` of the status."""
        return STATUS_COLOURS[self.status]

    def describe(self) -> str:
        """One plain line: ``Adapt: train step 120/600, 43 %, about 3 min 05 s left``, ``Adapt done in 2 min 10 s.``,
        ``Adapt failed at 43 % after 1 min 02 s: <message>``, ``Adapt cancelled at 43 %.``"""
        name = (self.kind or "job").capitalize()
        percent = f"{int(self.fraction * 100)} %"
        if self.status == DONE:
            return f"{name} done in {format_duration(self.elapsed_s)}."
        if self.status == CANCELLED:
            return f"{name} cancelled at {percent}."
        if self.status == FAILED:
            reason = self.message or "no reason given"
            return f"{name} failed at {percent} after {format_duration(self.elapsed_s)}: {reason}"
        where = self.phase or "starting"
        if self.total:
            where += f" step {self.step}/{self.total}"
        left = f", about {format_duration(self.remaining_s)} left" if self.remaining_s is not None else ""
        return f"{name}: {where}, {percent}{left}"


class JobProgress:
    """The progress model of one job: feed it the job's events, read :attr:`state`.

    Each phase of the job kind (:data:`JOB_PHASES`) has units (its events' ``total``; before its first event a
    prior from the job's size) and a cost per unit (:data:`PHASE_COST_S`). The fraction is the cost of the units
    done over the cost of all units; a phase counts as complete once a later phase of the kind has started, a
    phase that starts over (``load`` reads the labels, then compares them with the prediction) adds its units
    again, and the fraction never goes back (an estimate that grows only holds the bar still). The time left is the
    elapsed time scaled by the cost still to do. Phases not listed for the kind (:data:`INNER_PHASES` among them)
    only update the message.

    Args:
        kind: ``rank``, ``adapt``, ``sfr``, ``evaluate``, or any name (then every phase seen is added in order).
        volumes: the pool's size (the units of the per-volume phases before their first event).
        clock: seconds, monotonic (tests pass their own).
    """

    #: The time left is estimated from this fraction on (earlier it is mostly start-up and noise).
    ESTIMATE_FROM = 0.03

    def __init__(self, kind: str = "", volumes: int = 1, clock: Callable[[], float] = time.monotonic):
        self.kind = kind
        self.clock = clock
        self._start = clock()
        self._order: List[str] = []
        self._units: Dict[str, float] = {}
        self._done: Dict[str, float] = {}
        self._completed: Dict[str, float] = {}  # units of earlier passes of a phase that started over
        self._last: Dict[str, Tuple[int, int]] = {}
        for phase, units in JOB_PHASES.get(kind, ()):
            self._add(phase, float(volumes if units is None else units))
        self._adaptive = kind not in JOB_PHASES
        self._reached = -1
        self._fraction = 0.0
        self._state = ProgressState(kind=kind, status=RUNNING, fraction=0.0, phase="start")

    def _add(self, phase: str, units: float) -> None:
        self._order.append(phase)
        self._units[phase] = max(units, 1.0)
        self._done[phase] = 0.0
        self._completed[phase] = 0.0

    @property
    def state(self) -> ProgressState:
        return self._state

    def _cost(self, phase: str) -> float:
        return PHASE_COST_S.get(phase, DEFAULT_PHASE_COST_S)

    def _computed_fraction(self) -> float:
        total = sum(self._cost(p) * self._units[p] for p in self._order)
        done = sum(self._cost(p) * min(self._done[p], self._units[p]) for p in self._order)
        return done / total if total > 0 else 0.0

    def update(self, event: Event) -> ProgressState:
        """Take one event; returns the new state (an ended job ignores further events)."""
        if self._state.ended:
            return self._state
        phase = event.phase
        if (phase and phase not in self._units and phase not in INNER_PHASES and self._adaptive
                and event.event in ("progress", "phase")):
            self._add(phase, float(event.total or 1))
        if phase in self._units:
            index = self._order.index(phase)
            if index > self._reached:
                for earlier in self._order[:index]:
                    self._done[earlier] = self._units[earlier]
                self._reached = index
            if event.total > 0 and event.event in ("progress", "phase", "metric"):
                lastStep, lastTotal = self._last.get(phase, (0, 0))
                if event.step < lastStep and index == self._reached:  # the phase started over (another round)
                    self._completed[phase] += lastTotal
                self._last[phase] = (event.step, event.total)
                self._units[phase] = max(self._units[phase] if event.event != "progress" else 0.0,
                                         self._completed[phase] + event.total, 1.0)
                self._done[phase] = max(self._done[phase], self._completed[phase] + min(event.step, event.total))
        self._fraction = max(self._fraction, min(self._computed_fraction(), 0.99))
        elapsed = self.clock() - self._start
        remaining = None
        if self._fraction >= self.ESTIMATE_FROM and elapsed > 0:
            remaining = elapsed * (1.0 - self._fraction) / self._fraction
        self._state = ProgressState(
            kind=self.kind, status=RUNNING, fraction=self._fraction, phase=phase or self._state.phase,
            step=event.step if event.total else 0, total=event.total, message=event.message or self._state.message,
            elapsed_s=elapsed, remaining_s=remaining)
        return self._state

    def finish(self, status: str, message: str = "") -> ProgressState:
        """End the job: ``done`` fills the bar; ``failed`` and ``cancelled`` keep the fraction reached (a failed
        job never shows a full bar). Returns the final state; later calls return it unchanged."""
        if status not in PROGRESS_STATUSES or status == RUNNING:
            raise ValueError(f"a job ends done, failed or cancelled, got {status!r}")
        if self._state.ended:
            return self._state
        self._state = ProgressState(
            kind=self.kind, status=status, fraction=1.0 if status == DONE else self._fraction,
            phase=self._state.phase, message=message or (self._state.message if status == DONE else ""),
            elapsed_s=self.clock() - self._start, remaining_s=None)
        return self._state
