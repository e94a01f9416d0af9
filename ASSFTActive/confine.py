"""Writes confined to one folder: no write inside it goes through a symbolic link, even one planted mid-job.

The worker writes only inside its job folder. Checking the folder for links when the job starts is not enough: a link
planted a moment later (``predictions/`` -> elsewhere) would redirect every later ``mkdir`` and rename. While
:func:`confined_to` is active, every atomic write of :mod:`ASSFTActive.io` and every move of :func:`replace_into`
below the root reaches its folder one component at a time from the root, each opened with ``O_NOFOLLOW`` relative to
its parent's descriptor (``openat``), creating missing folders the same way; the file is then created and renamed
relative to that descriptor. A link anywhere on the way is refused with an :class:`~ASSFTActive.errors.OutputError`
naming it, at the moment of the write, and nothing is written through it.

Standard library only. Paths outside the root are written as before (the model store, a user's output folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import OutputError

__all__ = ["confined_to", "confinement_root", "open_folder", "replace_into", "write_confined"]

_GLOBAL: dict = {"root": None}

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: openat-style calls exist (POSIX); elsewhere the checks fall back to ``lstat`` of every component.
_DIR_FD = os.open in os.supports_dir_fd and os.replace in getattr(os, "supports_dir_fd", set())


def output_mode(folder: bool = False) -> int:
    """The permission bits every output gets: ``0666`` (a file) or ``0777`` (a folder) less the process's umask,
    i.e. what ``open``/``mkdir`` would give (``0644``/``0755`` under the usual umask). ``mkstemp``/``mkdtemp``
    create ``0600``/``0700``, which would hide a ranking or a model version from the rest of a lab sharing the
    folder."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


@contextlib.contextmanager
def confined_to(root: Path) -> Iterator[Path]:
    """Confine every write below ``root`` (resolved) for the block, in every thread of the process."""
    previous = _GLOBAL["root"]
    _GLOBAL["root"] = Path(root).resolve()
    try:
        yield _GLOBAL["root"]
    finally:
        _GLOBAL["root"] = previous


def confinement_root(path: Path) -> Optional[Path]:
    """The active root when ``path`` lies below it (not through ``..``), else ``None``."""
    root = _GLOBAL["root"]
    if root is None:
        return None
    path = Path(os.path.abspath(path))
    try:
        path.relative_to(root)
    except ValueError:
        return None
    return root


def _refuse(link: Path) -> OutputError:
    return OutputError(
        f"{link}: a symbolic link (or something other than a folder) where the job writes; the worker "
        "writes only plain files inside its job folder and does not follow links. Remove it and run the "
        "job again."
    )


def open_folder(folder: Path, root: Path) -> int:
    """A descriptor of ``folder`` (below ``root``), reached from ``root`` one component at a time without following a
    link, missing folders created on the way. The caller closes it.

    Raises:
        OutputError: a component is a link or not a folder (named), or cannot be created.
    """
    relative = Path(os.path.abspath(folder)).relative_to(root)
    fd = os.open(str(root), os.O_RDONLY | _DIRECTORY)
    here = root
    try:
        for part in relative.parts:
            here = here / part
            try:
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise OutputError(f"{here}: cannot be created ({exc.strerror or exc}).") from exc
            try:
                child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _refuse(here) from exc
                raise OutputError(f"{here}: cannot be opened ({exc.strerror or exc}).") from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_components(folder: Path, root: Path) -> None:
    """Fallback without ``openat``: every component from ``root`` to ``folder`` is a real folder (``lstat``)."""
    here = root
    for part in Path(os.path.abspath(folder)).relative_to(root).parts:
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            raise _refuse(here)
        here.mkdir(exist_ok=True)


def replace_into(source: Path, target: Path) -> Path:
    """``os.replace(source, target)``; below the confinement root the target's folder is reached without links."""
    root = confinement_root(target)
    if root is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target
    if not _DIR_FD:
        _check_components(target.parent, root)
        os.replace(source, target)
        return target
    fd = open_folder(target.parent, root)
    try:
        os.replace(str(source), target.name, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return target


def write_confined(path: Path, write: Callable[[Path], None], suffix: str, mode: int) -> bool:
    """Write ``path`` atomically below the confinement root: a temporary file created ``O_EXCL | O_NOFOLLOW`` in the
    folder reached without links, filled by ``write(tmp_path)``, given ``mode``, renamed relative to the folder's
    descriptor. Returns ``False`` (nothing done) when ``path`` is not below the root, so the caller writes as usual.

    On Linux ``tmp_path`` goes through ``/proc/self/fd/<folder>``, so even a writer that takes a path (nibabel) cannot
    be redirected by a link planted after the folder was opened.
    """
    root = confinement_root(path)
    if root is None:
        return False
    if not _DIR_FD:
        _check_components(path.parent, root)
        return False
    fd = open_folder(path.parent, root)
    try:
        name = f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}"
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=fd))
        via_fd = Path(f"/proc/self/fd/{fd}")
        tmp = via_fd / name if via_fd.is_dir() else path.parent / name
        try:
            write(tmp)
            if os.chmod in os.supports_dir_fd:
                os.chmod(name, mode, dir_fd=fd)
            else:
                os.chmod(tmp, mode)
            os.replace(name, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
            raise
    finally:
        os.close(fd)
    return True
