"""summarize_case and the query records: one pass gives the same numbers as the single scores; JSON round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ASSFTActive.query import (
    CaseEvidence,
    QueryConfig,
    RankedCase,
    Ranking,
    RegionSpec,
    RegionSums,
    anatomical_segmentation_difficulty,
    clasp_class_scores,
    knowledge_divergence,
    mc_dropout_epistemic,
    mean_entropy,
    region_sums,
    select,
    summarize_case,
)


def sums_of(probs: np.ndarray, config: QueryConfig = QueryConfig()) -> RegionSums:
    return region_sums(probs, RegionSpec.from_config(config))


def random_probs(seed: int, shape=(3, 8, 8, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=0, keepdims=True)).astype(np.float32)


def features(seed: int):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=4), rng.normal(size=8), rng.normal(size=16)]


@pytest.mark.parametrize("asd_reduce", ["voxel_mean", "class_balanced"])
def test_summary_matches_the_individual_scores(asd_reduce):
    config = QueryConfig(asd_reduce=asd_reduce)
    probs = random_probs(0)
    current, pretrained = features(1), features(2)
    evidence = summarize_case("case_a", sums_of(probs, config), current, pretrained, config)
    assert evidence.case_id == "case_a"
    assert evidence.asd == pytest.approx(anatomical_segmentation_difficulty(probs, config), rel=1e-6)
    assert evidence.mean_entropy == pytest.approx(mean_entropy(probs), rel=1e-6)
    assert evidence.knowledge_divergence == pytest.approx(knowledge_divergence(current, pretrained, config))
    np.testing.assert_allclose(evidence.clasp_scores, clasp_class_scores(probs, config), rtol=1e-6)
    np.testing.assert_array_equal(evidence.pretrained_embedding, pretrained[-1])
    np.testing.assert_array_equal(evidence.current_embedding, current[-1])
    assert evidence.epistemic is None


def test_identical_encoders_give_kd_zero_in_the_summary():
    pretrained = features(3)
    evidence = summarize_case("c", sums_of(random_probs(1)), [f.copy() for f in pretrained], pretrained, QueryConfig())
    assert evidence.knowledge_divergence < 1e-7


def test_summary_does_not_modify_its_inputs():
    probs, samples = random_probs(2), np.stack([random_probs(3), random_probs(4)])
    current, pretrained = features(5), features(6)
    saved = [probs.copy(), samples.copy()] + [f.copy() for f in current + pretrained]
    summarize_case("c", sums_of(probs), current, pretrained, QueryConfig(), prob_samples=samples)
    for before, after in zip(saved, [probs, samples] + current + pretrained):
        np.testing.assert_array_equal(before, after)


def test_summary_stores_the_mc_dropout_score_and_mc_dropout_needs_samples():
    samples = np.stack([random_probs(7), random_probs(8), random_probs(9)])
    evidence = summarize_case(
        "c", sums_of(random_probs(7)), features(0), features(0), QueryConfig(), prob_samples=samples
    )
    assert evidence.epistemic == pytest.approx(mc_dropout_epistemic(samples))
    with pytest.raises(ValueError, match="prob_samples"):
        summarize_case("c", sums_of(random_probs(7)), features(0), features(0), QueryConfig(strategy="mc_dropout"))


def test_bn_stats_source_knowledge_uses_batchnorm_statistics():
    running = [(np.zeros(2), np.ones(2))]
    shifted = [(np.ones(2), np.ones(2))]
    config = QueryConfig(source_knowledge="bn_stats")
    evidence = summarize_case(
        "c",
        sums_of(random_probs(0), config),
        features(0),
        features(0),
        config,
        bn_stage_stats=shifted,
        bn_running_stats=running,
    )
    assert evidence.knowledge_divergence == pytest.approx(0.5, rel=1e-4)  # mean shift of 1 at unit variance
    with pytest.raises(ValueError, match="bn_stage_stats"):
        summarize_case("c", sums_of(random_probs(0)), features(0), features(0), config)


def test_cold_start_summary_without_probabilities_ranks_only_with_probability_free_strategies():
    pool = [summarize_case(f"c{i}", None, features(i), features(i), QueryConfig()) for i in range(4)]
    assert math.isnan(pool[0].asd) and math.isnan(pool[0].mean_entropy)
    assert pool[0].clasp_scores.shape == (0,)
    assert not pool[0].has_probabilities
    for strategy in ("dkd_only", "random", "coreset"):
        ranking = select(pool, 2, QueryConfig(strategy=strategy))
        assert len(ranking.selected_ids) == 2
    # assft's cold-start rule: DKD's diversity alone, saying why (test_source_encoder_only.py tests it in full)
    cold = select(pool, 2, QueryConfig(strategy="assft"))
    assert cold.selected_ids == select(pool, 2, QueryConfig(strategy="dkd_only")).selected_ids
    assert cold.asd_unavailable
    for strategy in ("asd_only", "mean_entropy", "clasp_pe"):
        with pytest.raises(ValueError, match="dkd_only"):
            select(pool, 2, QueryConfig(strategy=strategy))


def make_evidence(**overrides) -> CaseEvidence:
    values = dict(
        case_id="c",
        knowledge_divergence=0.1,
        asd=0.4,
        mean_entropy=0.3,
        pretrained_embedding=np.array([1.0, 0.0]),
        current_embedding=np.array([0.0, 1.0]),
        clasp_scores=np.array([0.5, 0.2]),
        epistemic=None,
    )
    values.update(overrides)
    return CaseEvidence(**values)


def test_evidence_keeps_read_only_copies_of_its_arrays():
    embedding = np.array([1.0, 2.0, 3.0])
    evidence = make_evidence(pretrained_embedding=embedding)
    embedding[0] = 99.0
    assert evidence.pretrained_embedding[0] == 1.0
    with pytest.raises(ValueError):
        evidence.pretrained_embedding[0] = 5.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(case_id=""), "case_id"),
        (dict(knowledge_divergence=-0.1), "knowledge_divergence"),
        (dict(asd=1.5), "asd"),
        (dict(pretrained_embedding=np.zeros((2, 2))), "pretrained_embedding"),
        (dict(current_embedding=np.array([np.inf, 0.0])), "current_embedding"),
        (dict(epistemic=math.nan), "epistemic"),
    ],
)
def test_evidence_refuses_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_evidence(**overrides)


def test_evidence_round_trips_through_json():
    evidence = make_evidence(asd=math.nan, clasp_scores=np.zeros(0), epistemic=0.7)
    data = json.loads(json.dumps(evidence.to_dict()))
    assert data["asd"] is None
    restored = CaseEvidence.from_dict(data)
    assert restored.case_id == "c" and math.isnan(restored.asd) and restored.epistemic == 0.7
    np.testing.assert_array_equal(restored.pretrained_embedding, evidence.pretrained_embedding)
    assert restored.clasp_scores.shape == (0,)


def test_ranking_lists_selected_ids_in_rank_order_and_keeps_nan():
    """The in-memory record; its file form is ``ASSFTActive.jobs.RankingFile`` (test_job_records_protocol.py)."""
    ranking = Ranking(
        strategy="assft",
        budget=1,
        cases=(
            RankedCase("b", dkd=0.9, asd=0.2, score=0.55, rank=1, selected=True),
            RankedCase("a", dkd=0.1, asd=math.nan, score=0.05, rank=2, selected=False),
        ),
    )
    assert ranking.selected_ids == ("b",)
    assert math.isnan(ranking.cases[1].asd)
