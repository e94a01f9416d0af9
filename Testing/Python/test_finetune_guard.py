"""The activation guard's pure parts with known answers: folds, cross-validated curve, pool check, verdict."""

from __future__ import annotations

import math

import pytest

from ASSFTActive.finetune.config import ValidationConfig
from ASSFTActive.finetune.guard import (
    CrossValidation,
    GuardRule,
    assign_folds,
    check_pool,
    decide,
    judge,
    mean_interval,
)

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree


def test_every_labelled_volume_is_held_out_exactly_once():
    ids = [f"case_{i}" for i in range(7)]
    folds = assign_folds(ids, 3, seed=0)
    assert len(folds) == 3 and sorted(c for f in folds for c in f) == ids
    assert sorted(len(f) for f in folds) == [2, 2, 3]
    assert assign_folds(ids, 3, seed=0) == folds and assign_folds(ids, 3, seed=1) != folds


def test_few_labelled_volumes_give_leave_one_out_and_one_is_refused():
    assert sorted(assign_folds(["b", "a"], 3)) == [("a",), ("b",)]
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(["a"], 3)


def test_the_folds_hold_out_every_volume_of_a_subject_together():
    ids = [f"p{p}_frame{f}" for p in range(4) for f in (1, 2)] + ["p9_frame1"]
    subjects = {c: c.split("_")[0] for c in ids}
    for seed in range(5):
        folds = assign_folds(ids, 3, seed=seed, subjects=subjects)
        assert len(folds) == 3 and sorted(c for f in folds for c in f) == sorted(ids)
        for fold in folds:
            held = {subjects[c] for c in fold}
            assert all(c in fold for c in ids if subjects[c] in held), "a subject's frames never straddle two folds"
    two = assign_folds(["a1", "a2", "b1"], 3, subjects={"a1": "a", "a2": "a", "b1": "b"})
    assert sorted(two) == [("a1", "a2"), ("b1",)], "as many folds as subjects"


def test_volumes_that_are_their_own_subjects_keep_the_folds_they_had_without_subjects():
    ids = [f"case_{i}" for i in range(7)]
    for seed in range(3):
        own = assign_folds(ids, 3, seed=seed, subjects={c: f"patient-{c}" for c in ids[:4]})
        assert own == assign_folds(ids, 3, seed=seed)


def test_labelled_volumes_of_one_subject_cannot_be_cross_validated():
    with pytest.raises(ValueError, match="at least 2 subjects"):
        assign_folds(["p1_frame1", "p1_frame2"], 3, subjects={"p1_frame1": "p1", "p1_frame2": "p1"})
    decision = decide(None, None, min_gain=0.005, stop_step=100, labelled=2, subjects=1)
    assert not decision.activate and decision.method == decision.failed == "too_few_subjects"
    assert "all come from one subject" in decision.reason and "assft models activate" in decision.reason


def _cv(**dice):
    return CrossValidation(
        steps=(0, 50, 100),
        dice={k: tuple(v) for k, v in dice.items()},
        dice_per_class={k: tuple((x, x) for x in v) for k, v in dice.items()},
    )


def test_the_stop_step_is_where_the_mean_held_out_dice_peaks_after_step_0():
    cv = _cv(a=(0.6, 0.7, 0.65), b=(0.5, 0.6, 0.55))
    assert cv.curve().tolist() == pytest.approx([0.55, 0.65, 0.60])
    assert cv.stop_step() == 50
    assert cv.gains(50) == pytest.approx({"a": 0.1, "b": 0.1})
    worse = _cv(a=(0.8, 0.5, 0.6), b=(0.8, 0.4, 0.5))
    assert worse.stop_step() == 100  # never step 0: that is the current model
    assert CrossValidation.from_dict(cv.to_dict()) == cv


def test_a_curve_that_does_not_start_at_step_0_is_refused():
    with pytest.raises(ValueError, match="start at 0"):
        CrossValidation(steps=(50, 100), dice={"a": (0.1, 0.2)})


def test_mean_interval_is_the_t_interval():
    mean, low, high = mean_interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and (high - low) / 2 == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_interval([0.4])[1])


def test_the_pool_check_flags_a_class_that_all_but_disappears():
    current = {"u1": [100, 50], "u2": [100, 50]}
    fine = check_pool(current, {"u1": [150, 40], "u2": [250, 45]}, ["a", "b"], 0.2)
    assert fine.passed and fine.current == (200, 100) and fine.adapted == (400, 85)
    collapsed = check_pool(current, {"u1": [150, 5], "u2": [250, 10]}, ["a", "b"], 0.2)
    assert collapsed.collapsed == ("b",) and not collapsed.passed
    absent_before = check_pool({"u1": [100, 0]}, {"u1": [100, 0]}, ["a", "b"], 0.2)
    assert absent_before.passed


