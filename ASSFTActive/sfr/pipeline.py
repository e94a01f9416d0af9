"""SFR and SFR+ as a second Adapt method: SAM fine-tuning, SAM pseudo-labels, Mean-Teacher re-training, the guard.

:func:`sfr_adapt` is the product entry point (``assft sfr``). A run:

1. checks the inputs, loads the 3D model and the SAM prior, reads and checks the labelled volumes and scores the
   current model on them: the same steps as :func:`~ASSFTActive.finetune.adapt.adapt_model` (``start_run``,
   ``read_labeled``, the label checks, ``score_current_model``);
2. **SFR stage 2** fine-tunes SAM on the stitched labelled volumes (:func:`~.finetune.finetune_sam`) and
   pseudo-labels the whole unlabelled pool (:func:`~.pseudo.sfr_pseudo_labels`); **SFR+** instead fine-tunes twice
   with a confident selection between (:func:`~.plus.sfr_plus_finetune`) and re-trains only on the ``kappa`` most
   confident volumes of the final SAM, on their voxels whose SAM confidence reaches ``plus_voxel_threshold``;
3. **SFR stage 3** re-trains the current 3D model with Mean Teacher on labels + SAM pseudo-labels in the shared
   trainer (:func:`~.retrain.mean_teacher_retrain`);
4. **the same guard** as Adapt Model: with at least two labelled volumes the whole SFR pipeline (stages 2 and 3) is
   cross-validated over the labelled volumes, each fold with a SAM fine-tuned on that fold's labels only (so no
   held-out label leaks through the pseudo-labels); the final re-training stops at the cross-validated best step;
   the verdict is :func:`ASSFTActive.finetune.adapt.decide_activation` (cross-validated gain and the pool check) and
   the metrics are :func:`~ASSFTActive.finetune.adapt.summarise_metrics`'s;
5. runs ``before_commit`` (the worker re-ranks the pool with the model that will be active), then writes a new
   version with :meth:`ASSFTActive.store.ModelStore.add_version`, activated only when the guard agreed.

**Resuming** (``work_dir``; ``assft sfr --work-dir`` and the worker's ``JOB_DIR/checkpoints``): the run keeps its
state in :class:`~ASSFTActive.finetune.checkpoints.Checkpoints`, whose identity is a fingerprint of the volumes,
*every* SFR setting and the SAM prior (its card and weights file), so nothing of another run is ever applied:

* each finished cross-validation fold leaves its held-out scores (``cv-fold<k>.json``); a resumed run skips it;
* the final run's stage 2 leaves SAM's pseudo-labels of the pool, their confidences and SFR+'s selection
  (``pseudo-r0.json`` + ``.npz``, :data:`SAM_PSEUDO_ROUND`) and a ``checkpoint.pt`` at re-training step 0: a resumed
  run reads them instead of fine-tuning SAM again (the fine-tuned SAM itself is not needed afterwards and is not
  kept);
* the final Mean-Teacher re-training writes ``checkpoint.pt`` every ``checkpoint_every`` steps (student weights,
  optimiser and scheduler, the EMA teacher) and at its end; a resumed run continues from the last one.

A fold interrupted midway runs again from its start. The commit removes the files.

What differs from Adapt Model: the recipe per fold is SFR's (the fold's SAM is fine-tuned and pseudo-labels the pool
again, so the guard costs ``folds`` extra SAM fine-tunings as well as re-trainings); the SAM's fine-tuning is not
early-stopped; resuming is by stage and re-training step (above), not inside a SAM fine-tuning; the commit is
written here (same store call, SFR's provenance: method, SAM prior, pseudo-label confidences and selection).
Cancellation (``progress`` raising ``CancelledError``) before the commit leaves the store unchanged.

References:
    Li et al., SFR / SFR+, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import __version__
from ..distributed import DistContext
from ..errors import InputError, JobError, ModelError
from ..evaluate import EvaluationReport, SkippedVolume, json_ready, mean_scored
from ..finetune.adapt import (
    AdaptResult,
    BeforeCommit,
    decide_activation,
    predict_pool,
    read_checked_labels,
    run_before_commit,
    score_current_model,
    start_run,
    summarise_metrics,
)
from ..finetune.checkpoints import (
    CHECKPOINT_FILE,
    Checkpoints,
    FoldScores,
    PseudoLabels,
    TrainingCheckpoint,
    card_signature,
    run_fingerprint,
)
from ..finetune.guard import ActivationDecision, CrossValidation, assign_folds
from ..finetune.pseudo import PseudoDecision
from ..finetune.state import AdaptRun, LabeledVolume, cpu_state, load_state, unwrap
from ..finetune.training import (
    CheckpointHook,
    ProgressHook,
    ScoreHook,
    SupervisedCase,
    TrainHook,
    TrainSchedule,
    train_supervised,
)
from ..io import PathLike, Volume, read_volume
from ..plausibility import check_image
from ..progress import Event, ProgressCallback
from .config import SfrConfig, SfrMethod
from .finetune import finetune_sam
from .inputs import SfrCase
from .plus import sfr_plus_finetune
from .prior import PRIOR_DIR, SamPrior, load_sam_prior
from .pseudo import sfr_plus_select, sfr_pseudo_labels
from .retrain import mean_teacher_term

__all__ = ["SAM_PSEUDO_ROUND", "SfrConfig", "SfrMethod", "SfrPseudoRecord", "SfrResult", "sfr_adapt"]

#: Round index under which the final run's SAM pseudo-labels are kept in the work dir (Adapt Model's self-training
#: rounds are 1, 2, ...; an SFR run has none).
SAM_PSEUDO_ROUND = 0


@dataclass(frozen=True)
class SfrPseudoRecord:
    """One unlabelled volume as SAM saw it in the final run: its SFR+ confidence and whether it was re-trained on."""

    case_id: str
    confidence: float
    kept: bool
    foreground_voxels: int

    def to_dict(self) -> Dict[str, Any]:
        return {"case_id": self.case_id, "confidence": round(float(self.confidence), 6), "kept": self.kept,
                "foreground_voxels": self.foreground_voxels}


@dataclass(frozen=True)
class SfrResult(AdaptResult):
    """What an SFR / SFR+ run produced: an :class:`~ASSFTActive.finetune.adapt.AdaptResult` whose ``pseudo`` holds
    SAM's final pseudo-labels of the pool (:class:`SfrPseudoRecord`: confidence, kept for re-training), plus the
    method. ``metrics`` as in ``AdaptResult``; ``resumed_from`` is the re-training step the final run resumed from
    (0 = its re-training started afresh)."""

    method: SfrMethod = SfrMethod.SFR

    def to_dict(self) -> Dict[str, Any]:
        return dict(super().to_dict(), method=self.method.value)


def sfr_adapt(images: Mapping[str, PathLike], labels: Mapping[str, PathLike], *, store: PathLike,
              model: Optional[PathLike] = "default", sam_prior: Union[None, PathLike, SamPrior] = None,
              method: Union[str, SfrMethod, None] = None, name: Optional[str] = None,
              config: SfrConfig = SfrConfig(), progress: Optional[ProgressCallback] = None,
              predictions_dir: Optional[PathLike] = None, device: Optional[torch.device] = None,
              work_dir: Optional[PathLike] = None, before_commit: Optional[BeforeCommit] = None) -> SfrResult:
    """Adapt ``model`` with SFR or SFR+; store the result, and activate it when the guard finds it better.

    Args:
        images: ``{case_id: image path}`` of every volume (labelled and unlabelled).
        labels: ``{case_id: label path}``; the other images form the unlabelled pool.
        store: model store folder.
        model: ``"default"``, a card file, or a store folder; its weights are where re-training starts.
        sam_prior: a SAM prior folder (``sam-card.json``) or a loaded :class:`~.prior.SamPrior`; default the
            embedded ``sfr-sam-tiny`` (not Meta's SAM). Its classes must be the model's.
        method: ``sfr`` or ``sfr_plus``; overrides ``config.method`` when given.
        name: model name in the store; default as Adapt Model's.
        config: every setting (saved with the new version).
        progress: receives the events; raising ``CancelledError`` cancels (the store is unchanged).
        predictions_dir: when given (and ``config.predict_pool``), label maps of the pool by the new model.
        device: compute device (default CUDA when present).
        work_dir: folder for resumable state (see the module docstring); a later call with the same inputs,
            settings and SAM prior resumes there.
        before_commit: called just before the commit with the model that will be active afterwards (the
            re-trained one, or the current one when the guard refused it), as for Adapt Model; still cancellable.

    Raises:
        InputError: no labelled volume, missing files, no unlabelled volume, no usable labelled volume.
        ModelError: the SAM prior's classes differ from the model's.
        CancelledError: ``progress`` asked to cancel.
        JobError, ModelError: the work dir holds state of another run (the message says what to delete).
    """
    if method is not None:
        config = replace(config, method=method)
    finetune = config.finetune_config()
    run = start_run(images, labels, store=store, model=model, name=name, config=finetune, progress=progress,
                    work_dir=None, predictions_dir=predictions_dir, ctx=DistContext.single(device))
    prior = _load_prior(sam_prior, run)
    if work_dir is not None:
        run.checkpoints = _checkpoints(run, config, prior, Path(work_dir))
    pool = _read_pool(run)
    labeled = read_checked_labels(run)
    before = score_current_model(run, labeled)
    cv = _cross_validate(run, config, prior, labeled, pool, before) if run.folds else None
    stop = cv.stop_step() if cv is not None else config.retrain.iterations
    run.emit("phase", phase="train", message=(
        f"{config.method.value}: final run on all {len(labeled)} labelled volume(s), re-training up to step {stop} of "
        f"{config.retrain.iterations}" + (" (the cross-validated best)" if cv is not None else "")))
    records, resumed = _final_run(run, config, prior, labeled, pool, stop)
    run.network.eval()
    decision = decide_activation(run, labeled, cv, stop)
    metrics = summarise_metrics(run, labeled, before, cv, stop, decision)
    predictions = predict_pool(run) if run.predictions_dir is not None and config.predict_pool else {}
    run_before_commit(run, decision, before_commit)
    version = _commit(run, config, prior, labeled, records, metrics, decision)
    run.checkpoints.clear()
    result = SfrResult(name=run.name, version=version.version, version_dir=version.path,
                       card_path=version.path / "card.json", activated=decision.activate, decision=decision,
                       method=config.method, labeled=tuple(c.case_id for c in labeled), skipped=tuple(run.skipped),
                       pseudo=tuple(records), metrics=json_ready(metrics), predictions=predictions,
                       seconds=time.time() - run.started, resumed_from=resumed)
    run.emit("phase", phase="done", message=(
        f"{run.name} {result.version} written" + (" and active" if result.activated else " (not activated)")))
    return result


# --------------------------------------------------------------------------------------------- the steps


def _load_prior(sam_prior: Union[None, PathLike, SamPrior], run: AdaptRun) -> SamPrior:
    prior = sam_prior if isinstance(sam_prior, SamPrior) else load_sam_prior(
        PRIOR_DIR if sam_prior is None else Path(sam_prior), device=None)
    if len(prior.class_names) != run.card.num_classes:
        raise ModelError(f"the SAM prior {prior.path} has {len(prior.class_names)} classes "
                         f"({', '.join(prior.class_names)}) but the model {run.card.name} has {run.card.num_classes} "
                         f"({', '.join(run.card.class_names)}); give a SAM with the model's classes.")
    run.emit("phase", phase="load", message=f"SAM prior {prior.card.get('name', prior.path.name)} ({prior.path})"
             + ("; NOT Meta's SAM" if prior.card.get("not_meta_sam") else ""))
    return prior


def _checkpoints(run: AdaptRun, config: SfrConfig, prior: SamPrior, folder: Path) -> Checkpoints:
    """The run's resumable state in ``folder``, identified by the volumes, every SFR setting and the SAM prior."""

    class Identity:  # what run_fingerprint hashes: the settings that make a cached state valid
        @staticmethod
        def to_dict() -> Dict[str, Any]:
            return {"sfr": config.to_dict(), "sam_prior": _prior_identity(prior)}

    return Checkpoints(folder, run_fingerprint(run.images, run.labels, Identity()), card_signature(run.card),
                       run.ctx.is_main)


def _prior_identity(prior: SamPrior) -> Dict[str, Any]:
    """The SAM prior as far as a cached pseudo-label depends on it: its card, and its weights file's size and time."""
    identity: Dict[str, Any] = {"card": hashlib.sha256(json.dumps(prior.card, sort_keys=True, default=str)
                                                       .encode()).hexdigest()}
    weights = Path(prior.path) / str(prior.card.get("weights", ""))
    if weights.is_file():
        stat = weights.stat()
        identity["weights"] = {"path": str(weights.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return identity


def _read_pool(run: AdaptRun) -> List[Tuple[str, Volume]]:
    """The readable unlabelled volumes (the others are skipped with a warning); none is an error."""
    pool = []
    for case, path in sorted(run.pool.items()):
        try:
            pool.append((case, check_image(read_volume(path))))
        except InputError as exc:
            run.skipped.append(SkippedVolume(case, path, str(exc)))
            run.warn(f"skipped unlabelled volume {case} ({path}): {exc}")
    if not pool:
        raise InputError("SFR needs unlabelled volumes to pseudo-label: give --images with volumes that have no "
                         "label file in --labels (or use assft adapt --pseudo none).")
    return pool


def _prefixed(run: AdaptRun, label: str) -> Optional[ProgressCallback]:
    if run.progress is None or not label:
        return run.progress

    def forward(event: Event) -> None:
        run.progress(Event(event=event.event, phase=event.phase, step=event.step, total=event.total,
                           message=f"{label}{event.message}", metrics=event.metrics))

    return forward


def _sam_pseudo_labels(run: AdaptRun, config: SfrConfig, prior: SamPrior, labeled: Sequence[LabeledVolume],
                       pool: Sequence[Tuple[str, Volume]], progress: Optional[ProgressCallback]
                       ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord], PseudoLabels]:
    """Stage 2: SAM fine-tuned on ``labeled`` and its pseudo-labels of ``pool`` (SFR: all; SFR+: the selection).

    Returns:
        the pseudo-labelled cases re-trained on, one record per pool volume, and all of it as the
        :class:`~ASSFTActive.finetune.checkpoints.PseudoLabels` a work dir keeps (:func:`_restore_sam_pseudo`).
    """
    cases = [SfrCase(c.case_id, c.image, c.label) for c in labeled]
    ids, volumes = [c for c, _ in pool], [v for _, v in pool]
    if config.method == SfrMethod.SFR_PLUS:
        plus = sfr_plus_finetune(prior.model, cases, volumes, config.sam, config.plus, prior.sam_input, ids,
                                 progress=progress, device=run.device)
        labels = plus.pseudo_labels
        decisions = sfr_plus_select(ids, [p.confidence for p in labels], config.plus.kappa)
        kept = {d.case_id for d in decisions if d.kept}
        threshold = config.plus_voxel_threshold
    else:
        tuned = finetune_sam(prior.model, cases, config.sam, prior.sam_input, progress, run.device)
        labels = sfr_pseudo_labels(tuned.model, volumes, prior.sam_input, ids, progress, run.device)
        kept, threshold = set(ids), None
    pseudo, records = [], []
    for image, label in zip(volumes, labels):
        keep = label.case_id in kept
        if keep:
            mask = label.voxel_mask(threshold) if threshold is not None else None
            pseudo.append(SupervisedCase(label.case_id, image, label.label, mask))
        records.append(SfrPseudoRecord(label.case_id, label.confidence, keep,
                                       int(np.count_nonzero(np.asarray(label.label.array)))))
    order = sorted(range(len(records)), key=lambda i: -records[i].confidence)
    decisions = tuple(PseudoDecision(r.case_id, r.confidence, float("nan"), float("nan"), r.kept,
                                     order.index(i) + 1) for i, r in enumerate(records))
    saved = PseudoLabels(decisions, labels={p.case_id: np.asarray(p.label.array) for p in labels},
                         masks={c.case_id: np.asarray(c.voxel_mask) for c in pseudo if c.voxel_mask is not None})
    return pseudo, records, saved


def _restore_sam_pseudo(saved: PseudoLabels, pool: Sequence[Tuple[str, Volume]], where: Path
                        ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord]]:
    """The pseudo-labelled cases and records of :func:`_sam_pseudo_labels` from what a work dir kept."""
    images = dict(pool)
    missing = [d.case_id for d in saved.decisions if d.case_id not in images or d.case_id not in saved.labels]
    if missing:
        raise JobError(f"{where}: the kept SAM pseudo-labels do not match the unlabelled volumes now readable "
                       f"({', '.join(missing[:5])}). Delete {where} to start over.")
    pseudo, records = [], []
    for decision in saved.decisions:
        image, array = images[decision.case_id], saved.labels[decision.case_id]
        if decision.kept:
            pseudo.append(SupervisedCase(decision.case_id, image, image.with_array(array),
                                         saved.masks.get(decision.case_id)))
        records.append(SfrPseudoRecord(decision.case_id, decision.confidence, decision.kept,
                                       int(np.count_nonzero(array))))
    return pseudo, records


def _stage2(run: AdaptRun, config: SfrConfig, prior: SamPrior, train: Sequence[LabeledVolume],
            pool: Sequence[Tuple[str, Volume]], label: str
            ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord], PseudoLabels]:
    run.emit("phase", phase="sfr_finetune", message=f"{label}{config.method.value} stage 2: fine-tuning SAM on "
                                                    f"{len(train)} labelled volume(s)")
    return _sam_pseudo_labels(run, config, prior, train, pool, _prefixed(run, label))


