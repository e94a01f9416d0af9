"""The worker process: its command and environment, its output as the GUI reads it, one run with Cancel, and
stopping a whole process tree. No Qt and no MRML here: the Qt runner (``jobRunner.JobRunner``), the subprocess
runner (:class:`SubprocessJobRunner`, headless servers and tests) and the blocking :func:`runWorker` share it.

**Output.** Engine events (``ASSFTActive.progress.Event``) line by line from a stream that also carries plain text
(stderr is merged into stdout), and their plain-text form for the log. The JSON form of an event and
``events.jsonl`` belong to the engine (:meth:`Event.from_json`, :func:`ASSFTActive.jobs.read_events`).

**One run.** :class:`JobRunCore` holds what a runner decides: each output line becomes an ``Event`` or an
:class:`OutputLine`; Cancel stops the whole process tree with :class:`ProcessTreeStopper`; and the run is reported
finished exactly once, only when the started process has ended *and*, after a Cancel, the whole tree is gone.

**Stopping a tree.** Inside Slicer the job runs as ``PythonSlicer -m ASSFTActive.worker JOB_DIR``. ``PythonSlicer``
is CTK's launcher: it starts the real Python as its own child, whose stdout is the pipe the GUI reads. So:

* the launcher must outlive the worker: killing it first closes the pipe, the worker's next event write fails
  and a cancelled job ends as an error. The polite stop (the job's cancel file, and SIGTERM on Linux and macOS)
  goes to the launcher's descendants only; the launcher exits by itself when its child has exited;
* the worker must not outlive the launcher: whatever is still running when the timeout has passed is killed,
  whether or not the launcher is already gone (the descendants are remembered when cancelling starts).

Windows has no SIGTERM for console processes: there the worker's cancel file (``JOB_DIR/cancel``, polled at every
event) is the polite stop, and the kill after the timeout is ``taskkill /F`` without a console window. The tree is
found with psutil when it is installed (it is in the worker's requirements), else from ``/proc`` (Linux),
``pgrep`` (macOS) or the Toolhelp snapshot API (Windows, through ctypes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ASSFTActive.jobs import CANCEL_FILE
from ASSFTActive.processes import is_running as isRunning
from ASSFTActive.processes import windows_parents as _parentsWindows
from ASSFTActive.progress import Event

from .enginePath import pythonPathWithEngine
from .errors import JobFailedError
from .records import DeviceInfo, FinishedJob, OutputLine

#: One line of worker output: an engine event, or any other text as it was printed.
WorkerOutput = Union[Event, OutputLine]


def parseEventLine(line: str) -> Optional[WorkerOutput]:
    """One output line -> an :class:`Event`; an :class:`OutputLine` for any other text; None for a blank line."""
    text = line.strip()
    if not text:
        return None
    try:
        return Event.from_json(text)
    except (ValueError, KeyError, TypeError):  # not JSON, not an object, or not an event of the protocol
        return OutputLine(text)


class EventLineBuffer:
    """Turns chunks of process output (which may end mid-line) into items, one per complete line."""

    def __init__(self):
        self._pending = ""

    def feed(self, chunk: str) -> List[WorkerOutput]:
        """Add output text; return the items of the lines it completed."""
        self._pending += chunk
        *lines, self._pending = self._pending.split("\n")
        return [item for item in (parseEventLine(line) for line in lines) if item is not None]

    def flush(self) -> List[WorkerOutput]:
        """The item of the last line when the output ended without a newline."""
        rest, self._pending = self._pending, ""
        item = parseEventLine(rest)
        return [item] if item is not None else []


def eventFraction(event: Event) -> Optional[float]:
    """Progress within the event's phase in [0, 1], or None when the event carries no step/total."""
    if event.total and event.total > 0:
        return min(max(event.step / event.total, 0.0), 1.0)
    return None


def formatEvent(item: WorkerOutput) -> str:
    """A plain-text log line (no markup; the widget decides how to show it)."""
    if isinstance(item, OutputLine):
        return item.text
    parts = [f"[{item.phase}]" if item.phase else f"[{item.event}]"]
    if item.event in ("warning", "error"):
        parts.append(f"{item.event.upper()}:")
    if item.total:
        parts.append(f"{item.step}/{item.total}")
    if item.message:
        parts.append(item.message)
    if item.metrics:
        parts.append(", ".join(f"{key}={_formatValue(value)}" for key, value in sorted(item.metrics.items())))
    return " ".join(parts)


