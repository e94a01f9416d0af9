"""Pieces shared by the subcommands: model and device arguments, settings files, a progress bar fed by engine
events."""

from __future__ import annotations

import argparse
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Tuple

from ..progress import Event


class Device(str, Enum):
    """The ``--device`` choices of every command and of the worker."""

    AUTO = "auto"  #: :func:`ASSFTActive.inference.default_device` (CUDA when present, else CPU)
    CPU = "cpu"
    CUDA = "cuda"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="model: 'default' (the embedded hippocampus model), a card JSON, or a store folder "
                             "<store>/<name>[/v<k>] (see `assft models`)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=[d.value for d in Device], default=Device.AUTO.value,
                        help="compute device (auto: CUDA when present, else CPU)")


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
    return torch.device(choice.value)


class ProgressBar:
    """Turns engine :class:`Event` records into a tqdm bar per phase on stderr; warnings are printed."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr is not None
        self._bar = None
        self._phase: Optional[str] = None

    def __call__(self, event: Event) -> None:
        if event.event == "warning":
            self._write(f"warning: {event.message}")
            return
        if event.event != "progress" or not self.enabled:
            return
        if self._bar is None or self._phase != event.phase:
            self.close()
            from tqdm import tqdm

            self._bar = tqdm(total=event.total or None, desc=event.phase, unit="step", file=sys.stderr,
                             leave=False, dynamic_ncols=True)
            self._phase = event.phase
        self._bar.n = event.step
        self._bar.set_postfix_str(event.message[:40], refresh=False)
        self._bar.refresh()

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def add_work_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--work-dir`` of the resumable commands (``assft adapt``, ``assft sfr``)."""
    parser.add_argument("--work-dir", type=Path, help="folder for resumable checkpoints; running the same command "
                                                      "again continues from them")


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
    import json

    from ..errors import InputError

    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON settings file ({exc}).") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: the settings must be a JSON object.")
    return data


def progress_channel(args: argparse.Namespace) -> Tuple[ProgressBar, Any]:
    """The progress bar of a long command and the callback to hand the engine (it also watches for a cancel)."""
    bar = ProgressBar(enabled=not args.quiet)
    cancellation = getattr(args, "cancellation", None)
    return bar, (cancellation.watch(bar) if cancellation is not None else bar)
