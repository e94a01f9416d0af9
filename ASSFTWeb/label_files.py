"""Saving a volume's class label map next to the data: atomically, never over an existing file silently, and never
through a symbolic link.

An existing label file is moved into ``<labels>/backup/`` (with the time it was replaced in its name) before the
new one takes its place; the new file is written to a temporary name first and renamed (``ASSFTActive.io``), so a
crash leaves either the old or the new file, never half of one.

Links: the labels folder, its ``backup`` folder and the label file itself must not be symbolic links, checked when
the server starts (:func:`check_labels_folder`) and again at every save; the backup is made relative to folders
opened with ``O_NOFOLLOW``, so a link planted in ``labels/`` never sends a file outside it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ASSFTActive.errors import OutputError
from ASSFTActive.io import Volume, write_volume

#: Suffix of the label files written by the browser annotator (what ``assft rank --labels`` reads).
LABEL_SUFFIX = ".nii.gz"
BACKUP_FOLDER = "backup"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


@dataclass(frozen=True)
class SavedLabel:
    """Where :func:`save_label_file` wrote, and where the file it replaced went (None when there was none)."""

    path: Path
    backup: Optional[Path]


def label_path(labels_dir, case_id: str) -> Path:
    return Path(labels_dir) / f"{case_id}{LABEL_SUFFIX}"


def backup_path(labels_dir, case_id: str, now: Optional[float] = None) -> Path:
    """A not yet existing ``<labels>/backup/<case>.<YYYYmmdd-HHMMSS>[-n].nii.gz``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    folder = Path(labels_dir) / BACKUP_FOLDER
    candidate = folder / f"{case_id}.{stamp}{LABEL_SUFFIX}"
    n = 1
    while os.path.lexists(candidate):
        candidate = folder / f"{case_id}.{stamp}-{n}{LABEL_SUFFIX}"
        n += 1
    return candidate


def _link_error(path: Path) -> OutputError:
    return OutputError(
        f"{path} is a symbolic link; ASSFT never writes labels through a link (it could send them "
        "outside the labels folder). Replace the link with a real folder or file (or pass the folder "
        "it points to as --labels) and try again."
    )


def check_labels_folder(labels_dir) -> None:
    """Refuse a labels folder that is, or holds a ``backup`` that is, a symbolic link, or whose real path is not
    its path (a parent was replaced by a link after the server resolved it at start).

    Raises:
        OutputError: naming the link and what to do.
    """
    folder = Path(labels_dir)
    for path in (folder, folder / BACKUP_FOLDER):
        if path.is_symlink():
            raise _link_error(path)
    if folder.exists() and os.path.realpath(folder) != os.path.abspath(folder):
        raise OutputError(
            f"{folder} now leads elsewhere ({os.path.realpath(folder)}): one of its parent folders "
            "became a symbolic link after the server started. Restart assft serve."
        )


def _open_folder(path: Path) -> int:
    """A descriptor of the folder ``path``, refusing a link in its place."""
    try:
        return os.open(str(path), os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        if path.is_symlink():
            raise _link_error(path) from exc
        raise OutputError(f"{path}: cannot be opened ({exc.strerror or exc}).") from exc


def _keep_previous(labels: Path, name: str, backup: Path) -> None:
    """Hard-link (else copy) ``labels/name`` as ``backup``, every step relative to folders opened without following
    links, so neither the file nor the backup folder can be swapped for a link on the way."""
    folder = _open_folder(labels)
    try:
        try:
            os.mkdir(BACKUP_FOLDER, dir_fd=folder)
        except FileExistsError:
            pass
        backups = os.open(BACKUP_FOLDER, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=folder)
    except OSError as exc:
        os.close(folder)
        if (labels / BACKUP_FOLDER).is_symlink():
            raise _link_error(labels / BACKUP_FOLDER) from exc
        raise OutputError(f"{labels / BACKUP_FOLDER}: cannot be used ({exc.strerror or exc}).") from exc
    try:
        try:  # a hard link keeps the old file complete in both places until the rename that follows
            os.link(name, backup.name, src_dir_fd=folder, dst_dir_fd=backups, follow_symlinks=False)
            return
        except OSError:
            pass  # a file system without hard links: copy
        source = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=folder)
        try:
            target = os.open(backup.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=backups)
            try:
                while True:
                    chunk = os.read(source, 1 << 20)
                    if not chunk:
                        break
                    os.write(target, chunk)
            finally:
                os.close(target)
        finally:
            os.close(source)
    finally:
        os.close(backups)
        os.close(folder)


def save_label_file(labels: Volume, labels_dir, case_id: str) -> SavedLabel:
    """Write ``labels`` (class indices ``[I, J, K]`` with the image's affine) as ``<labels_dir>/<case_id>.nii.gz``.

    Returns:
        :class:`SavedLabel`; ``backup`` is the earlier file's new place when one existed.

    Raises:
        OutputError: the labels folder, its backup folder or the label file is a symbolic link (nothing is written),
            or the folder cannot be written.
    """
    folder = Path(labels_dir)
    target = label_path(folder, case_id)
    check_labels_folder(folder)
    if target.is_symlink():
        raise _link_error(target)
    folder.mkdir(parents=True, exist_ok=True)
    check_labels_folder(folder)
    backup = None
    if target.exists():
        backup = backup_path(folder, case_id)
        _keep_previous(folder, target.name, backup)
    write_volume(labels, target)  # temporary file + rename: the old file stays complete until the new one is
    return SavedLabel(path=target, backup=backup)
