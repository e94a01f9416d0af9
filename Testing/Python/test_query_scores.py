"""Per-case scores on constructed volumes with known answers: ASD, KD, BatchNorm KL, MC dropout, ClaSP PE."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.query import (
    QueryConfig,
    anatomical_segmentation_difficulty,
    batchnorm_divergence,
    clasp_class_scores,
    feature_divergence,
    knowledge_divergence,
    mc_dropout_epistemic,
    mc_dropout_voxel_map,
    mean_entropy,
    normalized_entropy,
)


def probs_from_labels(labels: np.ndarray, num_classes: int, confidence: float = 1.0) -> np.ndarray:
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes,) + labels.shape, rest, dtype=np.float32)
    for c in range(num_classes):
        probs[c][labels == c] = confidence
    return probs


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


# ------------------------------------------------------------------------------------------------------- ASD


def test_uniform_probabilities_give_asd_one_when_the_foreground_is_found_by_probability():
    probs = np.full((3, 6, 6, 6), 1 / 3, dtype=np.float32)  # 1 - p0 = 2/3 >= 0.5: every voxel is foreground
    config = QueryConfig(fg_mask="pred_prob")
    assert anatomical_segmentation_difficulty(probs, config) == pytest.approx(1.0, abs=1e-6)


def test_uniform_probabilities_have_no_argmax_foreground_and_score_asd_empty_fg():
    probs = np.full((3, 6, 6, 6), 1 / 3, dtype=np.float32)  # ties go to background
    assert anatomical_segmentation_difficulty(probs, QueryConfig(asd_empty_fg=0.25)) == 0.25


def test_one_hot_probabilities_give_asd_zero():
    labels = np.zeros((8, 8, 8), dtype=int)
    labels[2:5, 2:5, 2:5] = 1
    labels[5:7, 5:7, 5:7] = 2
    assert anatomical_segmentation_difficulty(probs_from_labels(labels, 3), QueryConfig()) == 0.0


def test_empty_foreground_gives_asd_empty_fg():
    probs = probs_from_labels(np.zeros((6, 6, 6), dtype=int), 2, confidence=0.7)  # uncertain but all background
    assert anatomical_segmentation_difficulty(probs, QueryConfig()) == 1.0
    assert anatomical_segmentation_difficulty(probs, QueryConfig(asd_empty_fg=0.4)) == 0.4
    assert anatomical_segmentation_difficulty(probs, QueryConfig(asd_empty_fg=0.4, asd_reduce="class_balanced")) == 0.4


def test_asd_ignores_entropy_in_background_far_from_the_foreground():
    labels = np.zeros((16, 16, 16), dtype=int)
    labels[1:4, 1:4, 1:4] = 1
    probs = probs_from_labels(labels, 2, confidence=1.0)
    probs[0, 10:, :, :] = 0.55  # background still wins there, but is nearly maximally uncertain
    probs[1, 10:, :, :] = 0.45
    assert mean_entropy(probs) > 0.3
    assert anatomical_segmentation_difficulty(probs, QueryConfig()) == pytest.approx(0.0, abs=1e-7)


def test_dilation_brings_the_uncertain_boundary_band_into_asd():
    labels = np.zeros((9, 9, 9), dtype=int)
    labels[4, 4, 4] = 1
    probs = probs_from_labels(labels, 2, confidence=1.0)
    band = np.zeros((9, 9, 9), dtype=bool)
    for offset in [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]:
        band[tuple(4 + np.array(offset))] = True
    probs[0][band], probs[1][band] = 0.6, 0.4  # uncertain background right next to the organ
    assert anatomical_segmentation_difficulty(probs, QueryConfig(fg_dilation=0)) == 0.0
    expected = 6 * binary_entropy(0.6) / 7  # the centre voxel plus its 6 neighbours
    assert anatomical_segmentation_difficulty(probs, QueryConfig(fg_dilation=1)) == pytest.approx(expected, rel=1e-5)


def test_class_balanced_asd_lets_a_small_uncertain_organ_count_as_much_as_a_large_confident_one():
    labels = np.zeros((10, 10, 10), dtype=int)
    labels[0:6, 0:6, 0:6] = 1  # 216 voxels, confident
    labels[8, 8, 8] = 2  # 1 voxel, uncertain
    probs = probs_from_labels(labels, 3, confidence=0.98)
    probs[:, 8, 8, 8] = (0.3, 0.3, 0.4)
    h_large = float(normalized_entropy(probs)[0, 0, 0])
    h_small = float(normalized_entropy(probs)[8, 8, 8])
    config = QueryConfig(fg_dilation=0)
    voxel_mean = anatomical_segmentation_difficulty(probs, config)
    balanced = anatomical_segmentation_difficulty(probs, QueryConfig(fg_dilation=0, asd_reduce="class_balanced"))
    assert voxel_mean == pytest.approx((216 * h_large + h_small) / 217, rel=1e-5)
    assert balanced == pytest.approx((h_large + h_small) / 2, rel=1e-5)
    assert balanced > voxel_mean + 0.3


def test_mean_entropy_averages_over_the_whole_volume():
    probs = probs_from_labels(np.zeros((4, 4, 4), dtype=int), 2, confidence=1.0)
    probs[:, :2] = 0.5  # half of the voxels are uniform
    assert mean_entropy(probs) == pytest.approx(0.5, abs=1e-6)


# -------------------------------------------------------------------------------------------------------- KD


def stage_features(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=8), rng.normal(size=16), rng.normal(size=32)]


@pytest.mark.parametrize("metric", ["js", "sym_kl", "cosine"])
def test_identical_encoder_features_give_kd_zero(metric):
    features = stage_features()
    copies = [f.copy() for f in features]
    kd = knowledge_divergence(features, copies, QueryConfig(kd_metric=metric, kd_stages=3))
    assert 0.0 <= kd < 1e-7


@pytest.mark.parametrize("metric", ["js", "sym_kl", "cosine"])
def test_kd_grows_with_the_feature_shift(metric):
    pretrained = stage_features(1)
    direction = stage_features(2)
    config = QueryConfig(kd_metric=metric)
    values = [
        knowledge_divergence([p + t * d for p, d in zip(pretrained, direction)], pretrained, config)
        for t in (0.0, 0.25, 0.5, 1.0, 2.0)
    ]
    assert values[0] < 1e-7
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_kd_uses_only_the_deepest_stages():
    pretrained = stage_features(3)
    current = [f.copy() for f in pretrained]
    current[0] = current[0] + 5.0 * np.arange(current[0].size)  # only the shallowest stage moved
    assert knowledge_divergence(current, pretrained, QueryConfig(kd_stages=2)) < 1e-7
    assert knowledge_divergence(current, pretrained, QueryConfig(kd_stages=3)) > 0.05


def test_divergences_match_closed_forms():
    # softmax([0, 0]) = (1/2, 1/2); softmax([ln 3, 0]) = (3/4, 1/4)
    a, b = np.array([0.0, 0.0]), np.array([math.log(3.0), 0.0])
    p, q = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    m = (p + q) / 2
    kl = lambda x, y: float(np.sum(x * np.log(x / y)))  # noqa: E731
    assert feature_divergence(a, b, "js", 1.0) == pytest.approx(0.5 * kl(p, m) + 0.5 * kl(q, m), rel=1e-12)
    assert feature_divergence(a, b, "sym_kl", 1.0) == pytest.approx(kl(p, q) + kl(q, p), rel=1e-12)
    # temperature 2 halves the logits: softmax([ln 3 / 2, 0]) = (sqrt3 / (sqrt3 + 1), ...)
    r = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    q2 = np.array([r, 1 - r])
    assert feature_divergence(a, b, "sym_kl", 2.0) == pytest.approx(kl(p, q2) + kl(q2, p), rel=1e-12)
    assert feature_divergence(np.array([1.0, 0.0]), np.array([0.0, 3.0]), "cosine", 1.0) == pytest.approx(1.0)
    assert feature_divergence(np.array([1.0, 2.0]), np.array([-2.0, -4.0]), "cosine", 1.0) == pytest.approx(2.0)


def test_js_is_bounded_by_ln2():
    a = np.array([100.0, 0.0, 0.0])
    b = np.array([0.0, 0.0, 100.0])
    value = feature_divergence(a, b, "js", 1.0)
    assert math.log(2) - 1e-9 <= value <= math.log(2) + 1e-12


def test_kd_does_not_modify_its_inputs():
    current, pretrained = stage_features(4), stage_features(5)
    before = [f.copy() for f in current + pretrained]
    knowledge_divergence(current, pretrained, QueryConfig())
    for original, after in zip(before, current + pretrained):
        np.testing.assert_array_equal(original, after)


def test_kd_refuses_too_few_stages_and_mismatched_shapes():
    features = stage_features()
    with pytest.raises(ValueError, match="kd_stages=3"):
        knowledge_divergence(features[:2], features[:2], QueryConfig(kd_stages=3))
    with pytest.raises(ValueError, match="same stages"):
        knowledge_divergence(features, features[:2], QueryConfig())
    with pytest.raises(ValueError, match="shape"):
        knowledge_divergence([np.zeros(4), np.zeros(5)], [np.zeros(4), np.zeros(6)], QueryConfig())
    with pytest.raises(ValueError, match=r"pooled feature vector \[D\]"):
        knowledge_divergence([np.zeros((1, 4))] * 2, [np.zeros((1, 4))] * 2, QueryConfig())


# ------------------------------------------------------------------------------------------------ BatchNorm


def test_batchnorm_divergence_is_zero_for_matching_statistics():
    stats = [(np.array([0.5, -1.0]), np.array([2.0, 0.5])), (np.zeros(3), np.ones(3))]
    assert batchnorm_divergence(stats, stats) == pytest.approx(0.0, abs=1e-12)


def test_batchnorm_divergence_matches_the_gaussian_kl():
    running = [(np.zeros(2), np.ones(2)), (np.zeros(1), np.ones(1))]
    shifted = [(np.ones(2), np.ones(2)), (np.zeros(1), np.full(1, 2.0))]
    # layer 1: mean shift 1, unit variances -> 0.5 per channel; layer 2: KL(N(0, 2) || N(0, 1)) = (1 - ln 2) / 2
    expected = 0.5 + 0.5 * (1 - math.log(2))
    assert batchnorm_divergence(shifted, running, eps=0.0) == pytest.approx(expected, rel=1e-12)


def test_batchnorm_divergence_refuses_mismatched_layers():
    with pytest.raises(ValueError, match="same layers"):
        batchnorm_divergence([(np.zeros(2), np.ones(2))], [])
    with pytest.raises(ValueError, match="different shapes"):
        batchnorm_divergence([(np.zeros(2), np.ones(2))], [(np.zeros(3), np.ones(3))])


# ----------------------------------------------------------------------------------------------- MC dropout


def test_mc_dropout_map_is_the_entropy_of_the_mean_foreground_prediction():
    samples = np.zeros((2, 2, 1, 1, 2), dtype=np.float32)  # [T, C, I, J, K]
    samples[:, 1, 0, 0, 0] = (1.0, 0.0)  # the passes disagree
    samples[:, 1, 0, 0, 1] = (1.0, 1.0)  # the passes agree
    samples[:, 0] = 1.0 - samples[:, 1]
    before = samples.copy()
    voxel_map = mc_dropout_voxel_map(samples)
    mean = (1.0 + 0.00005) / 2  # MONAI Label replaces probabilities <= 0 by 5e-5
    np.testing.assert_allclose(voxel_map[0, 0], [-mean * math.log(mean), 0.0], rtol=1e-5, atol=1e-7)
    assert mc_dropout_epistemic(samples) == pytest.approx(-mean * math.log(mean) / 2, rel=1e-5)
    np.testing.assert_array_equal(samples, before)


def test_mc_dropout_ignores_the_background_channel_like_monai_label():
    samples = np.random.default_rng(0).dirichlet([1, 1, 1], size=(3, 4, 4, 4)).astype(np.float32)
    samples = np.moveaxis(samples, -1, 1)  # [T, C, I, J, K]
    other = samples.copy()
    other[:, 0] = 0.123  # background changed, foreground channels untouched
    np.testing.assert_array_equal(mc_dropout_voxel_map(samples), mc_dropout_voxel_map(other))


def test_mc_dropout_ranks_disagreeing_passes_above_agreeing_ones():
    rng = np.random.default_rng(1)
    base = rng.dirichlet([1, 1], size=(5, 5, 5)).astype(np.float32)
    base = np.moveaxis(base, -1, 0)
    agreeing = np.stack([base] * 4)
    flipped = np.stack([base, base[::-1], base, base[::-1]])
    assert mc_dropout_epistemic(flipped) > mc_dropout_epistemic(agreeing)


def test_mc_dropout_needs_at_least_two_passes():
    with pytest.raises(ValueError, match="at least 2"):
        mc_dropout_epistemic(np.full((1, 2, 2, 2, 2), 0.5, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- ClaSP


def test_clasp_class_scores_average_class_weighted_entropy_over_each_predicted_class():
    labels = np.zeros((6, 6, 6), dtype=int)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels of class 1; class 2 is never predicted
    probs = probs_from_labels(labels, 3, confidence=1.0)
    probs[:, 0:2, 0:2, 0:2] = np.array([0.2, 0.6, 0.2], dtype=np.float32)[:, None, None, None]
    scores = clasp_class_scores(probs, QueryConfig(fg_dilation=0))
    pe = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert scores.shape == (3,)
    assert scores[0] == pytest.approx(pe * 8 / 216, rel=1e-5)
    assert scores[1] == pytest.approx(pe * 0.6, rel=1e-5)
    assert scores[2] == 0.0


def test_mc_dropout_score_from_a_running_mean_equals_the_score_from_all_samples():
    from ASSFTActive.query import mc_dropout_epistemic_from_mean

    rng = np.random.default_rng(3)
    samples = np.moveaxis(rng.dirichlet([2, 1, 1], size=(6, 5, 4, 3)).astype(np.float32), -1, 1)  # [T, C, I, J, K]
    assert mc_dropout_epistemic_from_mean(samples.mean(axis=0)) == pytest.approx(
        mc_dropout_epistemic(samples), rel=1e-5
    )
