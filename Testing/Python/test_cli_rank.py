"""`assft rank` and `assft overlay` as a user types them: outputs, geometry, and every bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ASSFTActive.io import Volume, read_volume, write_volume
from ASSFTActive.models import ModelCard, build_network, save_card, save_weights

REPO = Path(__file__).resolve().parents[2]
SAMPLE_POOL = REPO / "ASSFTActive" / "resources" / "sample" / "pool"


def assft(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ASSFTActive", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    out = tmp_path_factory.mktemp("rank")
    done = assft("rank", "--images", str(SAMPLE_POOL / "images"), "--budget", "3", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    return out, done


def test_rank_writes_a_full_ranking_with_the_budget_selected(ranked):
    out, done = ranked
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert len(rows) == 12 and [int(r["rank"]) for r in rows] == list(range(1, 13))
    assert sum(r["selected"] == "True" for r in rows) == 3
    payload = json.loads((out / "ranking.json").read_text())
    assert payload["strategy"] == "assft" and payload["budget"] == 3
    assert all(0.0 <= c["asd"] <= 1.0 and c["dkd"] >= 0 for c in payload["cases"])
    selected = [c["case_id"] for c in payload["cases"] if c["selected"]]
    assert "proposed for annotation: " + ", ".join(selected) in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["query"]["strategy"] == "assft" and config["model_card"]["name"] == "hippocampus-unet"
    assert config["encoders_identical"] is True  # cold start: DKD is diversity alone


def test_rank_overlays_and_predictions_lie_on_each_input_grid(ranked):
    out, _ = ranked
    for image_path in sorted((SAMPLE_POOL / "images").glob("*.nii.gz"))[:3]:
        case = image_path.name[: -len(".nii.gz")]
        image = read_volume(image_path)
        entropy = read_volume(out / "overlays" / f"{case}_entropy.nii.gz")
        prediction = read_volume(out / "predictions" / f"{case}.nii.gz")
        for result in (entropy, prediction):
            assert result.shape == image.shape
            np.testing.assert_allclose(result.affine, image.affine, atol=1e-6)
        assert 0.0 <= entropy.array.min() and entropy.array.max() <= 1.0
        assert set(np.unique(prediction.array)) <= {0, 1, 2} and (prediction.array > 0).any()
        regions = json.loads((out / "overlays" / f"{case}_regions.json").read_text())
        for region in regions["regions"]:
            centre_ijk = np.linalg.inv(image.affine) @ np.array(region["center_ras"] + [1.0])
            assert np.all(centre_ijk[:3] >= np.array(region["bbox_ijk_min"]) - 0.5)
            assert np.all(centre_ijk[:3] <= np.array(region["bbox_ijk_max"]) + 0.5)


def test_labeled_volumes_are_not_proposed_again(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    first_two = sorted((SAMPLE_POOL / "labels").glob("*.nii.gz"))[:2]
    for path in first_two:
        shutil.copy(path, labels / path.name)
    done = assft(
        "rank",
        "--images",
        str(SAMPLE_POOL / "images"),
        "--labels",
        str(labels),
        "--budget",
        "4",
        "--strategy",
        "coreset",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--no-overlays",
    )
    assert done.returncode == 0, done.stderr
    cases = json.loads((tmp_path / "out" / "ranking.json").read_text())["cases"]
    labeled = {c["case_id"] for c in cases if c["labeled"]}
    assert labeled == {p.name[: -len(".nii.gz")] for p in first_two}
    assert not labeled & {c["case_id"] for c in cases if c["selected"]}
    assert not (tmp_path / "out" / "overlays").exists()


def _pool_with(tmp_path: Path, bad_name: str, write_bad) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((SAMPLE_POOL / "images").glob("*.nii.gz"))[:2]:
        shutil.copy(path, images / path.name)
    write_bad(images / bad_name)
    return images


BAD_INPUTS = {
    "corrupt": ("zz_corrupt.nii.gz", lambda p: p.write_bytes(b"\x1f\x8b\x08garbage"), "cannot read the file"),
    "two_d": (
        "zz_flat.nii.gz",
        lambda p: nib.save(nib.Nifti1Image(np.zeros((9, 9), np.float32), np.eye(4)), str(p)),
        "2D",
    ),
    "four_d": (
        "zz_series.nii.gz",
        lambda p: nib.save(nib.Nifti1Image(np.zeros((9, 9, 9, 2), np.float32), np.eye(4)), str(p)),
        "4D",
    ),
    "nan": (
        "zz_nan.nii.gz",
        lambda p: nib.save(nib.Nifti1Image(np.full((9, 9, 9), np.nan, np.float32), np.eye(4)), str(p)),
        "729 voxels are NaN",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_ends_with_one_clear_error_and_no_output(tmp_path, kind):
    name, write_bad, message = BAD_INPUTS[kind]
    images = _pool_with(tmp_path, name, write_bad)
    out = tmp_path / "out"
    done = assft("rank", "--images", str(images), "--budget", "1", "--out", str(out), "--quiet")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and name in done.stderr and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists() or [p for p in out.rglob("*") if p.is_file()] == []


def test_missing_images_and_broken_model_card_are_reported(tmp_path):
    done = assft("rank", "--images", str(tmp_path / "nowhere"), "--budget", "1", "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "no NIfTI/NRRD/MetaImage files found" in done.stderr
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "x"}))
    done = assft(
        "rank",
        "--images",
        str(SAMPLE_POOL / "images"),
        "--budget",
        "1",
        "--model",
        str(card),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 2 and "missing required field(s)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # a whole overlay pass of the default model over a 256x256x25 brain MRI: 14 s on 2 cores
def test_overlay_command_on_an_anisotropic_rotated_nrrd_fixture(fixtures_dir, tmp_path):
    image_path = fixtures_dir / "pyradiomics" / "brain1_image.nrrd"
    done = assft("overlay", "--image", str(image_path), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    image = read_volume(image_path)
    entropy = read_volume(tmp_path / "brain1_image_entropy.nii.gz")
    assert entropy.shape == image.shape and len(set(np.round(image.spacing, 3))) > 1
    np.testing.assert_allclose(entropy.affine, image.affine, atol=1e-5)
    assert "entropy map:" in done.stdout


def test_multiclass_ct_model_ranks_the_ct_fixture_with_class_balanced_asd(fixtures_dir, tmp_path):
    """A generic MONAI card with 8 CT classes (random weights): geometry and multi-class paths end to end."""
    from ASSFTActive.api import rank_pool
    from ASSFTActive.models import load_card
    from ASSFTActive.query import QueryConfig

    names = ["background", "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas"]
    card = ModelCard.from_dict(
        {
            "name": "ct-basic",
            "architecture": "monai:BasicUNet",
            "arguments": {"spatial_dims": 3, "in_channels": 1, "out_channels": 8, "features": [4, 4, 8, 8, 16, 4]},
            "weights": "w.safetensors",
            "class_names": names,
            "encoder_stages": ["conv_0", "down_1", "down_2", "down_3", "down_4"],
            "patch_size": [64, 64, 32],
            "preprocessing": {"profile": "ct_window", "a_min": -175, "a_max": 250},
            "spacing": [3.0, 3.0, 3.0],
        }
    )
    torch.manual_seed(0)
    save_weights(build_network(card), tmp_path / "w.safetensors")
    save_card(card, tmp_path / "card.json")
    ct = read_volume(fixtures_dir / "totalsegmentator-ct" / "example_ct_sm.nii.gz")
    images = tmp_path / "images"
    write_volume(ct, images / "ct_a.nii.gz")
    write_volume(Volume(np.flip(ct.array, 0).copy(), ct.affine), images / "ct_b.nii.gz")
    result = rank_pool(
        sorted(images.iterdir()),
        load_card(tmp_path / "card.json"),
        1,
        tmp_path / "out",
        query=QueryConfig(asd_reduce="class_balanced"),
    )
    assert len(result.ranking.cases) == 2 and len(result.ranking.selected_ids) == 1
    assert all(len(r.evidence.clasp_scores) == 8 for r in result.volumes)
    prediction = read_volume(tmp_path / "out" / "predictions" / "ct_a.nii.gz")
    assert prediction.shape == ct.shape
    np.testing.assert_allclose(prediction.affine, ct.affine, atol=1e-5)


def test_a_budget_larger_than_the_pool_proposes_every_volume_and_says_so(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted((SAMPLE_POOL / "images").glob("*.nii.gz"))[:2]:
        shutil.copy(image, pool)
    done = assft(
        "rank", "--images", str(pool), "--budget", "20", "--out", str(tmp_path / "out"), "--quiet", "--no-overlays"
    )
    assert done.returncode == 0, done.stderr
    assert "warning: --budget 20 is more than the 2 unlabelled volume(s) in the pool" in done.stderr
    payload = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert sum(c["selected"] for c in payload["cases"]) == 2


def test_the_ranking_table_explains_a_score_that_rises_with_rank():
    """A greedy query scores each pick against the picks before it, so rank 3 may score above rank 2; the table
    says so instead of looking wrong, and says nothing when the column falls."""
    from ASSFTActive.cli.rank import format_ranking
    from ASSFTActive.query.records import RankedCase, Ranking

    def ranking(scores):
        cases = tuple(
            RankedCase(f"v{i}", dkd=0.1, asd=0.2, score=s, rank=i + 1, selected=i < 2) for i, s in enumerate(scores)
        )
        return Ranking(strategy="assft", budget=2, cases=cases)

    assert "a later pick can score higher" in format_ranking(ranking([0.9, 0.4, 0.7]))
    assert "a later pick can score higher" not in format_ranking(ranking([0.9, 0.7, 0.4]))