def test_the_labels_cap_the_reference_of_a_current_model_that_over_segments():
    current = {"u1": [5000, 5000], "u2": [5000, 5000]}  # a poor model: foreground everywhere
    adapted = {"u1": [90, 40], "u2": [110, 60]}
    assert not check_pool(current, adapted, ["a", "b"], 0.2).passed
    capped = check_pool(current, adapted, ["a", "b"], 0.2, labelled_mean=[100.0, 50.0])
    assert capped.passed
    empty_labels = check_pool(current, {"u1": [0, 0], "u2": [0, 0]}, ["a", "b"], 0.2, labelled_mean=[0.0, 0.0])
    assert empty_labels.collapsed == ("a", "b")


def test_a_cross_validated_gain_activates():
    decision = decide(_cv(a=(0.6, 0.7, 0.65), b=(0.5, 0.6, 0.55)), None, min_gain=0.005, stop_step=50, labelled=2)
    assert decision.activate and decision.method == "cross_validation"
    assert (decision.dice_before, decision.dice_after, decision.gain) == pytest.approx((0.55, 0.65, 0.1))
    assert "0.550 -> 0.650" in decision.reason


def test_a_model_likely_worse_than_the_current_one_is_not_activated():
    decision = decide(_cv(a=(0.8, 0.5, 0.6), b=(0.8, 0.4, 0.3)), None, min_gain=0.005, stop_step=100, labelled=2)
    assert not decision.activate and "likely not better" in decision.reason
    assert decision.gain == pytest.approx(-0.35)
    tiny = decide(_cv(a=(0.5, 0.502, 0.5), b=(0.5, 0.502, 0.5)), None, min_gain=0.005, stop_step=50, labelled=2)
    assert not tiny.activate  # +0.002 is below the margin


def test_a_collapsed_pool_vetoes_a_cross_validated_gain():
    pool = check_pool({"u": [100, 100]}, {"u": [0, 0]}, ["a", "b"], 0.2)
    decision = decide(_cv(a=(0.0, 1.0, 1.0), b=(0.0, 1.0, 1.0)), pool, min_gain=0.005, stop_step=50, labelled=2)
    assert not decision.activate and "collapsed for a, b" in decision.reason
    assert decision.to_dict()["pool"]["passed"] is False


def test_one_labelled_volume_is_never_activated_by_the_guard():
    decision = decide(None, None, min_gain=0.005, stop_step=600, labelled=1)
    assert not decision.activate and decision.method == "too_few_labels"
    assert "assft models activate" in decision.reason


def _cv_folds(steps, folds, **dice):
    return CrossValidation(
        steps=steps,
        dice={k: tuple(v) for k, v in dice.items()},
        dice_per_class={k: tuple((x,) for x in v) for k, v in dice.items()},
        folds=folds,
    )


def test_a_mean_gain_with_one_fold_far_below_zero_is_refused_with_that_fold_named():
    """ACDC mild B = 4 of the audit: a positive mean gain, one fold far below zero."""
    folds = (("a",), ("b",), ("c", "d"))
    cv = _cv_folds((0, 100), folds, a=(0.60, 0.70), b=(0.60, 0.72), c=(0.60, 0.45), d=(0.60, 0.68))
    assert cv.fold_gains(100) == pytest.approx((0.10, 0.12, -0.035))
    permissive = decide(cv, None, min_gain=0.005, stop_step=100, labelled=4)
    assert permissive.activate, "without a limit on a fold's loss the mean decides"
    assert "fold 3 (c -0.150, d +0.080) lost 0.035" in permissive.reason, "the loss is said even when allowed"
    guarded = decide(cv, None, min_gain=0.005, stop_step=100, labelled=4, min_fold_gain=-0.02)
    assert not guarded.activate and guarded.failed == "worst_fold"
    assert guarded.gain == pytest.approx(0.0375), "the mean over the four volumes"
    assert "fold 3 (c -0.150, d +0.080) changed by -0.035, below the -0.020 every fold must reach" in guarded.reason
    assert "assft models activate" in guarded.reason
    record = guarded.to_dict()
    assert record["fold_gains"] == pytest.approx([0.10, 0.12, -0.035]) and record["failed"] == "worst_fold"
    assert record["rule"] == {"min_gain": 0.005, "min_fold_gain": -0.02, "min_gain_low": None}
    assert record["volume_gains"]["c"] == pytest.approx(-0.15)


