"""The goals file's merge (``Testing/Benchmarks/harness/goals.py``): one place for every benchmark that writes goal
rows."""

from __future__ import annotations

import json
import math

from Testing.Benchmarks.harness.goals import merge_goal_rows, taken_over_message

ROW = {"topic": "query", "goal": "gap_vs_random", "setting": "acdc_path", "budget": 2, "split": "dev"}


def _rows(path):
    return json.loads(path.read_text())["rows"]


def test_a_row_with_the_same_key_is_replaced_and_the_others_are_kept(tmp_path):
    goals = tmp_path / "goals.json"
    other = dict(ROW, goal="random_percentile", value=50.0, source="a.json")
    goals.write_text(json.dumps({"rows": [dict(ROW, value=0.1, source="a.json"), other]}))
    assert merge_goal_rows(goals, [dict(ROW, value=0.2, source="a.json")]) == []
    rows = _rows(goals)
    assert len(rows) == 2 and other in rows
    assert [r["value"] for r in rows if r["goal"] == "gap_vs_random"] == [0.2]


def test_the_effort_measure_is_part_of_the_key(tmp_path):
    goals = tmp_path / "goals.json"
    merge_goal_rows(goals, [dict(ROW, topic="sparse", effort="slices", value=0.1)])
    merge_goal_rows(goals, [dict(ROW, topic="sparse", effort="voxels_changed", value=0.2)])
    assert sorted(r["value"] for r in _rows(goals)) == [0.1, 0.2]


def test_nan_is_written_as_null_and_the_file_is_created(tmp_path):
    goals = tmp_path / "new" / "goals.json"
    merge_goal_rows(goals, [dict(ROW, value=math.nan)])
    assert _rows(goals)[0]["value"] is None


def test_rows_of_another_source_that_are_replaced_are_returned_and_named(tmp_path):
    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"rows": [dict(ROW, value=0.1, source="results/harness_dev2.json")]}))
    taken = merge_goal_rows(goals, [dict(ROW, value=-0.2, source="results/harness_dev.json")])
    assert [r["source"] for r in taken] == ["results/harness_dev2.json"]
    note = taken_over_message(taken, goals)
    assert "1 row(s) of goals.json written from results/harness_dev2.json were replaced" in note
    assert taken_over_message([], goals) == ""


def test_dropping_source_rows_removes_a_variant_the_source_no_longer_holds(tmp_path):
    goals = tmp_path / "goals.json"
    keep = dict(ROW, setting="other", value=1.0, source="b.json")
    goals.write_text(json.dumps({"rows": [dict(ROW, setting="gone", source="a.json"), keep]}))
    merge_goal_rows(goals, [dict(ROW, value=0.3, source="a.json")], drop_source_rows=True)
    assert sorted(r["setting"] for r in _rows(goals)) == ["acdc_path", "other"]
    merge_goal_rows(goals, [dict(ROW, setting="new", source="a.json")])
    assert len(_rows(goals)) == 3, "without drop_source_rows a source's other rows stay"
