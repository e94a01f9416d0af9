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


def test_selection_defaults_are_the_inferred_values_of_method_spec_section_1_7():
    pseudo = PseudoLabelConfig()
    assert pseudo.mode == PseudoMode.SELECTIVE and pseudo.select_mode == SelectMode.TOPK
    assert (pseudo.keep_fraction, pseudo.dist_weight, pseudo.tau_conf, pseudo.tau_dist_quantile) == (0.5, 1.0, 0.9, 0.5)
    assert pseudo.confidence == ConfidenceMetric.FG_MAX_PROB and pseudo.ema_decay == 0.99 and pseudo.rounds == 1
    train = TrainConfig()
    assert (train.pseudo_weight, train.rampup_fraction) == (1.0, 0.4)


def test_training_defaults_are_the_recipe_that_won_the_adapt_benchmark():
    """RESULTS.md, "Adapt Model": lr 1e-4, no encoder protection, a Mean Teacher with the student on a strong view."""
    train, pseudo = TrainConfig(), PseudoLabelConfig()
    assert (train.iterations, train.learning_rate, train.encoder_lr_scale, train.l2sp_weight) == (100, 1e-4, 1.0, 0.0)
    assert pseudo.teacher == Teacher.EMA and pseudo.strong_view
    assert (pseudo.voxel_threshold, pseudo.class_keep_min, pseudo.cutmix_probability) == (0.7, 0.5, 0.5)
    assert ValidationConfig().guard and ValidationConfig().folds == 3


def test_config_round_trips_through_json_unchanged():
    config = FinetuneConfig(train=TrainConfig(iterations=7, patch_size=(8, 16, 8)), semi_iterations=3,
                            pseudo=PseudoLabelConfig(mode="all", voxel_threshold=0.5, teacher="ema"),
                            validation=ValidationConfig(folds=4, guard=False, min_gain=0.01), checkpoint_every=2)
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
    ({"validation": {"folds": 1}}, ["ValidationConfig.folds"]),
    ({"validation": {"collapse_ratio": 2}}, ["ValidationConfig.collapse_ratio"]),
    ({"train": {"encoder_lr_scale": 1.5}}, ["TrainConfig.encoder_lr_scale"]),
    ({"train": {"l2sp_weight": -1}}, ["TrainConfig.l2sp_weight"]),
    ({"pseudo": {"cutmix_probability": 2}}, ["PseudoLabelConfig.cutmix_probability"]),
    ({"pseudo": {"strong_view": "yes"}}, ["PseudoLabelConfig.strong_view"]),
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
