"""Scores: a class absent from both prediction and label is not scored (NaN), never a perfect 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.evaluate import CaseMetrics, EvaluationReport, dice_per_class, format_score, mean_scored
from ASSFTActive.finetune.guard import CrossValidation, decide, mean_interval


def test_a_class_absent_from_prediction_and_label_is_not_scored():
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 1
    prediction = truth.copy()
    anterior, posterior = dice_per_class(prediction, truth, 3)
    assert anterior == 1.0 and math.isnan(posterior)


def test_an_empty_prediction_on_an_empty_label_does_not_score_one():
    empty = np.zeros((4, 4, 4), np.uint8)
    report = EvaluationReport(("a", "b"), (CaseMetrics("x", dice_per_class(empty, empty, 3), (np.nan, np.nan)),))
    assert math.isnan(report.mean_dice()) and report.scored_cases() == 0
    assert "not scored" in report.to_markdown() and "1.000" not in report.to_markdown()


def test_means_leave_out_what_was_not_scored():
    report = EvaluationReport(
        ("a", "b"),
        (CaseMetrics("x", (0.8, float("nan")), (2.0, float("nan"))), CaseMetrics("y", (0.6, 0.4), (4.0, 6.0))),
    )
    assert report.mean_dice_per_class() == pytest.approx({"a": 0.7, "b": 0.4})
    assert report.mean_dice() == pytest.approx((0.8 + 0.5) / 2)
    assert report.mean_hd95_per_class() == pytest.approx({"a": 3.0, "b": 6.0})
    assert math.isnan(mean_scored([])) and mean_scored([None, 0.5]) == 0.5
    assert format_score(None) == "not scored" and format_score(0.25) == "0.250"


def test_a_class_the_network_cannot_output_gives_no_perfect_score():
    truth = np.ones((3, 3, 3), np.uint8)
    scores = dice_per_class(truth, truth, 4)  # a card with one class name too many
    assert scores[0] == 1.0 and all(math.isnan(s) for s in scores[1:])


def test_the_guard_never_activates_on_gains_that_were_not_scored():
    nan = float("nan")
    cv = CrossValidation(steps=(0, 25), dice={"a": (nan, nan), "b": (nan, nan)})
    decision = decide(cv, None, 0.005, 25, 2)
    assert not decision.activate and "not better" in decision.reason
    assert mean_interval([0.2, nan, 0.4])[0] == pytest.approx(0.3)
    partly = CrossValidation(steps=(0, 25, 50), dice={"a": (0.5, 0.6, 0.7), "b": (nan, nan, nan)})
    assert partly.stop_step() == 50 and decide(partly, None, 0.005, 50, 2).activate


def test_evaluate_cases_scores_in_the_given_order_and_lists_an_unusable_label_when_asked_to_skip(tmp_path):
    from conftest import make_tiny_card, synthetic_case, write_dataset

    from ASSFTActive.errors import InputError
    from ASSFTActive.evaluate import LabelledCase, evaluate_cases
    from ASSFTActive.io import Volume, read_volume, write_volume
    from ASSFTActive.models import load_card, load_model

    model = load_model(load_card(make_tiny_card(tmp_path / "model")))
    images, labels = write_dataset(tmp_path / "data", count=3, labeled=3)
    _, label, affine = synthetic_case(0)
    bad = write_volume(Volume(label[:-2], affine), tmp_path / "bad" / "case_001.nii.gz")
    cases = [
        LabelledCase("case_002", images["case_002"], labels["case_002"]),
        LabelledCase("case_001", images["case_001"], bad),
        LabelledCase("case_000", read_volume(images["case_000"]), read_volume(labels["case_000"])),
    ]
    events = []
    report = evaluate_cases(model, cases, hd95=False, progress=events.append, skip_unreadable=True)
    assert [c.case_id for c in report.cases] == ["case_002", "case_000"]
    assert [(s.case_id, s.path) for s in report.skipped] == [("case_001", str(bad))]
    assert all(len(c.dice) == 2 and all(math.isnan(h) for h in c.hd95) for c in report.cases)
    assert [e.event for e in events] == ["progress", "warning", "progress"]
    assert report.summary()["cases"] == 2
    with pytest.raises(InputError):
        evaluate_cases(model, cases, hd95=False)
