"""Every settings block of a job (query, finetune, sfr) is refused with the setting named, both when the spec is
written (the Slicer module, the browser) and when the worker reads a hand-edited ``job.json``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import JOB_FILE, JobSpec, read_job, write_job

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree

REPO = Path(__file__).resolve().parents[2]

#: (block, bad settings, words the message must contain: the block and the setting)
BAD_SETTINGS = [
    ("query", {"strategy": "nonsense"}, ["query", "strategy"]),
    ("query", {"budgett": 3}, ["query", "budgett"]),
    ("query", {"kd_temperature": float("nan")}, ["query", "kd_temperature", "finite"]),
    ("finetune", {"train": {"iterations": 0}}, ["finetune", "iterations"]),
    ("finetune", {"train": {"patch_size": [100000, 100000, 100000]}}, ["finetune", "patch_size"]),
    ("finetune", {"semi_iterations": True}, ["finetune", "semi_iterations"]),
    ("sfr", {"method": "bogus"}, ["sfr", "method", "bogus"]),
    ("sfr", {"sam": {"iterations": True}}, ["sfr", "SfrFinetuneConfig.iterations", "whole number"]),
    ("sfr", {"sam": {"iterations": 2.5}}, ["sfr", "SfrFinetuneConfig.iterations"]),
    ("sfr", {"sam": {"learning_rate": float("nan")}}, ["sfr", "SfrFinetuneConfig.learning_rate", "finite"]),
    ("sfr", {"sam": {"batch_size": 100000}}, ["sfr", "SfrFinetuneConfig.batch_size", "at most"]),
    ("sfr", {"sam": {"lora_rank": 10**7}}, ["sfr", "SfrFinetuneConfig.lora_rank"]),
    ("sfr", {"sam": {"iteration": 5}}, ["sfr", "SfrFinetuneConfig", "iteration"]),
    ("sfr", {"retrain": {"patch_size": [100000, 100000, 100000]}}, ["sfr", "TrainConfig.patch_size"]),
    ("sfr", {"plus": {"kappa": 0}}, ["sfr", "SfrPlusConfig.kappa"]),
    ("sfr", {"mean_teacher": {"ema_decay": 2}}, ["sfr", "MeanTeacherConfig.ema_decay"]),
    ("sfr", {"validation": {"folds": "three"}}, ["sfr", "ValidationConfig.folds"]),
    ("sfr", {"checkpoint_every": 0}, ["sfr", "SfrConfig.checkpoint_every"]),
]


def _spec(block: str, settings: dict) -> dict:
    data = {
        "kind": "sfr" if block == "sfr" else "adapt",
        "images": {"a": "/x/a.nii.gz"},
        "labels": {"a": "/x/a.nrrd"},
        "store": "/x/store",
    }
    data[block] = settings
    return data


@pytest.mark.parametrize(
    "block,settings,words", BAD_SETTINGS, ids=[f"{b}-{i}" for i, (b, _, _) in enumerate(BAD_SETTINGS)]
)
def test_a_bad_setting_is_refused_when_the_spec_is_built_and_written_with_the_setting_named(block, settings, words):
    with pytest.raises(ValueError) as caught:
        JobSpec.from_dict(_spec(block, settings))
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    "block,settings,words", BAD_SETTINGS, ids=[f"{b}-{i}" for i, (b, _, _) in enumerate(BAD_SETTINGS)]
)
def test_a_bad_setting_in_a_hand_edited_job_file_is_refused_when_read_with_the_file_and_setting_named(
    tmp_path, block, settings, words
):
    (tmp_path / JOB_FILE).write_text(json.dumps(_spec(block, settings)), encoding="utf-8")
    with pytest.raises(JobError) as caught:
        read_job(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / JOB_FILE) in message
    for word in words:
        assert word in message


def test_write_job_refuses_settings_changed_in_place_after_the_spec_was_built(tmp_path):
    spec = JobSpec.from_dict(_spec("query", {"strategy": "assft"}))
    spec.query["strategy"] = "nonsense"  # the dict is the caller's to spoil
    with pytest.raises(ValueError, match="query.*strategy"):
        write_job(tmp_path, spec)
    assert not (tmp_path / JOB_FILE).exists()


def test_good_settings_of_every_block_are_accepted_and_round_trip(tmp_path):
    data = _spec(
        "sfr",
        {
            "method": "sfr_plus",
            "sam": {"iterations": 3, "batch_size": 2, "learning_rate": 1e-3, "betas": [0.9, 0.99]},
            "retrain": {"iterations": 4, "patch_size": [32, 32, 32]},
            "plus": {"kappa": 0.5},
            "mean_teacher": {"ema_decay": 0.99},
            "checkpoint_every": 5,
        },
    )
    data["query"] = {"strategy": "assft"}
    data["finetune"] = {"train": {"iterations": 2}}
    write_job(tmp_path, JobSpec.from_dict(data))
    spec = read_job(tmp_path)
    assert spec.sfr_method == "sfr_plus" and spec.sfr["sam"]["iterations"] == 3
    assert spec.query_config().strategy.value == "assft"


def test_the_sfr_block_is_checked_by_sfr_config_itself_so_the_command_line_refuses_the_same():
    """One rule in one place: ``assft sfr --config`` (SfrConfig) refuses what the job protocol refuses."""
    from ASSFTActive.errors import InputError
    from ASSFTActive.sfr.config import SfrConfig

    for block, settings, _ in BAD_SETTINGS:
        if block == "sfr":
            with pytest.raises((InputError, ValueError)):
                SfrConfig.from_dict(settings)
    SfrConfig.from_dict(SfrConfig().to_dict())


def test_checking_every_block_loads_neither_torch_nor_numpy():
    code = (
        "import json, sys\n"
        "from ASSFTActive.jobs import JobSpec\n"
        "JobSpec(kind='sfr', images={'a': '/x/a.nii.gz'}, labels={'a': '/x/a.nrrd'}, store='/s', "
        "query={'strategy': 'assft'}, finetune={'train': {'iterations': 2}}, sfr={'sam': {'iterations': 2}})\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'monai'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_module_of_the_protocol_package_reaches_400_lines():
    package = REPO / "ASSFTActive" / "jobs"
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in package.glob("*.py")}
    assert len(sizes) >= 5 and max(sizes.values()) < 400, sizes


@pytest.mark.parametrize("value", [math.inf, -1.0, True])
def test_a_bad_plus_voxel_threshold_is_named(value):
    with pytest.raises(ValueError, match="SfrConfig.plus_voxel_threshold"):
        JobSpec.from_dict(_spec("sfr", {"plus_voxel_threshold": value}))
