"""Bidirectional copy-paste (BCP): the targets follow the pasted box, with known answers on constant patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ASSFTActive.finetune.mixing import bidirectional_copy_paste, random_boxes


def test_boxes_have_the_asked_size_and_lie_inside_the_patch():
    boxes = random_boxes(5, (6, 9, 3), 2 / 3, np.random.default_rng(0))
    assert boxes.shape == (5, 6, 9, 3) and boxes.dtype == torch.bool
    assert all(int(b.sum()) == 4 * 6 * 2 for b in boxes)
    first = random_boxes(5, (6, 9, 3), 2 / 3, np.random.default_rng(0))
    assert torch.equal(first, boxes), "the run's generator decides the positions"
    assert len({tuple(torch.nonzero(b)[0].tolist()) for b in boxes}) > 1, "the position is drawn per box"
    with pytest.raises(ValueError, match="box share"):
        random_boxes(1, (4, 4, 4), 0.0, np.random.default_rng(0))


def test_the_labels_follow_the_pasted_box_both_ways():
    shape = (4, 4, 4)
    labelled = torch.full((1, 1) + shape, 10.0)
    labels = torch.full((1,) + shape, 2, dtype=torch.long)
    unlabelled = torch.full((1, 1) + shape, -10.0)
    pseudo = torch.ones((1,) + shape, dtype=torch.long)
    mask = torch.ones((1,) + shape)
    mask[0, 3, 3, 3] = 0.0  # one voxel the teacher is unsure of
    box = torch.zeros((1,) + shape, dtype=torch.bool)
    box[0, :2, :2, :2] = True
    mixed = bidirectional_copy_paste(labelled, labels, unlabelled, pseudo, mask, box, pseudo_weight=0.5)
    assert mixed.images.shape == (2, 1) + shape and mixed.targets.shape == (2,) + shape
    into_u, into_l = 0, 1
    # labelled box in the unlabelled patch: expert image, label and weight 1 inside; pseudo outside at weight 0.5
    assert torch.all(mixed.images[into_u, 0][box[0]] == 10.0) and torch.all(mixed.images[into_u, 0][~box[0]] == -10.0)
    assert torch.all(mixed.targets[into_u][box[0]] == 2) and torch.all(mixed.targets[into_u][~box[0]] == 1)
    assert torch.all(mixed.weights[into_u][box[0]] == 1.0)
    assert mixed.weights[into_u, 0, 0, 3] == 0.5 and mixed.weights[into_u, 3, 3, 3] == 0.0
    assert torch.equal(mixed.expert[into_u], box[0])
    # unlabelled box in the labelled patch: the reverse
    assert torch.all(mixed.images[into_l, 0][box[0]] == -10.0) and torch.all(mixed.images[into_l, 0][~box[0]] == 10.0)
    assert torch.all(mixed.targets[into_l][box[0]] == 1) and torch.all(mixed.targets[into_l][~box[0]] == 2)
    assert torch.all(mixed.weights[into_l][box[0]] == 0.5) and mixed.weights[into_l, 3, 3, 3] == 1.0
    assert torch.equal(mixed.expert[into_l], ~box[0])
    # every voxel's target is the label of the patch its intensity came from
    came_from_labelled = mixed.images[:, 0] > 0
    assert torch.equal(came_from_labelled, mixed.expert)
    assert torch.equal(mixed.targets, torch.where(came_from_labelled, 2, 1))
    assert torch.all(unlabelled == -10.0) and torch.all(labels == 2), "the inputs are not modified"


def test_unlabelled_patches_cycle_over_fewer_labelled_ones():
    labelled = torch.stack([torch.full((1, 2, 2, 2), float(v)) for v in (1, 2)])
    labels = torch.stack([torch.full((2, 2, 2), v) for v in (1, 2)])
    unlabelled = torch.zeros((3, 1, 2, 2, 2))
    box = torch.ones((3, 2, 2, 2), dtype=torch.bool)
    mixed = bidirectional_copy_paste(
        labelled, labels, unlabelled, torch.zeros((3, 2, 2, 2)), torch.ones((3, 2, 2, 2)), box
    )
    assert [int(mixed.targets[b, 0, 0, 0]) for b in range(3)] == [1, 2, 1]
    with pytest.raises(ValueError, match="same spatial size"):
        bidirectional_copy_paste(
            labelled,
            labels,
            torch.zeros((1, 1, 3, 3, 3)),
            torch.zeros((1, 3, 3, 3)),
            torch.ones((1, 3, 3, 3)),
            torch.ones((1, 3, 3, 3), dtype=torch.bool),
        )
