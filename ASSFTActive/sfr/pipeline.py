"""SFR and SFR+ as the second adaptation method: SAM fine-tuning, SAM pseudo-labels, Mean-Teacher re-training.

:class:`Sfr` is the :class:`~ASSFTActive.finetune.method.AdaptMethod` behind ``assft sfr``; the adaptation spine
(:func:`~ASSFTActive.finetune.adapt.run_adaptation`) does everything else exactly as for Adapt Model: the inputs, the
label checks, the current model's score, the guard's cross-validation and decision, the pool predictions,
``before_commit`` and the commit. What SFR supplies:

1. at the start, the SAM prior (:func:`~.prior.load_sam_prior`; its classes must be the model's) and the unlabelled
   pool (none is an error);
2. **its recipe**, run once per cross-validation fold and once on every labelled volume: **SFR stage 2** fine-tunes
   SAM on the stitched labelled volumes (:func:`~.finetune.finetune_sam`) and pseudo-labels the whole unlabelled
   pool (:func:`~.pseudo.sfr_pseudo_labels`, or the ``labeller`` given); **SFR+** instead fine-tunes twice with a
   confident selection between (:func:`~.plus.sfr_plus_finetune`) and re-trains only on the ``kappa`` most
   confident volumes of the final SAM, on their voxels whose SAM confidence reaches ``plus_voxel_threshold``;
   **SFR stage 3** re-trains the current 3D model with Mean Teacher on labels + SAM pseudo-labels in the shared
   trainer (:func:`~.retrain.mean_teacher_term`). Each fold fine-tunes its own SAM on that fold's labels only, so
   no held-out label leaks through the pseudo-labels; the final re-training stops at the cross-validated best step;
3. its provenance: the method, the SAM prior, SAM's pseudo-label confidences and selection.

**Resuming** (``work_dir``; ``assft sfr --work-dir`` and the worker's ``JOB_DIR/checkpoints``): the checkpoints'
identity (:meth:`Sfr.identity`) is *every* SFR setting and the SAM prior (its card and weights file), so nothing of
another run is ever applied:

* each finished cross-validation fold leaves its held-out scores (``cv-fold<k>.json``); a resumed run skips it;
* the final run's stage 2 leaves SAM's pseudo-labels of the pool, their confidences and SFR+'s selection
  (``pseudo-r0.json`` + ``.npz``, :data:`SAM_PSEUDO_ROUND`) and a ``checkpoint.pt`` at re-training step 0: a resumed
  run reads them instead of fine-tuning SAM again (the fine-tuned SAM itself is not needed afterwards and is not
  kept);
* the final Mean-Teacher re-training writes ``checkpoint.pt`` every ``checkpoint_every`` steps (student weights,
  optimiser and scheduler, the EMA teacher) and at its end; a resumed run continues from the last one.

A fold interrupted midway runs again from its start. The commit removes the files. The guard costs ``folds`` extra
SAM fine-tunings as well as re-trainings; the SAM's fine-tuning is not early-stopped. An SFR run is one process.

References:
    Li et al., SFR / SFR+, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..distributed import DistContext
from ..errors import InputError, JobError, ModelError
from ..evaluate import SkippedVolume
from ..finetune.adapt import AdaptRequest, BeforeCommit, run_adaptation
from ..finetune.checkpoints import CHECKPOINT_FILE, PseudoLabels, TrainingCheckpoint
from ..finetune.config import FinetuneConfig
from ..finetune.fold_pseudo import PseudoRound
from ..finetune.method import FoldScorer, Trained
from ..finetune.pseudo import PseudoDecision
from ..finetune.result import AdaptResult
from ..finetune.state import AdaptRun, LabeledVolume, cpu_state, load_state
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
from ..models import ModelCard
from ..plausibility import check_image
from ..progress import Event, ProgressCallback, emit
from .config import SfrConfig, SfrMethod
from .finetune import finetune_sam
from .inputs import SfrCase
from .plus import sfr_plus_finetune
from .prior import PRIOR_DIR, SamPrior, load_sam_prior
from .pseudo import SfrPseudoLabel, sfr_plus_select, sfr_pseudo_labels
from .retrain import mean_teacher_term

__all__ = [
    "SAM_PSEUDO_ROUND",
    "SamLabeller",
    "Sfr",
    "SfrConfig",
    "SfrMethod",
    "SfrPseudoRecord",
    "SfrResult",
    "sfr_adapt",
]

#: Round index under which the final run's SAM pseudo-labels are kept in the work dir (Adapt Model's self-training
#: rounds are 1, 2, ...; an SFR run has none).
SAM_PSEUDO_ROUND = 0

#: SAM's pseudo-labels of a pool, called as :func:`~.pseudo.sfr_pseudo_labels` is: ``labeller(sam, volumes,
#: sam_input, case_ids, progress, device)``. A benchmark passes one that also scores them against hidden labels.
SamLabeller = Callable[..., Tuple[SfrPseudoLabel, ...]]


@dataclass(frozen=True)
class SfrPseudoRecord:
    """One unlabelled volume as SAM saw it in the final run: its SFR+ confidence and whether it was re-trained on."""

    case_id: str
    confidence: float
    kept: bool
    foreground_voxels: int

    def to_dict(self) -> Dict[str, Any]:
        return {
            "case_id": self.case_id,
            "confidence": round(float(self.confidence), 6),
            "kept": self.kept,
            "foreground_voxels": self.foreground_voxels,
        }


@dataclass(frozen=True)
class SfrResult(AdaptResult):
    """What an SFR / SFR+ run produced: an :class:`~ASSFTActive.finetune.adapt.AdaptResult` whose ``pseudo`` holds
    SAM's final pseudo-labels of the pool (:class:`SfrPseudoRecord`: confidence, kept for re-training), plus the
    method. ``metrics`` as in ``AdaptResult``; ``resumed_from`` is the re-training step the final run resumed from
    (0 = its re-training started afresh)."""

    method: SfrMethod = SfrMethod.SFR

    def to_dict(self) -> Dict[str, Any]:
        return dict(super().to_dict(), method=self.method.value)


class Sfr:
    """SFR or SFR+ as an :class:`~ASSFTActive.finetune.method.AdaptMethod` (one object per run: it keeps the loaded
    SAM prior and the unlabelled pool).

    Args:
        config: every setting (saved with the new version).
        sam_prior: a SAM prior folder (``sam-card.json``) or a loaded :class:`~.prior.SamPrior`; default the
            embedded ``sfr-sam-tiny`` (not Meta's SAM). Its classes must be the model's.
        labeller: SAM's pseudo-labeller of the pool (:data:`SamLabeller`; default :func:`~.pseudo.sfr_pseudo_labels`).
    """

    def __init__(
        self,
        config: SfrConfig = SfrConfig(),
        sam_prior: Union[None, PathLike, SamPrior] = None,
        labeller: SamLabeller = sfr_pseudo_labels,
    ):
        self.config, self.sam_prior, self.labeller = config, sam_prior, labeller
        self.prior: Optional[SamPrior] = sam_prior if isinstance(sam_prior, SamPrior) else None
        self.pool: List[Tuple[str, Volume]] = []

    def run_config(self) -> FinetuneConfig:
        return self.config.finetune_config()

    def identity(self) -> Mapping[str, Any]:
        return {"sfr": self.config.to_dict(), "sam_prior": _prior_identity(self._prior())}

    def settings(self) -> Dict[str, Any]:
        return {"sfr": self.config.to_dict()}

    def recipe_steps(self, config: FinetuneConfig) -> int:
        """The re-training's steps (SAM's fine-tuning is not on the guard's curve)."""
        return config.train.iterations

    def load(self, card: ModelCard, progress: Optional[ProgressCallback]) -> None:
        """Load the SAM prior; its classes must be the model's."""
        prior = (
            self.sam_prior
            if isinstance(self.sam_prior, SamPrior)
            else load_sam_prior(PRIOR_DIR if self.sam_prior is None else Path(self.sam_prior), device=None)
        )
        if len(prior.class_names) != card.num_classes:
            raise ModelError(
                f"the SAM prior {prior.path} has {len(prior.class_names)} classes "
                f"({', '.join(prior.class_names)}) but the model {card.name} has {card.num_classes} "
                f"({', '.join(card.class_names)}); give a SAM with the model's classes."
            )
        if tuple(prior.class_names[1:]) != tuple(card.class_names[1:]):  # same count, other meaning or order
            raise ModelError(
                f"the SAM prior {prior.path} names its classes {list(prior.class_names[1:])} but the "
                f"model {card.name} names them {list(card.class_names[1:])}; its masks would train each "
                "class as another. Give a SAM prior whose class_names match the model card's, in order."
            )
        emit(
            progress,
            "phase",
            phase="load",
            message=f"SAM prior {prior.card.get('name', prior.path.name)} "
            f"({prior.path})" + ("; NOT Meta's SAM" if prior.card.get("not_meta_sam") else ""),
        )
        self.prior = prior

    def prepare(self, run: AdaptRun) -> None:
        """Read the unlabelled pool (SAM pseudo-labels it in every fold and in the final run)."""
        if run.ctx.distributed:
            raise JobError(
                "an sfr job runs in one process; start the worker without torchrun "
                "(python -m ASSFTActive.worker JOB_DIR)."
            )
        self.pool = _read_pool(run)

    def recipe(
        self,
        run: AdaptRun,
        network: torch.nn.Module,
        train: Sequence[LabeledVolume],
        stop: int,
        *,
        progress_offset: int,
        label: str,
        scorer: FoldScorer,
    ) -> Tuple[PseudoRound, ...]:
        """Stages 2 and 3 of a cross-validation fold on ``train``: SAM fine-tuning and pseudo-labels of the fold's
        pool, then the Mean-Teacher re-training of ``network`` in place up to ``stop``, scored along the way. SAM's
        one pseudo-labelling trains from step 0."""
        pool = [(case, volume) for case, volume in self.pool if case in run.pool]
        pseudo, records, _ = self._stage2(run, train, pool, label)
        _announce_stage3(run, self.config, train, pseudo, stop, label)
        hooks: List[TrainHook] = [ProgressHook(_prefixed(run, label)), ScoreHook(scorer)]
        train_supervised(
            network,
            run.card,
            _supervised(train),
            run.config.train,
            terms=[mean_teacher_term(network, pseudo, self.config.mean_teacher)],
            hooks=hooks,
            schedule=TrainSchedule(stop=stop, validate_every=run.config.validation.every),
            device=run.device,
        )
        return (PseudoRound.of(0, records),) if records else ()

    def train_final(self, run: AdaptRun, labeled: Sequence[LabeledVolume], stop: int, cross_validated: bool) -> Trained:
        """Stages 2 and 3 on every labelled volume, re-training ``run.network`` in place up to ``stop``; resumes from
        the work dir: stage 2 when its pseudo-labels were kept, stage 3 from its last checkpoint."""
        config, retrain = self.config, run.config.train
        run.emit(
            "phase",
            phase="train",
            message=(
                f"{config.method.value}: final run on all {len(labeled)} labelled volume(s), re-training up to step "
                f"{stop} of {retrain.iterations}" + (" (the cross-validated best)" if cross_validated else "")
            ),
        )
        checkpoints = run.checkpoints
        checkpoint = checkpoints.load()
        last = min(int(stop), retrain.iterations)
        if checkpoint is None:
            pseudo, records, saved = self._stage2(run, labeled, self.pool, "")
            if checkpoints.writer:
                checkpoints.save_pseudo(SAM_PSEUDO_ROUND, saved)
                checkpoints.save(TrainingCheckpoint(0, 0, cpu_state(run.network), None))  # stage 2 is done
            start, optim = 0, None
        else:
            pseudo, records = self._restored(run, checkpoint)
            start, optim = (checkpoint.step, checkpoint.optimizer) if checkpoint.stage == 0 else (last, None)
            run.emit(
                "phase",
                phase="resume",
                step=start,
                total=retrain.iterations,
                message=(
                    f"resuming the final run: SAM's pseudo-labels of {len(records)} volume(s) kept from stage 2, "
                    f"re-training from step {start}"
                ),
            )
        _announce_stage3(run, config, labeled, pseudo, stop, "", start)
        if start < last:
            self._retrain_final(run, labeled, pseudo, last, start, optim)
        if checkpoints.writer:
            checkpoints.save(TrainingCheckpoint(1, 0, cpu_state(run.network), None))  # stage 3 is done
        run.network.eval()
        prior, kept = self._prior(), [r for r in records if r.kept]
        return Trained(
            resumed_from=start,
            pseudo=tuple(records),
            provenance={
                "method": config.method.value,
                "sam_prior": {
                    "path": str(prior.path),
                    "name": prior.card.get("name"),
                    "not_meta_sam": prior.card.get("not_meta_sam"),
                },
                "pseudo_labeled": [r.to_dict() for r in kept],
                "sam_pseudo_labels": [r.to_dict() for r in records],
                "seeds": {"sam": config.sam.seed, "retrain": retrain.seed},
            },
            summary={"pseudo_labeled": len(kept), "method": config.method.value},
        )

    def result(self, result: AdaptResult) -> SfrResult:
        return SfrResult(**{f.name: getattr(result, f.name) for f in fields(result)}, method=self.config.method)

    # ------------------------------------------------------------------------------------- the stages

    def _prior(self) -> SamPrior:
        if self.prior is None:
            raise RuntimeError("Sfr.load must run before the SAM prior is used")
        return self.prior

    def _stage2(
        self, run: AdaptRun, train: Sequence[LabeledVolume], pool: Sequence[Tuple[str, Volume]], label: str
    ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord], PseudoLabels]:
        run.emit(
            "phase",
            phase="sfr_finetune",
            message=f"{label}{self.config.method.value} stage 2: fine-tuning SAM on {len(train)} labelled volume(s)",
        )
        return self._sam_pseudo_labels(run, train, pool, _prefixed(run, label))

    def _sam_pseudo_labels(
        self,
        run: AdaptRun,
        labeled: Sequence[LabeledVolume],
        pool: Sequence[Tuple[str, Volume]],
        progress: Optional[ProgressCallback],
    ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord], PseudoLabels]:
        """Stage 2: SAM fine-tuned on ``labeled`` and its pseudo-labels of ``pool`` (SFR: all; SFR+: the selection).

        Returns:
            the pseudo-labelled cases re-trained on, one record per pool volume, and all of it as the
            :class:`~ASSFTActive.finetune.checkpoints.PseudoLabels` a work dir keeps (:func:`_restore_sam_pseudo`).
        """
        config, prior = self.config, self._prior()
        cases = [SfrCase(c.case_id, c.image, c.label) for c in labeled]
        ids, volumes = [c for c, _ in pool], [v for _, v in pool]
        if config.method == SfrMethod.SFR_PLUS:
            plus = sfr_plus_finetune(
                prior.model,
                cases,
                volumes,
                config.sam,
                config.plus,
                prior.sam_input,
                ids,
                progress=progress,
                device=run.device,
                labeller=self.labeller,
            )
            labels = plus.pseudo_labels
            decisions = sfr_plus_select(ids, [p.confidence for p in labels], config.plus.kappa)
            kept = {d.case_id for d in decisions if d.kept}
            threshold = config.plus_voxel_threshold
        else:
            tuned = finetune_sam(prior.model, cases, config.sam, prior.sam_input, progress, run.device)
            labels = self.labeller(tuned.model, volumes, prior.sam_input, ids, progress, run.device)
            kept, threshold = set(ids), None
        pseudo, records = [], []
        for image, label in zip(volumes, labels):
            keep = label.case_id in kept
            if keep:
                mask = label.voxel_mask(threshold) if threshold is not None else None
                pseudo.append(SupervisedCase(label.case_id, image, label.label, mask))
            records.append(
                SfrPseudoRecord(
                    label.case_id, label.confidence, keep, int(np.count_nonzero(np.asarray(label.label.array)))
                )
            )
        order = sorted(range(len(records)), key=lambda i: -records[i].confidence)
        decisions = tuple(
            PseudoDecision(r.case_id, r.confidence, float("nan"), float("nan"), r.kept, order.index(i) + 1)
            for i, r in enumerate(records)
        )
        saved = PseudoLabels(
            decisions,
            labels={p.case_id: np.asarray(p.label.array) for p in labels},
            masks={c.case_id: np.asarray(c.voxel_mask) for c in pseudo if c.voxel_mask is not None},
        )
        return pseudo, records, saved

    def _restored(
        self, run: AdaptRun, checkpoint: TrainingCheckpoint
    ) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord]]:
        """Stage 2's pseudo-labels kept in the work dir, and the network's weights of ``checkpoint``."""
        checkpoints = run.checkpoints
        saved = checkpoints.load_pseudo(SAM_PSEUDO_ROUND)
        if saved is None:
            raise JobError(
                f"{checkpoints.folder}: a re-training checkpoint without the SAM pseudo-labels it was "
                f"trained on. Delete {checkpoints.folder} to start over."
            )
        restored = _restore_sam_pseudo(saved, self.pool, checkpoints.folder)
        load_state(run.network, checkpoint.network, str(checkpoints.folder / CHECKPOINT_FILE))
        return restored

    def _retrain_final(
        self,
        run: AdaptRun,
        train: Sequence[LabeledVolume],
        pseudo: Sequence[SupervisedCase],
        last: int,
        start: int,
        optim: Optional[Mapping],
    ) -> None:
        """The final Mean-Teacher re-training, resumable: checkpoints every ``checkpoint_every`` steps."""
        checkpoints = run.checkpoints

        def save(step: int, net: torch.nn.Module, state: Mapping) -> None:
            if step < last:
                checkpoints.save(TrainingCheckpoint(0, step, cpu_state(net), state))

        hooks: List[TrainHook] = [ProgressHook(run.progress)]
        if checkpoints.writer:
            hooks.append(CheckpointHook(run.config.checkpoint_every, save))
        train_supervised(
            run.network,
            run.card,
            _supervised(train),
            run.config.train,
            terms=[mean_teacher_term(run.network, pseudo, self.config.mean_teacher, optim)],
            hooks=hooks,
            schedule=TrainSchedule(start=start, stop=last, resume_state=optim),
            device=run.device,
        )


