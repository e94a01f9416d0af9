"""The ACDC split is by patient: both frames of a patient in one part, reserved patients never assigned.

Known answers without data (synthetic ``patientNNN_frameNN`` names, the part given by an independent sha256 of the
patient id); the parts that read ``../shared/data/acdc`` skip saying so when it is absent. None needs the trained
ACDC source model.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
from conftest import REPO, SHARED_DATA

from ASSFTActive.errors import InputError
from ASSFTActive.io import case_id
from Testing.Benchmarks.harness.splits import (
    acdc_patient,
    each_case,
    groups_of,
    hold_out,
    read_reserved,
    split_acdc,
    split_cases,
)

ACDC = SHARED_DATA / "acdc"
RESULTS_JSON = REPO / "Testing" / "Benchmarks" / "results" / "acdc_source_model.json"
ACDC_CASE = re.compile(r"patient\d{3}_frame\d{2}")


def acdc_dir():
    if not (ACDC / "imagesTr").is_dir():
        pytest.skip(f"needs {ACDC} (the project's shared ACDC data, present in CI; absent in a bare clone)")
    return ACDC


def synthetic_collection(patients: int = 100):
    return [f"patient{p:03d}_frame{f:02d}" for p in range(1, patients + 1) for f in (1, 2)]


def part_of(split, case):
    for name in ("source", "target_pool", "target_test"):
        if case in getattr(split, name):
            return name
    return None


def expected_part(patient: str) -> str:
    bucket = int(hashlib.sha256(patient.encode("utf-8")).hexdigest(), 16) % 10
    return "source" if bucket < 4 else "target_pool" if bucket < 8 else "target_test"


def test_each_patient_lands_in_the_part_its_hash_names_with_both_frames():
    cases = synthetic_collection()

    split = split_acdc(cases)

    for patient, frames in groups_of(cases, acdc_patient).items():
        assert frames == [f"{patient}_frame01", f"{patient}_frame02"]
        assert {part_of(split, c) for c in frames} == {expected_part(patient)}


def test_a_patient_never_straddles_two_parts_and_the_parts_cover_the_rest():
    cases = synthetic_collection()

    split = split_acdc(cases)
    parts = [set(split.source), set(split.target_pool), set(split.target_test)]

    patients = [{acdc_patient(c) for c in part} for part in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sum(len(p) for p in parts) == len(cases) and set().union(*parts) == set(cases)
    assert all(len(p) % 2 == 0 for p in parts)


def test_reserved_patients_are_never_assigned_even_by_their_other_frame():
    cases = synthetic_collection()
    reserved = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 101, 5) for f in (1, 2)]
    reserved += ["patient003_frame02"]  # one frame reserved: the patient's other frame must go too

    split = split_acdc(cases, reserved)
    assigned = set(split.source) | set(split.target_pool) | set(split.target_test)

    assert not assigned & set(reserved)
    assert "patient003_frame01" not in assigned
    assert assigned == {c for c in cases if acdc_patient(c) not in {acdc_patient(r) for r in reserved}}
    # leaving patients out moves no other patient between parts
    full = split_acdc(cases)
    assert split.source == tuple(c for c in full.source if c in assigned)
    assert split.target_test == tuple(c for c in full.target_test if c in assigned)


def test_the_split_is_deterministic_and_ignores_input_order_and_duplicates():
    cases = synthetic_collection()
    shuffled = cases + cases[:10]
    random.Random(3).shuffle(shuffled)

    assert split_acdc(cases) == split_acdc(shuffled) == split_acdc(iter(cases))
    assert split_acdc(cases).source == tuple(sorted(split_acdc(cases).source))


def test_the_default_grouping_keeps_the_hippocampus_split_per_case():
    cases = [f"hippocampus_{i:03d}" for i in range(1, 301)]

    split = split_cases(cases)

    assert split == split_cases(cases, group=each_case)
    for case in cases:
        assert part_of(split, case) == expected_part(case)


def test_hold_out_keeps_patients_whole_and_takes_hash_bucket_zero():
    source = split_acdc(synthetic_collection()).source

    train, held = hold_out(source, acdc_patient)

    assert set(train) | set(held) == set(source) and not set(train) & set(held)
    assert not {acdc_patient(c) for c in train} & {acdc_patient(c) for c in held}
    assert all(int(hashlib.sha256(acdc_patient(c).encode()).hexdigest(), 16) % 10 == 0 for c in held)
    assert held  # 100 patients: some source patient has bucket 0


def test_a_case_name_that_is_not_an_acdc_case_is_refused():
    assert acdc_patient("patient042_frame02") == "patient042"
    for bad in ("patient42_frame01", "hippocampus_001", "patient042"):
        with pytest.raises(InputError, match="not an ACDC case id"):
            split_acdc([bad])


def test_the_real_acdc_split_has_known_sizes_and_no_reserved_patient():
    data = acdc_dir()
    cases = [case_id(p) for p in sorted((data / "imagesTr").glob("*.nii.gz"))]
    reserved = read_reserved(data / "reserved.txt")

    split = split_acdc(cases, reserved)
    assigned = set(split.source) | set(split.target_pool) | set(split.target_test)

    assert len(cases) == 200 and len(reserved) == 40
    assert {acdc_patient(r) for r in reserved}.isdisjoint({acdc_patient(c) for c in assigned})
    assert assigned == set(cases) - set(reserved)
    assert (len(split.source), len(split.target_pool), len(split.target_test)) == (52, 70, 38)
    train, held = hold_out(split.source, acdc_patient)
    assert (len(train), len(held)) == (40, 12)


def test_acdc_results_name_no_reserved_case_and_train_only_on_the_source_split():
    data = acdc_dir()
    if not RESULTS_JSON.is_file():
        pytest.skip(f"needs {RESULTS_JSON.relative_to(REPO)} (written by scripts/train_acdc_source.py)")
    reserved = set(read_reserved(data / "reserved.txt"))
    named = set(ACDC_CASE.findall(RESULTS_JSON.read_text(encoding="utf-8")))
    report = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    cases = [case_id(p) for p in sorted((data / "imagesTr").glob("*.nii.gz"))]
    source = set(split_acdc(cases, sorted(reserved)).source)

    assert named and not named & reserved, f"reserved cases named: {sorted(named & reserved)}"
    used = set(report["card"]["provenance"]["train_cases"]) | set(report["card"]["provenance"]["source_test_cases"])
    assert used == source
