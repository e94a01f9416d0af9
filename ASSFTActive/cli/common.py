"""Pieces shared by the subcommands: model and device arguments, settings files, a progress bar fed by engine
events."""

from __future__ import annotations

import argparse
import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Tuple

from ..progress import CANCELLED, DONE, FAILED, Event, JobProgress, format_duration


class Device(str, Enum):
    """The ``--device`` choices of every command and of the worker."""

    AUTO = "auto"  #: :func:`ASSFTActive.inference.default_device` (CUDA, else Apple MPS, else CPU)
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"  #: Apple Silicon GPU


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="model: 'default' (the embedded hippocampus model), a card JSON, or a store folder "
        "<store>/<name>[/v<k>] (see `assft models`)",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=[d.value for d in Device],
        default=Device.AUTO.value,
        help="compute device (auto: CUDA when present, else Apple MPS, else CPU)",
    )


def resolve_device(name: Optional[str]):
    """The ``torch.device`` of a :class:`Device` name (``None`` is ``auto``).

    Raises:
        InputError: an unknown name, or ``cuda`` without a CUDA GPU.
    """
    import torch

    from ..errors import InputError
    from ..inference import default_device

    try:
        choice = Device(name or Device.AUTO.value)
    except ValueError as exc:
        raise InputError(f"--device must be one of {[d.value for d in Device]}, got {name!r}.") from exc
    if choice is Device.AUTO:
        return default_device()
    if choice is Device.CUDA and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto.")
    if choice is Device.MPS and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(
            "--device mps was requested but Apple's MPS is not available (it needs Apple Silicon and "
            "macOS 12.3+); use --device cpu or auto."
        )
    return torch.device(choice.value)


class ProgressBar:
    """One bar per run on stderr, fed by engine :class:`Event` records through the job's progress model
    (:class:`~ASSFTActive.progress.JobProgress`): the whole run's percentage, the phase and its step, and the time
    left; no per-phase restarts and no step rates. Warnings are printed. :meth:`finish` ends it with a line in
    words (done / failed / cancelled).

    Args:
        enabled: draw the bar (warnings are printed either way).
        kind: the run's job kind for the phase weights (``rank``, ``adapt``, ``sfr``, ``evaluate``; any other name
            adds phases as they come).
        volumes: the pool's size, for the weights before the first event of a per-volume phase.
        units: planned units of the whole run per phase (``JobProgress``'s ``units``).
    """

    #: The bar's text: no counts or rates (the units are the model's, not the phase's steps).
    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {postfix}"

    def __init__(self, enabled: bool = True, kind: str = "", volumes: int = 1, units=None):
        self.enabled = enabled and sys.stderr is not None
        self.model = JobProgress(kind, volumes=volumes, units=units)
        self._bar = None

    def __call__(self, event: Event) -> None:
        if event.event == "warning":
            self._write(f"warning: {event.message}")
            return
        state = self.model.update(event)
        if not self.enabled or event.event not in ("progress", "phase"):
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=100,
                desc=self.model.kind or "progress",
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                bar_format=self.BAR_FORMAT,
            )
        self._bar.n = round(100 * state.fraction, 1)
        left = f", {format_duration(state.remaining_s)} left" if state.remaining_s is not None else ""
        step = f" {state.step}/{state.total}" if state.total else ""
        self._bar.set_postfix_str(f"{state.phase}{step}{left}", refresh=False)
        self._bar.refresh()

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def finish(self, status: str = DONE, message: str = ""):
        """End the run (``done``, ``failed`` or ``cancelled``): close the bar and print the final state in words.
        Returns the final :class:`~ASSFTActive.progress.ProgressState`."""
        state = self.model.finish(status, message)
        self.close()
        if self.enabled:
            print(state.describe(), file=sys.stderr)
        return state

    @contextlib.contextmanager
    def job(self):
        """``with bar.job(): ...`` runs the command's work and ends the bar in words: ``done``, ``cancelled`` on
        :class:`~ASSFTActive.errors.CancelledError` or Ctrl-C, else ``failed`` with the error (which propagates)."""
        from ..errors import CancelledError

        try:
            yield self
        except (CancelledError, KeyboardInterrupt):
            self.finish(CANCELLED)
            raise
        except BaseException as exc:
            self.finish(FAILED, str(exc))
            raise
        self.finish(DONE)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def warn_line(message: str) -> None:
    """Print a ``warning:`` line on stderr (e.g. label files that match no image)."""
    print(f"warning: {message}", file=sys.stderr)


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--work-dir`` of the resumable commands (``assft adapt``, ``assft sfr``)."""
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for resumable checkpoints; running the same command again continues from them",
    )


def work_dir_lock(work_dir: Optional[Path]):
    """A lock on ``--work-dir`` for the run (two runs never share one); nothing without a work dir."""
    import contextlib

    from ..locks import folder_lock

    return folder_lock(work_dir, "--work-dir") if work_dir is not None else contextlib.nullcontext()


def read_settings_file(path: Optional[Path]) -> dict:
    """The JSON object of a ``--config`` settings file (empty without one).

    Raises:
        InputError: unreadable, not JSON, or not an object.
    """
    return read_json_object(path, "settings")


def read_json_object(path: Optional[Path], what: str) -> dict:
    """The JSON object in ``path`` (empty without one); ``what`` names it in errors ("settings", "subjects").

    Raises:
        InputError: unreadable, not JSON, or not an object.
    """
    import json

    from ..errors import InputError

    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON {what} file ({exc}).") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: the {what} must be a JSON object.")
    return data


def progress_channel(args: argparse.Namespace, kind: str = "", volumes: int = 1, units=None) -> Tuple[ProgressBar, Any]:
    """The progress bar of a long command (``kind``: its job kind; ``volumes``, ``units``: see :class:`ProgressBar`)
    and the callback to hand the engine (it also watches for a cancel)."""
    bar = ProgressBar(
        enabled=not args.quiet, kind=kind or getattr(args, "command", "") or "", volumes=volumes, units=units
    )
    cancellation = getattr(args, "cancellation", None)
    return bar, (cancellation.watch(bar) if cancellation is not None else bar)
