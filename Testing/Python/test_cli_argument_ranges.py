"""Inputs the commands used to take silently: overlay settings outside their range, label files without an image,
and a re-ranking into a folder that still holds the files of volumes that left the pool."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ASSFTActive.api import remove_stale_outputs
from ASSFTActive.cli import main
from ASSFTActive.inference.overlay import OverlayConfig
from ASSFTActive.io import match_labels

REPO = Path(__file__).resolve().parents[2]
SAMPLE_POOL = REPO / "ASSFTActive" / "resources" / "sample" / "pool"
POOL_IMAGES = sorted((SAMPLE_POOL / "images").glob("*.nii.gz"))


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--threshold", "1.5"], "threshold"),
        (["--threshold", "0"], "threshold"),
        (["--threshold", "-0.2"], "threshold"),
        (["--max-regions", "0"], "max_regions"),
        (["--max-regions", "-1"], "max_regions"),
    ],
)
def test_overlay_settings_outside_their_range_are_one_error_line(tmp_path, capsys, arguments, named):
    code = main(["overlay", "--image", str(POOL_IMAGES[0]), "--out", str(tmp_path / "ov"), *arguments])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and named in err and "Traceback" not in err
    assert not (tmp_path / "ov").exists()


def test_overlay_config_accepts_its_documented_range():
    assert OverlayConfig(threshold=0.01, max_regions=1).max_regions == 1
    with pytest.raises(ValueError, match="threshold"):
        OverlayConfig(threshold=1.0)
    with pytest.raises(ValueError, match="min_voxels"):
        OverlayConfig(min_voxels=0)


def test_a_label_file_without_an_image_is_reported(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / f"{POOL_IMAGES[0].name}").write_bytes(b"x")
    (labels / "hippocampus_999.nii.gz").write_bytes(b"x")
    said = []
    matched = match_labels(POOL_IMAGES, labels, warn=said.append)
    assert list(matched) == [POOL_IMAGES[0].name[: -len(".nii.gz")]]
    assert len(said) == 1 and "hippocampus_999.nii.gz" in said[0] and "match no image" in said[0]


def _one_image_and_an_orphan_label(tmp_path):
    """``(images, labels)`` folders: one sample image with its label, and a label ``hippocampus_999`` without one."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    shutil.copy(POOL_IMAGES[0], images)
    shutil.copy(SAMPLE_POOL / "labels" / POOL_IMAGES[0].name, labels)
    shutil.copy(SAMPLE_POOL / "labels" / POOL_IMAGES[0].name, labels / "hippocampus_999.nii.gz")
    return images, labels


def test_evaluate_warns_about_a_label_without_an_image(tmp_path, capsys):
    images, labels = _one_image_and_an_orphan_label(tmp_path)
    code = main(
        [
            "evaluate",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "ev"),
            "--no-hd95",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    assert "warning:" in err and "hippocampus_999.nii.gz" in err


def test_reranking_a_smaller_pool_removes_the_files_of_the_volumes_that_left(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    for path in POOL_IMAGES[:2]:
        shutil.copy(path, pool)
    out = tmp_path / "out"
    assert main(["rank", "--images", str(pool), "--budget", "1", "--out", str(out), "--quiet"]) == 0
    gone = POOL_IMAGES[1].name[: -len(".nii.gz")]
    stale = [
        out / "overlays" / f"{gone}_entropy.nii.gz",
        out / "overlays" / f"{gone}_regions.json",
        out / "predictions" / f"{gone}.nii.gz",
    ]
    assert all(p.is_file() for p in stale)
    (out / "overlays" / "notes.txt").write_text("mine")  # not a ranking file: never touched
    (pool / POOL_IMAGES[1].name).unlink()
    capsys.readouterr()
    assert main(["rank", "--images", str(pool), "--budget", "1", "--out", str(out), "--quiet"]) == 0
    assert not any(p.exists() for p in stale)
    assert (out / "overlays" / "notes.txt").read_text() == "mine"
    kept = POOL_IMAGES[0].name[: -len(".nii.gz")]
    assert (out / "predictions" / f"{kept}.nii.gz").is_file()
    assert "removed 3 file(s)" in capsys.readouterr().err


def test_a_folder_without_a_ranking_is_left_alone(tmp_path):
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "a.nii.gz").write_bytes(b"x")
    assert remove_stale_outputs(tmp_path, ["b"]) == []
    assert (tmp_path / "predictions" / "a.nii.gz").exists()


def test_adapt_warns_about_a_label_without_an_image(tmp_path, capsys):
    images, labels = _one_image_and_an_orphan_label(tmp_path)
    main(
        [
            "adapt",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--store",
            str(tmp_path / "store"),
            "--iterations",
            "1",
            "--semi-iterations",
            "1",
            "--batch-size",
            "1",
            "--patch-size",
            "16",
            "16",
            "16",
            "--pseudo",
            "none",
            "--no-guard",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert "warning:" in err and "hippocampus_999.nii.gz" in err and "match no image" in err
