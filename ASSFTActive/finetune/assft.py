"""ASSFT's adaptation method: a supervised stage, then selective semi-supervised rounds (``assft adapt``).

:class:`SelectiveSelfTraining` is the :class:`~.method.AdaptMethod` that
:func:`~ASSFTActive.finetune.adapt.run_adaptation` runs for Adapt Model: its recipe is :func:`~.recipe.run_recipe`
(method-spec §1.7: the supervised stage's result is the teacher; each round it labels the unlabelled pool, the
reliable volumes are kept and training continues on labelled + pseudo-labelled patches), once per cross-validation
fold and once on every labelled volume up to the cross-validated stopping step. Who labels the pool is a
:class:`~.pseudo_round.PseudoLabeller` (default: the teacher with the configured selection); a benchmark hands in
another (e.g. an oracle) instead of patching this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..models import ModelCard
from ..progress import ProgressCallback
from .checkpoints import CHECKPOINT_FILE
from .config import FinetuneConfig
from .fold_pseudo import PseudoRound
from .method import FoldScorer, Trained
from .pseudo_round import PseudoLabeller, TeacherLabeller
from .recipe import check_replicas, run_recipe
from .state import AdaptRun, LabeledVolume, load_state

if TYPE_CHECKING:
    from .result import AdaptResult

__all__ = ["SelectiveSelfTraining"]


class SelectiveSelfTraining:
    """Adapt Model: fine-tuning on the labelled volumes plus reliable pseudo-labelled ones.

    Args:
        config: every setting of the run (saved with the new version).
        labeller: labels the unlabelled pool in each round (default :class:`~.pseudo_round.TeacherLabeller`).
    """

    def __init__(self, config: FinetuneConfig = FinetuneConfig(), labeller: Optional[PseudoLabeller] = None):
        self.config = config
        self.labeller = labeller if labeller is not None else TeacherLabeller()

    def run_config(self) -> FinetuneConfig:
        return self.config

    def identity(self) -> Mapping[str, Any]:
        return self.config.to_dict()

    def settings(self) -> Dict[str, Any]:
        return {"finetune": self.config.to_dict()}

    def recipe_steps(self, config: FinetuneConfig) -> int:
        """The supervised stage and every semi-supervised round."""
        return config.train.iterations + config.pseudo.rounds * config.semi_steps

    def load(self, card: ModelCard, progress: Optional[ProgressCallback]) -> None:
        """Nothing beside the model."""

    def prepare(self, run: AdaptRun) -> None:
        """Nothing: the pool is read by each round's labeller."""

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
    ) -> Tuple[PseudoRound, ...]:
        """The recipe on ``train``; its rounds' decisions, round ``r`` (stage ``r``) starting at the stage's first
        step."""
        rounds = run_recipe(
            run,
            network,
            train,
            stop,
            progress_offset=progress_offset,
            label=label,
            scorer=scorer,
            labeller=self.labeller,
        )
        return tuple(PseudoRound.of(run.stage_offset(stage), decisions) for stage, decisions in enumerate(rounds, 1))

    def train_final(self, run: AdaptRun, labeled: Sequence[LabeledVolume], stop: int, cross_validated: bool) -> Trained:
        """The recipe on every labelled volume up to ``stop``, resuming from the run's checkpoint when there is one;
        the provenance holds every round's pseudo-labelling decisions."""
        checkpoint = run.checkpoints.load()
        resumed = 0
        if checkpoint is not None:
            load_state(run.network, checkpoint.network, str(run.checkpoints.folder / CHECKPOINT_FILE))
            resumed = run.stage_offset(checkpoint.stage) + checkpoint.step
            run.emit(
                "phase",
                phase="resume",
                step=run.folds * run.recipe_steps + resumed,
                total=run.total_steps,
                message=f"resuming the final training from its checkpoint at step {resumed}",
            )
        run.emit(
            "phase",
            phase="train",
            message=(
                f"final training on all {len(labeled)} labelled volume(s) up to step {stop} of {run.recipe_steps}"
                + (" (the cross-validated best)" if cross_validated else "")
            ),
        )
        rounds = run_recipe(
            run,
            run.network,
            labeled,
            stop,
            progress_offset=run.folds * run.recipe_steps,
            label="",
            final=True,
            resume=checkpoint,
            labeller=self.labeller,
        )
        check_replicas(run, run.network)
        run.network.eval()
        last = rounds[-1] if rounds else ()
        kept = [d.to_dict() for d in last if d.kept]
        mode, seed = self.config.pseudo.mode.value, self.config.train.seed
        return Trained(
            resumed_from=resumed,
            pseudo=tuple(last),
            provenance={
                "pseudo_labeled": kept,
                "pseudo_decisions": [[d.to_dict() for d in r] for r in rounds],
                "pseudo_mode": mode,
                "seeds": {"train": seed, "folds": seed},
            },
            summary={"pseudo_labeled": len(kept), "pseudo_mode": mode},
        )

    def result(self, result: AdaptResult) -> AdaptResult:
        return result
