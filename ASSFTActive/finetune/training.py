"""The training loop: Dice+CE on foreground-aware patches, with optional weighted pseudo-labelled cases.

Each iteration draws ``batch_size`` patches from the labelled cases and, when pseudo-labelled cases are given, the
same number from them (a fixed 1:1 ratio, so every batch holds expert labels); the pseudo-labelled loss is weighted
by the ramp ``w(t)`` of method-spec §1.7 and may be restricted to confident voxels. With a teacher network (Mean
Teacher) the pseudo-labels come from the teacher on the weak view; the student may see a strong view with labelled
boxes pasted in (:mod:`.semi`). Two protections of the prior: lower learning rates for the encoder stages and an
L2-SP penalty toward the starting weights (:class:`~.config.TrainConfig`).

SFR's Mean-Teacher re-training (method-spec §2.3) is a configuration of the same loop, with two teachers: the
fine-tuned SAM is an offline teacher whose hard pseudo-labels stay the targets of the pseudo-labelled patches at a
constant weight (:attr:`SemiParts.fixed_pseudo_weight`), and the EMA teacher adds a consistency term, the softmax MSE
between the student on a patch and the teacher on the same patch plus clipped Gaussian noise, ramped up by
:func:`consistency_weight_at` (:attr:`SemiParts.consistency_weight`). Both are off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference import default_device
from ..io import Volume
from ..models import ModelCard
from ..preprocess import PAD_VALUE, label_to_model_space, to_model_space
from ..progress import ProgressCallback, emit
from .config import Optimizer, TrainConfig
from .semi import SpatialJitter, StrongView, confident_voxels, paste_labelled_boxes

__all__ = ["SemiParts", "SupervisedCase", "TrainConfig", "consistency_weight_at", "dice_ce_loss", "ema_update",
           "l2sp_penalty", "make_optimizer", "noisy_view", "parameter_groups", "pseudo_weight_at", "softmax_mse",
           "train_supervised"]


@dataclass(frozen=True)
class SupervisedCase:
    """A training volume with its (true or pseudo) label map on the same grid.

    Attributes:
        voxel_mask: optional bool ``[I, J, K]``; only these voxels count in the loss (confident pseudo-labels).
    """

    case_id: str
    image: Volume
    label: Volume
    voxel_mask: Optional[np.ndarray] = None


def pseudo_weight_at(step: int, config: TrainConfig) -> float:
    """``w(t) = w_max·exp(-5(1 - t/t_ramp)²)`` for t < t_ramp, then ``w_max`` (method-spec §1.7)."""
    ramp = max(1.0, config.rampup_fraction * config.iterations)
    t = min(1.0, step / ramp)
    return float(config.pseudo_weight * np.exp(-5.0 * (1.0 - t) ** 2))


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of soft Dice loss (foreground classes) and cross-entropy.

    Args:
        logits: ``[B, C, X, Y, Z]``.
        target: class indices ``[B, X, Y, Z]`` (int64).
        mask: optional ``[B, X, Y, Z]`` float weights (1 = voxel counts).
    """
    num_classes = logits.shape[1]
    weight = torch.ones_like(target, dtype=logits.dtype) if mask is None else mask.to(logits.dtype)
    ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, num_classes).permute(0, 4, 1, 2, 3).to(probs.dtype)
    w = weight[:, None]
    dims = (0, 2, 3, 4)
    intersection = (probs * onehot * w).sum(dims)
    denominator = (probs * w).sum(dims) + (onehot * w).sum(dims)
    dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    return ce + (1.0 - dice[1:].mean())


