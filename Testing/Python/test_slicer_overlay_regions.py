"""Entropy overlay (geometry, heat colours, every slice view) and high-entropy regions as markups, on real MRML."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, overlay, regions  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.records import RegionMarker  # noqa: E402

from ASSFTActive.io import Volume, write_volume  # noqa: E402


@pytest.fixture()
def env():
    return slicer_scene.SlicerScene()


def addScan(env, affine=None, name="scan"):
    affine = slicer_scene.rotatedAffine() if affine is None else affine
    return geometry.addVolumeNode(env.scene, Volume(slicer_scene.syntheticImage(), affine), name)


def entropyMap(shape=(20, 16, 12)) -> np.ndarray:
    i = np.arange(shape[0], dtype=np.float32)[:, None, None]
    return np.broadcast_to(i / (shape[0] - 1), shape).astype(np.float32).copy()


def test_overlay_file_lies_on_its_volume_grid_and_is_shown_in_every_slice_view(env, tmp_path):
    scan = addScan(env)
    path = write_volume(Volume(entropyMap(), geometry.ijkToRasArray(scan)), tmp_path / "scan_entropy.nii.gz")

    node = overlay.loadOverlay(env.scene, env.volumesLogic, scan, str(path))
    views = overlay.showOverlay(env.scene, scan, node, threshold=0.3, opacity=0.45)

    assert geometry.sameGeometry(node, scan)
    np.testing.assert_allclose(geometry.ijkToRasArray(node), geometry.ijkToRasArray(scan), atol=1e-5)
    np.testing.assert_array_equal(geometry.volumeFromNode(node).array, entropyMap())
    assert views == 3
    for composite in env.nodes("vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == scan.GetID()
        assert composite.GetForegroundVolumeID() == node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.45)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == overlay.HEAT_COLOR_NODE_ID
    assert env.scene.GetNodeByID(overlay.HEAT_COLOR_NODE_ID) is not None
    assert display.GetApplyThreshold() == 1
    assert display.GetLowerThreshold() == pytest.approx(0.3)
    assert display.GetWindowLevelMin() == pytest.approx(0.3) and display.GetWindowLevelMax() == pytest.approx(1.0)
    assert overlay.findOverlayNode(env.scene, scan) is node
    # loading the same file again reuses the node
    assert overlay.loadOverlay(env.scene, env.volumesLogic, scan, str(path)) is node


def test_in_memory_overlay_and_updates_of_threshold_and_opacity(env):
    scan = addScan(env)
    logic = ASSFTSceneLogic(env.scene, env.appLogic)

    node = logic.showEntropy(scan, Volume(entropyMap(), geometry.ijkToRasArray(scan)), threshold=0.2, opacity=0.5)
    logic.updateOverlay(scan, threshold=0.6, opacity=0.8)

    assert geometry.sameGeometry(node, scan)
    assert node.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.6)
    assert all(c.GetForegroundOpacity() == pytest.approx(0.8) for c in env.nodes("vtkMRMLSliceCompositeNode"))
    overlay.hideOverlay(env.scene)
    assert all(not c.GetForegroundVolumeID() for c in env.nodes("vtkMRMLSliceCompositeNode"))


def test_overlay_on_another_grid_is_refused(env, tmp_path):
    scan = addScan(env)
    other = slicer_scene.rotatedAffine(spacing=(1.0, 1.0, 1.0))
    path = write_volume(Volume(entropyMap(), other), tmp_path / "wrong_entropy.nii.gz")

    with pytest.raises(ValueError, match="voxel grid"):
        overlay.loadOverlay(env.scene, env.volumesLogic, scan, str(path))
    assert overlay.findOverlayNode(env.scene, scan) is None


def writeRegions(path, centers):
    data = {
        "case_id": "scan",
        "threshold": 0.5,
        "regions": [
            {
                "center_ras": list(c),
                "bbox_ijk_min": [1, 2, 3],
                "bbox_ijk_max": [4, 5, 6],
                "volume_mm3": 10.0 * (n + 1),
                "mean_entropy": 0.9 - 0.1 * n,
                "voxel_count": 5 * (n + 1),
            }
            for n, c in enumerate(centers)
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_regions_become_locked_markups_points_at_their_ras_centres(env, tmp_path):
    scan = addScan(env)
    affine = geometry.ijkToRasArray(scan)
    centers = [tuple((affine @ [i, j, k, 1])[:3]) for i, j, k in [(4, 5, 3), (15, 8, 7), (1, 1, 1)]]
    regionSet = regions.readRegions(writeRegions(tmp_path / "scan_regions.json", centers))

    node = regions.regionsToMarkups(env.scene, scan, regionSet.regions)

    assert regionSet.threshold == 0.5 and regionSet.caseId == "scan"
    assert regionSet.regions[1] == RegionMarker(centers[1], (1, 2, 3), (4, 5, 6), 20.0, 0.8, 10)
    assert node.IsA("vtkMRMLMarkupsFiducialNode") and node.GetLocked()
    assert node.GetNumberOfControlPoints() == 3
    for index, center in enumerate(centers):
        np.testing.assert_allclose(regions.regionCenter(node, index), center, atol=1e-9)
        assert node.GetNthControlPointLabel(index) == f"R{index + 1}"
    assert "mean entropy 0.90" in node.GetNthControlPointDescription(0)
    # rewriting replaces the points in the same node
    again = regions.regionsToMarkups(env.scene, scan, regionSet.regions[:1])
    assert again is node and node.GetNumberOfControlPoints() == 1
    with pytest.raises(IndexError):
        regions.regionCenter(node, 1)


def test_jump_to_region_centres_every_slice_view_and_reports_offsets(env, tmp_path):
    scan = addScan(env)
    center = (12.5, -7.25, 33.0)
    node = regions.regionsToMarkups(
        env.scene, scan, regions.readRegions(writeRegions(tmp_path / "r.json", [center])).regions
    )
    logic = ASSFTSceneLogic(env.scene, env.appLogic)

    offsets = logic.jumpToRegion(node, 0)

    assert set(offsets) == {"Red", "Yellow", "Green"}
    assert offsets["Red"] == pytest.approx(33.0)
    for sliceLogic in env.sliceLogics:
        sliceNode = sliceLogic.GetSliceNode()
        matrix = sliceNode.GetSliceToRAS()
        np.testing.assert_allclose([matrix.GetElement(r, 3) for r in range(3)], center, atol=1e-9)
        assert sliceLogic.GetSliceOffset() == pytest.approx(offsets[sliceNode.GetLayoutName()])


def test_regions_file_without_centres_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"regions": [{"center_ras": [1, 2]}]}), encoding="utf-8")
    with pytest.raises(Exception, match="center_ras"):
        regions.readRegions(path)
