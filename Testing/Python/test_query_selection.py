"""select(): the greedy ASSFT query, its combination rules, and each baseline on constructed pools."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytest

from ASSFTActive.query import CaseEvidence, QueryConfig, Strategy, clasp_beta, select


def case(
    case_id: str,
    embedding: Sequence[float],
    kd: float = 0.0,
    asd: float = 0.5,
    mean_entropy: float = 0.5,
    clasp: Sequence[float] = (0.5, 0.1),
    epistemic: Optional[float] = None,
    current: Optional[Sequence[float]] = None,
    mutual_information: Optional[float] = None,
    foreground_voxels: float = float("nan"),
) -> CaseEvidence:
    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=kd,
        asd=asd,
        mean_entropy=mean_entropy,
        pretrained_embedding=np.asarray(embedding, dtype=float),
        current_embedding=np.asarray(embedding if current is None else current, dtype=float),
        clasp_scores=np.asarray(clasp, dtype=float),
        epistemic=epistemic,
        mutual_information=mutual_information,
        foreground_voxels=foreground_voxels,
    )


def one_hot(index: int, size: int) -> np.ndarray:
    vector = np.zeros(size)
    vector[index] = 1.0
    return vector


def three_clusters(seed: int = 0, kd: Sequence[float] = (0.0,) * 9):
    """Nine cases in three tight clusters around orthogonal directions; ids name the cluster (a, b, c)."""
    rng = np.random.default_rng(seed)
    pool = []
    for i in range(9):
        cluster = i % 3
        embedding = one_hot(cluster, 3) + 0.01 * rng.normal(size=3)
        pool.append(case(f"{'abc'[cluster]}{i // 3}", embedding, kd=kd[i]))
    return pool


def test_cold_start_greedy_diversity_picks_one_case_per_cluster():
    ranking = select(three_clusters(), 3, QueryConfig(strategy="dkd_only"))
    assert sorted(case_id[0] for case_id in ranking.selected_ids) == ["a", "b", "c"]
    # all KD equal (identical encoders): KD~ = 1, so the first pick has DKD = KD~ * Div = 1 * 1
    assert ranking.cases[0].dkd == pytest.approx(1.0)
    assert ranking.cases[1].dkd > 0.9 and ranking.cases[2].dkd > 0.9
    assert max(row.dkd for row in ranking.cases[3:]) < 0.01  # every later case is a near-duplicate


def test_default_assft_with_equal_asd_also_spreads_over_the_clusters():
    kd = (0.9, 0.1, 0.2, 0.8, 0.15, 0.25, 0.85, 0.12, 0.22)  # cluster a holds the three highest KD
    ranking = select(three_clusters(1, kd), 3, QueryConfig())
    assert ranking.selected_ids[0] == "a0"  # highest KD first
    assert sorted(case_id[0] for case_id in ranking.selected_ids) == ["a", "b", "c"]


def test_diversity_to_the_labeled_set_avoids_near_duplicates_of_labeled_cases():
    pool = [
        case("near_labeled", [1.0, 0.001, 0.0], kd=1.0),
        case("elsewhere", [0.0, 1.0, 0.0], kd=0.6),
        case("low_kd", [0.0, 0.0, 1.0], kd=0.0),
    ]
    config = QueryConfig(strategy="dkd_only")
    assert select(pool, 1, config).selected_ids == ("near_labeled",)
    with_labeled = select(pool, 1, config, labeled_embeddings=[np.array([1.0, 0.0, 0.0])])
    assert with_labeled.selected_ids == ("elsewhere",)
    assert with_labeled.cases[-1].case_id in ("near_labeled", "low_kd")
    assert [row.case_id for row in with_labeled.cases].index("near_labeled") > 0


def test_div_space_current_measures_diversity_in_the_current_embedding():
    pool = [case(f"x{i}", [1.0, 1.0], current=one_hot(i % 2, 2) + [0.0, 0.001 * i]) for i in range(4)]
    current = select(pool, 2, QueryConfig(strategy="dkd_only", div_space="current"))
    assert current.selected_ids == ("x0", "x1")  # x0 ~ e0, x1 ~ e1
    pretrained = select(pool, 2, QueryConfig(strategy="dkd_only"))
    assert pretrained.cases[1].dkd == pytest.approx(0.0, abs=1e-12)  # identical pre-trained embeddings
    with pytest.raises(ValueError, match="labeled_current_embeddings"):
        select(pool, 1, QueryConfig(div_space="current"), labeled_embeddings=[np.ones(2)])


def combination_pool():
    """Seven cases with orthogonal embeddings (Div = 1 throughout, so DKD = KD~), raw KD and ASD already in [0, 1].

    ====  ===  ===  ==============  ========  ==============
    case  KD   ASD  weighted (0.5)  product   rank KD + ASD
    ====  ===  ===  ==============  ========  ==============
    c0    0.1  0.0  0.05            0         6 + 7 = 13
    c1    0.5  0.7  0.60            0.35      3 + 4 = 7
    c2    0.4  0.8  0.60            0.32      4 + 3 = 7
    c3    1.0  0.3  **0.65**        0.30      1 + 6 = 7
    c4    0.6  0.6  0.60            **0.36**  2 + 5 = 7
    c5    0.2  1.0  0.60            0.20      5 + 1 = **6**
    c6    0.0  0.9  0.45            0         7 + 2 = 9
    ====  ===  ===  ==============  ========  ==============

    two_stage, budget 1, k = 3: the top 3 by DKD are c3, c4, c1; the highest ASD among them is c1.
    """
    kd = [0.1, 0.5, 0.4, 1.0, 0.6, 0.2, 0.0]
    asd = [0.0, 0.7, 0.8, 0.3, 0.6, 1.0, 0.9]
    return [case(f"c{i}", one_hot(i, 7), kd=kd[i], asd=asd[i]) for i in range(7)]


@pytest.mark.parametrize(
    "combine, first", [("weighted_sum", "c3"), ("product", "c4"), ("rank_mean", "c5"), ("two_stage", "c1")]
)
def test_each_combination_rule_picks_its_own_best_case(combine, first):
    ranking = select(combination_pool(), 1, QueryConfig(combine=combine))
    assert ranking.selected_ids == (first,)


def test_two_stage_orders_the_dkd_shortlist_by_asd_and_lets_the_rest_follow_in_dkd_order():
    ranking = select(combination_pool(), 1, QueryConfig(combine="two_stage"))
    assert [row.case_id for row in ranking.cases] == ["c1", "c4", "c3", "c2", "c5", "c0", "c6"]
    assert [row.score for row in ranking.cases[:3]] == pytest.approx([0.7, 0.6, 0.3])  # ASD~ in the shortlist


def test_weighted_sum_scores_and_dkd_are_reported_at_pick_time():
    ranking = select(combination_pool(), 2, QueryConfig())
    top = ranking.cases[0]
    assert (top.case_id, top.rank, top.selected) == ("c3", 1, True)
    assert top.score == pytest.approx(0.65)
    assert top.dkd == pytest.approx(1.0)
    assert top.asd == pytest.approx(0.3)


def test_ablations_dkd_only_and_asd_only_follow_one_score():
    pool = combination_pool()
    dkd_only = select(pool, 7, QueryConfig(strategy="dkd_only"))
    assert [row.case_id for row in dkd_only.cases] == ["c3", "c4", "c1", "c2", "c5", "c0", "c6"]
    asd_only = select(pool, 7, QueryConfig(strategy="asd_only"))
    assert [row.case_id for row in asd_only.cases] == ["c5", "c6", "c2", "c1", "c4", "c3", "c0"]


def test_dkd_weight_moves_the_weighted_sum_between_the_ablations():
    pool = combination_pool()
    assert select(pool, 1, QueryConfig(dkd_weight=1.0)).selected_ids == ("c3",)
    assert select(pool, 1, QueryConfig(dkd_weight=0.0)).selected_ids == ("c5",)


def test_scores_are_min_max_normalised_unless_disabled():
    pool = [case("hi", [1.0, 0.0], kd=0.3, asd=0.9), case("lo", [0.0, 1.0], kd=0.1, asd=0.8)]
    normalised = select(pool, 2, QueryConfig(strategy="dkd_only"))
    assert [row.dkd for row in normalised.cases] == pytest.approx([1.0, 0.0])
    raw = select(pool, 2, QueryConfig(strategy="dkd_only", normalise_scores=False))
    assert [row.dkd for row in raw.cases] == pytest.approx([0.3, 0.1])


def test_random_order_is_reproducible_by_seed_and_differs_across_seeds():
    pool = [case(f"r{i}", one_hot(i % 4, 4) + 0.1) for i in range(20)]
    first = select(pool, 5, QueryConfig(strategy="random", seed=11))
    again = select(pool, 5, QueryConfig(strategy="random", seed=11))
    other = select(pool, 5, QueryConfig(strategy="random", seed=12))
    order = [row.case_id for row in first.cases]
    assert order == [row.case_id for row in again.cases]
    assert order != [row.case_id for row in other.cases]
    assert sorted(order) == sorted(c.case_id for c in pool)


def test_mean_entropy_orders_by_descending_mean_entropy():
    pool = [case(f"m{i}", one_hot(i, 4), mean_entropy=value) for i, value in enumerate([0.2, 0.9, 0.5, 0.7])]
    ranking = select(pool, 2, QueryConfig(strategy="mean_entropy"))
    assert [row.case_id for row in ranking.cases] == ["m1", "m3", "m2", "m0"]
    assert ranking.selected_ids == ("m1", "m3")
    assert [row.score for row in ranking.cases] == pytest.approx([0.9, 0.7, 0.5, 0.2])


def test_coreset_picks_the_outlier_first():
    rng = np.random.default_rng(3)
    pool = [case(f"n{i}", [1.0, 0.0, 0.0] + 0.02 * rng.normal(size=3)) for i in range(5)]
    pool.insert(2, case("outlier", [0.0, 0.2, 1.0]))
    ranking = select(pool, 1, QueryConfig(strategy="coreset"))
    assert ranking.selected_ids == ("outlier",)
    labeled = select(pool, 1, QueryConfig(strategy="coreset"), labeled_embeddings=[np.array([1.0, 0.0, 0.0])])
    assert labeled.selected_ids == ("outlier",)


def test_coreset_covers_the_clusters_after_its_first_pick():
    ranking = select(three_clusters(4), 3, QueryConfig(strategy="coreset"))
    assert sorted(case_id[0] for case_id in ranking.selected_ids) == ["a", "b", "c"]
    labeled = select(three_clusters(4), 2, QueryConfig(strategy="coreset"), labeled_embeddings=[one_hot(0, 3)])
    assert sorted(case_id[0] for case_id in labeled.selected_ids) == ["b", "c"]


def clasp_pool():
    """[plain PE, class-1 score, class-2 score]; class 2 only appears in the low-PE cases k0 and k1."""
    rows = {
        "h0": (0.90, 0.30, 0.0),
        "h1": (0.85, 0.28, 0.0),
        "h2": (0.80, 0.35, 0.0),
        "h3": (0.75, 0.20, 0.0),
        "h4": (0.70, 0.10, 0.0),
        "h5": (0.65, 0.10, 0.0),
        "k0": (0.20, 0.00, 0.10),
        "k1": (0.10, 0.00, 0.05),
    }
    return [case(name, one_hot(i, 8), clasp=scores) for i, (name, scores) in enumerate(rows.items())]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clasp_pe_with_large_beta_covers_every_foreground_class(seed):
    # budget 4: floor(4 * 0.66) = 2 class picks (one per foreground class), 2 picks by plain PE
    config = QueryConfig(strategy="clasp_pe", clasp_beta=1e6, seed=seed)
    ranking = select(clasp_pool(), 4, config)
    assert set(ranking.selected_ids) == {"h2", "k0", "h0", "h1"}
    assert [row.case_id for row in ranking.cases[4:]] == ["h3", "h4", "h5", "k1"]
    plain_pe = select(clasp_pool(), 4, QueryConfig(strategy="clasp_pe", clasp_beta=1e6, clasp_fg_ratio=0.0))
    assert set(plain_pe.selected_ids) == {"h0", "h1", "h2", "h3"}  # without the class split, class 2 is missed


@pytest.mark.parametrize("budget", range(0, 10))
def test_clasp_pe_fills_every_budget_with_distinct_cases_for_three_foreground_classes(budget):
    rng = np.random.default_rng(budget)
    pool = [case(f"q{i}", one_hot(i, 9), clasp=rng.random(4)) for i in range(9)]
    ranking = select(pool, budget, QueryConfig(strategy="clasp_pe", seed=budget))
    assert len(set(ranking.selected_ids)) == min(budget, 9)
    assert len({row.case_id for row in ranking.cases}) == 9


def test_clasp_pe_noise_is_seeded_and_strong_at_small_beta():
    pool = clasp_pool()
    noisy = [
        tuple(r.case_id for r in select(pool, 3, QueryConfig(strategy="clasp_pe", seed=s)).cases) for s in range(6)
    ]
    assert noisy[0] == tuple(r.case_id for r in select(pool, 3, QueryConfig(strategy="clasp_pe", seed=0)).cases)
    assert len(set(noisy)) > 1


def test_clasp_beta_schedule_grows_exponentially_from_beta_to_100_beta():
    config = QueryConfig(clasp_beta=2.0)
    assert clasp_beta(config, 0, 5) == pytest.approx(2.0)
    assert clasp_beta(config, 2, 5) == pytest.approx(20.0)
    assert clasp_beta(config, 4, 5) == pytest.approx(200.0)
    assert clasp_beta(config, 0, 1) == pytest.approx(2.0)


def test_mc_dropout_orders_by_descending_epistemic_score_and_requires_it():
    pool = [case(f"e{i}", one_hot(i, 3), epistemic=value) for i, value in enumerate([0.1, 0.5, 0.3])]
    ranking = select(pool, 1, QueryConfig(strategy="mc_dropout"))
    assert [row.case_id for row in ranking.cases] == ["e1", "e2", "e0"]
    pool.append(case("no_samples", [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="no_samples"):
        select(pool, 1, QueryConfig(strategy="mc_dropout"))


def full_pool():
    rng = np.random.default_rng(9)
    return [
        case(
            f"p{i}",
            rng.normal(size=5),
            kd=float(rng.random()),
            asd=float(rng.random()),
            mean_entropy=float(rng.random()),
            clasp=rng.random(3),
            epistemic=float(rng.random()),
            mutual_information=float(rng.random()),
            foreground_voxels=float(rng.integers(0, 500)),
        )
        for i in range(12)
    ]


ALL_STRATEGIES = [s.value for s in Strategy]
ALL_ASSFT = [("assft", c) for c in ("weighted_sum", "rank_mean", "product", "two_stage")]


@pytest.mark.parametrize("strategy, combine", [(s, "weighted_sum") for s in ALL_STRATEGIES] + ALL_ASSFT)
@pytest.mark.parametrize("budget", [0, 4, 50])
def test_every_strategy_ranks_the_whole_pool_and_selects_the_top_ranks(strategy, combine, budget):
    pool = full_pool()
    ranking = select(pool, budget, QueryConfig(strategy=strategy, combine=combine), labeled_embeddings=[np.ones(5)])
    assert ranking.strategy == strategy and ranking.budget == budget
    assert [row.rank for row in ranking.cases] == list(range(1, len(pool) + 1))
    assert sorted(row.case_id for row in ranking.cases) == sorted(c.case_id for c in pool)
    expected_selected = min(budget, len(pool))
    assert [row.selected for row in ranking.cases] == [True] * expected_selected + [False] * (
        len(pool) - expected_selected
    )
    assert ranking.selected_ids == tuple(row.case_id for row in ranking.cases[:expected_selected])


@pytest.mark.parametrize("strategy", ["assft", "coreset"])
def test_greedy_prefix_does_not_depend_on_the_budget(strategy):
    """The picks are never re-sorted: a larger budget extends a smaller one's selection."""
    pool = full_pool()
    small = select(pool, 3, QueryConfig(strategy=strategy)).selected_ids
    large = select(pool, 8, QueryConfig(strategy=strategy)).selected_ids
    assert large[:3] == small


