"""SIGTERM for ``assft`` like for the worker: cancel the running command cleanly, never half a commit.

SIGTERM (and SIGINT) raise :class:`~ASSFTActive.errors.CancelledError` in the running computation, so the engine's
clean-up runs (a pending model version is removed, the active model stays) and ``assft`` exits with 130. From the
``commit`` phase on (writing the new version, a few milliseconds) a signal no longer interrupts; the command then
finishes normally.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator, Optional

from ..errors import CancelledError
from ..progress import Event

__all__ = ["Cancellation", "cancel_on_signals"]


class Cancellation:
    """The state shared by the signal handler and the progress callback of one command."""

    def __init__(self) -> None:
        self.requested = False
        self.interruptible = True

    def handler(self, signum: int, _frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self.interruptible:
            raise CancelledError(f"cancelled ({signal.Signals(signum).name})")

    def watch(self, progress: Optional[Callable[[Event], None]]) -> Callable[[Event], None]:
        """``progress`` wrapped so that the commit phase is not interrupted and a pending cancel is raised."""

        def forward(event: Event) -> None:
            if event.event == "phase" and event.phase == "commit":
                self.check()
                self.interruptible = False
            if progress is not None:
                progress(event)
            self.check()

        return forward

    def check(self) -> None:
        if self.requested and self.interruptible:
            raise CancelledError("cancelled")


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[Cancellation]:
    """Install the SIGTERM/SIGINT handler for the block (main thread only; elsewhere nothing is installed)."""
    cancel = Cancellation()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    previous = {s: signal.signal(s, cancel.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield cancel
    finally:
        cancel.interruptible = False
        for sig, handler in previous.items():
            signal.signal(sig, handler)
