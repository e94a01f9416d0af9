"""The recipe: a supervised stage, then semi-supervised rounds on labelled plus pseudo-labelled volumes.

A partially labelled volume (:mod:`ASSFTActive.partial`) trains on its annotated voxels in the supervised stage; in
each semi-supervised round its unannotated voxels also take the round's teacher's class where the teacher is
confident (:func:`teacher_filled`), the annotated ones always keeping the annotator's.

The same recipe runs once per cross-validation fold (with a ``scorer`` that scores the fold's held-out volumes) and
once on every labelled volume (``final``: it writes resumable checkpoints and caches its pseudo-labels). Steps are
counted globally over the recipe: stage 0 covers ``train.iterations`` steps, each round ``semi_steps`` more.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..distributed import map_shards
from ..errors import JobError
from ..partial import fill_from_teacher
from ..progress import Event, ProgressCallback
from .checkpoints import TrainingCheckpoint
from .config import PseudoMode, Teacher
from .pseudo import PseudoDecision, voxel_confidence_mask
from .pseudo_round import PseudoLabeller, TeacherLabeller, pseudo_round
from .state import AdaptRun, LabeledVolume, cpu_state, unwrap
from .teachers import FrozenFlipTeacher, flips_of_axes
from .training import (
    CheckpointHook,
    L2SpPenalty,
    LossTerm,
    ProgressHook,
    PseudoLabelTerm,
    ScoreHook,
    SemiParts,
    SupervisedCase,
    TrainHook,
    TrainSchedule,
    ema_teacher,
    train_supervised,
)

__all__ = ["Scorer", "check_replicas", "run_recipe", "teacher_filled"]

#: Called as ``scorer(network, global_step)`` during a cross-validation fold.
Scorer = Callable[[nn.Module, int], None]


def run_recipe(
    run: AdaptRun,
    network: nn.Module,
    train: Sequence[LabeledVolume],
    stop: int,
    *,
    progress_offset: int,
    label: str,
    scorer: Optional[Scorer] = None,
    final: bool = False,
    resume: Optional[TrainingCheckpoint] = None,
    labeller: Optional[PseudoLabeller] = None,
) -> List[Tuple[PseudoDecision, ...]]:
    """Train ``network`` in place on ``train`` (+ pseudo-labels of the pool) up to global step ``stop``.

    Args:
        progress_offset: progress steps done before this run of the recipe (earlier folds).
        label: prefix of the event messages (e.g. ``"fold 1/3 "``).
        scorer: called every ``validation.every`` steps and at the end of each stage (cross-validation folds).
        final: the run on every labelled volume: writes resumable checkpoints and caches its pseudo-labels.
        resume: the final run's checkpoint to continue from.
        labeller: labels the pool in each round (:class:`~.pseudo_round.PseudoLabeller`; default the teacher,
            :class:`~.pseudo_round.TeacherLabeller`).

    Returns:
        the pseudo-labelling decisions of each self-training round that ran, in order (the ``r``-th is stage
        ``r``'s); none in ``none`` mode or without unlabelled volumes.
    """
    labeller = labeller if labeller is not None else TeacherLabeller()
    rounds: List[Tuple[PseudoDecision, ...]] = []
    start_stage = resume.stage if resume else 0
    if final and run.config.pseudo.mode != PseudoMode.NONE:
        for stage in range(1, min(start_stage, 1 + run.rounds)):
            saved = run.checkpoints.load_pseudo(stage)  # rounds finished before a resume
            if saved is not None:
                rounds.append(saved.decisions)
    for stage in range(start_stage, 1 + run.rounds):
        offset = run.stage_offset(stage)
        if offset >= stop:
            break
        pseudo: List[SupervisedCase] = []
        labeled = teacher_filled(run, stage, network, train, final)
        if stage > 0:
            pseudo, decisions = pseudo_round(run, stage, network, train, final, labeller)
            if decisions:
                rounds.append(decisions)
        resuming = resume is not None and stage == start_stage
        _train_stage(
            run,
            stage,
            network,
            labeled,
            pseudo,
            stop - offset,
            progress_offset,
            label,
            scorer,
            final,
            start_step=resume.step if resuming else 0,
            optim=resume.optimizer if resuming else None,
        )
    return rounds


def teacher_filled(
    run: AdaptRun, stage: int, network: nn.Module, train: Sequence[LabeledVolume], cache: bool
) -> List[SupervisedCase]:
    """The labelled volumes as stage ``stage`` trains on them.

    A full label as it is. A partial label (``annotated`` set): in the supervised stage (0) only its annotated voxels
    count (``voxel_mask = annotated``); in a semi-supervised round its unannotated voxels take the class of the
    round's teacher (``network``, the model after the previous stage, the one that labels and selects the pool)
    where the teacher passes the pool's voxel rule (``pseudo.voxel_threshold`` relaxed by ``class_keep_min``,
    :func:`~.pseudo.voxel_confidence_mask`; every voxel when the threshold is off), by
    :func:`~ASSFTActive.partial.fill_from_teacher`: annotated voxels keep the annotator's class, unconfident ones
    stay out of the loss. With ``pseudo.mode`` ``none`` nothing is pseudo-labelled, so nothing is filled.

    Args:
        cache: read and write the round's filled labels in the run's checkpoints (the final training, so that a
            resumed round trains on the targets of its own teacher, not of the resumed student).
    """
    rule = run.config.pseudo
    cases = [SupervisedCase(c.case_id, c.image, c.label, c.annotated) for c in train]  # partial: masked loss
    partial = [c for c in train if c.annotated is not None]
    if stage == 0 or rule.mode == PseudoMode.NONE or not partial:
        return cases
    filled = run.checkpoints.load_filled(stage) if cache else None
    if filled is None:
        predictor = run.predictor(network)

        def teach(case: LabeledVolume):
            prediction = predictor.predict(case.image)
            confident = voxel_confidence_mask(
                prediction.label, prediction.max_prob, rule.voxel_threshold, rule.class_keep_min
            )
            return fill_from_teacher(case.label.array, case.annotated, prediction.label, confident)

        filled = dict(zip([c.case_id for c in partial], map_shards(run.ctx, partial, teach)))
        if cache:
            run.checkpoints.save_filled(stage, filled)
            run.ctx.barrier()
    unannotated = sum(int(np.count_nonzero(~c.annotated)) for c in partial)
    taken = sum(int(np.count_nonzero(filled[c.case_id][1] & ~c.annotated)) for c in partial)
    run.emit(
        "phase",
        phase="pseudo",
        message=f"round {stage}: the teacher labels {taken} of the {unannotated} unannotated voxels of "
        f"{len(partial)} partially labelled volume(s)",
        metrics={"filled_voxels": float(taken), "unannotated_voxels": float(unannotated)},
    )
    return [
        SupervisedCase(c.case_id, c.image, c.label.with_array(filled[c.case_id][0]), filled[c.case_id][1])
        if c.case_id in filled
        else c
        for c in cases
    ]


def _stage_name(stage: int) -> str:
    return "supervised" if stage == 0 else f"semi-supervised round {stage}"


def _stage_progress(run: AdaptRun, stage: int, offset: int, label: str) -> ProgressCallback:
    """The trainer's events as steps of the whole run."""
    stage_start = run.stage_offset(stage)

    def forward(event: Event) -> None:
        if run.progress is None:
            return
        run.progress(
            Event(
                event=event.event,
                phase="train",
                step=offset + stage_start + event.step,
                total=run.total_steps,
                message=f"{label}{_stage_name(stage)}: {event.message}",
                metrics=dict(event.metrics, stage=float(stage)),
            )
        )

    return forward


