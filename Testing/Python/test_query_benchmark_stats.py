"""The query benchmark's paired statistics (``Testing/Benchmarks/harness/stats.py``) on hand-built runs with known
answers, and the knowledge-divergence variants of the score diagnostics."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
from conftest import REPO

from ASSFTActive.query import QueryConfig
from Testing.Benchmarks.harness.diagnostics import kd_variant_correlations


def load(name):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "Testing" / "Benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def stats():
    from Testing.Benchmarks.harness import stats

    return stats


@pytest.fixture(scope="module")
def rounds():
    return load("query_rounds")


def run(query_seed, train_seed, dice_by_case, mean=None):
    per_case = {c: [d, d] for c, d in dice_by_case.items()}  # two classes of equal Dice
    return {
        "query_seed": query_seed,
        "train_seed": train_seed,
        "per_case": per_case,
        "mean_dice": float(np.mean(list(dice_by_case.values()))) if mean is None else mean,
    }


def test_draw_matrix_averages_training_seeds_within_each_query_seed(stats):
    runs = [run(1, 0, {"a": 0.2, "b": 0.4}), run(0, 0, {"a": 0.5, "b": 0.5}), run(1, 1, {"a": 0.4, "b": 0.6})]
    matrix = stats.draw_matrix(runs, ["a", "b"])
    np.testing.assert_allclose(matrix, [[0.5, 0.5], [0.3, 0.5]])


def test_case_dice_leaves_unscored_classes_out(stats):
    assert stats.case_dice({"per_case": {"a": [0.4, float("nan")], "b": [float("nan")] * 2}}, ["a", "b"])[0] == 0.4
    assert math.isnan(stats.case_dice({"per_case": {"b": [float("nan")] * 2}}, ["b"])[0])


def test_a_constant_gap_has_a_point_interval_and_the_exact_wilcoxon_p(stats):
    reference = np.tile(np.linspace(0.5, 0.8, 10), (3, 1))  # three identical random draws
    gap = stats.paired_gap(reference[:1] + 0.1, reference)
    assert gap.gap == pytest.approx(0.1)
    assert gap.low == pytest.approx(0.1) and gap.high == pytest.approx(0.1)
    assert gap.noise_floor == pytest.approx(0.0) and gap.excludes_zero
    assert gap.p_wilcoxon == pytest.approx(2 / 2**10)  # all ten differences positive: exact two-sided p
    assert gap.cases == 10 and gap.draws == (1, 3)


def test_the_noise_floor_is_the_spread_of_the_reference_draw_means(stats):
    reference = np.array([[0.6] * 8, [0.7] * 8, [0.8] * 8])
    gap = stats.paired_gap(np.full((1, 8), 0.7), reference)
    assert gap.noise_floor == pytest.approx(0.1)
    assert gap.gap == pytest.approx(0.0)
    # the draws disagree, so resampling them widens the interval although every case gap is 0
    assert gap.low < -0.02 and gap.high > 0.02 and not gap.excludes_zero
    assert math.isnan(gap.p_wilcoxon)


def test_the_t_interval_covers_case_sampling(stats):
    diffs = np.array([0.1, -0.1, 0.2, 0.0])
    gap = stats.paired_gap((0.5 + diffs)[None], np.full((1, 4), 0.5))
    from scipy.stats import t

    assert gap.gap == pytest.approx(0.05)
    assert gap.case_half_width == pytest.approx(t.ppf(0.975, 3) * diffs.std(ddof=1) / 2)
    assert math.isnan(gap.noise_floor)  # one reference draw: no draw-to-draw spread


def test_cases_missing_in_either_strategy_are_dropped_and_mismatches_refused(stats):
    arm = np.array([[0.9, np.nan, 0.7]])
    gap = stats.paired_gap(arm, np.array([[0.8, 0.8, 0.6]]))
    assert gap.cases == 2 and gap.gap == pytest.approx(0.1)
    with pytest.raises(ValueError, match="different cases"):
        stats.paired_gap(np.zeros((1, 3)), np.zeros((1, 4)))


def test_aubc_is_computed_per_seed_pair_present_at_every_budget(stats):
    runs = {
        2: [run(0, 0, {"a": 0.5}), run(1, 0, {"a": 0.6}), run(2, 0, {"a": 0.1})],
        4: [run(0, 0, {"a": 0.7}), run(1, 0, {"a": 0.8})],
    }
    values = stats.aubc_runs(runs, lambda budgets, ys: float(np.mean(ys)))
    assert values == pytest.approx([0.6, 0.7])  # seed 2 has no B = 4 run
    assert stats.spread(values) == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert stats.spread([0.5]) is None


def _features(angle):
    """Two stages; the deepest is turned by ``angle`` from ``[1, 0]``, the shallow one by ``1 - angle``."""
    return [np.array([math.cos(1 - angle), math.sin(1 - angle)]), np.array([math.cos(angle), math.sin(angle)])]


def test_kd_variants_name_each_metric_and_stage_count_and_rank_by_the_stage_that_moved():
    angles = [0.1, 0.3, 0.5, 0.7, 0.9]
    pretrained = [[np.array([1.0, 0.0]), np.array([1.0, 0.0])] for _ in angles]
    current = [_features(a) for a in angles]
    errors = [0.1, 0.2, 0.3, 0.4, 0.5]  # grows with the deepest stage's turn
    result = kd_variant_correlations(current, pretrained, errors, QueryConfig())
    assert list(result) == [f"{m}_deepest{s}" for m in ("js", "sym_kl", "cosine") for s in (1, 2)]
    assert result["cosine_deepest1"].rho == pytest.approx(1.0)
    assert result["js_deepest1"].rho == pytest.approx(1.0)


def test_kd_variants_carry_no_information_at_cold_start():
    same = [[np.array([1.0, 2.0]), np.array([0.5, 0.1])] for _ in range(4)]
    result = kd_variant_correlations(same, same, [0.1, 0.2, 0.3, 0.4], QueryConfig())
    assert all(math.isnan(r.rho) for r in result.values())
    with pytest.raises(ValueError, match="one of each per case"):
        kd_variant_correlations(same, same[:3], [0.1, 0.2, 0.3, 0.4], QueryConfig())


def _report(rounds, arms, test=("a", "b", "c", "d")):
    experiment = {
        "anatomy": "hippocampus",
        "shift": {"kind": "scanner"},
        "test": list(test),
        "pool": ["p"],
        "train": {},
        "semi_iterations": 1,
        "assft_query": {},
        "pseudo": {},
        "guard": False,
        "rounds": rounds,
        "budgets": [2],
        "train_seeds": [0, 1],
    }
    return {
        "experiment": experiment,
        "git": "abc",
        "arms": {name: {"budgets": {"2": {"runs": runs}}} for name, runs in arms.items()},
    }


def test_rounds_are_compared_per_case_with_one_round_and_with_random(rounds, tmp_path):
    cases = {"a": 0.5, "b": 0.6, "c": 0.7, "d": 0.8}
    shifted = {c: v + 0.05 for c, v in cases.items()}
    live = {"score_vs_interim_error": {"knowledge_divergence": {"spearman_rho": 0.4}, "dkd": {"spearman_rho": 0.2}}}
    one = _report(
        1,
        {
            "assft_no_pseudo": [run(0, 0, cases), run(0, 1, cases)],
            "random": [run(0, 0, cases), run(1, 0, {c: v - 0.1 for c, v in cases.items()})],
        },
    )
    two = _report(
        2,
        {
            "assft_no_pseudo": [
                {**run(0, 0, shifted), "rounds": [{}, live]},
                {**run(0, 1, shifted), "rounds": [{}, live]},
            ]
        },
    )
    files = []
    for index, report in enumerate((two, one)):
        files.append(tmp_path / f"r{index}.json")
        files[-1].write_text(json.dumps(report))
    reports = rounds.load(files)
    assert [r["experiment"]["rounds"] for r in reports] == [1, 2]
    result = rounds.compare(reports)
    by_rounds = {row["rounds"]: row for row in result["rows"]}
    assert by_rounds[1]["vs_first"] is None
    assert by_rounds[2]["vs_first"]["gap"] == pytest.approx(0.05)
    assert by_rounds[2]["vs_random"]["gap"] == pytest.approx(0.10)  # random's two draws average 0.05 below
    assert by_rounds[2]["live_kd_rho"]["knowledge_divergence"] == pytest.approx(0.4)
    assert result["noise_floor"][2] == pytest.approx(np.std([0.65, 0.55], ddof=1))
    assert "| assft_no_pseudo | 2 | 2 |" in rounds.markdown(reports, result, files)


def test_runs_that_differ_in_more_than_rounds_are_refused(rounds, tmp_path):
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    files[0].write_text(json.dumps(_report(1, {})))
    files[1].write_text(json.dumps(_report(2, {}, test=("a", "b"))))
    with pytest.raises(SystemExit, match="differ in"):
        rounds.load(files)


@pytest.fixture(scope="module")
def bench():
    return load("annotation_efficiency")


def _full_report(arms, floor=0.4, ceiling=0.8, git="abc", pool=("p1", "p2")):
    experiment = {
        key: None
        for key in (
            "data",
            "shift",
            "train",
            "semi_iterations",
            "pseudo",
            "assft_query",
            "random_seeds",
            "train_seeds",
            "mc_samples",
            "guard",
            "rounds",
        )
    }
    experiment.update(
        anatomy="hippocampus",
        profile="power",
        pool=list(pool),
        test=["a", "b"],
        budgets=[2],
        command=f"run {git}",
        arms=list(arms),
    )
    return {
        "experiment": experiment,
        "git": git,
        "floor": {"mean_dice": floor},
        "ceiling": {"mean": ceiling},
        "timings": {"total_s": 60.0, "finetune_s": 50.0, "mean_train_seconds_per_run": 10.0},
        "arms": {name: {"aubc": aubc, "budgets": {"2": {"mean": aubc}}} for name, aubc in arms.items()},
    }


def test_merging_runs_of_one_experiment_puts_all_their_arms_in_one_report(bench):
    second = _full_report({"asd_only_no_pseudo": 0.7}, git="def", ceiling=0.800006)  # CPU training's 1e-5 jitter
    merged = bench.merge_reports([_full_report({"random": 0.6}), second], ["a.json", "b.json"])
    assert list(merged["arms"]) == ["random", "asd_only_no_pseudo"]
    assert merged["experiment"]["arms"] == ["random", "asd_only_no_pseudo"]
    assert merged["git"] == "abc + def"
    assert [part["file"] for part in merged["experiment"]["merged_from"]] == ["a.json", "b.json"]
    assert merged["timings"]["total_s"] == 120.0
    assert merged["timings"]["mean_train_seconds_per_run"] == pytest.approx(10.0)
    assert bench.headroom(merged, 2) == pytest.approx(0.2)  # ceiling 0.8 - random 0.6


def test_merging_refuses_runs_of_different_experiments_or_disagreeing_arms(bench):
    with pytest.raises(ValueError, match="'pool' differs"):
        bench.merge_reports([_full_report({"random": 0.6}), _full_report({"coreset": 0.7}, pool=("p1",))])
    with pytest.raises(ValueError, match="ceiling"):
        bench.merge_reports([_full_report({"random": 0.6}), _full_report({"coreset": 0.7}, ceiling=0.801)])
    with pytest.raises(ValueError, match="different results"):
        bench.merge_reports([_full_report({"random": 0.6}), _full_report({"random": 0.61})])
    with pytest.raises(ValueError, match="at least two"):
        bench.merge_reports([_full_report({"random": 0.6})])


def test_each_query_variant_is_compared_with_the_default_query_case_by_case(bench):
    def arm(label, dice):
        runs = [run(0, seed, {"a": dice, "b": dice + 0.1}) for seed in (0, 1)]
        return {"label": label, "budgets": {"2": {"mean": dice + 0.05, "runs": runs}}}

    report = {
        "experiment": {"budgets": [2], "test": ["a", "b"]},
        "arms": {
            "assft_no_pseudo": arm("default", 0.5),
            "asd_only_no_pseudo": arm("ASD only", 0.6),
            "coreset": arm("coreset", 0.9),
        },
    }
    lines = bench.variant_lines(report)
    rows = [line for line in lines if line.startswith("| ASD only")]
    assert rows == ["| ASD only | +0.100 [+0.100, +0.100], p 0.500 |"]  # both cases +0.1: exact p = 2 / 2**2
    assert not any("coreset" in line for line in lines)  # a baseline is not a variant of the query
    del report["arms"]["assft_no_pseudo"]
    assert bench.variant_lines(report) == []


def test_runs_and_merges_share_one_naming_rule(bench, tmp_path):
    assert bench.report_stem(tmp_path, "hippocampus", "power", "").name == "annotation_efficiency_power"
    assert (
        bench.report_stem(tmp_path, "acdc", "power", "mild_variants").name
        == "annotation_efficiency_acdc_power_mild_variants"
    )
