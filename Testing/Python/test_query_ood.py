"""Out-of-distribution volumes: the three rules on known answers, and measured on the shared fixtures (issue 29.21)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ASSFTActive.query.ood import (
    CT_AIR_SHARE,
    FEATURE_FACTOR,
    FOREGROUND_FACTOR,
    REFERENCE_FILE,
    SourceReference,
    air_share,
    card_modality,
    load_reference,
    nearest_source_distance,
    ood_reason,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
FIXTURES = DATA / "fixtures"
HIPPOCAMPUS = DATA / "hippocampus"
EMBEDDED = ROOT / "ASSFTActive" / "resources" / "models" / "hippocampus-unet"


def reference() -> SourceReference:
    """Source volumes on the unit circle at 0, 10 and 20 degrees: leave-one-out nearest distance = the 10-degree
    chord 2 sin(5 deg)."""
    angles = np.radians([0.0, 10.0, 20.0])
    return SourceReference.from_volumes([[np.cos(a), np.sin(a)] for a in angles], [0.05, 0.10, 0.08])


def test_reference_keeps_the_largest_leave_one_out_distance_and_foreground_share():
    ref = reference()
    assert ref.nn_distance_max == pytest.approx(2 * np.sin(np.radians(5.0)))
    assert ref.foreground_share_max == pytest.approx(0.10)
    again = SourceReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    assert again.nn_distance_max == pytest.approx(ref.nn_distance_max)
    assert np.allclose(again.embeddings, ref.embeddings, atol=1e-6)


def test_nearest_source_distance_is_the_chord_to_the_closest_source_volume():
    ref = reference()
    assert nearest_source_distance([np.cos(np.radians(50)), np.sin(np.radians(50))], ref.embeddings) == pytest.approx(
        2 * np.sin(np.radians(15.0))
    )


def test_a_volume_like_the_source_is_not_flagged():
    assert ood_reason(np.array([1.0, 0.05]), 0.09, 0.0, "MRI", reference()) == ""


def test_a_volume_far_from_every_source_volume_is_flagged_with_the_ratio():
    # 40 degrees from the nearest source direction: chord 2 sin(20) / 2 sin(5) = 3.9 > FEATURE_FACTOR
    reason = ood_reason([np.cos(np.radians(60)), np.sin(np.radians(60))], 0.09, 0.0, "MRI", reference())
    assert reason.startswith("out of distribution: unlike every volume the model was trained on")
    assert "3.9x" in reason


def test_the_feature_threshold_is_exclusive_of_the_factor():
    ref = reference()
    # a direction whose distance ratio is just below the factor is not flagged
    angle = 20.0 + 2 * np.degrees(np.arcsin(FEATURE_FACTOR * 0.99 * np.sin(np.radians(5.0))))
    assert ood_reason([np.cos(np.radians(angle)), np.sin(np.radians(angle))], 0.09, 0.0, "", ref) == ""


def test_a_volume_mostly_predicted_as_anatomy_is_flagged():
    reason = ood_reason(np.array([1.0, 0.0]), FOREGROUND_FACTOR * 0.10 + 0.01, 0.0, "MRI", reference())
    assert "the model marks 16 % of it as anatomy, at most 10 % in its training volumes" in reason
    assert ood_reason(np.array([1.0, 0.0]), FOREGROUND_FACTOR * 0.10 - 0.01, 0.0, "MRI", reference()) == ""


def test_ct_intensities_for_an_mri_model_and_mri_for_a_ct_model_are_flagged_without_a_reference():
    assert "looks like CT (36 % of voxels below -500 HU) but the model takes MRI" in ood_reason(
        np.array([1.0, 0.0]), 0.1, 0.36, "MRI", None
    )
    assert ood_reason(np.array([1.0, 0.0]), 0.1, CT_AIR_SHARE / 2, "MRI", None) == ""
    assert "not a CT" in ood_reason(np.array([1.0, 0.0]), 0.1, 0.0, "CT", None)
    assert ood_reason(np.array([1.0, 0.0]), 0.1, 0.3, "CT", None) == ""


def test_air_share_counts_voxels_below_minus_500():
    volume = np.zeros((4, 5, 6), dtype=np.int16)
    volume[:2, :, :3] = -1000
    assert air_share(volume) == pytest.approx(30 / 120)


def test_card_modality_follows_the_preprocessing_profile():
    assert card_modality("zscore_nonzero") == "MRI"
    assert card_modality("ct_window") == "CT"
    assert card_modality("something else") == ""


def test_reference_of_another_length_is_a_clear_error():
    with pytest.raises(ValueError, match="re-create source_reference.json"):
        ood_reason(np.ones(3), 0.1, 0.0, "MRI", reference())


def test_a_broken_reference_file_names_the_file(tmp_path):
    (tmp_path / REFERENCE_FILE).write_text('{"embeddings": [[1, 0]]}')
    with pytest.raises(ValueError, match=str(tmp_path / REFERENCE_FILE)):
        load_reference(tmp_path)
    assert load_reference(tmp_path / "absent") is None


def test_the_embedded_model_ships_its_source_reference():
    ref = load_reference(EMBEDDED)
    assert ref is not None and ref.embeddings.shape[0] == 62 and ref.embeddings.shape[1] == 128
    assert 0.0 < ref.foreground_share_max < 0.2


# ---------------------------------------------------------------------------- measured on the shared fixtures
needs_data = pytest.mark.skipif(
    not (FIXTURES.is_dir() and HIPPOCAMPUS.is_dir()),
    reason="../shared/data (fixtures and hippocampus) is not available",
)


@pytest.fixture(scope="module")
def embedded():
    import torch

    from ASSFTActive.api import make_predictor
    from ASSFTActive.store import resolve_card

    card = resolve_card("default")
    return card, make_predictor(card, torch.device("cpu"))


def reason_of(path: Path, embedded, shift=None) -> str:
    from ASSFTActive.api import volume_ood_reason
    from ASSFTActive.io import read_volume
    from ASSFTActive.plausibility import check_image
    from ASSFTActive.query import QueryConfig, RegionSpec

    card, predictor = embedded
    volume = check_image(read_volume(path))
    if shift is not None:
        volume = shift(volume)
    prediction = predictor.predict(volume, regions=RegionSpec.from_config(QueryConfig()))
    return volume_ood_reason(volume, prediction, card)


@needs_data
@pytest.mark.parametrize(
    "fixture, why",
    [
        ("monai-anatomical/anatomical.nii", "unlike every volume"),
        ("pyradiomics/breast1_image.nrrd", "as anatomy"),
        ("pyradiomics/prostate_phantom_subvolume.nrrd", "as anatomy"),
    ],
)
def test_small_foreign_fixtures_are_flagged_for_the_hippocampus_model(fixture, why, embedded, one_thread):
    assert why in reason_of(FIXTURES / fixture, embedded)


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    "fixture, why",
    [
        ("pyradiomics/brain1_image.nrrd", "unlike every volume"),
        ("totalsegmentator-ct/example_ct_sm.nii.gz", "looks like CT"),
    ],
)
def test_large_foreign_fixtures_are_flagged_for_the_hippocampus_model(fixture, why, embedded, one_thread):
    assert why in reason_of(FIXTURES / fixture, embedded)


def target_cases(count: int):
    from ASSFTActive.store import resolve_card

    card = resolve_card("default")
    used = set(card.provenance["train_cases"]) | set(card.provenance["source_test_cases"])
    reserved = set((HIPPOCAMPUS / "reserved.txt").read_text().split())
    names = sorted(p.name.split(".")[0] for p in (HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))
    return [HIPPOCAMPUS / "imagesTr" / f"{n}.nii.gz" for n in names if n not in used | reserved][:count]


@needs_data
@pytest.mark.parametrize("severity", ["none", "harsh"])
def test_hippocampus_volumes_unshifted_and_under_the_harsh_shift_are_not_flagged(severity, embedded, one_thread):
    import sys

    sys.path.insert(0, str(ROOT / "Testing" / "Benchmarks"))
    from harness.shifts import apply_shift, benchmark_shift

    def shift(volume):
        return volume if severity == "none" else apply_shift(volume, benchmark_shift("hippocampus", "harsh"))

    flagged = [p.name for p in target_cases(12) if reason_of(p, embedded, shift)]
    assert flagged == []
