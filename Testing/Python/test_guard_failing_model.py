"""The failing-model fold limit judged from stored guard records (``guard_failing_model.py``): the rule's choice."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "Benchmarks" / "guard_failing_model.py"
spec = importlib.util.spec_from_file_location("guard_failing_model", SCRIPT)
guard_failing_model = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = guard_failing_model  # its dataclasses look their module up there
spec.loader.exec_module(guard_failing_model)


def _record(root: Path, setting: str, pool: int, folds, dice_before: float, evaluation_gain: float) -> None:
    folder = root / "dev_uniform" / setting / "development" / f"pool{pool}"
    (folder / "floor").mkdir(parents=True, exist_ok=True)
    (folder / "floor" / "B0_d0_s0.json").write_text(json.dumps({"mean_dice": 0.5}))
    arm = folder / "random_guarded_budget15"
    arm.mkdir(exist_ok=True)
    record = {
        "budget": len(folds),
        "pool": pool,
        "draw": 0,
        "mean_dice": 0.5,
        "candidate_mean_dice": 0.5 + evaluation_gain,
        "activation": {"method": "cross_validation", "fold_gains": folds, "dice_before": dice_before},
    }
    (arm / f"B{len(folds)}_d0_s0.json").write_text(json.dumps(record))


GROUPS = (
    ("dev_uniform", "acdc_harsh", "random_guarded_budget15"),
    ("dev_uniform", "acdc_mild", "random_guarded_budget15"),
)


def test_a_candidate_that_relaxes_a_failing_models_folds_is_chosen_when_it_activates_nothing_worse(tmp_path):
    _record(tmp_path, "acdc_harsh", 0, [0.2, -0.005], dice_before=0.30, evaluation_gain=0.05)  # refused today
    _record(tmp_path, "acdc_harsh", 1, [0.2, 0.001], dice_before=0.45, evaluation_gain=0.04)  # refused today
    _record(tmp_path, "acdc_mild", 0, [0.15, 0.01], dice_before=0.65, evaluation_gain=-0.02)  # refused by all
    sets = guard_failing_model.read_sets(tmp_path, GROUPS)
    assert [s.dice_before for s in sets] == pytest.approx([0.30, 0.45, 0.65])
    decision = guard_failing_model.choose(sets)
    today = decision["candidates"][0]
    assert (today["activated"], today["false_refusals"]) == (0, 2)
    assert decision["chosen"] == {"failing_dice": 0.5, "failing_min_fold_gain": -0.01}, (
        "D 0.5 and 0.6 with g -0.01 activate both harsh sets (the smaller D wins the tie); D 0.4 only one; g 0.0 "
        "not the fold at -0.005"
    )


def test_today_stays_when_every_relaxing_candidate_activates_a_worse_model(tmp_path):
    _record(tmp_path, "acdc_harsh", 0, [0.2, 0.005], dice_before=0.30, evaluation_gain=-0.02)
    _record(tmp_path, "acdc_mild", 0, [0.2, 0.03], dice_before=0.65, evaluation_gain=0.05)
    decision = guard_failing_model.choose(guard_failing_model.read_sets(tmp_path, GROUPS))
    assert not any(c["eligible"] for c in decision["candidates"][1:])
    assert decision["chosen"] == {"failing_dice": None, "failing_min_fold_gain": None}
    text = guard_failing_model.markdown(decision, guard_failing_model.read_sets(tmp_path, GROUPS), [])
    assert "**Chosen: today (every fold +0.02).**" in text
