"""A pool entry named like an image that is not a file (a folder, a dangling link, a link loop) is refused by name.

Before, ``find_images`` kept only regular files, so such an entry was left out of the ranking without a word: a
user who exported a DICOM series into a folder called ``case.nii.gz``, or whose link broke, got a ranking that
silently lacked the volume (red-team catalogue 1.1 ``rank_dir``, ``rank_loop``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ASSFTActive.cli import main
from ASSFTActive.errors import InputError
from ASSFTActive.io import find_images, read_volume

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample"
POOL = sorted((SAMPLE / "pool" / "images").glob("*.nii.gz"))


def _pool(tmp_path: Path, kind: str) -> Path:
    """Two good sample volumes and ``zz_bad.nii.gz`` of ``kind``."""
    images = tmp_path / "images"
    images.mkdir()
    for path in POOL[:2]:
        shutil.copy(path, images / path.name)
    bad = images / "zz_bad.nii.gz"
    if kind == "folder":
        bad.mkdir()
    elif kind == "loop":
        os.symlink(bad.name, bad)
    else:
        os.symlink(tmp_path / "gone.nii.gz", bad)
    return images


WHAT = {"folder": "is a folder", "loop": "link that leads to no file", "dangling": "link that leads to no file"}


@pytest.mark.parametrize("kind", sorted(WHAT))
def test_find_images_refuses_an_entry_named_like_an_image_that_is_not_a_file(tmp_path, kind):
    images = _pool(tmp_path, kind)
    for spec in (images, str(images / "*.nii.gz")):
        with pytest.raises(InputError, match=WHAT[kind]) as caught:
            find_images(spec)
        assert "zz_bad.nii.gz" in str(caught.value)


def test_hidden_entries_and_other_names_are_still_left_out(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(POOL[0], images / POOL[0].name)
    (images / ".hidden.nii.gz").mkdir()
    (images / "notes").mkdir()
    assert [p.name for p in find_images(images)] == [POOL[0].name]


@pytest.mark.parametrize("kind", ["folder", "loop"])
def test_rank_refuses_a_pool_entry_that_is_not_a_file_with_one_error_line(tmp_path, capsys, kind):
    images = _pool(tmp_path, kind)
    out = tmp_path / "out"
    code = main(["rank", "--images", str(images), "--budget", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "zz_bad.nii.gz" in lines[0] and WHAT[kind] in lines[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_reading_a_folder_or_a_link_loop_says_what_it_is_not_file_not_found(tmp_path):
    folder = tmp_path / "case.nii.gz"
    folder.mkdir()
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop.name, loop)
    with pytest.raises(InputError, match="is a folder, not an image file"):
        read_volume(folder)
    with pytest.raises(InputError, match="link that leads to no file"):
        read_volume(loop)
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_file_this_user_may_not_read_is_refused_as_a_permission_problem_not_as_corrupt(tmp_path, monkeypatch, suffix):
    """What uid nobody saw for a mode-000 file (red-team 1.1 ``*_noperm_nobody``: "compressed data are corrupt").

    Root reads a mode-000 file, so under root the opener (``gzip.open`` or ``nibabel.load``) raises what the kernel
    gives any other user: ``PermissionError(13)``.
    """
    import gzip

    import nibabel as nib

    path = tmp_path / f"locked{suffix}"
    nib.save(nib.load(str(POOL[0])), str(path))
    path.chmod(0)
    if os.geteuid() == 0:
        real_gzip_open, real_load = gzip.open, nib.load

        def guarded(opener):
            def open_(file, *args, **kwargs):
                if str(file) == str(path):
                    raise PermissionError(13, "Permission denied", str(path))
                return opener(file, *args, **kwargs)

            return open_

        monkeypatch.setattr(gzip, "open", guarded(real_gzip_open))
        monkeypatch.setattr(nib, "load", guarded(real_load))
    with pytest.raises(InputError) as caught:
        read_volume(path)
    message = str(caught.value)
    assert "permission denied" in message and "locked" in message
    assert "corrupt" not in message and "truncated" not in message