def _formatValue(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


IS_WINDOWS = sys.platform == "win32"


def _childrenLinux(pid: int) -> List[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _childrenPgrep(pid: int) -> List[int]:
    try:
        output = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    return [int(token) for token in output.split() if token.isdigit()]


def _childrenFunction() -> Callable[[int], List[int]]:
    if IS_WINDOWS:
        parents = _parentsWindows()
        return lambda pid: [child for child, parent in parents.items() if parent == pid and child != pid]
    return _childrenLinux if os.path.isdir("/proc") else _childrenPgrep


def descendantPids(pid: int) -> List[int]:
    """All descendants of process ``pid`` (children first, then grandchildren, ...); not ``pid`` itself."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    childrenOf = _childrenFunction()
    result: List[int] = []
    frontier = [pid]
    while frontier:
        children = [child for parent in frontier for child in childrenOf(parent) if child not in result]
        result.extend(children)
        frontier = children
    return result


#: ``subprocess`` flag that keeps a console window from flashing up on Windows (0 elsewhere).
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0) if IS_WINDOWS else 0


def signalProcesses(pids: Iterable[int], force: bool) -> None:
    """Send SIGTERM (or SIGKILL when ``force``) to each process; processes already gone are skipped.

    On Windows a stop is forceful (``TerminateProcess`` through ``taskkill /F``, without a console window): a
    console-less process gets no polite signal that reaches Python code, so the polite stop there is the worker's
    cancel file (:class:`ProcessTreeStopper`).
    """
    for pid in pids:
        if IS_WINDOWS:
            subprocess.run(
                ["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False, creationflags=NO_WINDOW
            )
            continue
        try:
            os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessTreeStopper:
    """Stops the process ``rootPid`` and its descendants without cutting the root's output pipe too early.

    :meth:`start` writes the worker's cancel file when there is one (``JOB_DIR/cancel``, polled by the worker at
    every event) and sends the polite signal to the descendants (the launcher's worker); the root gets it when it
    has no descendants (then it is the worker itself) or once they are gone. :meth:`poll` is called until it
    returns True: it kills what is left (the remembered tree plus descendants found since) once ``timeout``
    seconds have passed. On Windows the cancel file is the polite stop (no signal); without one the whole tree is
    killed at once, children first, without console windows.

    Args:
        rootPid: the process the caller started (``PythonSlicer`` or ``python``).
        timeout: seconds between the polite stop and the kill.
        clock: the time source (tests may pass another).
        cancelFile: the worker's cancel file (``ASSFTActive.jobs.CANCEL_FILE`` in the job folder), or None.
    """

    def __init__(
        self, rootPid: int, timeout: float = 10.0, clock: Callable[[], float] = time.monotonic, cancelFile=None
    ):
        self.rootPid = int(rootPid)
        self.timeout = float(timeout)
        self.clock = clock
        self.cancelFile = cancelFile
        self.tree: List[int] = []
        self.killed: List[int] = []
        self._deadline: Optional[float] = None
        self._rootSignalled = False

    @property
    def started(self) -> bool:
        return self._deadline is not None

    def start(self) -> None:
        """Remember the tree and ask it to stop (Windows: kill it)."""
        if self.started:
            return
        descendants = descendantPids(self.rootPid)
        self.tree = descendants + [self.rootPid]
        self._deadline = self.clock() + self.timeout
        asked = self._writeCancelFile()
        if IS_WINDOWS:
            self._rootSignalled = True
            if not asked:
                self._kill(self.tree)
            return
        self._rootSignalled = not descendants
        signalProcesses(descendants or [self.rootPid], force=False)

    def _writeCancelFile(self) -> bool:
        if self.cancelFile is None:
            return False
        try:
            with open(self.cancelFile, "w", encoding="utf-8") as handle:
                handle.write("cancel\n")
        except OSError:
            return False
        return True

    def remaining(self) -> List[int]:
        """Processes of the tree still running (descendants found since :meth:`start` included)."""
        pids = list(self.tree)
        if isRunning(self.rootPid):
            pids += [pid for pid in descendantPids(self.rootPid) if pid not in pids]
        return [pid for pid in pids if isRunning(pid)]

    def poll(self) -> bool:
        """True when the whole tree is gone; after the timeout, kills what is left first."""
        if not self.started:
            raise RuntimeError("call start() first")
        remaining = self.remaining()
        if not remaining:
            return True
        if remaining == [self.rootPid] and not self._rootSignalled and not IS_WINDOWS:
            # the worker is gone; a launcher normally exits by itself now, anything else is asked to
            self._rootSignalled = True
            signalProcesses([self.rootPid], force=False)
        if self.clock() >= self._deadline:
            self._kill(remaining)
            return not self.remaining()
        return False

    def _kill(self, pids: List[int]) -> None:
        # children before parents: a launcher killed first could not be asked about its children any more
        ordered = [pid for pid in pids if pid != self.rootPid] + [pid for pid in pids if pid == self.rootPid]
        self.killed += [pid for pid in ordered if pid not in self.killed]
        signalProcesses(ordered, force=True)


def terminateProcessTree(
    pid: int, timeout: float = 10.0, pollInterval: float = 0.1, afterKill: float = 5.0
) -> List[int]:
    """Stop ``pid`` and its descendants (blocking): see :class:`ProcessTreeStopper`.

    The caller still reaps ``pid`` if it is its own child (``Popen.wait``, ``QProcess.waitForFinished``).

    Returns:
        the processes that had to be killed (SIGKILL; on Windows every process of the tree).
    """
    stopper = ProcessTreeStopper(pid, timeout)
    stopper.start()
    end = time.monotonic() + timeout + afterKill
    while not stopper.poll() and time.monotonic() < end:
        time.sleep(pollInterval)
    return stopper.killed


WORKER_MODULE = "ASSFTActive.worker"
#: Non-event output lines kept for the error message of a worker that died without a result.
OUTPUT_TAIL_LINES = 20

#: Printed by the device probe; imports torch in the child only.
DEVICE_PROBE_CODE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except Exception as exc:\n"
    "    print(json.dumps({'kind': 'unknown', 'message': 'torch is not installed (%s)' % type(exc).__name__}))\n"
    "else:\n"
    "    gpu = torch.cuda.is_available()\n"
    "    mps = not gpu and getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()\n"
    "    print(json.dumps({'kind': 'GPU' if gpu or mps else 'CPU', 'torch': torch.__version__,\n"
    "                      'name': torch.cuda.get_device_name(0) if gpu else ('Apple MPS' if mps else '')}))\n"
)


def pythonExecutable() -> str:
    """The interpreter for child processes: ``PythonSlicer`` inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def workerCommand(jobDir, python: Optional[str] = None) -> List[str]:
    """``[python, "-m", "ASSFTActive.worker", JOB_DIR]``."""
    return [python or pythonExecutable(), "-m", WORKER_MODULE, str(Path(jobDir).resolve())]


def workerEnvironment(base: Optional[Mapping[str, str]] = None, useGpu: Optional[bool] = None) -> Dict[str, str]:
    """Environment of the worker: the engine first on ``PYTHONPATH``, unbuffered output, the CPU fallback of
    Apple's MPS device.

    Args:
        base: starting environment (default ``os.environ``).
        useGpu: False hides the GPUs (``CUDA_VISIBLE_DEVICES=""``); None leaves the choice to the worker.
    """
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = pythonPathWithEngine(environment.get("PYTHONPATH"))
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("PYTHONIOENCODING", "utf-8")
    environment.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # Apple MPS: operations it lacks run on the CPU
    if useGpu is False:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    return environment


def runWorker(
    jobDir,
    python: Optional[str] = None,
    onEvent: Optional[Callable[[WorkerOutput], None]] = None,
    timeout: Optional[float] = None,
    environment: Optional[Mapping[str, str]] = None,
) -> FinishedJob:
    """Run the worker on ``jobDir`` and wait for it (blocking); every output line goes to ``onEvent`` (an engine
    ``Event``, or an :class:`OutputLine` for other text).

    Raises:
        JobFailedError: non-zero exit, a time-out (the process tree is stopped), or no ``done`` result.
    """
    from .jobFolder import logTail, readJobResult  # the folder module needs MRML; this runner does not

    jobDir = Path(jobDir)
    command = workerCommand(jobDir, python)
    process = subprocess.Popen(
        command,
        cwd=str(jobDir),
        env=dict(environment) if environment is not None else workerEnvironment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    buffer = EventLineBuffer()
    outputTail: List[str] = []

    def handle(item: WorkerOutput) -> None:
        outputTail.append(item.text if isinstance(item, OutputLine) else "")
        del outputTail[:-OUTPUT_TAIL_LINES]
        if onEvent is not None:
            onEvent(item)

    timer = None
    timedOut = []
    if timeout is not None:

        def stop():
            timedOut.append(True)
            terminateProcessTree(process.pid, timeout=5.0)

        timer = threading.Timer(timeout, stop)
        timer.start()
    try:
        for line in process.stdout:
            for item in buffer.feed(line):
                handle(item)
        for item in buffer.flush():
            handle(item)
        returnCode = process.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if process.poll() is None:
            terminateProcessTree(process.pid, timeout=5.0)
            process.wait()
    if timedOut:
        raise JobFailedError(f"Job {jobDir.name} was stopped after {timeout:.0f} s.", str(jobDir), logTail(jobDir))
    try:
        result = readJobResult(jobDir)
    except JobFailedError as error:
        if error.logTail:
            raise
        text = "\n".join(line for line in outputTail if line)
        raise JobFailedError(f"{error} Worker output (exit code {returnCode}):\n{text}", str(jobDir), text) from error
    if returnCode != 0:
        raise JobFailedError(
            f"Job {jobDir.name} exited with code {returnCode} although it wrote a result.", str(jobDir), logTail(jobDir)
        )
    return result


def deviceProbeCommand(python: Optional[str] = None) -> List[str]:
    """A command printing one JSON line: ``{"kind": "GPU"|"CPU"|"unknown", "name", "torch", "message"}``."""
    return [python or pythonExecutable(), "-c", DEVICE_PROBE_CODE]


def parseDeviceProbe(output: str) -> DeviceInfo:
    """The :class:`DeviceInfo` in the probe's output (its last JSON line)."""
    for line in reversed(output.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("kind") in ("GPU", "CPU", "unknown"):
            return DeviceInfo(
                kind=data["kind"],
                name=str(data.get("name") or ""),
                torchVersion=str(data.get("torch") or ""),
                message=str(data.get("message") or ""),
            )
    return DeviceInfo(kind="unknown", message="the device probe printed no result")


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
            self.process = subprocess.Popen(
                [str(part) for part in command],
                cwd=str(workingDirectory),
                env=dict(environment),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                creationflags=NO_WINDOW,
            )
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
