"""Preprocessing streams the input: slab by slab it equals the whole-volume definition, without whole-volume copies."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import nibabel.orientations as nio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rotated_affine

import ASSFTActive.inference.preprocess as preprocess
from ASSFTActive.inference.preprocess import linear_source_rows, nonzero_mean_std, to_model_space
from ASSFTActive.io import Volume, read_volume, write_volume

ZSCORE = {"profile": "zscore_nonzero"}
CT_WINDOW = {"profile": "ct_window", "a_min": -100, "a_max": 200}


def _whole_volume_reference(volume: Volume, card) -> np.ndarray:
    """The definition: reorient, normalise the whole volume in float32, one trilinear ``F.interpolate``."""
    ornt = preprocess._orientation(volume, card.orientation)
    array = nio.apply_orientation(volume.array, ornt).astype(np.float32)
    if card.preprocessing["profile"] == "ct_window":
        x = np.clip(
            (array - card.preprocessing["a_min"]) / (card.preprocessing["a_max"] - card.preprocessing["a_min"]),
            0.0,
            1.0,
        )
    else:
        values = array[array != 0]
        x = (array - values.mean()) / values.std()
    spacing = preprocess._oriented_spacing(volume.spacing, ornt)
    shape = preprocess._target_shape(array.shape, spacing, card.spacing)
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    if tuple(shape) != tuple(array.shape):
        t = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return t[0, 0].numpy()


def _volume(shape, spacing, seed=0, flip_first_axis=True, order="F"):
    rng = np.random.default_rng(seed)
    array = np.asarray(rng.normal(50, 100, shape).astype(np.int16), order=order)
    array[: shape[0] // 5] = 0  # a zero border, which z-scoring over non-zero voxels leaves out
    affine = np.diag(list(spacing) + [1.0])
    if flip_first_axis:
        affine[0, 0] *= -1  # LAS: reorientation flips the first axis
    return Volume(array=array, affine=affine)


@pytest.mark.parametrize("slab_voxels", [1 << 22, 700, 1])
@pytest.mark.parametrize(
    "shape, spacing, profile",
    [
        ((40, 30, 20), (0.7, 1.3, 2.0), ZSCORE),  # down in one axis, up in two
        ((33, 50, 17), (1.0, 1.0, 2.5), CT_WINDOW),  # only the last axis resampled; clipping before resampling
        ((20, 21, 22), (1.0, 1.0, 1.0), ZSCORE),  # no resampling
        ((50, 40, 30), (0.3, 0.5, 1.0), ZSCORE),  # strong downsampling of the first axis
        ((7, 30, 30), (4.0, 1.0, 1.0), CT_WINDOW),  # strong upsampling of the first axis
    ],
)
def test_streamed_model_space_equals_whole_volume_trilinear(monkeypatch, shape, spacing, profile, slab_voxels):
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", slab_voxels)
    volume = _volume(shape, spacing)
    card = SimpleNamespace(orientation="RAS", spacing=(1.0, 1.0, 1.0), preprocessing=profile)
    image, space = to_model_space(volume, card)
    reference = _whole_volume_reference(volume, card)
    assert image.shape == (1,) + reference.shape == (1,) + tuple(space.model_shape)
    np.testing.assert_allclose(image[0].numpy(), reference, atol=2e-5)


def test_streamed_model_space_follows_a_rotated_affine():
    volume = Volume(array=_volume((24, 20, 16), (1, 1, 1)).array, affine=rotated_affine())
    card = SimpleNamespace(orientation="RAS", spacing=(1.0, 1.0, 1.0), preprocessing=ZSCORE)
    image, _ = to_model_space(volume, card)
    np.testing.assert_allclose(image[0].numpy(), _whole_volume_reference(volume, card), atol=2e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.0)])
def test_model_space_leaves_a_float32_input_unchanged(spacing):
    volume = _volume((24, 20, 16), spacing)
    volume = Volume(array=volume.array.astype(np.float32), affine=volume.affine)
    before = volume.array.copy()
    card = SimpleNamespace(orientation="RAS", spacing=(1.0, 1.0, 1.0), preprocessing=ZSCORE)
    to_model_space(volume, card)
    np.testing.assert_array_equal(volume.array, before)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("slab_voxels", [1 << 22, 37])
def test_nonzero_mean_std_equals_numpy_over_the_non_zero_voxels(monkeypatch, order, slab_voxels):
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", slab_voxels)
    rng = np.random.default_rng(3)
    array = np.asarray(rng.normal(1.7e6, 2e3, (19, 13, 11)), order=order)  # a large offset: the update must be stable
    array[rng.random(array.shape) < 0.3] = 0
    values = array[array != 0]
    mean, std = nonzero_mean_std(array)
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert std == pytest.approx(values.std(), rel=1e-9)


def test_nonzero_mean_std_of_an_all_zero_volume_is_zero():
    assert nonzero_mean_std(np.zeros((4, 5, 6), dtype=np.uint8)) == (0.0, 0.0)


@pytest.mark.parametrize("size_in, size_out", [(10, 3), (10, 10), (3, 10), (1, 5), (7, 1), (512, 366)])
def test_linear_source_rows_reproduce_torch_linear_interpolation(size_in, size_out):
    x = torch.linspace(-3, 5, size_in) ** 2
    lower, upper, weight = linear_source_rows(size_in, size_out)
    ours = x[lower] * (1 - torch.from_numpy(weight)) + x[upper] * torch.from_numpy(weight)
    theirs = F.interpolate(x[None, None], size=size_out, mode="linear", align_corners=False)[0, 0]
    torch.testing.assert_close(ours, theirs)


def test_model_space_makes_no_float_copy_of_the_input(monkeypatch):
    """numpy allocations during preprocessing stay at a slab, far below one float32 copy of the input."""
    monkeypatch.setattr(preprocess, "SLAB_VOXELS", 1 << 14)
    volume = _volume((96, 96, 64), (0.8, 0.8, 1.5))
    card = SimpleNamespace(orientation="RAS", spacing=(1.0, 1.0, 1.0), preprocessing=ZSCORE)
    tracemalloc.start()
    try:
        to_model_space(volume, card)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float_copy = volume.array.size * 4
    assert peak < float_copy / 4, f"peak numpy allocation {peak} B vs one float32 copy {float_copy} B"


def test_nifti_gz_is_decompressed_into_one_copy_of_the_voxels(tmp_path):
    """Reading a ``.nii.gz`` allocates the voxel array and a 1 MiB piece, not the decompressed bytes besides."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(160, 160, 80)).astype(np.int16)
    path = write_volume(Volume(array=array, affine=rotated_affine()), tmp_path / "ct.nii.gz")
    # A first read imports the geometry reader (SimpleITK: several MB of module objects); only the voxels count here.
    read_volume(write_volume(Volume(array=array[:4, :4, :4], affine=rotated_affine()), tmp_path / "warm.nii.gz"))
    tracemalloc.start()
    try:
        back = read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(back.array, array)
    assert peak < array.nbytes + (3 << 20), f"peak {peak} B for {array.nbytes} B of voxels"


def test_uncompressed_nifti_is_memory_mapped_and_streamed_into_model_space(tmp_path):
    volume = _volume((40, 30, 20), (0.7, 1.3, 2.0), flip_first_axis=False)
    path = write_volume(volume, tmp_path / "case.nii")
    back = read_volume(path)
    assert isinstance(back.array.base, np.memmap) or isinstance(back.array, np.memmap)
    card = SimpleNamespace(orientation="RAS", spacing=(1.0, 1.0, 1.0), preprocessing=ZSCORE)
    image, _ = to_model_space(back, card)
    np.testing.assert_allclose(image[0].numpy(), _whole_volume_reference(volume, card), atol=2e-5)
