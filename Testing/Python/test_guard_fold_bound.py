"""The lower bound on a fold's gain from a guard record without per-fold gains (``guard_fold_bound.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ASSFTActive.finetune.guard import mean_interval

SCRIPT = Path(__file__).resolve().parents[1] / "Benchmarks" / "guard_fold_bound.py"
spec = importlib.util.spec_from_file_location("guard_fold_bound", SCRIPT)
guard_fold_bound = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_fold_bound)


@pytest.mark.parametrize(
    "gains",
    [(0.3, -0.1), (0.1, 0.3, -0.2, 0.2), (0.2, 0.21, 0.19, 0.2, 0.22, 0.18, 0.2, -0.05)],
    ids=["two", "four", "eight-one-low"],
)
def test_the_bound_from_the_guards_interval_is_never_above_the_lowest_volume_and_exact_for_two(gains):
    mean, _, high = mean_interval(gains)
    bound = guard_fold_bound.worst_fold_bound(mean, high, len(gains))
    assert bound <= min(gains) + 1e-12
    if len(gains) == 2:
        assert bound == pytest.approx(min(gains))


def test_the_bound_needs_two_volumes_and_the_reason_must_name_them():
    with pytest.raises(ValueError, match="at least 2"):
        guard_fold_bound.worst_fold_bound(0.1, 0.2, 1)
    assert guard_fold_bound.labelled_count("gain +0.2 on 4 labelled volume(s)") == 4
    with pytest.raises(ValueError, match="no number of labelled volumes"):
        guard_fold_bound.labelled_count("better than the current model")
