"""The streamed sliding window and the reduced maps equal the whole-volume computation they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ASSFTActive.inference.reduction import MapReducer, ball_offsets, reduce_probs
from ASSFTActive.inference.sliding import stream_sliding_window
from ASSFTActive.query import QueryConfig, RegionSpec, foreground_mask, normalized_entropy, region_sums


def _streamed(image: torch.Tensor, roi, network, **kwargs) -> torch.Tensor:
    rows = []

    def on_rows(blended: torch.Tensor, first: int) -> None:
        rows.append((first, blended.clone()))

    stream_sliding_window(image, roi, network, on_rows, **kwargs)
    firsts = [first for first, _ in rows]
    assert firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    return torch.cat([r for _, r in rows], dim=1)


@pytest.mark.parametrize(
    "shape, roi, overlap, mode",
    [
        ((20, 17, 13), (8, 6, 8), 0.5, "gaussian"),
        ((33, 12, 40), (10, 12, 7), 0.6, "gaussian"),
        ((5, 30, 9), (8, 8, 8), 0.25, "constant"),  # smaller than the window on two axes: padded like MONAI
        ((16, 16, 16), (16, 16, 16), 0.5, "gaussian"),  # one window
    ],
)
def test_streamed_windows_equal_monai_sliding_window_inference(shape, roi, overlap, mode):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 5, 3, padding=1)
    image = torch.randn(1, *shape)
    with torch.no_grad():
        expected = sliding_window_inference(
            image[None], roi, 3, network, overlap=overlap, mode=mode, padding_mode="constant", cval=0.0
        )[0]
        streamed = _streamed(image, roi, network, overlap=overlap, mode=mode, sw_batch_size=3)
    assert streamed.shape == expected.shape
    torch.testing.assert_close(streamed, expected, rtol=1e-5, atol=1e-6)


def _random_probs(classes: int, shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(classes,) + tuple(shape)).astype(np.float32) * 3
    logits[0] += 1.5  # mostly background, as in a segmentation
    return torch.softmax(torch.from_numpy(logits), dim=0).numpy()


def _stream_rows(probs: np.ndarray, spec: RegionSpec, chunks) -> MapReducer:
    reducer = MapReducer(probs.shape[1:], probs.shape[0], spec)
    first = 0
    for size in chunks:
        size = min(size, probs.shape[1] - first)
        if size <= 0:
            break
        reducer.add_probs(torch.from_numpy(probs[:, first : first + size]), first)
        first += size
    if first < probs.shape[1]:
        reducer.add_probs(torch.from_numpy(probs[:, first:]), first)
    return reducer


@pytest.mark.parametrize(
    "classes, shape, spec",
    [
        (2, (10, 9, 7), RegionSpec()),
        (3, (12, 9, 7), RegionSpec(dilation=0)),
        (4, (9, 5, 10), RegionSpec(dilation=1, fg_mask="pred_prob", fg_prob_threshold=0.4)),
        (7, (11, 6, 6), RegionSpec(dilation=3)),
        (120, (8, 8, 8), RegionSpec()),
    ],
)
def test_reduced_maps_and_sums_equal_the_full_softmax_computation(classes, shape, spec):
    probs = _random_probs(classes, shape, seed=classes)
    maps = _stream_rows(probs, spec, chunks=(1, 3, 2, 4)).result()
    expected = region_sums(probs, spec)
    config = QueryConfig(fg_dilation=spec.dilation, fg_mask=spec.fg_mask, fg_prob_threshold=spec.fg_prob_threshold)
    np.testing.assert_array_equal(maps.label, np.argmax(probs, axis=0))
    np.testing.assert_allclose(maps.max_prob, probs.max(axis=0), atol=1e-7)
    np.testing.assert_allclose(maps.foreground_prob, 1 - probs[0], atol=1e-7)
    np.testing.assert_allclose(maps.entropy, normalized_entropy(probs), atol=2e-6)
    np.testing.assert_array_equal(maps.region, foreground_mask(probs, config))
    got = maps.sums
    assert got.voxels == expected.voxels and got.foreground_voxels == expected.foreground_voxels
    for name in ("entropy_sum", "power_entropy_sum", "foreground_entropy_sum"):
        assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-6)
    np.testing.assert_array_equal(got.class_voxels, expected.class_voxels)
    np.testing.assert_allclose(got.class_entropy_sums, expected.class_entropy_sums, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got.class_power_entropy_sums, expected.class_power_entropy_sums, rtol=1e-6, atol=1e-5)
    for reduce in ("voxel_mean", "class_balanced"):
        wanted = QueryConfig(
            fg_dilation=spec.dilation, fg_mask=spec.fg_mask, fg_prob_threshold=spec.fg_prob_threshold, asd_reduce=reduce
        )
        assert got.asd(wanted) == pytest.approx(expected.asd(wanted), rel=1e-6)
    np.testing.assert_allclose(got.clasp_scores(), expected.clasp_scores(), rtol=1e-6, atol=1e-7)


def test_the_dilation_ball_is_scipys_iterated_cross():
    assert len(ball_offsets(0)) == 1 and len(ball_offsets(1)) == 7 and len(ball_offsets(2)) == 25
    assert ball_offsets(2)[0] == (0, 0, 0)


def test_rows_must_arrive_in_order_and_all_of_them():
    probs = _random_probs(3, (6, 4, 4), seed=0)
    reducer = MapReducer(probs.shape[1:], 3, RegionSpec())
    with pytest.raises(ValueError, match="in order"):
        reducer.add_probs(torch.from_numpy(probs[:, 2:]), 2)
    reducer.add_probs(torch.from_numpy(probs[:, :2]), 0)
    with pytest.raises(RuntimeError, match="rows arrived"):
        reducer.result()


def test_sums_taken_over_other_regions_are_refused_by_the_scores():
    sums = reduce_probs(_random_probs(3, (6, 6, 6), seed=1), RegionSpec(dilation=1)).sums
    with pytest.raises(ValueError, match="region"):
        sums.asd(QueryConfig(fg_dilation=2))


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_predictor_maps_equal_the_scores_of_its_full_softmax(overlap):
    from ASSFTActive.inference import InferenceConfig, Predictor
    from ASSFTActive.io import Volume
    from ASSFTActive.models import load_model
    from ASSFTActive.store import resolve_card

    model = load_model(resolve_card("default"))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (40, 52, 30)], indexing="ij"))
    centre = np.array((40, 52, 30))[:, None, None, None] / 2
    array = 100 + 400 * np.exp(-((grid - centre) ** 2).sum(0) / 60.0)
    volume = Volume(array.astype(np.float32), np.eye(4))  # model spacing: model space is the input grid
    predictor = Predictor(model, config=InferenceConfig(overlap=overlap))
    spec = RegionSpec.from_config(QueryConfig())
    prediction = predictor.predict(volume, regions=spec, keep_probs=True)
    expected = region_sums(prediction.probs, spec)
    assert prediction.sums.voxels == expected.voxels
    assert prediction.sums.entropy_sum == pytest.approx(expected.entropy_sum, rel=1e-5)
    assert prediction.sums.asd(QueryConfig()) == pytest.approx(expected.asd(QueryConfig()), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(prediction.sums.clasp_scores(), expected.clasp_scores(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(prediction.label, np.argmax(prediction.probs, axis=0))
    np.testing.assert_array_equal(predictor.plain_pass(volume), prediction.label)
