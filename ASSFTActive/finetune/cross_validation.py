"""The guard's evidence: the recipe cross-validated over the labelled volumes, and the pool check.

:func:`cross_validate` runs the method's recipe (:meth:`~.method.AdaptMethod.recipe`: ASSFT's or SFR's) once per
fold from the current weights and scores the fold's held-out volumes along the way (a finished fold is kept in the
checkpoints and not run again); :func:`pool_check` compares what the current and the adapted model predict on a few
unlabelled volumes. :mod:`.guard` turns both into the
activation decision.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ..distributed import map_shards
from ..errors import InputError
from ..evaluate import EvaluationReport, json_ready, mean_scored
from ..io import read_volume
from ..plausibility import check_image
from ..progress import Event
from .checkpoints import FoldScores
from .config import ValidationConfig
from .fold_average import FoldWeights, KeptFold
from .guard import CrossValidation, PoolCheck, assign_folds, check_pool
from .state import AdaptRun, LabeledVolume, cpu_state

__all__ = [
    "cross_validate",
    "cv_summary",
    "fold_run",
    "fold_share",
    "fold_stage_steps",
    "pool_check",
    "to_final_step",
]


def cross_validate(
    run: AdaptRun,
    labeled: Sequence[LabeledVolume],
    before: EvaluationReport,
    kept: Optional[List[KeptFold]] = None,
) -> CrossValidation:
    """Run the recipe once per fold from the current weights; score each fold's held-out volumes.

    With ``validation.fold_fraction < 1``, or a ``validation.fold_budget`` below the number of folds, each fold runs
    a shortened recipe (:func:`fold_run`, :func:`fold_share`) and its scores are recorded at the final run's steps
    (:func:`to_final_step`); with ``validation.fold_pool_cases`` the folds pseudo-label only part of the pool.

    Args:
        before: the current model on ``labeled`` (step 0 of every curve).
        kept: when given, filled in fold order with each fold's weights at its scored steps and its pseudo-labelling
            rounds (the folds' average; kept in the checkpoints beside the fold's scores, and a finished fold whose
            weights or rounds were not kept is run again).
    """
    folds = assign_folds([c.case_id for c in labeled], run.config.validation.folds, run.config.train.seed, run.subjects)
    per_class: Dict[str, Dict[int, Tuple[float, ...]]] = {c.case_id: {0: tuple(c.dice)} for c in before.cases}
    for index, held in enumerate(folds):
        fold = run.checkpoints.load_fold(index)
        weights = run.checkpoints.load_fold_weights(index) if kept is not None and fold is not None else None
        whole = kept is None or (weights is not None and fold.pseudo is not None)  # weights are read with a fold
        if fold is not None and set(fold.held_out) == set(held) and whole:
            run.emit(
                "phase",
                phase="resume",
                message=(f"cross-validation fold {index + 1} of {len(folds)}: kept from an earlier run, skipped"),
            )
        else:
            weights = {} if kept is not None else None
            fold = _run_fold(run, labeled, index, len(folds), held, weights)
            if weights is not None:
                run.checkpoints.save_fold_weights(index, weights)
            run.checkpoints.save_fold(index, fold)
        if kept is not None:
            kept.append(KeptFold(weights, fold.pseudo or ()))
        for case, by_step in fold.scores.items():
            per_class[case].update(by_step)
    steps = sorted(set.intersection(*(set(v) for v in per_class.values())))
    return CrossValidation(
        steps=tuple(steps),
        dice={c: tuple(mean_scored(v[s]) for s in steps) for c, v in per_class.items()},
        dice_per_class={c: tuple(v[s] for s in steps) for c, v in per_class.items()},
        folds=tuple(folds),
    )


def fold_share(validation: ValidationConfig, folds: int) -> float:
    """The share of every stage's steps that each of ``folds`` cross-validation folds trains:
    ``validation.fold_fraction``, capped so that the folds together train at most ``validation.fold_budget`` times
    the final run's steps.

    Example: ``fold_budget`` 2 leaves two folds whole (1.0) and gives each of three folds two thirds.
    """
    share = validation.fold_fraction
    if validation.fold_budget is not None:
        share = min(share, validation.fold_budget / max(1, folds))
    return share


def fold_stage_steps(iterations: int, semi_steps: int, fraction: float) -> Tuple[int, int]:
    """Steps of a fold's supervised stage and of each of its semi-supervised rounds: ``fraction`` of the final
    run's, rounded, at least 1."""
    return max(1, int(round(iterations * fraction))), max(1, int(round(semi_steps * fraction)))


