"""The adaptation spine: one run, from the inputs to a new model version, for every adaptation method.

:func:`run_adaptation` is the one entry point behind ``assft adapt``, ``assft sfr``, the background worker, the demo
and the benchmarks; they differ only in the :class:`~.method.AdaptMethod` they pass
(:class:`~.assft.SelectiveSelfTraining` or :class:`~ASSFTActive.sfr.pipeline.Sfr`). A run:

1. checks the inputs (missing files, empty labelled set, an unwritable store) before any heavy work, loads the model
   and what the method needs beside it, and opens the resumable checkpoints (:func:`start_run`);
2. reads every labelled volume; a label whose geometry does not match its image, or with classes the model does
   not have, is skipped with a ``warning`` event naming the file (no usable labelled volume left: an error);
   refuses implausible labels (:mod:`ASSFTActive.label_checks`), and scores the current model on each (Dice, HD95
   per class);
3. **the guard's cross-validation** (:func:`~.cross_validation.cross_validate`): the method's recipe once per fold,
   each fold trained on the other labelled volumes and scored on its held-out ones along the way;
4. **the method's final training** on every labelled volume, up to the step where the cross-validated Dice peaked
   (ASSFT: a supervised stage, then selective semi-supervised rounds, :mod:`.assft`; SFR: SAM fine-tuning, SAM
   pseudo-labels, Mean-Teacher re-training, :mod:`ASSFTActive.sfr.pipeline`), or, with ``validation.final =
   fold_average``, the folds' weights at that step averaged instead (:mod:`.fold_average`);
5. **the guard** (:func:`.guard.decide`): the new model becomes active only when the cross-validated Dice beats
   the current model's and its predictions on the unlabelled pool did not collapse; otherwise it is stored,
   not activated, and the reason is given (``assft models activate`` overrides);
6. predicts the pool, runs ``before_commit`` (e.g. re-ranking), and only then writes a new version to the model
   store (and switches the active pointer when the guard allows) with the method's provenance (:func:`commit`).

Everything before step 6's commit can be cancelled (the progress callback raises ``CancelledError``) and leaves the
store as it was. With ``work_dir`` the run writes resumable checkpoints there and a new run continues from them.
Under ``torchrun`` (a :class:`~ASSFTActive.distributed.DistContext` with several ranks) training is
DistributedDataParallel, and prediction and validation are sharded across ranks; only rank 0 writes.

Where each step lives: the run state and the reading of inputs :mod:`.state`; resumable state :mod:`.checkpoints`; what
a method supplies :mod:`.method`; what a run produced :mod:`.result`; the cross-validation and the pool check
:mod:`.cross_validation`, the decision :mod:`.guard`; scoring :func:`ASSFTActive.evaluate.evaluate_cases`; the new
version :meth:`ASSFTActive.store.ModelStore.add_version`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .. import __version__
from ..distributed import DistContext, map_shards
from ..errors import InputError
from ..evaluate import EvaluationReport, SkippedVolume, format_score, json_ready
from ..io import PathLike, check_writable_folder, read_volume, write_volume
from ..label_checks import require_labels_near_prediction, require_plausible_labelled_set, thresholds_for
from ..models import LoadedModel, ModelCard, load_card, load_model
from ..plausibility import check_image
from ..progress import ProgressCallback, emit
from ..store import ModelStore, ModelVersion, check_name, resolve_card_path
from .assft import SelectiveSelfTraining
from .checkpoints import Checkpoints, card_signature, run_fingerprint
from .config import FinetuneConfig
from .cross_validation import cross_validate, cv_summary, pool_check
from .fold_average import KeptFold, average_folds
from .guard import ActivationDecision, CrossValidation, PoolCheck, count_subjects, decide
from .method import AdaptMethod, Trained
from .result import AdaptResult
from .state import AdaptRun, LabeledVolume, check_inputs, check_subjects, cpu_state, load_state, read_labeled, unwrap

__all__ = ["AdaptRequest", "AdaptResult", "SkippedVolume", "adapt_model", "default_name", "run_adaptation"]

#: Called as ``before_commit(model, ctx)`` just before the commit with the model that will be active afterwards.
BeforeCommit = Callable[[LoadedModel, DistContext], None]


@dataclass(frozen=True)
class AdaptRequest:
    """What to adapt, where to store it, and how the run reports: the inputs of :func:`run_adaptation`.

    Attributes:
        images: ``{case_id: image path}`` of every volume (labelled and unlabelled).
        labels: ``{case_id: label path}``; the other images form the unlabelled pool.
        store: model store folder (see :mod:`ASSFTActive.store`).
        model: ``"default"``, a card file, or a store folder (``<store>/<name>`` = its active version).
        name: model name in the store; default :func:`default_name` of the card.
        progress: receives :class:`~ASSFTActive.progress.Event` records; raising ``CancelledError`` cancels.
        work_dir: folder for resumable checkpoints (a later run with the same inputs and settings resumes there).
        predictions_dir: when given (and the method's ``predict_pool``), label maps of the unlabelled volumes
            predicted by the new model are written there as ``<case_id>.nii.gz``.
        device: compute device (default: CUDA when present; ignored when ``ctx`` is given).
        ctx: data-parallel context under torchrun (default: one process).
        before_commit: called just before the new version is committed with the model that will be active
            afterwards: the adapted one, or the current one when the guard refused it (e.g. to re-rank the pool
            with the active model); still cancellable.
        subjects: ``{case_id: subject}`` where volumes share a subject (two frames of one heart, two scans of one
            patient): the guard's folds hold out a subject's volumes together. Volumes not named are each their
            own subject.
    """

    images: Mapping[str, PathLike]
    labels: Mapping[str, PathLike]
    store: PathLike
    model: Optional[PathLike] = "default"
    name: Optional[str] = None
    progress: Optional[ProgressCallback] = None
    work_dir: Optional[PathLike] = None
    predictions_dir: Optional[PathLike] = None
    device: Optional[torch.device] = None
    ctx: Optional[DistContext] = None
    before_commit: Optional[BeforeCommit] = None
    subjects: Mapping[str, str] = field(default_factory=dict)

    def context(self) -> DistContext:
        return self.ctx if self.ctx is not None else DistContext.single(self.device)


def default_name(card: ModelCard) -> str:
    """Store name of a model adapted from ``card``: its own name once adapted, else ``<name>-adapted``."""
    return card.name if card.pretrained is not None else f"{card.name}-adapted"


def read_checked_labels(run: AdaptRun) -> List[LabeledVolume]:
    """The labelled volumes of ``run`` after the label checks (refused or warned, per ``run.config``), with
    ``run.folds`` set: cross-validation folds when the guard is on and the labels come from at least two subjects
    (:func:`.guard.subject_of`), else 0.
    Shared by every adaptation method (Adapt Model, SFR), so each runs the same checks and guard."""
    config = run.config
    labeled = read_labeled(run)
    limits = thresholds_for(run.card)
    require_plausible_labelled_set(
        labeled,
        run.card.class_names,
        config.allow_implausible_labels,
        run.warn,
        limits=limits,
        partial=getattr(config, "partial_labels", False) or any(c.annotated is not None for c in labeled),
    )  # slices/regions: partial
    if run.card.has_trained_head:
        require_labels_near_prediction(
            labeled,
            run.loaded(run.network),
            config.label_prediction_ratio,
            config.allow_implausible_labels,
            run.warn,
            ctx=run.ctx,
            progress=run.progress,
            limits=limits,
        )
    else:  # encoder-only weights: the head is initialised, its prediction is no reference for the labels
        run.warn(
            f"{run.card.name} holds encoder weights only: the labels are not compared with its prediction "
            "(its head is not trained yet); the label shape checks still ran."
        )
    subjects = labelled_subjects(run, labeled)
    run.folds = min(config.validation.folds, subjects) if config.validation.guard and subjects >= 2 else 0
    return labeled


def labelled_subjects(run: AdaptRun, labeled: Sequence[LabeledVolume]) -> int:
    """How many subjects the labelled volumes come from (each volume its own unless ``run.subjects`` names one)."""
    return count_subjects([c.case_id for c in labeled], run.subjects)


def run_adaptation(request: AdaptRequest, method: AdaptMethod) -> AdaptResult:
    """Adapt ``request.model`` with ``method``; store the result, and activate it when the guard finds it better
    than the current model. The steps are listed in the module docstring; each is a function of this module.

    Returns:
        the method's :class:`AdaptResult` (on every rank).

    Raises:
        InputError: no labelled volume, missing files, no usable labelled volume after the checks (or what the
            method refuses, e.g. SFR without unlabelled volumes).
        StoreError: the store cannot be written.
        ModelError: the card, its weights or a checkpoint do not fit.
        JobError: the work dir holds state of another run (the message says what to delete).
        CancelledError: ``progress`` asked to cancel; the store is unchanged.
    """
    run = start_run(request, method)
    method.prepare(run)
    labeled = read_checked_labels(run)
    before = score_current_model(run, labeled)
    kept_folds: Optional[List[KeptFold]] = [] if run.averages_folds else None
    cv = cross_validate(run, labeled, before, kept_folds) if run.folds else None
    stop = cv.stop_step() if cv is not None else run.recipe_steps
    trained, pool = final_model(run, method, labeled, cv, stop, kept_folds)
    decision = decide_activation(run, labeled, cv, stop, pool)
    metrics = summarise_metrics(run, labeled, before, cv, stop, decision)
    predictions = predict_pool(run) if run.predictions_dir is not None and run.config.predict_pool else {}
    run_before_commit(run, decision, request.before_commit)
    version = commit(run, labeled, trained, metrics, decision)
    result = method.result(
        AdaptResult(
            name=run.name,
            version=version["version"],
            version_dir=Path(version["path"]),
            card_path=Path(version["path"]) / "card.json",
            activated=version["activated"],
            decision=decision,
            labeled=tuple(c.case_id for c in labeled),
            skipped=tuple(run.skipped),
            pseudo=tuple(trained.pseudo),
            metrics=json_ready(metrics),
            predictions=predictions,
            seconds=time.time() - run.started,
            resumed_from=trained.resumed_from,
            not_annotated=tuple(
                (c.case_id, int(c.annotated.size - c.annotated.sum())) for c in labeled if c.annotated is not None
            ),
        )
    )
    run.emit(
        "phase",
        phase="done",
        message=(f"{run.name} {result.version} written" + (" and active" if result.activated else " (not activated)")),
    )
    return result


def adapt_model(
    images: Mapping[str, PathLike],
    labels: Mapping[str, PathLike],
    *,
    store: PathLike,
    model: Optional[PathLike] = "default",
    name: Optional[str] = None,
    config: FinetuneConfig = FinetuneConfig(),
    progress: Optional[ProgressCallback] = None,
    work_dir: Optional[PathLike] = None,
    predictions_dir: Optional[PathLike] = None,
    device: Optional[torch.device] = None,
    dist: Optional[DistContext] = None,
    before_commit: Optional[BeforeCommit] = None,
    subjects: Optional[Mapping[str, str]] = None,
) -> AdaptResult:
    """:func:`run_adaptation` with ASSFT's method (:class:`~.assft.SelectiveSelfTraining` of ``config``): fine-tune
    on the labelled volumes plus reliable pseudo-labelled ones. The arguments are :class:`AdaptRequest`'s (``dist``
    is its ``ctx``). ``config`` is used as given: the jobs and the CLI build theirs with
    :meth:`~.config.FinetuneConfig.for_anatomy`, which adds the model's anatomy's recipe (an ACDC model: 50 + 50
    steps)."""
    return run_adaptation(
        AdaptRequest(
            images,
            labels,
            store,
            model=model,
            name=name,
            progress=progress,
            work_dir=work_dir,
            predictions_dir=predictions_dir,
            device=device,
            ctx=dist,
            before_commit=before_commit,
            subjects=subjects or {},
        ),
        SelectiveSelfTraining(config),
    )


# --------------------------------------------------------------------------------------------- the steps


def start_run(request: AdaptRequest, method: AdaptMethod) -> AdaptRun:
    """Check the inputs and the store (before any heavy work), load the model and what the method needs beside it,
    open the checkpoints (identified by the volumes and :meth:`~.method.AdaptMethod.identity`)."""
    config = method.run_config()
    image_paths, label_paths = check_inputs(request.images, request.labels)
    subjects = check_subjects(request.subjects, image_paths)
    card_path = resolve_card_path(request.model)
    card = load_card(card_path)
    name = check_name(request.name or default_name(card))
    model_store = ModelStore(request.store)
    ctx = request.context()
    predictions_dir = Path(request.predictions_dir) if request.predictions_dir is not None else None
    if ctx.is_main:
        model_store.check_writable(name)
        if predictions_dir is not None and config.predict_pool:  # refused now, not after the training
            check_writable_folder(predictions_dir, "predictions folder")
    emit(
        request.progress,
        "phase",
        phase="load",
        message=f"adapting {card.name} ({card_path}) into {model_store.root / name}",
    )
    loaded = load_model(card)
    method.load(card, request.progress)
    work_dir = Path(request.work_dir) if request.work_dir is not None else None
    checkpoints = Checkpoints(
        work_dir, run_fingerprint(image_paths, label_paths, method.identity()), card_signature(card), ctx.is_main
    )
    return AdaptRun(
        images=image_paths,
        labels=label_paths,
        card=card,
        pretrained=card.pretrained_card().path,
        model=loaded,
        store=model_store,
        name=name,
        config=config,
        ctx=ctx,
        checkpoints=checkpoints,
        method=method,
        progress=request.progress,
        predictions_dir=predictions_dir,
        subjects=subjects,
        anchor=cpu_state(loaded.network),
    )


def score_current_model(run: AdaptRun, labeled: Sequence[LabeledVolume]) -> EvaluationReport:
    """The current model on every labelled volume (step 0 of the cross-validation, "before" of the result)."""
    run.emit("phase", phase="evaluate", message=f"scoring the current model on {len(labeled)} labelled volume(s)")
    return run.evaluate(run.network, labeled, run.config.validation.hd95, "evaluate")


def run_before_commit(run: AdaptRun, decision: ActivationDecision, before_commit: Optional[BeforeCommit]) -> None:
    """Hand ``before_commit`` the model that will be active after the commit (the new one only when activated)."""
    if before_commit is not None:
        active = run.network if decision.activate else run.current_network(run.network)
        before_commit(LoadedModel(run.card, active, run.model.report), run.ctx)


def final_model(
    run: AdaptRun,
    method: AdaptMethod,
    labeled: Sequence[LabeledVolume],
    cv: Optional[CrossValidation],
    stop: int,
    kept_folds: Optional[Sequence[KeptFold]],
) -> Tuple[Trained, Optional[PoolCheck]]:
    """The new model in ``run.network``: the folds' average (:func:`.fold_average.average_folds`) when the run
    kept its folds, else the method's final training. An average that fails the pool check is replaced by the
    final training, with a warning, so that the decision is the retrained model's.

    Returns:
        what the method's provenance needs, and the average's pool check when it passed (``None``: not run yet).
    """
    if kept_folds is not None:
        trained = average_folds(run, kept_folds, stop)
        pool = pool_check(run, run.network, labeled)
        if pool is None or pool.passed:
            return trained, pool
        run.warn(
            f"the folds' average all but stopped predicting {', '.join(pool.collapsed)} on the unlabelled pool: the "
            "final model is trained on every labelled volume instead (validation.final = retrain does this always).",
            phase="train",
        )
        load_state(run.network, run.anchor, "the current model")
        run.retrains = True
    return method.train_final(run, labeled, stop, cross_validated=cv is not None), None


def decide_activation(
    run: AdaptRun,
    labeled: Sequence[LabeledVolume],
    cv: Optional[CrossValidation],
    stop: int,
    pool: Optional[PoolCheck] = None,
) -> ActivationDecision:
    """The guard's verdict (:func:`.guard.decide`), or unconditional activation when the guard is off; its
    ``label_meaning`` says what cross-validation cannot see (:func:`label_meaning_note`). ``pool``: the pool check
    of ``run.network`` when it was already run."""
    guard = run.config.validation
    if not guard.guard:
        decision = ActivationDecision(
            activate=True,
            method="unguarded",
            stop_step=stop,
            reason=("the guard is off (validation.guard = false): activated without checking that it is better."),
        )
    else:
        decision = decide(
            cv,
            pool if pool is not None else pool_check(run, run.network, labeled),
            guard.min_gain,
            stop,
            len(labeled),
            min_fold_gain=guard.min_fold_gain,
            min_gain_low=guard.min_gain_low,
            subjects=labelled_subjects(run, labeled),
        )
    return replace(decision, label_meaning=label_meaning_note(run))


def label_meaning_note(run: AdaptRun) -> str:
    """The record's sentence on mislabelling: cross-validation scores against the same labels and cannot detect
    labels of the wrong meaning; the label checks before training could, unless they were overridden."""
    limits = thresholds_for(run.card)
    blind = (
        "Cross-validation scores every fold against the same labels, so it cannot detect labels of the wrong "
        "meaning (swapped classes, another structure, partial labels): they raise its score as true ones do."
    )
    if getattr(run.config, "allow_implausible_labels", False):
        return (
            blind + " The label checks only warned (allow_implausible_labels): a label they flagged was trained "
            "on, so neither the checks nor the guard vouch for the labels' meaning."
        )
    return (
        blind + " Before training, every label passed the label checks against the current model's prediction "
        f"and the {limits.anatomy} label shapes (swapped classes, another structure, inverted, box, "
        + ("partial labels declared" if getattr(run.config, "partial_labels", False) else "one-slice, outline")
        + ")."
    )


def summarise_metrics(
    run: AdaptRun,
    labeled: Sequence[LabeledVolume],
    before_report: EvaluationReport,
    cv: Optional[CrossValidation],
    stop: int,
    decision: ActivationDecision,
) -> Dict[str, Any]:
    """Before/after scores (see :attr:`AdaptResult.metrics`); "after" is cross-validated when the folds ran."""
    if cv is not None:
        after = cv_summary(cv, cv.stop_step(), run.card.class_names[1:])
    else:
        run.emit("phase", phase="evaluate", message="scoring the adapted model on its training volumes")
        after = run.evaluate(run.network, labeled, run.config.validation.hd95, "evaluate").summary()
    before = before_report.summary()
    run.emit(
        "metric",
        phase="evaluate",
        step=run.total_steps,
        total=run.total_steps,
        message=f"mean Dice {format_score(before['mean_dice'])} -> {format_score(after['mean_dice'])} "
        + ("cross-validated" if cv is not None else "on the training volumes")
        + f"; {'activating' if decision.activate else 'not activating'}: {decision.reason}",
        metrics={"dice_before": before["mean_dice"] or 0.0, "dice_after": after["mean_dice"] or 0.0},
    )
    return {
        "evaluated_on": "cross_validation" if cv is not None else "labeled",
        "cases": [c.case_id for c in labeled],
        "before": before,
        "after": after,
        "stop_step": stop,
        "cross_validation": cv.to_dict() if cv is not None else None,
    }


def predict_pool(run: AdaptRun) -> Dict[str, Path]:
    """Label maps of the unlabelled volumes by the adapted model, written to ``run.predictions_dir``."""
    pool = run.pool
    predictor = run.predictor(run.network)
    ids = sorted(pool)
    steps = iter(range(1, len(ids) + 1))  # this rank's count, as its progress events say

    def write(case: str) -> Optional[str]:
        step = next(steps)
        try:
            image = check_image(read_volume(pool[case]))
        except InputError:
            return None  # already reported when pseudo-labelling, or reported by ranking
        prediction = predictor.predict(image)
        path = str(write_volume(image.with_array(prediction.label), run.predictions_dir / f"{case}.nii.gz"))
        run.emit("progress", phase="predict", step=step, total=len(ids), message=f"predicted {case}")
        return path

    written = map_shards(run.ctx, ids, write)
    return {case: Path(path) for case, path in zip(ids, written) if path is not None}


def commit(
    run: AdaptRun,
    labeled: Sequence[LabeledVolume],
    trained: Trained,
    metrics: Mapping[str, Any],
    decision: ActivationDecision,
) -> Dict[str, Any]:
    """Write the new version (rank 0; :meth:`~ASSFTActive.store.ModelStore.add_version`) with the shared provenance
    plus the method's (``trained.provenance``) and the method's settings, activated when the guard agreed; remove
    the checkpoints. Returns ``{"version", "path", "activated"}`` on every rank."""
    run.emit("phase", phase="commit", message=f"writing a new version of {run.name}")
    card, ctx = run.card, run.ctx
    provenance = json_ready(
        {
            "base_model": str(card.path),
            "base_name": card.name,
            "pretrained": str(run.pretrained),
            "labeled": [
                {"case_id": c.case_id, "image": c.image_path, "label": c.label_path, "role": "train"} for c in labeled
            ],
            "skipped": [s.to_dict() for s in run.skipped],
            **trained.provenance,
            "activation": decision.to_dict(),
            "metrics": metrics,
            "package_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "device": str(ctx.device),
            "world_size": ctx.world_size,
            "created": time.time(),
            "seconds": round(time.time() - run.started, 1),
            "resumed_from_step": trained.resumed_from,
        }
    )
    info = None
    if ctx.is_main:
        summary = {
            "dice_before": metrics["before"]["mean_dice"],
            "dice_after": metrics["after"]["mean_dice"],
            "evaluated_on": metrics["evaluated_on"],
            "labeled": len(labeled),
            **trained.summary,
            "activation": decision.to_dict(),
        }
        version: ModelVersion = run.store.add_version(
            run.name,
            card,
            unwrap(run.network),
            pretrained=run.pretrained,
            provenance=provenance,
            config={**run.method.settings(), "model": str(card.path), "name": run.name, "package_version": __version__},
            metrics=json_ready(summary),
            activate=decision.activate,
        )
        if not decision.activate:
            run.warn(
                f"{run.name} {version.version} is stored but the active model was not changed: {decision.reason}",
                phase="commit",
            )
        info = {"version": version.version, "path": str(version.path), "activated": decision.activate}
    info = ctx.broadcast(info)
    run.checkpoints.clear()
    return info
