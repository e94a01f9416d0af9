"""The one progress channel: typed events with phase, step, total, message and metrics, and one progress model for a
whole job.

Long operations take a ``progress`` callback receiving :class:`Event` records. A callback asks to cancel by raising
:class:`ASSFTActive.errors.CancelledError`; the operation lets it propagate and leaves no partial output behind.
The worker turns the same records into JSON lines.

:class:`JobProgress` turns the events of one job (a ``rank``, ``adapt`` or ``sfr`` job, or a command-line run)
into one :class:`ProgressState`: an overall fraction that only moves forward, a time-left estimate, and a final
state in words (done / failed / cancelled). Phases are weighted by their step counts times their cost per step,
timed in the job itself (priors in :data:`PHASE_COST_S` until then), so the fraction tracks time rather than
restarting at every phase. The command-line bar, the Slicer panel and the
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
        return {
            "event": self.event,
            "phase": self.phase,
            "step": self.step,
            "total": self.total,
            "message": self.message,
            "metrics": metrics,
            "time": self.time,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Event:
        data = json.loads(line)
        return cls(
            event=data["event"],
            phase=data.get("phase", ""),
            step=int(data.get("step", 0)),
            total=int(data.get("total", 0)),
            message=data.get("message", ""),
            metrics=dict(data.get("metrics") or {}),
            time=float(data.get("time", 0.0)),
        )


ProgressCallback = Callable[[Event], None]


def emit(progress: Optional[ProgressCallback], event: str, **kwargs: Any) -> None:
    """Send an event to ``progress`` if there is one."""
    if progress is not None:
        progress(Event(event=event, **kwargs))


# ---------------------------------------------------------------------------------------------- one job's progress

#: Prior seconds one unit (one step of the phase's ``step / total``) costs, until the phase's own steps have been
#: timed in this job (:class:`JobProgress` then uses the measured cost). Measured on the shipped sample on 2 CPU
#: cores (hippocampus volumes, the embedded U-Net): the worker's start (Python, torch and MONAI imports) 9 s;
#: ``load`` 1.07 s per step (reading a labelled volume, then comparing its label with the model's prediction; the
#: model's own loading falls in the first step); scoring one labelled volume 0.20 s; one optimiser step of the 3D
#: model 1.2 s; predicting or ranking one pool volume 0.25 s; committing a model version 1 s. SFR's SAM steps
#: (``sfr_finetune``, one optimiser step of SAM on a stitched canvas) 0.5 s and its pseudo-labels 0.4 s per pool
#: volume are estimates: only their ratio to the other phases matters before the first SAM step is timed, and a
#: faster machine scales all of them alike (the phases not yet run are scaled by how much faster the timed ones
#: ran than their priors).
PHASE_COST_S: Mapping[str, float] = {
    "start": 9.0,
    "load": 1.07,
    "evaluate": 0.2,
    "train": 1.2,
    "sfr_pseudo_labels": 0.4,
    "sfr_finetune": 0.5,
    "predict": 0.25,
    "rank": 0.25,
    "commit": 1.0,
}
#: Phases that run inside another one's step count (an adapt job's cross-validation scoring and the
#: pseudo-labelling rounds run between training steps, whose ``total`` already spans every fold and stage): they
#: only update the message; their time counts as time of the phase they run in (slower training).
INNER_PHASES = frozenset({"validate", "pseudo", "resume"})
#: Cost of a phase missing from :data:`PHASE_COST_S`, per unit.
DEFAULT_PHASE_COST_S = 0.5
#: A phase's cost per unit is measured once this many of its units have been timed.
MEASURE_FROM_UNITS = 3

#: The phases of each job kind in the order they run, with the units expected before their first event
#: (``None``: the number of pool volumes; the train phase's units come with its first event, or from
#: :func:`job_units`). Phases of :data:`INNER_PHASES` are not listed: they run inside ``train``.
JOB_PHASES: Mapping[str, Tuple[Tuple[str, Optional[int]], ...]] = {
    "rank": (("start", 1), ("rank", None)),
    "adapt": (
        ("start", 1),
        ("load", None),
        ("evaluate", 1),
        ("train", 100),
        ("predict", None),
        ("commit", 1),
        ("rank", None),
    ),
    "sfr": (
        ("start", 1),
        ("load", None),
        ("sfr_finetune", 6000),
        ("sfr_pseudo_labels", None),
        ("train", 6000),
        ("predict", None),
        ("commit", 1),
        ("rank", None),
    ),
    "evaluate": (("evaluate", None),),
}
#: Phases of a job kind that run again and again in turn (SFR: SAM fine-tuning, SAM's pseudo-labels and the 3D
#: re-training, once per cross-validation fold and once for the final run; SFR+ fine-tunes SAM twice per pass):
#: starting one of them does not complete the others, and each new pass (its step counting from the start again)
#: adds to the units done.
JOB_LOOPS: Mapping[str, frozenset] = {"sfr": frozenset({"sfr_finetune", "sfr_pseudo_labels", "train"})}


def sfr_units(
    volumes: int, labelled: int, sam_iterations: int, retrain_iterations: int, folds: int, plus: bool = False
) -> Dict[str, float]:
    """The units of a whole ``sfr`` job per phase: every pass (``folds`` cross-validation folds, then the final run)
    fine-tunes SAM (twice for SFR+), pseudo-labels the unlabelled volumes with it (twice for SFR+) and re-trains the
    3D model.

    Args:
        volumes: the job's volumes (labelled and unlabelled).
        labelled: the labelled volumes among them.
        sam_iterations: SAM steps per fine-tuning (``SfrConfig.sam.iterations``).
        retrain_iterations: re-training steps per pass (``SfrConfig.retrain.iterations``).
        folds: cross-validation folds (0 without the guard).
        plus: SFR+.
    """
    passes = max(int(folds), 0) + 1
    sam_runs = passes * (2 if plus else 1)
    pool = max(int(volumes) - int(labelled), 1)
    return {
        "load": float(max(int(labelled), 1) * 2),
        "sfr_finetune": float(sam_runs * int(sam_iterations)),
        "sfr_pseudo_labels": float(sam_runs * pool),
        "train": float(passes * int(retrain_iterations)),
        "predict": float(max(int(volumes), 1)),
        "rank": float(max(int(volumes), 1)),
    }


def job_units(job) -> Dict[str, float]:
    """The planned units per phase of a job (a :class:`~ASSFTActive.jobs.JobSpec`) where its settings give them
    before the worker's first event: an ``sfr`` job's SAM steps, pseudo-labels and re-training steps over all its
    passes (:func:`sfr_units`). Empty for other kinds (their events carry whole-job totals); settings that cannot
    be read also give an empty plan (the worker reports them)."""
    if getattr(job, "kind", "") != "sfr":
        return {}
    try:
        config = job.sfr_config()
    except Exception:  # the worker refuses bad settings with the message; the bar then falls back on its priors
        return {}
    from .finetune.guard import count_subjects

    return sfr_config_units(config, len(job.images), len(job.labels), count_subjects(list(job.labels), job.subjects))


def sfr_config_units(config, volumes: int, labelled: int, subjects: Optional[int] = None) -> Dict[str, float]:
    """:func:`sfr_units` of an :class:`~ASSFTActive.sfr.config.SfrConfig` on ``volumes`` volumes of which
    ``labelled`` are labelled, from ``subjects`` subjects (default: one each). The guard's folds as
    ``finetune.adapt`` counts them: ``validation.folds`` at most, one per subject, none without the guard or with
    fewer than two subjects."""
    validation = config.validation
    subjects = labelled if subjects is None else subjects
    folds = min(validation.folds, subjects) if validation.guard and subjects >= 2 else 0
    return sfr_units(
        volumes,
        labelled,
        config.sam.iterations,
        config.retrain.iterations,
        folds,
        plus=getattr(config.method, "value", config.method) == "sfr_plus",
    )


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

    Each phase of the job kind (:data:`JOB_PHASES`) has units (the whole job's: ``units`` from :func:`job_units`
    where the settings give them, else its events' ``total``, and before its first event a prior from the job's
    size) and a cost per unit: the phase's own seconds per unit as timed in this job once
    :data:`MEASURE_FROM_UNITS` of its units ran, before that its prior (:data:`PHASE_COST_S`) scaled by how fast
    the phases timed so far ran against their priors. The fraction is the cost of the units done over the cost of
    all units; the time left is the cost of the units still to do. A phase counts as complete once a later phase
    of the kind has started (except among the phases of one loop, :data:`JOB_LOOPS`), a phase that starts over
    (``load`` reads the labels, then compares them with the prediction; SFR's SAM steps in every pass) adds its
    units again, and the fraction never goes back (an estimate that grows only holds the bar still). Phases not
    listed for the kind (:data:`INNER_PHASES` among them) only update the message; their time counts as time of
    the phase they run in.

    Args:
        kind: ``rank``, ``adapt``, ``sfr``, ``evaluate``, or any name (then every phase seen is added in order).
        volumes: the pool's size (the units of the per-volume phases before their first event).
        clock: seconds, monotonic (tests pass their own).
        units: planned units of the whole job per phase (:func:`job_units`); events never make them smaller.
    """

    #: Without a timed phase, the time left is estimated from this fraction on (earlier it is mostly start-up).
    ESTIMATE_FROM = 0.03

    def __init__(
        self,
        kind: str = "",
        volumes: int = 1,
        clock: Callable[[], float] = time.monotonic,
        units: Optional[Mapping[str, float]] = None,
    ):
        self.kind = kind
        self.clock = clock
        self._start = clock()
        self._lastTime = self._start
        self._order: List[str] = []
        self._units: Dict[str, float] = {}
        self._done: Dict[str, float] = {}
        self._completed: Dict[str, float] = {}  # units of earlier passes of a phase that started over
        self._last: Dict[str, Tuple[int, int]] = {}
        self._seconds: Dict[str, float] = {}  # time spent in each phase (its inner phases included)
        self._timedUnits: Dict[str, float] = {}  # units done while that time ran
        self._planned = {phase: float(n) for phase, n in (units or {}).items()}
        self._loop = JOB_LOOPS.get(kind, frozenset())
        for phase, prior in JOB_PHASES.get(kind, ()):
            self._add(phase, self._planned.get(phase, float(volumes if prior is None else prior)))
        self._adaptive = kind not in JOB_PHASES
        self._reached = -1
        self._fraction = 0.0
        self._state = ProgressState(kind=kind, status=RUNNING, fraction=0.0, phase="start")

    def _add(self, phase: str, units: float) -> None:
        self._order.append(phase)
        self._units[phase] = max(units, 1.0)
        self._done[phase] = 0.0
        self._completed[phase] = 0.0
        self._seconds[phase] = 0.0
        self._timedUnits[phase] = 0.0

    @property
    def state(self) -> ProgressState:
        return self._state

    def _prior(self, phase: str) -> float:
        return PHASE_COST_S.get(phase, DEFAULT_PHASE_COST_S)

    def _speed(self) -> float:
        """How the timed phases ran against their priors (measured seconds over prior seconds; 1 when none is)."""
        timed = [p for p in self._order if self._timedUnits[p] >= MEASURE_FROM_UNITS]
        prior = sum(self._prior(p) * self._timedUnits[p] for p in timed)
        return sum(self._seconds[p] for p in timed) / prior if prior > 0 else 1.0

    def _costs(self) -> Dict[str, float]:
        """Seconds per unit of every phase: measured where timed, else the prior scaled by :meth:`_speed`."""
        speed = self._speed()
        return {
            p: (
                self._seconds[p] / self._timedUnits[p]
                if self._timedUnits[p] >= MEASURE_FROM_UNITS
                else self._prior(p) * speed
            )
            for p in self._order
        }

    def _startsOver(self, phase: str, index: int, step: int) -> bool:
        lastStep = self._last.get(phase, (0, 0))[0]
        return step < lastStep and (index == self._reached or phase in self._loop)

    def update(self, event: Event) -> ProgressState:
        """Take one event; returns the new state (an ended job ignores further events)."""
        if self._state.ended:
            return self._state
        now = self.clock()
        phase = event.phase
        if (
            phase
            and phase not in self._units
            and phase not in INNER_PHASES
            and self._adaptive
            and event.event in ("progress", "phase")
        ):
            self._add(phase, float(event.total or 1))
        timed = phase if phase in self._units else (self._order[self._reached] if self._reached >= 0 else "")
        doneBefore = self._done.get(timed, 0.0)
        if phase in self._units:
            index = self._order.index(phase)
            if index > self._reached:
                for earlier in self._order[:index]:
                    if not (phase in self._loop and earlier in self._loop):
                        self._done[earlier] = self._units[earlier]
                self._reached = index
            if event.total > 0 and event.event in ("progress", "phase", "metric"):
                lastStep, lastTotal = self._last.get(phase, (0, 0))
                if self._startsOver(phase, index, event.step):  # another round, fold or pass
                    self._completed[phase] += lastStep if phase in self._loop else lastTotal
                self._last[phase] = (event.step, event.total)
                seen = self._completed[phase] + event.total
                if phase in self._planned:
                    self._units[phase] = max(self._units[phase], seen, 1.0)
                else:
                    self._units[phase] = max(self._units[phase] if event.event != "progress" else 0.0, seen, 1.0)
                self._done[phase] = max(self._done[phase], self._completed[phase] + min(event.step, event.total))
        if timed:
            self._seconds[timed] += max(now - self._lastTime, 0.0)
            self._timedUnits[timed] += max(self._done[timed] - doneBefore, 0.0)
        self._lastTime = now
        costs = self._costs()
        total = sum(costs[p] * self._units[p] for p in self._order)
        left = sum(costs[p] * max(self._units[p] - self._done[p], 0.0) for p in self._order)
        if total > 0:
            self._fraction = max(self._fraction, min(1.0 - left / total, 0.99))
        elapsed = now - self._start
        measured = any(self._timedUnits[p] >= MEASURE_FROM_UNITS for p in self._order)
        remaining = None
        if measured or (self._fraction >= self.ESTIMATE_FROM and elapsed > 0):
            remaining = left if measured else elapsed * (1.0 - self._fraction) / self._fraction
        self._state = ProgressState(
            kind=self.kind,
            status=RUNNING,
            fraction=self._fraction,
            phase=phase or self._state.phase,
            step=event.step if event.total else 0,
            total=event.total,
            message=event.message or self._state.message,
            elapsed_s=elapsed,
            remaining_s=remaining,
        )
        return self._state

    def finish(self, status: str, message: str = "") -> ProgressState:
        """End the job: ``done`` fills the bar; ``failed`` and ``cancelled`` keep the fraction reached (a failed
        job never shows a full bar). Returns the final state; later calls return it unchanged."""
        if status not in PROGRESS_STATUSES or status == RUNNING:
            raise ValueError(f"a job ends done, failed or cancelled, got {status!r}")
        if self._state.ended:
            return self._state
        self._state = ProgressState(
            kind=self.kind,
            status=status,
            fraction=1.0 if status == DONE else self._fraction,
            phase=self._state.phase,
            message=message or (self._state.message if status == DONE else ""),
            elapsed_s=self.clock() - self._start,
            remaining_s=None,
        )
        return self._state
