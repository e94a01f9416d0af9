"""Voxel maps: normalised entropy, adaptive foreground masks, ClaSP PE class maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.query import (
    QueryConfig,
    class_foreground_masks,
    foreground_mask,
    normalized_entropy,
    power_entropy_class_maps,
    predictive_entropy,
)


def probs_from_labels(labels: np.ndarray, num_classes: int, confidence: float = 1.0) -> np.ndarray:
    """Probabilities ``[C, I, J, K]``: ``confidence`` on the label, the rest shared by the other classes."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes,) + labels.shape, rest, dtype=np.float32)
    for c in range(num_classes):
        probs[c][labels == c] = confidence
    return probs


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_uniform_probabilities_have_normalised_entropy_one(num_classes):
    probs = np.full((num_classes, 4, 5, 6), 1.0 / num_classes, dtype=np.float32)
    entropy = normalized_entropy(probs)
    assert entropy.shape == (4, 5, 6)
    assert entropy.dtype == np.float32
    np.testing.assert_allclose(entropy, 1.0, atol=1e-6)


def test_one_hot_probabilities_have_entropy_zero():
    labels = np.random.default_rng(0).integers(0, 3, size=(5, 5, 5))
    np.testing.assert_array_equal(normalized_entropy(probs_from_labels(labels, 3)), 0.0)


def test_binary_entropy_matches_the_closed_form():
    probs = np.zeros((2, 1, 1, 2), dtype=np.float32)
    probs[:, 0, 0, 0] = (0.9, 0.1)
    probs[:, 0, 0, 1] = (0.5, 0.5)
    expected = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)  # 0.4690
    np.testing.assert_allclose(normalized_entropy(probs)[0, 0], [expected, 1.0], rtol=1e-5)
    np.testing.assert_allclose(predictive_entropy(probs)[0, 0], [expected * math.log(2), math.log(2)], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_entropy_does_not_modify_its_input(dtype):
    probs = probs_from_labels(np.eye(4, dtype=int)[:, :, None].repeat(3, axis=2), 3, confidence=1.0).astype(dtype)
    probs[:, 0, 0, 0] = (0.2, 0.8, 0.0)  # an exact zero exercises the 0 log 0 path
    before = probs.copy()
    normalized_entropy(probs)
    power_entropy_class_maps(probs)
    foreground_mask(probs, QueryConfig())
    np.testing.assert_array_equal(probs, before)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((2, 3, 3), 0.5, dtype=np.float32), r"\[C, I, J, K\]"),
        (np.ones((1, 2, 2, 2), dtype=np.float32), "C >= 2"),
        (np.full((2, 2, 2, 2), 0.7, dtype=np.float32), "sum to 1"),
        (np.stack([np.full((2, 2, 2), 2.0), np.full((2, 2, 2), -1.0)]).astype(np.float32), "logits"),
        (np.full((2, 2, 2, 2), np.nan, dtype=np.float32), "NaN"),
    ],
)
def test_inputs_that_are_not_softmax_probabilities_are_refused(array, message):
    with pytest.raises(ValueError, match=message):
        normalized_entropy(array)


def single_foreground_voxel(shape=(9, 9, 9), label=1, num_classes=2) -> np.ndarray:
    labels = np.zeros(shape, dtype=int)
    labels[4, 4, 4] = label
    return probs_from_labels(labels, num_classes, confidence=0.9)


@pytest.mark.parametrize("radius, voxels", [(0, 1), (1, 7), (2, 25), (3, 63)])
def test_foreground_dilation_is_a_city_block_ball(radius, voxels):
    """r applications of the 6-connected cross: 1, 7, 25, 63 voxels for r = 0..3."""
    mask = foreground_mask(single_foreground_voxel(), QueryConfig(fg_dilation=radius))
    assert mask.dtype == bool
    assert int(mask.sum()) == voxels
    assert mask[4, 4, 4]
    if radius >= 1:
        assert mask[4, 4, 4 + radius] and not mask[4, 4 + 1, 4 + radius]


def test_empty_prediction_gives_an_empty_mask():
    probs = probs_from_labels(np.zeros((5, 5, 5), dtype=int), 3, confidence=0.8)
    assert not foreground_mask(probs, QueryConfig()).any()


def test_argmax_foreground_excludes_background_ties_and_pred_prob_uses_the_threshold():
    probs = np.zeros((3, 1, 1, 3), dtype=np.float32)
    probs[:, 0, 0, 0] = (0.6, 0.2, 0.2)  # background wins; 1 - p0 = 0.4
    probs[:, 0, 0, 1] = (0.4, 0.4, 0.2)  # tie with background: argmax gives background
    probs[:, 0, 0, 2] = (0.1, 0.1, 0.8)  # clear foreground
    argmax = foreground_mask(probs, QueryConfig(fg_dilation=0))
    np.testing.assert_array_equal(argmax[0, 0], [False, False, True])
    prob_default = foreground_mask(probs, QueryConfig(fg_mask="pred_prob", fg_dilation=0))
    np.testing.assert_array_equal(prob_default[0, 0], [False, True, True])
    prob_low = foreground_mask(probs, QueryConfig(fg_mask="pred_prob", fg_prob_threshold=0.35, fg_dilation=0))
    np.testing.assert_array_equal(prob_low[0, 0], [True, True, True])


def test_class_masks_follow_the_argmax_of_each_foreground_class():
    labels = np.zeros((8, 8, 8), dtype=int)
    labels[1, 1, 1] = 1
    labels[6, 6, 6] = 3
    masks = class_foreground_masks(probs_from_labels(labels, 4, confidence=0.7), QueryConfig(fg_dilation=1))
    assert len(masks) == 3
    assert int(masks[0].sum()) == 7 and masks[0][1, 1, 1] and not masks[0][6, 6, 6]
    assert not masks[1].any()  # class 2 is not predicted
    assert int(masks[2].sum()) == 7 and masks[2][6, 6, 6]


def test_power_entropy_maps_hold_plain_and_class_weighted_entropy():
    probs = np.zeros((3, 1, 1, 2), dtype=np.float32)
    probs[:, 0, 0, 0] = (1 / 3, 1 / 3, 1 / 3)
    probs[:, 0, 0, 1] = (0.5, 0.5, 0.0)
    maps = power_entropy_class_maps(probs)
    assert maps.shape == (3, 1, 1, 2) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0, 0, 0], [math.log(3), math.log(2)], rtol=1e-5)
    np.testing.assert_allclose(maps[1, 0, 0], [math.log(3) / 3, math.log(2) / 2], rtol=1e-5)
    np.testing.assert_allclose(maps[2, 0, 0], [math.log(3) / 3, 0.0], rtol=1e-5, atol=1e-7)
