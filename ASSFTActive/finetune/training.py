"""The training loop: Dice+CE on foreground-aware patches, with loss terms and hooks as plug-ins.

:func:`train_supervised` is one loop, written once, with the plug points of nnU-Net's trainer: a caller adds
:class:`LossTerm` objects (pseudo-labelled patches with or without a teacher, :class:`PseudoLabelTerm`; the L2-SP
penalty, :class:`L2SpPenalty`) and :class:`TrainHook` objects (``on_train_start``, ``on_step``, ``on_validation``,
``on_train_end``: progress events, resumable checkpoints, held-out scoring, or a caller's own), all seeing one
:class:`TrainState`. Nothing is reached by keyword arguments or by patching this module.

With a :class:`PseudoLabelTerm`, each iteration draws ``batch_size`` patches from the labelled cases and the same
number from the pseudo-labelled ones (a fixed 1:1 ratio, so every batch holds expert labels); the pseudo-labelled
loss is weighted by the ramp ``w(t)`` of method-spec §1.7 and may be restricted to confident voxels. With a teacher
network (Mean Teacher) the pseudo-labels come from the teacher on the weak view; the student may see a strong view
with labelled boxes pasted in (:mod:`.semi`). Two protections of the prior: lower learning rates for the encoder
stages and an L2-SP penalty toward the starting weights (:class:`~.config.TrainConfig`).

SFR's Mean-Teacher re-training (method-spec §2.3) is a configuration of the same term, with two teachers: the
fine-tuned SAM is an offline teacher whose hard pseudo-labels stay the targets of the pseudo-labelled patches at a
constant weight (:attr:`SemiParts.fixed_pseudo_weight`), and the EMA teacher adds a consistency term, the softmax MSE
between the student on a patch and the teacher on the same patch plus clipped Gaussian noise, ramped up by
:func:`consistency_weight_at` (:attr:`SemiParts.consistency_weight`). Both are off by default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference import PAD_VALUE, default_device, label_to_model_space, to_model_space
from ..io import Volume
from ..models import ModelCard
from ..progress import ProgressCallback, emit
from .config import Optimizer, TrainConfig
from .mixing import bidirectional_copy_paste, random_boxes
from .semi import SpatialJitter, StrongView, paste_labelled_boxes, teacher_targets
from .teachers import PatchLabeller

__all__ = [
    "Batch",
    "CheckpointHook",
    "L2SpPenalty",
    "LossTerm",
    "ProgressHook",
    "PseudoLabelTerm",
    "ScoreHook",
    "SemiParts",
    "SupervisedCase",
    "TrainConfig",
    "TrainHook",
    "TrainSchedule",
    "TrainState",
    "consistency_weight_at",
    "dice_ce_loss",
    "ema_teacher",
    "ema_update",
    "l2sp_penalty",
    "make_optimizer",
    "noisy_view",
    "parameter_groups",
    "pseudo_weight_at",
    "softmax_mse",
    "train_supervised",
]


@dataclass(frozen=True)
class SupervisedCase:
    """A training volume with its (true or pseudo) label map on the same grid.

    Attributes:
        voxel_mask: optional bool ``[I, J, K]``; only these voxels count in the loss (confident pseudo-labels, or
            the annotated voxels of a partially labelled volume).
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

    def __init__(
        self,
        card: ModelCard,
        cases: Sequence[SupervisedCase],
        patch: Tuple[int, int, int],
        config: TrainConfig,
        rng: np.random.Generator,
    ):
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


def parameter_groups(
    network: nn.Module, encoder_stages: Sequence[str], learning_rate: float, encoder_lr_scale: float
) -> List[dict]:
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
        bcp: bidirectional copy-paste (:func:`~.mixing.bidirectional_copy_paste`): the student learns on each
            pseudo-labelled patch mixed with a labelled one both ways instead of on the patch itself (the pasted
            box of ``cutmix_probability`` is then not used); ``bcp_box_share``: the box side as a share of the
            patch side; ``bcp_pseudo_weight``: BCP's α, the weight of the pseudo-labelled voxels.
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
    bcp: bool = False
    bcp_box_share: float = 2.0 / 3.0
    bcp_pseudo_weight: float = 0.5


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
        optimizer = torch.optim.SGD(
            groups, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.lr_step_every is not None:
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.lr_step_every, gamma=config.lr_step_gamma
        )
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.iterations, eta_min=config.learning_rate * 0.05
        )
    return optimizer, scheduler


