"""A label file whose voxels carry 255 ("not annotated", :mod:`ASSFTActive.partial`) is named in the report.

255 is never a class: such voxels are left out of the score and the training. Before, ``assft evaluate`` and
``assft adapt`` did so without a word, so a 0/255 mask exported by an image editor, or a stray 255, was read as a
partial label silently (red-team catalogue 1.2 ``eval_val255``, ``adapt_val255``, which expected a refusal before
255 meant "not annotated").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from ASSFTActive.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample"


def _data(tmp_path: Path, stray: int):
    """The sample's first test image and its label with ``stray`` foreground voxels set to 255."""
    image = sorted((SAMPLE / "test" / "images").glob("*.nii.gz"))[0]
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    shutil.copy(image, images / image.name)
    label = nib.load(str(SAMPLE / "test" / "labels" / image.name))
    array = np.asarray(label.dataobj).astype(np.uint8)
    where = np.argwhere(array > 0)[:stray]
    array[tuple(where.T)] = 255
    nib.save(nib.Nifti1Image(array, label.affine), str(labels / image.name))
    return images, labels, image.name.split(".")[0]


def test_evaluate_names_the_label_files_whose_voxels_are_marked_not_annotated(tmp_path, capsys):
    images, labels, case = _data(tmp_path, stray=5)
    code = main(
        ["evaluate", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "ev")]
        + ["--no-hd95", "--quiet"]
    )
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if "not annotated (255)" in line)
    assert f"{case} (5 voxels)" in line and "annotated voxels only" in line


def test_evaluate_of_full_labels_prints_no_partial_label_line(tmp_path, capsys):
    images, labels, _ = _data(tmp_path, stray=0)
    code = main(
        ["evaluate", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "ev")]
        + ["--no-hd95", "--quiet"]
    )
    assert code == 0 and "not annotated" not in capsys.readouterr().out


def test_adapt_summary_names_the_label_files_whose_voxels_are_marked_not_annotated(tmp_path, capsys):
    images, labels, case = _data(tmp_path, stray=7)
    args = ["adapt", "--images", str(images), "--labels", str(labels), "--store", str(tmp_path / "store")]
    args += ["--iterations", "1", "--semi-iterations", "1", "--batch-size", "1", "--patch-size", "32", "32", "32"]
    args += ["--pseudo", "none", "--no-guard", "--quiet", "--device", "cpu"]
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if "not annotated (255)" in line)
    assert f"{case} (7 voxels)" in line and "trained on their annotated voxels only" in line
