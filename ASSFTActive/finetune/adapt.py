"""Adapt a model to a new site: the guard's cross-validation, fine-tuning with pseudo-labels, a new store version.

:func:`adapt_model` is the one entry point used by ``assft adapt``, the background worker and the demo. A run:

1. checks the inputs (missing files, empty labelled set, an unwritable store) before any heavy work;
2. reads every labelled volume; a label whose geometry does not match its image, or with classes the model does
   not have, is skipped with a ``warning`` event naming the file (no usable labelled volume left: an error), and
   scores the current model on each (Dice, HD95 per class);
3. **the recipe**, run once per cross-validation fold (:mod:`.guard`; each fold trains on the other labelled volumes
   and scores its held-out ones along the way) and once on every labelled volume up to the step where the
   cross-validated Dice peaked:
   a. **supervised stage**: Dice+CE on foreground-aware patches of the labelled volumes; the result is the teacher;
   b. **semi-supervised stage(s)** (method-spec §1.7): the teacher predicts every unlabelled volume; each gets a
      foreground confidence and a semantic distance (pooled deepest encoder stage, cosine, min over labelled
      volumes); the reliable subset (mode ``selective``; ``all`` and ``none`` for comparison) is pseudo-labelled
      and training continues on labelled + pseudo-labelled patches (:mod:`.training`, :mod:`.semi`);
4. **the guard** (:func:`.guard.decide`): the new model becomes active only when the cross-validated Dice beats
   the current model's and its predictions on the unlabelled pool did not collapse; otherwise it is stored,
   not activated, and the reason is given (``assft models activate`` overrides);
5. predicts the pool, runs ``before_commit`` (e.g. re-ranking), and only then writes a new version to the model
   store (and switches the active pointer when the guard allows).

Everything before step 5's commit can be cancelled (the progress callback raises ``CancelledError``) and leaves the
store as it was. With ``work_dir`` the run writes resumable checkpoints there and a new run continues from them.
Under ``torchrun`` (a :class:`~ASSFTActive.distributed.DistContext` with several ranks) training is
DistributedDataParallel, and prediction and validation are sharded across ranks; only rank 0 writes.
"""

from __future__ import annotations

import copy
import hashlib
import io as _stdio
import json
import math
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..distributed import DistContext
from ..errors import InputError, JobError, ModelError
from ..evaluate import (
    NOT_SCORED,
    CaseMetrics,
    EvaluationReport,
    dice_per_class,
    format_score,
    hd95_per_class,
    mean_scored,
)
from ..inference import Predictor
from ..io import PathLike, Volume, atomic_write_bytes, atomic_write_text, read_label, read_volume, write_volume
from ..models import LoadedModel, LoadReport, ModelCard, derive_card, load_card, load_model, save_card
from ..plausibility import check_image
from ..progress import Event, ProgressCallback, emit
from ..store import ModelStore, check_name, resolve_card_path
from .config import FinetuneConfig, PseudoMode, Teacher
from .guard import ActivationDecision, CrossValidation, PoolCheck, assign_folds, check_pool, decide
from .label_checks import require_plausible_labelled_set
from .pseudo import (
    PseudoCandidate,
    PseudoDecision,
    foreground_confidence,
    select_reliable,
    semantic_distance,
    voxel_confidence_mask,
)
from .training import SemiParts, SupervisedCase, train_supervised

__all__ = ["AdaptResult", "SkippedVolume", "adapt_model", "card_signature", "summarise_report"]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE = "weights.safetensors"

BeforeCommit = Callable[[LoadedModel, DistContext], None]


