"""The annotation-efficiency benchmark on a second anatomy: ``--anatomy acdc`` picks ACDC's data folder, split by
patient, source model and shifts; ``--anatomy hippocampus`` (the default) resolves as before.

Nothing here trains or needs the trained ACDC source model: the model is a card written from
``scripts/train_acdc_source.py``'s ``CARD`` (resolving an experiment reads the card, not the weights). Parts that
read the shared data skip saying so when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import HIPPOCAMPUS, REPO, SHARED_DATA

from Testing.Benchmarks.harness.shifts import BENCHMARK_SHIFTS, ShiftConfig, ShiftKind, benchmark_shift

ACDC = SHARED_DATA / "acdc"
BENCHMARKS = REPO / "Testing" / "Benchmarks"


def load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load("annotation_efficiency", BENCHMARKS / "annotation_efficiency.py")


@pytest.fixture(scope="module")
def train_script():
    return load("train_acdc_source", REPO / "scripts" / "train_acdc_source.py")


@pytest.fixture
def acdc_card(tmp_path, train_script):
    """A model folder holding the ACDC source model's card (no weights: resolving never loads them)."""
    folder = tmp_path / "acdc-source"
    folder.mkdir()
    (folder / "card.json").write_text(json.dumps({**train_script.CARD, "provenance": {}}))
    return folder


def need(path: Path) -> Path:
    if not (path / "imagesTr").is_dir():
        pytest.skip(f"needs {path} (the project's shared data, present in CI; absent in a bare clone)")
    return path


def test_every_benchmark_anatomy_has_a_mild_shift_weaker_than_its_harsh_one():
    assert set(BENCHMARK_SHIFTS) == {"hippocampus", "acdc"}
    for anatomy, shifts in BENCHMARK_SHIFTS.items():
        assert set(shifts) == {"mild", "harsh"}
        assert shifts["mild"].kind == shifts["harsh"].kind
        assert shifts["mild"].strength < shifts["harsh"].strength, anatomy
    # the hippocampus shifts are the ones RESULTS.md measured (scanner 0.3 and 0.7)
    assert benchmark_shift("hippocampus", "mild") == ShiftConfig(ShiftKind.SCANNER, 0.3)
    assert benchmark_shift("hippocampus", "harsh") == ShiftConfig(ShiftKind.SCANNER, 0.7)
    with pytest.raises(ValueError, match="unknown anatomy"):
        benchmark_shift("liver", "mild")
    with pytest.raises(ValueError, match="unknown shift severity"):
        benchmark_shift("acdc", "medium")


def test_the_benchmark_looks_for_the_acdc_model_where_the_training_script_writes_it(bench, train_script):
    assert bench.ACDC_SOURCE_MODEL == train_script.DEFAULT_OUT
    assert bench.ANATOMIES["acdc"].model == str(train_script.DEFAULT_OUT)
    assert not str(train_script.DEFAULT_OUT.expanduser().resolve()).startswith(str(REPO.resolve()))


def test_the_acdc_card_has_four_classes_and_a_patch_fit_for_few_slices(acdc_card):
    from ASSFTActive.models import build_network
    from ASSFTActive.store import resolve_card

    card = resolve_card(acdc_card)
    network = build_network(card)
    names = {n for n, _ in network.named_modules()}

    assert card.class_names == ("background", "RV", "myocardium", "LV")
    assert card.patch_size[2] <= 8 and card.spacing[2] == 1.0  # no interpolation across the thick slices
    assert set(card.encoder_stages) <= names


def test_a_missing_acdc_model_says_which_script_makes_it(bench, tmp_path):
    from dataclasses import replace

    anatomy = replace(bench.ANATOMIES["acdc"], model=str(tmp_path / "nowhere"))

    with pytest.raises(SystemExit, match="scripts/train_acdc_source.py"):
        bench.resolve_model(anatomy, None)
    with pytest.raises(SystemExit, match="does not exist"):
        bench.resolve_model(anatomy, str(tmp_path / "elsewhere"))


