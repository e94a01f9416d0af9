"""The harness's statistics (``Testing/Benchmarks/harness/stats.py``) on hand-built numbers with known answers:
gaps over replicated pools with a clustered bootstrap, the percentile in the random-subset distribution, the
oracle-subset headroom and the share a strategy captures, the Wilcoxon test over pools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from Testing.Benchmarks.harness import stats


def test_a_constant_gap_in_every_pool_and_case_has_a_point_interval():
    reference = [np.tile(np.linspace(0.5, 0.8, 6), (3, 1)) for _ in range(5)]  # 5 pools, 3 identical draws
    arm = [r[:1] + 0.05 for r in reference]
    gap = stats.clustered_gap(arm, reference)
    assert gap.gap == pytest.approx(0.05)
    assert gap.low == pytest.approx(0.05) and gap.high == pytest.approx(0.05)
    assert gap.per_pool == pytest.approx((0.05,) * 5)
    assert gap.p_wilcoxon == pytest.approx(2 / 2**5)  # five positive pool gaps: the exact two-sided p
    assert (gap.pools, gap.cases, gap.clusters) == (5, 6, 6)


def test_the_pool_gaps_spread_widens_the_interval_and_fewer_than_five_pools_get_no_wilcoxon():
    reference = [np.full((1, 4), 0.6) for _ in range(4)]
    arm = [np.full((1, 4), 0.6 + d) for d in (0.0, 0.1, 0.0, 0.1)]
    gap = stats.clustered_gap(arm, reference)
    assert gap.gap == pytest.approx(0.05)
    assert gap.low < 0.04 and gap.high > 0.06  # resampling pools: 0, 0.025, ..., 0.1
    assert gap.low >= 0.0 - 1e-12 and gap.high <= 0.1 + 1e-12
    assert math.isnan(gap.p_wilcoxon)


def test_random_draw_noise_widens_the_interval_although_the_mean_gap_is_zero():
    reference = [np.array([[0.5] * 5, [0.7] * 5]) for _ in range(5)]  # two random draws, 0.5 and 0.7
    arm = [np.full((1, 5), 0.6) for _ in range(5)]
    gap = stats.clustered_gap(arm, reference)
    assert gap.gap == pytest.approx(0.0)
    assert gap.low < -0.02 and gap.high > 0.02


def test_cases_of_one_patient_are_resampled_together():
    # two patients of ten cases each: gap 0.1 on one, 0.3 on the other
    reference = [np.zeros((1, 20))]
    arm = [np.concatenate([np.full(10, 0.1), np.full(10, 0.3)])[None]]
    patients = ["p1"] * 10 + ["p2"] * 10
    clustered = stats.clustered_gap(arm, reference, patients)
    by_case = stats.clustered_gap(arm, reference)
    assert clustered.gap == pytest.approx(0.2) and clustered.clusters == 2
    # a resample of two patients is {p1, p1}, {p1, p2} or {p2, p2}: gaps 0.1, 0.2, 0.3
    assert clustered.low == pytest.approx(0.1) and clustered.high == pytest.approx(0.3)
    # twenty independent cases average out: a much narrower interval
    assert by_case.high - by_case.low < 0.5 * (clustered.high - clustered.low)


def test_pools_scored_on_different_cases_or_unpaired_pools_are_refused():
    with pytest.raises(ValueError, match="different numbers of cases"):
        stats.clustered_gap([np.zeros((1, 3)), np.zeros((1, 4))], [np.zeros((1, 3)), np.zeros((1, 4))])
    with pytest.raises(ValueError, match="pool by pool"):
        stats.clustered_gap([np.zeros((1, 3))], [np.zeros((1, 3))] * 2)
    with pytest.raises(ValueError, match="cluster names"):
        stats.clustered_gap([np.zeros((1, 3))], [np.zeros((1, 3))], ["a", "b"])


def test_percentile_counts_random_subsets_below_and_half_the_ties():
    assert stats.percentile_in_random(0.9, [0.5, 0.6, 0.7, 0.8]) == 100.0
    assert stats.percentile_in_random(0.4, [0.5, 0.6, 0.7, 0.8]) == 0.0
    assert stats.percentile_in_random(0.6, [0.5, 0.6, 0.7, 0.8]) == pytest.approx(37.5)  # 1 below + half a tie
    assert stats.pooled_percentile([0.9, 0.4], [[0.5, 0.6], [0.5, 0.6]]) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no random subset"):
        stats.percentile_in_random(0.5, [])


def test_oracle_headroom_is_the_best_and_90th_percentile_subset_minus_the_mean():
    headroom = stats.oracle_headroom([0.6, 0.7, 0.8, 0.9])
    assert headroom.mean == pytest.approx(0.75)
    assert headroom.best_gain == pytest.approx(0.15)
    assert headroom.p90_gain == pytest.approx(0.87 - 0.75)  # linear interpolation between 0.8 and 0.9
    assert headroom.subsets == 4
    assert stats.headroom_captured(0.825, headroom) == pytest.approx(0.5)
    assert stats.headroom_captured(0.75, headroom) == pytest.approx(0.0)
    assert stats.headroom_captured(0.6, headroom) == pytest.approx(-1.0)
    assert math.isnan(stats.headroom_captured(0.7, stats.oracle_headroom([0.7, 0.7])))


def test_wilcoxon_over_pools_needs_five_pools_and_a_nonzero_gap():
    assert stats.wilcoxon_over_pools([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(0.0625)
    assert math.isnan(stats.wilcoxon_over_pools([0.01, 0.02, 0.03, 0.04]))
    assert math.isnan(stats.wilcoxon_over_pools([0.0] * 6))


def test_aubc_is_the_mean_of_a_flat_curve_on_a_log_budget_axis():
    assert stats.aubc([2, 4, 8], [0.7, 0.7, 0.7]) == pytest.approx(0.7)
    assert stats.aubc([2, 8], [0.6, 0.8]) == pytest.approx(0.7)
    assert stats.aubc([4], [0.5]) == 0.5


def test_a_recipe_gap_paired_by_labelled_set_cancels_the_spread_between_sets():
    # five labelled sets whose Dice differ by up to 0.2; the recipe adds exactly 0.03 to each
    reference = np.array([[0.5 + 0.05 * s] * 4 for s in range(5)])
    arm = reference + 0.03
    paired = stats.set_paired_gap(arm, reference)
    assert paired.gap == pytest.approx(0.03) and paired.per_set == pytest.approx((0.03,) * 5)
    assert paired.low == pytest.approx(0.03) and paired.high == pytest.approx(0.03)
    # the same numbers as independent draws: the set-to-set spread stays in the interval
    unpaired = stats.clustered_gap([arm], [reference])
    assert unpaired.high - unpaired.low > 0.1


def test_a_recipe_gap_resamples_labelled_sets_and_patients():
    reference = np.zeros((2, 4))
    arm = np.array([[0.0, 0.0, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1]])  # set 0 gains on patient q only
    paired = stats.set_paired_gap(arm, reference, ["p", "p", "q", "q"])
    assert paired.gap == pytest.approx(0.075) and (paired.sets, paired.cases, paired.clusters) == (2, 4, 2)
    # the extremes: set 0 on patient p only (0.0) and any set on q (0.1)
    assert paired.low == pytest.approx(0.0) and paired.high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same shape"):
        stats.set_paired_gap(arm, reference[:1])


def test_a_labelled_set_drawn_in_two_pools_counts_once_whatever_its_order():
    records = [{"labelled": ["b", "a"]}, {"labelled": ["a", "b"]}, {"labelled": ["a", "c"]}, {"labelled": []}]
    assert stats.distinct_labelled_sets(records) == 3
