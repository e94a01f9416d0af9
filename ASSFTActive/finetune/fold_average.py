"""The guarded run's new model without a final training: the cross-validation folds' weights, averaged.

Each fold adapts the current weights on all but its held-out labelled volumes. With ``validation.final =
fold_average`` (:class:`~.config.FinalModel`) the folds keep their weights at every scored step, and the new model
is their uniform average at the stopping step (a "model soup" of fine-tunings that start from the same weights:
Wortsman et al., ICML 2022) instead of the recipe trained again on every labelled volume. The guard reads only the
folds, so it decides as it would have; the run costs the folds alone.

Averaging works for fine-tunings that stay in the basin of the weights they started from (a pre-trained model, a
small learning rate); folds that left it can average into a broken model. When the average fails the guard's pool
check (a class it all but stops predicting), the run trains the final model after all
(:func:`~.adapt.final_model`), so the decision is the one the retrained model gets.

The folds' pseudo-labels are the average's too: each fold pseudo-labelled the pool in its own rounds, which are
carried out of the fold (:class:`KeptFold`); the result lists every pool volume with how many folds pseudo-labelled
it in the round their weights at the stopping step trained with (:func:`~.fold_pseudo.fold_votes`), and the
version's provenance keeps each fold's rounds.

MONAI has no weight averaging of separate networks, and torch's ``swa_utils.AveragedModel`` averages the iterates
of one run as it trains, not a set of finished state dicts, hence :func:`average_states`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

import torch

from ..errors import JobError
from .fold_pseudo import PseudoRound, fold_votes
from .method import Trained
from .recipe import check_replicas
from .state import AdaptRun, load_state

__all__ = ["FoldWeights", "KeptFold", "average_folds", "average_states"]

#: One fold's weights: ``{final-run step: CPU state dict}`` at each step its held-out volumes were scored.
FoldWeights = Dict[int, Dict[str, torch.Tensor]]


@dataclass(frozen=True)
class KeptFold:
    """What the folds' average takes from one cross-validation fold.

    Attributes:
        weights: the fold's weights at each scored step.
        pseudo: the fold's pseudo-labelling rounds, ``start`` on the final run's steps.
    """

    weights: FoldWeights
    pseudo: Tuple[PseudoRound, ...] = ()


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The uniform average of state dicts of one architecture.

    Floating-point tensors are averaged (summed in float64, cast back to their dtype); the others (e.g. BatchNorm's
    ``num_batches_tracked``) are taken from the first state.

    Raises:
        ValueError: no state, or the states differ in their keys or a tensor's shape.
    """
    if not states:
        raise ValueError("no weights to average")
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(first):
            raise ValueError(f"weights {index} have other tensors than weights 0: {sorted(set(state) ^ set(first))}")
        shapes = [k for k in first if tuple(state[k].shape) != tuple(first[k].shape)]
        if shapes:
            raise ValueError(f"weights {index} differ from weights 0 in the shape of {shapes}")
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            total = sum(state[key].detach().to("cpu", torch.float64) for state in states)
            out[key] = (total / len(states)).to(tensor.dtype)
        else:
            out[key] = tensor.detach().cpu().clone()
    return out


def average_folds(run: AdaptRun, folds: Sequence[KeptFold], stop: int) -> Trained:
    """Load the folds' average at step ``stop`` into ``run.network`` (in place; step 0: the network keeps the
    current weights, as a final training up to step 0 would). Its pseudo-labelled volumes are the folds'
    (:func:`~.fold_pseudo.fold_votes`).

    Raises:
        JobError: a fold kept no weights at ``stop`` (its work-dir file was not written by this run's folds).
    """
    weights = [fold.weights for fold in folds]
    if stop > 0:
        missing = [index + 1 for index, fold in enumerate(weights) if stop not in fold]
        if missing:
            raise JobError(
                f"cross-validation fold(s) {missing} kept no weights at step {stop}; delete the job's work folder "
                "and run it again."
            )
        load_state(run.network, average_states([fold[stop] for fold in weights]), "the folds' average")
    check_replicas(run, run.network)  # under data parallelism every rank averaged the same folds
    run.network.eval()
    run.emit(
        "phase",
        phase="train",
        message=(
            f"the new model is the average of the {len(weights)} cross-validation folds' weights at step {stop} "
            "(validation.final = fold_average: no final training)"
        ),
    )
    votes = fold_votes([fold.pseudo for fold in folds], stop, list(run.pool))
    kept = [v.to_dict() for v in votes if v.kept]
    return Trained(
        resumed_from=0,
        pseudo=votes,
        provenance={
            "final": "fold_average",
            "fold_average": {"folds": len(weights), "step": int(stop)},
            "pseudo_labeled": kept,
            "fold_pseudo_rounds": [[r.to_dict() for r in fold.pseudo] for fold in folds],
            "seeds": {"folds": run.config.train.seed},
        },
        summary={"final": "fold_average", "pseudo_labeled": len(kept)},
    )