def test_the_default_anatomy_resolves_as_before(bench):
    need(HIPPOCAMPUS)
    from ASSFTActive.io import case_id
    from Testing.Benchmarks.harness.splits import read_reserved, split_cases

    exp = bench.resolve(bench.build_parser().parse_args([]))
    split = split_cases([case_id(p) for p in sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))],
                        read_reserved(HIPPOCAMPUS / "reserved.txt"))

    assert (exp.anatomy, exp.model, Path(exp.data)) == ("hippocampus", "default", HIPPOCAMPUS)
    assert exp.shift == ShiftConfig(ShiftKind.SCANNER, 0.7, 0).to_dict()  # the old --shift-kind/--shift-strength
    assert exp.pool == list(split.target_pool[:36]) and exp.test == list(split.target_test[:20])


def test_acdc_resolves_its_data_patient_split_model_and_shifts(bench, acdc_card):
    need(ACDC)
    from ASSFTActive.io import case_id
    from Testing.Benchmarks.harness.splits import acdc_patient, read_reserved, split_acdc

    args = ["--anatomy", "acdc", "--model", str(acdc_card), "--shift", "mild", "--pool-size", "0", "--test-size", "0"]
    exp = bench.resolve(bench.build_parser().parse_args(args))
    split = split_acdc([case_id(p) for p in sorted((ACDC / "imagesTr").glob("*.nii.gz"))],
                       read_reserved(ACDC / "reserved.txt"))

    assert (exp.anatomy, Path(exp.data), Path(exp.model)) == ("acdc", ACDC, acdc_card / "card.json")
    assert exp.shift == BENCHMARK_SHIFTS["acdc"]["mild"].to_dict()
    assert exp.pool == list(split.target_pool) and exp.test == list(split.target_test)
    assert not {acdc_patient(c) for c in exp.pool} & {acdc_patient(c) for c in exp.test}
    harsh = bench.resolve(bench.build_parser().parse_args(args[:4] + ["--shift-strength", "0.95"]))
    assert harsh.shift == {**BENCHMARK_SHIFTS["acdc"]["harsh"].to_dict(), "strength": 0.95}


def test_the_power_profile_tests_on_every_case_outside_the_pool_and_never_splits_a_patient(bench, acdc_card):
    need(ACDC)
    from ASSFTActive.io import case_id
    from Testing.Benchmarks.harness.splits import acdc_patient, read_reserved, split_acdc

    args = ["--profile", "power", "--anatomy", "acdc", "--model", str(acdc_card), "--pool-size", "23"]
    exp = bench.resolve(bench.build_parser().parse_args(args))
    split = split_acdc([case_id(p) for p in sorted((ACDC / "imagesTr").glob("*.nii.gz"))],
                       read_reserved(ACDC / "reserved.txt"))

    assert exp.pool == list(split.target_pool[:24])  # 23 cases end inside a patient: its other frame joins the pool
    assert sorted(exp.test) == sorted(set(split.target_test) | set(split.target_pool[24:]))
    assert not {acdc_patient(c) for c in exp.pool} & {acdc_patient(c) for c in exp.test}
    assert exp.budgets == [2, 4] and len(exp.random_seeds) >= 5 and len(exp.train_seeds) >= 3


def test_whole_groups_extends_a_cut_to_the_end_of_its_group(bench):
    acdc, hippocampus = bench.ANATOMIES["acdc"], bench.ANATOMIES["hippocampus"]
    cases = ["patient001_frame01", "patient001_frame02", "patient002_frame01", "patient002_frame02"]
    assert bench.whole_groups(cases, 1, acdc) == cases[:2]
    assert bench.whole_groups(cases, 2, acdc) == cases[:2]
    assert bench.whole_groups(cases, 0, acdc) == cases
    assert bench.whole_groups(["a", "b", "c"], 1, hippocampus) == ["a"]


def test_the_workers_load_the_anatomy_model_named_in_the_setup(acdc_card):
    ae_tasks = load("ae_tasks", BENCHMARKS / "ae_tasks.py")
    setup = ae_tasks.Setup(data=str(ACDC), pool=(), test=(), shift={}, train={}, semi_iterations=0, pseudo={},
                           model=str(acdc_card))
    saved = dict(ae_tasks._STATE)
    try:
        ae_tasks._STATE.clear()
        ae_tasks._STATE.update(setup=setup, volumes={})
        assert ae_tasks.default_card().class_names == ("background", "RV", "myocardium", "LV")
    finally:
        ae_tasks._STATE.clear()
        ae_tasks._STATE.update(saved)
