"""What an adaptation method supplies to the one adaptation spine, :func:`~ASSFTActive.finetune.adapt.run_adaptation`.

The spine owns everything two methods share: the start (inputs, store, model, checkpoints), the label checks, the
score of the current model, the cross-validation, the guard, the pool predictions, ``before_commit`` (the re-rank)
and the commit. An :class:`AdaptMethod` supplies only what differs: its settings, one run of its recipe (a
cross-validation fold), the final training and what it adds to the new version's provenance. Two methods exist:
:class:`~ASSFTActive.finetune.assft.SelectiveSelfTraining` (``assft adapt``) and :class:`~ASSFTActive.sfr.pipeline.Sfr`
(``assft sfr``). A method object serves one run (it may keep what it loaded, e.g. SFR's SAM prior and pool).

Torch-free at import time (the protocol only names types).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    from torch import nn

    from ..models import ModelCard
    from ..progress import ProgressCallback
    from .config import FinetuneConfig
    from .fold_pseudo import PseudoRound
    from .result import AdaptResult
    from .state import AdaptRun, LabeledVolume

__all__ = ["AdaptMethod", "FoldScorer", "Trained"]

#: Called as ``scorer(network, step)`` while a cross-validation fold trains (the fold's held-out scores at ``step``).
FoldScorer = Callable[["nn.Module", int], None]


@dataclass(frozen=True)
class Trained:
    """What a method's final training produced, for the result and the commit.

    Attributes:
        resumed_from: training step the final training resumed from (0: a fresh start).
        pseudo: one record per unlabelled volume (``AdaptResult.pseudo``): each has ``case_id``, ``kept`` and
            ``to_dict()``.
        provenance: the method's entries in the new version's ``provenance.json`` (e.g. its pseudo-labels).
        summary: the method's entries in the version's metrics summary (e.g. ``pseudo_labeled``).
    """

    resumed_from: int
    pseudo: Tuple[Any, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)
    summary: Mapping[str, Any] = field(default_factory=dict)


class AdaptMethod(Protocol):
    """An adaptation method: what :func:`~ASSFTActive.finetune.adapt.run_adaptation` cannot do the same way for all.

    Called by the spine in this order: :meth:`run_config`, :meth:`load` and :meth:`identity` at the start,
    :meth:`prepare` once the run state exists, :meth:`recipe` once per cross-validation fold, :meth:`train_final`,
    then :meth:`settings` and :meth:`result` at the commit. :meth:`recipe_steps` sizes the progress and the guard's
    curve.
    """

    def run_config(self) -> FinetuneConfig:
        """The settings the spine reads: label checks, the guard (``validation``), the trainer's optimisation
        (``train``: its seed seeds the folds), ``predict_pool`` and ``checkpoint_every``."""

    def identity(self) -> Mapping[str, Any]:
        """Everything a resumable state depends on beside the volumes (every setting; SFR: its SAM prior too);
        the checkpoints refuse state of another identity."""

    def settings(self) -> Dict[str, Any]:
        """The new version's settings entry: ``{"finetune": {...}}`` or ``{"sfr": {...}}``."""

    def recipe_steps(self, config: FinetuneConfig) -> int:
        """Training steps of one run of the recipe under ``config`` (the guard's curve spans ``0..this``)."""

    def load(self, card: ModelCard, progress: Optional[ProgressCallback]) -> None:
        """Load what the method needs beside the model, before any checkpoint is read (SFR: the SAM prior, whose
        classes must be the card's)."""

    def prepare(self, run: AdaptRun) -> None:
        """Once the run state exists, before the labels are read (SFR: read the unlabelled pool; none is an
        error)."""

    def recipe(
        self,
        run: AdaptRun,
        network: nn.Module,
        train: Sequence[LabeledVolume],
        stop: int,
        *,
        progress_offset: int,
        label: str,
        scorer: FoldScorer,
    ) -> Sequence[PseudoRound]:
        """One cross-validation fold: train ``network`` in place on ``train`` up to step ``stop``, calling ``scorer``
        every ``run.config.validation.every`` steps and at the end. ``label`` prefixes the messages;
        ``progress_offset`` is where the fold's steps start on the whole run's progress (ASSFT counts on it; SFR
        reports its re-training's own steps).

        Returns:
            each pseudo-labelling of the pool the fold trained with, ``start`` on ``run``'s steps (none: it
            trained on its labelled volumes only). The folds' average lists them as its pseudo-labelled volumes."""

    def train_final(self, run: AdaptRun, labeled: Sequence[LabeledVolume], stop: int, cross_validated: bool) -> Trained:
        """Train ``run.network`` in place on every labelled volume up to ``stop`` (resuming from ``run.checkpoints``
        when they hold state), leaving it in eval mode."""

    def result(self, result: AdaptResult) -> AdaptResult:
        """The run's result as the method reports it (SFR: an ``SfrResult`` with its method)."""
