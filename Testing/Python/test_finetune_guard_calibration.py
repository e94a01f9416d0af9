"""The guard's calibration on hand-built labelled sets with known false-activation and false-refusal counts."""

from __future__ import annotations

import json
import math

import pytest

from ASSFTActive.finetune.guard import GuardRule
from ASSFTActive.finetune.guard_calibration import calibrate, fold_agreement, main, read_records, sweep

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree

SETS = {
    "sets": [
        # consistent gain, better on test: activated by both rules
        {"setting": "s", "budget": 2, "set": "d0", "fold_gains": [0.05, 0.04], "test_gain": 0.05},
        # mean gain hiding a fold far below zero, worse on test: the mean-only rule activates it (false activation)
        {"setting": "s", "budget": 4, "set": "d1", "fold_gains": [0.10, 0.08, -0.12], "test_gain": -0.03},
        # a fold slightly below zero, better on test: refused by a tight limit (false refusal), kept by a loose one
        {"setting": "s", "budget": 4, "set": "d2", "fold_gains": [0.06, 0.05, -0.015], "test_gain": 0.04},
        # no gain, no change on test: refused, counts in neither group
        {"setting": "s", "budget": 4, "set": "d3", "fold_gains": [0.0, -0.01], "test_gain": 0.0},
        # the guard's own record as input
        {
            "setting": "t",
            "budget": 2,
            "set": "d4",
            "test_gain": -0.02,
            "activation": {"fold_gains": [0.01, 0.02], "volume_gains": {"a": 0.01, "b": 0.02}},
        },
    ]
}


def test_the_mean_only_rule_activates_a_worse_model_and_the_fold_limit_refuses_it():
    records = read_records(SETS)
    mean_only = calibrate(records, GuardRule(min_gain=0.005))
    assert (mean_only["worse_sets"], mean_only["false_activations"]) == (2, 2)
    assert mean_only["false_activation_rate"] == 1.0
    assert (mean_only["better_sets"], mean_only["false_refusals"], mean_only["false_refusal_rate"]) == (2, 0, 0.0)
    tight = calibrate(records, GuardRule(min_gain=0.005, min_fold_gain=-0.01))
    assert (tight["false_activations"], tight["false_refusals"]) == (1, 1), "d4 has no losing fold; d2 is refused"
    assert tight["false_activation_rate"] == 0.5 and tight["false_refusal_rate"] == 0.5
    every_fold_gains = calibrate(records, GuardRule(min_gain=0.005, min_fold_gain=0.02))
    assert (every_fold_gains["false_activations"], every_fold_gains["false_refusals"]) == (0, 1), (
        "d4's folds gain only 0.01 and 0.02: refused; d2's third fold loses: refused; d0 (0.05, 0.04) stays"
    )
    loose = calibrate(records, GuardRule(min_gain=0.005, min_fold_gain=-0.05))
    assert (loose["false_activations"], loose["false_refusals"]) == (1, 0)
    assert loose["by_setting"]["s B=4"] == {
        "sets": 3,
        "activated": 1,
        "worse_sets": 1,
        "false_activations": 0,
        "false_activation_rate": 0.0,
        "better_sets": 1,
        "false_refusals": 0,
        "false_refusal_rate": 0.0,
    }


def test_a_rate_with_no_set_to_err_on_is_none_not_zero():
    records = read_records({"sets": [{"fold_gains": [0.1, 0.1], "test_gain": 0.0}]})
    result = calibrate(records, GuardRule())
    assert result["false_activation_rate"] is None and result["false_refusal_rate"] is None
    assert result["sets"] == result["activated"] == 1


def test_sweep_covers_every_pair_of_thresholds():
    rows = sweep(read_records(SETS), [0.0, 0.03], [None, -0.02])
    assert [(r["rule"]["min_gain"], r["rule"]["min_fold_gain"]) for r in rows] == [
        (0.0, None),
        (0.0, -0.02),
        (0.03, None),
        (0.03, -0.02),
    ]
    assert rows[2]["activated"] == 2, "a min_gain of 0.03 keeps d0 (mean 0.045) and d2 (0.032) only"


def test_bad_input_names_the_set():
    with pytest.raises(ValueError, match=r"sets\[0\].*test_gain"):
        read_records({"sets": [{"fold_gains": [0.1]}]})
    with pytest.raises(ValueError, match="non-empty list"):
        read_records({"rows": []})


