"""The state one adaptation run shares between its steps, and the reading of its inputs.

:class:`AdaptRun` is what nnU-Net's trainer keeps on ``self``, as one typed record: the inputs, the model card and
the weights the run started from, the store, the settings, the data-parallel context, the event channel and the
checkpoints, and the method being run. Every step of :func:`~ASSFTActive.finetune.adapt.run_adaptation` is a
function of it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..distributed import DistContext
from ..errors import InputError, ModelError
from ..evaluate import EvaluationReport, LabelledCase, SkippedVolume, evaluate_cases
from ..inference import Predictor
from ..io import PathLike, Volume, read_volume
from ..models import LoadedModel, LoadReport, ModelCard
from ..partial import NOT_ANNOTATED, read_partial_label
from ..progress import ProgressCallback, emit
from ..store import ModelStore
from .checkpoints import Checkpoints
from .config import FinalModel, FinetuneConfig

if TYPE_CHECKING:
    from .method import AdaptMethod

__all__ = [
    "AdaptRun",
    "LabeledVolume",
    "check_inputs",
    "check_subjects",
    "cpu_state",
    "load_state",
    "read_labeled",
    "unwrap",
]


@dataclass(frozen=True)
class LabeledVolume(LabelledCase):
    """A labelled volume read and checked (image and label on the same grid), with the files it came from.

    ``annotated``: bool ``[I, J, K]``, the voxels an annotator labelled when the label file marks others as not
    annotated (:mod:`ASSFTActive.partial`; ``label`` holds 0 there); ``None`` for a full label. Training, the label
    checks, evaluation and the guard's cross-validation use only the annotated voxels.
    """

    image: Volume
    label: Volume
    image_path: str
    label_path: str
    annotated: Optional[np.ndarray] = None


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or the network itself)."""
    return getattr(network, "module", network)


def cpu_state(network: nn.Module) -> Dict[str, torch.Tensor]:
    """A CPU copy of the network's weights."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(network).state_dict().items()}


def load_state(network: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``network``; a mismatch is a :class:`~ASSFTActive.errors.ModelError` naming ``where``."""
    try:
        unwrap(network).load_state_dict(dict(state))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ModelError(
            f"{where}: the checkpoint does not match the model card ({first[1].strip() if len(first) > 1 else exc}). "
            "Delete the job's checkpoints folder to start over with this card."
        ) from exc


@dataclass
class AdaptRun:
    """One adaptation run (see :func:`~ASSFTActive.finetune.adapt.run_adaptation`).

    Attributes:
        images: ``{case_id: resolved image path}`` of every volume.
        labels: ``{case_id: resolved label path}``; the other images form the pool.
        card: the card of the model being adapted.
        pretrained: the original pre-trained card behind ``card`` (recorded in the new version's card).
        model: that model, loaded; ``model.network`` is trained in place by the final run.
        store: the model store; ``name`` the model name in it.
        config: the settings the shared steps read (:meth:`~.method.AdaptMethod.run_config`).
        ctx: the data-parallel context (one process by default).
        checkpoints: the resumable state in ``work_dir``.
        method: what the run adapts with (:class:`~.method.AdaptMethod`).
        progress: the event callback (may raise ``CancelledError``).
        predictions_dir: where the pool's label maps are written (``None``: not written).
        subjects: ``{case_id: subject}`` of the volumes whose subject is known (:func:`check_subjects`); the
            guard's folds keep a subject's volumes together (:func:`~.guard.assign_folds`).
        anchor: the weights the run started from (the current model; L2-SP's reference).
        folds: cross-validation folds of the run (0: no cross-validation).
        retrains: the folds' average failed the pool check (:func:`~.adapt.final_model`), so the final model is
            trained after all.
        skipped: volumes left out so far, with the reason.
        started: wall-clock start.
    """

    images: Dict[str, str]
    labels: Dict[str, str]
    card: ModelCard
    pretrained: Path
    model: LoadedModel
    store: ModelStore
    name: str
    config: FinetuneConfig
    ctx: DistContext
    checkpoints: Checkpoints
    method: AdaptMethod
    progress: Optional[ProgressCallback] = None
    predictions_dir: Optional[Path] = None
    subjects: Dict[str, str] = field(default_factory=dict)
    anchor: Dict[str, torch.Tensor] = field(default_factory=dict)
    folds: int = 0
    retrains: bool = False
    skipped: List[SkippedVolume] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def network(self) -> nn.Module:
        return self.model.network

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def pool(self) -> Dict[str, str]:
        """``{case_id: image path}`` of the unlabelled volumes."""
        return {k: v for k, v in self.images.items() if k not in self.labels}

    @property
    def rounds(self) -> int:
        return self.config.pseudo.rounds

    @property
    def recipe_steps(self) -> int:
        """Steps of one run of the method's recipe (ASSFT: the supervised stage and every semi-supervised round)."""
        return self.method.recipe_steps(self.config)

    @property
    def averages_folds(self) -> bool:
        """The new model is the folds' average (``validation.final = fold_average``, folds to average, and the
        average not refused), so no final training runs."""
        return bool(self.folds) and self.config.validation.final is FinalModel.FOLD_AVERAGE and not self.retrains

    @property
    def total_steps(self) -> int:
        """Progress steps of the whole run: every fold's recipe, then the final one (none when the folds are
        averaged)."""
        return (self.folds + (0 if self.averages_folds else 1)) * self.recipe_steps

    def stage_offset(self, stage: int) -> int:
        """First global step of ``stage`` of ASSFT's recipe (0 = supervised, ``k`` = semi-supervised round ``k``)."""
        return 0 if stage == 0 else self.config.train.iterations + (stage - 1) * self.config.semi_steps

    def emit(self, kind: str, **kwargs: Any) -> None:
        emit(self.progress, kind, **kwargs)

    def warn(self, message: str, phase: str = "load") -> None:
        self.emit("warning", phase=phase, message=message)

    def loaded(self, network: nn.Module) -> LoadedModel:
        """``network`` (unwrapped) with the run's card."""
        return LoadedModel(self.card, unwrap(network), LoadReport(0, (), ()))

    def predictor(self, network: nn.Module) -> Predictor:
        return Predictor(self.loaded(network), device=self.device)

    def evaluate(self, network: nn.Module, cases: Sequence[LabelledCase], hd95: bool, phase: str) -> EvaluationReport:
        """``network`` scored on ``cases`` (:func:`~ASSFTActive.evaluate.evaluate_cases`, sharded across ranks)."""
        return evaluate_cases(self.loaded(network), cases, hd95=hd95, progress=self.progress, phase=phase, ctx=self.ctx)

    def current_network(self, network: nn.Module) -> nn.Module:
        """A copy of ``network`` holding the weights the run started from (the current, active model)."""
        current = copy.deepcopy(unwrap(network))
        load_state(current, self.anchor, "current model")
        return current