class _PatchSampler:
    """Random patches from cases held in model space: images ``[1, X, Y, Z]``, labels ``[X, Y, Z]``."""

    def __init__(self, card: ModelCard, cases: Sequence[SupervisedCase], patch: Tuple[int, int, int],
                 config: TrainConfig, rng: np.random.Generator):
        self.patch = patch
        self.config = config
        self.rng = rng
        self.items = []
        for case in cases:
            image, space = to_model_space(case.image, card)
            label = torch.from_numpy(label_to_model_space(case.label.array, space)).long()
            mask = None
            if case.voxel_mask is not None:
                mask = torch.from_numpy(label_to_model_space(case.voxel_mask.astype(np.uint8), space)).float()
            image, label, mask = self._pad(image, label, mask)
            foreground = torch.nonzero(label > 0).numpy()
            self.items.append((image, label, mask, foreground))

    def _pad(self, image, label, mask):
        pads = []
        for size, want in zip(reversed(image.shape[1:]), reversed(self.patch)):
            extra = max(0, want - size)
            pads += [extra // 2, extra - extra // 2]
        if any(pads):
            image = F.pad(image, pads, value=PAD_VALUE)  # as sliding-window inference pads
            label = F.pad(label, pads, value=0)
            mask = F.pad(mask, pads, value=0.0) if mask is not None else None
        return image, label, mask

    def sample(self, count: int):
        images, labels, masks = [], [], []
        for _ in range(count):
            image, label, mask, foreground = self.items[self.rng.integers(len(self.items))]
            shape = np.array(label.shape)
            half = np.array(self.patch) // 2
            if len(foreground) and self.rng.random() < self.config.foreground_fraction:
                centre = foreground[self.rng.integers(len(foreground))]
            else:
                centre = np.array([self.rng.integers(s) for s in shape])
            start = np.clip(centre - half, 0, shape - np.array(self.patch))
            sl = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch))
            patch = image[(slice(None),) + sl].clone()
            if self.config.augment:
                patch = self._augment(patch)
            images.append(patch)
            labels.append(label[sl])
            masks.append(mask[sl] if mask is not None else torch.ones(self.patch))
        return torch.stack(images), torch.stack(labels), torch.stack(masks)

    def _augment(self, patch: torch.Tensor) -> torch.Tensor:
        rng = self.rng
        lo = patch.min()
        span = (patch.max() - lo).clamp_min(1e-6)
        if rng.random() < 0.3:
            gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
            patch = ((patch - lo) / span).pow(gamma) * span + lo
        patch = patch * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
        if rng.random() < 0.2:
            patch = patch + torch.from_numpy(rng.normal(0, 0.05, patch.shape).astype(np.float32))
        return patch


def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """Mean-Teacher update ``t <- decay·t + (1 - decay)·s`` of every floating parameter and buffer, in place."""
    student = getattr(student, "module", student)  # DistributedDataParallel wraps the network
    with torch.no_grad():
        teacher_state = teacher.state_dict()
        for key, value in student.state_dict().items():
            target = teacher_state[key]
            if target.dtype.is_floating_point:
                target.mul_(decay).add_(value.detach().to(target.device), alpha=1.0 - decay)
            else:
                target.copy_(value)


def parameter_groups(network: nn.Module, encoder_stages: Sequence[str], learning_rate: float,
                     encoder_lr_scale: float) -> List[dict]:
    """AdamW parameter groups: encoder-stage parameters at ``learning_rate × encoder_lr_scale``, the rest at
    ``learning_rate``. With a scale of 0 the encoder parameters are frozen (``requires_grad=False``) and left out.

    Args:
        network: the model (a ``DistributedDataParallel`` wrapper is looked through).
        encoder_stages: module names of the encoder stages (the card's ``encoder_stages``).
    """
    network = getattr(network, "module", network)
    prefixes = tuple(f"{stage}." for stage in encoder_stages)
    encoder, rest = [], []
    for name, parameter in network.named_parameters():
        (encoder if name.startswith(prefixes) else rest).append(parameter)
    groups = [{"params": rest, "lr": learning_rate}]
    if encoder_lr_scale == 0.0:
        for parameter in encoder:
            parameter.requires_grad_(False)
    elif encoder:
        groups.append({"params": encoder, "lr": learning_rate * encoder_lr_scale})
    return groups


