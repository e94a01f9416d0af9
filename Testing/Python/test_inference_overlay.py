"""One pass yields probabilities and features on the input grid; overlays keep the input's exact geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import rotated_affine

from ASSFTActive.inference import Predictor
from ASSFTActive.io import Volume, read_volume
from ASSFTActive.models import load_model, resolve_card
from ASSFTActive.overlay import OverlayConfig, entropy_map, high_entropy_regions, write_overlay
from ASSFTActive.query import QueryConfig


@pytest.fixture(scope="module")
def default_model():
    return load_model(resolve_card("default"))


def _blob_volume(shape=(30, 40, 28), affine=None) -> Volume:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    array = 100 + 400 * np.exp(-((grid - centre) ** 2).sum(0) / 40.0)
    return Volume(array=array.astype(np.float32), affine=np.eye(4) if affine is None else affine)


def test_prediction_is_a_probability_map_on_the_input_grid_with_one_feature_vector_per_stage(default_model):
    volume = _blob_volume(affine=rotated_affine(spacing=(1.0, 1.0, 1.0)))
    prediction = Predictor(default_model).predict(volume)
    assert prediction.probs.shape == (3,) + volume.shape
    np.testing.assert_allclose(prediction.probs.sum(0), 1.0, atol=1e-4)
    assert [f.shape for f in prediction.features] == [(16,), (32,), (64,), (128,)]
    assert prediction.pretrained_features is prediction.features  # no separate pre-trained model: same encoder


def test_reoriented_input_gives_the_same_prediction_in_its_own_voxel_order(default_model, hippocampus_dir):
    image = read_volume(hippocampus_dir / "imagesTr" / "hippocampus_001.nii.gz")
    flipped_affine = image.affine @ np.array([[-1, 0, 0, image.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0],
                                              [0, 0, 0, 1.0]])
    flipped = Volume(array=image.array[::-1].copy(), affine=flipped_affine)  # same anatomy stored L->R
    predictor = Predictor(default_model)
    a, b = predictor.predict(image).probs, predictor.predict(flipped).probs
    np.testing.assert_allclose(b[:, ::-1], a, atol=1e-4)


def test_anisotropic_volume_is_resampled_to_model_spacing_and_back(default_model):
    volume = _blob_volume(shape=(30, 40, 14), affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    probs = Predictor(default_model).predict(volume).probs
    assert probs.shape == (3, 30, 40, 14)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)


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


def test_entropy_overlay_has_the_affine_of_a_rotated_anisotropic_input(tmp_path):
    affine = rotated_affine(angle_deg=25, spacing=(0.7, 1.3, 3.0))
    image = Volume(np.zeros((10, 12, 6), np.float32), affine)
    probs = np.full((3, 10, 12, 6), 1 / 3, np.float32)
    map_path, regions_path = write_overlay(image, probs, tmp_path, "case", QueryConfig())
    written = read_volume(map_path)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.array, 1.0, atol=1e-5)
    assert json.loads(regions_path.read_text())["regions"] == []  # uniform = no predicted foreground


def test_regions_are_uncertain_foreground_components_with_ras_centre_and_volume():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 0, 5]
    shape = (20, 20, 20)
    probs = np.zeros((2,) + shape, np.float32)
    probs[0] = 1.0
    probs[:, 3:7, 3:7, 3:7] = [[[[0.5]]], [[[0.5]]]]        # uncertain foreground-ish cube: 64 voxels
    probs[:, 12:14, 12:14, 12:14] = [[[[0.45]]], [[[0.55]]]]  # small uncertain foreground cube: 8 voxels
    probs[:, 0:2, 15:19, 0:2] = [[[[0.6]]], [[[0.4]]]]        # uncertain background: predicted bg, far away
    image = Volume(np.zeros(shape, np.float32), affine)
    entropy = entropy_map(image, probs)
    mask = np.argmax(probs, 0) > 0
    mask[3:7, 3:7, 3:7] = True
    regions = high_entropy_regions(entropy, mask, OverlayConfig(threshold=0.9, min_voxels=2))
    assert len(regions) == 2
    big, small = regions
    assert big.voxel_count == 64 and big.volume_mm3 == pytest.approx(64 * 8.0)
    assert big.center_ras == pytest.approx((-10 + 2 * 4.5, 2 * 4.5, 5 + 2 * 4.5))
    assert big.bbox_ijk_min == (3, 3, 3) and big.bbox_ijk_max == (6, 6, 6)
    assert small.voxel_count == 8 and small.mean_entropy < big.mean_entropy + 1e-6
