"""Queries for tiny budgets: TypiClust and ProbCover coverage, power sampling, the live divergence's sign and gating,
the budget-aware switch, and the one-line reason of each proposed volume."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest

from ASSFTActive.query import (
    CaseEvidence,
    QueryConfig,
    Strategy,
    probcover_order,
    probcover_radius,
    resolved_strategy,
    select,
    typicality,
    typiclust_order,
)
from ASSFTActive.query.coverage import _distances, ball_purity, kmeans_labels


def case(
    case_id: str,
    embedding: Sequence[float],
    kd: float = 0.0,
    asd: float = 0.5,
    mean_entropy: float = 0.5,
    ood_reason: str = "",
) -> CaseEvidence:
    vector = np.asarray(embedding, dtype=float)
    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=kd,
        asd=asd,
        mean_entropy=mean_entropy,
        pretrained_embedding=vector,
        current_embedding=vector,
        clasp_scores=np.array([0.5, 0.1]),
        ood_reason=ood_reason,
    )


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=float)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def groups(sizes=(6, 3), spread=0.02, seed=0, outlier=True):
    """Groups of cases around orthogonal directions (ids a0.., b0..), their centre members listed last, and one
    outlier 'z' far from both (in a direction of its own)."""
    rng = np.random.default_rng(seed)
    dim = len(sizes) + 1
    pool = []
    for g, size in enumerate(sizes):
        centre = np.zeros(dim)
        centre[g] = 1.0
        for i in range(size - 1):
            pool.append(case(f"{'ab'[g]}{i}", centre + spread * rng.normal(size=dim)))
        pool.append(case(f"{'ab'[g]}centre", centre))  # exactly the centre: the most typical member
    if outlier:
        far = np.zeros(dim)
        far[-1] = 1.0
        far[0] = 0.3
        pool.append(case("z", far, asd=1.0))
    return pool


# ------------------------------------------------------------------------------------------------- typicality
def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest_neighbours():
    points = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    values = typicality(points, neighbours=1)
    assert values == pytest.approx([1.0, 1.0, 1 / 2.0])
    values = typicality(points, neighbours=2)
    assert values == pytest.approx([1 / 2.0, 1 / 1.5, 1 / 2.5])


def test_typicality_of_a_lone_point_is_infinite():
    assert typicality(np.array([[1.0, 0.0]])).tolist() == [np.inf]


def test_kmeans_labels_are_seeded_and_separate_obvious_groups():
    points = unit([[1, 0.01], [1, -0.01], [0.01, 1], [-0.01, 1]])
    first = kmeans_labels(points, 2, seed=3)
    assert first.tolist() == kmeans_labels(points, 2, seed=3).tolist()
    assert first[0] == first[1] != first[2] == first[3]


def test_typiclust_picks_the_most_typical_volume_of_each_cluster_largest_cluster_first():
    pool = groups()
    embedded = unit([c.pretrained_embedding for c in pool])
    result = typiclust_order(embedded, np.zeros((0, embedded.shape[1])), budget=2, seed=0)
    ids = [pool[i].case_id for i in result.order]
    # two clusters for B = 2: the outlier joins a group (k-means), and the most typical of each group is its centre
    assert ids[:2] == ["acentre", "bcentre"]
    assert sorted(ids) == sorted(c.case_id for c in pool)  # a full ordering
    assert result.group_sizes[result.order[0]] >= 6


def test_typiclust_skips_clusters_that_hold_a_labeled_volume():
    pool = groups(outlier=False)
    embedded = unit([c.pretrained_embedding for c in pool])
    labeled = unit([[1.0, 0.0, 0.0]])  # sits in group a
    result = typiclust_order(embedded, labeled, budget=1, seed=0)
    assert pool[result.order[0]].case_id == "bcentre"


def test_typiclust_never_picks_the_outlier_within_the_budget():
    ranking = select(groups(), 2, QueryConfig(strategy="typiclust"))
    assert "z" not in ranking.selected_ids
    # the uncertainty query spends its first pick on the outlier (ASD 1.0): the failure mode at tiny budgets
    assert select(groups(), 2, QueryConfig(strategy="asd_only")).selected_ids[0] == "z"


# ------------------------------------------------------------------------------------------------- ProbCover
def test_ball_purity_counts_balls_whose_members_share_the_centre_label():
    points = np.array([[0.0], [1.0], [10.0]])
    labels = np.array([0, 1, 1])
    assert ball_purity(points, labels, 0.5) == 1.0
    assert ball_purity(points, labels, 1.5) == pytest.approx(1 / 3)  # balls of 0 and 1 mix labels; 10 is alone


def test_probcover_radius_is_the_largest_distance_that_keeps_balls_pure():
    points = unit([[1, 0.0], [1, 0.05], [1, -0.05], [0.0, 1], [0.05, 1], [-0.05, 1]])
    radius = probcover_radius(points, n_clusters=2, purity=0.95, seed=0)
    # every larger candidate distance is across the two groups, so the widest pure ball is the group's diameter
    assert radius == pytest.approx(np.linalg.norm(points[1] - points[2]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probcover_radius_equals_the_scan_over_every_candidate_radius(seed):
    rng = np.random.default_rng(seed)
    points = unit(rng.normal(size=(30, 4)))
    radius = probcover_radius(points, n_clusters=3, purity=0.9, seed=seed)
    labels = kmeans_labels(points, 3, seed)
    distances = _distances(points, points)  # the same arithmetic as the rule: no rounding at the boundary
    candidates = np.unique(distances[np.triu_indices(30, 1)])
    scanned = max([r for r in candidates if ball_purity(points, labels, r) >= 0.9], default=0.0)
    assert radius == pytest.approx(scanned)


@pytest.mark.parametrize("seed", [0, 1])
def test_probcover_greedy_order_equals_recounting_every_ball_at_every_step(seed):
    rng = np.random.default_rng(seed)
    pool = unit(rng.normal(size=(25, 3)))
    labeled = unit(rng.normal(size=(2, 3)))
    result = probcover_order(pool, labeled, budget=3, purity=0.9, seed=seed)
    within = _distances(pool, pool) <= result.radius
    covered = np.any(_distances(pool, labeled) <= result.radius, axis=1)
    taken = np.zeros(25, dtype=bool)
    expected = []
    for _ in range(25):
        candidates = np.flatnonzero(~taken)
        gain = within[np.ix_(candidates, np.flatnonzero(~covered))].sum(axis=1)
        if gain.size == 0 or gain.max() == 0:
            gain = within[np.ix_(candidates, candidates)].sum(axis=1)
        pick = int(candidates[np.argmax(gain)])
        expected.append(pick)
        covered |= within[pick]
        taken[pick] = True
    assert result.order == expected


def test_probcover_first_ball_covers_the_largest_group():
    pool = groups(sizes=(6, 3), outlier=False)
    embedded = unit([c.pretrained_embedding for c in pool])
    result = probcover_order(embedded, np.zeros((0, embedded.shape[1])), budget=2, purity=0.95, seed=0)
    first, second = (pool[i].case_id for i in result.order[:2])
    assert first.startswith("a") and second.startswith("b")
    assert result.group_sizes[result.order[0]] == 6
    assert result.group_sizes[result.order[1]] == 3
    assert result.radius > 0


def test_probcover_labeled_balls_are_covered_from_the_start():
    pool = groups(sizes=(6, 3), outlier=False)
    embedded = unit([c.pretrained_embedding for c in pool])
    result = probcover_order(embedded, unit([[1.0, 0.0, 0.0]]), budget=1, purity=0.95, seed=0)
    assert pool[result.order[0]].case_id.startswith("b")


# -------------------------------------------------------------------------------------------- power sampling
def test_power_sampling_draws_the_first_pick_in_proportion_to_score_to_the_beta():
    pool = [case("low", [1, 0], asd=0.25), case("high", [0, 1], asd=0.75)]
    raw = {"strategy": "asd_only", "sampling": "power", "normalise_scores": False}
    firsts = [
        select(pool, 1, QueryConfig.from_dict({**raw, "sampling_beta": 1.0, "seed": s})).selected_ids[0]
        for s in range(2000)
    ]
    share = firsts.count("high") / len(firsts)
    assert share == pytest.approx(0.75, abs=0.03)  # Gumbel-top-k: P(first) = s^beta / sum s^beta = 0.75
    firsts = [
        select(pool, 1, QueryConfig.from_dict({**raw, "sampling_beta": 2.0, "seed": s})).selected_ids[0]
        for s in range(2000)
    ]
    assert firsts.count("high") / len(firsts) == pytest.approx(0.9, abs=0.03)  # 0.75^2 / (0.75^2 + 0.25^2)


def test_power_sampling_is_seeded_and_large_beta_is_top_k():
    pool = [case(f"c{i}", np.eye(6)[i], asd=0.1 + 0.15 * i) for i in range(6)]
    config = QueryConfig(strategy="assft", sampling="power", seed=7)
    assert select(pool, 3, config).selected_ids == select(pool, 3, config).selected_ids
    greedy = select(pool, 3, QueryConfig(strategy="assft"))
    near_greedy = select(pool, 3, QueryConfig(strategy="assft", sampling="power", sampling_beta=1e6, seed=7))
    assert near_greedy.selected_ids == greedy.selected_ids


def test_power_sampling_changes_assfts_combined_score_picks_across_seeds():
    pool = [case(f"c{i}", np.eye(8)[i], asd=0.3 + 0.05 * i) for i in range(8)]
    picks = {select(pool, 2, QueryConfig(strategy="assft", sampling="power", seed=s)).selected_ids for s in range(30)}
    assert len(picks) > 3


def test_power_sampling_is_refused_for_strategies_that_already_draw_or_cover():
    with pytest.raises(ValueError, match="sampling='power'"):
        select(groups(), 2, QueryConfig(strategy="typiclust", sampling="power"))


# ------------------------------------------------------------------------------------- live divergence's sign
def live_pool():
    """Orthogonal cases (diversity equal for all) with a live KD spread."""
    return [case(f"kd{i}", np.eye(4)[i], kd=0.01 * (i + 1)) for i in range(4)]


def test_prefer_high_live_kd_picks_the_largest_divergence_first():
    assert select(live_pool(), 1, QueryConfig(strategy="dkd_only")).selected_ids == ("kd3",)


def test_prefer_low_live_kd_picks_the_smallest_divergence_first():
    ranking = select(live_pool(), 1, QueryConfig(strategy="dkd_only", kd_direction="low"))
    assert ranking.selected_ids == ("kd0",)
    assert "moved little" in ranking.cases[0].reason


def test_divergence_only_from_a_budget_on():
    below = select(live_pool(), 1, QueryConfig(strategy="dkd_only", kd_min_budget=2))
    assert below.selected_ids == ("kd0",)  # KD off: all DKD equal (diversity 1), tie to the first listed
    assert below.cases[0].dkd == pytest.approx(1.0)
    at = select(live_pool(), 2, QueryConfig(strategy="dkd_only", kd_min_budget=2))
    assert at.selected_ids[0] == "kd3"


def test_divergence_only_from_a_later_round():
    config = QueryConfig(strategy="dkd_only", kd_min_round=1)
    assert select(live_pool(), 1, config, round_index=0, total_rounds=2).selected_ids == ("kd0",)
    assert select(live_pool(), 1, config, round_index=1, total_rounds=2).selected_ids == ("kd3",)


# ---------------------------------------------------------------------------------------------- budget aware
def test_budget_aware_uses_coverage_up_to_its_budget_and_assft_beyond():
    config = QueryConfig(strategy="budget_aware")
    assert resolved_strategy(config, 4) == Strategy.TYPICLUST
    assert resolved_strategy(config, 5) == Strategy.ASSFT
    assert resolved_strategy(QueryConfig(strategy="budget_aware", coverage="probcover"), 2) == Strategy.PROBCOVER
    small = select(groups(), 2, config)
    assert small.strategy == "budget_aware"
    assert small.selected_ids == select(groups(), 2, QueryConfig(strategy="typiclust")).selected_ids
    assert "coverage at budget 2 <= 4" in small.cases[0].reason
    large = select(groups(), 5, config)
    assert large.selected_ids == select(groups(), 5, QueryConfig(strategy="assft")).selected_ids
    assert "DKD + ASD at budget 5 > 4" in large.cases[0].reason


def test_budget_aware_is_not_the_default():
    assert QueryConfig().strategy == Strategy.ASSFT


def test_new_settings_round_trip_and_are_checked():
    config = QueryConfig(
        strategy="probcover",
        sampling="top_k",
        kd_direction="low",
        kd_min_budget=3,
        kd_min_round=1,
        coverage="probcover",
        coverage_max_budget=2,
        probcover_purity=0.9,
        propose_ood=True,
    )
    assert QueryConfig.from_dict(config.to_dict()) == config
    for bad in (
        {"sampling_beta": 0.0},
        {"probcover_purity": 1.5},
        {"kd_direction": "sideways"},
        {"coverage_max_budget": -1},
        {"propose_ood": "yes"},
    ):
        with pytest.raises(ValueError):
            QueryConfig.from_dict(bad)


# --------------------------------------------------------------------------------------------------- reasons
def test_each_proposed_volume_has_a_one_line_reason_and_the_others_none():
    ranking = select(groups(), 2, QueryConfig(strategy="typiclust"))
    first = ranking.cases[0]
    assert first.reason.startswith("most typical of a group of ") and "similar volumes" in first.reason
    assert all(c.reason == "" for c in ranking.cases if not c.selected)
    assert all("\n" not in c.reason for c in ranking.cases)


def test_reason_of_an_uncertainty_pick_names_the_anatomy_and_its_place():
    ranking = select(groups(), 1, QueryConfig(strategy="asd_only"))
    assert ranking.cases[0].reason == f"most uncertain anatomy (ASD 1.00, #1 of {len(groups())})"


def test_reason_of_probcover_counts_the_volumes_covered():
    ranking = select(groups(sizes=(6, 3), outlier=False), 1, QueryConfig(strategy="probcover"))
    assert ranking.cases[0].reason == "covers a group of 6 similar volumes not yet covered"


def test_reasons_of_the_baselines():
    assert select(groups(), 1, QueryConfig(strategy="random", seed=4)).cases[0].reason == "drawn at random (seed 4)"
    assert select(groups(), 1, QueryConfig(strategy="coreset")).cases[0].reason.startswith("farthest from")


# ------------------------------------------------------------------------------------------- out of distribution
def test_out_of_distribution_volumes_are_ranked_last_and_not_proposed():
    pool = groups()[:-1] + [case("phantom", [0.0, 0.0, 1.0], asd=1.0, ood_reason="far from the source features")]
    ranking = select(pool, 2, QueryConfig(strategy="asd_only"))
    assert "phantom" not in ranking.selected_ids
    last = ranking.cases[-1]
    assert last.case_id == "phantom" and not last.selected
    assert last.reason == "not proposed: far from the source features"


def test_out_of_distribution_volumes_are_proposed_when_asked():
    pool = groups()[:-1] + [case("phantom", [0.0, 0.0, 1.0], asd=1.0, ood_reason="far from the source features")]
    ranking = select(pool, 1, QueryConfig(strategy="asd_only", propose_ood=True))
    assert ranking.selected_ids == ("phantom",)
    assert "(flagged: far from the source features)" in ranking.cases[0].reason


def test_a_pool_of_only_out_of_distribution_volumes_proposes_nothing():
    pool = [case("ct", [1.0, 0.0], ood_reason="x"), case("phantom", [0.0, 1.0], ood_reason="y")]
    ranking = select(pool, 2, QueryConfig())
    assert ranking.selected_ids == ()
    assert [c.rank for c in ranking.cases] == [1, 2]
