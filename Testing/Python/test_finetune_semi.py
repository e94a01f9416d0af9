"""Teacher-student parts with known answers: class-aware confidence masks, pasted labelled boxes, the strong view."""

from __future__ import annotations

import numpy as np
import torch

from ASSFTActive.finetune.pseudo import voxel_confidence_mask
from ASSFTActive.finetune.semi import StrongView, confident_voxels, paste_labelled_boxes


def _probs():
    """[3, 1, 1, 6]: background voxels very confident, class-2 voxels all unsure (0.5-0.6)."""
    p = torch.tensor([
        [0.95, 0.90, 0.20, 0.20, 0.20, 0.20],  # background
        [0.03, 0.05, 0.10, 0.20, 0.25, 0.30],  # class 1
        [0.02, 0.05, 0.70, 0.60, 0.55, 0.50],  # class 2
    ])
    return p.reshape(3, 1, 1, 6)


def test_a_global_threshold_wipes_out_an_unsure_class():
    mask = confident_voxels(_probs(), 0.8)
    assert mask.flatten().tolist() == [True, True, False, False, False, False]


def test_the_class_aware_mask_keeps_the_most_confident_share_of_every_class():
    mask = confident_voxels(_probs(), 0.8, class_keep_min=0.5)
    assert mask.flatten().tolist() == [True, True, True, True, False, False]
    batch = confident_voxels(torch.stack([_probs(), _probs()]), 0.8, class_keep_min=0.5)
    assert batch.shape == (2, 1, 1, 6) and torch.equal(batch[0], mask)


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
    out_images, out_labels, out_masks = paste_labelled_boxes(images, labels, masks, source, source_labels, 1.0,
                                                             np.random.default_rng(0))
    for b in range(2):
        box = out_images[b, 0] == 1
        assert 8 <= int(box.sum()) <= 4 ** 3
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