@dataclass(frozen=True)
class SkippedVolume:
    """A labelled (or unlabelled) volume left out, and why."""

    case_id: str
    path: str
    reason: str

    def to_dict(self) -> Dict[str, str]:
        return {"case_id": self.case_id, "path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class AdaptResult:
    """What an adaptation run produced.

    Attributes:
        name: model name in the store.
        version: the new version, ``"v<k>"``.
        version_dir: its folder.
        card_path: its model card (the active card when ``activated``).
        activated: whether the new version became the active one.
        decision: the guard's verdict and its reason (:class:`~.guard.ActivationDecision`).
        labeled: labelled volumes trained on.
        skipped: volumes left out, with the reason.
        pseudo: the pseudo-labelling decision on every unlabelled volume (last self-training round).
        metrics: ``{"evaluated_on": "cross_validation" | "labeled", "cases", "before": {...}, "after": {...},
            "stop_step", "cross_validation": {...} | None, "activation": {...}}``, each summary
            ``{"mean_dice", "dice": {class: x}, "hd95": {class: mm}}``. With cross-validation, "before" is the
            current model on the labelled volumes and "after" the held-out score of the folds at ``stop_step``;
            without it (one label, or the guard off), "after" is the new model on its own training volumes.
        predictions: ``{case_id: label file}`` of the unlabelled volumes predicted by the new model.
        seconds: wall time of the run.
        resumed_from: global training step the run resumed from (0 = fresh start).
    """

    name: str
    version: str
    version_dir: Path
    card_path: Path
    activated: bool
    decision: ActivationDecision
    labeled: Tuple[str, ...]
    skipped: Tuple[SkippedVolume, ...]
    pseudo: Tuple[PseudoDecision, ...]
    metrics: Mapping[str, Any]
    predictions: Mapping[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0

    @property
    def dice_before(self) -> float:
        return float(self.metrics["before"]["mean_dice"])

    @property
    def dice_after(self) -> float:
        return float(self.metrics["after"]["mean_dice"])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "version_dir": str(self.version_dir),
            "card_path": str(self.card_path), "activated": self.activated,
            "activation": self.decision.to_dict(), "labeled": list(self.labeled),
            "skipped": [s.to_dict() for s in self.skipped],
            "pseudo": [d.to_dict() for d in self.pseudo], "metrics": _jsonable(self.metrics),
            "predictions": {k: str(v) for k, v in self.predictions.items()}, "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


def summarise_report(report: EvaluationReport) -> Dict[str, Any]:
    """``{"mean_dice", "dice": {class: x}, "hd95": {class: mm or None}, "cases": n}`` of an evaluation."""
    return _jsonable({"mean_dice": report.mean_dice(), "dice": report.mean_dice_per_class(),
                      "hd95": report.mean_hd95_per_class(), "cases": len(report.cases)})


def card_signature(card: ModelCard) -> str:
    """Hash of what fixes a network's tensors and inputs (architecture, arguments, classes, patch, preprocessing)."""
    keys = ("architecture", "arguments", "class_names", "encoder_stages", "patch_size", "preprocessing", "spacing",
            "orientation")
    data = {k: v for k, v in card.to_dict().items() if k in keys}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _unwrap(network: nn.Module) -> nn.Module:
    return getattr(network, "module", network)


def _state_bytes(state: Mapping[str, Any]) -> bytes:
    buffer = _stdio.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _cpu_state(network: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in _unwrap(network).state_dict().items()}


def _load_state(network: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    try:
        _unwrap(network).load_state_dict(dict(state))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(
            f"{where}: the checkpoint does not match the model card ({first[1].strip() if len(first) > 1 else exc}). "
            "Delete the job's checkpoints folder to start over with this card."
        ) from exc


# --------------------------------------------------------------------------------------------- checkpoints


class _Checkpoints:
    """Resumable state in ``work_dir`` (rank 0 writes; every rank reads)."""

    def __init__(self, folder: Optional[Path], fingerprint: str, signature: str, writer: bool):
        self.folder = folder
        self.fingerprint = fingerprint
        self.signature = signature
        self.writer = writer and folder is not None
        if self.writer:
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def load(self) -> Optional[Dict[str, Any]]:
        if self.folder is None or not (self.folder / CHECKPOINT_FILE).is_file():
            return None
        path = self.folder / CHECKPOINT_FILE
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise JobError(f"{path}: the checkpoint cannot be read ({type(exc).__name__}: {exc}). Delete "
                           f"{self.folder} to start the job over.") from exc
        return self._verified(state, path)

    def _verified(self, state: Any, path: Path) -> Dict[str, Any]:
        """``state`` when it was written by this ASSFT version for the same card, volumes and settings."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise JobError(f"{path}: not a checkpoint of this ASSFT version. Delete {self.folder} to start over.")
        if state.get("card_signature") != self.signature:
            raise ModelError(
                f"{path}: the checkpoint was written for another model card (different architecture, classes or "
                f"preprocessing) than the job's model now. Restore the job's model, or delete {self.folder} to "
                "start over with the new card."
            )
        if state.get("fingerprint") != self.fingerprint:
            raise JobError(
                f"{path}: the job's volumes or settings changed since this checkpoint was written. Restore them, "
                f"or delete {self.folder} to start over."
            )
        return state

    def save(self, state: Mapping[str, Any]) -> None:
        if not self.writer:
            return
        payload = dict(state, format=CHECKPOINT_FORMAT, fingerprint=self.fingerprint,
                       card_signature=self.signature)
        atomic_write_bytes(self.folder / CHECKPOINT_FILE, _state_bytes(payload))

    def clear(self) -> None:
        """Remove every file this class wrote (after the version was committed: nothing is left to resume)."""
        if not self.writer:
            return
        for pattern in (CHECKPOINT_FILE, "cv-fold*.json", "pseudo-r*.json", "pseudo-r*.npz"):
            for item in self.folder.glob(pattern):
                item.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # the folder holds other files of the caller

    def save_fold(self, index: int, data: Mapping[str, Any]) -> None:
        """The held-out scores of a finished cross-validation fold (a resumed job skips that fold)."""
        if self.writer:
            payload = dict(data, format=CHECKPOINT_FORMAT, fingerprint=self.fingerprint,
                           card_signature=self.signature)
            atomic_write_text(self.folder / f"cv-fold{index}.json", json.dumps(_jsonable(payload)))

    def load_fold(self, index: int) -> Optional[Dict[str, Any]]:
        path = None if self.folder is None else self.folder / f"cv-fold{index}.json"
        if path is None or not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(f"{path}: the fold's scores cannot be read ({exc}). Delete {self.folder} to start the "
                           "job over.") from exc
        return self._verified(state, path)

    # pseudo-labels of one self-training round

    def pseudo_files(self, round_index: int) -> Tuple[Path, Path]:
        return self.folder / f"pseudo-r{round_index}.json", self.folder / f"pseudo-r{round_index}.npz"

    def save_pseudo(self, round_index: int, decisions: Sequence[PseudoDecision],
                    arrays: Mapping[str, np.ndarray]) -> None:
        if not self.writer:
            return
        meta, data = self.pseudo_files(round_index)
        buffer = _stdio.BytesIO()
        np.savez_compressed(buffer, **{k: v for k, v in arrays.items()})
        atomic_write_bytes(data, buffer.getvalue())
        atomic_write_text(meta, json.dumps([d.to_dict() for d in decisions], indent=1))

    def load_pseudo(self, round_index: int) -> Optional[Tuple[Tuple[PseudoDecision, ...], Dict[str, np.ndarray]]]:
        if self.folder is None:
            return None
        meta, data = self.pseudo_files(round_index)
        if not meta.is_file() or not data.is_file():
            return None
        decisions = tuple(PseudoDecision.from_dict(d) for d in json.loads(meta.read_text(encoding="utf-8")))
        with np.load(data) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        return decisions, arrays


# --------------------------------------------------------------------------------------------- the run


@dataclass
class _Labeled:
    case_id: str
    image: Volume
    label: Volume
    image_path: str
    label_path: str


Scorer = Callable[[nn.Module, int], None]


class _Run:
    """One adaptation run (state shared by the folds and the final training; see :func:`adapt_model`)."""

    def __init__(self, images: Mapping[str, str], labels: Mapping[str, str], card: ModelCard, store: ModelStore,
                 name: str, config: FinetuneConfig, progress: Optional[ProgressCallback], work_dir: Optional[Path],
                 predictions_dir: Optional[Path], ctx: DistContext, before_commit: Optional[BeforeCommit]):
        self.images = images
        self.labels = labels
        self.card = card
        self.store = store
        self.name = name
        self.config = config
        self.progress = progress
        self.predictions_dir = predictions_dir
        self.ctx = ctx
        self.device = ctx.device
        self.before_commit = before_commit
        self.skipped: List[SkippedVolume] = []
        self.started = time.time()
        fingerprint = hashlib.sha256(json.dumps({
            "images": dict(sorted(images.items())), "labels": dict(sorted(labels.items())),
            "config": config.to_dict(),
        }, sort_keys=True).encode()).hexdigest()
        checkpoint_dir = Path(work_dir) if work_dir is not None else None
        self.checkpoints = _Checkpoints(checkpoint_dir, fingerprint, card_signature(card), ctx.is_main)
        self.rounds = config.pseudo.rounds
        self.recipe_steps = config.train.iterations + self.rounds * config.semi_steps
        self.folds = 0
        self.anchor: Dict[str, torch.Tensor] = {}

    @property
    def total_steps(self) -> int:
        """Progress steps of the whole run: every fold's recipe, then the final one."""
        return (self.folds + 1) * self.recipe_steps

    # ------------------------------------------------------------------ events

    def emit(self, kind: str, **kwargs: Any) -> None:
        emit(self.progress, kind, **kwargs)

    def warn(self, message: str, phase: str = "load") -> None:
        self.emit("warning", phase=phase, message=message)

    # ------------------------------------------------------------------ inputs

    def read_labeled(self) -> List[_Labeled]:
        cases = []
        ids = sorted(self.labels)
        for index, case in enumerate(ids):
            image_path, label_path = self.images[case], self.labels[case]
            try:
                image = read_volume(image_path)
                label = read_label(label_path, image, self.card.num_classes)
            except InputError as exc:
                self.skipped.append(SkippedVolume(case, label_path, str(exc)))
                self.warn(f"skipped labelled volume {case} ({label_path}): {exc}")
                continue
            cases.append(_Labeled(case, image, label, image_path, label_path))
            self.emit("progress", phase="load", step=index + 1, total=len(ids), message=f"read {case}")
        if not cases:
            reasons = "; ".join(f"{s.path}: {s.reason}" for s in self.skipped[:3])
            raise InputError(
                f"none of the {len(ids)} labelled volumes can be used ({reasons}). Fix the label files (same grid "
                f"as the image, classes 0..{self.card.num_classes - 1}); the model store was not changed."
            )
        return cases

    # ------------------------------------------------------------------ evaluation (sharded across ranks)

    def predictor(self, network: nn.Module) -> Predictor:
        model = LoadedModel(self.card, _unwrap(network), LoadReport(0, (), ()))
        return Predictor(model, device=self.device)

    def evaluate(self, network: nn.Module, cases: Sequence[_Labeled], hd95: bool, phase: str) -> EvaluationReport:
        predictor = self.predictor(network)
        n = self.card.num_classes
        mine: Dict[str, CaseMetrics] = {}
        for index, case in enumerate(self.ctx.shard(list(cases))):
            prediction = predictor.predict(case.image).label
            truth = np.asarray(case.label.array)
            hd = (hd95_per_class(prediction, truth, n, case.image.spacing) if hd95
                  else tuple([float("nan")] * (n - 1)))
            mine[case.case_id] = CaseMetrics(case.case_id, dice_per_class(prediction, truth, n), hd)
            self.emit("progress", phase=phase, step=index + 1, total=len(cases), message=f"scored {case.case_id}")
        joined: Dict[str, CaseMetrics] = {}
        for part in self.ctx.all_gather(mine):
            joined.update(part)
        return EvaluationReport(class_names=tuple(self.card.class_names[1:]),
                                cases=tuple(joined[c.case_id] for c in cases))

    # ------------------------------------------------------------------ pseudo-labels

    def pseudo_round(self, round_index: int, network: nn.Module, train: Sequence[_Labeled],
                     pool: Mapping[str, str], cache: bool) -> Tuple[List[SupervisedCase], Tuple[PseudoDecision, ...]]:
        rule = self.config.pseudo
        if rule.mode == PseudoMode.NONE or not pool:
            if rule.mode != PseudoMode.NONE:
                self.emit("phase", phase="pseudo", message="no unlabelled volumes: training on labelled ones only")
            return [], ()
        saved = self.checkpoints.load_pseudo(round_index) if cache else None
        if saved is not None:
            decisions, arrays = saved
        else:
            decisions, arrays = self._pseudo_label(round_index, network, train, pool)
            if cache:
                self.checkpoints.save_pseudo(round_index, decisions, arrays)
                self.ctx.barrier()
        kept = [d for d in decisions if d.kept]
        cases = []
        for decision in kept:
            image = read_volume(pool[decision.case_id])
            label = image.with_array(arrays[f"label_{decision.case_id}"])
            mask = arrays.get(f"mask_{decision.case_id}")
            cases.append(SupervisedCase(decision.case_id, image, label, None if mask is None else mask.astype(bool)))
        self.emit("phase", phase="pseudo", message=(
            f"round {round_index}: {len(kept)} of {len(decisions)} unlabelled volumes pseudo-labelled "
            f"({rule.mode.value}" + (f", {rule.select_mode.value}" if rule.mode == PseudoMode.SELECTIVE else "") + ")"),
            metrics={"pseudo_kept": float(len(kept)), "pseudo_pool": float(len(decisions))})
        return cases, decisions

    def _pseudo_label(self, round_index: int, network: nn.Module, train: Sequence[_Labeled],
                      pool: Mapping[str, str]) -> Tuple[Tuple[PseudoDecision, ...], Dict[str, np.ndarray]]:
        rule = self.config.pseudo
        self.emit("phase", phase="pseudo", message=f"round {round_index}: the teacher predicts the unlabelled pool")
        predictor = self.predictor(network)
        labeled_features = {}
        for case in self.ctx.shard(list(train)):
            labeled_features[case.case_id] = predictor.predict(case.image).features[-1]
        references = [f for part in self.ctx.all_gather(labeled_features) for f in part.values()]
        ids = sorted(pool)
        mine: Dict[str, Any] = {}
        for index, case in enumerate(self.ctx.shard(ids)):
            try:
                image = check_image(read_volume(pool[case]))
            except InputError as exc:
                mine[case] = str(exc)
                continue
            prediction = predictor.predict(image)
            mine[case] = {
                "confidence": foreground_confidence(prediction.label, prediction.max_prob, prediction.entropy,
                                                    rule.confidence, rule.empty_foreground_confidence),
                "distance": semantic_distance(prediction.features[-1], references),
                "label": prediction.label,
                "mask": voxel_confidence_mask(prediction.label, prediction.max_prob, rule.voxel_threshold,
                                              rule.class_keep_min),
            }
            self.emit("progress", phase="pseudo", step=index + 1, total=len(ids), message=f"pseudo-labelled {case}")
        joined: Dict[str, Any] = {}
        for part in self.ctx.all_gather(mine):
            joined.update(part)
        candidates, arrays = [], {}
        for case in ids:
            item = joined[case]
            if isinstance(item, str):
                if not any(s.case_id == case for s in self.skipped):
                    self.skipped.append(SkippedVolume(case, pool[case], item))
                    self.warn(f"skipped unlabelled volume {case} ({pool[case]}): {item}", phase="pseudo")
                continue
            candidates.append(PseudoCandidate(case, item["confidence"], item["distance"]))
            arrays[f"label_{case}"] = item["label"]
            if item["mask"] is not None:
                arrays[f"mask_{case}"] = item["mask"]
        decisions = select_reliable(candidates, rule)
        kept = {d.case_id for d in decisions if d.kept}
        arrays = {k: v for k, v in arrays.items() if k.split("_", 1)[1] in kept}
        return decisions, arrays

    # ------------------------------------------------------------------ the recipe: supervised + semi-supervised

    def stage_offset(self, stage: int) -> int:
        return 0 if stage == 0 else self.config.train.iterations + (stage - 1) * self.config.semi_steps

    def stage_progress(self, stage: int, offset: int, label: str) -> ProgressCallback:
        stage_start = self.stage_offset(stage)
        name = "supervised" if stage == 0 else f"semi-supervised round {stage}"

        def forward(event: Event) -> None:
            if self.progress is None:
                return
            self.progress(Event(event=event.event, phase="train", step=offset + stage_start + event.step,
                                total=self.total_steps, message=f"{label}{name}: {event.message}",
                                metrics=dict(event.metrics, stage=float(stage))))

        return forward

    def run_recipe(self, network: nn.Module, train: Sequence[_Labeled], pool: Mapping[str, str], stop: int, *,
                   progress_offset: int, label: str, scorer: Optional[Scorer] = None, final: bool = False,
                   resume: Optional[Mapping[str, Any]] = None) -> List[Tuple[PseudoDecision, ...]]:
        """Train ``network`` in place on ``train`` (+ pseudo-labels of ``pool``) up to global step ``stop``.

        Args:
            scorer: called as ``scorer(network, global_step)`` every ``validation.every`` steps and at the end of
                each stage (cross-validation folds).
            final: the run on every labelled volume: writes resumable checkpoints and caches its pseudo-labels.
            resume: the final run's checkpoint to continue from.

        Returns:
            the pseudo-labelling decisions of each self-training round that ran (none in ``none`` mode).
        """
        rounds: List[Tuple[PseudoDecision, ...]] = []
        start_stage = int(resume["stage"]) if resume else 0
        if final and self.config.pseudo.mode != PseudoMode.NONE:
            for stage in range(1, min(start_stage, 1 + self.rounds)):
                saved = self.checkpoints.load_pseudo(stage)  # rounds finished before a resume
                if saved is not None:
                    rounds.append(saved[0])
        for stage in range(start_stage, 1 + self.rounds):
            offset = self.stage_offset(stage)
            if offset >= stop:
                break
            pseudo: List[SupervisedCase] = []
            if stage > 0:
                pseudo, decisions = self.pseudo_round(stage, network, train, pool, cache=final)
                if decisions:
                    rounds.append(decisions)
            resuming = resume is not None and stage == start_stage
            self.train_stage(stage, network, train, pseudo, stop - offset, progress_offset, label, scorer, final,
                             start_step=int(resume["step"]) if resuming else 0,
                             optim=resume["optim"] if resuming else None)
        return rounds

    def train_stage(self, stage: int, network: nn.Module, train: Sequence[_Labeled],
                    pseudo: Sequence[SupervisedCase], stop: int, progress_offset: int, label: str,
                    scorer: Optional[Scorer], final: bool, start_step: int = 0,
                    optim: Optional[Mapping[str, Any]] = None) -> None:
        config = self.config
        base = config.train
        train_config = base if stage == 0 else replace(base, iterations=config.semi_steps, seed=base.seed + stage)
        last = min(stop, train_config.iterations)
        labeled = [SupervisedCase(c.case_id, c.image, c.label) for c in train]
        rule = config.pseudo
        teacher = None
        if stage > 0 and pseudo and rule.teacher == Teacher.EMA:
            teacher = copy.deepcopy(_unwrap(network))
            if optim is not None and optim.get("teacher") is not None:
                teacher.load_state_dict(optim["teacher"])
        every_score = config.validation.every if scorer is not None else 0
        every_checkpoint = config.checkpoint_every if final and self.checkpoints.enabled else 0
        interval = math.gcd(every_score, every_checkpoint) or max(every_score, every_checkpoint)
        offset = self.stage_offset(stage)

        def on_checkpoint(step: int, net: nn.Module, state: Mapping[str, Any]) -> None:
            if every_score and step % every_score == 0 and step < last:
                scorer(net, offset + step)
            if every_checkpoint and step % every_checkpoint == 0 and step < last:
                self.save_checkpoint(stage, step, net, state)

        if start_step < last:
            resuming = f", resuming at {start_step}" if start_step else ""
            self.emit("phase", phase="train", step=progress_offset + offset + start_step, total=self.total_steps,
                      message=f"{label}{'supervised' if stage == 0 else f'semi-supervised round {stage}'} training: "
                              f"{len(labeled)} labelled + {len(pseudo)} pseudo-labelled volumes, "
                              f"{last} of {train_config.iterations} steps{resuming}")
            semi = SemiParts(voxel_threshold=rule.voxel_threshold, class_keep_min=rule.class_keep_min,
                             strong_view=rule.strong_view, cutmix_probability=rule.cutmix_probability,
                             ema_decay=rule.ema_decay)
            train_supervised(self.ctx.wrap(network), self.card, labeled, train_config, pseudo=pseudo,
                             progress=self.stage_progress(stage, progress_offset, label), device=self.device,
                             start_step=start_step, optimizer_state=optim, checkpoint=on_checkpoint,
                             checkpoint_every=interval, teacher=teacher, semi=semi,
                             encoder_stages=self.card.encoder_stages, anchor=self.anchor, stop_at=last,
                             rank=self.ctx.rank)
        if scorer is not None:
            scorer(network, offset + last)
        if final:
            self.save_checkpoint(stage + 1, 0, network, None)

    def save_checkpoint(self, stage: int, step: int, network: nn.Module, optim: Optional[Mapping[str, Any]]) -> None:
        if self.checkpoints.writer:
            self.checkpoints.save({"stage": stage, "step": step, "network": _cpu_state(network), "optim": optim})

    # ------------------------------------------------------------------ the guard

    def current_network(self, network: nn.Module) -> nn.Module:
        """A copy of ``network`` holding the weights the run started from (the current, active model)."""
        current = copy.deepcopy(_unwrap(network))
        _load_state(current, self.anchor, "current model")
        return current

    def cross_validate(self, network: nn.Module, labeled: Sequence[_Labeled], pool: Mapping[str, str],
                       before: EvaluationReport) -> CrossValidation:
        """Run the recipe once per fold from the current weights; score each fold's held-out volumes."""
        folds = assign_folds([c.case_id for c in labeled], self.config.validation.folds, self.config.train.seed)
        first = {c.case_id: c.dice for c in before.cases}
        dice: Dict[str, Dict[int, float]] = {c: {0: mean_scored(first[c])} for c in first}
        per_class: Dict[str, Dict[int, Tuple[float, ...]]] = {c: {0: tuple(first[c])} for c in first}
        for index, held in enumerate(folds):
            saved = self.checkpoints.load_fold(index)
            if saved is None:
                held_cases = [c for c in labeled if c.case_id in held]
                train = [c for c in labeled if c.case_id not in held]
                fold_network = self.current_network(network)
                scores: Dict[str, Dict[str, List[float]]] = {c: {} for c in held}

                def score(net: nn.Module, step: int, held_cases=held_cases, scores=scores, index=index) -> None:
                    report = self.evaluate(net, held_cases, hd95=False, phase="validate")
                    for case in report.cases:
                        scores[case.case_id][str(step)] = list(case.dice)
                    self.emit("metric", phase="validate", step=step, total=self.recipe_steps,
                              message=f"fold {index + 1}/{len(folds)}: held-out Dice {report.mean_dice():.3f} at "
                                      f"step {step}", metrics={"cv_dice": report.mean_dice(), "fold": float(index)})

                self.emit("phase", phase="validate", message=(
                    f"cross-validation fold {index + 1} of {len(folds)}: adapting on {len(train)} labelled "
                    f"volume(s), scoring {', '.join(held)}"))
                self.run_recipe(fold_network, train, pool, self.recipe_steps, progress_offset=index * self.recipe_steps,
                                label=f"fold {index + 1}/{len(folds)} ", scorer=score)
                saved = {"held_out": list(held), "scores": scores}
                self.checkpoints.save_fold(index, saved)
            for case, by_step in saved["scores"].items():
                for step, values in by_step.items():
                    dice[case][int(step)] = mean_scored(values)
                    per_class[case][int(step)] = tuple(NOT_SCORED if v is None else float(v) for v in values)
        steps = sorted(set.intersection(*(set(v) for v in dice.values())))
        return CrossValidation(steps=tuple(steps), dice={c: tuple(v[s] for s in steps) for c, v in dice.items()},
                               dice_per_class={c: tuple(v[s] for s in steps) for c, v in per_class.items()},
                               folds=tuple(folds))

    def check_pool(self, adapted: nn.Module, pool: Mapping[str, str],
                   labeled: Sequence[_Labeled]) -> Optional[PoolCheck]:
        """Voxels per class that both models predict on up to ``validation.pool_cases`` unlabelled volumes."""
        wanted = self.config.validation.pool_cases
        ids = sorted(pool)
        if not wanted or not ids:
            return None
        picks = sorted({ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(wanted, len(ids)))})
        predictors = {"current": self.predictor(self.current_network(adapted)), "adapted": self.predictor(adapted)}
        n = self.card.num_classes
        mine: Dict[str, Dict[str, List[int]]] = {"current": {}, "adapted": {}}
        for case in self.ctx.shard(picks):
            try:
                image = check_image(read_volume(pool[case]))
            except InputError:
                continue  # reported by pseudo-labelling or ranking
            for key, predictor in predictors.items():
                label = predictor.predict(image).label
                mine[key][case] = [int(np.count_nonzero(label == c)) for c in range(1, n)]
        counts: Dict[str, Dict[str, List[int]]] = {"current": {}, "adapted": {}}
        for part in self.ctx.all_gather(mine):
            for key in counts:
                counts[key].update(part[key])
        if not counts["current"]:
            return None
        labelled_mean = [float(np.mean([np.count_nonzero(np.asarray(c.label.array) == k) for c in labeled]))
                         for k in range(1, n)]
        return check_pool(counts["current"], counts["adapted"], self.card.class_names[1:],
                          self.config.validation.collapse_ratio, labelled_mean)


def _cv_summary(cv: CrossValidation, step: int, class_names: Sequence[str]) -> Dict[str, Any]:
    """The ``summarise_report`` shape of the cross-validated held-out scores at ``step`` (no HD95)."""
    index = cv.steps.index(step)
    per_class = np.array([cv.dice_per_class[c][index] for c in cv.cases])
    return _jsonable({"mean_dice": mean_scored(cv.dice[c][index] for c in cv.cases),
                      "dice": {name: mean_scored(per_class[:, i]) for i, name in enumerate(class_names)},
                      "hd95": {name: None for name in class_names}, "cases": len(cv.cases)})


def _check_replicas(network: nn.Module, ctx: DistContext, progress: Optional[ProgressCallback]) -> None:
    """Under data parallelism every rank must end with the same weights; refuse to store a model otherwise."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        checksum = float(sum(p.double().abs().sum() for p in _unwrap(network).parameters()))
    sums = ctx.all_gather(checksum)
    spread = max(sums) - min(sums)
    if spread > 1e-6 * max(1.0, abs(sums[0])):
        raise JobError(f"the {ctx.world_size} ranks ended with different weights (parameter checksums {sums}); the "
                       "data-parallel run is inconsistent and no model was stored.")
    emit(progress, "phase", phase="train", message=f"{ctx.world_size} ranks hold identical weights "
                                                  f"(checksum {sums[0]:.6g})")


def _check_inputs(images: Mapping[str, PathLike], labels: Mapping[str, PathLike]) -> Tuple[Dict[str, str],
                                                                                            Dict[str, str]]:
    images = {str(k): str(Path(v).expanduser().resolve()) for k, v in dict(images).items()}
    labels = {str(k): str(Path(v).expanduser().resolve()) for k, v in dict(labels).items()}
    if not labels:
        raise InputError("no labelled volumes were given: label at least one volume (pass --labels with label files "
                         "named like their images) before adapting the model.")
    stray = sorted(set(labels) - set(images))
    if stray:
        raise InputError(f"label files {stray[:5]} have no matching image; name each label like its image "
                         "(e.g. images/case_001.nii.gz and labels/case_001.nii.gz).")
    missing = [p for p in list(images.values()) + list(labels.values()) if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"file(s) not found: {', '.join(missing[:5])}{more}. Check the paths.")
    return images, labels


def default_name(card: ModelCard) -> str:
    """Store name of a model adapted from ``card``: its own name once adapted, else ``<name>-adapted``."""
    return card.name if card.pretrained is not None else f"{card.name}-adapted"


def adapt_model(images: Mapping[str, PathLike], labels: Mapping[str, PathLike], *, store: PathLike,
                model: Optional[PathLike] = "default", name: Optional[str] = None,
                config: FinetuneConfig = FinetuneConfig(), progress: Optional[ProgressCallback] = None,
                work_dir: Optional[PathLike] = None, predictions_dir: Optional[PathLike] = None,
                device: Optional[torch.device] = None, dist: Optional[DistContext] = None,
                before_commit: Optional[BeforeCommit] = None) -> AdaptResult:
    """Fine-tune ``model`` on the labelled volumes plus reliable pseudo-labelled ones; store it, and activate it
    when the guard finds it better than the current model.

    Args:
        images: ``{case_id: image path}`` of every volume (labelled and unlabelled).
        labels: ``{case_id: label path}``; the other images form the unlabelled pool.
        store: model store folder (see :mod:`ASSFTActive.store`).
        model: ``"default"``, a card file, or a store folder (``<store>/<name>`` = its active version).
        name: model name in the store; default :func:`default_name` of the card.
        config: every setting of the run (saved with the new version).
        progress: receives :class:`~ASSFTActive.progress.Event` records; raising ``CancelledError`` cancels.
        work_dir: folder for resumable checkpoints (a later call with the same inputs resumes there).
        predictions_dir: when given (and ``config.predict_pool``), label maps of the unlabelled volumes predicted
            by the new model are written there as ``<case_id>.nii.gz``.
        device: compute device (default: CUDA when present; ignored when ``dist`` is given).
        dist: data-parallel context under torchrun (default: one process).
        before_commit: called just before the new version is committed with the model that will be active
            afterwards: the adapted one, or the current one when the guard refused it (e.g. to re-rank the pool
            with the active model); still cancellable.

    Returns:
        the :class:`AdaptResult` (on every rank).

    Raises:
        InputError: no labelled volume, missing files, no usable labelled volume after the checks.
        StoreError: the store cannot be written.
        ModelError: the card, its weights or a checkpoint do not fit.
        CancelledError: ``progress`` asked to cancel; the store is unchanged.
    """
    ctx = dist or DistContext.single(device)
    image_paths, label_paths = _check_inputs(images, labels)
    card_path = resolve_card_path(model)
    card = load_card(card_path)
    name = check_name(name or default_name(card))
    model_store = ModelStore(store)
    if ctx.is_main:
        model_store.check_writable(name)
    emit(progress, "phase", phase="load", message=f"adapting {card.name} ({card_path}) into {model_store.root / name}")
    base = load_model(card)
    pretrained_path = card.pretrained_card().path
    run = _Run(image_paths, label_paths, card, model_store, name, config, progress,
               Path(work_dir) if work_dir is not None else None,
               Path(predictions_dir) if predictions_dir is not None else None, ctx, before_commit)
    labeled = run.read_labeled()
    require_plausible_labelled_set(labeled, card.class_names, config.allow_implausible_labels, run.warn)
    pool = {k: v for k, v in image_paths.items() if k not in label_paths}
    network = base.network
    run.anchor = _cpu_state(network)
    guard = config.validation
    cross_validated = guard.guard and len(labeled) >= 2
    run.folds = min(guard.folds, len(labeled)) if cross_validated else 0

    emit(progress, "phase", phase="evaluate", message=f"scoring the current model on {len(labeled)} labelled "
                                                      "volume(s)")
    before_report = run.evaluate(network, labeled, guard.hd95, "evaluate")
    cv = run.cross_validate(network, labeled, pool, before_report) if cross_validated else None
    stop = cv.stop_step() if cv is not None else run.recipe_steps

    state = run.checkpoints.load()
    resumed = 0
    if state is not None:
        _load_state(network, state["network"], str(run.checkpoints.folder / CHECKPOINT_FILE))
        resumed = run.stage_offset(int(state["stage"])) + int(state["step"])
        emit(progress, "phase", phase="resume", step=run.folds * run.recipe_steps + resumed, total=run.total_steps,
             message=f"resuming the final training from its checkpoint at step {resumed}")
    emit(progress, "phase", phase="train", message=(
        f"final training on all {len(labeled)} labelled volume(s) up to step {stop} of {run.recipe_steps}"
        + (" (the cross-validated best)" if cv is not None else "")))
    rounds = run.run_recipe(network, labeled, pool, stop, progress_offset=run.folds * run.recipe_steps, label="",
                            final=True, resume=state)
    decisions = rounds[-1] if rounds else ()
    _check_replicas(network, ctx, progress)
    network.eval()

    pool_check = run.check_pool(network, pool, labeled) if guard.guard else None
    if guard.guard:
        decision = decide(cv, pool_check, guard.min_gain, stop, len(labeled))
    else:
        decision = ActivationDecision(activate=True, method="unguarded", stop_step=stop, reason=(
            "the guard is off (validation.guard = false): activated without checking that it is better."))
    if cv is not None:
        after = _cv_summary(cv, cv.stop_step(), card.class_names[1:])
    else:
        emit(progress, "phase", phase="evaluate", message="scoring the adapted model on its training volumes")
        after = summarise_report(run.evaluate(network, labeled, guard.hd95, "evaluate"))
    before = summarise_report(before_report)
    metrics = {
        "evaluated_on": "cross_validation" if cv is not None else "labeled",
        "cases": [c.case_id for c in labeled],
        "before": before, "after": after, "stop_step": stop,
        "cross_validation": cv.to_dict() if cv is not None else None,
        "activation": decision.to_dict(),
    }
    emit(progress, "metric", phase="evaluate", step=run.total_steps, total=run.total_steps,
         message=f"mean Dice {format_score(before['mean_dice'])} -> {format_score(after['mean_dice'])} "
                 + ("cross-validated" if cv is not None else "on the training volumes")
                 + f"; {'activating' if decision.activate else 'not activating'}: {decision.reason}",
         metrics={"dice_before": before["mean_dice"] or 0.0, "dice_after": after["mean_dice"] or 0.0})

    predictions = _predict_pool(run, network, pool) if predictions_dir is not None and config.predict_pool else {}
    if before_commit is not None:
        active = network if decision.activate else run.current_network(network)
        before_commit(LoadedModel(card, active, base.report), ctx)

    emit(progress, "phase", phase="commit", message=f"writing a new version of {name}")
    provenance = {
        "base_model": str(card.path), "base_name": card.name, "pretrained": str(pretrained_path),
        "labeled": [{"case_id": c.case_id, "image": c.image_path, "label": c.label_path, "role": "train"}
                    for c in labeled],
        "skipped": [s.to_dict() for s in run.skipped],
        "pseudo_labeled": [d.to_dict() for d in decisions if d.kept],
        "pseudo_decisions": [[d.to_dict() for d in r] for r in rounds],
        "pseudo_mode": config.pseudo.mode.value,
        "seeds": {"train": config.train.seed, "folds": config.train.seed},
        "activation": decision.to_dict(),
        "metrics": metrics,
        "package_version": __version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "device": str(ctx.device), "world_size": ctx.world_size,
        "created": time.time(), "seconds": round(time.time() - run.started, 1), "resumed_from_step": resumed,
    }
    version_info = None
    if ctx.is_main:
        version_info = _commit(run, network, card, pretrained_path, provenance, metrics, decision)
    version_info = ctx.broadcast(version_info)
    run.checkpoints.clear()
    result = AdaptResult(
        name=name, version=version_info["version"], version_dir=Path(version_info["path"]),
        card_path=Path(version_info["path"]) / "card.json", activated=version_info["activated"], decision=decision,
        labeled=tuple(c.case_id for c in labeled), skipped=tuple(run.skipped), pseudo=tuple(decisions),
        metrics=_jsonable(metrics), predictions=predictions, seconds=time.time() - run.started, resumed_from=resumed)
    emit(progress, "phase", phase="done", message=(
        f"{name} {result.version} written" + (" and active" if result.activated else " (not activated)")))
    return result


def _commit(run: _Run, network: nn.Module, card: ModelCard, pretrained_path: Path, provenance: Dict[str, Any],
            metrics: Dict[str, Any], decision: ActivationDecision) -> Dict[str, Any]:
    from ..models import save_weights

    summary = {"dice_before": metrics["before"]["mean_dice"], "dice_after": metrics["after"]["mean_dice"],
               "evaluated_on": metrics["evaluated_on"], "labeled": len(provenance["labeled"]),
               "pseudo_labeled": len(provenance["pseudo_labeled"]), "pseudo_mode": provenance["pseudo_mode"],
               "activation": decision.to_dict()}
    with run.store.begin(run.name) as pending:
        save_weights(_unwrap(network), pending.path / WEIGHTS_FILE)
        new_card = derive_card(card, name=run.name, weights=WEIGHTS_FILE, pretrained=str(pretrained_path),
                               provenance=_jsonable(provenance))
        save_card(new_card, pending.path / "card.json")
        pending.write_json("config.json", {"finetune": run.config.to_dict(), "model": str(card.path),
                                           "name": run.name, "package_version": __version__})
        pending.write_json("provenance.json", _jsonable(provenance))
        version = pending.commit(metrics=_jsonable(summary))
    if decision.activate:
        run.store.activate(run.name, version.version)
    else:
        run.warn(f"{run.name} {version.version} is stored but the active model was not changed: {decision.reason}",
                 phase="commit")
    return {"version": version.version, "path": str(version.path), "activated": decision.activate}


def _predict_pool(run: _Run, network: nn.Module, pool: Mapping[str, str]) -> Dict[str, Path]:
    folder = run.predictions_dir
    predictor = run.predictor(network)
    ids = sorted(pool)
    mine: Dict[str, str] = {}
    for index, case in enumerate(run.ctx.shard(ids)):
        try:
            image = check_image(read_volume(pool[case]))
        except InputError:
            continue  # already reported when pseudo-labelling, or reported by ranking
        prediction = predictor.predict(image)
        path = write_volume(image.with_array(prediction.label), folder / f"{case}.nii.gz")
        mine[case] = str(path)
        run.emit("progress", phase="predict", step=index + 1, total=len(ids), message=f"predicted {case}")
    joined: Dict[str, str] = {}
    for part in run.ctx.all_gather(mine):
        joined.update(part)
    return {case: Path(joined[case]) for case in ids if case in joined}
