"""SFR stage 3: Mean-Teacher re-training of a 3D segmenter on labels plus SAM's pseudo-labels, in the shared trainer.

Not a second trainer: :func:`mean_teacher_term` is a :class:`~ASSFTActive.finetune.training.PseudoLabelTerm` of
:func:`ASSFTActive.finetune.training.train_supervised` (the trainer of Adapt Model) with two teachers. The
fine-tuned SAM is the offline teacher: its hard pseudo-labels of the unlabelled volumes are fixed targets of the
supervised loss at a constant weight
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

from typing import Mapping, Optional, Sequence

from torch import nn

from ..finetune.training import PseudoLabelTerm, SemiParts, SupervisedCase, ema_teacher
from .config import MeanTeacherConfig, sfr_train_config

__all__ = ["MeanTeacherConfig", "mean_teacher_parts", "mean_teacher_term", "sfr_train_config"]


def mean_teacher_parts(config: MeanTeacherConfig) -> SemiParts:
    """The trainer's parts of SFR's Mean Teacher: fixed pseudo-label targets at a constant weight, the consistency
    term, no masks, views or pasting."""
    return SemiParts(
        ema_decay=config.ema_decay,
        fixed_pseudo_weight=config.pseudo_weight,
        consistency_weight=config.consistency_weight,
        consistency_rampup=config.consistency_rampup,
        consistency_epoch_steps=config.consistency_epoch_steps,
        noise_std=config.noise_std,
        noise_clip=config.noise_clip,
    )


def mean_teacher_term(
    network: nn.Module,
    pseudo: Sequence[SupervisedCase],
    config: MeanTeacherConfig,
    resume_state: Optional[Mapping] = None,
) -> PseudoLabelTerm:
    """The loss term of SFR's re-training of ``network`` (the student): SAM's hard pseudo-labels of ``pseudo`` (with
    SFR+'s optional ``voxel_mask``) as fixed targets, and an EMA copy of ``network`` as the Mean Teacher (restored
    from ``resume_state["teacher"]`` when resuming). Pass it to
    :func:`~ASSFTActive.finetune.training.train_supervised` with :func:`sfr_train_config`'s optimisation."""
    return PseudoLabelTerm(pseudo, mean_teacher_parts(config), ema_teacher(network, resume_state))