def test_the_command_prints_a_table_and_writes_json(tmp_path, capsys):
    source = tmp_path / "sets.json"
    source.write_text(json.dumps(SETS))
    out = tmp_path / "calibration.json"
    assert main([str(source), "--min-fold-gain", "none", "-0.01", "0.02", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 0.005 | none | 4/5 | 100 % (2/2) | 0 % (0/2) |" in printed
    assert [r["false_activations"] for r in json.loads(out.read_text())["rows"]] == [2, 1, 0], "negative values parse"
    assert "B = 4: Spearman of the cross-validated gain with the test gain" in printed
    agreement = json.loads(out.read_text())["fold_agreement_by_budget"]
    assert agreement["2"] == {"spearman": None, "sets": 2}, "two sets give no rank correlation"
    assert agreement["4"]["sets"] == 3
    assert main([str(tmp_path / "missing.json")]) == 2
    assert main([str(source), str(source), "--out", str(out)]) == 0, "several inputs are read as one"
    assert json.loads(out.read_text())["rows"][0]["sets"] == 10
    armed = tmp_path / "armed.json"
    armed.write_text(
        json.dumps({"sets": [{**s, "arm": "full" if i % 2 else "short"} for i, s in enumerate(SETS["sets"])]})
    )
    assert main([str(armed), "--arm", "full", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["sets"] == 2, "only the full guard's sets"
    assert main([str(armed), "--arm", "nothing"]) == 2, "no set left is an error, not an empty table"


def test_guard_cost_rewrites_its_own_goal_rows_and_keeps_the_others(tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("guard_cost", REPO / "Testing" / "Benchmarks" / "guard_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    goals = tmp_path / "goals.json"
    source = REPO / "Testing" / "Benchmarks" / "results" / "guard_cost.json"
    mine = "Testing/Benchmarks/results/guard_cost.json"
    other = {"topic": "query", "goal": "gap", "setting": "s", "budget": 2, "split": "test", "value": 0.1}
    stale = {"topic": "speed", "goal": "guard_cost_ratio", "setting": "sample_tiny_gone", "budget": 3, "split": "dev"}
    goals.write_text(json.dumps({"rows": [other, dict(stale, value=4.0, source=mine)]}))
    report = {
        "setting": {"labelled": ["a", "b", "c"]},
        "revision": "abc",
        "runs": [{"variant": "unguarded", "ratio": 1.0}, {"variant": "guarded", "ratio": 3.3}],
    }
    module.write_goal_rows(goals, report, source)
    rows = json.loads(goals.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["s", "sample_tiny_guarded"], "a variant no longer measured leaves no row"
    assert rows[0] == other and rows[1]["value"] == 3.3 and rows[1]["source"] == mine


def test_a_set_may_give_the_cross_validation_itself():
    cv = {
        "steps": [0, 10, 20],
        "dice": {"a": [0.5, 0.6, 0.55], "b": [0.5, 0.45, 0.4], "c": [0.5, 0.7, 0.6]},
        "folds": [["a", "b"], ["c"]],
    }
    record = read_records({"sets": [{"cross_validation": cv, "test_gain": 0.01}]})[0]
    assert record.fold_gains == pytest.approx((0.025, 0.2)), "read at the curve's peak, step 10"
    assert record.volume_gains == pytest.approx((0.1, -0.05, 0.2))
    late = read_records({"sets": [{"cross_validation": cv, "stop_step": 20, "test_gain": 0.0}]})[0]
    assert late.fold_gains == pytest.approx((-0.025, 0.1))


def _sets(pairs):
    return read_records({"sets": [{"fold_gains": [g, g], "test_gain": t} for g, t in pairs]})


def test_fold_agreement_is_the_rank_correlation_of_fold_and_test_gains():
    assert fold_agreement(_sets([(0.01, 0.0), (0.02, 0.01), (0.05, 0.03)])) == (pytest.approx(1.0), 3)
    assert fold_agreement(_sets([(0.01, 0.03), (0.02, 0.01), (0.05, 0.0)])) == (pytest.approx(-1.0), 3)
    # the mean of the volume gains ranks a set, not its best fold
    records = read_records(
        {
            "sets": [
                {"fold_gains": [0.2, -0.2], "volume_gains": [0.2, -0.2], "test_gain": 0.0},
                {"fold_gains": [0.01, 0.01], "test_gain": 0.01},
                {"fold_gains": [0.02, 0.03], "test_gain": 0.02},
            ]
        }
    )
    assert fold_agreement(records)[0] == pytest.approx(1.0)


def test_fold_agreement_needs_three_sets_that_vary():
    assert fold_agreement(_sets([(0.01, 0.0), (0.02, 0.01)])) == (None, 2)
    assert fold_agreement(_sets([(0.01, 0.0), (0.02, 0.0), (0.03, 0.0)])) == (None, 3)
    assert fold_agreement(_sets([(float("nan"), 0.0), (0.02, 0.01), (0.03, 0.02)])) == (None, 2)


def test_records_carry_the_current_models_dice_and_a_collapsed_pool_refuses_under_every_rule():
    data = {
        "sets": [
            {"set": "guard", "test_gain": 0.05, "activation": {"fold_gains": [0.2, 0.05], "dice_before": 0.30}},
            # the cross-validation itself as input: dice_before is its step 0 (0.35)
            {
                "set": "from_cv",
                "test_gain": 0.05,
                "cross_validation": {"steps": [0, 50], "dice": {"a": [0.2, 0.4], "b": [0.5, 0.6]}},
            },
            # folds that gain, but the pool check saw a collapsed class
            {
                "set": "collapsed",
                "test_gain": 0.05,
                "activation": {"fold_gains": [0.2, 0.2], "dice_before": 0.3, "pool": {"passed": False}},
            },
            {"set": "not_known", "test_gain": 0.0, "fold_gains": [0.1, 0.1]},
        ]
    }
    records = read_records(data)
    assert [r.dice_before for r in records[:3]] == pytest.approx([0.30, 0.35, 0.30])
    assert math.isnan(records[3].dice_before)
    assert [r.pool_passed for r in records] == [True, True, False, True]
    loose = GuardRule(min_gain=0.0)
    assert [r.activated(loose) for r in records] == [True, True, False, True]
    assert calibrate(records, loose)["false_refusals"] == 1, "the collapsed set, better on the test cases"
