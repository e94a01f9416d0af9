"""Runs the engine's worker in a ``qt.QProcess`` without blocking Slicer (GUI side; needs desktop Slicer).

stdout and stderr are merged; each line becomes an engine ``Event`` (the JSON-line events) or an
:class:`OutputLine` (any other text) for the controller. What happens on output, at the end and on Cancel is
decided by the Qt-free :class:`~.jobProcess.JobRunCore` (shared with the subprocess runner the tests drive): Cancel
stops the worker under ``PythonSlicer`` first and kills whatever is left after a timeout, even when the launcher
has already ended, and the run is reported finished only when the whole tree is gone. Callbacks are plain Python
callables (custom ``qt.Signal`` objects are unreliable in PythonQt).
"""

from __future__ import annotations

import queue
from typing import Callable, Mapping, Optional, Sequence

import qt

from .jobProcess import CANCEL_POLL_S, CANCEL_TIMEOUT_S, JobRunCore, OnEvent, OnFinished


def _bytesOf(byteArray) -> bytes:
    data = byteArray.data() if hasattr(byteArray, "data") else byteArray
    return bytes(data)


class JobRunner:
    """One background process at a time in a ``qt.QProcess``.

    Args:
        onEvent: called with each line's ``Event`` or :class:`OutputLine` as the process prints it.
        onFinished: called once with ``(exitCode, cancelled, errorText)`` when the process tree has ended (or the
            process failed to start; then ``exitCode`` is -1 and ``errorText`` says why).
    """

    def __init__(self, onEvent: OnEvent, onFinished: OnFinished, cancelTimeout: float = CANCEL_TIMEOUT_S):
        self.core = JobRunCore(onEvent, onFinished, cancelTimeout)
        self.process: Optional[qt.QProcess] = None
        self._timer: Optional[qt.QTimer] = None

    def isRunning(self) -> bool:
        return self.core.isRunning()

    def start(self, command: Sequence[str], environment: Mapping[str, str], workingDirectory: str) -> None:
        """Start ``command`` (e.g. ``jobProcess.workerCommand(jobDir)``) with ``environment``."""
        if self.isRunning():
            raise RuntimeError("A job is already running; cancel it or wait for it to finish.")
        self.core.begin(command)
        process = qt.QProcess()
        process.setProcessChannelMode(qt.QProcess.MergedChannels)
        processEnvironment = qt.QProcessEnvironment()
        for key, value in environment.items():
            processEnvironment.insert(key, value)
        process.setProcessEnvironment(processEnvironment)
        process.setWorkingDirectory(str(workingDirectory))
        process.connect("readyReadStandardOutput()", self._onReadyRead)
        process.connect("started()", self._onStarted)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onError)
        self.process = process
        process.start(str(command[0]), [str(argument) for argument in command[1:]])

    def cancel(self) -> None:
        """Stop the process tree (see :class:`~.jobProcess.ProcessTreeStopper`); the end is reported later."""
        if not self.core.cancel():
            return
        self._timer = qt.QTimer()
        self._timer.setInterval(int(CANCEL_POLL_S * 1000))
        self._timer.connect("timeout()", self._poll)
        self._timer.start()

    def _poll(self) -> None:
        if not self.core.poll() and self._timer is not None:
            self._timer.stop()

    def _onStarted(self) -> None:
        self.core.started(int(self.process.processId()))

    def _onReadyRead(self) -> None:
        self.core.output(_bytesOf(self.process.readAllStandardOutput()).decode("utf-8", errors="replace"))

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        self._onReadyRead()
        self.core.processEnded(int(exitCode), exitStatus == qt.QProcess.CrashExit)

    def _onError(self, error) -> None:
        if error == qt.QProcess.FailedToStart:
            self.core.failedToStart(self.process.errorString())


class MainThreadCalls:
    """Runs callables posted from any thread in the GUI thread: a ``qt.QTimer`` of the GUI thread empties a queue
    every :data:`POLL_MS` (a timer cannot be started from another thread, so the queue is polled while not empty).
    """

    POLL_MS = 50

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self._run)
        self._timer.start()

    def post(self, call: Callable[[], None]) -> None:
        """Queue ``call`` (thread-safe); it runs in the GUI thread within :data:`POLL_MS`."""
        self._queue.put(call)

    def _run(self) -> None:
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                return
            call()


def createJobController(
    sceneLogic, environment: Callable[[], Mapping[str, str]], ensureRequirements: Callable[[], bool]
):
    """The controller desktop Slicer uses: jobs and the device probe in ``qt.QProcess`` runners; the job's files are
    written by a background thread that hands the worker's start back to the GUI thread."""
    from .jobController import JobController

    calls = MainThreadCalls()
    controller = JobController(
        sceneLogic,
        runnerFactory=JobRunner,
        environment=environment,
        ensureRequirements=ensureRequirements,
        callInMainThread=calls.post,
    )
    controller.mainThreadCalls = calls  # kept alive with the controller
    return controller
