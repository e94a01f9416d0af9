"""Stop a background job and every process it started (``PythonSlicer`` is a launcher with a child).

Inside Slicer the job runs as ``PythonSlicer -m ASSFTActive.worker JOB_DIR``. ``PythonSlicer`` is CTK's launcher:
it sets up the environment and starts the real Python as its own child, whose stdout is the launcher's stdout,
i.e. the pipe the GUI reads. Two consequences shape :class:`ProcessTreeStopper`:

* the launcher must outlive the worker: killing it first closes the pipe, the worker's next event write fails
  and a cancelled job ends as an error. So the polite signal (SIGTERM) goes to the launcher's descendants only;
  the launcher exits by itself when its child has exited (it waits for it);
* the worker must not outlive the launcher: whatever is still running when the timeout has passed is killed,
  whether or not the launcher is already gone (the descendants are remembered when cancelling starts).

Windows has no SIGTERM for console processes (``TerminateProcess`` is the only stop), so there the whole tree is
killed at once, children before the launcher. The tree is found with psutil when it is installed (it is in the
worker's requirements), else from ``/proc`` (Linux), ``pgrep`` (macOS) or the Toolhelp snapshot API (Windows,
through ctypes); the launcher's child is never missed for lack of a command-line tool. No Qt here: the widget's
QProcess runner, the subprocess runner and the blocking runner share it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional

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
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            children.append(int(entry))
    return children


def _childrenPgrep(pid: int) -> List[int]:
    try:
        output = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    except OSError:
        return []
    return [int(token) for token in output.split() if token.isdigit()]


def _parentsWindows() -> Dict[int, int]:
    """``{pid: parent pid}`` of every process, from a Toolhelp32 snapshot (kernel32, no extra tool needed)."""
    import ctypes
    from ctypes import wintypes

    class PROCESSENTRY32W(ctypes.Structure):
        _fields_ = [("dwSize", wintypes.DWORD), ("cntUsage", wintypes.DWORD), ("th32ProcessID", wintypes.DWORD),
                    ("th32DefaultHeapID", ctypes.c_size_t), ("th32ModuleID", wintypes.DWORD),
                    ("cntThreads", wintypes.DWORD), ("th32ParentProcessID", wintypes.DWORD),
                    ("pcPriClassBase", ctypes.c_long), ("dwFlags", wintypes.DWORD),
                    ("szExeFile", wintypes.WCHAR * 260)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateToolhelp32Snapshot.restype = wintypes.HANDLE
    snapshot = kernel32.CreateToolhelp32Snapshot(0x00000002, 0)  # TH32CS_SNAPPROCESS
    if snapshot in (None, wintypes.HANDLE(-1).value):
        return {}
    parents: Dict[int, int] = {}
    try:
        entry = PROCESSENTRY32W()
        entry.dwSize = ctypes.sizeof(PROCESSENTRY32W)
        more = kernel32.Process32FirstW(snapshot, ctypes.byref(entry))
        while more:
            parents[int(entry.th32ProcessID)] = int(entry.th32ParentProcessID)
            more = kernel32.Process32NextW(snapshot, ctypes.byref(entry))
    finally:
        kernel32.CloseHandle(snapshot)
    return parents


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


def isRunning(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if IS_WINDOWS:
        return pid in _parentsWindows()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
        return stat[stat.rfind(")") + 2:].split()[0] != "Z"
    except OSError:
        pass
    if os.path.isdir("/proc"):
        return False  # the /proc entry vanished between the two looks
    try:  # macOS: a zombie still answers kill(pid, 0)
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        return True
    return bool(state) and not state.startswith("Z")


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
            subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False,
                           creationflags=NO_WINDOW)
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

    def __init__(self, rootPid: int, timeout: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 cancelFile=None):
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


def terminateProcessTree(pid: int, timeout: float = 10.0, pollInterval: float = 0.1,
                         afterKill: float = 5.0) -> List[int]:
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
