"""Volume nodes <-> engine volumes keep voxels and geometry (rotated, anisotropic grid) on real slicer-core MRML."""

from __future__ import annotations

import numpy as np
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402


def test_engine_volume_to_node_and_back_is_exact():
    env = slicer_scene.SlicerScene()
    affine = slicer_scene.rotatedAffine()
    volume = Volume(array=slicer_scene.syntheticImage(), affine=affine)

    node = geometry.addVolumeNode(env.scene, volume, "rotated")
    back = geometry.volumeFromNode(node)

    assert back.array.dtype == volume.array.dtype
    assert back.array.shape == volume.array.shape == (20, 16, 12)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-12)
    # Slicer's own view of the node is [K, J, I]
    kji = geometry.voxelArrayKji(node)
    assert kji.shape == (12, 16, 20)
    assert kji[3, 2, 1] == volume.array[1, 2, 3]
    # the voxel (i, j, k) lands at affine @ (i, j, k, 1) in RAS according to Slicer too
    ijkToRas = geometry.ijkToRasArray(node)
    np.testing.assert_allclose(ijkToRas @ [1, 2, 3, 1], affine @ [1, 2, 3, 1], atol=1e-12)


def test_bool_and_float_volumes_round_trip():
    env = slicer_scene.SlicerScene()
    affine = slicer_scene.rotatedAffine(spacing=(2.0, 0.5, 1.0), angleDegrees=-45)
    mask = slicer_scene.syntheticLabels() > 0
    floats = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(mask.shape)

    maskNode = geometry.addVolumeNode(env.scene, Volume(mask, affine), "mask", labelMap=True)
    floatNode = geometry.addVolumeNode(env.scene, Volume(floats, affine), "floats")

    assert maskNode.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(geometry.volumeFromNode(maskNode).array, mask.astype(np.uint8))
    np.testing.assert_array_equal(geometry.volumeFromNode(floatNode).array, floats)
    assert geometry.sameGeometry(maskNode, floatNode)


def test_nifti_written_by_engine_loads_in_slicer_with_the_engine_affine(tmp_path):
    env = slicer_scene.SlicerScene()
    affine = slicer_scene.rotatedAffine()
    volume = Volume(array=slicer_scene.syntheticImage(), affine=affine)
    path = write_volume(volume, tmp_path / "rotated.nii.gz")

    node = env.volumesLogic.AddArchetypeVolume(str(path), "rotated", 0)

    assert node is not None
    # NIfTI stores the affine in float32: equal to that precision
    np.testing.assert_allclose(geometry.ijkToRasArray(node), affine, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(geometry.volumeFromNode(node).array, volume.array)


def test_nrrd_written_from_a_node_reads_back_in_the_engine_exactly(tmp_path):
    env = slicer_scene.SlicerScene()
    affine = slicer_scene.rotatedAffine(spacing=(0.7, 0.7, 3.0), angleDegrees=12)
    node = geometry.addVolumeNode(env.scene, Volume(slicer_scene.syntheticImage(seed=3), affine), "scan")

    path = write_volume(geometry.volumeFromNode(node), tmp_path / "scan.nrrd")
    engine = read_volume(path)
    reloaded = env.volumesLogic.AddArchetypeVolume(str(path), "reloaded", 0)

    np.testing.assert_array_equal(engine.array, geometry.volumeFromNode(node).array)
    np.testing.assert_allclose(engine.affine, affine, rtol=0, atol=1e-9)
    np.testing.assert_allclose(geometry.ijkToRasArray(reloaded), affine, rtol=0, atol=1e-9)
    assert geometry.sameGeometry(node, reloaded)


def test_same_geometry_detects_a_shifted_grid():
    env = slicer_scene.SlicerScene()
    affine = slicer_scene.rotatedAffine()
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    image = slicer_scene.syntheticImage()
    first = geometry.addVolumeNode(env.scene, Volume(image, affine), "a")
    second = geometry.addVolumeNode(env.scene, Volume(image, shifted), "b")
    third = geometry.addVolumeNode(env.scene, Volume(image[:-1], affine), "c")

    assert not geometry.sameGeometry(first, second)
    assert not geometry.sameGeometry(first, third)
