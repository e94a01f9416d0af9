"""The baselines a reviewer asks for, with known answers: BALD (MC-dropout mutual information) and the
foreground-size-aware random (``fg_random``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.query import (
    CaseEvidence,
    McDropoutAccumulator,
    QueryConfig,
    RegionSpec,
    bald_from_moments,
    bald_mutual_information,
    bald_voxel_map,
    fg_random_eligible,
    mc_dropout_epistemic,
    region_sums,
    select,
    summarize_case,
)


def entropy(*p: float) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def constant_probs(values, shape=(2, 2, 2)) -> np.ndarray:
    """``[C, *shape]`` with the class distribution ``values`` at every voxel."""
    return np.stack([np.full(shape, v, dtype=np.float32) for v in values])


def features():
    return [np.array([1.0, 0.0, 0.5]), np.array([0.2, 1.0, 0.3])]


def evidence(case_id: str, embedding, *, fg: float = float("nan"), mi=None, epistemic=None) -> CaseEvidence:
    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=0.0,
        asd=0.5,
        mean_entropy=0.5,
        pretrained_embedding=np.asarray(embedding, dtype=float),
        current_embedding=np.asarray(embedding, dtype=float),
        clasp_scores=np.array([0.5, 0.1]),
        epistemic=epistemic,
        mutual_information=mi,
        foreground_voxels=fg,
    )


# ------------------------------------------------------------------------------------------------------ BALD


def test_bald_of_two_passes_one_hot_on_different_classes_is_ln_2():
    samples = np.stack([constant_probs((1.0, 0.0)), constant_probs((0.0, 1.0))])
    np.testing.assert_allclose(bald_voxel_map(samples), math.log(2), rtol=1e-12)
    assert bald_mutual_information(samples) == pytest.approx(math.log(2), rel=1e-12)


def test_bald_is_zero_when_every_pass_agrees_however_uncertain_while_mc_dropout_entropy_is_not():
    samples = np.stack([constant_probs((1 / 3, 1 / 3, 1 / 3))] * 4)
    assert bald_mutual_information(samples) == pytest.approx(0.0, abs=1e-7)
    assert mc_dropout_epistemic(samples) > 0.5  # the epistemic baseline sees the (aleatoric) uncertainty


def test_bald_is_the_entropy_of_the_mean_minus_the_mean_entropy():
    samples = np.stack([constant_probs((0.9, 0.1)), constant_probs((0.5, 0.5))])
    expected = entropy(0.7, 0.3) - (entropy(0.9, 0.1) + entropy(0.5, 0.5)) / 2  # 0.1017...
    np.testing.assert_allclose(bald_voxel_map(samples), expected, rtol=1e-6)
    assert expected == pytest.approx(0.1017492, abs=1e-6)


def test_bald_case_score_is_the_volume_mean_of_the_voxel_map():
    first = constant_probs((1.0, 0.0), shape=(2, 2, 2))
    second = first.copy()
    second[:, 0] = np.array([0.0, 1.0], dtype=np.float32)[:, None, None]  # half the voxels disagree
    samples = np.stack([first, second])
    assert bald_mutual_information(samples) == pytest.approx(math.log(2) / 2, rel=1e-12)


def test_bald_counts_the_background_channel_unlike_monai_label_epistemic():
    agree_fg = np.stack([constant_probs((0.6, 0.2, 0.2)), constant_probs((0.2, 0.6, 0.2))])
    expected = entropy(0.4, 0.4, 0.2) - entropy(0.6, 0.2, 0.2)
    assert bald_mutual_information(agree_fg) == pytest.approx(expected, rel=1e-6)


def test_streamed_moments_give_the_same_scores_as_all_samples_at_once():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 3, 4, 5, 3))
    samples = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    accumulator = McDropoutAccumulator()
    for sample in samples:
        accumulator.add(sample)
    assert accumulator.count == 6
    assert accumulator.mutual_information() == pytest.approx(bald_mutual_information(samples), rel=1e-12)
    assert accumulator.epistemic() == pytest.approx(mc_dropout_epistemic(samples), rel=1e-5)
    np.testing.assert_allclose(
        bald_from_moments(samples.mean(axis=0), accumulator.mean_sample_entropy), bald_voxel_map(samples), atol=1e-6
    )


def test_the_accumulator_keeps_no_reference_to_a_sample():
    first, second = constant_probs((1.0, 0.0)), constant_probs((0.0, 1.0))
    accumulator = McDropoutAccumulator()
    accumulator.add(first)
    accumulator.add(second)
    first[:] = 0.5  # the predictor may reuse its buffer
    assert accumulator.mutual_information() == pytest.approx(math.log(2), rel=1e-12)


def test_bald_needs_two_passes_of_one_shape():
    accumulator = McDropoutAccumulator()
    accumulator.add(constant_probs((0.5, 0.5)))
    with pytest.raises(ValueError, match="at least 2"):
        accumulator.mutual_information()
    with pytest.raises(ValueError, match="shape"):
        accumulator.add(constant_probs((0.5, 0.5), shape=(3, 2, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        bald_mutual_information(constant_probs((0.5, 0.5))[None])


def test_summary_stores_both_mc_dropout_scores_and_bald_needs_them():
    samples = np.stack([constant_probs((0.9, 0.1)), constant_probs((0.5, 0.5))])
    sums = region_sums(samples.mean(axis=0), RegionSpec())
    case = summarize_case("c", sums, features(), features(), QueryConfig(strategy="bald"), prob_samples=samples)
    assert case.mutual_information == pytest.approx(
        entropy(0.7, 0.3) - (entropy(0.9, 0.1) + entropy(0.5, 0.5)) / 2, rel=1e-6
    )
    assert case.epistemic == pytest.approx(mc_dropout_epistemic(samples), rel=1e-5)
    streamed = summarize_case("c", sums, features(), features(), QueryConfig(strategy="bald"), mutual_information=0.25)
    assert streamed.mutual_information == 0.25
    with pytest.raises(ValueError, match="'bald' needs prob_samples"):
        summarize_case("c", sums, features(), features(), QueryConfig(strategy="bald"))


def test_bald_orders_by_descending_mutual_information_and_requires_it():
    pool = [evidence("a", [1, 0], mi=0.1), evidence("b", [0, 1], mi=0.6), evidence("c", [1, 1], mi=0.3)]
    ranking = select(pool, 2, QueryConfig(strategy="bald"))
    assert ranking.selected_ids == ("b", "c")
    assert [row.score for row in ranking.cases] == [0.6, 0.3, 0.1]
    with pytest.raises(ValueError, match="BALD"):
        select([evidence("a", [1, 0], epistemic=0.2)], 1, QueryConfig(strategy="bald"))


def test_evidence_round_trips_the_new_fields_and_reads_older_records():
    case = evidence("a", [1, 0], fg=42.0, mi=0.125)
    restored = CaseEvidence.from_dict(case.to_dict())
    assert restored.foreground_voxels == 42.0 and restored.mutual_information == 0.125
    old = {k: v for k, v in case.to_dict().items() if k not in ("foreground_voxels", "mutual_information")}
    older = CaseEvidence.from_dict(old)
    assert math.isnan(older.foreground_voxels) and older.mutual_information is None
    with pytest.raises(ValueError, match="mutual_information"):
        evidence("a", [1, 0], mi=-0.1)
    with pytest.raises(ValueError, match="foreground_voxels"):
        evidence("a", [1, 0], fg=-1.0)


# ------------------------------------------------------------------------------------------------- fg_random


def test_eligible_cases_have_a_foreground_of_at_least_the_share_of_the_pool_median():
    sizes = np.array([0, 10, 100, 120, 200])  # median 100
    np.testing.assert_array_equal(fg_random_eligible(sizes, 0.5), [False, False, True, True, True])
    np.testing.assert_array_equal(fg_random_eligible(sizes, 0.05), [False, True, True, True, True])
    np.testing.assert_array_equal(fg_random_eligible(sizes, 0.0), [False, True, True, True, True])
    np.testing.assert_array_equal(fg_random_eligible(sizes, 1.0), [False, False, True, True, True])


def test_an_empty_prediction_is_never_eligible_even_when_the_median_is_zero():
    np.testing.assert_array_equal(fg_random_eligible(np.array([0, 0, 0, 5]), 0.5), [False, False, False, True])
    np.testing.assert_array_equal(fg_random_eligible(np.zeros(3), 0.5), [False, False, False])


def size_pool():
    sizes = [0, 400, 15, 300, 0, 350, 20, 500, 280, 5]  # median 290: eligible >= 145 -> indices 1, 3, 5, 7, 8
    return [evidence(f"v{i}", [math.cos(i), math.sin(i)], fg=float(s)) for i, s in enumerate(sizes)], sizes


@pytest.mark.parametrize("seed", range(6))
def test_fg_random_draws_the_eligible_cases_in_random_order_then_the_rest_by_size(seed):
    pool, sizes = size_pool()
    ranking = select(pool, 3, QueryConfig(strategy="fg_random", seed=seed))
    eligible = {"v1", "v3", "v5", "v7", "v8"}
    ranked = [row.case_id for row in ranking.cases]
    assert set(ranked[:5]) == eligible
    assert ranked[5:] == ["v6", "v2", "v9", "v0", "v4"]  # by descending foreground, ties in pool order
    # the eligible cases keep the relative order of plain 'random' with the same seed
    plain = [row.case_id for row in select(pool, 10, QueryConfig(strategy="random", seed=seed)).cases]
    assert ranked[:5] == [c for c in plain if c in eligible]
    scores = [row.score for row in ranking.cases]
    assert all(1.0 <= s < 2.0 for s in scores[:5]) and scores[5:] == pytest.approx([20 / 500, 15 / 500, 5 / 500, 0, 0])


def test_fg_random_is_reproducible_by_seed_and_varies_across_seeds():
    pool, _ = size_pool()
    picks = {select(pool, 2, QueryConfig(strategy="fg_random", seed=s)).selected_ids for s in range(12)}
    again = select(pool, 2, QueryConfig(strategy="fg_random", seed=4)).selected_ids
    assert again == select(pool, 2, QueryConfig(strategy="fg_random", seed=4)).selected_ids
    assert len(picks) > 3


def test_fg_random_min_share_zero_excludes_only_empty_predictions():
    pool, _ = size_pool()
    ranked = [row.case_id for row in select(pool, 3, QueryConfig(strategy="fg_random", fg_random_min_share=0.0)).cases]
    assert set(ranked[-2:]) == {"v0", "v4"}


def test_fg_random_needs_the_predicted_foreground_size():
    with pytest.raises(ValueError, match="foreground size"):
        select([evidence("a", [1, 0]), evidence("b", [0, 1])], 1, QueryConfig(strategy="fg_random"))


def test_summary_records_the_dilated_predicted_foreground_size():
    probs = np.zeros((2, 6, 6, 6), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 2:4, 2:4, 2:4] = np.array([0.2, 0.8], dtype=np.float32)[:, None, None, None]  # a 2x2x2 cube
    undilated = summarize_case(
        "c", region_sums(probs, RegionSpec(dilation=0)), features(), features(), QueryConfig(fg_dilation=0)
    )
    assert undilated.foreground_voxels == 8.0
    dilated = summarize_case(
        "c", region_sums(probs, RegionSpec(dilation=1)), features(), features(), QueryConfig(fg_dilation=1)
    )
    assert dilated.foreground_voxels == 8.0 + 6 * 4  # the cube plus one face layer on each of its 6 sides
    cold = summarize_case("c", None, features(), features(), QueryConfig(strategy="dkd_only"))
    assert math.isnan(cold.foreground_voxels)


@pytest.mark.parametrize("name, value", [("fg_random_min_share", -0.1), ("fg_random_min_share", 1.5), ("rounds", 0)])
def test_new_settings_are_range_checked(name, value):
    with pytest.raises(ValueError, match=name):
        QueryConfig(**{name: value})


def test_defaults_of_existing_strategies_are_unchanged():
    config = QueryConfig()
    assert config.strategy.value == "assft" and config.asd_reduce.value == "voxel_mean" and config.rounds == 1
    assert config.fg_random_min_share == 0.5
