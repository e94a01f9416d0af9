"""Effort as the budget in the benchmark harness (issue 27 item 4), without training: the effort counted on tiny
arrays, the oracle partial label, a sparse arm's budget of B whole volumes, slice proposals within it, the arms and
the profile, and the Dice-against-effort report with its ``sparse`` goal rows from hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ASSFTActive.partial import NOT_ANNOTATED, split_partial
from ASSFTActive.query.units import ProposedUnit, Unit
from Testing.Benchmarks.harness import arms, report, runner, sparse, sparse_report, stats, tasks


def test_effort_counts_touched_slices_painted_and_changed_voxels_on_a_tiny_volume():
    truth = np.zeros((2, 3, 4), dtype=np.uint8)
    truth[0, 1, 1] = truth[0, 1, 2] = 1  # two foreground voxels in slices k = 1 and 2
    truth[1, 2, 3] = 2  # one in slice k = 3
    prefill = truth.copy()
    prefill[0, 1, 2] = 0  # the model missed one foreground voxel ...
    prefill[1, 0, 0] = 1  # ... and painted one background voxel
    annotated = np.zeros(truth.shape, dtype=bool)
    annotated[:, :, 2] = True  # slice k = 2 (6 voxels)
    annotated[1, 0, 0] = True  # one voxel of slice k = 0
    effort = sparse.count_effort(truth, annotated, prefill, axis=2)
    assert effort == sparse.Effort(
        volumes=1, slices_touched=2, slice_equivalents=7 / 6, voxels_annotated=7, voxels_painted=1, voxels_changed=2
    )
    whole = sparse.count_effort(truth, np.ones(truth.shape, bool), prefill, axis=2)
    assert (whole.slices_touched, whole.slice_equivalents, whole.voxels_painted, whole.voxels_changed) == (4, 4, 3, 2)
    along_0 = sparse.count_effort(truth, annotated, prefill, axis=0)
    assert along_0.slices_touched == 2 and along_0.slice_equivalents == pytest.approx(7 / 12)
    assert (effort + whole).voxels_changed == 4 and effort.value("slices") == pytest.approx(7 / 6)
    assert sparse.count_effort(truth, np.zeros(truth.shape, bool), prefill, 2) == sparse.Effort()
    with pytest.raises(ValueError, match="one \\[I, J, K\\]"):
        sparse.count_effort(truth, annotated[:, :, :2], prefill, 2)
    with pytest.raises(ValueError, match="measure"):
        effort.value("clicks")


def test_an_oracle_partial_label_is_255_exactly_outside_the_proposed_units():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
    units = [
        ProposedUnit("v", Unit.SLICE, 0.5, 0.5, axis=2, index=1),
        ProposedUnit("v", Unit.SLICE, 0.4, 0.4, axis=2, index=5),
        ProposedUnit("v", Unit.REGION, 0.3, 0.3, start=(1, 1, 2), size=(2, 3, 2)),
    ]
    mask = sparse.unit_mask(truth.shape, units)
    expected = np.zeros(truth.shape, bool)
    expected[:, :, [1, 5]] = True
    expected[1:3, 1:4, 2:4] = True
    assert np.array_equal(mask, expected)
    label = sparse.oracle_partial_label(truth, mask)
    assert label.dtype == np.uint8
    assert np.all(label[~mask] == NOT_ANNOTATED) and np.array_equal(label[mask], truth[mask])
    labels, annotated = split_partial(label, num_classes=3)  # the product reads it back as the same units
    assert np.array_equal(annotated, mask) and np.array_equal(labels[mask], truth[mask])
    with pytest.raises(ValueError, match="outside"):
        sparse.unit_mask((5, 6, 7), [ProposedUnit("v", Unit.REGION, 0, 0, start=(4, 0, 0), size=(2, 2, 2))])


def test_a_sparse_budget_is_b_times_the_pools_mean_whole_volume_effort():
    assert sparse.effort_budget(2, [10, 12, 14]) == pytest.approx(24.0)
    assert sparse.effort_budget(4, [100.0]) == pytest.approx(400.0)
    with pytest.raises(ValueError, match=">= 0"):
        sparse.effort_budget(-1, [10])
    with pytest.raises(ValueError, match="at least one"):
        sparse.effort_budget(2, [])


def test_selection_within_a_budget_takes_the_largest_proposal_that_fits_and_at_least_one_unit():
    def pick(n):
        return list(range(min(n, 5)))  # five units at most

    def cost(chosen):
        return 3.0 * len(chosen)

    assert sparse.select_within_budget(pick, cost, 10.0, 20) == [0, 1, 2]  # 9 fits, 12 does not
    assert sparse.select_within_budget(pick, cost, 100.0, 20) == [0, 1, 2, 3, 4]  # stops when pick runs out
    assert sparse.select_within_budget(pick, cost, 1.0, 20) == [0]  # one unit even over budget


def _views(n: int = 3, shape=(6, 6, 8), spacing=(1.0, 1.0, 3.0)):
    """``n`` volumes whose entropy is high in slice k = 2 + v (volume v) and whose pre-fill misses the foreground
    of slices 5 and 6."""
    views = {}
    for v in range(n):
        truth = np.zeros(shape, np.uint8)
        truth[1:5, 1:5, :] = 1
        prefill = truth.copy()
        prefill[1:5, 1:5, 5:7] = 0  # 16 changed voxels in each of slices 5 and 6
        entropy = np.full(shape, 20, np.uint8)
        entropy[:, :, 2 + v] = 250
        views[f"v{v}"] = sparse.VolumeView(f"v{v}", truth, prefill, entropy, truth > 0, spacing)
    return views


def test_slices_by_score_spend_the_slices_of_b_volumes_on_the_most_uncertain_slices():
    views = _views()
    arm = arms.Arm("s", (("strategy", "assft"),), unit="slice", measure="slices", unit_fields=(("min_gap", 1),))
    proposal = sparse.propose(views, arm, 1, ranked_ids=["v2", "v0", "v1"])
    assert proposal.per_volume["slices"] == 8 and proposal.budget == 8  # B = 1: the 8 slices of one volume
    assert len(proposal.units) == 8 and proposal.effort.slices_touched == 8
    assert proposal.effort.slice_equivalents == pytest.approx(8)
    assert {(u.case_id, u.index) for u in proposal.units[:3]} == {("v0", 2), ("v1", 3), ("v2", 4)}
    assert proposal.units[0].case_id == "v2"  # the volume ranked first wins a tie of slice entropy
    assert sorted(proposal.masks) == ["v0", "v1", "v2"]
    for case, mask in proposal.masks.items():
        assert mask.sum() == 36 * sum(u.case_id == case for u in proposal.units)
    twice = sparse.propose(views, arm, 2, ranked_ids=["v2", "v0", "v1"])
    assert len(twice.units) == 16 and twice.effort.slices_touched == 16


def test_random_slices_differ_by_draw_under_the_same_budget():
    views = _views()
    arm = arms.ARMS["slices_random"]
    a = sparse.propose(views, arm, 1, ranked_ids=[], seed=1)
    b = sparse.propose(views, arm, 1, ranked_ids=[], seed=2)
    assert a.effort.slice_equivalents <= a.budget and b.effort.slice_equivalents <= b.budget
    assert [(u.case_id, u.index) for u in a.units] != [(u.case_id, u.index) for u in b.units]
    again = sparse.propose(views, arm, 1, ranked_ids=[], seed=1)
    assert [(u.case_id, u.index) for u in a.units] == [(u.case_id, u.index) for u in again.units]


def test_a_voxel_budget_stops_within_the_changed_voxels_of_b_prefilled_volumes():
    views = _views()
    arm = arms.Arm(
        "p", (("strategy", "random"),), unit="slice", measure="voxels_changed", unit_fields=(("min_gap", 1),)
    )
    proposal = sparse.propose(views, arm, 1, ranked_ids=[], seed=3)
    assert proposal.per_volume["voxels_changed"] == 32 and proposal.budget == 32
    assert proposal.effort.voxels_changed <= 32
    # every slice 5 or 6 costs 16 changed voxels: at most two of them, any number of the others (cost 0)
    assert sum(u.index in (5, 6) for u in proposal.units) <= 2
    assert proposal.effort.voxels_changed == 16 * sum(u.index in (5, 6) for u in proposal.units)


def test_sparse_arms_name_their_unit_and_measure_and_classic_arms_keep_their_record():
    arm = arms.parse_arm("strategy=assft,unit=slice")
    assert (arm.unit, arm.measure, arm.sparse, arm.seeded) == ("slice", "slices", True, False)
    assert arm.name == "assft_unit-slice" and arm.to_dict()["unit"] == "slice"
    region = arms.parse_arm("r:strategy=random,unit=region,region_size=16,measure=voxels_changed")
    assert region.name == "r" and region.seeded and dict(region.unit_fields) == {"region_size": (16, 16, 16)}
    assert region.draws(2) == arms.SEEDED_DRAWS  # random units: 5 draws, not the volume distribution's 30
    assert sparse.unit_config(region).prior_weight == 0.0
    assert arms.ARMS["prefill_correction"].measure == "voxels_changed" and not arms.ARMS["prefill_correction"].sparse
    assert set(arms.ARMS["assft"].to_dict()) == {"name", "query", "finetune", "guard", "seeded", "whole_pool", "label"}
    with pytest.raises(ValueError, match="unit must be"):
        arms.parse_arm("strategy=assft,unit=voxel")
    with pytest.raises(ValueError, match="needs an effort measure"):
        arms.Arm("x", unit="slice")
    with pytest.raises(ValueError, match="unknown unit fields"):
        arms.Arm("x", unit="slice", measure="slices", unit_fields=(("size", 3),))


def test_the_sparse_profile_records_effort_for_every_arm_and_its_plan_is_estimated():
    profile = runner.PROFILES["sparse"]
    assert profile.split == "development" and {2, 4} <= set(profile.budgets)
    units = runner.plan(profile, settings=["hippocampus_mild"], pools=[0])
    by_arm = {}
    for u in units:
        by_arm.setdefault(u.arm.name, []).append(u)
    assert by_arm["assft"][0].arm.records_effort and by_arm["assft"][0].arm.to_dict()["record_effort"]
    assert len(by_arm["slices_random"]) == len(profile.budgets) * arms.SEEDED_DRAWS
    assert all(u.arm.records_effort for u in units if u.arm.name != "floor")
    hours = runner.estimate_cpu_hours(units)
    assert 0 < hours["hippocampus_mild"] < 10
    # the other profiles' records keep their keys
    assert "effort" not in runner.PROFILES["development"].to_dict() and runner.PROFILES["sparse"].to_dict()["effort"]
    dev = runner.plan(runner.PROFILES["development"], settings=["acdc_mild"], pools=[0], arms=["assft"])
    assert not any(u.arm.records_effort for u in dev)


# ------------------------------------------------------------------------------------------------- the report

SPARSE_PROFILE = runner.Profile(
    settings=("hippocampus_mild",),
    split="development",
    pools=2,
    budgets=(2, 4),
    arms=("assft", "slices_by_score", "slices_random"),
    draws=2,
    ceiling_steps=(4, 8),
    effort=True,
)
#: mean Dice by (arm, budget); random slices add 0.01 per draw
DICE = {
    ("floor", 0): 0.5,
    ("assft", 2): 0.70,
    ("assft", 4): 0.78,
    ("slices_by_score", 2): 0.77,
    ("slices_by_score", 4): 0.80,
    ("slices_random", 2): 0.72,
    ("slices_random", 4): 0.74,
}


def fake_task(unit, profile):
    return tasks.Task(
        setting=tasks.SETTINGS[unit.setting],
        split=unit.split,
        replicate=unit.pool,
        pool=("a", "b", "c", "d"),
        eval=("x1", "x2", "x3"),
        model="default",
        data=Path("/nowhere"),
    )


def fake_execute(task, unit, work):
    arm = unit.arm
    base = DICE.get((arm.name, unit.budget), 0.8) + (0.01 * unit.draw if arm.name == "slices_random" else 0.0)
    body = {"labelled": ["a"], "per_case": {c: [base] for c in task.eval}, "mean_dice": base}
    if arm.records_effort:
        spent = 10.0 * unit.budget  # slice-equivalents: the budget of B volumes of 10 slices
        body["effort"] = {
            **sparse.Effort(1, int(spent), spent, 400, 100 * unit.budget, 20 * unit.budget).to_dict(),
            "measure": arm.measure or None,
            "budget": spent if arm.sparse else None,
            "per_volume": {"slices": 10.0, "voxels_changed": 20.0, "voxels_painted": 100.0},
        }
    return body


def test_the_effort_report_draws_dice_against_effort_and_writes_the_sparse_goal_rows(tmp_path):
    root = tmp_path / "runs" / "sp"
    units = runner.plan(SPARSE_PROFILE)
    runner.run(units, root, SPARSE_PROFILE, execute=fake_execute, task_of=fake_task, log=lambda _: None)
    records = runner.load_records(root)
    assert sparse_report.has_effort(records)
    entry = sparse_report.summarise(records)["hippocampus_mild/development"]
    assert entry["floor"] == pytest.approx(0.5) and entry["ceiling"] == pytest.approx(0.8)
    assert entry["ceiling_steps"] == 4
    rows = {(r["arm"], r["budget"]): r for r in entry["rows"]}
    assert rows[("slices_by_score", 4)]["volume_equivalents"]["slices"] == pytest.approx(4.0)
    assert rows[("assft", 2)]["voxels_changed"] == pytest.approx(40.0) and rows[("assft", 2)]["measure"] is None
    assert rows[("slices_random", 2)]["labelled_sets"] == 4 and rows[("slices_random", 2)]["mean_dice"] == 0.725
    gaps = {(g["goal"], g["budget"]): g for g in entry["gaps"]}
    assert gaps[("gap_vs_whole_volume", 2)]["gap"] == pytest.approx(0.07)
    assert gaps[("gap_vs_whole_volume", 4)]["gap"] == pytest.approx(0.02)
    assert gaps[("gap_vs_random_slices", 2)]["gap"] == pytest.approx(0.045)
    assert gaps[("gap_vs_whole_volume", 2)]["reference"] == "assft"
    (ratio,) = entry["ratios"]  # no pre-fill slice arm was run: only the slices measure
    # target 0.95 x 0.8 = 0.76: slices reach it at 20 x 0.26 / 0.27, whole volumes at 20 + 20 x 0.06 / 0.08 = 35
    assert ratio["effort"] == "slices" and ratio["bound"] == "exact"
    assert ratio["ratio"] == pytest.approx((20 * 0.26 / 0.27) / 35)
    assert ratio["ci_low"] == pytest.approx(ratio["ratio"]) == pytest.approx(ratio["ci_high"])  # equal pools

    goal_rows = sparse_report.goal_rows({"e": entry}, "src.json", "abc")
    by_goal = {(r["goal"], r["budget"]): r for r in goal_rows}
    assert set(by_goal) == {
        ("gap_vs_whole_volume", 2),
        ("gap_vs_whole_volume", 4),
        ("gap_vs_random_slices", 2),
        ("gap_vs_random_slices", 4),
        ("effort_ratio_to_95pct_ceiling", None),
    }
    row = by_goal[("gap_vs_whole_volume", 2)]
    assert (row["topic"], row["split"], row["effort"], row["target"], row["higher_is_better"]) == (
        "sparse",
        "dev",
        "slices",
        0.03,
        True,
    )
    assert by_goal[("gap_vs_random_slices", 2)]["target"] == 0.02
    ratio_row = by_goal[("effort_ratio_to_95pct_ceiling", None)]
    assert ratio_row["target"] == 0.5 and ratio_row["higher_is_better"] is False and ratio_row["bound"] == "exact"

    # the report command: one Markdown with the effort section, a PNG per setting, rows merged beside the others
    from Testing.Benchmarks.harness.__main__ import main

    goals = tmp_path / "goals.json"
    goals.write_text(json.dumps({"rows": [{"topic": "query", "goal": "gap_vs_random", "setting": "hippocampus_mild",
                                           "budget": 2, "split": "dev", "value": 0.01}]}))  # fmt: skip
    out = tmp_path / "out"
    args = ["report", "--name", "sp", "--records", str(tmp_path / "runs"), "--out-dir", str(out)]
    assert main([*args, "--goals", str(goals)]) == 0
    assert main([*args, "--goals", str(goals)]) == 0  # merged by key: no duplicate
    text = (out / "harness_sp.md").read_text()
    assert "## Dice against annotation effort" in text and "| slices_by_score | 4 | slices | 0.800 |" in text
    assert (out / "harness_sp_effort_hippocampus_mild_development.png").is_file()
    merged = json.loads(goals.read_text())["rows"]
    assert sum(r["topic"] == "sparse" for r in merged) == 5 and sum(r["topic"] == "query" for r in merged) == 1
    assert "effort" in json.loads((out / "harness_sp.json").read_text())


def test_a_run_without_effort_reports_as_before(tmp_path):
    profile = runner.Profile(
        settings=("hippocampus_mild",), split="development", pools=1, budgets=(2,), arms=("assft",), ceiling_steps=()
    )
    runner.run(runner.plan(profile), tmp_path / "r", profile, execute=fake_execute, task_of=fake_task, log=print)
    records = runner.load_records(tmp_path / "r")
    assert not sparse_report.has_effort(records) and not any("effort" in r for r in records)
    assert all("record_effort" not in r["arm"] and "effort" not in r["profile"] for r in records)
    result = report.write(tmp_path / "r", tmp_path / "out" / "harness_r", goals=None)
    assert "effort" not in result and "annotation effort" not in (tmp_path / "out" / "harness_r.md").read_text()


def test_the_effort_ratio_states_a_bound_when_whole_volumes_never_reach_the_target():
    efforts = np.array([[0.0, 20.0, 40.0]])
    ratio = stats.effort_ratio(efforts, [[0.5, 0.8, 0.9]], efforts, [[0.5, 0.6, 0.7]], [0.76], resamples=50)
    assert ratio.bound == "upper" and ratio.value == pytest.approx((20 * 0.26 / 0.3) / 40)
    neither = stats.effort_ratio(efforts, [[0.5, 0.6, 0.7]], efforts, [[0.5, 0.6, 0.7]], [0.76], resamples=50)
    assert neither.bound is None and np.isnan(neither.value)
    assert stats.effort_to_reach([0, 10], [0.8, 0.9], 0.7) == (0.0, True)
    with pytest.raises(ValueError, match="decrease"):
        stats.effort_to_reach([0, 10, 5], [0.1, 0.2, 0.3], 0.25)


@pytest.mark.slow
def test_slice_arms_run_through_the_products_adapt_model_on_the_smoke_settings(tmp_path):
    """The real pipeline, tiny: the ranking pass, slice proposals by score within B volumes' painted slices and
    within their voxels changed from the pre-fill, oracle partial label files, Adapt Model, the effort report."""
    if not (tasks.ANATOMIES["hippocampus"].data / "imagesTr").is_dir():
        pytest.skip("needs ../shared/data/hippocampus (the project's shared data; absent in a bare clone)")
    import dataclasses

    import torch

    torch.set_num_threads(1)
    profile = dataclasses.replace(
        runner.PROFILES["smoke"],
        pools=1,
        arms=("assft", "slices_by_score", "slices_by_score_prefill"),
        ceiling_steps=(),
        effort=True,
    )
    units = runner.plan(profile)
    summary = runner.run(units, tmp_path / "records", profile, log=lambda _: None)
    assert summary.done == len(units) == 4
    records = {r["arm"]["name"]: r for r in runner.load_records(tmp_path / "records")}
    whole = records["assft"]["effort"]
    assert whole["volumes"] == 2 and whole["slices_touched"] == whole["slice_equivalents"]
    for name, measure in (("slices_by_score", "slice_equivalents"), ("slices_by_score_prefill", "voxels_changed")):
        record = records[name]
        effort = record["effort"]
        assert 0 < effort[measure] <= effort["budget"]
        assert effort["budget"] == pytest.approx(
            2 * effort["per_volume"][measure.replace("slice_equivalents", "slices")]
        )
        assert record["labelled"] == sorted(record["proposed"]) and set(record["labelled"]) <= set(record["pool_cases"])
        assert sum(len(v) for v in record["proposed"].values()) == effort["slices_touched"]
        assert record["activation"]["method"] == "unguarded" and len(record["per_case"]) == 3
    result = report.write(tmp_path / "records", tmp_path / "harness_s", goals=None, git="test", command="s")
    assert any("effort_" in p for p in result["png"])


def test_overlapping_regions_cost_their_union_within_the_budget():
    """A 5-voxel-wide volume tiled by 4-voxel boxes: the second box overlaps the first by 3 voxels; the budget
    counts the voxels painted once."""
    shape = (5, 4, 4)
    truth = np.ones(shape, np.uint8)
    view = sparse.VolumeView("v", truth, truth.copy(), np.full(shape, 200, np.uint8), truth > 0, (1.0, 1.0, 1.0))
    arm = arms.Arm(
        "r",
        (("strategy", "assft"),),
        unit="region",
        measure="slices",
        unit_fields=(("region_size", (4, 4, 4)), ("per_volume_extra", 5)),
    )
    # one whole volume = 4 slices of 20 voxels along axis 2; B = 1: 4 slice-equivalents; a box is 64 voxels = 3.2
    proposal = sparse.propose({"v": view}, arm, 1, ranked_ids=["v"])
    assert len(proposal.units) == 2  # both boxes: their union is the whole volume, 80 voxels = 4 slices
    assert proposal.effort.voxels_annotated == 80 and proposal.effort.slice_equivalents == pytest.approx(4.0)


def test_a_painted_voxel_budget_stops_regions_at_b_volumes_foreground_where_slice_equivalents_do_not():
    """A small structure in a large slice (the heart on a cardiac slice): boxes around it are a small part of the
    slice, so slice-equivalents let regions cover the whole pool's foreground at the effort of one volume; counted in
    painted foreground voxels, the same budget buys one volume's foreground."""
    shape, views = (24, 24, 4), {}
    for v in range(3):
        truth = np.zeros(shape, np.uint8)
        truth[10:14, 10:14, :] = 1  # 16 foreground voxels per slice, 64 per volume
        entropy = np.full(shape, 10, np.uint8)
        entropy[8:16, 8:16, :] = 240
        views[f"v{v}"] = sparse.VolumeView(f"v{v}", truth, truth.copy(), entropy, truth > 0, (1.0, 1.0, 3.0))
    fields = (("region_size", (4, 4, 4)), ("per_volume_extra", 5))
    by_area = arms.Arm("a", (("strategy", "assft"),), unit="region", measure="slices", unit_fields=fields)
    by_paint = arms.Arm("p", (("strategy", "assft"),), unit="region", measure="voxels_painted", unit_fields=fields)
    area = sparse.propose(views, by_area, 1, ranked_ids=["v0", "v1", "v2"])
    paint = sparse.propose(views, by_paint, 1, ranked_ids=["v0", "v1", "v2"])
    assert paint.per_volume["voxels_painted"] == 64 and paint.budget == 64
    assert area.effort.slice_equivalents <= area.budget == 4  # within the budget it was given ...
    assert area.effort.voxels_painted == 3 * 64  # ... yet it paints all three volumes' foreground
    assert 0 < paint.effort.voxels_painted <= 64
