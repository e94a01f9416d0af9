"""QueryConfig: documented defaults, string enums, validation, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ASSFTActive.query import AsdReduce, Combine, KDMetric, QueryConfig, Strategy

#: Needs neither torch nor Slicer: CI also runs this module on Python 3.9 (Slicer 5.8's), tools/check_python39.sh.
pytestmark = pytest.mark.torchfree


def test_defaults_are_the_method_spec_values():
    config = QueryConfig()
    assert config.strategy is Strategy.ASSFT
    assert config.kd_metric is KDMetric.JS
    assert config.kd_temperature == 1.0
    assert config.kd_stages == 2
    assert config.source_knowledge.value == "pretrained_vs_adapted"
    assert config.div_space.value == "pretrained"
    assert config.fg_mask.value == "pred_argmax"
    assert config.fg_prob_threshold == 0.5
    assert config.fg_dilation == 2
    assert config.asd_reduce is AsdReduce.VOXEL_MEAN
    assert config.asd_empty_fg == 1.0
    assert config.combine is Combine.WEIGHTED_SUM
    assert config.dkd_weight == 0.5
    assert config.two_stage_factor == 3
    assert config.normalise_scores is True
    assert config.mc_samples == 10
    assert config.clasp_fg_ratio == 0.66
    assert config.clasp_beta == 1.0
    assert config.clasp_beta_growth == 100.0
    assert config.seed == 0


def test_plain_strings_become_enums_and_compare_equal_to_their_value():
    config = QueryConfig(strategy="coreset", kd_metric="sym_kl", combine="two_stage", asd_reduce="class_balanced")
    assert config.strategy is Strategy.CORESET
    assert config.strategy == "coreset"
    assert config.kd_metric is KDMetric.SYM_KL
    assert config.combine is Combine.TWO_STAGE
    assert config.asd_reduce is AsdReduce.CLASS_BALANCED


def test_round_trip_through_json_gives_an_equal_config():
    config = QueryConfig(
        strategy="clasp_pe",
        kd_metric="cosine",
        kd_temperature=2.0,
        kd_stages=3,
        source_knowledge="bn_stats",
        div_space="current",
        fg_mask="pred_prob",
        fg_prob_threshold=0.3,
        fg_dilation=0,
        asd_reduce="class_balanced",
        asd_empty_fg=0.25,
        combine="rank_mean",
        dkd_weight=0.7,
        two_stage_factor=5,
        normalise_scores=False,
        mc_samples=4,
        clasp_fg_ratio=0.5,
        clasp_beta=2.0,
        clasp_beta_growth=10.0,
        seed=7,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["strategy"] == "clasp_pe"
    assert data["div_space"] == "current"
    restored = QueryConfig.from_dict(data)
    assert restored == config
    assert restored.to_dict() == config.to_dict()


def test_from_dict_fills_missing_keys_with_defaults():
    assert QueryConfig.from_dict({"strategy": "random", "seed": 3}) == QueryConfig(strategy="random", seed=3)


def test_from_dict_rejects_an_unknown_key_and_names_it():
    with pytest.raises(ValueError, match="'kd_metrics'"):
        QueryConfig.from_dict({"kd_metrics": "js"})


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ValueError, match="mapping"):
        QueryConfig.from_dict(["strategy", "assft"])


def test_unknown_enum_value_lists_the_allowed_values():
    with pytest.raises(ValueError, match="'entropy'.*'assft'.*'mc_dropout'"):
        QueryConfig(strategy="entropy")


@pytest.mark.parametrize(
    "name, value",
    [
        ("kd_temperature", 0.0),
        ("kd_temperature", math.nan),
        ("kd_stages", 0),
        ("kd_stages", 2.0),
        ("kd_stages", True),
        ("fg_prob_threshold", 0.0),
        ("fg_prob_threshold", 1.5),
        ("fg_dilation", -1),
        ("asd_empty_fg", 1.5),
        ("dkd_weight", -0.1),
        ("dkd_weight", 1.01),
        ("two_stage_factor", 0),
        ("normalise_scores", 1),
        ("mc_samples", 1),
        ("clasp_fg_ratio", 1.2),
        ("clasp_beta", 0.0),
        ("clasp_beta_growth", -1.0),
        ("seed", -1),
        ("seed", "0"),
    ],
)
def test_invalid_values_are_rejected_with_the_setting_name(name, value):
    with pytest.raises(ValueError, match=f"QueryConfig.{name}"):
        QueryConfig(**{name: value})


def test_whole_numbers_are_accepted_for_float_settings_and_stored_as_float():
    config = QueryConfig(kd_temperature=2, dkd_weight=1)
    assert isinstance(config.kd_temperature, float) and config.kd_temperature == 2.0
    assert isinstance(config.dkd_weight, float) and config.dkd_weight == 1.0


def test_config_is_frozen():
    config = QueryConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dkd_weight = 0.9  # type: ignore[misc]
