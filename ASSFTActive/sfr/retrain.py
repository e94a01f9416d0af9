"""SFR stage 3: Mean-Teacher re-training of a 3D segmenter on labels plus SAM's pseudo-labels, in the shared trainer.

Not a second trainer: :func:`mean_teacher_retrain` calls :func:`ASSFTActive.finetune.training.train_supervised`
(the trainer of Adapt Model) with two teachers. The fine-tuned SAM is the offline teacher: its hard pseudo-labels
of the unlabelled volumes are fixed targets of the supervised loss at a constant weight
(:attr:`~ASSFTActive.finetune.training.SemiParts.fixed_pseudo_weight`). An EMA copy of the 3D network is the Mean
Teacher: ``λ(t)·softmax_mse(student(x), teacher(x + ξ))`` over the unlabelled patches, ``ξ`` Gaussian noise clipped
at ±0.2, ``λ(t) = 0.1·exp(-5(1 - min(e/40, 1))²)``, ``e = step // 150``. The optimiser is SFR's (SGD, lr 0.01,
momentum 0.9, weight decay 1e-4, ×0.1 every 2,500 steps; :func:`sfr_train_config`).

Departures from the released code (method-spec §2.3): the SAM pseudo-labels are computed once per volume before
re-training (the code runs the frozen SAM online on each batch's crops; with a frozen SAM and no augmentation of the
unlabelled crops the two agree up to the crop borders seen by SAM), the network is the 3D model being adapted (the
card's, not a V-Net trained from scratch), patches are the card's with its intensity augmentation, and each step
draws ``batch_size`` labelled and as many unlabelled patches (SFR: 2 + 2).

References:
    Li et al., SFR, arXiv:2403.11229; Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017;
    ``shared/research/method-spec.md`` §2.3 and §4.2.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..finetune.config import Optimizer, TrainConfig
from ..finetune.training import SemiParts, SupervisedCase, train_supervised
from ..models import ModelCard
from ..progress import ProgressCallback
from ..settings import check_fields, check_keys

__all__ = ["MeanTeacherConfig", "mean_teacher_retrain", "sfr_train_config"]

#: Called as ``scorer(network, step)`` during re-training (the guard's cross-validation).
Scorer = Callable[[nn.Module, int], None]


def sfr_train_config(**overrides: Any) -> TrainConfig:
    """SFR's re-training optimisation (method-spec §2.3): SGD lr 0.01, momentum 0.9, weight decay 1e-4, ×0.1 every
    2,500 of 6,000 steps, 2 labelled + 2 unlabelled patches per step; ``overrides`` replace any field."""
    base = TrainConfig(iterations=6000, batch_size=2, learning_rate=0.01, weight_decay=1e-4,
                       optimizer=Optimizer.SGD, momentum=0.9, lr_step_every=2500, lr_step_gamma=0.1, seed=1337)
    return replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class MeanTeacherConfig:
    """SFR's Mean Teacher (method-spec §2.3, §4.2; every default is from the released code).

    Attributes:
        pseudo_weight: constant weight of the Dice+CE loss on SAM's pseudo-labels, 1.0 (no ramp).
        consistency_weight: ``λ_max`` of the consistency term, 0.1.
        consistency_rampup: ramp length in "epochs", 40.
        consistency_epoch_steps: steps per "epoch", 150.
        noise_std, noise_clip: the teacher's input noise ``clamp(N(0, 0.1²), ±0.2)``.
        ema_decay: the teacher's EMA decay, 0.99.
    """

    pseudo_weight: float = 1.0
    consistency_weight: float = 0.1
    consistency_rampup: int = 40
    consistency_epoch_steps: int = 150
    noise_std: float = 0.1
    noise_clip: float = 0.2
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        check_fields(self, numbers={"pseudo_weight": (0.0, math.inf, False),
                                    "consistency_weight": (0.0, math.inf, False), "noise_std": (0.0, math.inf, False),
                                    "noise_clip": (0.0, math.inf, False), "ema_decay": (0.0, 1.0, False)},
                     wholes={"consistency_rampup": 0, "consistency_epoch_steps": 1})

    def semi_parts(self) -> SemiParts:
        """The trainer's parts: fixed pseudo-label targets, the consistency term, no masks, views or pasting."""
        return SemiParts(ema_decay=self.ema_decay, fixed_pseudo_weight=self.pseudo_weight,
                         consistency_weight=self.consistency_weight, consistency_rampup=self.consistency_rampup,
                         consistency_epoch_steps=self.consistency_epoch_steps, noise_std=self.noise_std,
                         noise_clip=self.noise_clip)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeanTeacherConfig:
        return cls(**check_keys(cls, data))