def sfr_adapt(
    images: Mapping[str, PathLike],
    labels: Mapping[str, PathLike],
    *,
    store: PathLike,
    model: Optional[PathLike] = "default",
    sam_prior: Union[None, PathLike, SamPrior] = None,
    method: Union[str, SfrMethod, None] = None,
    name: Optional[str] = None,
    config: SfrConfig = SfrConfig(),
    progress: Optional[ProgressCallback] = None,
    predictions_dir: Optional[PathLike] = None,
    device: Optional[torch.device] = None,
    work_dir: Optional[PathLike] = None,
    before_commit: Optional[BeforeCommit] = None,
    subjects: Optional[Mapping[str, str]] = None,
) -> SfrResult:
    """:func:`~ASSFTActive.finetune.adapt.run_adaptation` with :class:`Sfr` (``method``, when given, overrides
    ``config.method``). The other arguments are :class:`~ASSFTActive.finetune.adapt.AdaptRequest`'s.

    Raises:
        InputError: no labelled volume, missing files, no unlabelled volume, no usable labelled volume.
        ModelError: the SAM prior's classes differ from the model's.
        CancelledError: ``progress`` asked to cancel.
        JobError, ModelError: the work dir holds state of another run (the message says what to delete).
    """
    if method is not None:
        config = replace(config, method=method)
    request = AdaptRequest(
        images,
        labels,
        store,
        model=model,
        name=name,
        progress=progress,
        work_dir=work_dir,
        predictions_dir=predictions_dir,
        ctx=DistContext.single(device),
        before_commit=before_commit,
        subjects=subjects or {},
    )
    return run_adaptation(request, Sfr(config, sam_prior))


