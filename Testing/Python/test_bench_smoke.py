"""The harness end to end on tiny settings (profile ``smoke``): the committed split, two pool replicates, the
ranking pass, random and the default query through the product's Adapt Model, the whole-pool ceiling, the report
(Markdown, JSON, PNG) and the goal rows; a second run resumes and computes nothing. Under 3 minutes on one thread."""

from __future__ import annotations

import json

import pytest

from Testing.Benchmarks.harness import report, runner, tasks


@pytest.mark.slow
def test_the_smoke_profile_runs_the_whole_pipeline_and_a_rerun_computes_nothing(tmp_path):
    if not (tasks.ANATOMIES["hippocampus"].data / "imagesTr").is_dir():
        pytest.skip("needs ../shared/data/hippocampus (the project's shared data; absent in a bare clone)")
    import torch

    torch.set_num_threads(1)
    profile = runner.PROFILES["smoke"]
    units = runner.plan(profile)
    records = tmp_path / "records"
    first = runner.run(units, records, profile, log=lambda _: None)
    assert first.done == len(units) == 10
    again = runner.run(units, records, profile, log=lambda _: None)
    assert again.done == 0 and again.skipped == len(units)

    loaded = runner.load_records(records)
    reserved = set(tasks.ANATOMIES["hippocampus"].reserved())
    for record in loaded:
        assert not reserved & (set(record["pool_cases"]) | set(record["eval_cases"]) | set(record["labelled"]))
        assert not set(record["pool_cases"]) & set(record["eval_cases"])
        assert len(record["per_case"]) == 3
    assisted = [r for r in loaded if r["arm"]["name"] == "assft"]
    assert all(len(r["labelled"]) == 2 and set(r["labelled"]) <= set(r["pool_cases"]) for r in assisted)
    assert all(r["activation"]["method"] == "unguarded" for r in assisted)  # the comparison runs with the guard off

    goals = tmp_path / "goals.json"
    result = report.write(records, tmp_path / "harness_smoke", goals=goals, git="test", command="smoke")
    summary = json.loads((tmp_path / "harness_smoke.json").read_text())["summary"]
    entry = summary["hippocampus_mild/development"]
    assert entry["pools"] == [0, 1] and entry["budgets"]["2"]["random"]["subsets_per_pool"] == [2, 2]
    assert "assft" in entry["budgets"]["2"]["arms"] and entry["ceiling"]["by_steps"].keys() == {"4"}
    assert (tmp_path / "harness_smoke.md").read_text().startswith("# Query benchmark")
    assert len(result["png"]) == 1
    rows = json.loads(goals.read_text())["rows"]
    assert {r["goal"] for r in rows} == {"gap_vs_random", "random_percentile", "headroom_captured"}
