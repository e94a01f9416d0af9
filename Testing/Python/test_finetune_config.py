"""Fine-tuning settings: frozen, round-trip through JSON, clear errors for unknown keys and bad values."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ASSFTActive.finetune.config import (
    ConfidenceMetric,
    FinetuneConfig,
    PseudoLabelConfig,
    PseudoMode,
    SelectMode,
    Teacher,
    TrainConfig,
    ValidationConfig,
)


def test_defaults_are_the_inferred_values_of_method_spec_section_1_7():
    pseudo = PseudoLabelConfig()
    assert pseudo.mode == PseudoMode.SELECTIVE and pseudo.select_mode == SelectMode.TOPK
    assert (pseudo.keep_fraction, pseudo.dist_weight, pseudo.tau_conf, pseudo.tau_dist_quantile) == (0.5, 1.0, 0.9, 0.5)
    assert pseudo.confidence == ConfidenceMetric.FG_MAX_PROB and pseudo.voxel_threshold is None
    assert pseudo.teacher == Teacher.OFFLINE and pseudo.ema_decay == 0.99 and pseudo.rounds == 1
    train = TrainConfig()
    assert (train.pseudo_weight, train.rampup_fraction) == (1.0, 0.4)


def test_config_round_trips_through_json_unchanged():
    config = FinetuneConfig(train=TrainConfig(iterations=7, patch_size=(8, 16, 8)), semi_iterations=3,
                            pseudo=PseudoLabelConfig(mode="all", voxel_threshold=0.5, teacher="ema"),
                            validation=ValidationConfig(min_labeled=3, reject_if_worse=True), checkpoint_every=2)
    text = json.dumps(config.to_dict())
    again = FinetuneConfig.from_dict(json.loads(text))
    assert again == config
    assert again.pseudo.mode is PseudoMode.ALL and again.train.patch_size == (8, 16, 8)
    assert again.semi_steps == 3 and FinetuneConfig().semi_steps == FinetuneConfig().train.iterations


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FinetuneConfig().checkpoint_every = 3  # type: ignore[misc]


@pytest.mark.parametrize("data, words", [
    ({"trian": {}}, ["unknown FinetuneConfig setting", "'trian'"]),
    ({"pseudo": {"mode": "some"}}, ["PseudoLabelConfig.mode", "'selective'"]),
    ({"pseudo": {"keep_fraction": 0.0}}, ["keep_fraction"]),
    ({"pseudo": {"voxel_threshold": 1.5}}, ["voxel_threshold"]),
    ({"train": {"iterations": 0}}, ["iterations"]),
    ({"train": {"lr": 0.1}}, ["unknown TrainConfig setting", "'lr'"]),
    ({"validation": {"fraction": 0.9}}, ["ValidationConfig.fraction"]),
    ({"checkpoint_every": "5"}, ["checkpoint_every"]),
])
def test_bad_settings_name_the_setting(data, words):
    with pytest.raises(ValueError) as info:
        FinetuneConfig.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_settings_module_imports_without_torch_or_numpy():
    code = ("import sys; import ASSFTActive.finetune.config, ASSFTActive.jobs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