# --------------------------------------------------------------------------------------------- helpers


def _supervised(cases: Sequence[LabeledVolume]) -> List[SupervisedCase]:
    return [SupervisedCase(c.case_id, c.image, c.label, c.annotated) for c in cases]


def _announce_stage3(
    run: AdaptRun,
    config: SfrConfig,
    train: Sequence[LabeledVolume],
    pseudo: Sequence[SupervisedCase],
    stop: int,
    label: str,
    start: int = 0,
) -> None:
    iterations = run.config.train.iterations
    run.emit(
        "phase",
        phase="train",
        step=start,
        total=iterations,
        message=(
            f"{label}{config.method.value} stage 3: Mean-Teacher re-training on {len(train)} labelled + {len(pseudo)} "
            f"SAM-pseudo-labelled volume(s), {min(stop, iterations)} of {iterations} steps"
            + (f", resuming at {start}" if start else "")
        ),
    )


def _prior_identity(prior: SamPrior) -> Dict[str, Any]:
    """The SAM prior as far as a cached pseudo-label depends on it: its card, and its weights file's size and time."""
    identity: Dict[str, Any] = {
        "card": hashlib.sha256(json.dumps(prior.card, sort_keys=True, default=str).encode()).hexdigest()
    }
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
        raise InputError(
            "SFR needs unlabelled volumes to pseudo-label: give --images with volumes that have no "
            "label file in --labels (or use assft adapt --pseudo none)."
        )
    return pool


