"""Evidence for the choice of a score: how well each per-case score predicts where the model fails.

Used by the benchmarks with hidden labels (the per-case error ``1 - Dice`` of the model that produced the scores);
never an input of a selector. A score that earns its weight in the query should rank the pool the way the error
does, so the measure is Spearman's rank correlation between the score and the error over the pool.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from scipy.stats import spearmanr

from ASSFTActive.query.config import AsdReduce, DivSpace, KDMetric, QueryConfig
from ASSFTActive.query.diversity import diversity, initial_min_distance, minmax_normalise, unit_rows
from ASSFTActive.query.records import CaseEvidence
from ASSFTActive.query.regions import RegionSums
from ASSFTActive.query.scores import knowledge_divergence

__all__ = ["ScoreCorrelation", "kd_variant_correlations", "pool_dkd", "score_error_correlations", "spearman_with_error"]

#: The scores :func:`score_error_correlations` computes from the region sums and the evidence, in report order.
STANDARD_SCORES = (
    "asd_voxel_mean",
    "asd_class_balanced",
    "clasp_class_mean",
    "clasp_plain",
    "mean_entropy",
    "dkd",
    "knowledge_divergence",
)


@dataclass(frozen=True)
class ScoreCorrelation:
    """Spearman correlation of one score with the per-case error over a pool.

    Attributes:
        name: the score.
        rho: Spearman's rho in ``[-1, 1]`` (positive: a higher score goes with a larger error); NaN when the score
            or the error is constant over the cases (no ranking information) or fewer than 3 cases were given.
        p: two-sided p-value of ``rho = 0`` (scipy's t approximation); NaN with rho.
        n: number of cases.
    """

    name: str
    rho: float
    p: float
    n: int

    def to_dict(self) -> Dict[str, Optional[float]]:
        return {
            "spearman_rho": None if math.isnan(self.rho) else self.rho,
            "p": None if math.isnan(self.p) else self.p,
            "n": self.n,
        }


def spearman_with_error(name: str, scores: Sequence[float], errors: Sequence[float]) -> ScoreCorrelation:
    """:class:`ScoreCorrelation` of ``scores`` ``[N]`` with ``errors`` ``[N]`` (ties get average ranks).

    Raises:
        ValueError: different lengths, or a value that is not finite.
    """
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(errors, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"score {name!r}: {x.shape} scores for {y.shape} errors; give one of each per case.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"score {name!r}: scores and errors must be finite (a score missing for some case?).")
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return ScoreCorrelation(name, float("nan"), float("nan"), n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho, p = spearmanr(x, y)
    return ScoreCorrelation(name, float(rho), float(p), n)


def pool_dkd(
    evidence: Sequence[CaseEvidence], config: QueryConfig, labeled_embeddings: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """DKD of every case against the labelled set only: ``KD~_i * Div_i(L)`` ``[N]`` (no greedy picks).

    The greedy query recomputes diversity after each pick, so its DKD depends on the order; as a per-case score of
    the pool (for correlation with the error) each case is measured against the labelled cases alone, in the
    pre-trained embedding (``div_space="pretrained"``, the default) or the current one. ``KD~`` is min-max
    normalised over the pool, 1 for every case when KD has no spread (cold start); ``Div_i(L)`` is the smallest
    cosine distance to a labelled case, 1 without labelled cases. At cold start with no labels DKD is therefore 1
    for every case and carries no per-case information (its correlation is NaN).
    """
    cases = list(evidence)
    if not cases:
        return np.zeros(0, dtype=np.float64)
    current = config.div_space == DivSpace.CURRENT
    ids = [c.case_id for c in cases]
    pool = unit_rows([c.current_embedding if current else c.pretrained_embedding for c in cases], ids, "embedding")
    labeled = list(labeled_embeddings)
    anchors = unit_rows(labeled, None, "labeled embedding") if labeled else np.zeros((0, pool.shape[1]))
    kd = np.array([c.knowledge_divergence for c in cases], dtype=np.float64)
    return minmax_normalise(kd) * diversity(initial_min_distance(pool, anchors))


def score_error_correlations(
    sums: Sequence[RegionSums],
    errors: Sequence[float],
    config: QueryConfig,
    evidence: Sequence[CaseEvidence] = (),
    labeled_embeddings: Sequence[np.ndarray] = (),
    extra: Optional[Mapping[str, Sequence[float]]] = None,
) -> Dict[str, ScoreCorrelation]:
    """Spearman correlation of each per-case score with the per-case error ``1 - Dice`` over a pool.

    Scores, all from the same prediction of each case:

    * ``asd_voxel_mean``, ``asd_class_balanced``: ASD with ``asd_reduce`` set to each value (the other region
      settings from ``config``);
    * ``clasp_class_mean``: mean over the foreground classes of the volume-level ClaSP PE class scores
      (:meth:`RegionSums.clasp_scores` ``[1:]``; a class the model does not predict scores 0);
      ``clasp_plain``: its index 0, the whole-volume mean plain entropy in nats;
    * ``mean_entropy``: whole-volume mean normalised entropy;
    * with ``evidence`` (the cases' :class:`CaseEvidence`, same order): ``dkd`` (:func:`pool_dkd` against
      ``labeled_embeddings``) and ``knowledge_divergence`` (raw KD);
    * every entry of ``extra`` (name -> ``[N]`` values, e.g. ``mc_dropout``, ``bald``).

    Args:
        sums: the region sums of each case, over the regions ``config`` asks for.
        errors: ``[N]`` per-case error of the same model, e.g. ``1 - mean Dice`` against hidden labels.
        config: the query settings (region settings, ``asd_empty_fg``, ``div_space``).
        evidence: optional, the cases' evidence in the same order.
        labeled_embeddings: the labelled cases' embeddings (``dkd``).
        extra: further scores by name.

    Returns:
        ``{score name: ScoreCorrelation}`` in the order above.

    Raises:
        ValueError: inputs of different lengths, region sums taken over other regions than ``config`` asks for, or
            a non-finite score or error.
    """
    sums = list(sums)
    errors = list(errors)
    if len(sums) != len(errors):
        raise ValueError(f"{len(sums)} region sums for {len(errors)} errors; give one of each per case.")
    by_reduce = {
        reduce: QueryConfig.from_dict({**config.to_dict(), "asd_reduce": reduce.value}) for reduce in AsdReduce
    }
    scores: Dict[str, Sequence[float]] = {
        "asd_voxel_mean": [s.asd(by_reduce[AsdReduce.VOXEL_MEAN]) for s in sums],
        "asd_class_balanced": [s.asd(by_reduce[AsdReduce.CLASS_BALANCED]) for s in sums],
        "clasp_class_mean": [float(np.mean(s.clasp_scores()[1:])) for s in sums],
        "clasp_plain": [float(s.clasp_scores()[0]) for s in sums],
        "mean_entropy": [s.mean_entropy() for s in sums],
    }
    cases = list(evidence)
    if cases:
        if len(cases) != len(sums):
            raise ValueError(f"{len(cases)} evidence records for {len(sums)} region sums; give one of each per case.")
        scores["dkd"] = pool_dkd(cases, config, labeled_embeddings).tolist()
        scores["knowledge_divergence"] = [c.knowledge_divergence for c in cases]
    for name, values in (extra or {}).items():
        if name in scores:
            raise ValueError(f"extra score {name!r} would replace the standard score of that name; rename it.")
        scores[name] = list(values)
    return {name: spearman_with_error(name, values, errors) for name, values in scores.items()}


def kd_variant_correlations(
    current_features: Sequence[Sequence[np.ndarray]],
    pretrained_features: Sequence[Sequence[np.ndarray]],
    errors: Sequence[float],
    config: QueryConfig,
) -> Dict[str, ScoreCorrelation]:
    """Which encoder stages and which divergence give a knowledge divergence that predicts the error (issue 15).

    For every ``kd_metric`` and every ``kd_stages`` from 1 (the deepest stage) to all stages, the Spearman
    correlation of that KD (:func:`~.scores.knowledge_divergence`, the other settings from ``config``) with the
    per-case error. Meaningful only after adaptation: at cold start the two encoders are the same and every KD is 0
    (rho NaN).

    Args:
        current_features: per case, the pooled features ``[D_s]`` of each encoder stage of the current encoder.
        pretrained_features: the same for the frozen pre-trained encoder.
        errors: ``[N]`` per-case error ``1 - Dice`` of the current model.
        config: the other query settings (``kd_temperature``).

    Returns:
        ``{"<metric>_deepest<S>": ScoreCorrelation}``, metrics in :class:`KDMetric` order, S ascending.
    """
    current, pretrained = list(current_features), list(pretrained_features)
    if not (len(current) == len(pretrained) == len(errors)):
        raise ValueError(
            f"{len(current)} current and {len(pretrained)} pre-trained feature sets for {len(errors)} "
            "errors; give one of each per case."
        )
    stages = min((len(f) for f in current), default=0)
    out: Dict[str, ScoreCorrelation] = {}
    for metric in KDMetric:
        for count in range(1, stages + 1):
            variant = QueryConfig.from_dict({**config.to_dict(), "kd_metric": metric.value, "kd_stages": count})
            name = f"{metric.value}_deepest{count}"
            values = [knowledge_divergence(c, q, variant) for c, q in zip(current, pretrained)]
            out[name] = spearman_with_error(name, values, errors)
    return out
