"""Stop a background job and every process it started (``PythonSlicer`` is a launcher with a child).

Polite first (SIGTERM, so the worker can end with an ``error: cancelled`` event), then forceful (SIGKILL) for
whatever is still running after a timeout. Uses psutil when installed, else ``/proc`` (Linux), ``pgrep``
(macOS) or ``taskkill`` (Windows). No Qt here: the widget's QProcess runner and the blocking runner share it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterable, List


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


def descendantPids(pid: int) -> List[int]:
    """All descendants of process ``pid`` (children first, then grandchildren, ...); not ``pid`` itself."""
    try:
        import psutil

        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    except ImportError:
        pass
    childrenOf = _childrenLinux if os.path.isdir("/proc") else _childrenPgrep
    result: List[int] = []
    frontier = [pid]
    while frontier:
        children = [child for parent in frontier for child in childrenOf(parent) if child not in result]
        result.extend(children)
        frontier = children
    return result


def isRunning(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if sys.platform == "win32":
        output = subprocess.run(["tasklist", "/FI", f"PID eq {pid}"], capture_output=True, text=True, check=False)
        return str(pid) in output.stdout
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
        return True


def signalProcesses(pids: Iterable[int], force: bool) -> None:
    """Send SIGTERM (or SIGKILL when ``force``) to each process; processes already gone are skipped."""
    for pid in pids:
        if sys.platform == "win32":
            command = ["taskkill", "/PID", str(pid), "/T"] + (["/F"] if force else [])
            subprocess.run(command, capture_output=True, check=False)
            continue
        try:
            os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def terminateProcessTree(pid: int, timeout: float = 10.0, pollInterval: float = 0.1) -> List[int]:
    """Stop ``pid`` and its descendants: SIGTERM to all, wait up to ``timeout`` s, then SIGKILL what is left.

    The caller still reaps ``pid`` if it is its own child (``Popen.wait``, ``QProcess.waitForFinished``).

    Returns:
        the processes that had to be killed with SIGKILL.
    """
    tree = descendantPids(pid) + [pid]
    signalProcesses(tree, force=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(isRunning(p) for p in tree):
            return []
        time.sleep(pollInterval)
    remaining = [p for p in tree if isRunning(p)]
    # Processes started after the first look (e.g. data loader workers) are collected again before killing.
    remaining += [p for p in descendantPids(pid) if p not in remaining]
    signalProcesses(remaining, force=True)
    return remaining
