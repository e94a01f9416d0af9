"""Class segmentations on real slicer-core MRML: one segment per class, exact label map round trip, names only."""

from __future__ import annotations

import numpy as np
import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import geometry, segmentation  # noqa: E402
from ASSFTModuleLib.errors import UnknownSegmentNamesError  # noqa: E402

from ASSFTActive.cards import load_card  # noqa: E402
from ASSFTActive.io import Volume, write_volume  # noqa: E402


@pytest.fixture()
def setup(tmp_path):
    env = slicer_scene.SlicerScene()
    card = load_card(slicer_scene.writeModelCard(tmp_path / "model"))
    affine = slicer_scene.rotatedAffine()
    volumeNode = geometry.addVolumeNode(env.scene, Volume(slicer_scene.syntheticImage(), affine), "case_001")
    return env, card, volumeNode


def test_segmentation_has_one_named_segment_per_foreground_class(setup):
    env, card, volumeNode = setup

    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)
    again = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    assert again is node
    assert segmentation.segmentNames(node) == ["anterior", "posterior"]
    assert node.GetSegmentation().GetNthSegment(0).GetColor() != node.GetSegmentation().GetNthSegment(1).GetColor()
    assert node.GetNodeReferenceID("referenceImageGeometryRef") == volumeNode.GetID()
    assert len(env.nodes("vtkMRMLSegmentationNode")) == 1


def test_user_segmentation_is_read_but_never_edited(setup):
    """The user's own segmentation, marked as expert labels, keeps its segments; its class-named work is copied
    into the module's one."""
    env, card, volumeNode = setup
    userNode = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my work")
    userNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    labels = slicer_scene.syntheticLabels()
    posterior = np.where(labels == 2, 2, 0).astype(np.uint8)
    segmentation.fillSegmentationFromClassLabelmap(
        userNode, Volume(posterior, geometry.ijkToRasArray(volumeNode)), card
    )
    userNode.GetSegmentation().RemoveSegment(userNode.GetSegmentation().GetSegmentIdBySegmentName("anterior"))
    userNode.GetSegmentation().AddEmptySegment("liver", "liver", (1, 0, 0))
    segmentation.setExpertLabel(userNode, True)
    assert segmentation.findLabelSegmentation(env.scene, volumeNode, card) is userNode

    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    assert node is not userNode
    assert segmentation.segmentNames(userNode) == ["posterior", "liver"]
    assert userNode.GetAttribute(segmentation.ROLE_ATTRIBUTE) is None
    assert sorted(segmentation.segmentNames(node)) == ["anterior", "posterior"]
    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)
    np.testing.assert_array_equal(conversion.labels, posterior)
    assert segmentation.findLabelSegmentation(env.scene, volumeNode, card) is node


def test_class_labelmap_to_segmentation_and_back_is_exact(setup):
    env, card, volumeNode = setup
    labels = slicer_scene.syntheticLabels()
    affine = geometry.ijkToRasArray(volumeNode)
    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    counts = segmentation.fillSegmentationFromClassLabelmap(node, Volume(labels, affine), card)
    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)

    assert counts == {"anterior": int((labels == 1).sum()), "posterior": int((labels == 2).sum())}
    assert conversion.labels.dtype == np.uint8
    np.testing.assert_array_equal(conversion.labels, labels)
    np.testing.assert_allclose(conversion.affine, affine, atol=1e-12)
    assert conversion.voxelCounts == counts
    assert conversion.unknownSegments == ()
    assert conversion.isLabeled
    # no temporary nodes are left behind
    assert env.nodes("vtkMRMLLabelMapVolumeNode") == []
    assert [n.GetName() for n in env.nodes("vtkMRMLColorTableNode") if "ASSFT" in n.GetName()] == []


def test_segment_order_does_not_change_class_indices(setup):
    env, card, volumeNode = setup
    labels = slicer_scene.syntheticLabels()
    node = env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "reversed")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    node.GetSegmentation().AddEmptySegment("p", "posterior", (1, 0, 0))
    node.GetSegmentation().AddEmptySegment("a", "anterior", (0, 1, 0))

    segmentation.fillSegmentationFromClassLabelmap(node, Volume(labels, geometry.ijkToRasArray(volumeNode)), card)
    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)

    np.testing.assert_array_equal(conversion.labels, labels)