def ema_teacher(network: nn.Module, resume_state: Optional[Mapping] = None) -> nn.Module:
    """A Mean-Teacher copy of ``network`` (unwrapped), holding the ``"teacher"`` weights of ``resume_state`` (the
    state a :class:`CheckpointHook` saved) when there are some."""
    teacher = copy.deepcopy(getattr(network, "module", network))
    if resume_state is not None and resume_state.get("teacher") is not None:
        teacher.load_state_dict(resume_state["teacher"])
    return teacher


# ------------------------------------------------------------------------------------- the trainer's plug points


@dataclass
class TrainState:
    """What the trainer shares with its hooks and loss terms while it runs (what nnU-Net's trainer keeps on ``self``).

    Attributes:
        network: the model being trained, on ``device`` (may be wrapped in ``DistributedDataParallel``).
        card: its model card; ``config``: the optimisation settings; ``device``; ``rank``: the data-parallel rank.
        patch: the training patch ``(X, Y, Z)`` in voxels.
        rng: the run's generator (patch draws, pasted boxes); terms that draw use it in the trainer's order.
        optimizer, scheduler: the optimiser and learning-rate scheduler.
        start: steps done when this call began (a resumed run starts past 0).
        step: steps done so far; in ``on_step`` the step just finished (1-based), in ``on_validation`` the step
            whose weights are scored.
        last: the call ends after this step (``config.iterations``, or ``TrainSchedule.stop``).
        teacher: the EMA teacher when a term keeps one (its weights go into :meth:`resumable`).
        loss: the last step's total loss; ``metrics``: its parts (``loss_labeled``, ``l2sp``, ``loss_pseudo``, ...,
            ``loss``), as the ``progress`` event carries them.
        losses: every step's loss so far.
        stop: a hook sets this to end training after the current step (early stopping).
    """

    network: nn.Module
    card: ModelCard
    config: TrainConfig
    device: torch.device
    rank: int
    patch: Tuple[int, int, int]
    rng: np.random.Generator
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start: int
    step: int
    last: int
    teacher: Optional[nn.Module] = None
    loss: float = float("nan")
    metrics: Dict[str, float] = field(default_factory=dict)
    losses: List[float] = field(default_factory=list)
    stop: bool = False

    def resumable(self) -> Dict[str, Any]:
        """``{"optimizer", "scheduler"[, "teacher"]}``: what :class:`TrainSchedule.resume_state` takes back."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state


class TrainHook:
    """A plug-in of the trainer, in the manner of nnU-Net's trainer hooks; override what you need (each default
    does nothing). Hooks run in the order given, loss terms first. Each receives the :class:`TrainState`.

    * ``on_train_start``: after the optimiser is built (and restored), before the first step;
    * ``on_step``: after each optimiser step (``state.step`` is the step just done); may raise ``CancelledError``;
    * ``on_validation``: every ``TrainSchedule.validate_every`` steps before the last, and once after the last step
      (the network may be evaluated; the trainer puts it back in training mode);
    * ``on_train_end``: after training, with the network in eval mode.
    """

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_step(self, state: TrainState) -> None:
        pass

    def on_validation(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


@dataclass(frozen=True)
class Batch:
    """The labelled patches of one step, on the compute device: ``images [B, 1, X, Y, Z]``, ``labels [B, X, Y, Z]``
    (int64), and the student's ``logits [B, C, X, Y, Z]`` on them."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor


class LossTerm(TrainHook):
    """A part of the loss beyond the supervised Dice+CE of the labelled patches (also a :class:`TrainHook`, so it can
    prepare in ``on_train_start`` and update in ``on_step``)."""

    def add(self, loss: torch.Tensor, batch: Batch, state: TrainState) -> torch.Tensor:
        """``loss`` plus this term (weighted); what it adds is recorded in ``state.metrics``."""
        raise NotImplementedError


