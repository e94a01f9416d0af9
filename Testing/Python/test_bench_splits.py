"""The harness's splits and tasks: source / development / test disjoint by patient (ACDC: both frames together),
reserved cases in none of them, the committed split files equal to what the rule makes, ACDC's diagnosis groups
as its labels show them, and pool replicates that keep whole patients."""

from __future__ import annotations

import json

import numpy as np
import pytest

from Testing.Benchmarks.harness import splits, tasks

ACDC_CASES = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 101) for f in (1, 2)]


def _need(anatomy: str) -> tasks.Anatomy:
    chosen = tasks.ANATOMIES[anatomy]
    if not (chosen.data / "imagesTr").is_dir():
        pytest.skip(f"needs {chosen.data} (the project's shared data; absent in a bare clone)")
    return chosen


def _parts(split: splits.BenchmarkSplit):
    return {
        "source": split.source,
        "dev_pool": split.development.pool,
        "dev_eval": split.development.eval,
        "test_pool": split.test.pool,
        "test_eval": split.test.eval,
    }


def test_acdc_parts_are_disjoint_by_patient_and_hold_no_reserved_patient():
    reserved = ["patient011_frame01", "patient011_frame02", "patient084_frame01"]
    split = splits.benchmark_split(ACDC_CASES, reserved, splits.acdc_patient)
    owner = {}
    for part, cases in _parts(split).items():
        for case in cases:
            patient = splits.acdc_patient(case)
            assert owner.setdefault(patient, part) == part, f"{patient} in {owner[patient]} and {part}"
    assert "patient011" not in owner and "patient084" not in owner  # a reserved frame drops the whole patient
    assert len(owner) == 98
    assert all(len([c for p in _parts(split).values() for c in p if c.startswith(pt + "_")]) == 2 for pt in owner)
    # the source part is the one the ACDC source model was trained on
    assert split.source == splits.split_acdc(ACDC_CASES, reserved).source
    assert split.development.pool and split.development.eval and split.test.pool and split.test.eval


def test_the_split_depends_on_each_group_alone():
    whole = splits.benchmark_split([f"case_{i:03d}" for i in range(200)])
    fewer = splits.benchmark_split([f"case_{i:03d}" for i in range(0, 200, 2)])
    assert set(fewer.development.pool) <= set(whole.development.pool)
    assert set(fewer.test.eval) <= set(whole.test.eval)


def test_acdc_path_keeps_the_three_source_diagnoses_out_of_the_target():
    split = splits.acdc_path_split(ACDC_CASES, ["patient030_frame01"])
    assert {splits.acdc_diagnosis(c) for c in split.source} == {"dilated", "infarct", "normal"}
    target = split.development.pool + split.development.eval + split.test.pool + split.test.eval
    assert {splits.acdc_diagnosis(c) for c in target} == {"hypertrophic", "abnormal_rv"}
    assert not any(c.startswith("patient030_") for c in target + split.source)
    assert splits.acdc_diagnosis("patient100_frame02") == "abnormal_rv"
    with pytest.raises(Exception, match="001-100"):
        splits.acdc_diagnosis("patient101_frame01")


def test_pool_replicates_differ_keep_whole_patients_and_repeat_with_their_seed():
    candidates = [c for c in ACDC_CASES[:60]]
    a = tasks.pool_replicate(candidates, 20, 0, splits.acdc_patient)
    b = tasks.pool_replicate(candidates, 20, 1, splits.acdc_patient)
    assert len(a) == 20 and a != b and a == tasks.pool_replicate(candidates, 20, 0, splits.acdc_patient)
    assert all(c.replace("frame01", "frame02") in a for c in a if c.endswith("frame01"))
    assert tasks.pool_replicate(candidates, 0, 3, splits.acdc_patient) == tuple(sorted(candidates))


def test_a_part_no_larger_than_the_pool_gives_replicates_that_each_leave_out_another_whole_patient():
    candidates = [f"patient{p:03d}_frame0{f}" for p in (1, 2, 3) for f in (1, 2)]
    pools = [tasks.leave_one_group_out(candidates, r, splits.acdc_patient) for r in range(4)]
    assert len(set(pools[:3])) == 3 and pools[3] == pools[0], "as many distinct replicates as patients"
    for pool in pools:
        assert len(pool) == 4 and len({splits.acdc_patient(c) for c in pool}) == 2, "one whole patient left out"