def to_final_step(step: int, iterations: int, semi_steps: int, fold_iterations: int, fold_semi_steps: int) -> int:
    """A fold's global step as the final run's step: each stage stretched linearly onto the final stage, so stage
    ends meet stage ends (the supervised stage's last fold step is the final run's step ``iterations``).

    Example: a final recipe of 100 + 100 steps and a fold of 33 + 33: fold step 33 -> 100, 66 -> 200, 10 -> 30.
    """
    if step <= fold_iterations:
        return int(round(step * iterations / fold_iterations))
    rounds_done, within = divmod(step - fold_iterations, fold_semi_steps)
    if within == 0:
        rounds_done, within = rounds_done - 1, fold_semi_steps
    return iterations + rounds_done * semi_steps + int(round(within * semi_steps / fold_semi_steps))


def fold_run(run: AdaptRun, progress_offset: int, folds: int = 1) -> AdaptRun:
    """The run one of ``folds`` cross-validation folds trains in: ``run`` itself when each fold trains the whole
    recipe (:func:`fold_share` is 1) on the whole pool, else a copy with the shortened recipe (scored every
    ``every × share`` steps), part of the pool, and training progress shown at the final run's steps (from
    ``progress_offset`` on).

    Only a recipe made of ASSFT's stages (``train.iterations`` + ``rounds × semi_steps``) is shortened; another
    method's folds (SFR's, whose steps are its re-training's) run in full, with a warning."""
    config, validation = run.config, run.config.validation
    fraction, wanted = fold_share(validation, folds), validation.fold_pool_cases
    pool = sorted(run.pool)
    if fraction == 1.0 and (wanted is None or wanted >= len(pool)):
        return run
    if run.recipe_steps != config.train.iterations + run.rounds * config.semi_steps:
        run.warn(
            "validation.fold_fraction, fold_budget and fold_pool_cases shorten Adapt Model's recipe (a supervised "
            "stage and semi-supervised rounds) only; this method's folds run in full.",
            phase="validate",
        )
        return run
    iterations, semi = fold_stage_steps(config.train.iterations, config.semi_steps, fraction)
    short = replace(
        config,
        train=replace(config.train, iterations=iterations),
        semi_iterations=semi,
        validation=replace(validation, every=max(1, int(round(validation.every * fraction)))),
    )
    images = dict(run.images)
    if wanted is not None and wanted < len(pool):
        kept = {pool[int(i)] for i in np.linspace(0, len(pool) - 1, wanted)}
        images = {k: v for k, v in run.images.items() if k in run.labels or k in kept}

    def forward(event: Event) -> None:
        if run.progress is None:
            return
        if event.phase != "train":
            run.progress(event)
            return
        step = progress_offset + to_final_step(
            max(0, event.step - progress_offset), config.train.iterations, config.semi_steps, iterations, semi
        )
        run.progress(replace(event, step=step, total=run.total_steps))

    return replace(run, config=short, images=images, progress=forward)


