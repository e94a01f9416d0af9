"""SFR pseudo-labels: SAM on a stitched volume un-stitched to 3D probabilities; SFR+ confidence and selection;
the stitched fine-tuning loss that ignores padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ASSFTActive.sfr.loss import stitched_dice_ce
from ASSFTActive.sfr.pseudo import (
    predict_volume,
    sfr_plus_confidence,
    sfr_plus_select,
    sfr_plus_voxel_mask,
    volume_layout,
)
from ASSFTActive.sfr.sam import SamConfig, apply_lora, build_sam
from ASSFTActive.sfr.stitching import IGNORE_INDEX, stitch, stitch_labels


class _SignModel(nn.Module):
    """A stand-in segmenter with a known answer: class 1 where the canvas pixel is positive, 10x logits."""

    def __init__(self, image_size: int):
        super().__init__()
        self.config = SamConfig.tiny(image_size=image_size)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.scale * x, self.scale * x], dim=1)


def _blob(shape=(20, 24, 12), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    centre = rng.uniform(-0.3, 0.3, size=(3, 1, 1, 1))
    return (0.5 - np.sqrt(((grid - centre) ** 2).sum(0))).astype(np.float32)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_unstitched_prediction_lands_on_the_voxels_it_was_made_for(slice_axis):
    volume = _blob()
    model = _SignModel(image_size=128).eval()
    probs = predict_volume(model, volume, slice_axis=slice_axis)
    assert probs.shape == (2,) + volume.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), (volume > 0).astype(np.int64))
    assert not volume_layout(volume.shape, 128, slice_axis).resized


def test_prediction_through_a_resizing_layout_still_finds_the_object():
    volume = _blob((40, 40, 30))
    model = _SignModel(image_size=64).eval()
    assert volume_layout(volume.shape, 64).resized
    probs = predict_volume(model, volume)
    truth, found = volume > 0, probs.argmax(0) == 1
    assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.9


def test_tiny_sam_gives_a_probability_volume_per_class():
    model = build_sam(SamConfig.tiny(num_mask_tokens=3, image_size=64), seed=0).eval()
    probs = predict_volume(model, np.random.default_rng(0).standard_normal((16, 18, 10)).astype(np.float32))
    assert probs.shape == (3, 16, 18, 10)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_sfr_plus_confidence_is_the_mean_max_prob_inside_the_predicted_foreground():
    probs = np.zeros((2, 2, 2, 1), np.float32)
    probs[1] = [[[0.9], [0.7]], [[0.2], [0.4]]]
    probs[0] = 1 - probs[1]
    assert sfr_plus_confidence(probs) == pytest.approx(0.8)
    assert sfr_plus_confidence(np.stack([np.ones((2, 2, 2)), np.zeros((2, 2, 2))]), empty_value=0.25) == 0.25
    mask = sfr_plus_voxel_mask(probs, threshold=0.75)
    np.testing.assert_array_equal(mask[..., 0], [[True, False], [True, False]])
    with pytest.raises(ValueError, match="threshold"):
        sfr_plus_voxel_mask(probs, threshold=1.5)


def test_sfr_plus_keeps_the_most_confident_share_of_the_pool():
    decisions = sfr_plus_select(["a", "b", "c", "d", "e"], [0.5, 0.9, 0.7, 0.6, 0.95], kappa=0.4)
    assert [d.case_id for d in decisions if d.kept] == ["b", "e"]
    assert [d.rank for d in decisions] == [5, 2, 3, 4, 1]
    assert sum(d.kept for d in sfr_plus_select(["a", "b", "c"], [0.1, 0.2, 0.3], kappa=0.2)) == 1
    with pytest.raises(ValueError, match="kappa"):
        sfr_plus_select(["a"], [0.5], kappa=0.0)


def test_stitched_loss_ignores_padding_pixels():
    logits = torch.randn(1, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (1, 16, 16))
    target[:, :, 8:] = IGNORE_INDEX
    loss = stitched_dice_ce(logits, target)
    changed = logits.detach().clone()
    changed[..., 8:] = torch.randn(1, 3, 16, 8) * 100  # what the ignored pixels predict does not matter
    assert torch.allclose(stitched_dice_ce(changed, target), loss)
    loss.backward()
    assert torch.count_nonzero(logits.grad[..., 8:]) == 0
    everything_ignored = torch.full((1, 16, 16), IGNORE_INDEX)
    assert stitched_dice_ce(logits, everything_ignored).item() == 0.0
    with pytest.raises(ValueError, match="labels must lie"):
        stitched_dice_ce(logits, torch.full((1, 16, 16), 7))


def test_tiny_sam_with_lora_learns_a_stitched_volume():
    torch.manual_seed(0)
    volume = _blob((12, 14, 8), seed=1)
    layout = volume_layout(volume.shape, 64)
    slices = torch.from_numpy(np.moveaxis(volume, 2, 0).copy())
    image = stitch(slices, layout)[None, None]
    target = stitch_labels(torch.from_numpy(np.moveaxis(volume > 0, 2, 0).astype(np.int64)), layout)[None]
    model = build_sam(SamConfig.tiny(num_mask_tokens=2, image_size=64), seed=0)
    apply_lora(model, rank=4)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.1)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = stitched_dice_ce(model(image), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    probs = predict_volume(model.eval(), volume)
    truth, found = volume > 0, probs.argmax(0) == 1
    assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) > 0.7
    assert F.softmax(model(image), 1).shape == (1, 2, 64, 64)
