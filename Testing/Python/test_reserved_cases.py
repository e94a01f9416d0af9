"""Cases listed in ``reserved.txt`` are kept for external evaluation: never trained, tuned or selected on.

The guarantee, part by part:

- the split (:func:`harness.splits.split_cases`) never assigns a reserved case (known answer, no data needed);
- what ships was made without them: the embedded model's training and source-test cases, the sample pool and test;
- what the tests and benchmarks use: no case id written in ``Testing/``, ``scripts/`` or the shipped resources (test
  inputs, benchmark results, which chose the defaults) is reserved.

The parts that need the list itself (``../shared/data/hippocampus/reserved.txt``) skip saying so when it is absent.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import HIPPOCAMPUS, REPO

from ASSFTActive.io import case_id
from Testing.Benchmarks.harness.splits import read_reserved, split_cases

CASE_ID = re.compile(r"hippocampus_\d{3}")
EMBEDDED_CARD = REPO / "ASSFTActive" / "resources" / "models" / "hippocampus-unet" / "card.json"
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample"
#: Where case ids are written down: test inputs, benchmark code and results, scripts, shipped resources.
SCANNED = [
    (REPO / "Testing", ("*.py", "*.json", "*.md", "*.csv", "*.txt")),
    (REPO / "scripts", ("*.py",)),
    (REPO / "ASSFTActive" / "resources", ("*.json", "*.md")),
]


def test_the_split_never_assigns_a_reserved_case_and_keeps_every_other_one():
    cases = [f"hippocampus_{i:03d}" for i in range(1, 301)]
    reserved = cases[::7]

    split = split_cases(cases, iter(reserved))
    parts = [set(split.source), set(split.target_pool), set(split.target_test)]

    assert all(not part & set(reserved) for part in parts)
    assert set().union(*parts) == set(cases) - set(reserved)
    assert sum(len(part) for part in parts) == len(cases) - len(reserved)  # the parts do not overlap
    # a reserved case leaves the split without moving any other case between parts
    unreserved = split_cases(cases)
    assert split.source == tuple(c for c in unreserved.source if c not in reserved)
    assert split.target_pool == tuple(c for c in unreserved.target_pool if c not in reserved)


def test_reserved_lists_are_read_one_case_per_line(tmp_path):
    path = tmp_path / "reserved.txt"
    path.write_text("case_b\n\n  case_a  \ncase_c\n")

    assert read_reserved(path) == ("case_b", "case_a", "case_c")


def test_the_shared_reserved_list_names_cases_of_the_collection(reserved_cases):
    collection = {case_id(p) for p in (HIPPOCAMPUS / "imagesTr").glob("*.nii.gz")}

    assert reserved_cases <= collection, f"reserved.txt names {sorted(reserved_cases - collection)}, not in the data"
    split = split_cases(collection, reserved_cases)
    assigned = set(split.source) | set(split.target_pool) | set(split.target_test)
    assert assigned == collection - reserved_cases


def test_the_embedded_model_was_trained_and_tested_without_reserved_cases(reserved_cases):
    provenance = json.loads(EMBEDDED_CARD.read_text(encoding="utf-8"))["provenance"]
    used = set(provenance["train_cases"]) | set(provenance["source_test_cases"])
    collection = {case_id(p) for p in (HIPPOCAMPUS / "imagesTr").glob("*.nii.gz")}

    assert len(used) > 20
    assert not used & reserved_cases, f"the embedded model used reserved cases {sorted(used & reserved_cases)}"
    assert used <= set(split_cases(collection, reserved_cases).source)


def test_the_shipped_sample_holds_no_reserved_case(reserved_cases):
    listed = json.loads((SAMPLE / "sample.json").read_text(encoding="utf-8"))
    files = {case_id(p) for p in SAMPLE.rglob("*.nii.gz")}

    assert files == set(listed["pool"]) | set(listed["test"]) and files
    assert not files & reserved_cases, f"the sample ships reserved cases {sorted(files & reserved_cases)}"


def test_no_test_benchmark_result_or_script_names_a_reserved_case(reserved_cases):
    found = {}
    for folder, patterns in SCANNED:
        for pattern in patterns:
            for path in folder.rglob(pattern):
                for case in set(CASE_ID.findall(path.read_text(encoding="utf-8", errors="replace"))):
                    found.setdefault(case, set()).add(str(path.relative_to(REPO)))

    assert len(found) > 50, "the scan finds the case ids the benchmark results list"
    breaches = {case: sorted(paths) for case, paths in sorted(found.items()) if case in reserved_cases}
    assert not breaches, f"reserved cases are used (pick a non-reserved case instead): {breaches}"


def test_a_named_but_missing_reserved_list_is_refused_not_read_as_empty(tmp_path):
    from ASSFTActive.errors import InputError

    with pytest.raises(InputError, match="reserved cases is missing"):
        read_reserved(tmp_path / "reserved.txt")
    assert read_reserved(None) == ()