def check_inputs(
    images: Mapping[str, PathLike], labels: Mapping[str, PathLike]
) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Resolved ``(images, labels)``; a clear error for no label, a label without image, or a missing file."""
    images = {str(k): str(Path(v).expanduser().resolve()) for k, v in dict(images).items()}
    labels = {str(k): str(Path(v).expanduser().resolve()) for k, v in dict(labels).items()}
    if not labels:
        raise InputError(
            "no labelled volumes were given: label at least one volume (pass --labels with label files "
            "named like their images) before adapting the model."
        )
    stray = sorted(set(labels) - set(images))
    if stray:
        raise InputError(
            f"label files {stray[:5]} have no matching image; name each label like its image "
            "(e.g. images/case_001.nii.gz and labels/case_001.nii.gz)."
        )
    missing = [p for p in list(images.values()) + list(labels.values()) if not Path(p).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"file(s) not found: {', '.join(missing[:5])}{more}. Check the paths.")
    return images, labels


def check_subjects(subjects: Optional[Mapping[str, str]], images: Mapping[str, str]) -> Dict[str, str]:
    """``subjects`` as ``{case_id: subject}``, checked: every id is a volume of ``images`` and every subject a
    non-empty string (a patient id, say). Volumes not named are each their own subject.

    Raises:
        InputError: an unknown case id or an empty or non-string subject.
    """
    subjects = dict(subjects or {})
    stray = sorted(str(k) for k in subjects if k not in images)
    if stray:
        raise InputError(f"subjects names case(s) {stray[:5]} that are not among the images; use the images' case ids")
    bad = sorted(str(k) for k, v in subjects.items() if not isinstance(v, str) or not v.strip())
    if bad:
        raise InputError(f"subjects of {bad[:5]} must be non-empty strings (e.g. a patient id)")
    return {str(k): v.strip() for k, v in subjects.items()}


def read_labeled(run: AdaptRun) -> List[LabeledVolume]:
    """Every usable labelled volume; the others are skipped with a warning naming the file.

    Raises:
        InputError: none is usable.
    """
    cases = []
    ids = sorted(run.labels)
    for index, case in enumerate(ids):
        image_path, label_path = run.images[case], run.labels[case]
        try:
            image = read_volume(image_path)
            partial = read_partial_label(label_path, image, run.card.num_classes)
            if not partial.is_labelled:
                raise InputError(
                    f"every voxel is marked not annotated ({NOT_ANNOTATED}); a volume with no annotated "
                    "voxel is not a labelled volume"
                )
        except InputError as exc:
            run.skipped.append(SkippedVolume(case, label_path, str(exc)))
            run.warn(f"skipped labelled volume {case} ({label_path}): {exc}")
            continue
        cases.append(LabeledVolume(case, image, partial.label, image_path, label_path, partial.voxel_mask))
        run.emit("progress", phase="load", step=index + 1, total=len(ids), message=f"read {case}")
    if not cases:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in run.skipped[:3])
        raise InputError(
            f"none of the {len(ids)} labelled volumes can be used ({reasons}). Fix the label files (same grid "
            f"as the image, classes 0..{run.card.num_classes - 1}); the model store was not changed."
        )
    return cases