def _prefixed(run: AdaptRun, label: str) -> Optional[ProgressCallback]:
    if run.progress is None or not label:
        return run.progress

    def forward(event: Event) -> None:
        run.progress(
            Event(
                event=event.event,
                phase=event.phase,
                step=event.step,
                total=event.total,
                message=f"{label}{event.message}",
                metrics=event.metrics,
            )
        )

    return forward


def _restore_sam_pseudo(
    saved: PseudoLabels, pool: Sequence[Tuple[str, Volume]], where: Path
) -> Tuple[List[SupervisedCase], List[SfrPseudoRecord]]:
    """The pseudo-labelled cases and records of :func:`_sam_pseudo_labels` from what a work dir kept."""
    images = dict(pool)
    missing = [d.case_id for d in saved.decisions if d.case_id not in images or d.case_id not in saved.labels]
    if missing:
        raise JobError(
            f"{where}: the kept SAM pseudo-labels do not match the unlabelled volumes now readable "
            f"({', '.join(missing[:5])}). Delete {where} to start over."
        )
    pseudo, records = [], []
    for decision in saved.decisions:
        image, array = images[decision.case_id], saved.labels[decision.case_id]
        if decision.kept:
            pseudo.append(
                SupervisedCase(decision.case_id, image, image.with_array(array), saved.masks.get(decision.case_id))
            )
        records.append(
            SfrPseudoRecord(decision.case_id, decision.confidence, decision.kept, int(np.count_nonzero(array)))
        )
    return pseudo, records
