"""One background process run, independent of how it is started: output lines, the end, and Cancel.

:class:`JobRunCore` holds what a runner decides: each output line becomes an engine ``Event`` or an
:class:`OutputLine`; Cancel stops the whole process tree with :class:`~.processTree.ProcessTreeStopper` (the
launcher keeps the worker's output pipe open until the worker has written its ``cancelled`` event and exited);
and the run is reported finished exactly once, only when the started process has ended *and*, after a Cancel,
the whole tree is gone. Two runners drive it: ``jobRunner.JobRunner`` (a ``qt.QProcess`` in desktop Slicer) and
:class:`SubprocessJobRunner` here (threads; headless servers and tests).
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ASSFTActive.jobs import CANCEL_FILE

from .events import EventLineBuffer, WorkerOutput
from .processTree import NO_WINDOW, ProcessTreeStopper
from .workerProcess import WORKER_MODULE

#: Seconds the worker gets to stop after Cancel before the remaining processes are killed.
CANCEL_TIMEOUT_S = 10.0
#: How often a runner polls a cancelled process tree.
CANCEL_POLL_S = 0.1

def cancelFileOf(command: Sequence[str]) -> Optional[Path]:
    """The cancel file of a worker command (``python -m ASSFTActive.worker JOB_DIR``: ``JOB_DIR/cancel``); None for
    other commands (the device probe, the card check)."""
    parts = [str(part) for part in command]
    if len(parts) >= 3 and parts[-2] == WORKER_MODULE:
        return Path(parts[-1]) / CANCEL_FILE
    return None


OnEvent = Callable[[WorkerOutput], None]
#: ``onFinished(exitCode, cancelled, errorText)``; ``exitCode`` is -1 for a crash or a failed start.
OnFinished = Callable[[int, bool, str], None]


class JobRunCore:
    """The state of one run; the runner feeds it output, the process's end and timer ticks.

    Args:
        onEvent: called with each line's ``Event`` or :class:`OutputLine`.
        onFinished: called once with ``(exitCode, cancelled, errorText)``.
        cancelTimeout: seconds between the polite stop and the kill.
    """

    def __init__(self, onEvent: OnEvent, onFinished: OnFinished, cancelTimeout: float = CANCEL_TIMEOUT_S):
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.cancelTimeout = cancelTimeout
        self.pid: Optional[int] = None
        self.cancelled = False
        self.finished = True
        self.stopper: Optional[ProcessTreeStopper] = None
        self.cancelFile: Optional[Path] = None
        self._buffer = EventLineBuffer()
        self._ended: Optional[tuple] = None
        self._lock = threading.RLock()

    def begin(self, command: Sequence[str] = ()) -> None:
        """A new run of ``command`` starts (the process is being started)."""
        with self._lock:
            self.cancelFile = cancelFileOf(command)
            self._buffer = EventLineBuffer()
            self.pid = None
            self.cancelled = False
            self.finished = False
            self.stopper = None
            self._ended = None

    def started(self, pid: int) -> None:
        self.pid = int(pid)

    def isRunning(self) -> bool:
        return not self.finished

    def output(self, text: str) -> None:
        """Output text (may end mid-line)."""
        with self._lock:
            if self.finished:
                return
            for item in self._buffer.feed(text):
                self.onEvent(item)

    def processEnded(self, exitCode: int, crashed: bool) -> None:
        """The started process has ended (after its last output was passed to :meth:`output`)."""
        with self._lock:
            if self.finished or self._ended is not None:
                return
            self._ended = (-1 if crashed else int(exitCode), "the worker crashed" if crashed else "")
            if self.stopper is None or self.stopper.poll():
                self._finish()

    def failedToStart(self, message: str) -> None:
        with self._lock:
            if self.finished:
                return
            self._ended = (-1, f"the worker could not start: {message}")
            self._finish()

    def cancel(self) -> bool:
        """Start stopping the process tree; the runner then calls :meth:`poll` every :data:`CANCEL_POLL_S`.

        Returns:
            True when there is something to poll.
        """
        with self._lock:
            if self.finished or self.pid is None:
                return False
            self.cancelled = True
            if self.stopper is None:
                self.stopper = ProcessTreeStopper(self.pid, self.cancelTimeout, cancelFile=self.cancelFile)
                self.stopper.start()
            return True

    def poll(self) -> bool:
        """One tick while cancelling: kills what outlived the timeout. Returns True while polling must go on."""
        with self._lock:
            if self.finished or self.stopper is None:
                return False
            if self.stopper.poll() and self._ended is not None:
                self._finish()
                return False
            return True

    def _finish(self) -> None:
        for item in self._buffer.flush():
            self.onEvent(item)
        self.finished = True
        exitCode, errorText = self._ended
        self.onFinished(exitCode, self.cancelled, "" if self.cancelled else errorText)


class SubprocessJobRunner:
    """Runs a command with ``subprocess`` and reports through a :class:`JobRunCore` (callbacks come from threads).

    Same interface as the Qt ``JobRunner``: :meth:`start`, :meth:`cancel`, :meth:`isRunning`, plus :meth:`wait`.
    """

    def __init__(self, onEvent: OnEvent, onFinished: OnFinished, cancelTimeout: float = CANCEL_TIMEOUT_S):
        self.core = JobRunCore(onEvent, onFinished, cancelTimeout)
        self.process: Optional[subprocess.Popen] = None
        self._done = threading.Event()
        self._done.set()
        self._reader: Optional[threading.Thread] = None

    def isRunning(self) -> bool:
        return self.core.isRunning()

    def start(self, command: Sequence[str], environment: Mapping[str, str], workingDirectory: str) -> None:
        if self.isRunning():
            raise RuntimeError("A job is already running; cancel it or wait for it to finish.")
        self._done.clear()
        userFinished = self.core.onFinished

        def finished(exitCode: int, cancelled: bool, errorText: str) -> None:
            try:
                userFinished(exitCode, cancelled, errorText)
            finally:
                self.core.onFinished = userFinished
                self._done.set()

        self.core.onFinished = finished
        self.core.begin(command)
        try:
            self.process = subprocess.Popen([str(part) for part in command], cwd=str(workingDirectory),
                                            env=dict(environment), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            text=True, encoding="utf-8", errors="replace", bufsize=1,
                                            creationflags=NO_WINDOW)
        except OSError as exc:
            self.core.failedToStart(str(exc))
            return
        self.core.started(self.process.pid)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.core.output(line)

    def _wait(self) -> None:
        code = self.process.wait()
        # the pipe may still hold the last lines: read them before the run is reported finished
        self._reader.join(timeout=2.0)
        self.core.processEnded(code, crashed=code < 0)

    def cancel(self) -> None:
        if not self.core.cancel():
            return

        def pollLoop() -> None:
            while self.core.poll():
                self._done.wait(CANCEL_POLL_S)

        threading.Thread(target=pollLoop, daemon=True).start()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the run is reported finished; False on time-out."""
        return self._done.wait(timeout)
