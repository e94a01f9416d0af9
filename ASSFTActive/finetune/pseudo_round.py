"""One self-training round: the teacher labels the unlabelled pool and the reliable volumes are kept.

Each unlabelled volume gets a foreground confidence and a semantic distance to the labelled set (pooled deepest
encoder stage, cosine, min over labelled volumes; method-spec §1.7); :func:`~.pseudo.select_reliable` keeps the
reliable subset (``selective``), every volume (``all``) or none (``none``). Prediction is sharded across ranks.
The final training caches each round's result in the checkpoints, so a resumed run does not label the pool again.

Who labels the pool is a :class:`PseudoLabeller` the method is given (default :class:`TeacherLabeller`, the above);
a benchmark's oracle or a partial-label source plugs in there, not by replacing this module's functions.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Protocol, Sequence, Tuple, Union

from torch import nn

from ..distributed import map_shards
from ..errors import InputError
from ..evaluate import SkippedVolume
from ..io import read_volume
from ..plausibility import check_image
from .checkpoints import PseudoLabels
from .config import PseudoLabelConfig, PseudoMode
from .pseudo import (
    PseudoCandidate,
    PseudoDecision,
    foreground_confidence,
    select_reliable,
    semantic_distance,
    voxel_confidence_mask,
)
from .state import AdaptRun, LabeledVolume
from .training import SupervisedCase

__all__ = ["PseudoLabeller", "Selection", "TeacherLabeller", "label_pool", "pseudo_round"]

#: Called as ``select(candidates, rule)``: the decision on every candidate (:func:`~.pseudo.select_reliable`).
Selection = Callable[[Sequence[PseudoCandidate], PseudoLabelConfig], Tuple[PseudoDecision, ...]]


class PseudoLabeller(Protocol):
    """Labels the unlabelled pool in a self-training round."""

    def label_pool(
        self, run: AdaptRun, round_index: int, network: nn.Module, train: Sequence[LabeledVolume]
    ) -> PseudoLabels:
        """The decision on every pool volume of ``run`` and the label (and voxel mask) of the kept ones.

        Args:
            network: the teacher (the model after the previous stage).
            train: the labelled volumes of this run.
        """


class TeacherLabeller:
    """The teacher's labels, with ``select`` deciding which volumes are kept (default: the run's rule,
    :func:`~.pseudo.select_reliable`)."""

    def __init__(self, select: Selection = select_reliable):
        self.select = select

    def label_pool(
        self, run: AdaptRun, round_index: int, network: nn.Module, train: Sequence[LabeledVolume]
    ) -> PseudoLabels:
        return label_pool(run, round_index, network, train, self.select)


def pseudo_round(
    run: AdaptRun,
    round_index: int,
    network: nn.Module,
    train: Sequence[LabeledVolume],
    cache: bool,
    labeller: PseudoLabeller,
) -> Tuple[List[SupervisedCase], Tuple[PseudoDecision, ...]]:
    """The pseudo-labelled training cases of round ``round_index`` and the decision on every pool volume.

    Args:
        network: the teacher (the model after the previous stage).
        train: the labelled volumes of this run (the references of the semantic distance).
        cache: read and write the round in the run's checkpoints (the final training).
        labeller: labels the pool (when the round is not cached).
    """
    rule = run.config.pseudo
    pool = run.pool
    if rule.mode == PseudoMode.NONE or not pool:
        if rule.mode != PseudoMode.NONE:
            run.emit("phase", phase="pseudo", message="no unlabelled volumes: training on labelled ones only")
        return [], ()
    labelled = run.checkpoints.load_pseudo(round_index) if cache else None
    if labelled is None:
        labelled = labeller.label_pool(run, round_index, network, train)
        if cache:
            run.checkpoints.save_pseudo(round_index, labelled)
            run.ctx.barrier()
    kept = [d for d in labelled.decisions if d.kept]
    cases = []
    for decision in kept:
        image = read_volume(pool[decision.case_id])
        label = image.with_array(labelled.labels[decision.case_id])
        mask = labelled.masks.get(decision.case_id)
        cases.append(SupervisedCase(decision.case_id, image, label, None if mask is None else mask.astype(bool)))
    run.emit(
        "phase",
        phase="pseudo",
        message=(
            f"round {round_index}: {len(kept)} of {len(labelled.decisions)} unlabelled volumes pseudo-labelled "
            f"({rule.mode.value}" + (f", {rule.select_mode.value}" if rule.mode == PseudoMode.SELECTIVE else "") + ")"
        ),
        metrics={"pseudo_kept": float(len(kept)), "pseudo_pool": float(len(labelled.decisions))},
    )
    return cases, labelled.decisions


def label_pool(
    run: AdaptRun,
    round_index: int,
    network: nn.Module,
    train: Sequence[LabeledVolume],
    select: Selection = select_reliable,
) -> PseudoLabels:
    """The teacher's label, confidence, distance and voxel mask of every pool volume; ``select`` applied."""
    rule = run.config.pseudo
    pool = run.pool
    run.emit("phase", phase="pseudo", message=f"round {round_index}: the teacher predicts the unlabelled pool")
    predictor = run.predictor(network)
    references = map_shards(run.ctx, list(train), lambda c: predictor.predict(c.image).features[-1])
    ids = sorted(pool)
    steps = iter(range(1, len(ids) + 1))  # this rank's count, as its progress events say

    def teach(case: str) -> Union[str, Dict]:
        step = next(steps)
        try:
            image = check_image(read_volume(pool[case]))
        except InputError as exc:
            return str(exc)
        prediction = predictor.predict(image)
        item = {
            "confidence": foreground_confidence(
                prediction.label,
                prediction.max_prob,
                prediction.entropy,
                rule.confidence,
                rule.empty_foreground_confidence,
            ),
            "distance": semantic_distance(prediction.features[-1], references),
            "label": prediction.label,
            "mask": voxel_confidence_mask(
                prediction.label, prediction.max_prob, rule.voxel_threshold, rule.class_keep_min
            ),
        }
        run.emit("progress", phase="pseudo", step=step, total=len(ids), message=f"pseudo-labelled {case}")
        return item

    candidates, labels, masks = [], {}, {}
    for case, item in zip(ids, map_shards(run.ctx, ids, teach)):
        if isinstance(item, str):
            if not any(s.case_id == case for s in run.skipped):
                run.skipped.append(SkippedVolume(case, pool[case], item))
                run.warn(f"skipped unlabelled volume {case} ({pool[case]}): {item}", phase="pseudo")
            continue
        candidates.append(PseudoCandidate(case, item["confidence"], item["distance"]))
        labels[case] = item["label"]
        if item["mask"] is not None:
            masks[case] = item["mask"]
    decisions = select(candidates, rule)
    kept = {d.case_id for d in decisions if d.kept}
    return PseudoLabels(
        decisions,
        labels={k: v for k, v in labels.items() if k in kept},
        masks={k: v for k, v in masks.items() if k in kept},
    )
