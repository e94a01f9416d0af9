"""Runs the engine's worker in a ``qt.QProcess`` without blocking Slicer (GUI side; needs desktop Slicer).

stdout and stderr are merged; each line becomes an engine ``Event`` (the JSON-line events) or an
:class:`OutputLine` (any other text) for the widget. Cancel stops the whole process tree: SIGTERM first (the
worker ends with an ``error: cancelled`` event), SIGKILL after a timeout. Callbacks are plain Python callables
(custom ``qt.Signal`` objects are unreliable in PythonQt).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import qt

from .events import EventLineBuffer, WorkerOutput
from .processTree import descendantPids, signalProcesses

#: How long the worker gets to stop after SIGTERM before it is killed.
CANCEL_TIMEOUT_MS = 10000


def _bytesOf(byteArray) -> bytes:
    data = byteArray.data() if hasattr(byteArray, "data") else byteArray
    return bytes(data)


class JobRunner:
    """One background job at a time.

    Args:
        onEvent: called with each line's ``Event`` or :class:`OutputLine` as the worker prints it.
        onFinished: called once with ``(exitCode, cancelled, errorText)`` when the process has ended (or failed to
            start; then ``exitCode`` is -1 and ``errorText`` says why).
    """

    def __init__(self, onEvent: Callable[[WorkerOutput], None], onFinished: Callable[[int, bool, str], None]):
        self.onEvent = onEvent
        self.onFinished = onFinished
        self.process: Optional[qt.QProcess] = None
        self._buffer = EventLineBuffer()
        self._cancelled = False
        self._finished = True
        self._treePids = []

    def isRunning(self) -> bool:
        return self.process is not None and not self._finished

    def start(self, command: Sequence[str], environment: Mapping[str, str], workingDirectory: str) -> None:
        """Start ``command`` (e.g. ``workerProcess.workerCommand(jobDir)``) with ``environment``."""
        if self.isRunning():
            raise RuntimeError("A job is already running; cancel it or wait for it to finish.")
        self._buffer = EventLineBuffer()
        self._cancelled = False
        self._finished = False
        process = qt.QProcess()
        process.setProcessChannelMode(qt.QProcess.MergedChannels)
        processEnvironment = qt.QProcessEnvironment()
        for key, value in environment.items():
            processEnvironment.insert(key, value)
        process.setProcessEnvironment(processEnvironment)
        process.setWorkingDirectory(str(workingDirectory))
        process.connect("readyReadStandardOutput()", self._onReadyRead)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onError)
        self.process = process
        process.start(str(command[0]), [str(argument) for argument in command[1:]])

    def cancel(self, timeoutMs: int = CANCEL_TIMEOUT_MS) -> None:
        """Ask the worker tree to stop (SIGTERM), then kill what is left after ``timeoutMs``."""
        if not self.isRunning():
            return
        self._cancelled = True
        pid = int(self.process.processId())
        self._treePids = descendantPids(pid)
        signalProcesses(self._treePids, force=False)
        self.process.terminate()
        qt.QTimer.singleShot(timeoutMs, self._forceKill)

    def _forceKill(self) -> None:
        if not self.isRunning():
            return
        signalProcesses(self._treePids + descendantPids(int(self.process.processId())), force=True)
        self.process.kill()

    def _onReadyRead(self) -> None:
        text = _bytesOf(self.process.readAllStandardOutput()).decode("utf-8", errors="replace")
        for item in self._buffer.feed(text):
            self.onEvent(item)

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        if self._finished:
            return
        self._onReadyRead()
        for item in self._buffer.flush():
            self.onEvent(item)
        self._finished = True
        crashed = exitStatus == qt.QProcess.CrashExit
        self.onFinished(int(exitCode) if not crashed else -1, self._cancelled, "the worker crashed" if crashed else "")

    def _onError(self, error) -> None:
        if error == qt.QProcess.FailedToStart and not self._finished:
            self._finished = True
            self.onFinished(-1, False, f"the worker could not start: {self.process.errorString()}")
