"""Images that only look like images (tiny, constant, overflowing float32) are refused before a network sees them."""

from __future__ import annotations

import numpy as np
import pytest

from ASSFTActive.errors import InputError
from ASSFTActive.io import Volume
from ASSFTActive.plausibility import MIN_EDGE_VOXELS, check_image


def _image(array) -> Volume:
    return Volume(array=np.asarray(array), affine=np.eye(4))


def test_an_ordinary_image_passes_unchanged():
    image = _image(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32))
    assert check_image(image) is image


@pytest.mark.parametrize("shape", [(1, 1, 1), (64, 64, 1), (MIN_EDGE_VOXELS - 1, 32, 32)])
def test_a_tiny_image_is_refused(shape):
    with pytest.raises(InputError, match="ASSFT needs at least"):
        check_image(_image(np.arange(np.prod(shape)).reshape(shape)))


@pytest.mark.parametrize("value", [0, 7.5])
def test_a_constant_image_is_refused(value):
    with pytest.raises(InputError, match="every voxel has the value"):
        check_image(_image(np.full((8, 8, 8), value)))


def test_float64_values_beyond_float32_are_refused():
    array = np.zeros((8, 8, 8), np.float64)
    array[0, 0, 0] = 1e300
    with pytest.raises(InputError, match="beyond the float32 range"):
        check_image(_image(array))
