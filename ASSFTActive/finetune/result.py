"""What an adaptation run produced: the record :func:`~.adapt.run_adaptation` returns and a method may amend.

Below the spine (:mod:`.adapt`) and the methods (:mod:`.method`, :mod:`.assft`, :mod:`ASSFTActive.sfr.pipeline`),
so a method names the result type without importing the spine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

from ..evaluate import SkippedVolume, json_ready
from .guard import ActivationDecision

__all__ = ["AdaptResult"]


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
        pseudo: one record per unlabelled volume, each with ``case_id``, ``kept`` and ``to_dict()``: the decision of
            the final training's last self-training round (:class:`~.pseudo.PseudoDecision`), or, when the new
            model is the folds' average, how many folds pseudo-labelled it (:class:`~.fold_average.FoldVote`;
            SFR: its ``SfrPseudoRecord``).
        metrics: ``{"evaluated_on": "cross_validation" | "labeled", "cases", "before": {...}, "after": {...},
            "stop_step", "cross_validation": {...} | None}`` (the verdict is ``decision``), each summary
            ``{"mean_dice", "dice": {class: x}, "hd95": {class: mm}}``. With cross-validation, "before" is the
            current model on the labelled volumes and "after" the held-out score of the folds at ``stop_step``;
            without it (one label, or the guard off), "after" is the new model on its own training volumes.
        predictions: ``{case_id: label file}`` of the unlabelled volumes predicted by the new model.
        seconds: wall time of the run.
        resumed_from: global training step the run resumed from (0 = fresh start).
        not_annotated: ``(case_id, voxels)`` of each partial label, the voxels it marks as not annotated
            (:data:`ASSFTActive.partial.NOT_ANNOTATED`, left out of the training), so a report can name them.
    """

    name: str
    version: str
    version_dir: Path
    card_path: Path
    activated: bool
    decision: ActivationDecision
    labeled: Tuple[str, ...]
    skipped: Tuple[SkippedVolume, ...]
    pseudo: Tuple[Any, ...]
    metrics: Mapping[str, Any]
    predictions: Mapping[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0
    not_annotated: Tuple[Tuple[str, int], ...] = ()

    @property
    def dice_before(self) -> float:
        return float(self.metrics["before"]["mean_dice"])

    @property
    def dice_after(self) -> float:
        return float(self.metrics["after"]["mean_dice"])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "version_dir": str(self.version_dir),
            "card_path": str(self.card_path),
            "activated": self.activated,
            "activation": self.decision.to_dict(),
            "labeled": list(self.labeled),
            "skipped": [s.to_dict() for s in self.skipped],
            "pseudo": [d.to_dict() for d in self.pseudo],
            "metrics": json_ready(self.metrics),
            "predictions": {k: str(v) for k, v in self.predictions.items()},
            "seconds": round(self.seconds, 2),
            "resumed_from": self.resumed_from,
        }
