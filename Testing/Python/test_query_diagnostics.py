"""How well each score predicts the model's error (Spearman with 1 - Dice), on hand-built sums with known ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.query import CaseEvidence, QueryConfig, RegionSpec, RegionSums
from Testing.Benchmarks.harness.diagnostics import pool_dkd, score_error_correlations, spearman_with_error


def test_spearman_known_value_with_a_tie():
    # ranks of y: 1, 2, 3.5, 5, 3.5 -> Pearson of the ranks = 8 / sqrt(10 * 9.5)
    result = spearman_with_error("s", [1, 2, 3, 4, 5], [5, 6, 7, 8, 7])
    assert result.rho == pytest.approx(8 / math.sqrt(95), rel=1e-12)
    assert result.n == 5 and 0 < result.p < 1


def test_spearman_is_nan_without_ranking_information_and_refuses_bad_input():
    assert math.isnan(spearman_with_error("s", [1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4]).rho)
    assert math.isnan(spearman_with_error("s", [1, 2, 3], [0.5, 0.5, 0.5]).rho)
    assert math.isnan(spearman_with_error("s", [1, 2], [0.1, 0.2]).rho)
    assert spearman_with_error("s", [1, 1, 1], [1, 2, 3]).to_dict() == {"spearman_rho": None, "p": None, "n": 3}
    with pytest.raises(ValueError, match="one of each"):
        spearman_with_error("s", [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman_with_error("s", [1, float("nan"), 3], [1, 2, 3])


def sums(big_class_mean: float, small_class_mean: float, clasp_small: float, plain: float, whole: float) -> RegionSums:
    """Three classes in 1000 voxels: class 1 covers 90 voxels, class 2 covers 10; ``M`` is their union."""
    return RegionSums(
        spec=RegionSpec(),
        num_classes=3,
        voxels=1000,
        entropy_sum=1000 * whole,
        power_entropy_sum=1000 * plain,
        foreground_voxels=100,
        foreground_entropy_sum=90 * big_class_mean + 10 * small_class_mean,
        class_voxels=[0, 90, 10],
        class_entropy_sums=[0, 90 * big_class_mean, 10 * small_class_mean],
        class_power_entropy_sums=[0, 90 * 0.2, 10 * clasp_small],
    )


ERRORS = [0.1, 0.2, 0.3, 0.4]
POOL = [
    # big-class entropy falls, small-class entropy rises: the voxel mean follows the big class (0.37 .. 0.18), the
    # class-balanced mean the small one (0.25 .. 0.5)
    sums(0.4, 0.1, clasp_small=0.1, plain=0.9, whole=0.05),
    sums(0.3, 0.5, clasp_small=0.2, plain=0.8, whole=0.04),
    sums(0.2, 0.7, clasp_small=0.3, plain=0.7, whole=0.06),
    sums(0.1, 0.9, clasp_small=0.4, plain=0.6, whole=0.07),
]


def test_each_region_score_is_correlated_with_the_error_by_its_own_ranks():
    result = score_error_correlations(POOL, ERRORS, QueryConfig())
    assert list(result) == ["asd_voxel_mean", "asd_class_balanced", "clasp_class_mean", "clasp_plain", "mean_entropy"]
    assert result["asd_voxel_mean"].rho == pytest.approx(-1.0)
    assert result["asd_class_balanced"].rho == pytest.approx(1.0)
    assert result["clasp_class_mean"].rho == pytest.approx(1.0)
    assert result["clasp_plain"].rho == pytest.approx(-1.0)
    assert result["mean_entropy"].rho == pytest.approx(0.8)  # ranks 2, 1, 3, 4: 1 - 6 * 2 / (4 * 15)
    assert all(r.n == 4 for r in result.values())


def test_the_correlations_do_not_depend_on_the_asd_reduce_of_the_config():
    a = score_error_correlations(POOL, ERRORS, QueryConfig(asd_reduce="voxel_mean"))
    b = score_error_correlations(POOL, ERRORS, QueryConfig(asd_reduce="class_balanced"))
    assert {k: v.rho for k, v in a.items()} == {k: v.rho for k, v in b.items()}


def case(case_id: str, embedding, kd: float = 0.0) -> CaseEvidence:
    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=kd,
        asd=0.5,
        mean_entropy=0.5,
        pretrained_embedding=np.asarray(embedding, dtype=float),
        current_embedding=np.asarray(embedding, dtype=float),
        clasp_scores=np.array([0.5, 0.1, 0.1]),
    )


def test_pool_dkd_is_normalised_kd_times_the_distance_to_the_labelled_set():
    pool = [case("a", [0, 1], kd=0.0), case("b", [0, 1], kd=1.0), case("c", [0, 1], kd=2.0)]
    np.testing.assert_allclose(pool_dkd(pool, QueryConfig(), [np.array([1.0, 0.0])]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(pool_dkd(pool, QueryConfig(), [np.array([0.0, 1.0])]), [0.0, 0.0, 0.0])
    # cold start: KD without spread and no labelled case -> DKD is 1 everywhere
    cold = [case(c, [1, i]) for i, c in enumerate("abc")]
    np.testing.assert_allclose(pool_dkd(cold, QueryConfig()), [1.0, 1.0, 1.0])


def test_dkd_and_extra_scores_join_the_report():
    angles = [0.2, 0.5, 0.9, 1.3]  # farther and farther from the labelled direction (1, 0)
    evidence = [case(f"c{i}", [math.cos(t), math.sin(t)]) for i, t in enumerate(angles)]
    result = score_error_correlations(
        POOL,
        ERRORS,
        QueryConfig(),
        evidence=evidence,
        labeled_embeddings=[np.array([1.0, 0.0])],
        extra={"bald": [4, 3, 2, 1]},
    )
    assert result["dkd"].rho == pytest.approx(1.0)
    assert math.isnan(result["knowledge_divergence"].rho)  # KD = 0 for every case: no information
    assert result["bald"].rho == pytest.approx(-1.0)
    cold = score_error_correlations(POOL, ERRORS, QueryConfig(), evidence=evidence)
    assert math.isnan(cold["dkd"].rho)  # cold start without labels: DKD is constant


def test_inconsistent_inputs_are_refused():
    with pytest.raises(ValueError, match="region sums for"):
        score_error_correlations(POOL, ERRORS[:3], QueryConfig())
    with pytest.raises(ValueError, match="evidence records"):
        score_error_correlations(POOL, ERRORS, QueryConfig(), evidence=[case("a", [1, 0])])
    with pytest.raises(ValueError, match="rename"):
        score_error_correlations(POOL, ERRORS, QueryConfig(), extra={"mean_entropy": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="region settings"):
        score_error_correlations(POOL, ERRORS, QueryConfig(fg_dilation=1))