def mean_teacher_retrain(network: nn.Module, card: ModelCard, labeled: Sequence[SupervisedCase],
                         pseudo: Sequence[SupervisedCase], config: TrainConfig,
                         mean_teacher: MeanTeacherConfig = MeanTeacherConfig(), *,
                         progress: Optional[ProgressCallback] = None, device: Optional[torch.device] = None,
                         scorer: Optional[Scorer] = None, score_every: int = 0, stop_at: Optional[int] = None,
                         rank: int = 0, start_step: int = 0, optimizer_state: Optional[Mapping] = None,
                         checkpoint: Optional[Callable] = None, checkpoint_every: int = 0) -> List[float]:
    """Re-train ``network`` in place (student) with an EMA copy of it as the Mean Teacher; returns the step losses.

    Args:
        network: the 3D model to re-train (its current weights are the start; may be DDP-wrapped).
        card: its model card.
        labeled: expert-labelled volumes.
        pseudo: unlabelled volumes with SAM's hard pseudo-label (and an optional ``voxel_mask``: SFR+'s confident
            voxels); also the patches the consistency term is computed on.
        config: optimisation (:func:`sfr_train_config` for SFR's).
        mean_teacher: the teacher's settings.
        progress: the trainer's ``progress`` events; may cancel.
        scorer: called as ``scorer(network, step)`` every ``score_every`` steps and at the last step.
        stop_at: stop after this step (the cross-validated stopping step) while the schedule spans
            ``config.iterations``.
        start_step, optimizer_state: resume (``optimizer_state`` as handed to ``checkpoint``; its ``"teacher"``
            entry, the EMA teacher's weights, is restored).
        checkpoint: called as ``checkpoint(step, network, state)`` every ``checkpoint_every`` steps before the last
            (the trainer's resumable state, see :func:`~ASSFTActive.finetune.training.train_supervised`).
    """
    teacher = copy.deepcopy(getattr(network, "module", network))
    if optimizer_state is not None and optimizer_state.get("teacher") is not None:
        teacher.load_state_dict(optimizer_state["teacher"])
    last = config.iterations if stop_at is None else min(int(stop_at), config.iterations)
    every_score = score_every if scorer is not None else 0
    every_checkpoint = checkpoint_every if checkpoint is not None else 0
    interval = math.gcd(every_score, every_checkpoint) or max(every_score, every_checkpoint)

    def on_checkpoint(step: int, net: nn.Module, state: Mapping) -> None:
        if step >= last:
            return
        if every_score and step % every_score == 0:
            scorer(net, step)
        if every_checkpoint and step % every_checkpoint == 0:
            checkpoint(step, net, state)

    losses = train_supervised(network, card, labeled, config, pseudo=pseudo, progress=progress, device=device,
                              start_step=start_step, optimizer_state=optimizer_state,
                              checkpoint=on_checkpoint if interval else None, checkpoint_every=interval,
                              teacher=teacher, semi=mean_teacher.semi_parts(), stop_at=stop_at, rank=rank)
    if scorer is not None:
        scorer(network, last)
    return losses
