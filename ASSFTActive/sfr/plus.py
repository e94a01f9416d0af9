"""SFR+ selective fine-tuning: fine-tune SAM on the labels, pseudo-label the pool, keep the confident volumes, and
fine-tune SAM again on labelled + selected; then the pool's final pseudo-labels (SFR+'s stage-3 targets).

The three steps reuse the parts of SFR: :func:`~.finetune.finetune_sam` (stage 2), :func:`~.pseudo.sfr_pseudo_labels`
(un-stitched 3D pseudo-labels with their volume confidence) and :func:`~.pseudo.sfr_plus_select` (ASSFT's top-k
selection by confidence alone). SFR+ is not in the released code; its design here is method-spec §2.4's inferred
minimal one: volume confidence = SAM's mean max-probability over its predicted foreground, the top ``kappa`` share of
the pool is kept, and optionally only the voxels whose confidence reaches ``voxel_threshold`` count in the second
fine-tuning. The second fine-tuning starts again from the given SAM (the prior), not from the first stage's result,
so the selected pseudo-labels do not reinforce the first stage's own mistakes twice (a choice, named
``restart_from_prior``).

References:
    Li et al., SFR+, arXiv:2403.11229 (abstract: "selective fine-tuning and re-training through confidence
    estimation"); ``shared/research/method-spec.md`` §2.4 and §4.2 (``kappa`` 20-50 %, ``voxel_thresh`` 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

from ..errors import InputError
from ..finetune.pseudo import PseudoDecision
from ..io import Volume
from ..progress import ProgressCallback, emit
from .config import SfrFinetuneConfig, SfrPlusConfig
from .finetune import SfrFinetuneResult, finetune_sam
from .inputs import SamInput, SfrCase
from .pseudo import SfrPseudoLabel, sfr_plus_select, sfr_pseudo_labels
from .sam import Sam

__all__ = ["SfrPlusConfig", "SfrPlusResult", "sfr_plus_finetune"]

PHASE = "sfr_plus"


@dataclass(frozen=True)
class SfrPlusResult:
    """What SFR+ produced.

    Attributes:
        first: the fine-tuning on the labelled volumes only (plain SFR's SAM).
        first_pseudo: its pseudo-labels of the pool, with the confidences the selection used.
        decisions: one selection decision per pool volume (kept or not, its confidence, its rank).
        second: the fine-tuning on labelled + selected pseudo-labelled volumes (SFR+'s SAM).
        pseudo_labels: the second SAM's pseudo-labels of the whole pool (the 3D re-training's targets).
    """

    first: SfrFinetuneResult
    first_pseudo: Tuple[SfrPseudoLabel, ...]
    decisions: Tuple[PseudoDecision, ...]
    second: SfrFinetuneResult
    pseudo_labels: Tuple[SfrPseudoLabel, ...]

    @property
    def selected(self) -> Tuple[str, ...]:
        return tuple(d.case_id for d in self.decisions if d.kept)

    @property
    def model(self) -> Sam:
        return self.second.model


def sfr_plus_finetune(
    model: Sam,
    labelled: Sequence[SfrCase],
    pool: Sequence[Volume],
    config: SfrFinetuneConfig = SfrFinetuneConfig(),
    plus: SfrPlusConfig = SfrPlusConfig(),
    sam_input: Optional[SamInput] = None,
    pool_ids: Optional[Sequence[str]] = None,
    second_config: Optional[SfrFinetuneConfig] = None,
    progress: Optional[ProgressCallback] = None,
    device: Optional[torch.device] = None,
    labeller: Callable[..., Tuple[SfrPseudoLabel, ...]] = sfr_pseudo_labels,
) -> SfrPlusResult:
    """SFR+'s two fine-tunings of SAM and the pool's final pseudo-labels.

    Args:
        model: the SAM to start from (Meta's weights or the embedded prior); not modified.
        labelled: the labelled volumes.
        pool: the unlabelled volumes.
        config: the first fine-tuning; also the second unless ``second_config`` is given.
        plus: selection settings.
        sam_input: how volumes enter SAM.
        pool_ids: names of the pool volumes (file names by default).
        progress: ``phase`` events for each step, then those of the steps themselves; may cancel.
        device: where SAM runs.
        labeller: SAM's pseudo-labeller of the pool, called as :func:`~.pseudo.sfr_pseudo_labels` (the default).
    """
    if not pool:
        raise InputError("SFR+ needs an unlabelled pool to select pseudo-labelled volumes from")
    emit(progress, "phase", phase=PHASE, message="SFR+ step 1/4: fine-tuning SAM on the labelled volumes")
    first = finetune_sam(model, labelled, config, sam_input, progress, device)
    emit(progress, "phase", phase=PHASE, message="SFR+ step 2/4: pseudo-labelling the pool")
    first_pseudo = labeller(first.model, pool, sam_input, pool_ids, progress, device)
    decisions = sfr_plus_select([p.case_id for p in first_pseudo], [p.confidence for p in first_pseudo], plus.kappa)
    kept = {d.case_id for d in decisions if d.kept}
    extra = []
    for image, pseudo in zip(pool, first_pseudo):
        if pseudo.case_id in kept:
            mask = pseudo.voxel_mask(plus.voxel_threshold) if plus.voxel_threshold is not None else None
            extra.append(SfrCase(pseudo.case_id, image, pseudo.label, mask))
    emit(
        progress,
        "phase",
        phase=PHASE,
        message=f"SFR+ step 3/4: fine-tuning SAM on {len(labelled)} labelled + {len(extra)} selected volumes",
    )
    start = model if plus.restart_from_prior else first.model
    second = finetune_sam(start, list(labelled) + extra, second_config or config, sam_input, progress, device)
    emit(progress, "phase", phase=PHASE, message="SFR+ step 4/4: pseudo-labelling the pool with the second SAM")
    final = labeller(second.model, pool, sam_input, pool_ids, progress, device)
    return SfrPlusResult(
        first=first, first_pseudo=first_pseudo, decisions=decisions, second=second, pseudo_labels=final
    )
