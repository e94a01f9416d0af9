"""Geometry read the way Slicer (ITK) reads it, and declared sizes checked before anything is allocated.

Each geometry case writes one NIfTI header that nibabel and ITK read differently (a sheared sform, a negative
pixdim, the qform/sform preference, no transform at all) and checks that :func:`ASSFTActive.io.read_volume` gives
the affine SimpleITK gives, or refuses the file where ITK does; an overlay written on the volume read back by ITK
lies on the image's grid. The memory cases use small stand-ins of the red-team files (a 1 KB header declaring
2 GB, a gzip bomb scaled down to 64 MiB).
"""

from __future__ import annotations

import gzip
import math
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ASSFTActive.errors import InputError
from ASSFTActive.io import MAX_IMAGE_MB_ENV, Volume, read_volume, write_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def itk_ras_affine(path: Path) -> np.ndarray:
    """The RAS affine of a file as SimpleITK (Slicer's reader) reads it, with its voxels."""
    image = sitk.ReadImage(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def write_header(path: Path, qform, qcode: int, sform, scode: int, pixdim1: float = None) -> Path:
    """A NIfTI-1 file (``.nii`` or ``.nii.gz``) with the given transforms; ``pixdim1`` overwrites pixdim[1]."""
    array = np.random.default_rng(0).random((12, 14, 16)).astype(np.float32)
    image = nib.Nifti1Image(array, None)
    image.set_qform(qform, code=qcode)
    image.set_sform(sform, code=scode)
    image.header["vox_offset"] = 352
    data = bytearray(image.header.binaryblock + b"\0" * 4 + array.tobytes(order="F"))
    if pixdim1 is not None:
        struct.pack_into("<f", data, 80, pixdim1)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path


def oblique() -> np.ndarray:
    affine = np.eye(4)
    c, s = math.cos(0.3), math.sin(0.3)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 1.2, 2.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return affine


def sheared() -> np.ndarray:
    affine = np.eye(4)
    affine[0, 1] = 0.5
    return affine


GEOMETRIES = {
    # name: (qform, qform code, sform, sform code, pixdim[1] override)
    "sheared_sform_with_qform": (oblique(), 1, sheared(), 1, None),
    "negative_pixdim_qform_only": (oblique(), 1, None, 0, -0.8),
    "negative_pixdim_both": (oblique(), 1, oblique(), 1, -0.8),
    "qform_and_sform_differ_code_2": (oblique(), 1, np.diag([2.0, 2.0, 2.0, 1.0]), 2, None),
    "no_transform_codes": (None, 0, None, 0, None),
    "oblique_both": (oblique(), 1, oblique(), 1, None),
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_nifti_geometry_is_read_as_itk_reads_it(tmp_path, name, suffix):
    path = write_header(tmp_path / f"{name}{suffix}", *GEOMETRIES[name])
    volume = read_volume(path)
    np.testing.assert_allclose(volume.affine, itk_ras_affine(path), atol=1e-4)
    # same voxels in the same order as ITK's
    itk_voxels = np.transpose(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), (2, 1, 0))
    np.testing.assert_array_equal(np.asarray(volume.array), itk_voxels)


@pytest.mark.parametrize("name", ["sheared_sform_with_qform", "negative_pixdim_qform_only"])
def test_an_overlay_of_a_disputed_header_lies_on_the_image_when_slicer_reads_it_back(tmp_path, name):
    path = write_header(tmp_path / f"{name}.nii.gz", *GEOMETRIES[name])
    volume = read_volume(path)
    overlay = write_volume(volume.with_array(np.ones(volume.shape, np.uint8)), tmp_path / "overlay.nii.gz")
    image, back = sitk.ReadImage(str(path)), sitk.ReadImage(str(overlay))
    corner = [s - 1 for s in image.GetSize()]
    for index in ([0, 0, 0], corner):
        a = np.asarray(image.TransformIndexToPhysicalPoint(index))
        b = np.asarray(back.TransformIndexToPhysicalPoint(index))
        assert np.abs(a - b).max() < 1e-3, (index, a, b)


def test_a_sheared_sform_without_a_qform_is_refused_as_slicer_refuses_it(tmp_path):
    path = write_header(tmp_path / "sheared.nii.gz", None, 0, sheared(), 1)
    with pytest.raises(InputError, match="Slicer \\(ITK\\).*orthonormal"):
        read_volume(path)


def test_nifti2_geometry_follows_the_same_rule(tmp_path):
    array = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    image = nib.Nifti2Image(array, None)
    image.set_qform(oblique(), code=1)
    image.set_sform(sheared(), code=1)
    nib.save(image, str(tmp_path / "two.nii.gz"))
    np.testing.assert_allclose(read_volume(tmp_path / "two.nii.gz").affine, oblique(), atol=1e-4)


def _header_only(path: Path, shape, dtype=np.float32) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4 + b"\0" * 1024
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_small_file_declaring_2_gb_is_refused_before_allocating(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv(MAX_IMAGE_MB_ENV, "4096")  # the file check, not the limit, must refuse it
    path = _header_only(tmp_path / f"declares_2gb{suffix}", (1024, 1024, 512))
    assert path.stat().st_size < 4096
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="can hold at most"):
            read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB before the refusal"


def test_the_decompression_limit_is_configurable_and_named_in_the_error(tmp_path, monkeypatch):
    path = tmp_path / "bomb.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 128), np.float32), np.eye(4)), str(path))  # 8 MiB of zeros
    monkeypatch.setenv(MAX_IMAGE_MB_ENV, "4")
    with pytest.raises(InputError, match=f"8 MiB, more than the limit of 4 MiB.*{MAX_IMAGE_MB_ENV}"):
        read_volume(path)
    monkeypatch.setenv(MAX_IMAGE_MB_ENV, "16")
    assert read_volume(path).shape == (128, 128, 128)
    monkeypatch.setenv(MAX_IMAGE_MB_ENV, "lots")
    with pytest.raises(InputError, match=MAX_IMAGE_MB_ENV):
        read_volume(path)


def test_the_limit_applies_to_nrrd_and_metaimage_headers(tmp_path, monkeypatch):
    volume = Volume(np.random.default_rng(0).random((64, 64, 64)).astype(np.float32), np.eye(4))
    for suffix in (".nrrd", ".mha"):
        path = write_volume(volume, tmp_path / f"v{suffix}")
        monkeypatch.setenv(MAX_IMAGE_MB_ENV, "0.5")
        with pytest.raises(InputError, match="more than the limit"):
            read_volume(path)
        monkeypatch.delenv(MAX_IMAGE_MB_ENV)
        assert read_volume(path).shape == (64, 64, 64)


def test_reading_a_gzip_bomb_needs_at_most_1_2_times_its_decompressed_size(tmp_path):
    shape = (256, 256, 256)  # 64 MiB of float32 zeros, compressed about 1000:1 (the red team's bomb, scaled down)
    path = _header_only(tmp_path / "bomb.nii", shape)
    path.write_bytes(path.read_bytes()[:352])
    with path.open("ab") as stream:
        stream.write(bytes(int(np.prod(shape)) * 4))
    path = path.rename(tmp_path / "bomb.raw")
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=9))
    path.unlink()
    path = tmp_path / "bomb.nii.gz"
    decompressed = int(np.prod(shape)) * 4
    assert path.stat().st_size * 500 < decompressed
    tracemalloc.start()
    try:
        volume = read_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert volume.shape == shape
    assert peak <= 1.2 * decompressed, f"peak {peak / decompressed:.2f} x the decompressed size"


def test_reading_a_compressed_nrrd_needs_about_its_decompressed_size(tmp_path):
    """ITK allocates outside Python's tracer, so the peak resident memory of a fresh process is measured."""
    import subprocess
    import sys

    path = write_volume(Volume(np.zeros((256, 256, 256), np.float32), np.eye(4)), tmp_path / "zeros.nrrd")
    script = (
        "import resource, sys\n"
        "from ASSFTActive.io import read_volume\n"
        "import numpy as np, SimpleITK\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"volume = read_volume({str(path)!r})\n"
        "extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
        "volume.array[0, 0, 0] = 1.0\n"  # writable, like a copy
        "print(extra * 1024 / volume.array.nbytes)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) <= 1.2, done.stdout
