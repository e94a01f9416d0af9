"""A pseudo-labeller that is not the student: the frozen current model with flip test-time augmentation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ASSFTActive.finetune.teachers import ALL_SINGLE_FLIPS, FrozenFlipTeacher, flip_tta_probabilities


class _Position(nn.Module):
    """Logits that depend on the voxel's position along X, so a flip changes the raw output."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        ramp = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1).expand_as(x)
        return torch.cat([x * 0, self.weight * (x + ramp)], dim=1)


def test_the_teacher_gives_the_mean_of_the_flipped_back_predictions_of_the_frozen_model():
    torch.manual_seed(0)
    net = _Position()
    images = torch.randn(2, 1, 4, 3, 2)
    expected = torch.zeros(2, 2, 4, 3, 2)
    for dims in ALL_SINGLE_FLIPS:
        view = torch.flip(images, dims) if dims else images
        probs = torch.softmax(net(view), dim=1)
        expected += (torch.flip(probs, dims) if dims else probs) / 4
    teacher = FrozenFlipTeacher(net)
    assert torch.allclose(teacher.probabilities(images), expected, atol=1e-6)
    plain = torch.softmax(net(images), dim=1)
    assert not torch.allclose(expected, plain, atol=1e-3), "the flips matter for this network"
    assert torch.allclose(flip_tta_probabilities(net, images, [()]), plain, atol=1e-6)


def test_the_teacher_stays_frozen_while_the_student_trains():
    student = _Position()
    teacher = FrozenFlipTeacher(student)
    images = torch.randn(1, 1, 4, 3, 2)
    before = teacher.probabilities(images)
    with torch.no_grad():
        student.weight.mul_(5.0)
    assert torch.equal(teacher.probabilities(images), before)
    assert not any(p.requires_grad for p in teacher.network.parameters()) and not teacher.network.training
    with pytest.raises(ValueError, match="at least one pass"):
        flip_tta_probabilities(student, images, [])
