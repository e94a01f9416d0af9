"""`assft evaluate` as a user types it: the per-class table printed and written as CSV and Markdown."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_card, synthetic_case, worker_env, write_dataset

from ASSFTActive.cli import main
from ASSFTActive.io import Volume, write_volume

HIPPOCAMPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus"


#: In-process runs use one thread (the conftest fixture), like the worker subprocesses.
pytestmark = pytest.mark.usefixtures("one_thread")

#: The synthetic world's labels are painted boxes scored against a random tiny model: the label checks refuse them
#: (a box, far from the prediction), so the tests of the table itself score them anyway.
SYNTHETIC = ("--allow-implausible-labels",)
SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample" / "test"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-evaluate")
    card = make_tiny_card(tmp / "base")
    write_dataset(tmp / "data", count=4, labeled=3)
    return {"card": card, "images": tmp / "data" / "images", "labels": tmp / "data" / "labels", "tmp": tmp}


def test_evaluate_prints_the_table_and_writes_csv_and_markdown(world, capsys):
    out = world["tmp"] / "eval"
    code = main(
        [
            "evaluate",
            "--images",
            str(world["images"]),
            "--labels",
            str(world["labels"]),
            "--model",
            str(world["card"]),
            "--out",
            str(out),
            "--quiet",
            *SYNTHETIC,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| class | Dice | HD95 (mm) |" in printed and "| box_a |" in printed and "| box_b |" in printed
    assert "on 3 labelled volume(s)" in printed and str(out / "evaluation.csv") in printed
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert [r["case_id"] for r in rows] == ["case_000", "case_001", "case_002", "mean"]
    assert {"dice_box_a", "dice_box_b", "hd95_box_a", "hd95_box_b"} <= set(rows[0])
    mean = np.mean([float(r["dice_box_a"]) for r in rows[:3]])
    assert float(rows[3]["dice_box_a"]) == pytest.approx(mean, abs=1e-3)
    assert (out / "evaluation.md").read_text().count("| box_") == 2


def test_a_label_that_does_not_fit_is_skipped_with_a_warning(world, capsys, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("case_000.nii.gz", "case_001.nii.gz"):
        (labels / name).write_bytes((world["labels"] / name).read_bytes())
    _, label, affine = synthetic_case(0)
    write_volume(Volume(label[:-1], affine), labels / "case_002.nii.gz")
    code = main(
        [
            "evaluate",
            "--images",
            str(world["images"]),
            "--labels",
            str(labels),
            "--model",
            str(world["card"]),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
            "--no-hd95",
            *SYNTHETIC,
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "on 2 labelled volume(s); 1 skipped" in captured.out
    assert "skipped" in captured.err and "case_002.nii.gz" in captured.err


def test_no_matching_labels_is_an_error(world, capsys, tmp_path):
    (tmp_path / "none").mkdir()
    code = main(
        [
            "evaluate",
            "--images",
            str(world["images"]),
            "--labels",
            str(tmp_path / "none"),
            "--model",
            str(world["card"]),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "no label file is named like an image" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_evaluate_the_default_model_on_real_hippocampus_volumes(tmp_path):
    if not (HIPPOCAMPUS / "imagesTr").is_dir():
        pytest.skip(f"needs the MSD hippocampus data in {HIPPOCAMPUS} (shared data, absent in a bare clone)")
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for case in ("hippocampus_001", "hippocampus_007"):  # source-split training cases, not reserved
        (images / f"{case}.nii.gz").symlink_to(HIPPOCAMPUS / "imagesTr" / f"{case}.nii.gz")
        (labels / f"{case}.nii.gz").symlink_to(HIPPOCAMPUS / "labelsTr" / f"{case}.nii.gz")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ASSFTActive",
            "evaluate",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
        ],
        cwd=str(tmp_path),
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation.csv").open()))
    assert float(rows[-1]["dice_anterior"]) > 0.5 and float(rows[-1]["dice_posterior"]) > 0.5
    assert "| anterior |" in done.stdout and "| posterior |" in done.stdout


def _wrong(label: np.ndarray, kind: str) -> np.ndarray:
    """A label the label checks must refuse, made from a real one."""
    where = np.nonzero(label)
    if kind == "all_zero":
        return np.zeros_like(label)
    if kind == "one_voxel_per_class":
        out = np.zeros_like(label)
        for c in (1, 2):
            out[tuple(int(w[0]) for w in np.nonzero(label == c))] = c
        return out
    if kind == "filled_box":
        out = np.zeros_like(label)
        out[tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)] = 1
        out[tuple(slice(int(w.min()), int(w.min()) + 2) for w in where)] = 2
        return out
    if kind == "only_one_class":
        return np.where(label == 1, 1, 0).astype(label.dtype)
    if kind == "binary_0_1":
        return (label > 0).astype(label.dtype)
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, said",
    [
        ("all_zero", "only background"),
        ("one_voxel_per_class", "spans only 1 slice"),
        ("filled_box", "of its bounding box"),
        ("only_one_class", "appears in none"),
        ("binary_0_1", "appears in none"),
    ],
)
def test_evaluate_refuses_labels_the_label_checks_refuse(tmp_path, capsys, kind, said):
    from ASSFTActive.io import read_volume

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    case = sorted((SAMPLE / "images").glob("*.nii.gz"))[0]
    (images / case.name).symlink_to(case)
    truth = read_volume(SAMPLE / "labels" / case.name)
    write_volume(truth.with_array(_wrong(np.asarray(truth.array), kind)), labels / case.name)
    code = main(
        [
            "evaluate",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
            "--no-hd95",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()
    code = main(
        [
            "evaluate",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
            "--no-hd95",
            "--allow-implausible-labels",
        ]
    )
    assert code == 0 and "allowed" in capsys.readouterr().err


def test_evaluate_scores_the_true_sample_labels_without_a_label_warning(tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--images",
            str(SAMPLE / "images"),
            "--labels",
            str(SAMPLE / "labels"),
            "--out",
            str(tmp_path / "eval"),
            "--quiet",
            "--no-hd95",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and "skipped" not in captured.out and "allowed" not in captured.err
