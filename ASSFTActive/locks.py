"""An exclusive lock on a folder, so that two processes never share one (e.g. ``assft adapt --work-dir``).

Two runs sharing a checkpoint folder delete and overwrite each other's checkpoints. :func:`folder_lock` holds an
operating-system lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on ``<folder>/.assft.lock`` for as long
as the ``with`` block runs; the system releases it when the process dies, even after ``kill -9``, so a stale lock
never blocks the next run.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import InputError, OutputError

__all__ = ["LOCK_FILE", "folder_lock"]

LOCK_FILE = ".assft.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str = "folder") -> Iterator[Path]:
    """Hold the lock of ``folder`` (created if needed) while the block runs.

    Args:
        folder: the folder to lock.
        what: how the user names it in messages (e.g. ``--work-dir``).

    Raises:
        InputError: another process holds the lock.
        OutputError: the folder or its lock file cannot be created.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    fd = _open_locked(folder, path, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        yield path
        _remove_lock_file(folder, path)
    finally:
        os.close(fd)  # closing releases the lock


#: How often :func:`folder_lock` starts again when the lock file it opened was removed by a releasing holder.
_ATTEMPTS = 50


def _open_locked(folder: Path, path: Path, what: str) -> int:
    """An open descriptor of ``path`` holding the lock, where ``path`` still names the locked file.

    A holder removes the lock file (and an empty folder) at release. A process that opened the file just before
    that removal may win the lock on the removed file while a third one creates and locks a new file: two holders.
    So after winning, the descriptor must still be the file at ``path`` (same device and inode); otherwise, and
    when the folder vanished between creating and opening, start again.
    """
    for _ in range(_ATTEMPTS):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileNotFoundError:
            continue  # the folder was removed by a releasing holder between mkdir and open
        except FileExistsError:
            if _is_non_folder(folder):
                raise OutputError(f"{folder}: cannot create the {what}: a file is in the way.") from None
            continue  # mkdir raced with a holder removing and another recreating the folder
        except OSError as exc:
            raise OutputError(f"{folder}: cannot create the lock file of the {what} ({exc.strerror or exc}).") from exc
        if not _try_lock(fd):
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() if hasattr(os, "pread") else "?"
            os.close(fd)
            raise InputError(
                f"{folder}: the {what} is in use by another process (pid {holder or '?'}); two runs "
                f"must not share it. Wait for that run or choose another {what}."
            )
        if _same_file(fd, path):
            return fd
        os.close(fd)  # we locked a file that its holder removed at release: not the lock any more
    raise OutputError(
        f"{folder}: could not take the lock of the {what} after {_ATTEMPTS} attempts (other runs keep "
        "starting and stopping on it); try again."
    )


def _is_non_folder(path: Path) -> bool:
    """``path`` exists and is not a folder (one ``stat``, so a folder removed and recreated meanwhile is not taken
    for a file)."""
    try:
        return not stat.S_ISDIR(os.stat(str(path)).st_mode)
    except OSError:
        return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(str(path), follow_symlinks=False)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _remove_lock_file(folder: Path, path: Path) -> None:
    """While still holding the lock: remove the lock file, and the folder when nothing else is left in it (a
    finished ``assft adapt`` leaves no empty work folder behind)."""
    try:
        path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass  # best effort: a left-over lock file does no harm (the lock is the open file, not the file)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