def test_empty_pool_gives_an_empty_ranking():
    ranking = select([], 3, QueryConfig())
    assert ranking.cases == () and ranking.selected_ids == ()
    assert (ranking.strategy, ranking.budget) == ("assft", 3)


@pytest.mark.parametrize("budget", [-1, 2.5, True])
def test_invalid_budget_is_refused(budget):
    with pytest.raises(ValueError, match="budget"):
        select(full_pool(), budget, QueryConfig())


def test_duplicate_case_ids_and_bad_rounds_are_refused():
    pool = full_pool()
    with pytest.raises(ValueError, match="p1"):
        select(pool + [pool[1]], 2, QueryConfig())
    with pytest.raises(ValueError, match="round_index"):
        select(pool, 2, QueryConfig(strategy="clasp_pe"), round_index=3, total_rounds=3)


def test_coreset_refuses_labeled_cases_given_only_in_the_current_embedding():
    with pytest.raises(ValueError, match="pass labeled_embeddings"):
        select(
            full_pool(),
            2,
            QueryConfig(strategy="coreset", div_space="current"),
            labeled_current_embeddings=[np.ones(5)],
        )


def test_select_does_not_modify_the_labeled_embeddings():
    labeled = [np.array([1.0, 2.0, 0.0, 0.0, 3.0])]
    before = labeled[0].copy()
    select(full_pool(), 3, QueryConfig(), labeled_embeddings=labeled)
    select(full_pool(), 3, QueryConfig(strategy="coreset"), labeled_embeddings=labeled)
    np.testing.assert_array_equal(labeled[0], before)


def test_weighted_sum_lets_small_raw_diversity_compete_with_normalised_asd():
    """Pooled features of one anatomy are close (cosine distances ~0.05): DKD must still matter after pick one."""
    rng = np.random.default_rng(2)
    pool = []
    for i in range(9):
        cluster = i % 3
        embedding = np.array([1.0, 0.0, 0.0]) + 0.05 * one_hot(cluster, 3) + 0.001 * rng.normal(size=3)
        asd = 0.9 - 0.01 * i if cluster == 0 else 0.5  # cluster a is slightly harder everywhere
        pool.append(case(f"{'abc'[cluster]}{i // 3}", embedding, asd=asd))
    balanced = select(pool, 3, QueryConfig(strategy="assft"))
    assert sorted(c[0] for c in balanced.selected_ids) == ["a", "b", "c"]
    raw = select(pool, 3, QueryConfig(strategy="assft", normalise_scores=False))
    assert [c[0] for c in raw.selected_ids] == ["a", "a", "a"]  # unnormalised: ASD alone decides
    assert balanced.cases[1].dkd < 0.1  # the reported DKD stays the raw value
