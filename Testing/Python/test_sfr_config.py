"""SFR's settings live in a torch-free module beside ``finetune/config.py``: the job protocol, the Slicer module and
the browser check an ``sfr`` block without importing torch, and the settings SFR's run reads are derived there."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from ASSFTActive.sfr.config import SfrConfig, SfrMethod

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree


def test_sfr_settings_import_without_torch_or_numpy():
    code = (
        "import sys; from ASSFTActive.sfr.config import SfrConfig; SfrConfig.from_dict({'method': 'sfr_plus'}); "
        "print(sorted(m for m in ('torch', 'numpy', 'monai') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


def test_the_run_settings_of_sfr_are_its_re_training_and_guard():
    config = SfrConfig.from_dict(
        {"method": "sfr_plus", "retrain": {"iterations": 7}, "validation": {"guard": False}, "checkpoint_every": 3}
    )
    run = config.finetune_config()
    assert config.method == SfrMethod.SFR_PLUS
    assert run.train == config.retrain and run.train.iterations == 7 and run.train.learning_rate == 0.01
    assert run.validation.guard is False and run.checkpoint_every == 3


def test_a_bad_sfr_setting_is_refused_with_its_name():
    with pytest.raises(ValueError, match="plus_voxel_threshold"):
        SfrConfig(plus_voxel_threshold=2.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        SfrConfig(checkpoint_every=0)


def test_sfr_retrains_its_final_run_unless_told_otherwise():
    from ASSFTActive.finetune.config import FinalModel

    assert SfrConfig().validation.final is FinalModel.RETRAIN
    assert SfrConfig().validation.fold_budget is None, "SFR's folds run whole"
    partial = SfrConfig.from_dict({"validation": {"folds": 2}}).validation
    assert partial.final is FinalModel.RETRAIN and partial.folds == 2, "a partial mapping keeps SFR's final run"
    chosen = SfrConfig.from_dict({"validation": {"final": "fold_average"}}).validation
    assert chosen.final is FinalModel.FOLD_AVERAGE, "the user's choice wins"
    assert SfrConfig.from_dict(SfrConfig().to_dict()) == SfrConfig(), "the round trip keeps it"
