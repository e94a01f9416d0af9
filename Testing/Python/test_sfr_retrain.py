"""SFR stage 3 in the shared trainer: fixed SAM pseudo-label targets, the Mean-Teacher consistency term, SGD.

Known answers on the loss pieces (ramp, softmax MSE, clipped noise, step schedule), then the trainer on the tiny
synthetic world of ``conftest.py``: forward hooks on the student and the teacher record what each saw and produced,
and the logged losses must be exactly the pieces recomputed from those records. Defaults stay Adapt Model's.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
import torch
from conftest import make_tiny_card, synthetic_case

from ASSFTActive.finetune.config import Optimizer, TrainConfig
from ASSFTActive.finetune.training import (
    ProgressHook,
    PseudoLabelTerm,
    ScoreHook,
    SemiParts,
    SupervisedCase,
    TrainSchedule,
    consistency_weight_at,
    dice_ce_loss,
    make_optimizer,
    noisy_view,
    softmax_mse,
    train_supervised,
)
from ASSFTActive.io import Volume
from ASSFTActive.models import build_network, load_card
from ASSFTActive.sfr.retrain import MeanTeacherConfig, mean_teacher_parts, mean_teacher_term, sfr_train_config

CPU = torch.device("cpu")


def _cases(count: int, first_seed: int = 0, background: bool = False) -> List[SupervisedCase]:
    cases = []
    for index in range(count):
        image, label, affine = synthetic_case(first_seed + index)
        volume = Volume(image, affine)
        target = np.zeros_like(label) if background else label
        cases.append(SupervisedCase(f"c{first_seed + index}", volume, volume.with_array(target)))
    return cases


def _record(module: torch.nn.Module, calls: list) -> None:
    module.register_forward_hook(lambda m, args, out: calls.append((args[0].detach().clone(), out.detach().clone())))


# --------------------------------------------------------------------------------------------- loss pieces


def test_consistency_weight_follows_sfrs_epoch_ramp():
    semi = SemiParts(consistency_weight=0.1, consistency_rampup=40, consistency_epoch_steps=150)
    assert consistency_weight_at(0, semi) == pytest.approx(0.1 * np.exp(-5.0))
    assert consistency_weight_at(149, semi) == pytest.approx(0.1 * np.exp(-5.0))  # e = step // 150
    assert consistency_weight_at(20 * 150, semi) == pytest.approx(0.1 * np.exp(-5.0 * 0.25))
    assert consistency_weight_at(40 * 150, semi) == pytest.approx(0.1)
    assert consistency_weight_at(10**6, semi) == pytest.approx(0.1)  # min(e/40, 1)
    assert consistency_weight_at(5, SemiParts()) == 0.0  # off by default


def test_softmax_mse_is_the_mean_squared_difference_of_the_softmaxes():
    student = torch.zeros(1, 2, 2, 2, 2)  # softmax 0.5 / 0.5 everywhere
    teacher = torch.zeros(1, 2, 2, 2, 2)
    teacher[:, 0] = 50.0  # softmax 1 / 0
    assert float(softmax_mse(student, teacher)) == pytest.approx(0.25)
    assert float(softmax_mse(teacher, teacher)) == 0.0
    logits = torch.randn(1, 2, 2, 2, 2, requires_grad=True)
    softmax_mse(logits, teacher.requires_grad_()).backward()
    assert teacher.grad is None  # no gradient into the teacher


def test_teacher_noise_is_gaussian_clipped_at_the_bound():
    torch.manual_seed(0)
    x = torch.zeros(200_000)
    noise = noisy_view(x, 0.1, 0.2) - x
    assert float(noise.abs().max()) <= 0.2 + 1e-7
    assert float(noise.abs().max()) == pytest.approx(0.2)  # clipping happens (2 sigma)
    assert 0.085 < float(noise.std()) < 0.1
    assert abs(float(noise.mean())) < 1e-3


def test_sgd_with_a_step_schedule_divides_the_rate_by_ten_every_n_steps():
    config = TrainConfig(iterations=10, learning_rate=0.01, weight_decay=1e-4, optimizer="sgd", lr_step_every=3)
    assert config.optimizer is Optimizer.SGD
    optimizer, scheduler = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], config)
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.9, 1e-4)
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.01] * 3 + [0.001] * 3 + [0.0001])
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["optimizer"] == "sgd"


def test_the_defaults_are_adapt_models_adamw_cosine_without_sfr_parts():
    config, semi = TrainConfig(), SemiParts()
    assert (config.optimizer, config.lr_step_every) == (Optimizer.ADAMW, None)
    assert (semi.fixed_pseudo_weight, semi.consistency_weight) == (None, 0.0)
    optimizer, scheduler = make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))]}], config)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_sfrs_settings_are_the_released_codes():
    config = sfr_train_config()
    assert (config.optimizer, config.learning_rate, config.momentum, config.weight_decay) == (
        Optimizer.SGD,
        0.01,
        0.9,
        1e-4,
    )
    assert (config.lr_step_every, config.lr_step_gamma, config.iterations, config.batch_size) == (2500, 0.1, 6000, 2)
    semi = mean_teacher_parts(MeanTeacherConfig())
    assert (
        semi.fixed_pseudo_weight,
        semi.consistency_weight,
        semi.consistency_rampup,
        semi.consistency_epoch_steps,
        semi.noise_std,
        semi.noise_clip,
        semi.ema_decay,
    ) == (1.0, 0.1, 40, 150, 0.1, 0.2, 0.99)
    assert (semi.voxel_threshold, semi.strong_view, semi.cutmix_probability) == (None, False, 0.0)
    assert MeanTeacherConfig.from_dict(MeanTeacherConfig().to_dict()) == MeanTeacherConfig()


# --------------------------------------------------------------------------------------------- the trainer


def test_fixed_pseudo_targets_stay_and_are_weighted_by_a_constant(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network, teacher = build_network(card), build_network(card)
    student_calls, teacher_calls, events = [], [], []
    _record(network, student_calls)
    _record(teacher, teacher_calls)
    config = TrainConfig(iterations=3, batch_size=1, learning_rate=0.01, augment=False, seed=3)
    # pseudo-labels all background on images with foreground: a teacher's argmax would not give that
    train_supervised(
        network,
        card,
        _cases(1),
        config,
        device=CPU,
        terms=[PseudoLabelTerm(_cases(1, 10, background=True), SemiParts(fixed_pseudo_weight=0.7), teacher)],
        hooks=[ProgressHook(events.append)],
    )
    assert teacher_calls == []  # the EMA teacher labels nothing
    metrics = [e.metrics for e in events if e.event == "progress"]
    assert [m["pseudo_weight"] for m in metrics] == [0.7] * 3  # no ramp
    assert "loss_consistency" not in metrics[0]
    _, logits = student_calls[1]  # step 0: labelled batch, then the pseudo batch
    expected = dice_ce_loss(logits, torch.zeros(logits.shape[:1] + logits.shape[2:], dtype=torch.long))
    assert metrics[0]["loss_pseudo"] == pytest.approx(float(expected), rel=1e-5)


def test_the_ema_teacher_adds_the_consistency_term_on_a_noisy_view(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    teacher = build_network(card)
    teacher.load_state_dict(network.state_dict())
    student_calls, teacher_calls, events = [], [], []
    _record(network, student_calls)
    _record(teacher, teacher_calls)
    config = TrainConfig(iterations=4, batch_size=1, learning_rate=0.01, augment=False, seed=5)
    semi = SemiParts(fixed_pseudo_weight=1.0, consistency_weight=0.1, consistency_rampup=1, consistency_epoch_steps=2)
    train_supervised(
        network,
        card,
        _cases(1),
        config,
        device=CPU,
        terms=[PseudoLabelTerm(_cases(1, 10), semi, teacher)],
        hooks=[ProgressHook(events.append)],
    )
    assert len(teacher_calls) == 4  # once per step, on the unlabelled patches
    metrics = [e.metrics for e in events if e.event == "progress"]
    assert [m["consistency_weight"] for m in metrics] == pytest.approx([0.1 * np.exp(-5.0)] * 2 + [0.1] * 2)
    student_in, student_out = student_calls[1]
    teacher_in, teacher_out = teacher_calls[0]
    difference = (teacher_in - student_in).abs()
    assert 0.0 < float(difference.max()) <= 0.2 + 1e-6  # x + clipped noise
    assert metrics[0]["loss_consistency"] == pytest.approx(float(softmax_mse(student_out, teacher_out)), rel=1e-5)
    first = metrics[0]
    total = (
        first["loss_labeled"]
        + first["pseudo_weight"] * first["loss_pseudo"]
        + (first["consistency_weight"] * first["loss_consistency"])
    )
    assert first["loss"] == pytest.approx(total, rel=1e-5)


def test_consistency_without_a_teacher_is_refused(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    with pytest.raises(ValueError, match="teacher"):
        train_supervised(
            build_network(card),
            card,
            _cases(1),
            TrainConfig(iterations=1),
            device=CPU,
            terms=[PseudoLabelTerm(_cases(1, 10), SemiParts(consistency_weight=0.1))],
        )


def test_mean_teacher_re_training_scores_along_the_way_and_stops_early(tmp_path, one_thread):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    scored = []
    config = sfr_train_config(iterations=6, batch_size=1, augment=False, lr_step_every=4)
    losses = train_supervised(
        network,
        card,
        _cases(1),
        config,
        device=CPU,
        terms=[mean_teacher_term(network, _cases(1, 10), MeanTeacherConfig())],
        hooks=[ScoreHook(lambda net, step: scored.append(step))],
        schedule=TrainSchedule(stop=5, validate_every=2),
    )
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert scored == [2, 4, 5]
