"""The patch trainer: ramp weight, EMA teacher, checkpoints and resume, on a tiny network and synthetic volumes.

The tiny card and the box volumes are the synthetic world of ``conftest.py``, which the other fine-tuning, store,
worker and CLI tests share.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_cases, make_tiny_card, write_dataset

from ASSFTActive.finetune.config import TrainConfig
from ASSFTActive.finetune.training import (
    CheckpointHook,
    ProgressHook,
    PseudoLabelTerm,
    SemiParts,
    TrainSchedule,
    dice_ce_loss,
    ema_update,
    l2sp_penalty,
    parameter_groups,
    pseudo_weight_at,
    train_supervised,
)
from ASSFTActive.models import build_network, load_card

# --------------------------------------------------------------------------------------------- tests


def test_pseudo_weight_follows_the_gaussian_ramp_then_stays_at_its_maximum():
    config = TrainConfig(iterations=100, pseudo_weight=2.0, rampup_fraction=0.4)
    assert pseudo_weight_at(0, config) == pytest.approx(2.0 * np.exp(-5.0))
    assert pseudo_weight_at(20, config) == pytest.approx(2.0 * np.exp(-5.0 * 0.25))
    assert pseudo_weight_at(40, config) == pytest.approx(2.0)
    assert pseudo_weight_at(90, config) == pytest.approx(2.0)


def test_ema_update_moves_the_teacher_towards_the_student_by_one_minus_decay():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        student.weight.fill_(1.0)
        teacher.weight.fill_(0.0)
    ema_update(teacher, student, decay=0.9)
    assert torch.allclose(teacher.weight, torch.full_like(teacher.weight, 0.1))


def test_dice_ce_loss_ignores_masked_voxels():
    logits = torch.zeros(1, 3, 4, 4, 4)
    logits[:, 1] = 5.0
    target = torch.ones(1, 4, 4, 4, dtype=torch.long)
    wrong = target.clone()
    wrong[..., :2] = 2
    mask = torch.ones(1, 4, 4, 4)
    mask[..., :2] = 0.0
    assert float(dice_ce_loss(logits, wrong, mask)) == pytest.approx(
        float(dice_ce_loss(logits, target, mask)), abs=1e-4
    )
    assert float(dice_ce_loss(logits, wrong)) > float(dice_ce_loss(logits, target)) + 0.5


def test_training_lowers_the_loss_on_synthetic_boxes(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    config = TrainConfig(iterations=60, batch_size=2, learning_rate=0.01, seed=1)
    losses = train_supervised(network, card, box_cases(3), config, device=torch.device("cpu"))
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert not network.training


def test_ema_teacher_labels_pseudo_patches_and_is_handed_to_checkpoints(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    teacher = build_network(card)
    teacher.load_state_dict(network.state_dict())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []
    config = TrainConfig(iterations=6, batch_size=1, learning_rate=0.01)
    semi = SemiParts(ema_decay=0.5, voxel_threshold=0.5, class_keep_min=0.5, strong_view=True, cutmix_probability=0.5)
    train_supervised(
        network,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), semi, teacher)],
        hooks=[CheckpointHook(3, lambda step, net, state: seen.append((step, sorted(state))))],
    )
    assert seen == [(3, ["optimizer", "scheduler", "teacher"]), (6, ["optimizer", "scheduler", "teacher"])]
    changed = [
        k for k, v in teacher.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert changed, "the EMA teacher did not follow the student"


def test_resuming_from_a_checkpoint_continues_the_step_count_and_schedule(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    saved = {}

    def keep(step, net, state):
        saved["step"], saved["state"] = step, state
        saved["weights"] = {k: v.clone() for k, v in net.state_dict().items()}

    config = TrainConfig(iterations=10, batch_size=1, learning_rate=0.01)
    train_supervised(network, card, box_cases(2), config, device=torch.device("cpu"), hooks=[CheckpointHook(5, keep)])
    resumed = build_network(card)
    resumed.load_state_dict(saved["weights"])
    events = []
    losses = train_supervised(
        resumed,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        schedule=TrainSchedule(start=10 - 5, resume_state=saved["state"]),
        hooks=[ProgressHook(events.append)],
    )
    assert len(losses) == 5
    assert [e.step for e in events] == [6, 7, 8, 9, 10]


def test_encoder_stages_learn_at_the_scaled_rate_and_freeze_at_zero(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    groups = parameter_groups(network, card.encoder_stages, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    encoder_names = {
        n for n, _ in network.named_parameters() if n.startswith(tuple(f"{s}." for s in card.encoder_stages))
    }
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in network.named_parameters() if n in encoder_names}
    frozen = parameter_groups(network, card.encoder_stages, 1e-3, 0.0)
    assert len(frozen) == 1
    assert all(not p.requires_grad for n, p in network.named_parameters() if n in encoder_names)
    assert all(p.requires_grad for n, p in network.named_parameters() if n not in encoder_names)


def test_a_frozen_encoder_does_not_move_during_training(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    start = {n: p.detach().clone() for n, p in network.named_parameters()}
    train_supervised(
        network,
        card,
        box_cases(2),
        TrainConfig(iterations=4, batch_size=1, learning_rate=0.01, encoder_lr_scale=0.0),
        device=torch.device("cpu"),
    )
    moved = {n for n, p in network.named_parameters() if not torch.equal(p, start[n])}
    assert moved and not any(n.startswith("model.0.") for n in moved)


def test_l2sp_penalty_is_the_squared_distance_to_the_anchor():
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[1.0, 2.0]]))
        network.bias.fill_(3.0)
    anchor = {"weight": torch.zeros(1, 2), "bias": torch.tensor([1.0])}
    assert float(l2sp_penalty(network, anchor).detach()) == pytest.approx(1 + 4 + 4)


def test_l2sp_keeps_the_weights_closer_to_where_they_started(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    distances = []
    for weight in (0.0, 1.0):
        network = build_network(card)
        start = {n: p.detach().clone() for n, p in network.named_parameters()}
        train_supervised(
            network,
            card,
            box_cases(2),
            TrainConfig(iterations=15, batch_size=1, learning_rate=0.01, l2sp_weight=weight, seed=3),
            device=torch.device("cpu"),
        )
        distances.append(float(l2sp_penalty(network, start).detach()))
    assert distances[1] < 0.8 * distances[0]


def test_stop_at_ends_early_on_the_full_run_schedule(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    events = []
    losses = train_supervised(
        build_network(card),
        card,
        box_cases(2),
        TrainConfig(iterations=10, batch_size=1),
        device=torch.device("cpu"),
        schedule=TrainSchedule(stop=4),
        hooks=[ProgressHook(events.append)],
    )
    assert len(losses) == 4 and [e.total for e in events] == [10] * 4


def test_patches_larger_than_the_volume_are_padded_as_sliding_window_inference_pads(tmp_path):
    """The regression behind issue 8: padding with the image minimum taught the network a border it never sees."""
    from ASSFTActive.finetune.training import _PatchSampler
    from ASSFTActive.inference.preprocess import PAD_VALUE

    card = load_card(make_tiny_card(tmp_path / "model"))
    case = box_cases(1)[0]
    config = TrainConfig(augment=False, foreground_fraction=0.0)
    sampler = _PatchSampler(card, [case], (32, 32, 28), config, np.random.default_rng(0))
    image, label, _, _ = sampler.items[0]
    assert image.shape[1:] == (32, 32, 28) and image.min() < PAD_VALUE - 0.5, "normalised values go below the pad"
    border = image[0, :4]  # SHAPE is 24 wide: 4 padded planes on each side
    assert torch.all(border == PAD_VALUE) and torch.all(label[:4] == 0)
    import inspect

    from ASSFTActive import inference

    source = inspect.getsource(inference.Predictor._sliding_window)
    assert "cval=PAD_VALUE" in source and 'padding_mode="constant"' in source


def test_synthetic_helpers_write_matching_images_and_labels(tmp_path):
    images, labels = write_dataset(tmp_path, count=3, labeled=2)
    assert sorted(images) == ["case_000", "case_001", "case_002"] and sorted(labels) == ["case_000", "case_001"]
    from ASSFTActive.io import read_label, read_volume

    image = read_volume(images["case_000"])
    label = read_label(labels["case_000"], image, 3)
    assert set(np.unique(label.array)) == {0, 1, 2}
    assert float(image.array[label.array == 2].mean()) > float(image.array[label.array == 1].mean())


def test_the_spatial_view_moves_every_pseudo_batch_with_its_targets(tmp_path, one_thread, monkeypatch):
    from ASSFTActive.finetune import training

    calls = []

    class Recording(training.SpatialJitter):
        def __call__(self, images, labels, masks):
            out = super().__call__(images, labels, masks)
            calls.append((tuple(images.shape), tuple(out[1].shape), out[1].dtype))
            return out

    monkeypatch.setattr(training, "SpatialJitter", Recording)
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    teacher = build_network(card)
    teacher.load_state_dict(network.state_dict())
    config = TrainConfig(iterations=4, batch_size=1, learning_rate=0.01)
    semi = SemiParts(voxel_threshold=0.5, strong_view=True, spatial_view=True)
    losses = train_supervised(
        network,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), semi, teacher)],
    )
    assert len(calls) == 4 and all(dtype == torch.long for _, _, dtype in calls)
    assert np.isfinite(losses).all()
    calls.clear()
    train_supervised(
        network,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), SemiParts(strong_view=True), teacher)],
    )
    assert calls == [], "only when asked for (SemiParts)"