def _announce_stage3(run: AdaptRun, config: SfrConfig, train: Sequence[LabeledVolume],
                     pseudo: Sequence[SupervisedCase], stop: int, label: str, start: int = 0) -> None:
    run.emit("phase", phase="train", step=start, total=config.retrain.iterations, message=(
        f"{label}{config.method.value} stage 3: Mean-Teacher re-training on {len(train)} labelled + {len(pseudo)} "
        f"SAM-pseudo-labelled volume(s), {min(stop, config.retrain.iterations)} of {config.retrain.iterations} "
        "steps" + (f", resuming at {start}" if start else "")))


def _sfr_recipe(run: AdaptRun, config: SfrConfig, prior: SamPrior, network: torch.nn.Module,
                train: Sequence[LabeledVolume], pool: Sequence[Tuple[str, Volume]], stop: int, *, label: str,
                scorer=None) -> List[SfrPseudoRecord]:
    """Stages 2 and 3 of a cross-validation fold on ``train``: SAM fine-tuning and pseudo-labels, then the
    Mean-Teacher re-training of ``network`` in place up to ``stop``, scored along the way."""
    pseudo, records, _ = _stage2(run, config, prior, train, pool, label)
    _announce_stage3(run, config, train, pseudo, stop, label)
    labeled = [SupervisedCase(c.case_id, c.image, c.label) for c in train]
    hooks: List[TrainHook] = [ProgressHook(_prefixed(run, label))]
    if scorer is not None:
        hooks.append(ScoreHook(scorer))
    train_supervised(network, run.card, labeled, config.retrain,
                     terms=[mean_teacher_term(network, pseudo, config.mean_teacher)], hooks=hooks,
                     schedule=TrainSchedule(stop=stop, validate_every=config.validation.every if scorer else 0),
                     device=run.device)
    return records


