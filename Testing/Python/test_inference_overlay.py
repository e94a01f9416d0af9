"""One pass yields reduced maps and features on the input grid; overlays keep the input's exact geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import rotated_affine

from ASSFTActive.inference import Predictor
from ASSFTActive.inference.overlay import OverlayConfig, high_entropy_regions, write_overlay
from ASSFTActive.io import Volume, read_volume
from ASSFTActive.models import load_model
from ASSFTActive.query import normalized_entropy
from ASSFTActive.store import resolve_card


@pytest.fixture(scope="module")
def default_model():
    return load_model(resolve_card("default"))


def _blob_volume(shape=(30, 40, 28), affine=None) -> Volume:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    array = 100 + 400 * np.exp(-((grid - centre) ** 2).sum(0) / 40.0)
    return Volume(array=array.astype(np.float32), affine=np.eye(4) if affine is None else affine)


def test_prediction_gives_maps_on_the_input_grid_and_one_feature_vector_per_stage(default_model):
    volume = _blob_volume(affine=rotated_affine(spacing=(1.0, 1.0, 1.0)))
    lean = Predictor(default_model).predict(volume)
    assert lean.probs is None  # the full softmax is kept only when asked for
    assert lean.label.shape == lean.entropy.shape == lean.max_prob.shape == lean.region.shape == volume.shape
    prediction = Predictor(default_model).predict(volume, keep_probs=True)
    assert prediction.probs.shape == (3,) + volume.shape
    np.testing.assert_array_equal(prediction.label, lean.label)
    np.testing.assert_allclose(prediction.probs.sum(0), 1.0, atol=1e-4)
    assert [f.shape for f in prediction.features] == [(16,), (32,), (64,), (128,)]
    assert prediction.pretrained_features is prediction.features  # no separate pre-trained model: same encoder


def test_reoriented_input_gives_the_same_prediction_in_its_own_voxel_order(default_model, hippocampus_dir):
    image = read_volume(hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz")
    flipped_affine = image.affine @ np.array(
        [[-1, 0, 0, image.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]
    )
    flipped = Volume(array=image.array[::-1].copy(), affine=flipped_affine)  # same anatomy stored L->R
    predictor = Predictor(default_model)
    a, b = predictor.predict(image, keep_probs=True), predictor.predict(flipped, keep_probs=True)
    np.testing.assert_allclose(b.probs[:, ::-1], a.probs, atol=1e-4)
    np.testing.assert_allclose(b.entropy[::-1], a.entropy, atol=1e-4)


def test_anisotropic_volume_is_resampled_to_model_spacing_and_back(default_model):
    volume = _blob_volume(shape=(30, 40, 14), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    prediction = Predictor(default_model).predict(volume, keep_probs=True)
    assert prediction.maps.label.shape == (30, 40, 28)  # model space: 1 mm
    assert prediction.probs.shape == (3, 30, 40, 14) and prediction.label.shape == (30, 40, 14)
    np.testing.assert_allclose(prediction.probs.sum(0), 1.0, atol=1e-4)


def test_adapted_model_gets_separate_pretrained_features_and_they_are_cached(default_model, tmp_path):
    adapted = load_model(resolve_card("default"))
    with torch.no_grad():
        for p in adapted.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    volume = _blob_volume()
    cold = Predictor(default_model).predict(volume)
    predictor = Predictor(adapted, default_model, feature_cache=tmp_path)
    first = predictor.predict(volume)
    assert not predictor.encoders_identical
    for f0, f1 in zip(cold.features, first.pretrained_features):
        np.testing.assert_allclose(f0, f1, rtol=1e-4, atol=1e-5)  # the frozen encoder's features, decoder skipped
    assert any(not np.allclose(a, b) for a, b in zip(first.features, first.pretrained_features))
    assert len(list(tmp_path.glob("*.npz"))) == 1
    second = predictor.predict(volume)
    for f1, f2 in zip(first.pretrained_features, second.pretrained_features):
        np.testing.assert_array_equal(f1, f2)


def test_mc_dropout_samples_differ_and_are_probability_maps(default_model):
    samples = []
    Predictor(default_model).predict(_blob_volume(), dropout_samples=3, sample_callback=samples.append)
    assert len(samples) == 3 and not np.allclose(samples[0], samples[1])
    np.testing.assert_allclose(samples[2].sum(0), 1.0, atol=1e-4)
    assert all(not m.training for m in default_model.network.modules())  # dropout switched back off


def test_entropy_overlay_has_the_affine_of_a_rotated_anisotropic_input_and_is_stored_as_uint8(tmp_path):
    import nibabel as nib

    affine = rotated_affine(angle_deg=25, spacing=(0.7, 1.3, 3.0))
    image = Volume(np.zeros((10, 12, 6), np.float32), affine)
    entropy = np.random.default_rng(0).uniform(size=image.shape).astype(np.float32)
    no_region = np.zeros(image.shape, bool)
    map_path, regions_path = write_overlay(image, entropy, no_region, tmp_path, "case")
    written = read_volume(map_path)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.array, entropy, atol=1 / 510 + 1e-6)
    assert nib.load(str(map_path)).get_data_dtype() == np.uint8
    assert json.loads(regions_path.read_text())["regions"] == []  # no predicted foreground, no region


def test_regions_are_uncertain_foreground_components_with_ras_centre_and_volume():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    shape = (20, 20, 20)
    probs = np.zeros((2,) + shape, np.float32)
    probs[0] = 1.0
    probs[:, 3:7, 3:7, 3:7] = [[[[0.5]]], [[[0.5]]]]  # uncertain foreground-ish cube: 64 voxels
    probs[:, 12:14, 12:14, 12:14] = [[[[0.45]]], [[[0.55]]]]  # small uncertain foreground cube: 8 voxels
    probs[:, 0:2, 15:19, 0:2] = [[[[0.6]]], [[[0.4]]]]  # uncertain background: predicted bg, far away
    image = Volume(np.zeros(shape, np.float32), affine)
    entropy = image.with_array(normalized_entropy(probs))
    mask = np.argmax(probs, 0) > 0
    mask[3:7, 3:7, 3:7] = True
    regions = high_entropy_regions(entropy, mask, OverlayConfig(threshold=0.9, min_voxels=2))
    assert len(regions) == 2
    big, small = regions
    assert big.voxel_count == 64 and big.volume_mm3 == pytest.approx(64 * 8.0)
    assert big.center_ras == pytest.approx((-10 + 2 * 4.5, 2 * 4.5, 5 + 2 * 4.5))
    assert big.bbox_ijk_min == (3, 3, 3) and big.bbox_ijk_max == (6, 6, 6)
    assert small.voxel_count == 8 and small.mean_entropy < big.mean_entropy + 1e-6


def test_regions_from_uint8_entropy_levels_match_the_float_entropy():
    rng = np.random.default_rng(3)
    shape = (24, 20, 16)
    entropy = np.zeros(shape, np.float32)
    entropy[2:9, 3:8, 4:9] = rng.uniform(0.5, 1.0, size=(7, 5, 5))
    entropy[15:18, 12:16, 10:12] = rng.uniform(0.35, 0.6, size=(3, 4, 2))
    image = Volume(np.zeros(shape, np.float32), np.diag([1.5, 1.0, 2.0, 1.0]))
    mask = np.ones(shape, bool)
    exact = high_entropy_regions(image.with_array(entropy), mask, OverlayConfig(threshold=0.3))
    levels = np.round(entropy * 255).astype(np.uint8)
    quantised = high_entropy_regions(image.with_array(levels), mask, OverlayConfig(threshold=0.3))
    assert [r.voxel_count for r in quantised] == [r.voxel_count for r in exact] == [175, 24]
    for a, b in zip(exact, quantised):
        assert a.bbox_ijk_min == b.bbox_ijk_min and a.bbox_ijk_max == b.bbox_ijk_max
        assert b.center_ras == pytest.approx(a.center_ras, abs=0.02)
        assert b.mean_entropy == pytest.approx(a.mean_entropy, abs=1 / 510)