def _run_fold(
    run: AdaptRun,
    labeled: Sequence[LabeledVolume],
    index: int,
    count: int,
    held: Sequence[str],
    weights: Optional[FoldWeights] = None,
) -> FoldScores:
    """One fold: the recipe on ``labeled`` minus ``held``, scored on ``held``, with its pseudo-labelling rounds;
    ``weights`` (when given) receives the fold's weights at every scored step."""
    held_cases = [c for c in labeled if c.case_id in held]
    train = [c for c in labeled if c.case_id not in held]
    scores: Dict[str, Dict[int, Tuple[float, ...]]] = {c: {} for c in held}
    offset = index * run.recipe_steps
    fold = fold_run(run, offset, count)
    short = fold.config

    def final_step(step: int) -> int:
        if fold is run:
            return step
        return to_final_step(
            step, run.config.train.iterations, run.config.semi_steps, short.train.iterations, short.semi_steps
        )

    def score(net: nn.Module, step: int) -> None:
        step = final_step(step)
        report = run.evaluate(net, held_cases, hd95=False, phase="validate")
        for case in report.cases:
            scores[case.case_id][step] = tuple(case.dice)
        if weights is not None:
            weights[step] = cpu_state(net)
        run.emit(
            "metric",
            phase="validate",
            step=step,
            total=run.recipe_steps,
            message=f"fold {index + 1}/{count}: held-out Dice {report.mean_dice():.3f} at step {step}",
            metrics={"cv_dice": report.mean_dice(), "fold": float(index)},
        )

    shortened = (
        ""
        if fold is run
        else (
            f" ({short.train.iterations} + {short.semi_steps} steps per stage instead of {run.config.train.iterations} "
            f"+ {run.config.semi_steps}, {len(fold.pool)} of {len(run.pool)} unlabelled volumes)"
        )
    )
    run.emit(
        "phase",
        phase="validate",
        message=(
            f"cross-validation fold {index + 1} of {count}: adapting on {len(train)} labelled volume(s), scoring "
            f"{', '.join(held)}{shortened}"
        ),
    )
    rounds = fold.method.recipe(
        fold,
        fold.current_network(fold.network),
        train,
        fold.recipe_steps,
        progress_offset=offset,
        label=f"fold {index + 1}/{count} ",
        scorer=score,
    )
    pseudo = tuple(replace(r, start=final_step(r.start)) for r in rounds or ())
    return FoldScores(held_out=tuple(held), scores=scores, pseudo=pseudo)


def cv_summary(cv: CrossValidation, step: int, class_names: Sequence[str]) -> Dict[str, Any]:
    """The :meth:`~ASSFTActive.evaluate.EvaluationReport.summary` shape of the cross-validated held-out scores at
    ``step`` (no HD95)."""
    index = cv.steps.index(step)
    per_class = np.array([cv.dice_per_class[c][index] for c in cv.cases])
    return json_ready(
        {
            "mean_dice": mean_scored(cv.dice[c][index] for c in cv.cases),
            "dice": {name: mean_scored(per_class[:, i]) for i, name in enumerate(class_names)},
            "hd95": {name: None for name in class_names},
            "cases": len(cv.cases),
        }
    )


def pool_check(run: AdaptRun, adapted: nn.Module, labeled: Sequence[LabeledVolume]) -> Optional[PoolCheck]:
    """Voxels per class that both models predict on up to ``validation.pool_cases`` unlabelled volumes."""
    wanted = run.config.validation.pool_cases
    pool = run.pool
    ids = sorted(pool)
    if not wanted or not ids:
        return None
    picks = sorted({ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(wanted, len(ids)))})
    predictors = {"current": run.predictor(run.current_network(adapted)), "adapted": run.predictor(adapted)}
    n = run.card.num_classes

    def count(case: str) -> Optional[Dict[str, List[int]]]:
        try:
            image = check_image(read_volume(pool[case]))
        except InputError:
            return None  # reported by pseudo-labelling or ranking
        labels = {key: predictor.predict(image).label for key, predictor in predictors.items()}
        return {key: [int(np.count_nonzero(label == c)) for c in range(1, n)] for key, label in labels.items()}

    counted = {c: v for c, v in zip(picks, map_shards(run.ctx, picks, count)) if v is not None}
    if not counted:
        return None
    labelled_mean = [
        float(np.mean([np.count_nonzero(np.asarray(c.label.array) == k) for c in labeled])) for k in range(1, n)
    ]
    return check_pool(
        {c: v["current"] for c, v in counted.items()},
        {c: v["adapted"] for c, v in counted.items()},
        run.card.class_names[1:],
        run.config.validation.collapse_ratio,
        labelled_mean,
    )