def _final_run(run: AdaptRun, config: SfrConfig, prior: SamPrior, train: Sequence[LabeledVolume],
               pool: Sequence[Tuple[str, Volume]], stop: int) -> Tuple[List[SfrPseudoRecord], int]:
    """Stages 2 and 3 on every labelled volume, re-training ``run.network`` in place up to ``stop``; resumes from
    the work dir: stage 2 when its pseudo-labels were kept, stage 3 from its last checkpoint.

    Returns:
        the pseudo-label records and the re-training step resumed from (0: from the start).
    """
    checkpoints = run.checkpoints
    checkpoint = checkpoints.load()
    last = min(int(stop), config.retrain.iterations)
    if checkpoint is None:
        pseudo, records, saved = _stage2(run, config, prior, train, pool, "")
        if checkpoints.writer:
            checkpoints.save_pseudo(SAM_PSEUDO_ROUND, saved)
            checkpoints.save(TrainingCheckpoint(0, 0, cpu_state(run.network), None))  # stage 2 is done
        start, optim = 0, None
    else:
        saved = checkpoints.load_pseudo(SAM_PSEUDO_ROUND)
        if saved is None:
            raise JobError(f"{checkpoints.folder}: a re-training checkpoint without the SAM pseudo-labels it was "
                           f"trained on. Delete {checkpoints.folder} to start over.")
        pseudo, records = _restore_sam_pseudo(saved, pool, checkpoints.folder)
        load_state(run.network, checkpoint.network, str(checkpoints.folder / CHECKPOINT_FILE))
        start, optim = (checkpoint.step, checkpoint.optimizer) if checkpoint.stage == 0 else (last, None)
        run.emit("phase", phase="resume", step=start, total=config.retrain.iterations, message=(
            f"resuming the final run: SAM's pseudo-labels of {len(records)} volume(s) kept from stage 2, "
            f"re-training from step {start}"))
    _announce_stage3(run, config, train, pseudo, stop, "", start)
    if start < last:
        _retrain_final(run, config, train, pseudo, last, start, optim)
    if checkpoints.writer:
        checkpoints.save(TrainingCheckpoint(1, 0, cpu_state(run.network), None))  # stage 3 is done
    return records, start


