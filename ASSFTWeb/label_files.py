"""Saving a volume's class label map next to the data: atomically, and never over an existing file silently.

An existing label file is moved into ``<labels>/backup/`` (with the time it was replaced in its name) before the
new one takes its place; the new file is written to a temporary name first and renamed (``ASSFTActive.io``), so a
crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ASSFTActive.io import Volume, write_volume

#: Suffix of the label files written by the browser annotator (what ``assft rank --labels`` reads).
LABEL_SUFFIX = ".nii.gz"
BACKUP_FOLDER = "backup"


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
    while candidate.exists():
        candidate = folder / f"{case_id}.{stamp}-{n}{LABEL_SUFFIX}"
        n += 1
    return candidate


def save_label_file(labels: Volume, labels_dir, case_id: str) -> SavedLabel:
    """Write ``labels`` (class indices ``[I, J, K]`` with the image's affine) as ``<labels_dir>/<case_id>.nii.gz``.

    Returns:
        :class:`SavedLabel`; ``backup`` is the earlier file's new place when one existed.
    """
    target = label_path(labels_dir, case_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if target.exists():
        backup = backup_path(labels_dir, case_id)
        backup.parent.mkdir(parents=True, exist_ok=True)
        try:  # a hard link keeps the old file complete in both places until the rename below
            os.link(str(target), str(backup))
        except (OSError, AttributeError):
            shutil.copy2(str(target), str(backup))
    write_volume(labels, target)  # temporary file + rename: the old file stays complete until the new one is
    return SavedLabel(path=target, backup=backup)
