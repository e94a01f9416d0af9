"""The activation guard's pure parts with known answers: folds, cross-validated curve, pool check, verdict."""

from __future__ import annotations

import math

import pytest

from ASSFTActive.finetune.guard import CrossValidation, assign_folds, check_pool, decide, mean_interval


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


def _cv(**dice):
    return CrossValidation(steps=(0, 50, 100), dice={k: tuple(v) for k, v in dice.items()},
                           dice_per_class={k: tuple((x, x) for x in v) for k, v in dice.items()})


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
