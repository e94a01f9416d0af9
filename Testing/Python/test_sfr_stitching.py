"""Stitching of a volume's slices into one canvas (SFR stage 1) and its inverse, over many seeded random shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ASSFTActive.errors import InputError
from ASSFTActive.sfr.stitching import (
    IGNORE_INDEX,
    StitchingError,
    StitchLayout,
    plan_layout,
    stitch,
    stitch_labels,
    unstitch,
    unstitch_labels,
)


def _random_native_case(rng: np.random.Generator):
    """A (depth, (H, W), canvas) that fits natively: SFR's grid floor(canvas/H) x floor(canvas/W) holds D."""
    while True:
        canvas = int(rng.choice([16, 31, 64, 100, 128, 256]))
        h, w = int(rng.integers(1, canvas + 1)), int(rng.integers(1, canvas + 1))
        cells = (canvas // h) * (canvas // w)
        if cells >= 1:
            return int(rng.integers(1, min(cells, 200) + 1)), (h, w), canvas


def test_la_crop_gives_the_papers_9_by_9_grid_with_the_blank_cell_after_the_stack():
    layout = plan_layout(80, (112, 112), canvas=1024)
    assert (layout.n_row, layout.n_col, layout.pad_before, layout.pad_after) == (9, 9, 0, 1)
    assert not layout.resized and layout.cell_shape == (113, 113)


def test_blank_cells_are_padded_symmetrically_in_depth_with_the_odd_one_after():
    layout = plan_layout(3, (10, 10), canvas=30)  # 3 x 3 grid, 6 blank cells
    assert (layout.pad_before, layout.pad_after) == (3, 3)
    layout = plan_layout(4, (10, 10), canvas=30)  # 5 blank cells: 2 before, 3 after
    assert (layout.pad_before, layout.pad_after) == (2, 3)
    volume = np.arange(1, 5, dtype=np.float32)[:, None, None] * np.ones((4, 10, 10), np.float32)
    canvas = stitch(volume, layout)
    cells = canvas.reshape(3, 10, 3, 10).transpose(0, 2, 1, 3).reshape(9, 10, 10)
    assert [float(c.mean()) for c in cells] == [0, 0, 1, 2, 3, 4, 0, 0, 0]
    assert [layout.cell_of_slice(k) for k in range(4)] == [(0, 2), (1, 0), (1, 1), (1, 2)]


def test_round_trip_is_exact_for_images_and_labels_over_many_random_shapes():
    rng = np.random.default_rng(1337)
    for _ in range(300):
        depth, (h, w), canvas_side = _random_native_case(rng)
        layout = plan_layout(depth, (h, w), canvas=canvas_side)
        assert not layout.resized and layout.n_cells >= depth
        lead = tuple(int(n) for n in rng.integers(1, 3, size=int(rng.integers(0, 3))))
        volume = rng.standard_normal(lead + (depth, h, w)).astype(np.float32)
        canvas = stitch(volume, layout, fill=-7.0)
        assert canvas.shape == lead + (canvas_side, canvas_side)
        np.testing.assert_array_equal(unstitch(canvas, layout), volume)
        # every voxel lands on the canvas exactly once; the rest is padding
        assert np.isclose(canvas[canvas != -7.0].size, volume[volume != -7.0].size)
        labels = rng.integers(0, 5, size=(depth, h, w)).astype(np.uint8)
        label_canvas = stitch_labels(labels, layout)
        np.testing.assert_array_equal(unstitch_labels(label_canvas, layout), labels)
        assert (label_canvas == IGNORE_INDEX).sum() == canvas_side * canvas_side - depth * h * w


def test_round_trip_is_exact_for_torch_tensors_and_keeps_gradients():
    layout = plan_layout(7, (9, 5), canvas=32)
    volume = torch.randn(2, 3, 7, 9, 5, requires_grad=True)
    canvas = stitch(volume, layout)
    assert isinstance(canvas, torch.Tensor) and canvas.shape == (2, 3, 32, 32)
    back = unstitch(canvas, layout)
    assert torch.equal(back, volume)
    back.sum().backward()
    assert torch.equal(volume.grad, torch.ones_like(volume))


def test_slice_boxes_locate_each_slice_on_the_canvas():
    rng = np.random.default_rng(7)
    for _ in range(50):
        depth, (h, w), side = _random_native_case(rng)
        layout = plan_layout(depth, (h, w), canvas=side)
        volume = rng.standard_normal((depth, h, w)).astype(np.float32)
        canvas = stitch(volume, layout)
        for k in range(depth):
            top, left, bottom, right = layout.slice_box(k)
            np.testing.assert_array_equal(canvas[top:bottom, left:right], volume[k])


def test_label_padding_is_the_ignore_index_and_images_are_padded_with_fill():
    layout = plan_layout(5, (6, 4), canvas=20)
    labels = np.ones((5, 6, 4), dtype=np.int64)
    canvas = stitch_labels(labels, layout)
    assert set(np.unique(canvas)) == {1, IGNORE_INDEX}
    assert stitch_labels(labels, layout, ignore_index=-100).min() == -100
    image = stitch(np.ones((5, 6, 4), np.float32), layout)
    assert set(np.unique(image)) == {0.0, 1.0}


def test_too_deep_volume_raises_a_value_error_saying_how_many_slices_fit():
    with pytest.raises(ValueError, match=r"81 slices") as info:
        plan_layout(100, (112, 112), canvas=1024, resize=False)
    assert isinstance(info.value, InputError) and isinstance(info.value, StitchingError)
    with pytest.raises(ValueError, match="even when shrunk"):
        plan_layout(500, (40, 40), canvas=32, min_cell=4)


def test_small_canvas_resizes_the_cells_and_round_trips_approximately():
    rng = np.random.default_rng(3)
    for _ in range(30):
        depth, h, w = int(rng.integers(10, 60)), int(rng.integers(20, 80)), int(rng.integers(20, 80))
        layout = plan_layout(depth, (h, w), canvas=128)
        if not layout.resized:
            continue
        ph, pw = layout.placed_shape
        assert ph <= layout.cell_shape[0] and pw <= layout.cell_shape[1] and layout.n_cells >= depth
        assert abs(ph / pw - h / w) < 0.2 * h / w + 1.0 / min(ph, pw)
        smooth = np.broadcast_to(np.linspace(0, 1, w, dtype=np.float32), (depth, h, w)).copy()
        back = unstitch(stitch(smooth, layout), layout)
        assert back.shape == (depth, h, w) and np.abs(back - smooth).mean() < 0.05
        constant = np.full((depth, h, w), 3, np.int64)
        np.testing.assert_array_equal(unstitch_labels(stitch_labels(constant, layout), layout), constant)


def test_inputs_of_the_wrong_shape_are_refused():
    layout = plan_layout(4, (8, 8), canvas=32)
    with pytest.raises(StitchingError, match="expected a volume"):
        stitch(np.zeros((5, 8, 8), np.float32), layout)
    with pytest.raises(StitchingError, match="expected a canvas"):
        unstitch(np.zeros((31, 32), np.float32), layout)
    with pytest.raises(StitchingError, match="integer"):
        stitch_labels(np.zeros((4, 8, 8), np.float32), layout)


def test_layout_round_trips_through_a_dict_and_checks_itself():
    layout = plan_layout(36, (50, 35), canvas=256)
    assert StitchLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(StitchingError):
        StitchLayout(10, (8, 8), 2, 2, 32, (8, 8), 0)
    with pytest.raises(StitchingError):
        StitchLayout(4, (8, 8), 2, 2, 32, (8, 8), 1)
