"""Fine-tuning settings: frozen, round-trip through JSON, clear errors for unknown keys and bad values."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ASSFTActive.finetune.config import FinetuneConfig, PseudoLabelConfig, PseudoMode, TrainConfig, ValidationConfig


def test_missing_settings_take_their_defaults_at_every_level():
    assert FinetuneConfig.from_dict({}) == FinetuneConfig()
    partial = FinetuneConfig.from_dict({"pseudo": {"mode": "all"}, "train": {"seed": 3}})
    assert partial == dataclasses.replace(
        FinetuneConfig(), pseudo=PseudoLabelConfig(mode=PseudoMode.ALL), train=TrainConfig(seed=3)
    )


def test_a_default_run_is_guarded_and_its_semi_supervised_rounds_are_as_long_as_the_supervised_stage():
    config = FinetuneConfig()
    assert config.validation.guard and config.validation.folds >= 2
    assert config.semi_steps == config.train.iterations
    assert FinetuneConfig(semi_iterations=7).semi_steps == 7


def test_the_default_selection_keeps_the_more_reliable_half_of_the_pool():
    """Reliability = confidence - distance (both min-max normalised); the top half is pseudo-labelled."""
    from ASSFTActive.finetune.pseudo import PseudoCandidate, select_reliable

    pool = [
        PseudoCandidate("near_sure", 0.9, 0.1),
        PseudoCandidate("far_sure", 0.9, 0.9),
        PseudoCandidate("near_unsure", 0.3, 0.1),
        PseudoCandidate("far_unsure", 0.2, 0.9),
        PseudoCandidate("middle", 0.6, 0.4),
    ]
    decisions = select_reliable(pool, PseudoLabelConfig())
    assert [d.case_id for d in decisions if d.kept] == ["near_sure", "near_unsure", "middle"]
    assert min(decisions, key=lambda d: d.rank).case_id == "near_sure"


def test_the_default_voxel_mask_keeps_confident_voxels_and_part_of_every_predicted_class():
    """A small class the teacher is unsure about everywhere keeps some voxels instead of vanishing."""
    import numpy as np

    from ASSFTActive.finetune.pseudo import voxel_confidence_mask

    label = np.zeros((4, 4, 4), dtype=np.int64)
    label[0, 0, :] = 2
    max_prob = np.full((4, 4, 4), 0.99, dtype=np.float32)
    max_prob[0, 0, :] = [0.40, 0.45, 0.50, 0.55]
    max_prob[3, 3, 3] = 0.30  # one unsure background voxel
    rule = PseudoLabelConfig()
    mask = voxel_confidence_mask(label, max_prob, rule.voxel_threshold, rule.class_keep_min)
    assert mask.dtype == bool and not mask[3, 3, 3]
    assert mask[label == 0].sum() == label.size - 4 - 1
    assert 0 < mask[label == 2].sum() < 4 and mask[0, 0, 3], "the most confident voxels of class 2 stay"


def test_config_round_trips_through_json_unchanged():
    config = FinetuneConfig(
        train=TrainConfig(iterations=7, patch_size=(8, 16, 8)),
        semi_iterations=3,
        pseudo=PseudoLabelConfig(mode="all", voxel_threshold=0.5, teacher="ema"),
        validation=ValidationConfig(folds=4, guard=False, min_gain=0.01),
        checkpoint_every=2,
    )
    text = json.dumps(config.to_dict())
    again = FinetuneConfig.from_dict(json.loads(text))
    assert again == config
    assert again.pseudo.mode is PseudoMode.ALL and again.train.patch_size == (8, 16, 8)
    assert again.semi_steps == 3 and FinetuneConfig().semi_steps == FinetuneConfig().train.iterations


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FinetuneConfig().checkpoint_every = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, words",
    [
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
    ],
)
def test_bad_settings_name_the_setting(data, words):
    with pytest.raises(ValueError) as info:
        FinetuneConfig.from_dict(data)
    for word in words:
        assert word in str(info.value)


def test_settings_module_imports_without_torch_or_numpy():
    code = (
        "import sys; import ASSFTActive.finetune.config, ASSFTActive.finetune.fold_pseudo, ASSFTActive.jobs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'monai')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_new_semi_supervised_and_guard_options_are_off_by_default_and_round_trip():
    """Issue 25: BCP, the frozen flip teacher and the fast folds are options, off by default; every fold must gain
    0.02 (chosen on the development split), which can be switched off."""
    from ASSFTActive.finetune.config import Teacher

    config = FinetuneConfig()
    assert not config.pseudo.bcp and config.pseudo.teacher is Teacher.EMA
    assert config.validation.min_fold_gain == 0.02 and config.validation.min_gain_low is None
    assert FinetuneConfig.from_dict({"validation": {"min_fold_gain": None}}).validation.min_fold_gain is None
    assert config.validation.fold_fraction == 1.0 and config.validation.fold_pool_cases is None
    assert config.validation.fold_budget == 2.0, "chosen on the development split (RESULTS.md)"
    assert FinetuneConfig.from_dict({"validation": {"fold_budget": None}}).validation.fold_budget is None
    chosen = FinetuneConfig.from_dict(
        {
            "pseudo": {"bcp": True, "teacher": "source_flip", "flip_axes": [2]},
            "validation": {"min_fold_gain": -0.02, "fold_fraction": 0.25, "fold_budget": 1.5, "fold_pool_cases": 4},
        }
    )
    assert chosen.pseudo.teacher is Teacher.SOURCE_FLIP and chosen.pseudo.flip_axes == (2,)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(chosen.to_dict()))) == chosen


@pytest.mark.parametrize(
    "data, words",
    [
        ({"pseudo": {"flip_axes": [3]}}, ["PseudoLabelConfig.flip_axes", "0, 1, 2"]),
        ({"pseudo": {"flip_axes": [0, 0]}}, ["flip_axes", "distinct"]),
        ({"pseudo": {"bcp_box_share": 0.0}}, ["bcp_box_share"]),
        ({"validation": {"fold_fraction": 0.0}}, ["fold_fraction"]),
        ({"validation": {"fold_budget": 0.0}}, ["fold_budget"]),
        ({"validation": {"min_fold_gain": -1.5}}, ["min_fold_gain"]),
        ({"validation": {"min_fold_gain": 0.0, "max_fold_loss": 0.05}}, ["max_fold_loss", "min_fold_gain"]),
        ({"validation": {"fold_pool_cases": 0}}, ["fold_pool_cases"]),
    ],
)
def test_bad_new_options_name_the_setting(data, words):
    with pytest.raises(ValueError) as error:
        FinetuneConfig.from_dict(data)
    assert all(w in str(error.value) for w in words), str(error.value)


def test_settings_written_with_the_old_fold_loss_key_read_as_the_same_rule():
    """``max_fold_loss: x`` (a fold may lose x) became ``min_fold_gain: -x``; a saved job or settings file keeps
    its meaning, for Adapt Model and for SFR."""
    from ASSFTActive.sfr.config import SfrConfig

    old = FinetuneConfig.from_dict({"validation": {"max_fold_loss": 0.05, "min_gain": 0.01}}).validation
    assert old.min_fold_gain == -0.05 and old.min_gain == 0.01
    assert FinetuneConfig.from_dict({"validation": {"max_fold_loss": None}}).validation.min_fold_gain is None
    assert SfrConfig(validation={"max_fold_loss": 0.1}).validation.min_fold_gain == -0.1
    assert "max_fold_loss" not in FinetuneConfig().to_dict()["validation"]