def _train_stage(
    run: AdaptRun,
    stage: int,
    network: nn.Module,
    labeled: Sequence[SupervisedCase],
    pseudo: Sequence[SupervisedCase],
    stop: int,
    progress_offset: int,
    label: str,
    scorer: Optional[Scorer],
    final: bool,
    start_step: int = 0,
    optim: Optional[Mapping] = None,
) -> None:
    config = run.config
    base = config.train
    train_config = base if stage == 0 else replace(base, iterations=config.semi_steps, seed=base.seed + stage)
    last = min(stop, train_config.iterations)
    offset = run.stage_offset(stage)
    if start_step < last:
        resuming = f", resuming at {start_step}" if start_step else ""
        run.emit(
            "phase",
            phase="train",
            step=progress_offset + offset + start_step,
            total=run.total_steps,
            message=f"{label}{_stage_name(stage)} training: {len(labeled)} labelled + {len(pseudo)} "
            f"pseudo-labelled volumes, {last} of {train_config.iterations} steps{resuming}",
        )
        hooks: List[TrainHook] = [ProgressHook(_stage_progress(run, stage, progress_offset, label))]
        if final and run.checkpoints.enabled:
            hooks.append(CheckpointHook(config.checkpoint_every, _saver(run, stage, last)))
        if scorer is not None:
            hooks.append(ScoreHook(scorer, offset))
        train_supervised(
            run.ctx.wrap(network),
            run.card,
            labeled,
            train_config,
            terms=_terms(run, stage, network, pseudo, optim),
            hooks=hooks,
            schedule=TrainSchedule(
                start=start_step,
                stop=last,
                resume_state=optim,
                rank=run.ctx.rank,
                validate_every=config.validation.every if scorer else 0,
            ),
            device=run.device,
        )
    elif scorer is not None:
        scorer(network, offset + last)
    if final:
        _save(run, stage + 1, 0, network, None)