def l2sp_penalty(network: nn.Module, anchor: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``Σ (w - w0)²`` over the trainable parameters named in ``anchor`` (L2-SP, Li et al. 2018).

    Args:
        network: the model (a ``DistributedDataParallel`` wrapper is looked through).
        anchor: ``{parameter name: starting value}`` on the network's device.
    """
    network = getattr(network, "module", network)
    total = None
    for name, parameter in network.named_parameters():
        if parameter.requires_grad and name in anchor:
            term = (parameter - anchor[name]).pow(2).sum()
            total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher's consistency: ``mean((softmax(s) - softmax(t))²)`` over every element of ``[B, C, X, Y, Z]``
    (the teacher side carries no gradient).

    References:
        Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017; ``softmax_mse_loss`` of the
        SFR / UA-MT code (method-spec §2.3).
    """
    student = torch.softmax(student_logits.float(), dim=1)
    teacher = torch.softmax(teacher_logits.detach().float(), dim=1)
    return (student - teacher).pow(2).mean()


def noisy_view(images: torch.Tensor, std: float, clip: float) -> torch.Tensor:
    """``x + clamp(N(0, std²), -clip, clip)``, a new tensor (the teacher's input in SFR's Mean Teacher)."""
    return images + torch.clamp(torch.randn_like(images) * std, -clip, clip)


@dataclass(frozen=True)
class SemiParts:
    """How pseudo-labelled patches are used (see :class:`~.config.PseudoLabelConfig` for each setting).

    Attributes:
        voxel_threshold: with a teacher network, only voxels whose teacher confidence reaches this count (``None``
            = all voxels).
        class_keep_min: class-aware relaxation of that threshold (:func:`~.semi.confident_voxels`).
        strong_view: the student sees :class:`~.semi.StrongView` of the patch.
        spatial_view: the student's view, its targets and mask are moved by :class:`~.semi.SpatialJitter`.
        cutmix_probability: chance of a labelled box pasted into a pseudo-labelled patch.
        ema_decay: decay of the EMA teacher.
        fixed_pseudo_weight: ``None`` (default): with a teacher network the pseudo-labelled patches are labelled by
            the teacher, else their fixed labels are weighted by the ramp :func:`pseudo_weight_at`. A number ``w``:
            the pseudo-labelled cases keep their fixed labels (and voxel masks) even with a teacher, weighted by the
            constant ``w`` (SFR: the fine-tuned SAM's hard pseudo-labels at weight 1, method-spec §2.3); the
            teacher's masks (``voxel_threshold``) are not applied to them.
        consistency_weight: ``λ_max`` of the Mean-Teacher consistency term ``λ(t)·softmax_mse(student(x),
            teacher(x + ξ))`` over the pseudo-labelled (unlabelled) patches; 0 (default) = off. Needs a teacher
            network. SFR: 0.1.
        consistency_rampup: ramp length in "epochs" of ``consistency_epoch_steps`` steps (SFR: 40 × 150), see
            :func:`consistency_weight_at`.
        consistency_epoch_steps: steps per "epoch" of that ramp, 150.
        noise_std: std of the teacher's input noise ``ξ``, 0.1; ``noise_clip``: ``ξ`` is clipped to ``±noise_clip``,
            0.2.
    """

    voxel_threshold: Optional[float] = None
    class_keep_min: float = 0.0
    strong_view: bool = False
    spatial_view: bool = False
    cutmix_probability: float = 0.0
    ema_decay: float = 0.99
    fixed_pseudo_weight: Optional[float] = None
    consistency_weight: float = 0.0
    consistency_rampup: int = 40
    consistency_epoch_steps: int = 150
    noise_std: float = 0.1
    noise_clip: float = 0.2


def consistency_weight_at(step: int, semi: SemiParts) -> float:
    """SFR's ramp ``λ(t) = λ_max·exp(-5(1 - min(e/R, 1))²)`` with ``e = step // consistency_epoch_steps`` and
    ``R = consistency_rampup`` (``λ_max`` from the start when ``R`` is 0)."""
    if semi.consistency_rampup <= 0:
        return float(semi.consistency_weight)
    epoch = step // max(1, semi.consistency_epoch_steps)
    t = min(1.0, epoch / semi.consistency_rampup)
    return float(semi.consistency_weight * np.exp(-5.0 * (1.0 - t) ** 2))


def make_optimizer(groups: List[dict], config: TrainConfig) -> Tuple[torch.optim.Optimizer, object]:
    """The optimiser and learning-rate scheduler of ``config``: AdamW or SGD with momentum, and a cosine decay to
    5 % over ``iterations`` or a step decay ``× lr_step_gamma`` every ``lr_step_every`` steps."""
    if config.optimizer == Optimizer.SGD:
        optimizer = torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.lr_step_every is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_every,
                                                    gamma=config.lr_step_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations,
                                                               eta_min=config.learning_rate * 0.05)
    return optimizer, scheduler


