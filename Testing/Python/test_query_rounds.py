"""Multi-round test-time query: the budget plan, the round read from the labelled volumes, and ``rank_pool``
following it (labelled volumes excluded and anchoring diversity; BALD streamed from the predictor)."""

from __future__ import annotations

import json

import pytest

from ASSFTActive.query import QueryConfig, plan_round, round_budgets


@pytest.mark.parametrize(
    "budget, rounds, expected",
    [
        (4, 1, [4]),
        (4, 2, [2, 2]),
        (5, 2, [3, 2]),
        (7, 3, [3, 2, 2]),
        (8, 4, [2, 2, 2, 2]),
        (2, 4, [1, 1]),
        (1, 2, [1]),
        (0, 3, [0]),
    ],
)
def test_round_budgets_split_evenly_larger_first_and_never_empty(budget, rounds, expected):
    assert round_budgets(budget, rounds) == expected
    assert sum(round_budgets(budget, rounds)) == budget


@pytest.mark.parametrize("budget, rounds", [(-1, 2), (4, 0), (4.0, 2), (True, 2)])
def test_round_budgets_refuse_bad_arguments(budget, rounds):
    with pytest.raises(ValueError):
        round_budgets(budget, rounds)


@pytest.mark.parametrize(
    "labeled, round_index, size", [(0, 0, 2), (1, 0, 1), (2, 1, 2), (3, 1, 1), (4, 1, 0), (9, 1, 0)]
)
def test_the_round_and_its_proposal_follow_from_the_labelled_count(labeled, round_index, size):
    plan = plan_round(4, 2, labeled)
    assert (plan.round_index, plan.size, plan.total_rounds, plan.budgets) == (round_index, size, 2, (2, 2))
    assert plan.complete == (labeled >= 4)


def test_three_rounds_of_an_uneven_budget():
    assert [(p.round_index, p.size) for p in (plan_round(7, 3, n) for n in (0, 3, 4, 5, 7))] == [
        (0, 3),
        (1, 2),
        (1, 1),
        (2, 2),
        (2, 0),
    ]
    assert plan_round(7, 3, 5).to_dict() == {
        "round": 3,
        "rounds": 3,
        "round_budgets": [3, 2, 2],
        "proposed": 2,
        "labeled_before": 5,
    }


def test_a_single_round_proposes_the_whole_budget_whatever_is_labelled():
    assert [(p.round_index, p.size) for p in (plan_round(3, 1, n) for n in (0, 2, 10))] == [(0, 3)] * 3


def test_only_labelled_volumes_of_the_pool_count_towards_the_round():
    from ASSFTActive.api import round_plan

    plan = round_plan(["a", "b", "c", "d", "e"], ["a", "other-site"], 4, QueryConfig(rounds=2))
    assert (plan.labeled, plan.round_index, plan.size) == (1, 0, 1)


def test_round_warnings_say_when_to_adapt_and_when_the_schedule_is_done():
    from ASSFTActive.api import _round_warnings

    assert _round_warnings(plan_round(4, 1, 0), 4, True) == []
    assert _round_warnings(plan_round(4, 2, 0), 4, True) == []  # round 1 ranks with the cold model, as planned
    assert "Adapt Model" in _round_warnings(plan_round(4, 2, 2), 4, True)[0]
    assert _round_warnings(plan_round(4, 2, 2), 4, False) == []  # round 2 with an adapted model
    assert "complete" in _round_warnings(plan_round(4, 2, 4), 4, False)[0]


# ------------------------------------------------------------------------------------- rank_pool end to end


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    from conftest import TINY_CARD, make_tiny_card, write_dataset

    root = tmp_path_factory.mktemp("rounds")
    images, labels = write_dataset(root, count=6, labeled=2)
    arguments = {**TINY_CARD["arguments"], "dropout": 0.3}
    card_path = make_tiny_card(root / "model", arguments=arguments)
    return [images[k] for k in sorted(images)], sorted(labels), card_path


def test_second_round_proposes_the_rest_excludes_labelled_volumes_and_records_the_plan(tiny_pool, tmp_path):
    from ASSFTActive.api import rank_pool
    from ASSFTActive.models import load_card

    images, labeled, card_path = tiny_pool
    events = []
    result = rank_pool(
        images,
        load_card(card_path),
        4,
        tmp_path,
        labeled_ids=labeled,
        query=QueryConfig(rounds=2),
        write_outputs=False,
        progress=events.append,
    )
    assert len(result.ranking.selected_ids) == 2 and result.ranking.budget == 2
    assert not set(result.ranking.selected_ids) & set(labeled)
    assert {c.case_id for c in result.ranking.cases} == {f"case_{i:03d}" for i in range(2, 6)}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["query"]["rounds"] == 2
    assert config["query_round"] == {
        "round": 2,
        "rounds": 2,
        "round_budgets": [2, 2],
        "proposed": 2,
        "labeled_before": 2,
    }
    warnings = [e.message for e in events if e.event == "warning"]
    assert len(warnings) == 1 and "not adapted" in warnings[0]  # the tiny card is not an adapted model


@pytest.mark.parametrize("strategy", ["bald", "mc_dropout"])
def test_mc_dropout_strategies_rank_from_streamed_passes_beside_labelled_volumes(strategy, tiny_pool, tmp_path):
    """The labelled volumes get no dropout passes (they are anchors, not candidates) and need none."""
    from ASSFTActive.api import rank_pool
    from ASSFTActive.models import load_card

    images, labeled, card_path = tiny_pool
    result = rank_pool(
        images[:4],
        load_card(card_path),
        2,
        tmp_path,
        labeled_ids=labeled,
        query=QueryConfig(strategy=strategy, mc_samples=3),
        write_outputs=False,
    )
    scores = [row.score for row in result.ranking.cases]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True) and scores[0] > 0


def test_a_round_plan_reads_back_from_the_ranking_config_and_refuses_a_malformed_one(tmp_path):
    from ASSFTActive.errors import JobError
    from ASSFTActive.jobs import RANKING_CONFIG_FILE, RoundPlan, read_query_round

    plan = plan_round(5, 2, 3)
    assert RoundPlan.from_dict(plan.to_dict()) == plan
    assert read_query_round(tmp_path) is None, "no config.json: a ranking without a schedule"
    (tmp_path / RANKING_CONFIG_FILE).write_text(json.dumps({"query_round": plan.to_dict()}))
    assert read_query_round(tmp_path) == plan
    (tmp_path / RANKING_CONFIG_FILE).write_text(json.dumps({"query": {}}))
    assert read_query_round(tmp_path) is None
    good = plan.to_dict()
    for bad in (
        {**good, "round": 3},
        {**good, "rounds": 3},
        {**good, "proposed": -1},
        {**good, "round_budgets": [3, "2"]},
        {k: v for k, v in good.items() if k != "round"},
    ):
        (tmp_path / RANKING_CONFIG_FILE).write_text(json.dumps({"query_round": bad}))
        with pytest.raises(JobError, match=RANKING_CONFIG_FILE):
            read_query_round(tmp_path)