@dataclass(frozen=True)
class TrainSchedule:
    """Which part of the schedule one call trains.

    Attributes:
        start: steps already done (resume; with ``resume_state``); the schedule always spans ``config.iterations``.
        stop: stop after this step (early stopping at a step chosen by cross-validation); ``None``: the last.
        validate_every: hooks' ``on_validation`` every this many steps (and once after the last); 0: after the last
            only.
        resume_state: ``{"optimizer", "scheduler"[, "teacher"]}`` as :meth:`TrainState.resumable` gave it.
        rank: process rank under data parallelism; each rank draws its own patches.
    """

    start: int = 0
    stop: Optional[int] = None
    validate_every: int = 0
    resume_state: Optional[Mapping[str, Any]] = None
    rank: int = 0


class ProgressHook(TrainHook):
    """A ``progress`` event per step: ``step``/``total`` of the schedule, the loss, ``metrics`` = the loss parts."""

    def __init__(self, progress: Optional[ProgressCallback]):
        self.progress = progress

    def on_step(self, state: TrainState) -> None:
        total = state.config.iterations
        emit(
            self.progress,
            "progress",
            phase="train",
            step=state.step,
            total=total,
            message=f"step {state.step}/{total} loss {state.loss:.4f}",
            metrics=state.metrics,
        )


