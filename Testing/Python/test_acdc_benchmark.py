"""The benchmark harness on its second anatomy: ACDC tasks pick ACDC's data folder, split by patient, source model
and shifts; ACDC-Path keeps the two diagnoses its source model never saw.

Nothing here trains or needs the trained ACDC source model: the model is a card written from
``scripts/train_acdc_source.py``'s ``CARD`` (resolving a card reads the card, not the weights). Parts that
read the shared data skip saying so when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from Testing.Benchmarks.harness import tasks, work
from Testing.Benchmarks.harness.shifts import BENCHMARK_SHIFTS, ShiftConfig, ShiftKind, benchmark_shift
from Testing.Benchmarks.harness.splits import acdc_patient

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


def test_the_harness_looks_for_the_acdc_models_where_the_training_script_writes_them(train_script):
    assert Path(tasks.ACDC_SOURCE_MODEL) == train_script.DEFAULT_OUT
    assert tasks.ANATOMIES["acdc"].model == tasks.ACDC_SOURCE_MODEL
    assert "--split acdc_path" in tasks.ANATOMIES["acdc_path"].make_model
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


def test_a_missing_acdc_model_says_which_script_makes_it(tmp_path):
    need(ACDC)
    task = replace(tasks.make_task("acdc_mild", "development", 0), model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="scripts/train_acdc_source.py"):
        work.card_of(task)


def test_acdc_tasks_use_the_patient_split_the_mild_shift_and_patient_clusters(acdc_card):
    need(ACDC)
    task = tasks.make_task("acdc_mild", "development", 0, model=str(acdc_card))
    assert task.setting.site_of(task.pool[0]).shift == BENCHMARK_SHIFTS["acdc"]["mild"]
    assert not {acdc_patient(c) for c in task.pool} & {acdc_patient(c) for c in task.eval}
    assert len(task.pool) == tasks.SETTINGS["acdc_mild"].pool_size
    assert task.clusters() == [acdc_patient(c) for c in task.eval]
    assert all(c.replace("frame01", "frame02") in task.eval for c in task.eval if c.endswith("frame01"))
    assert work.card_of(task).class_names == ("background", "RV", "myocardium", "LV")


def test_acdc_path_tasks_report_the_two_unseen_diagnoses_as_groups():
    need(ACDC)
    task = tasks.make_task("acdc_path", "development", 0)
    assert {task.setting.group_of(c) for c in task.eval} == {"hypertrophic", "abnormal_rv"}
    assert task.setting.site_of(task.pool[0]).shift is None and task.model == tasks.ACDC_PATH_SOURCE_MODEL
    shifted = tasks.make_task("acdc_path_scanner", "development", 0)
    assert shifted.pool == task.pool and shifted.eval == task.eval  # the same patients, a scanner shift on top
    assert shifted.setting.site_of(shifted.pool[0]).shift == BENCHMARK_SHIFTS["acdc"]["mild"]


def test_the_acdc_path_source_model_trains_on_three_diagnoses_and_is_scored_on_the_other_two(train_script):
    need(ACDC)
    from Testing.Benchmarks.harness.splits import acdc_diagnosis

    parts = train_script.load_split(ACDC, "acdc_path")
    source = parts["train"] + parts["source_test"]
    target = parts["target_pool"] + parts["target_test"]
    assert {acdc_diagnosis(c) for c in source} == {"dilated", "infarct", "normal"}
    assert {acdc_diagnosis(c) for c in target} == {"hypertrophic", "abnormal_rv"}
    assert not {acdc_patient(c) for c in parts["train"]} & {acdc_patient(c) for c in parts["source_test"]}
    assert train_script.load_split(ACDC)["train"] == train_script.load_split(ACDC, "acdc")["train"]