def _terms(
    run: AdaptRun, stage: int, network: nn.Module, pseudo: Sequence[SupervisedCase], optim: Optional[Mapping]
) -> List[LossTerm]:
    """L2-SP toward the run's starting weights, and in a semi-supervised round the pseudo-labelled patches (with an
    EMA teacher when ``pseudo.teacher`` is ``ema``, the frozen current model with flip test-time augmentation when
    it is ``source_flip``; with bidirectional copy-paste when ``pseudo.bcp``)."""
    rule = run.config.pseudo
    terms: List[LossTerm] = [L2SpPenalty(run.anchor)] if run.config.train.l2sp_weight > 0 else []
    if stage > 0 and pseudo:
        teacher = ema_teacher(network, optim) if rule.teacher == Teacher.EMA else None
        labeller = (
            FrozenFlipTeacher(run.current_network(network), flips_of_axes(rule.flip_axes))
            if rule.teacher == Teacher.SOURCE_FLIP
            else None
        )
        semi = SemiParts(
            voxel_threshold=rule.voxel_threshold,
            class_keep_min=rule.class_keep_min,
            strong_view=rule.strong_view,
            spatial_view=rule.spatial_view,
            cutmix_probability=rule.cutmix_probability,
            ema_decay=rule.ema_decay,
            bcp=rule.bcp,
            bcp_box_share=rule.bcp_box_share,
            bcp_pseudo_weight=rule.bcp_pseudo_weight,
        )
        terms.append(PseudoLabelTerm(pseudo, semi, teacher, labeller))
    return terms


def _saver(run: AdaptRun, stage: int, last: int):
    """The checkpoint hook's ``save``: the stage's resumable state before its last step (its end is saved after)."""

    def save(step: int, net: nn.Module, state: Mapping) -> None:
        if step < last:
            _save(run, stage, step, net, state)

    return save


def _save(run: AdaptRun, stage: int, step: int, network: nn.Module, optim: Optional[Mapping]) -> None:
    if run.checkpoints.writer:
        run.checkpoints.save(TrainingCheckpoint(stage, step, cpu_state(network), optim))


def check_replicas(run: AdaptRun, network: nn.Module) -> None:
    """Under data parallelism every rank must end with the same weights; refuse to store a model otherwise."""
    ctx = run.ctx
    if not ctx.distributed:
        return
    with torch.no_grad():
        checksum = float(sum(p.double().abs().sum() for p in unwrap(network).parameters()))
    sums = ctx.all_gather(checksum)
    spread = max(sums) - min(sums)
    if spread > 1e-6 * max(1.0, abs(sums[0])):
        raise JobError(
            f"the {ctx.world_size} ranks ended with different weights (parameter checksums {sums}); the "
            "data-parallel run is inconsistent and no model was stored."
        )
    run.emit("phase", phase="train", message=f"{ctx.world_size} ranks hold identical weights (checksum {sums[0]:.6g})")