class CheckpointHook(TrainHook):
    """``save(step, network, state)`` every ``every`` steps, ``state`` being :meth:`TrainState.resumable`."""

    def __init__(self, every: int, save: Callable[[int, nn.Module, Mapping[str, Any]], None]):
        self.every, self.save = int(every), save

    def on_step(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self.save(state.step, state.network, state.resumable())


class ScoreHook(TrainHook):
    """``scorer(network, offset + step)`` at each validation (a cross-validation fold's held-out scores)."""

    def __init__(self, scorer: Callable[[nn.Module, int], None], offset: int = 0):
        self.scorer, self.offset = scorer, int(offset)

    def on_validation(self, state: TrainState) -> None:
        self.scorer(state.network, self.offset + state.step)


class L2SpPenalty(LossTerm):
    """``config.l2sp_weight · Σ (w - w0)²`` toward ``anchor`` (default: the weights when training starts);
    :func:`l2sp_penalty`. Added by the trainer itself when ``l2sp_weight > 0`` and no such term is given."""

    def __init__(self, anchor: Optional[Mapping[str, torch.Tensor]] = None):
        self.anchor = anchor
        self.reference: Dict[str, torch.Tensor] = {}

    def on_train_start(self, state: TrainState) -> None:
        source = (
            self.anchor if self.anchor is not None else getattr(state.network, "module", state.network).state_dict()
        )
        self.reference = {k: v.detach().to(state.device).clone() for k, v in source.items()}

    def add(self, loss: torch.Tensor, batch: Batch, state: TrainState) -> torch.Tensor:
        penalty = l2sp_penalty(state.network, self.reference)
        state.metrics["l2sp"] = float(penalty.detach())
        return loss + state.config.l2sp_weight * penalty


class PseudoLabelTerm(LossTerm):
    """Dice+CE on pseudo-labelled patches, ``batch_size`` of them per step beside the labelled ones (1:1).

    Without a teacher the fixed pseudo-labels (and voxel masks) are the targets, weighted by the ramp
    :func:`pseudo_weight_at`. With an EMA ``teacher`` (Mean Teacher, method-spec §1.7) each patch is labelled by the
    teacher's argmax on the weak view (masked by ``semi.voxel_threshold``), and the teacher follows the student by
    :func:`ema_update` after every step; ``semi.fixed_pseudo_weight`` keeps the fixed labels at a constant weight
    instead, and ``semi.consistency_weight > 0`` adds the consistency term on a noisy view (SFR's re-training). The
    student may see :class:`~.semi.StrongView`, :class:`~.semi.SpatialJitter` and pasted labelled boxes.

    Args:
        cases: the pseudo-labelled cases (none: the term adds nothing).
        semi: how they are used (:class:`SemiParts`).
        teacher: the EMA teacher (:func:`ema_teacher`; the caller restores it when resuming).
        labeller: a pseudo-labeller that is not the student (:class:`~.teachers.PatchLabeller`, e.g. the frozen
            current model with flip test-time augmentation): labels each patch in place of the EMA teacher.

    Raises:
        ValueError: ``semi.consistency_weight > 0`` without a teacher.
    """

    def __init__(
        self,
        cases: Sequence[SupervisedCase],
        semi: SemiParts = SemiParts(),
        teacher: Optional[nn.Module] = None,
        labeller: Optional[PatchLabeller] = None,
    ):
        if semi.consistency_weight > 0 and teacher is None:
            raise ValueError("SemiParts.consistency_weight > 0 needs a teacher network (Mean Teacher)")
        self.cases, self.semi, self.teacher, self.labeller = list(cases), semi, teacher, labeller
        self.sampler: Optional[_PatchSampler] = None
        self.strong: Optional[StrongView] = None
        self.jitter: Optional[SpatialJitter] = None

    def on_train_start(self, state: TrainState) -> None:
        config, seed_step = state.config, state.start + 7919 * state.rank
        if self.teacher is not None:
            self.teacher.to(state.device).eval()
            for parameter in self.teacher.parameters():
                parameter.requires_grad_(False)
            state.teacher = self.teacher
        if self.labeller is not None:
            self.labeller.to(state.device)
        if not self.cases:
            return
        self.sampler = _PatchSampler(state.card, self.cases, state.patch, config, state.rng)
        self.strong = StrongView(config.seed * 1009 + seed_step) if self.semi.strong_view else None
        self.jitter = SpatialJitter(config.seed * 2003 + seed_step) if self.semi.spatial_view else None

    def add(self, loss: torch.Tensor, batch: Batch, state: TrainState) -> torch.Tensor:
        if self.sampler is None:
            return loss
        semi, device, teacher = self.semi, state.device, self.teacher
        fixed = semi.fixed_pseudo_weight is not None
        weight = float(semi.fixed_pseudo_weight) if fixed else pseudo_weight_at(state.step, state.config)
        images, labels, masks = self.sampler.sample(state.config.batch_size)
        images, labels, masks = images.to(device), labels.to(device), masks.to(device)
        labeller = self.labeller
        if (teacher is not None or labeller is not None) and not fixed:
            with torch.no_grad():
                probs = (
                    labeller.probabilities(images)
                    if labeller is not None
                    else torch.softmax(teacher(images).float(), dim=1)
                )
                labels, confident = teacher_targets(probs, semi.voxel_threshold, semi.class_keep_min)
                masks = torch.ones_like(masks) if confident is None else confident.float()
        view = self.strong(images.cpu()).to(device) if self.strong is not None else images
        if self.jitter is not None:
            view, labels, masks = self.jitter(view, labels, masks)
        if semi.bcp:
            boxes = random_boxes(view.shape[0], view.shape[2:], semi.bcp_box_share, state.rng)
            mixed = bidirectional_copy_paste(
                batch.images, batch.labels, view, labels, masks, boxes, semi.bcp_pseudo_weight
            )
            view, labels, masks = mixed.images, mixed.targets, mixed.weights
        else:
            view, labels, masks = paste_labelled_boxes(
                view, labels, masks, batch.images, batch.labels, semi.cutmix_probability, state.rng
            )
        logits = state.network(view)
        p_loss = dice_ce_loss(logits, labels, masks)
        loss = loss + weight * p_loss
        state.metrics.update(loss_pseudo=float(p_loss.detach()), pseudo_weight=weight)
        if semi.consistency_weight > 0:
            with torch.no_grad():
                t_logits = teacher(noisy_view(view, semi.noise_std, semi.noise_clip))
            c_weight = consistency_weight_at(state.step, semi)
            c_loss = softmax_mse(logits, t_logits)
            loss = loss + c_weight * c_loss
            state.metrics.update(loss_consistency=float(c_loss.detach()), consistency_weight=c_weight)
        return loss

    def on_step(self, state: TrainState) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, state.network, self.semi.ema_decay)


# --------------------------------------------------------------------------------------------- the trainer