def test_a_consistent_gain_is_activated_under_the_fold_limit():
    folds = (("a",), ("b",), ("c",))
    cv = _cv_folds((0, 100), folds, a=(0.60, 0.66), b=(0.50, 0.55), c=(0.70, 0.695))
    decision = decide(cv, None, min_gain=0.005, stop_step=100, labelled=3, min_fold_gain=-0.02)
    assert decision.activate and decision.failed == ""
    assert "better than the current model" in decision.reason
    assert "every fold reached the -0.020 required (worst: fold 3 (c), -0.005)" in decision.reason
    assert "95 % interval of the gain over the 3 labelled volumes" in decision.reason


def test_the_lower_bound_rule_refuses_what_the_interval_cannot_vouch_for():
    folds = (("a",), ("b",), ("c",))
    cv = _cv_folds((0, 100), folds, a=(0.6, 0.7), b=(0.6, 0.61), c=(0.6, 0.62))
    decision = decide(cv, None, min_gain=0.005, stop_step=100, labelled=3, min_gain_low=0.0)
    assert decision.gain_low < 0 and not decision.activate and decision.failed == "lower_bound"
    assert "lower end of its 95 % interval" in decision.reason
    assert decide(cv, None, min_gain=0.005, stop_step=100, labelled=3, min_gain_low=-0.2).activate


def test_with_two_labelled_volumes_the_verdict_says_what_it_can_and_cannot_know():
    cv = _cv_folds((0, 100), (("a",), ("b",)), a=(0.6, 0.7), b=(0.5, 0.6))
    decision = decide(cv, None, min_gain=0.005, stop_step=100, labelled=2, min_fold_gain=0.02)
    assert decision.activate
    assert "each fold adapts on one volume and scores the other" in decision.reason
    assert "2 values give no useful interval" in decision.reason
    refused = decide(
        _cv_folds((0, 100), (("a",), ("b",)), a=(0.6, 0.8), b=(0.5, 0.45)),
        None,
        min_gain=0.005,
        stop_step=100,
        labelled=2,
        min_fold_gain=0.02,
    )
    assert not refused.activate and "fold 2 (b) changed by -0.050" in refused.reason
    assert "each fold adapts on one volume" in refused.reason


def test_two_folds_that_both_gain_but_one_barely_are_refused_by_the_default_rule():
    """ACDC-Path development, pool 2 d0 (50 + 50): folds +0.125 and +0.018, a mean of +0.07, yet the model was 0.011
    below no adaptation on the evaluation cases; a fold that may only *lose* a little let it through."""
    cv = _cv_folds((0, 100), (("a",), ("b",)), a=(0.600, 0.725), b=(0.700, 0.718))
    default = ValidationConfig()
    decision = decide(
        cv, None, min_gain=default.min_gain, stop_step=100, labelled=2, min_fold_gain=default.min_fold_gain
    )
    assert not decision.activate and decision.failed == "worst_fold"
    assert decision.gain == pytest.approx(0.0715)
    assert "fold 2 (b) changed by +0.018, below the +0.020 every fold must reach" in decision.reason
    assert decide(cv, None, min_gain=0.005, stop_step=100, labelled=2, min_fold_gain=-0.05).activate, (
        "the former limit (a fold may lose 0.05) activated it"
    )


def test_judge_applies_the_checks_in_order_and_a_fold_with_nothing_scored_is_no_evidence():
    rule = GuardRule(min_gain=0.01, min_fold_gain=-0.03)
    assert judge([0.05, 0.02, -0.01], rule).activate
    assert judge([0.005, 0.0, 0.0], rule).failed == "mean"
    worst = judge([0.2, 0.1, -0.05], rule)
    assert worst.failed == "worst_fold" and worst.worst_fold == 2 and worst.worst_gain == pytest.approx(-0.05)
    assert judge([0.05, math.nan], rule).activate, "an unscored fold neither refuses nor activates by itself"
    assert judge([math.nan, math.nan], rule).failed == "mean"
    assert judge([0.1, 0.1, 0.1], GuardRule(min_gain=0.0), volume_gains=[0.3, 0.0, 0.0, 0.0]).mean == pytest.approx(
        0.075
    ), "the mean is over volumes when they are given"


def test_the_rule_of_a_validation_config_carries_its_thresholds():
    assert GuardRule.of(ValidationConfig()) == GuardRule(min_gain=0.005, min_fold_gain=0.02, min_gain_low=None)
    custom = ValidationConfig(min_gain=0.01, min_fold_gain=None, min_gain_low=-0.1)
    assert GuardRule.of(custom) == GuardRule(min_gain=0.01, min_fold_gain=None, min_gain_low=-0.1)