def test_unknown_segment_names_are_reported_not_guessed(setup):
    env, card, volumeNode = setup
    labels = slicer_scene.syntheticLabels()
    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)
    segmentation.fillSegmentationFromClassLabelmap(node, Volume(labels, geometry.ijkToRasArray(volumeNode)), card)
    node.GetSegmentation().AddEmptySegment("x1", "Anterior ", (0, 0, 1))
    node.GetSegmentation().AddEmptySegment("x2", "tumour", (0, 0, 1))
    node.GetSegmentation().AddEmptySegment("x3", "background", (0, 0, 0))

    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)

    assert conversion.unknownSegments == ("Anterior ", "tumour")
    np.testing.assert_array_equal(conversion.labels, labels)
    with pytest.raises(UnknownSegmentNamesError) as caught:
        segmentation.requireKnownSegments(conversion, node, card)
    assert caught.value.segmentNames == ("Anterior ", "tumour")
    assert "'tumour'" in str(caught.value) and "anterior, posterior" in str(caught.value)


def test_empty_class_segments_are_not_labeled(setup):
    env, card, volumeNode = setup
    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)

    assert not conversion.isLabeled
    assert conversion.voxelCounts == {"anterior": 0, "posterior": 0}
    assert conversion.labels.shape == (20, 16, 12) and not conversion.labels.any()


def test_prefill_from_prediction_file_and_never_over_manual_work(setup, tmp_path):
    env, card, volumeNode = setup
    affine = geometry.ijkToRasArray(volumeNode)
    prediction = slicer_scene.syntheticLabels()
    path = write_volume(Volume(prediction, affine), tmp_path / "case_001_pred.nii.gz")
    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    applied = segmentation.prefillFromPrediction(
        env.scene, env.volumesLogic, node, str(path), card, volumeNode=volumeNode
    )
    conversion = segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card)
    assert applied
    np.testing.assert_array_equal(conversion.labels, prediction)

    other = np.zeros_like(prediction)
    other[0:3, 0:3, 0:3] = 2
    otherPath = write_volume(Volume(other, affine), tmp_path / "other_pred.nii.gz")
    assert not segmentation.prefillFromPrediction(
        env.scene, env.volumesLogic, node, str(otherPath), card, volumeNode=volumeNode
    )
    np.testing.assert_array_equal(
        segmentation.segmentationToClassLabelmap(env.scene, node, volumeNode, card).labels, prediction
    )
    assert env.nodes("vtkMRMLLabelMapVolumeNode") == []


def test_label_values_outside_the_model_are_refused(setup):
    env, card, volumeNode = setup
    labels = slicer_scene.syntheticLabels()
    labels[0, 0, 0] = 7
    node = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    with pytest.raises(ValueError, match=r"\[7\]"):
        segmentation.fillSegmentationFromClassLabelmap(node, Volume(labels, geometry.ijkToRasArray(volumeNode)), card)


def test_prediction_segmentation_is_kept_apart_from_annotation(setup):
    env, card, volumeNode = setup
    labels = slicer_scene.syntheticLabels()
    annotation = segmentation.ensureClassSegmentation(env.scene, volumeNode, card)

    prediction = segmentation.showPredictionSegmentation(
        env.scene, volumeNode, Volume(labels, geometry.ijkToRasArray(volumeNode)), card
    )

    assert prediction is not annotation
    assert segmentation.findSegmentationForVolume(env.scene, volumeNode) is annotation
    assert segmentation.findSegmentationForVolume(env.scene, volumeNode, segmentation.PREDICTION_ROLE) is prediction
    np.testing.assert_array_equal(
        segmentation.segmentationToClassLabelmap(env.scene, prediction, volumeNode, card).labels, labels
    )


def test_segment_names_match_classes_exactly_after_stripping_spaces(setup):
    env, card, volumeNode = setup

    assert segmentation.classIndexOfSegment(card, " posterior ") == 2
    assert segmentation.classIndexOfSegment(card, "background") == 0
    assert segmentation.classIndexOfSegment(card, "Posterior") is None