def train_supervised(
    network: nn.Module,
    card: ModelCard,
    labeled: Sequence[SupervisedCase],
    config: TrainConfig,
    *,
    terms: Sequence[LossTerm] = (),
    hooks: Sequence[TrainHook] = (),
    schedule: TrainSchedule = TrainSchedule(),
    device: Optional[torch.device] = None,
) -> List[float]:
    """Train ``network`` in place on Dice+CE of labelled patches plus ``terms``; returns the loss of every step.

    Each step draws ``config.batch_size`` patches (foreground-aware) of the labelled cases, adds every loss term
    (:class:`PseudoLabelTerm`: pseudo-labelled patches, teachers; :class:`L2SpPenalty`), takes an optimiser step
    (:func:`make_optimizer`; the card's encoder stages at ``config.encoder_lr_scale``) and calls the hooks
    (:class:`ProgressHook`, :class:`CheckpointHook`, :class:`ScoreHook`, or the caller's own :class:`TrainHook`).

    Args:
        network: the model to train (moved to ``device``); may be wrapped in ``DistributedDataParallel``.
        card: the model card (preprocessing, default patch size, encoder stages).
        labeled: cases with expert labels; a case's ``voxel_mask`` limits the supervised loss to those voxels
            (partial labels: only the annotated voxels count).
        config: optimisation settings; ``l2sp_weight > 0`` adds :class:`L2SpPenalty` toward the weights at the call
            unless ``terms`` holds one (with its own anchor).
        terms: loss terms, added in this order after the supervised loss.
        hooks: plug-ins called at the start, after each step, at validation and at the end.
        schedule: start (resume), stop, validation interval and rank (:class:`TrainSchedule`).
        device: compute device (default CUDA when present).

    Raises:
        ValueError: no labelled case.
    """
    if not labeled:
        raise ValueError("train_supervised needs at least one labelled case")
    device = device or default_device()
    start = schedule.start
    torch.manual_seed(config.seed + start + 7919 * schedule.rank)
    rng = np.random.default_rng([config.seed, start, schedule.rank])
    patch = tuple(config.patch_size or card.patch_size)
    sampler = _PatchSampler(card, labeled, patch, config, rng)
    partial = any(case.voxel_mask is not None for case in labeled)
    network.to(device).train()
    optimizer, scheduler = make_optimizer(
        parameter_groups(network, card.encoder_stages, config.learning_rate, config.encoder_lr_scale), config
    )
    if schedule.resume_state is not None:
        optimizer.load_state_dict(schedule.resume_state["optimizer"])
        scheduler.load_state_dict(schedule.resume_state["scheduler"])
    last = config.iterations if schedule.stop is None else min(int(schedule.stop), config.iterations)
    state = TrainState(
        network, card, config, device, schedule.rank, patch, rng, optimizer, scheduler, start, start, last
    )
    terms = list(terms)
    if config.l2sp_weight > 0 and not any(isinstance(t, L2SpPenalty) for t in terms):
        terms.insert(0, L2SpPenalty())
    parts: List[TrainHook] = [*terms, *hooks]
    for part in parts:
        part.on_train_start(state)
    for step in range(start, last):
        state.step = step
        images, labels, masks = sampler.sample(config.batch_size)
        images, labels = images.to(device), labels.to(device)
        logits = network(images)
        loss = dice_ce_loss(logits, labels, masks.to(device) if partial else None)
        state.metrics = {"loss_labeled": float(loss.detach())}
        batch = Batch(images, labels, logits)
        for term in terms:
            loss = term.add(loss, batch, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.step, state.loss = step + 1, float(loss.detach())
        state.losses.append(state.loss)
        state.metrics["loss"] = state.loss
        for part in parts:
            part.on_step(state)
        network.train()
        if schedule.validate_every and state.step % schedule.validate_every == 0 and state.step < last:
            _validate(parts, state)
        if state.stop:
            break
    _validate(parts, state)
    network.eval()
    for part in parts:
        part.on_train_end(state)
    return state.losses


def _validate(parts: Sequence[TrainHook], state: TrainState) -> None:
    for part in parts:
        part.on_validation(state)
    state.network.train()
