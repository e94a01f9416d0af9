"""Slice and region proposals: per-unit foreground entropy, the spread-out selection, and the image's own grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_tiny_card

from ASSFTActive.cards import load_card
from ASSFTActive.inference import Prediction
from ASSFTActive.inference.preprocess import label_to_model_space, to_model_space
from ASSFTActive.inference.reduction import VoxelMaps
from ASSFTActive.io import Volume
from ASSFTActive.query.units import (
    ProposedUnit,
    Unit,
    UnitConfig,
    region_scores,
    select_units,
    slice_axis,
    slice_scores,
    volume_priors,
    volume_units,
)


def test_slice_score_is_the_mean_entropy_over_the_slice_foreground():
    entropy = np.full((4, 5, 6), 0.1, np.float32)
    region = np.zeros((4, 5, 6), bool)
    region[1:3, 1:4, :] = True  # 6 foreground voxels per k-slice
    entropy[1, 1, 4] = entropy[2, 3, 4] = 0.7  # two unsure voxels in slice k = 4
    entropy[0, 0, 2] = 1.0  # unsure but outside the foreground: ASD ignores it
    scores, counts = slice_scores(entropy, region, axis=2)
    assert counts.tolist() == [6.0] * 6
    np.testing.assert_allclose(scores, [0.1, 0.1, 0.1, 0.1, (4 * 0.1 + 2 * 0.7) / 6, 0.1], rtol=1e-6)
    assert int(np.argmax(scores)) == 4


def test_uint8_entropy_levels_score_like_the_float_map():
    rng = np.random.default_rng(0)
    entropy = rng.random((6, 6, 6)).astype(np.float32)
    region = rng.random((6, 6, 6)) > 0.3
    levels = np.round(entropy * 255).astype(np.uint8)
    np.testing.assert_allclose(slice_scores(levels, region, 1)[0], slice_scores(entropy, region, 1)[0], atol=2.5e-3)


def test_a_slice_with_a_stray_foreground_voxel_scores_zero():
    entropy = np.full((10, 10, 3), 0.2, np.float32)
    region = np.zeros((10, 10, 3), bool)
    region[:, :, 0] = True  # 100 voxels
    region[0, 0, 1] = True  # 1 voxel, < 5 % of 100
    entropy[0, 0, 1] = 1.0
    scores, _ = slice_scores(entropy, region, axis=2)
    assert scores.tolist() == pytest.approx([0.2, 0.0, 0.0])


def test_region_scores_tile_the_volume_and_find_the_unsure_box():
    entropy = np.zeros((8, 8, 5), np.float32)
    region = np.ones((8, 8, 5), bool)
    entropy[4:8, 0:4, :] = 0.9
    boxes = region_scores(entropy, region, (4, 4, 4))
    assert len(boxes) == 2 * 2 * 2  # k: starts 0 and 1 (the last box ends at the edge)
    assert {start for start, _, _ in boxes} >= {(0, 0, 0), (4, 4, 1)}
    best = max(boxes, key=lambda b: b[2])
    assert best[0][:2] == (4, 0) and best[1] == (4, 4, 4) and best[2] == pytest.approx(0.9)


@pytest.mark.parametrize(
    "spacing, axis", [((0.8, 1.2, 2.5), 2), ((3.0, 1.0, 1.0), 0), ((1.0, 1.0, 1.0), 2), ((1.0, 2.0, 2.0), 2)]
)
def test_slice_axis_is_the_coarsest_spacing_axis(spacing, axis):
    assert slice_axis(spacing) == axis
    assert slice_axis(spacing, axis=1) == 1


# -------------------------------------------------------------------------------------------- the selection


def _slices(case: str, scores) -> list:
    return [ProposedUnit(case, Unit.SLICE, float(s), float(s), axis=2, index=i) for i, s in enumerate(scores)]


def test_selection_spreads_slices_over_volumes_with_a_cap_and_a_gap():
    config = UnitConfig(unit="slice", min_gap=3, per_volume_extra=1, prior_weight=0.0)
    hot = _slices("hot", [0.9] * 20)  # every slice of one volume beats the others
    mild = _slices("mild", [0.5] * 20)
    cool = _slices("cool", [0.2] * 20)
    chosen = select_units(hot + mild + cool, budget=6, priors=volume_priors(["hot", "mild", "cool"]), config=config)
    per_volume = {c: sum(u.case_id == c for u in chosen) for c in ("hot", "mild", "cool")}
    assert per_volume == {"hot": math.ceil(6 / 3) + 1, "mild": 3, "cool": 0}
    for case in ("hot", "mild"):
        indices = sorted(u.index for u in chosen if u.case_id == case)
        assert all(b - a >= 3 for a, b in zip(indices, indices[1:]))
    assert [u.case_id for u in chosen[:3]] == ["hot"] * 3  # best first


def test_without_the_cap_proposals_pile_into_the_most_unsure_volume():
    hot = _slices("hot", [0.9] * 40)
    mild = _slices("mild", [0.5] * 40)
    loose = UnitConfig(unit="slice", min_gap=1, per_volume_extra=100, prior_weight=0.0)
    chosen = select_units(hot + mild, 6, volume_priors(["hot", "mild"]), loose)
    assert {u.case_id for u in chosen} == {"hot"}


def test_the_volume_prior_orders_units_of_equal_uncertainty():
    a, b = _slices("a", [0.4] * 3), _slices("b", [0.4] * 3)
    config = UnitConfig(unit="slice", min_gap=1, per_volume_extra=0)
    chosen = select_units(a + b, 1, volume_priors(["b", "a"]), config)
    assert chosen[0].case_id == "b" and chosen[0].score == pytest.approx(0.4 * 2.0)


def test_cap_is_lifted_when_the_budget_would_go_unspent_but_the_gap_is_kept():
    only = _slices("only", [0.5] * 10)
    chosen = select_units(only, 5, {"only": 1.0}, UnitConfig(unit="slice", min_gap=3, per_volume_extra=0))
    assert sorted(u.index for u in chosen) == [0, 3, 6, 9]  # 4 fit with a gap of 3; the budget of 5 cannot


def test_volumes_without_a_prior_are_never_proposed():
    chosen = select_units(
        _slices("labelled", [1.0] * 5) + _slices("pool", [0.1] * 5),
        2,
        {"pool": 1.0},
        UnitConfig(unit="slice", min_gap=1),
    )
    assert {u.case_id for u in chosen} == {"pool"}


# ------------------------------------------------------------------------------ the image's own grid


def test_proposed_slices_index_the_input_grid_of_a_rotated_permuted_resampled_volume(tmp_path):
    """The model sees the volume reoriented to RAS and resampled to 1 mm; the unsure sheet is planted at input
    slice 7 of the input's axis 0 (3 mm, pointing superior); the proposal must name axis 0, index 7."""
    card = load_card(make_tiny_card(tmp_path / "model", spacing=[1.0, 1.0, 1.0]))
    a = np.deg2rad(20.0)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # i -> S, j -> L (flipped R), k -> A
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes.T @ np.diag([3.0, 1.0, 1.5])
    shape = (12, 14, 10)
    volume = Volume(np.random.default_rng(0).normal(100, 10, shape).astype(np.float32), affine)
    _, space = to_model_space(volume, card)
    assert tuple(space.model_shape) != shape  # really another grid
    sheet = np.zeros(shape, np.uint8)
    sheet[7] = 1
    model_sheet = label_to_model_space(sheet, space).astype(np.float32)
    entropy = 0.1 + 0.8 * model_sheet
    maps = VoxelMaps(
        label=np.zeros(space.model_shape, np.uint8),
        max_prob=1 - entropy,
        foreground_prob=entropy,
        entropy=entropy.astype(np.float32),
        region=np.ones(space.model_shape, bool),
        sums=None,
    )
    prediction = Prediction(maps=maps, space=space, features=(), pretrained_features=())
    assert prediction.entropy_levels.shape == shape
    units = volume_units("case", prediction.entropy_levels, prediction.region, volume.spacing, UnitConfig(unit="slice"))
    assert len(units) == shape[0] and {u.axis for u in units} == {0}  # the 3 mm axis of the file
    best = max(units, key=lambda u: u.asd)
    assert best.index == 7 and best.asd == pytest.approx(0.9, abs=0.01)
