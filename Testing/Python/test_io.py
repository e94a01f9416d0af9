"""Volumes keep their RAS geometry through every format, and bad inputs fail with a message a user can act on."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import rotated_affine

from ASSFTActive.errors import InputError
from ASSFTActive.io import (
    Volume,
    case_id,
    check_same_geometry,
    find_images,
    match_labels,
    read_label,
    read_volume,
    write_volume,
)


def _volume(shape=(12, 10, 8), affine=None, dtype=np.int16) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(
        array=rng.integers(0, 1000, size=shape).astype(dtype), affine=rotated_affine() if affine is None else affine
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_every_format_round_trips_voxels_and_rotated_anisotropic_affine(tmp_path, suffix):
    volume = _volume()
    path = write_volume(volume, tmp_path / f"case{suffix}")
    back = read_volume(path)
    assert np.array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)
    np.testing.assert_allclose(back.spacing, [0.8, 1.2, 2.5], atol=1e-6)
    assert case_id(path) == "case"


def test_nrrd_fixture_is_read_in_ras_like_its_lps_header(fixtures_dir):
    import SimpleITK as sitk

    path = fixtures_dir / "pyradiomics" / "brain1_image.nrrd"
    volume = read_volume(path)
    reference = sitk.ReadImage(str(path))
    # voxel (1, 2, 3) in ITK's LPS physical space, flipped to RAS
    lps = np.array(reference.TransformIndexToPhysicalPoint((1, 2, 3)))
    ras = volume.affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    assert volume.shape == tuple(reference.GetSize())


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "absent.nii.gz")


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    good = write_volume(_volume(), tmp_path / "good.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read the file.*corrupt"):
        read_volume(bad)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    bad = tmp_path / "noise.nii.gz"
    bad.write_bytes(gzip.compress(b"not an image at all" * 10))
    with pytest.raises(InputError, match="cannot read"):
        read_volume(bad)


def test_two_dimensional_image_is_refused(tmp_path):
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10), np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="2D.*needs a 3D volume"):
        read_volume(path)


def test_four_dimensional_image_is_refused_unless_channels_are_allowed(tmp_path):
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 3), np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="4D"):
        read_volume(path)
    assert read_volume(path, allow_channels=True).array.shape == (6, 6, 6, 3)


def test_trailing_singleton_dimension_is_squeezed(tmp_path):
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 8, 1), np.float32), np.eye(4)), str(path))
    assert read_volume(path).shape == (6, 7, 8)


def test_nan_voxels_are_refused_with_their_count(tmp_path):
    array = np.ones((6, 6, 6), np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    path = write_volume(Volume(array, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="4 voxels are NaN or infinite"):
        read_volume(path)


@pytest.mark.parametrize("order", ["C", "F"])
def test_non_finite_voxels_are_counted_across_slabs(order):
    from ASSFTActive.io import _count_non_finite

    rng = np.random.default_rng(1)
    array = np.asarray(rng.normal(size=(9, 7, 5)).astype(np.float32), order=order)
    flat = array.reshape(-1, order="A")
    flat[rng.choice(flat.size, 23, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 23)
    assert _count_non_finite(array, voxels=11) == _count_non_finite(array) == 23


def test_label_with_other_shape_is_refused(tmp_path):
    image = read_volume(write_volume(_volume(), tmp_path / "img.nii.gz"))
    label = write_volume(Volume(np.zeros((12, 10, 7), np.uint8), image.affine), tmp_path / "lab.nii.gz")
    with pytest.raises(InputError, match="label shape .* does not match image"):
        read_label(label, image, num_classes=3)


def test_label_with_shifted_affine_is_refused_beyond_tolerance(tmp_path):
    image = read_volume(write_volume(_volume(), tmp_path / "img.nii.gz"))
    shifted = image.affine.copy()
    shifted[0, 3] += 0.5
    label = write_volume(Volume(np.zeros(image.shape, np.uint8), shifted), tmp_path / "lab.nii.gz")
    with pytest.raises(InputError, match="geometry differs"):
        read_label(label, image, num_classes=3)
    tiny = image.affine.copy()
    tiny[0, 3] += 1e-5
    check_same_geometry(image, Volume(np.zeros(image.shape), tiny))


def test_label_values_outside_the_model_classes_are_refused(tmp_path):
    image = read_volume(write_volume(_volume(), tmp_path / "img.nii.gz"))
    values = np.zeros(image.shape, np.uint8)
    values[0, 0, 0] = 7
    label = write_volume(Volume(values, image.affine), tmp_path / "lab.nii.gz")
    with pytest.raises(InputError, match=r"label values \[7\] are not classes of the model \(0\.\.2\)"):
        read_label(label, image, num_classes=3)


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    image = read_volume(write_volume(_volume(), tmp_path / "img.nii.gz"))
    values = np.zeros(image.shape, np.float32)
    values[1, 1, 1] = 2.0
    label = read_label(write_volume(Volume(values, image.affine), tmp_path / "lab.nii.gz"), image, 3)
    assert label.array.dtype == np.uint8 and label.array[1, 1, 1] == 2


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    write_volume(_volume(), target)
    before = target.read_bytes()

    def broken_save(image, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        write_volume(_volume(shape=(3, 3, 3)), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_find_images_accepts_folder_and_glob_and_matches_labels(tmp_path):
    for name in ("a", "b"):
        write_volume(_volume(), tmp_path / "img" / f"{name}.nii.gz")
    write_volume(_volume(), tmp_path / "lab" / "b.nii.gz")
    by_folder = find_images(tmp_path / "img")
    by_glob = find_images(str(tmp_path / "img" / "*.nii.gz"))
    assert [p.name for p in by_folder] == [p.name for p in by_glob] == ["a.nii.gz", "b.nii.gz"]
    assert list(match_labels(by_folder, tmp_path / "lab")) == ["b"]
    with pytest.raises(InputError, match="no NIfTI/NRRD/MetaImage files"):
        find_images(tmp_path / "lab" / "*.mha")


def _corrupt_middle(data: bytes, offset: int, length: int = 16) -> bytes:
    """``data`` with ``length`` bytes inverted from ``offset`` (a damaged disk block or transfer)."""
    damaged = bytearray(data)
    for i in range(offset, offset + length):
        damaged[i] ^= 0xFF
    return bytes(damaged)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_nifti_gz_with_corrupted_bytes_is_refused_by_its_crc(tmp_path, fraction):
    good = write_volume(_volume(shape=(40, 40, 30)), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(_corrupt_middle(data, int(len(data) * fraction)))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read the file.*corrupt"):
        read_volume(bad)


def test_real_hippocampus_gz_with_flipped_bytes_is_refused(hippocampus_dir, tmp_path):
    source = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]
    data = source.read_bytes()
    assert read_volume(source).array.size > 0
    for index, fraction in enumerate((0.3, 0.6, 0.9)):
        bad = tmp_path / f"flipped_{index}.nii.gz"
        bad.write_bytes(_corrupt_middle(data, int(len(data) * fraction)))
        with pytest.raises(InputError, match="corrupt"):
            read_volume(bad)


def test_corrupt_gz_label_is_refused(tmp_path):
    image = _volume(shape=(40, 40, 30))
    label = write_volume(image.with_array((image.array > 500).astype(np.uint8)), tmp_path / "label.nii.gz")
    data = label.read_bytes()
    label.write_bytes(_corrupt_middle(data, len(data) // 2, 4))
    with pytest.raises(InputError, match="corrupt"):
        read_label(label, image, 2)


def test_nifti2_gz_is_read(tmp_path):
    volume = _volume()
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(volume.array, volume.affine), str(path))
    assert np.array_equal(read_volume(path).array, volume.array)
