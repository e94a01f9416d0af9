"""What the cross-validation folds pseudo-labelled, as the folds' average reports it (torch-free records).

A method's recipe returns the rounds it pseudo-labelled the pool in (:class:`PseudoRound`); each fold's are kept
with its scores (:class:`~.checkpoints.FoldScores`). When the new model is the folds' average
(:mod:`.fold_average`), its pseudo-labelled volumes are the folds': :func:`fold_votes` counts, per unlabelled
volume, the folds that pseudo-labelled it in the round their weights at the stopping step trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["FoldVote", "PseudoRound", "fold_votes"]


@dataclass(frozen=True)
class PseudoRound:
    """One pseudo-labelling of the pool in a run of a recipe: which volumes it decided on and which it kept.

    Attributes:
        start: the recipe's step from which the round's pseudo-labels train (weights after this step learnt from
            the ``kept`` volumes; in a cross-validation fold's record, counted on the final run's steps).
        seen: the unlabelled volumes the round decided on (sorted case ids).
        kept: those it pseudo-labelled for training (sorted case ids).
    """

    start: int
    seen: Tuple[str, ...]
    kept: Tuple[str, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {"start": self.start, "seen": list(self.seen), "kept": list(self.kept)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PseudoRound:
        return cls(int(data["start"]), tuple(map(str, data["seen"])), tuple(map(str, data["kept"])))

    @classmethod
    def of(cls, start: int, decisions: Sequence[Any]) -> PseudoRound:
        """The round whose per-volume decisions (each with ``case_id`` and ``kept``) start training at ``start``."""
        return cls(
            int(start),
            tuple(sorted(d.case_id for d in decisions)),
            tuple(sorted(d.case_id for d in decisions if d.kept)),
        )


@dataclass(frozen=True)
class FoldVote:
    """One unlabelled volume as the folds' average learnt from it.

    Attributes:
        kept_by: folds that pseudo-labelled it in the round their weights at the stopping step trained with.
        folds: folds whose round decided on it (fewer than the folds when they saw part of the pool).
    """

    case_id: str
    kept_by: int
    folds: int

    @property
    def kept(self) -> bool:
        """Pseudo-labelled by at least one fold: the average learnt from its pseudo-label."""
        return self.kept_by > 0

    def to_dict(self) -> Dict[str, Any]:
        return {"case_id": self.case_id, "kept": self.kept, "kept_by_folds": self.kept_by, "folds": self.folds}


def fold_votes(rounds: Sequence[Sequence[PseudoRound]], stop: int, pool: Sequence[str] = ()) -> Tuple[FoldVote, ...]:
    """Per unlabelled volume (``pool`` and every volume a fold decided on, sorted), how many folds pseudo-labelled it
    in the round their weights at step ``stop`` were training with: each fold's last round that starts before
    ``stop``. Empty when no fold trained with pseudo-labels by then (``stop`` in the supervised stage, ``none``
    mode), as a final training up to ``stop`` reports none.

    Args:
        rounds: each fold's rounds (:attr:`~.fold_average.KeptFold.pseudo`).
    """
    used = [r for r in (_last_before(fold, stop) for fold in rounds) if r is not None]
    if not used:
        return ()
    cases = sorted(set(pool).union(*(r.seen for r in used)))
    return tuple(FoldVote(c, sum(c in r.kept for r in used), sum(c in r.seen for r in used)) for c in cases)


def _last_before(rounds: Sequence[PseudoRound], stop: int) -> Optional[PseudoRound]:
    return max((r for r in rounds if r.start < stop), key=lambda r: r.start, default=None)
