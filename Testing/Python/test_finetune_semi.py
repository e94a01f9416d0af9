"""Teacher-student parts with known answers: class-aware confidence masks, pasted labelled boxes, the strong view,
the spatial jitter."""

from __future__ import annotations

import numpy as np
import torch

from ASSFTActive.finetune.pseudo import voxel_confidence_mask
from ASSFTActive.finetune.semi import (
    SpatialJitter,
    StrongView,
    confident_voxels,
    paste_labelled_boxes,
    teacher_targets,
)


def _probs():
    """[3, 1, 1, 6]: background voxels very confident, class-2 voxels all unsure (0.5-0.6)."""
    p = torch.tensor(
        [
            [0.95, 0.90, 0.20, 0.20, 0.20, 0.20],  # background
            [0.03, 0.05, 0.10, 0.20, 0.25, 0.30],  # class 1
            [0.02, 0.05, 0.70, 0.60, 0.55, 0.50],  # class 2
        ]
    )
    return p.reshape(3, 1, 1, 6)


def test_a_global_threshold_wipes_out_an_unsure_class():
    mask = confident_voxels(_probs(), 0.8)
    assert mask.flatten().tolist() == [True, True, False, False, False, False]


def test_the_class_aware_mask_keeps_the_most_confident_share_of_every_class():
    mask = confident_voxels(_probs(), 0.8, class_keep_min=0.5)
    assert mask.flatten().tolist() == [True, True, True, True, False, False]
    batch = confident_voxels(torch.stack([_probs(), _probs()]), 0.8, class_keep_min=0.5)
    assert batch.shape == (2, 1, 1, 6) and torch.equal(batch[0], mask)


def test_the_teacher_targets_are_argmax_and_the_confidence_mask_with_ties_going_to_the_first_class():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 5, 6, 4), dim=1)
    probs[0, :, 0, 0, 0] = 1.0 / 3.0  # a three-way tie: class 0, as argmax
    probs[1, 0, 1, 1, 1], probs[1, 1:, 1, 1, 1] = 0.2, 0.4  # a tie of classes 1 and 2: class 1
    labels, mask = teacher_targets(probs, 0.6, class_keep_min=0.25)
    assert labels.dtype == torch.int64 and torch.equal(labels, probs.argmax(dim=1))
    assert labels[0, 0, 0, 0] == 0 and labels[1, 1, 1, 1] == 1
    assert torch.equal(mask, confident_voxels(probs, 0.6, class_keep_min=0.25))
    unmasked_labels, no_mask = teacher_targets(probs, None)
    assert no_mask is None and torch.equal(unmasked_labels, labels)


def test_the_offline_mask_uses_the_same_rule():
    probs = _probs()
    confidence, hard = probs.max(dim=0)
    mask = voxel_confidence_mask(hard.numpy(), confidence.numpy(), 0.8, class_keep_min=0.5)
    assert isinstance(mask, np.ndarray) and mask.flatten().tolist() == [True, True, True, True, False, False]


def test_pasted_boxes_carry_the_expert_labels_and_a_full_mask():
    images = torch.zeros(2, 1, 8, 8, 8)
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    masks = torch.zeros(2, 8, 8, 8)
    source = torch.ones(1, 1, 8, 8, 8)
    source_labels = torch.full((1, 8, 8, 8), 2, dtype=torch.long)
    out_images, out_labels, out_masks = paste_labelled_boxes(
        images, labels, masks, source, source_labels, 1.0, np.random.default_rng(0)
    )
    for b in range(2):
        box = out_images[b, 0] == 1
        assert 8 <= int(box.sum()) <= 4**3
        assert torch.equal(box, out_labels[b] == 2) and torch.equal(box, out_masks[b] == 1)
    assert float(images.abs().sum()) == 0.0, "the inputs are not modified"
    same = paste_labelled_boxes(images, labels, masks, source, source_labels, 0.0, np.random.default_rng(0))
    assert same[0] is images


def test_the_strong_view_changes_intensities_only_and_leaves_its_input_alone():
    torch.manual_seed(0)
    images = torch.randn(3, 1, 8, 8, 8)
    copy = images.clone()
    view = StrongView(seed=1)(images)
    assert view.shape == images.shape and view.dtype == images.dtype and type(view) is torch.Tensor
    assert torch.equal(images, copy) and not torch.allclose(view, images)
    assert torch.equal(StrongView(seed=1)(images), view), "seeded"


def _block_batch():
    """Two 16³ patches whose image equals their label (0/1/2 blocks off centre), with full masks."""
    labels = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    labels[:, 3:9, 4:11, 5:12] = 1
    labels[:, 9:13, 4:11, 5:12] = 2
    return labels[:, None].float(), labels, torch.ones(2, 16, 16, 16)


def test_the_spatial_jitter_moves_the_labels_with_the_image():
    images, labels, masks = _block_batch()
    out_images, out_labels, out_masks = SpatialJitter(seed=3)(images, labels, masks)
    assert out_images.shape == images.shape and out_labels.shape == labels.shape and out_masks.shape == masks.shape
    assert out_labels.dtype == torch.long and set(out_labels.unique().tolist()) <= {0, 1, 2}
    assert not torch.equal(out_labels, labels), "the patch moved"
    assert torch.equal(images, labels[:, None].float()), "the inputs are not modified"
    for k in (1, 2):  # the same seed draws the same motion: the image of one class lands where its label lands
        indicator = (labels == k)[:, None].float()
        moved_image, moved_labels, _ = SpatialJitter(seed=3)(indicator, labels, masks)
        for b in range(2):
            label_centre = torch.nonzero(moved_labels[b] == k).float().mean(dim=0)
            image_centre = torch.nonzero(moved_image[b, 0] > 0.5).float().mean(dim=0)
            assert float((label_centre - image_centre).norm()) < 0.5, f"class {k} follows its image"


def test_the_spatial_jitter_masks_voxels_from_outside_the_patch():
    images, labels, masks = _block_batch()
    _, _, out_masks = SpatialJitter(seed=0, rotate=0.5, scale=0.0)(images, labels, masks)
    corners = out_masks[:, [0, 0, -1, -1], [0, -1, 0, -1], :]
    assert float(corners.sum()) < corners.numel(), "rotated-in corners do not count"
    assert float(out_masks[:, 6:10, 6:10, 6:10].min()) == 1.0, "the centre stays in the loss"


def test_the_spatial_jitter_without_range_is_the_identity():
    images, labels, masks = _block_batch()
    out_images, out_labels, out_masks = SpatialJitter(seed=0, rotate=0.0, scale=0.0)(images, labels, masks)
    assert torch.allclose(out_images, images, atol=1e-5) and torch.equal(out_labels, labels)
    assert torch.equal(out_masks, masks)