def train_supervised(network: nn.Module, card: ModelCard, labeled: Sequence[SupervisedCase],
                     config: TrainConfig, pseudo: Sequence[SupervisedCase] = (),
                     progress: Optional[ProgressCallback] = None, device: Optional[torch.device] = None,
                     start_step: int = 0, optimizer_state: Optional[Mapping] = None,
                     checkpoint: Optional[Callable] = None, checkpoint_every: int = 0, *,
                     teacher: Optional[nn.Module] = None, semi: SemiParts = SemiParts(),
                     encoder_stages: Sequence[str] = (), anchor: Optional[Mapping[str, torch.Tensor]] = None,
                     stop_at: Optional[int] = None, rank: int = 0) -> List[float]:
    """Train ``network`` in place; returns the loss of every step.

    Args:
        network: the model to train (moved to ``device``); may be wrapped in ``DistributedDataParallel``.
        card: the model card (preprocessing, default patch size).
        labeled: cases with expert labels.
        config: optimisation settings.
        pseudo: pseudo-labelled cases, weighted by the ramp :func:`pseudo_weight_at` (or the constant
            ``semi.fixed_pseudo_weight``).
        progress: receives a ``progress`` event per step; may raise ``CancelledError``.
        device: compute device (default CUDA when present).
        start_step: resume from this step (with ``optimizer_state``).
        optimizer_state: ``{"optimizer": ..., "scheduler": ...}`` as handed to ``checkpoint``.
        checkpoint: called as ``checkpoint(step, network, state)`` every ``checkpoint_every`` steps, where
            ``state`` holds the optimizer and scheduler state (and ``"teacher"``, the EMA teacher's state dict,
            when there is one). The network is put back in training mode afterwards, so the callback may evaluate.
        teacher: an EMA teacher (Mean Teacher, method-spec §1.7): when given, each pseudo-labelled patch is
            labelled by the teacher's argmax on the weak view instead of the fixed pseudo-label, and the teacher
            follows the student by :func:`ema_update` after every step. The caller restores its state when
            resuming. With ``semi.fixed_pseudo_weight`` set the fixed pseudo-labels stay, and with
            ``semi.consistency_weight > 0`` the teacher gives the consistency term instead.
        semi: how pseudo-labelled patches are used (masks, strong view, pasted boxes, EMA decay, fixed targets,
            consistency).
        encoder_stages: module names of the encoder stages, for ``config.encoder_lr_scale``.
        anchor: the L2-SP reference weights ``{name: tensor}`` (default: the weights at the call); used when
            ``config.l2sp_weight > 0``.
        stop_at: stop after this step although the learning-rate schedule spans ``config.iterations`` (early
            stopping at a step chosen by cross-validation).
        rank: process rank under data parallelism; each rank draws its own patches.
    """
    if not labeled:
        raise ValueError("train_supervised needs at least one labelled case")
    if semi.consistency_weight > 0 and teacher is None:
        raise ValueError("SemiParts.consistency_weight > 0 needs a teacher network (Mean Teacher)")
    fixed_targets = semi.fixed_pseudo_weight is not None
    device = device or default_device()
    torch.manual_seed(config.seed + start_step + 7919 * rank)
    rng = np.random.default_rng([config.seed, start_step, rank])
    patch = config.patch_size or tuple(card.patch_size)
    labeled_sampler = _PatchSampler(card, labeled, patch, config, rng)
    pseudo_sampler = _PatchSampler(card, pseudo, patch, config, rng) if pseudo else None
    network.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
    groups = parameter_groups(network, encoder_stages, config.learning_rate, config.encoder_lr_scale)
    optimizer, scheduler = make_optimizer(groups, config)
    reference = None
    if config.l2sp_weight > 0:
        source = anchor if anchor is not None else getattr(network, "module", network).state_dict()
        reference = {k: v.detach().to(device).clone() for k, v in source.items()}
    strong = StrongView(config.seed * 1009 + start_step + 7919 * rank) if semi.strong_view and pseudo else None
    jitter = SpatialJitter(config.seed * 2003 + start_step + 7919 * rank) if semi.spatial_view and pseudo else None
    last = config.iterations if stop_at is None else min(int(stop_at), config.iterations)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state["optimizer"])
        scheduler.load_state_dict(optimizer_state["scheduler"])
    losses: List[float] = []
    for step in range(start_step, last):
        images, labels, masks = labeled_sampler.sample(config.batch_size)
        images, labels = images.to(device), labels.to(device)
        loss = dice_ce_loss(network(images), labels)
        metrics = {"loss_labeled": float(loss.detach())}
        if reference is not None:
            penalty = l2sp_penalty(network, reference)
            loss = loss + config.l2sp_weight * penalty
            metrics["l2sp"] = float(penalty.detach())
        if pseudo_sampler is not None:
            weight = float(semi.fixed_pseudo_weight) if fixed_targets else pseudo_weight_at(step, config)
            p_images, p_labels, p_masks = pseudo_sampler.sample(config.batch_size)
            p_images, p_labels, p_masks = p_images.to(device), p_labels.to(device), p_masks.to(device)
            if teacher is not None and not fixed_targets:
                with torch.no_grad():
                    t_probs = torch.softmax(teacher(p_images).float(), dim=1)
                    p_labels = t_probs.argmax(dim=1)
                    p_masks = torch.ones_like(p_masks)
                    if semi.voxel_threshold is not None:
                        p_masks = confident_voxels(t_probs, semi.voxel_threshold, semi.class_keep_min).float()
            student_view = strong(p_images.cpu()).to(device) if strong is not None else p_images
            if jitter is not None:
                student_view, p_labels, p_masks = jitter(student_view, p_labels, p_masks)
            student_view, p_labels, p_masks = paste_labelled_boxes(student_view, p_labels, p_masks, images, labels,
                                                                   semi.cutmix_probability, rng)
            p_logits = network(student_view)
            p_loss = dice_ce_loss(p_logits, p_labels, p_masks)
            loss = loss + weight * p_loss
            metrics.update(loss_pseudo=float(p_loss.detach()), pseudo_weight=weight)
            if semi.consistency_weight > 0:
                with torch.no_grad():
                    t_logits = teacher(noisy_view(student_view, semi.noise_std, semi.noise_clip))
                c_weight = consistency_weight_at(step, semi)
                c_loss = softmax_mse(p_logits, t_logits)
                loss = loss + c_weight * c_loss
                metrics.update(loss_consistency=float(c_loss.detach()), consistency_weight=c_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if teacher is not None:
            ema_update(teacher, network, semi.ema_decay)
        value = float(loss.detach())
        losses.append(value)
        metrics["loss"] = value
        emit(progress, "progress", phase="train", step=step + 1, total=config.iterations,
             message=f"step {step + 1}/{config.iterations} loss {value:.4f}", metrics=metrics)
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            if teacher is not None:
                state["teacher"] = teacher.state_dict()
            checkpoint(step + 1, network, state)
            network.train()
    network.eval()
    return losses