def _retrain_final(run: AdaptRun, config: SfrConfig, train: Sequence[LabeledVolume],
                   pseudo: Sequence[SupervisedCase], last: int, start: int, optim: Optional[Mapping]) -> None:
    """The final Mean-Teacher re-training, resumable: checkpoints every ``checkpoint_every`` steps."""
    checkpoints = run.checkpoints

    def save(step: int, net: torch.nn.Module, state: Mapping) -> None:
        if step < last:
            checkpoints.save(TrainingCheckpoint(0, step, cpu_state(net), state))

    labeled = [SupervisedCase(c.case_id, c.image, c.label) for c in train]
    hooks: List[TrainHook] = [ProgressHook(run.progress)]
    if checkpoints.writer:
        hooks.append(CheckpointHook(config.checkpoint_every, save))
    train_supervised(run.network, run.card, labeled, config.retrain,
                     terms=[mean_teacher_term(run.network, pseudo, config.mean_teacher, optim)], hooks=hooks,
                     schedule=TrainSchedule(start=start, stop=last, resume_state=optim), device=run.device)


def _cross_validate(run: AdaptRun, config: SfrConfig, prior: SamPrior, labeled: Sequence[LabeledVolume],
                    pool: Sequence[Tuple[str, Volume]], before: EvaluationReport) -> CrossValidation:
    """The whole SFR pipeline once per fold from the current weights; held-out Dice along the re-training."""
    folds = assign_folds([c.case_id for c in labeled], config.validation.folds, config.retrain.seed)
    per_class: Dict[str, Dict[int, Tuple[float, ...]]] = {c.case_id: {0: tuple(c.dice)} for c in before.cases}
    for index, held in enumerate(folds):
        held_cases = [c for c in labeled if c.case_id in held]
        train = [c for c in labeled if c.case_id not in held]
        tag = f"fold {index + 1}/{len(folds)} "
        saved = run.checkpoints.load_fold(index)
        if saved is not None and set(saved.held_out) == set(held):
            for case, by_step in saved.scores.items():
                per_class[case].update(by_step)
            run.emit("phase", phase="resume", message=f"cross-validation {tag}: kept from an earlier run, skipped")
            continue

        def score(net: torch.nn.Module, step: int, held_cases=held_cases, tag=tag) -> None:
            report = run.evaluate(net, held_cases, hd95=False, phase="validate")
            for case in report.cases:
                per_class[case.case_id][step] = tuple(case.dice)
            run.emit("metric", phase="validate", step=step, total=config.retrain.iterations,
                     message=f"{tag}held-out Dice {report.mean_dice():.3f} at step {step}",
                     metrics={"cv_dice": report.mean_dice()})

        run.emit("phase", phase="validate", message=(
            f"cross-validation {tag}: SFR on {len(train)} labelled volume(s), scoring {', '.join(held)}"))
        _sfr_recipe(run, config, prior, run.current_network(run.network), train, pool, config.retrain.iterations,
                    label=tag, scorer=score)
        run.checkpoints.save_fold(index, FoldScores(held_out=tuple(held), scores={
            c.case_id: dict(per_class[c.case_id]) for c in held_cases}))
    steps = sorted(set.intersection(*(set(v) for v in per_class.values())))
    return CrossValidation(steps=tuple(steps),
                           dice={c: tuple(mean_scored(v[s]) for s in steps) for c, v in per_class.items()},
                           dice_per_class={c: tuple(v[s] for s in steps) for c, v in per_class.items()},
                           folds=tuple(folds))


