"""Partial labels: the reserved value 255 (not annotated), reading, and a loss on the annotated voxels only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_card, rotated_affine, synthetic_case
from monai.losses import DiceCELoss

from ASSFTActive.cards import load_card
from ASSFTActive.errors import InputError
from ASSFTActive.finetune.config import TrainConfig
from ASSFTActive.finetune.partial_loss import PartialLabelTerm, masked_dice_ce_loss
from ASSFTActive.finetune.training import SupervisedCase, dice_ce_loss, train_supervised
from ASSFTActive.io import Volume, read_volume
from ASSFTActive.models import build_network
from ASSFTActive.partial import (
    NOT_ANNOTATED,
    annotated_slices_mask,
    read_partial_label,
    split_partial,
    write_partial_label,
)


def _two_slices(shape=(6, 7, 8)):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=shape).astype(np.uint8)
    annotated = annotated_slices_mask(shape, [{"axis": 2, "index": 1}, {"axis": 0, "index": 4}])
    return labels, annotated


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_partial_label_round_trips_with_255_outside_the_annotated_slices(tmp_path, suffix):
    labels, annotated = _two_slices()
    image = Volume(np.zeros(labels.shape, np.float32), rotated_affine())
    path = write_partial_label(labels, annotated, image, tmp_path / f"case{suffix}")
    stored = read_volume(path).array
    assert set(np.unique(stored[~annotated])) == {NOT_ANNOTATED}
    np.testing.assert_array_equal(stored[annotated], labels[annotated])
    read = read_partial_label(path, image, num_classes=3)
    np.testing.assert_array_equal(read.annotated, annotated)
    np.testing.assert_array_equal(read.label.array, np.where(annotated, labels, 0))
    assert read.is_partial and read.is_labelled
    assert read.annotated_voxels == 7 * 8 + 6 * 7 - 7  # two slices sharing one row of voxels
    np.testing.assert_array_equal(read.voxel_mask, annotated)


def test_a_label_without_255_is_a_full_label():
    labels, annotated = split_partial(np.array([[[0, 1], [2, 1]]]), num_classes=3)
    assert annotated.all() and labels.dtype == np.uint8


def test_a_label_with_only_255_is_not_a_labelled_volume(tmp_path):
    image = Volume(np.zeros((4, 4, 4), np.float32), np.eye(4))
    path = write_partial_label(np.zeros((4, 4, 4)), np.zeros((4, 4, 4), bool), image, tmp_path / "none.nii.gz")
    read = read_partial_label(path, image, num_classes=2)
    assert not read.is_labelled and read.annotated_voxels == 0


def test_values_other_than_classes_and_255_are_refused_naming_the_file():
    with pytest.raises(InputError, match=r"case_7.*\[7\].*255"):
        split_partial(np.array([[[0, 7, 255]]]), num_classes=3, where="case_7.nii.gz")
    with pytest.raises(InputError, match="classes"):
        split_partial(np.zeros((1, 1, 1)), num_classes=300)


def test_annotated_slices_outside_the_volume_are_refused():
    with pytest.raises(ValueError, match="outside"):
        annotated_slices_mask((4, 4, 4), [{"axis": 1, "index": 4}])


# ------------------------------------------------------------------------------------------------ the masked loss


def _logits_target(seed=0, shape=(2, 3, 6, 5, 4)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    return logits, target


def test_masked_loss_with_every_voxel_annotated_equals_monai_dice_ce():
    logits, target = _logits_target()
    ours = masked_dice_ce_loss(logits, target, torch.ones_like(target, dtype=torch.float32))
    monai = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])
    assert torch.allclose(ours, monai, atol=1e-6)


def test_unannotated_voxels_get_exactly_zero_gradient_and_do_not_change_the_loss():
    logits, target = _logits_target(1)
    mask = torch.zeros_like(target, dtype=torch.float32)
    mask[:, 2] = 1.0  # one annotated slice per patch
    loss = masked_dice_ce_loss(logits, target, mask)
    loss.backward()
    grad = logits.grad.abs().sum(dim=1)  # [B, X, Y, Z]
    assert torch.all(grad[mask == 0] == 0.0)
    assert torch.all(grad[mask == 1] > 0.0)
    # anything outside the annotated slice, logits or targets, leaves the loss as it was
    other_logits = logits.detach().clone()
    other_logits[:, :, 0] = 50.0
    other_target = target.clone()
    other_target[:, 3] = 2
    assert float(masked_dice_ce_loss(other_logits, other_target, mask)) == pytest.approx(float(loss.detach()))


def test_masked_loss_equals_the_trainers_supervised_loss_under_the_same_mask():
    """The trainer's own ``dice_ce_loss`` (used for labelled cases with a voxel mask) and this MONAI-based one agree,
    so a partial label means the same whichever path trains on it."""
    logits, target = _logits_target(3)
    mask = (torch.rand(target.shape, generator=torch.Generator().manual_seed(4)) > 0.6).float()
    assert torch.allclose(masked_dice_ce_loss(logits, target, mask), dice_ce_loss(logits, target, mask), atol=1e-6)


def test_masked_loss_with_nothing_annotated_is_zero_with_zero_gradient():
    logits, target = _logits_target(2)
    loss = masked_dice_ce_loss(logits, target, torch.zeros_like(target, dtype=torch.float32))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


# ------------------------------------------------------------------------------------------ the trainer's term


def _case(seed: int, annotated: np.ndarray):
    image, label, affine = synthetic_case(seed)
    return SupervisedCase(f"case_{seed}", Volume(image, affine), Volume(label, affine), voxel_mask=annotated)


def test_partial_term_trains_on_annotated_patches_only(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    full = _case(0, None)
    annotated = annotated_slices_mask(full.image.shape, [{"axis": 2, "index": 10}])
    partial = _case(1, annotated)
    term = PartialLabelTerm([partial], weight=0.5)
    network = build_network(card)
    losses = train_supervised(
        network, card, [full], TrainConfig(iterations=2, batch_size=1), terms=[term], device=torch.device("cpu")
    )
    assert len(losses) == 2 and all(np.isfinite(losses))
    images, labels, masks = term.sampler.sample(4)
    assert images.shape[0] == 4 and all(bool(m.any()) for m in masks)  # every patch holds annotated voxels


def test_partial_term_refuses_a_volume_with_no_annotated_voxel():
    image, _, _ = synthetic_case(0)
    with pytest.raises(ValueError, match="not a labelled volume"):
        PartialLabelTerm([_case(0, np.zeros(image.shape, bool))])
