"""The background worker: ``python -m ASSFTActive.worker JOB_DIR`` (DESIGN.md §4).

Reads ``JOB_DIR/job.json`` (:mod:`ASSFTActive.jobs`), runs a ``rank``, ``adapt`` or ``sfr`` job, and reports on
stdout one JSON event per line (:meth:`ASSFTActive.progress.Event.to_json`); the same lines go to
``JOB_DIR/events.jsonl`` and a readable copy to ``JOB_DIR/log.txt``. The last line is ``done`` (exit code 0) or
``error`` (exit code 1, or 130 when cancelled, with the message ``cancelled``). Only events are written to stdout:
anything else a library prints goes to stderr.

Cancelling: SIGTERM or SIGINT raises :class:`~ASSFTActive.errors.CancelledError` in the running computation (at
the latest at the next progress event), so the job ends within seconds and leaves the model store untouched. Once
the new model version starts being committed (the ``commit`` phase, a few milliseconds), a signal no longer
interrupts; the job then finishes normally.

Resuming: an ``adapt`` or ``sfr`` job writes checkpoints to ``JOB_DIR/checkpoints`` (an ``sfr`` job also its SAM
pseudo-labels and finished cross-validation folds); running the worker again on the same job (e.g. after
``kill -9``) continues from the last one.

Scale-out: under ``torchrun --nproc_per_node N -m ASSFTActive.worker JOB_DIR`` training is
DistributedDataParallel (NCCL on GPUs, Gloo on CPU) and ranking shards the pool across ranks; only rank 0 writes
events and files. An ``sfr`` job runs in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, TextIO, Tuple

from .confine import confined_to
from .errors import AssftError, CancelledError, JobError, cancelled_by
from .jobs import (
    ADAPT_KINDS,
    CANCEL_FILE,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    EXIT_CANCELLED,
    EXIT_DONE,
    EXIT_ERROR,
    LOG_FILE,
    RANKING_FILE,
    RESULT_CANCELLED,
    RESULT_DONE,
    RESULT_ERROR,
    RESULT_FILE,
    JobResult,
    JobSpec,
    read_job,
    write_result,
)
from .progress import Event

__all__ = ["main", "run_job"]

#: Library caches of the job (torch's compiler caches), inside the job folder.
CACHE_DIR = ".cache"


class _Cancel:
    """Cancellation state shared by the signal handler and the progress callback."""

    def __init__(self, cancel_file: Optional[Path] = None) -> None:
        self.cancel_file = cancel_file  # JOB_DIR/cancel: a GUI's polite stop where signals do not reach (Windows)
        self.requested = False
        self.signal_name = ""
        self.interruptible = True  # False from the commit phase on
        self.busy = False  # True while an event is being written (never interrupt half a line)

    def handler(self, signum: int, _frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self.interruptible and not self.busy:
            raise CancelledError("cancelled")

    def check(self) -> None:
        if not self.requested and self.cancel_file is not None and self.cancel_file.exists():
            self.requested, self.signal_name = True, "cancel request"
        if self.requested and self.interruptible:
            raise CancelledError("cancelled")


class _Channel:
    """Events to stdout, ``events.jsonl`` and ``log.txt`` (rank 0 only); a cancel check on every event."""

    def __init__(self, job_dir: Path, cancel: _Cancel, stdout: Optional[TextIO], writer: bool):
        self.job_dir = job_dir
        self.cancel = cancel
        self.stdout = stdout
        self.writer = writer
        self.events = _open_append(job_dir / EVENTS_FILE) if writer else None
        self.log = _open_append(job_dir / LOG_FILE) if writer else None
        self._last_logged_step: Dict[str, int] = {}

    def send(self, event: Event) -> None:
        if self.writer:
            self.cancel.busy = True
            try:
                line = event.to_json() + "\n"
                self.stdout.write(line)
                self.stdout.flush()
                self.events.write(line)
                self.events.flush()
                self._log(event)
            finally:
                self.cancel.busy = False

    def __call__(self, event: Event) -> None:
        """The progress callback handed to the engine."""
        if event.event == "phase" and event.phase == "commit":
            self.cancel.check()
            self.cancel.interruptible = False
        self.send(event)
        self.cancel.check()

    def emit(self, kind: str, **kwargs: Any) -> None:
        self.send(Event(event=kind, **kwargs))

    def note(self, text: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.log.flush()

    def _log(self, event: Event) -> None:
        if event.event == "progress":
            last = self._last_logged_step.get(event.phase, -(10**9))
            if event.step != event.total and event.step - last < 25:
                return
            self._last_logged_step[event.phase] = event.step
        where = f"[{event.phase} {event.step}/{event.total}]" if event.total else f"[{event.phase}]"
        metrics = ""
        if event.metrics and event.event != "progress":
            metrics = " " + json.dumps(dict(event.metrics), sort_keys=True)
        self.note(f"{event.event.upper():8s} {where} {event.message}{metrics}")

    def close(self) -> None:
        for handle in (self.events, self.log):
            if handle is not None:
                handle.close()


def _open_append(path: Path) -> TextIO:
    """``path`` opened for appending text, refusing to follow a symbolic link planted there (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(str(path), flags, 0o666)
    except OSError as exc:
        raise JobError(
            f"{path}: cannot be opened for writing ({exc.strerror or exc}); it must be a plain file "
            "inside the job folder."
        ) from exc
    return os.fdopen(fd, "a", encoding="utf-8")


def find_links(job_dir: Path) -> List[Path]:
    """Symbolic links anywhere inside ``job_dir`` (not followed), sorted."""
    found = []
    for root, dirs, files in os.walk(str(job_dir), followlinks=False):
        found.extend(Path(root) / name for name in dirs + files if (Path(root) / name).is_symlink())
    return sorted(found)


def _refuse_links(job_dir: Path) -> None:
    """A job writes only inside its folder: a symbolic link in it (``log.txt``, ``events.jsonl``, ``predictions/``,
    ``overlays/``, ...) would redirect a write elsewhere, so the job does not start.

    Raises:
        JobError: naming the links.
    """
    links = find_links(job_dir)
    if links:
        shown = ", ".join(str(p.relative_to(job_dir)) for p in links[:5]) + (" ..." if len(links) > 5 else "")
        raise JobError(
            f"{job_dir}: the job folder contains symbolic links ({shown}); the worker writes only plain "
            "files inside its job folder and refuses to follow links. Remove them and run the job again."
        )


def _resolve_in_job(job_dir: Path, value: str) -> str:
    """A relative path of ``job.json`` (store, model card) is relative to the job folder, not the working directory."""
    if not value or value == "default" or Path(value).expanduser().is_absolute():
        return value
    return str(job_dir / value)


def _images(spec: JobSpec) -> List[Path]:
    return [Path(spec.images[k]) for k in sorted(spec.images)]


def _check_case_ids(spec: JobSpec) -> None:
    from .io import case_id

    wrong = [(k, v) for k, v in spec.images.items() if case_id(v) != k]
    if wrong:
        key, path = wrong[0]
        raise JobError(
            f"job.json: image {path} is listed as case {key!r} but its file name gives case "
            f"{case_id(path)!r}; key images by their file name (without suffix)."
        )


def _predictions(result) -> Dict[str, str]:
    """``{case_id: predicted label file}`` of a :class:`~ASSFTActive.api.RankResult`."""
    return {v.case_id: str(v.prediction) for v in result.volumes if v.prediction is not None}


def _run_rank(spec: JobSpec, job_dir: Path, ctx, channel: _Channel) -> Optional[JobResult]:
    from .api import rank_pool
    from .models import load_card
    from .store import resolve_card_path

    _check_case_ids(spec)
    card = load_card(resolve_card_path(_resolve_in_job(job_dir, spec.model or "default")))
    query = spec.query_config()
    result = rank_pool(
        _images(spec),
        card,
        spec.budget,
        job_dir,
        labeled_ids=sorted(spec.labels),
        query=query,
        ctx=ctx,
        progress=channel,
        units=spec.unit_config(),
    )
    if not ctx.is_main:
        return None
    return JobResult(
        status=RESULT_DONE,
        kind="rank",
        model_card=str(card.path),
        ranking=str(job_dir / RANKING_FILE),
        predictions=_predictions(result),
        metrics={"volumes": len(result.volumes), "budget": spec.budget, "selected": list(result.ranking.selected_ids)},
    )


class _Rerank:
    """The ``before_commit`` of an adaptation job (adapt, sfr): re-rank the remaining pool with the model that will be
    active, before the commit (cancellable); what it wrote is kept for the result."""

    def __init__(self, spec: JobSpec, job_dir: Path, channel: _Channel):
        self.spec, self.job_dir, self.channel = spec, job_dir, channel
        self.ranking: Optional[str] = None
        self.predictions: Optional[Dict[str, str]] = None
        self.selected: Optional[List[str]] = None

    def __call__(self, model, rank_ctx) -> None:
        from .api import rank_pool
        from .finetune.adapt import default_name
        from .inference import Predictor
        from .models import derive_card, load_model

        spec = self.spec
        pool = [k for k in spec.images if k not in spec.labels]
        if not pool:
            return
        _check_case_ids(spec)
        pretrained = load_model(model.card.pretrained_card(), rank_ctx.device)
        predictor = Predictor(model, pretrained, device=rank_ctx.device)
        card = derive_card(
            model.card,
            name=spec.name or default_name(model.card),
            weights="weights.safetensors",
            pretrained=str(model.card.pretrained_card().path),
            provenance={},
        )
        result = rank_pool(
            _images(spec),
            card,
            spec.budget,
            self.job_dir,
            labeled_ids=sorted(spec.labels),
            query=spec.query_config(),
            ctx=rank_ctx,
            progress=self.channel,
            predictor=predictor,
            units=spec.unit_config(),
        )
        if rank_ctx.is_main:
            self.ranking = str(self.job_dir / RANKING_FILE)
            self.predictions = _predictions(result)
            self.selected = list(result.ranking.selected_ids)


def _adaptation_result(kind: str, outcome, rerank: _Rerank) -> JobResult:
    """The :class:`JobResult` of an adaptation (an ``AdaptResult``, or an ``SfrResult`` with its ``method``)."""
    summary = outcome.to_dict()
    # activated, activation and pseudo_labeled are top-level keys of the result, written once (not in metrics)
    metrics = dict(
        summary["metrics"],
        version=outcome.version,
        labeled=summary["labeled"],
        skipped=summary["skipped"],
        pseudo=summary["pseudo"],
        seconds=summary["seconds"],
        resumed_from=summary["resumed_from"],
    )
    if "method" in summary:
        metrics["method"] = summary["method"]
    if rerank.selected is not None:
        metrics["selected"] = rerank.selected
    return JobResult(
        status=RESULT_DONE,
        kind=kind,
        model_card=str(outcome.card_path),
        ranking=rerank.ranking,
        activated=bool(outcome.activated),
        activation=summary["activation"],
        pseudo_labeled=tuple(d["case_id"] for d in summary["pseudo"] if d["kept"]),
        predictions=rerank.predictions if rerank.predictions is not None else summary["predictions"],
        metrics=metrics,
    )


def _method(spec: JobSpec, job_dir: Path):
    """The adaptation method of an ``adapt`` or ``sfr`` job: the only thing the two kinds differ in."""
    if spec.kind == "sfr":
        from .sfr.pipeline import Sfr

        return Sfr(spec.sfr_config(), _resolve_in_job(job_dir, spec.sam_prior) or None)
    from .finetune.assft import SelectiveSelfTraining
    from .finetune.config import ANATOMY_RECIPES
    from .store import reference_anatomy

    anatomy = reference_anatomy(_resolve_in_job(job_dir, spec.model or "default"), ANATOMY_RECIPES)
    return SelectiveSelfTraining(spec.finetune_config(anatomy))


def _run_adaptation(spec: JobSpec, job_dir: Path, ctx, channel: _Channel) -> Optional[JobResult]:
    """An ``adapt`` or ``sfr`` job: :func:`ASSFTActive.finetune.adapt.run_adaptation` with the job's method,
    re-ranking the pool with the model that will be active before the commit."""
    from .finetune.adapt import AdaptRequest, run_adaptation

    method = _method(spec, job_dir)
    rerank = _Rerank(spec, job_dir, channel)
    request = AdaptRequest(
        spec.images,
        spec.labels,
        _resolve_in_job(job_dir, spec.store),
        model=_resolve_in_job(job_dir, spec.model or "default"),
        name=spec.name or None,
        progress=channel,
        work_dir=job_dir / CHECKPOINT_DIR,
        ctx=ctx,
        before_commit=rerank,
        subjects=spec.subjects,
    )
    outcome = run_adaptation(request, method)
    if not ctx.is_main:
        return None
    return _adaptation_result(spec.kind, outcome, rerank)


#: The function that runs each job kind.
_RUNNERS = {"rank": _run_rank, "adapt": _run_adaptation, "sfr": _run_adaptation}


def run_job(job_dir: Path, device: Optional[str] = None, stdout: Optional[TextIO] = None) -> int:
    """Run the job in ``job_dir`` and return the exit code (see the module docstring).

    Args:
        device: a :class:`ASSFTActive.cli.common.Device` name; ``None`` is ``auto``.
    """
    job_dir = Path(job_dir).resolve()
    if not (job_dir / "job.json").is_file():
        print(f"error: {job_dir / 'job.json'}: job file not found", file=sys.stderr)
        return EXIT_ERROR
    # torch keeps compiler caches in the system temp folder; a job writes only in its own folder and the store
    for variable, folder in (("TORCHINDUCTOR_CACHE_DIR", "torchinductor"), ("TRITON_CACHE_DIR", "triton")):
        os.environ.setdefault(variable, str(job_dir / CACHE_DIR / folder))
    # MONAI imports matplotlib, which would otherwise write its font cache to $HOME
    os.environ["MPLCONFIGDIR"] = str(job_dir / CACHE_DIR / "matplotlib")
    try:
        _refuse_links(job_dir)
    except JobError as exc:
        out = stdout or sys.stdout
        out.write(Event(event="error", phase="error", message=str(exc)).to_json() + "\n")
        out.flush()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    (job_dir / CANCEL_FILE).unlink(missing_ok=True)  # a request left from an earlier run of this job
    cancel = _Cancel(job_dir / CANCEL_FILE)
    previous = {s: signal.signal(s, cancel.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    rank = int(os.environ.get("RANK", "0"))
    channel = _Channel(job_dir, cancel, stdout or sys.stdout, writer=rank == 0)
    ctx = None
    code = EXIT_ERROR
    try:
        try:
            if rank == 0:
                (job_dir / RESULT_FILE).unlink(missing_ok=True)
            channel.note(f"worker started (pid {os.getpid()}, rank {rank})")
            spec = read_job(job_dir)
            channel.emit("phase", phase="start", message=f"{spec.kind} job in {job_dir}")
            channel.note(f"torch threads: {_size_threads()}")
            from .cli.common import resolve_device
            from .distributed import init_from_env

            ctx = init_from_env(resolve_device(device))
            if ctx.distributed:
                channel.emit(
                    "phase",
                    phase="start",
                    message=(f"{ctx.world_size} ranks, backend {ctx.backend}, device {ctx.device.type}"),
                )
            with confined_to(job_dir):  # no write inside the job folder follows a link, even one planted now
                result = _RUNNERS[spec.kind](spec, job_dir, ctx, channel)
            cancel.interruptible = False
            if result is not None:
                write_result(job_dir, result)
            message = (
                "done"
                if result is None
                else f"new model {result.model_card}"
                if spec.kind in ADAPT_KINDS
                else f"ranking {result.ranking}"
            )
            if cancel.requested:
                channel.note(f"{cancel.signal_name} arrived after the new version was committed; finished normally")
            channel.emit(
                "done", phase="done", message=message, metrics=_numbers(result.metrics if result is not None else {})
            )
            code = EXIT_DONE
        except Exception as exc:  # every failure, expected or not, ends with a result and an error event
            cancel.interruptible = False
            status, message, code = _failure(exc, cancel, job_dir, channel)
            if rank == 0:
                write_result(job_dir, JobResult(status=status, message=message))
            channel.emit("error", phase="cancelled" if status == RESULT_CANCELLED else "error", message=message)
    finally:
        cancel.interruptible = False
        if ctx is not None:
            try:
                ctx.close(synchronise=code == EXIT_DONE)
            except Exception:
                pass
        channel.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _failure(exc: Exception, cancel: _Cancel, job_dir: Path, channel: _Channel) -> Tuple[str, str, int]:
    """How a failed job ends: ``(result status, message, exit code)``; the log gets the details.

    Cancelled (a signal or the cancel file, also when it arrived inside code that wraps any failure in an error of its
    own, :func:`~ASSFTActive.errors.cancelled_by`): ``cancelled``, exit 130. An
    :class:`~ASSFTActive.errors.AssftError` (bad input, card, store, output; also a failing rank's error shipped by
    :func:`~ASSFTActive.distributed.map_shards`): its message, exit 1. Anything else is a bug: ``unexpected
    <type>: ...`` with the traceback in ``log.txt``.
    """
    if cancelled_by(exc):  # also a signal that arrived inside a reader's "cannot read the file" and the like
        channel.note(f"cancelled ({cancel.signal_name or 'by request'}); the model store was not changed")
        return RESULT_CANCELLED, "cancelled", EXIT_CANCELLED
    if isinstance(exc, AssftError):
        channel.note(f"error: {exc}")
        return RESULT_ERROR, str(exc), EXIT_ERROR
    channel.note("unexpected error:\n" + traceback.format_exc())
    return RESULT_ERROR, f"unexpected {type(exc).__name__}: {exc} (details in {job_dir / LOG_FILE})", EXIT_ERROR


def _size_threads() -> int:
    """Torch's thread pools sized to this process's cores (:func:`ASSFTActive.threads.size_thread_pools`)."""
    from .threads import size_thread_pools

    try:
        return size_thread_pools()
    except ValueError as exc:
        raise JobError(str(exc)) from exc


def _numbers(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """The plain numeric entries of a metrics dict (an Event carries numbers only)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    from .threads import bound_openmp_spinning

    bound_openmp_spinning()  # before torch is imported
    from .cli.common import add_device_argument

    parser = argparse.ArgumentParser(
        prog="python -m ASSFTActive.worker", description="Run one ASSFT background job (rank, adapt or sfr) in JOB_DIR."
    )
    parser.add_argument("job_dir", type=Path, help="folder holding job.json; outputs are written there")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    # Only events go to stdout: keep a private handle on it and send everything else (print, C libraries) to stderr.
    sys.stdout.flush()
    events_out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return run_job(args.job_dir, args.device, stdout=events_out)
    finally:
        events_out.close()


if __name__ == "__main__":
    sys.exit(main())