def _commit(run: AdaptRun, config: SfrConfig, prior: SamPrior, labeled: Sequence[LabeledVolume],
            records: Sequence[SfrPseudoRecord], metrics: Mapping[str, Any], decision: ActivationDecision):
    """The new version through :meth:`~ASSFTActive.store.ModelStore.add_version`, with SFR's provenance."""
    run.emit("phase", phase="commit", message=f"writing a new version of {run.name}")
    card = run.card
    provenance = json_ready({
        "method": config.method.value, "base_model": str(card.path), "base_name": card.name,
        "pretrained": str(run.pretrained),
        "sam_prior": {"path": str(prior.path), "name": prior.card.get("name"),
                      "not_meta_sam": prior.card.get("not_meta_sam")},
        "labeled": [{"case_id": c.case_id, "image": c.image_path, "label": c.label_path, "role": "train"}
                    for c in labeled],
        "skipped": [s.to_dict() for s in run.skipped],
        "pseudo_labeled": [r.to_dict() for r in records if r.kept],
        "sam_pseudo_labels": [r.to_dict() for r in records],
        "seeds": {"sam": config.sam.seed, "retrain": config.retrain.seed},
        "activation": decision.to_dict(), "metrics": metrics,
        "package_version": __version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "device": str(run.device),
        "created": time.time(), "seconds": round(time.time() - run.started, 1),
    })
    summary = {"dice_before": metrics["before"]["mean_dice"], "dice_after": metrics["after"]["mean_dice"],
               "evaluated_on": metrics["evaluated_on"], "labeled": len(labeled),
               "pseudo_labeled": sum(1 for r in records if r.kept), "method": config.method.value,
               "activation": decision.to_dict()}
    version = run.store.add_version(
        run.name, card, unwrap(run.network), pretrained=run.pretrained, provenance=provenance,
        config={"sfr": config.to_dict(), "model": str(card.path), "name": run.name, "package_version": __version__},
        metrics=json_ready(summary), activate=decision.activate)
    if not decision.activate:
        run.warn(f"{run.name} {version.version} is stored but the active model was not changed: {decision.reason}",
                 phase="commit")
    return version
