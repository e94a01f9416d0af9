"""Selective pseudo-labelling (method-spec §1.7): confidence, semantic distance, reliability and selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ASSFTActive.finetune.config import PseudoLabelConfig
from ASSFTActive.finetune.pseudo import (
    PseudoCandidate,
    PseudoDecision,
    foreground_confidence,
    minmax,
    reliability,
    select_reliable,
    semantic_distance,
    voxel_confidence_mask,
)
from ASSFTActive.inference.reduction import reduce_probs
from ASSFTActive.query import RegionSpec


def _probs(foreground_prob: float, background_prob: float = 0.9) -> np.ndarray:
    """[3, 2, 2, 2]: the first half of the voxels foreground (class 1), the rest background."""
    probs = np.zeros((3, 2, 2, 2), dtype=np.float32)
    probs[1, 0] = foreground_prob
    probs[0, 0] = probs[2, 0] = (1 - foreground_prob) / 2
    probs[0, 1] = background_prob
    probs[1, 1] = probs[2, 1] = (1 - background_prob) / 2
    return probs


def _confidence(probs: np.ndarray, *args, **kwargs) -> float:
    """foreground_confidence of the maps the streaming predictor keeps of ``probs``."""
    maps = reduce_probs(probs, RegionSpec())
    return foreground_confidence(maps.label, maps.max_prob, maps.entropy, *args, **kwargs)


def _mask(probs: np.ndarray, *args, **kwargs):
    maps = reduce_probs(probs, RegionSpec())
    return voxel_confidence_mask(maps.label, maps.max_prob, *args, **kwargs)


def test_confidence_is_the_mean_max_probability_inside_the_predicted_foreground_only():
    assert _confidence(_probs(0.8)) == pytest.approx(0.8)
    assert _confidence(_probs(0.8, background_prob=0.4)) == pytest.approx(0.8)


def test_confidence_of_an_empty_foreground_is_the_configured_value():
    probs = np.zeros((2, 3, 3, 3), dtype=np.float32)
    probs[0] = 1.0
    assert _confidence(probs) == 0.0
    assert _confidence(probs, empty_value=0.3) == 0.3


def test_entropy_confidence_is_one_minus_normalised_entropy():
    certain = _probs(1.0)
    assert _confidence(certain, "one_minus_fg_entropy") == pytest.approx(1.0, abs=1e-6)
    p = np.array([0.2, 0.6, 0.2])
    expected = 1 + float((p * np.log(p)).sum()) / math.log(3)
    assert _confidence(_probs(0.6), "one_minus_fg_entropy") == pytest.approx(expected, abs=1e-5)


def test_semantic_distance_is_the_smallest_cosine_distance_to_a_labelled_volume():
    assert semantic_distance(np.array([1.0, 0.0]), [np.array([0.0, 2.0])]) == pytest.approx(1.0)
    assert semantic_distance(np.array([1.0, 0.0]), [np.array([0.0, 2.0]), np.array([3.0, 0.0])]) == pytest.approx(0.0)
    assert semantic_distance(np.array([1.0, 1.0]), [np.array([-1.0, -1.0])]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        semantic_distance(np.ones(2), [])


def test_reliability_is_normalised_confidence_minus_weighted_normalised_distance():
    rel = reliability([0.5, 0.7, 0.9], [0.1, 0.3, 0.2], dist_weight=2.0)
    assert np.allclose(rel, [0.0 - 0.0, 0.5 - 2.0, 1.0 - 1.0])
    assert np.allclose(minmax([3.0, 3.0]), [0.0, 0.0])


CANDIDATES = [
    PseudoCandidate("a", 0.95, 0.10),
    PseudoCandidate("b", 0.80, 0.05),
    PseudoCandidate("c", 0.99, 0.40),
    PseudoCandidate("d", 0.60, 0.50),
    PseudoCandidate("e", 0.92, 0.20),
]


def test_topk_keeps_the_most_reliable_ceil_rho_n_volumes():
    decisions = select_reliable(CANDIDATES, PseudoLabelConfig(keep_fraction=0.5))
    rel = reliability([c.confidence for c in CANDIDATES], [c.distance for c in CANDIDATES])
    expected = set(np.array(["a", "b", "c", "d", "e"])[np.argsort(-rel)[:3]])
    assert {d.case_id for d in decisions if d.kept} == expected
    assert sorted(d.rank for d in decisions) == [1, 2, 3, 4, 5]
    assert all(d.rank <= 3 for d in decisions if d.kept)


def test_threshold_mode_keeps_confident_volumes_close_to_the_labelled_set():
    decisions = select_reliable(CANDIDATES, PseudoLabelConfig(select_mode="threshold", tau_conf=0.9))
    # median distance is 0.20: a (0.95, 0.10) and e (0.92, 0.20) pass; c is confident but far, b close but unsure
    assert [d.case_id for d in decisions if d.kept] == ["a", "e"]


def test_modes_all_and_none_keep_everything_or_nothing():
    assert all(d.kept for d in select_reliable(CANDIDATES, PseudoLabelConfig(mode="all")))
    assert not any(d.kept for d in select_reliable(CANDIDATES, PseudoLabelConfig(mode="none")))
    assert select_reliable([], PseudoLabelConfig()) == ()


def test_decisions_round_trip_through_json():
    decision = select_reliable(CANDIDATES, PseudoLabelConfig())[0]
    assert PseudoDecision.from_dict(decision.to_dict()).case_id == decision.case_id
    assert PseudoDecision.from_dict(decision.to_dict()).kept == decision.kept


def test_voxel_mask_keeps_voxels_whose_max_probability_reaches_the_threshold():
    probs = _probs(0.8, background_prob=0.4)
    mask = _mask(probs, 0.5)
    assert mask[0].all() and not mask[1].any()
    assert _mask(probs, None) is None