def test_multisite_cases_fall_into_four_sites_in_unequal_shares():
    setting = tasks.SETTINGS["hippocampus_multisite"]
    counts = {}
    for i in range(2000):
        counts[setting.site_of(f"hippocampus_{i:04d}").name] = (
            counts.get(setting.site_of(f"hippocampus_{i:04d}").name, 0) + 1
        )
    shares = {s.name: s.share for s in setting.sites}
    assert set(counts) == set(shares)
    for name, share in shares.items():
        assert counts[name] / 2000 == pytest.approx(share, abs=0.04)
    assert len({s.shift.kind for s in setting.sites}) >= 3  # different kinds, not one shift at four strengths


@pytest.mark.parametrize("anatomy", sorted(tasks.ANATOMIES))
def test_the_committed_split_files_are_what_the_rule_makes_from_the_data(anatomy):
    chosen = _need(anatomy)
    committed = json.loads((tasks.SPLITS_DIR / f"{anatomy}.json").read_text())
    split = chosen.split()
    assert {k: committed[k] for k in ("source", "development", "test")} == split.to_dict()
    reserved = set(chosen.reserved())
    groups = {}
    for part, cases in _parts(split).items():
        assert not reserved & set(cases), f"reserved cases in {part}"
        for case in cases:
            assert groups.setdefault(chosen.group(case), part) == part
    assert committed["rule"] == splits.BENCHMARK_SPLIT_RULE


def test_tasks_of_one_split_share_their_evaluation_cases_and_never_hold_a_reserved_case():
    chosen = _need("hippocampus")
    first = tasks.make_task("hippocampus_mild", "development", 0)
    second = tasks.make_task("hippocampus_mild", "development", 1)
    assert first.eval == second.eval and first.pool != second.pool
    assert not set(first.pool) & set(first.eval)
    assert not set(chosen.reserved()) & (set(first.pool) | set(first.eval) | set(second.pool))
    test = tasks.make_task("hippocampus_mild", "test", 0)
    assert not (set(test.pool) | set(test.eval)) & (set(first.pool) | set(first.eval))


@pytest.mark.parametrize("split", ["development", "test"])
@pytest.mark.parametrize("setting", sorted(tasks.SETTINGS))
def test_every_settings_pool_replicates_differ_so_a_deterministic_query_meets_several_labelled_sets(setting, split):
    _need(tasks.SETTINGS[setting].anatomy)
    pools = {tasks.make_task(setting, split, r).pool for r in range(5)}
    assert len(pools) == 5, "ACDC-Path's test part has only its pool size of candidates: replicates leave one out"


def test_acdc_patient_numbers_follow_the_diagnosis_groups_the_labels_show():
    """Verified from the labels (the shared copy has no Info.cfg): per block of 20 patients, the median left-ventricle
    ejection fraction (LV cavity, end-diastole vs end-systole frame), myocardium / LV cavity and RV / LV cavity at
    end-diastole. Ratios of voxel counts, so the missing spacing does not matter."""
    _need("acdc")
    import nibabel as nib

    root = tasks.SHARED_DATA / "acdc" / "labelsTr"
    rows = {}
    for p in range(1, 101):
        counts = []
        for frame in (1, 2):
            label = np.asarray(nib.load(root / f"patient{p:03d}_frame{frame:02d}.nii.gz").dataobj)
            counts.append([int((label == k).sum()) for k in (1, 2, 3)])
        (rv, myo, lv), (_, _, lv_es) = counts
        rows.setdefault(splits.acdc_diagnosis(f"patient{p:03d}_frame01"), []).append(
            ((lv - lv_es) / lv, myo / lv, rv / lv)
        )
    median = {g: np.median(np.array(v), axis=0) for g, v in rows.items()}
    ef = {g: m[0] for g, m in median.items()}
    assert max(ef["dilated"], ef["infarct"]) < 0.45 < min(ef["hypertrophic"], ef["normal"], ef["abnormal_rv"])
    assert max(median, key=lambda g: median[g][1]) == "hypertrophic"
    assert max(median, key=lambda g: median[g][2]) == "abnormal_rv"
