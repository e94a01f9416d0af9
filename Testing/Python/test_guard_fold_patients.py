"""Which stored guard records divided a patient's frames between folds (``guard_fold_patients.py``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "Benchmarks" / "guard_fold_patients.py"
spec = importlib.util.spec_from_file_location("guard_fold_patients", SCRIPT)
guard_fold_patients = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_fold_patients)


def test_a_patient_is_divided_only_when_its_frames_sit_in_different_folds():
    labelled = ["patient001_frame01", "patient001_frame12", "patient002_frame01"]
    assert guard_fold_patients.divides_a_patient(labelled, [labelled[:1], labelled[1:]])
    assert not guard_fold_patients.divides_a_patient(labelled, [labelled[:2], labelled[2:]])
    assert not guard_fold_patients.divides_a_patient(labelled[1:], [labelled[1:2], labelled[2:]])


def _record(root: Path, pool: int, labelled, folds, gain: float, dice: float) -> None:
    folder = root / "dev" / "acdc_path" / "development" / f"pool{pool}"
    (folder / "floor").mkdir(parents=True, exist_ok=True)
    (folder / "floor" / "B0_d0_s0.json").write_text(json.dumps({"mean_dice": 0.5}))
    (folder / "guarded").mkdir(exist_ok=True)
    record = {
        "setting": "acdc_path",
        "split": "development",
        "budget": len(labelled),
        "pool": pool,
        "arm": {"name": "guarded"},
        "labelled": labelled,
        "activated": False,
        "mean_dice": 0.5,
        "candidate_mean_dice": dice,
        "activation": {"method": "cross_validation", "gain": gain},
        "cross_validation": {"folds": folds},
    }
    (folder / "guarded" / f"B{len(labelled)}_d0_s0.json").write_text(json.dumps(record))


def test_the_table_compares_the_gains_of_sets_that_divided_a_patient_with_the_others(tmp_path):
    pair = ["patient001_frame01", "patient001_frame12"]
    _record(tmp_path, 0, pair, [pair[:1], pair[1:]], gain=0.3, dice=0.45)
    _record(
        tmp_path,
        1,
        ["patient002_frame01", "patient003_frame01"],
        [["patient002_frame01"], ["patient003_frame01"]],
        0.1,
        0.6,
    )
    (row,) = guard_fold_patients.summarise(guard_fold_patients.guarded_records(tmp_path))
    assert (row["sets"], row["divided"], row["divided_activated"]) == (2, 1, 0)
    assert round(row["folds_gain_divided"], 6) == 0.3 and round(row["folds_gain_not"], 6) == 0.1
    assert round(row["evaluation_gain_divided"], 6) == -0.05 and round(row["evaluation_gain_not"], 6) == 0.1
