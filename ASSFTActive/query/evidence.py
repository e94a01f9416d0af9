"""Reduce the model outputs of one unlabeled volume to the :class:`~.records.CaseEvidence` the selectors use."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .config import AsdReduce, QueryConfig, SourceKnowledge, Strategy
from .records import CaseEvidence
from .regions import RegionSums
from .scores import McDropoutAccumulator, batchnorm_divergence, knowledge_divergence

__all__ = ["summarize_case"]

BnStats = Sequence[Tuple[np.ndarray, np.ndarray]]


def summarize_case(
    case_id: str,
    sums: Optional[RegionSums],
    current_features: Sequence[np.ndarray],
    pretrained_features: Sequence[np.ndarray],
    config: QueryConfig,
    prob_samples: Optional[np.ndarray] = None,
    *,
    bn_stage_stats: Optional[BnStats] = None,
    bn_running_stats: Optional[BnStats] = None,
    epistemic: Optional[float] = None,
    mutual_information: Optional[float] = None,
) -> CaseEvidence:
    """Compute every per-case score of one volume from the entropy sums of its prediction and its features.

    Args:
        case_id: the volume's name.
        sums: the :class:`~.regions.RegionSums` of the current model's prediction over the regions ``config``
            asks for (streamed by the predictor, or :func:`~.regions.region_sums` of a probability volume), or
            ``None`` at cold start (no segmentation head yet): then ``asd`` and ``mean_entropy`` are NaN and
            ``clasp_scores`` is empty, ``foreground_voxels`` is NaN, and only ``dkd_only``, ``random`` and
            ``coreset`` can rank the pool, and ``assft``, which then ranks as ``dkd_only``
            (:func:`~.selection.cold_start`).
        current_features: pooled features ``[D_s]`` of the current encoder, one per stage, shallow to deep.
        pretrained_features: the same for the frozen pre-trained encoder. The deepest stage of each becomes the
            case's embedding for diversity and coreset.
        config: query settings (``source_knowledge``, ``kd_*``, ``fg_*``, ``asd_*``).
        prob_samples: ``[T, C, I, J, K]`` softmax outputs of T passes with dropout active; required for the
            ``mc_dropout`` and ``bald`` strategies (unless ``epistemic`` / ``mutual_information`` are given); both
            scores are computed from them.
        bn_stage_stats: with ``source_knowledge="bn_stats"``: per BatchNorm layer of the pre-trained encoder,
            ``(mean [D_l], var [D_l])`` of its input on this case (see :func:`~.scores.batchnorm_divergence`).
        bn_running_stats: with ``source_knowledge="bn_stats"``: the stored ``(running_mean, running_var)`` pairs.
        epistemic: the MC-dropout score when already computed from a running mean of the passes
            (:func:`~.scores.mc_dropout_epistemic_from_mean`), instead of ``prob_samples``.
        mutual_information: the BALD score when already computed from the running moments of the passes
            (:class:`~.scores.McDropoutAccumulator`), instead of ``prob_samples``.

    Returns:
        the case's :class:`CaseEvidence`.

    Raises:
        ValueError: inconsistent or missing inputs for the chosen settings.
    """
    current = list(current_features)
    pretrained = list(pretrained_features)
    if not current or not pretrained:
        raise ValueError(f"case {case_id!r}: no encoder stage features were given; extract at least one stage.")

    if config.source_knowledge == SourceKnowledge.BN_STATS:
        if bn_stage_stats is None or bn_running_stats is None:
            raise ValueError(
                f"case {case_id!r}: source_knowledge='bn_stats' needs bn_stage_stats and bn_running_stats (BatchNorm "
                "statistics of the pre-trained encoder); use source_knowledge='pretrained_vs_adapted' for encoders "
                "without BatchNorm."
            )
        kd = batchnorm_divergence(bn_stage_stats, bn_running_stats)
    else:
        kd = knowledge_divergence(current, pretrained, config)

    if sums is None:
        asd = float("nan")
        mean_ent = float("nan")
        clasp = np.zeros(0, dtype=np.float64)
        fg_voxels = float("nan")
        asd_balanced = float("nan")
    else:
        asd = sums.asd(config)
        balanced = QueryConfig.from_dict({**config.to_dict(), "asd_reduce": AsdReduce.CLASS_BALANCED.value})
        asd_balanced = asd if config.asd_reduce == AsdReduce.CLASS_BALANCED else sums.asd(balanced)
        mean_ent = sums.mean_entropy()
        clasp = sums.clasp_scores()
        fg_voxels = float(sums.foreground_voxels)

    if prob_samples is not None:
        moments = McDropoutAccumulator()
        for sample in _samples(prob_samples):
            moments.add(sample)
        epistemic = moments.epistemic()
        mutual_information = moments.mutual_information()
    for strategy, value, what in (
        (Strategy.MC_DROPOUT, epistemic, "epistemic"),
        (Strategy.BALD, mutual_information, "mutual_information"),
    ):
        if config.strategy == strategy and value is None:
            raise ValueError(
                f"case {case_id!r}: strategy {strategy.value!r} needs prob_samples from {config.mc_samples} forward "
                f"passes with dropout active (or {what} from their running moments)."
            )

    return CaseEvidence(
        case_id=case_id,
        knowledge_divergence=kd,
        asd=asd,
        mean_entropy=mean_ent,
        pretrained_embedding=np.asarray(pretrained[-1]),
        current_embedding=np.asarray(current[-1]),
        clasp_scores=clasp,
        epistemic=None if epistemic is None else float(epistemic),
        mutual_information=None if mutual_information is None else float(mutual_information),
        foreground_voxels=fg_voxels,
        asd_class_balanced=asd_balanced,
    )


def _samples(prob_samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(prob_samples)
    if samples.ndim != 5 or samples.shape[0] < 2:
        raise ValueError(
            f"prob_samples must have shape [T, C, I, J, K] with T >= 2 stochastic passes, got shape {samples.shape}."
        )
    return samples
