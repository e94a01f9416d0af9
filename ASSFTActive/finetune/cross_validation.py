"""The guard's evidence: the recipe cross-validated over the labelled volumes, and the pool check.

:func:`cross_validate` runs the recipe once per fold from the current weights and scores the fold's held-out
volumes along the way (a finished fold is kept in the checkpoints and not run again); :func:`pool_check` compares
what the current and the adapted model predict on a few unlabelled volumes. :mod:`.guard` turns both into the
activation decision.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ..distributed import merge_shards
from ..errors import InputError
from ..evaluate import EvaluationReport, json_ready, mean_scored
from ..io import read_volume
from ..plausibility import check_image
from .checkpoints import FoldScores
from .guard import CrossValidation, PoolCheck, assign_folds, check_pool
from .recipe import run_recipe
from .state import AdaptRun, LabeledVolume

__all__ = ["cross_validate", "cv_summary", "pool_check"]


def cross_validate(run: AdaptRun, labeled: Sequence[LabeledVolume], before: EvaluationReport) -> CrossValidation:
    """Run the recipe once per fold from the current weights; score each fold's held-out volumes.

    Args:
        before: the current model on ``labeled`` (step 0 of every curve).
    """
    folds = assign_folds([c.case_id for c in labeled], run.config.validation.folds, run.config.train.seed)
    per_class: Dict[str, Dict[int, Tuple[float, ...]]] = {c.case_id: {0: tuple(c.dice)} for c in before.cases}
    for index, held in enumerate(folds):
        fold = run.checkpoints.load_fold(index)
        if fold is None:
            fold = _run_fold(run, labeled, index, len(folds), held)
            run.checkpoints.save_fold(index, fold)
        for case, by_step in fold.scores.items():
            per_class[case].update(by_step)
    steps = sorted(set.intersection(*(set(v) for v in per_class.values())))
    return CrossValidation(steps=tuple(steps),
                           dice={c: tuple(mean_scored(v[s]) for s in steps) for c, v in per_class.items()},
                           dice_per_class={c: tuple(v[s] for s in steps) for c, v in per_class.items()},
                           folds=tuple(folds))


def _run_fold(run: AdaptRun, labeled: Sequence[LabeledVolume], index: int, count: int,
              held: Sequence[str]) -> FoldScores:
    held_cases = [c for c in labeled if c.case_id in held]
    train = [c for c in labeled if c.case_id not in held]
    scores: Dict[str, Dict[int, Tuple[float, ...]]] = {c: {} for c in held}

    def score(net: nn.Module, step: int) -> None:
        report = run.evaluate(net, held_cases, hd95=False, phase="validate")
        for case in report.cases:
            scores[case.case_id][step] = tuple(case.dice)
        run.emit("metric", phase="validate", step=step, total=run.recipe_steps,
                 message=f"fold {index + 1}/{count}: held-out Dice {report.mean_dice():.3f} at step {step}",
                 metrics={"cv_dice": report.mean_dice(), "fold": float(index)})

    run.emit("phase", phase="validate", message=(
        f"cross-validation fold {index + 1} of {count}: adapting on {len(train)} labelled volume(s), scoring "
        f"{', '.join(held)}"))
    run_recipe(run, run.current_network(run.network), train, run.recipe_steps,
               progress_offset=index * run.recipe_steps, label=f"fold {index + 1}/{count} ", scorer=score)
    return FoldScores(held_out=tuple(held), scores=scores)


def cv_summary(cv: CrossValidation, step: int, class_names: Sequence[str]) -> Dict[str, Any]:
    """The :meth:`~ASSFTActive.evaluate.EvaluationReport.summary` shape of the cross-validated held-out scores at
    ``step`` (no HD95)."""
    index = cv.steps.index(step)
    per_class = np.array([cv.dice_per_class[c][index] for c in cv.cases])
    return json_ready({"mean_dice": mean_scored(cv.dice[c][index] for c in cv.cases),
                       "dice": {name: mean_scored(per_class[:, i]) for i, name in enumerate(class_names)},
                       "hd95": {name: None for name in class_names}, "cases": len(cv.cases)})


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
    mine: Dict[str, Optional[Dict[str, List[int]]]] = {}
    for case in run.ctx.shard(picks):
        try:
            image = check_image(read_volume(pool[case]))
        except InputError:
            mine[case] = None  # reported by pseudo-labelling or ranking
            continue
        labels = {key: predictor.predict(image).label for key, predictor in predictors.items()}
        mine[case] = {key: [int(np.count_nonzero(label == c)) for c in range(1, n)] for key, label in labels.items()}
    counted = {c: v for c, v in zip(picks, merge_shards(run.ctx.all_gather(mine), picks)) if v is not None}
    if not counted:
        return None
    labelled_mean = [float(np.mean([np.count_nonzero(np.asarray(c.label.array) == k) for c in labeled]))
                     for k in range(1, n)]
    return check_pool({c: v["current"] for c, v in counted.items()}, {c: v["adapted"] for c, v in counted.items()},
                      run.card.class_names[1:], run.config.validation.collapse_ratio, labelled_mean)
