"""Whether a process still runs, on Linux, macOS and Windows; standard library only.

One answer for every place that asks: the GUI's job runner (``ASSFTModule``: is the worker or one of its children
still alive) and the model store (is the process that writes a pending version still alive, or is the folder stale).
A zombie counts as gone. On Windows ``os.kill(pid, 0)`` is not a probe (signal 0 is ``CTRL_C_EVENT`` there), so the
process list is read from a Toolhelp32 snapshot instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict

__all__ = ["IS_WINDOWS", "is_running", "windows_parents"]

IS_WINDOWS = sys.platform == "win32"


def windows_parents() -> Dict[int, int]:
    """``{pid: parent pid}`` of every process, from a Toolhelp32 snapshot (kernel32, no extra tool needed)."""
    import ctypes
    from ctypes import wintypes

    class PROCESSENTRY32W(ctypes.Structure):
        _fields_ = [
            ("dwSize", wintypes.DWORD),
            ("cntUsage", wintypes.DWORD),
            ("th32ProcessID", wintypes.DWORD),
            ("th32DefaultHeapID", ctypes.c_size_t),
            ("th32ModuleID", wintypes.DWORD),
            ("cntThreads", wintypes.DWORD),
            ("th32ParentProcessID", wintypes.DWORD),
            ("pcPriClassBase", ctypes.c_long),
            ("dwFlags", wintypes.DWORD),
            ("szExeFile", wintypes.WCHAR * 260),
        ]

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


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if IS_WINDOWS:
        return pid in windows_parents()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
        return stat[stat.rfind(")") + 2 :].split()[0] != "Z"
    except OSError:
        pass
    if os.path.isdir("/proc"):
        return False  # the /proc entry vanished between the two looks
    try:  # macOS: a zombie still answers kill(pid, 0)
        state = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return True
    return bool(state) and not state.startswith("Z")
