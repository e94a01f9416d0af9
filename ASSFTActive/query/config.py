"""Settings of the query step: which strategy ranks the pool and every tunable choice of its scores.

Almost every ASSFT formula is a design decision, not a fact read from the paper (the full ASSFT text could not
be reached; see ``method-spec.md`` §0). Each such decision is a named field of :class:`QueryConfig`, so that it can
be changed by a default rather than by code once the paper is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Dict, Mapping, Type

from ..settings import Range, check_fields, check_keys

__all__ = [
    "AsdReduce",
    "Combine",
    "Coverage",
    "DivSpace",
    "FgMask",
    "KDDirection",
    "KDMetric",
    "QueryConfig",
    "Sampling",
    "SourceKnowledge",
    "Strategy",
]


class Strategy(str, Enum):
    """How the pool is ranked (method-spec.md §1.6, §3, §4.1)."""

    ASSFT = "assft"  #: greedy DKD + ASD (the method)
    DKD_ONLY = "dkd_only"  #: ablation, lambda = 1; also the cold start when no segmentation head exists
    ASD_ONLY = "asd_only"  #: ablation, lambda = 0
    RANDOM = "random"
    MEAN_ENTROPY = "mean_entropy"
    CORESET = "coreset"  #: k-centre greedy on pre-trained embeddings
    CLASP_PE = "clasp_pe"  #: volume-level ClaSP PE (class-stratified power entropy)
    MC_DROPOUT = "mc_dropout"  #: MONAI Label epistemic scoring
    FG_RANDOM = "fg_random"  #: random among volumes whose predicted foreground is not tiny (nnActive's lesson)
    BALD = "bald"  #: MC-dropout mutual information (BALD)
    TYPICLUST = "typiclust"  #: most typical volume of each of |L| + B k-means clusters (coverage, tiny budgets)
    PROBCOVER = "probcover"  #: greedy maximum coverage by balls of the purity radius (coverage, tiny budgets)
    BUDGET_AWARE = "budget_aware"  #: coverage up to ``coverage_max_budget``, the ASSFT query beyond (not default)


class Coverage(str, Enum):
    """Which coverage rule ``budget_aware`` uses at small budgets."""

    TYPICLUST = "typiclust"
    PROBCOVER = "probcover"


class Sampling(str, Enum):
    """How picks are made from a score: the hard top-k, or sampled from a noised score (ClaSP PE's recipe)."""

    TOP_K = "top_k"  #: the highest score first
    POWER = "power"  #: ``log(score) + Gumbel(0, 1 / sampling_beta)``: sampling proportional to ``score ** beta``


class KDDirection(str, Enum):
    """Which end of the live knowledge divergence DKD prefers (RESULTS.md: its sign, once live, is negative)."""

    HIGH = "high"  #: the method: the volumes on which the adapted encoder moved most from the pre-trained one
    LOW = "low"  #: the measured sign: live KD correlates negatively with the adapted model's error


class KDMetric(str, Enum):
    """Divergence between the current and the pre-trained encoder features (method-spec.md §1.4b)."""

    JS = "js"  #: Jensen-Shannon between softmax(g / tau) distributions (natural log, at most ln 2)
    SYM_KL = "sym_kl"  #: KL(p || q) + KL(q || p) between the same distributions
    COSINE = "cosine"  #: 1 - cos(g_current, g_pretrained) on the raw pooled features (tau unused)


class SourceKnowledge(str, Enum):
    """What stands for the pre-training ("source") knowledge without source data (method-spec.md §1.4a)."""

    PRETRAINED_VS_ADAPTED = "pretrained_vs_adapted"  #: frozen pre-trained encoder vs current encoder
    BN_STATS = "bn_stats"  #: Gaussian KL of sample feature statistics to stored BatchNorm running statistics


class DivSpace(str, Enum):
    """Embedding in which diversity is measured (method-spec.md §1.4c)."""

    PRETRAINED = "pretrained"  #: frozen pre-trained encoder, fixed across rounds
    CURRENT = "current"  #: current (adapted) encoder


class FgMask(str, Enum):
    """How the adaptive foreground of ASD is found (method-spec.md §1.5)."""

    PRED_ARGMAX = "pred_argmax"  #: voxels whose most probable class is not background
    PRED_PROB = "pred_prob"  #: voxels with 1 - p_background >= fg_prob_threshold


class AsdReduce(str, Enum):
    """How the entropy inside the foreground is reduced to one number (method-spec.md §1.5)."""

    VOXEL_MEAN = "voxel_mean"  #: mean over all foreground voxels
    CLASS_BALANCED = "class_balanced"  #: mean over predicted classes of the per-class mean


class Combine(str, Enum):
    """How DKD and ASD are combined in the greedy ASSFT query (method-spec.md §1.6)."""

    WEIGHTED_SUM = "weighted_sum"
    RANK_MEAN = "rank_mean"
    PRODUCT = "product"
    TWO_STAGE = "two_stage"


@dataclass(frozen=True)
class QueryConfig:
    """Every setting of scoring and selection; one frozen record shared by the CLI, the worker and Slicer.

    Defaults marked [inferred] are design decisions of ``method-spec.md`` (section given), not values read from
    the ASSFT paper; replace them when the paper text is available. String fields also accept plain strings
    and are stored as their enum.

    Attributes:
        strategy: which ranking to run (:class:`Strategy`); ``"assft"`` by default.
        kd_metric: divergence between current and pre-trained features, ``"js"`` [inferred, method-spec.md §1.4b].
        kd_temperature: tau of ``softmax(g / tau)`` for ``"js"`` and ``"sym_kl"``, 1.0 [inferred, method-spec.md
            §1.4b].
        kd_stages: number of deepest encoder stages averaged in KD, 2 [inferred, method-spec.md §1.4b].
        source_knowledge: representation of the pre-training knowledge, ``"pretrained_vs_adapted"`` [inferred,
            method-spec.md §1.4a].
        div_space: embedding of the diversity term, ``"pretrained"`` [inferred, method-spec.md §1.4c].
        fg_mask: adaptive foreground of ASD, ``"pred_argmax"`` [inferred, method-spec.md §1.5].
        fg_prob_threshold: delta of ``"pred_prob"`` (foreground where ``1 - p0 >= delta``), 0.5 [inferred,
            method-spec.md §1.5].
        fg_dilation: radius r in voxels of the dilation of the predicted foreground, 2 [inferred, method-spec.md
            §1.5]; the structuring element is the 6-connected cross applied r times (a city-block ball).
        asd_reduce: ``"voxel_mean"`` or ``"class_balanced"``, ``"voxel_mean"`` [inferred, method-spec.md §1.5;
            §4.1 recommends ``"class_balanced"`` for multi-organ data].
        asd_empty_fg: ASD of a volume whose predicted foreground is empty, 1.0 (the model missed the anatomy)
            [inferred, method-spec.md §1.5].
        combine: how DKD and ASD are combined, ``"weighted_sum"`` [inferred, method-spec.md §1.6].
        dkd_weight: lambda of ``"weighted_sum"`` (and the weight of the DKD rank in ``"rank_mean"``), 0.5
            [inferred, method-spec.md §1.6].
        two_stage_factor: k of ``"two_stage"``: DKD keeps the top ``k * budget`` before ASD orders them, 3
            [inferred, method-spec.md §1.6].
        normalise_scores: min-max normalise KD and ASD over the pool, True [inferred, method-spec.md §1.4b, §1.5].
        mc_samples: stochastic forward passes T of MC dropout, 10 (MONAI Label's ``EpistemicScoring`` default;
            at least 2, as MONAI Label enforces).
        clasp_fg_ratio: share of the budget split across the foreground classes in ClaSP PE, 0.66 [code,
            method-spec.md §4.3].
        clasp_beta: beta at the first query round of ClaSP PE; the Gumbel noise scale is ``1 / beta``, 1.0 [code,
            method-spec.md §3.2].
        clasp_beta_growth: beta grows exponentially from ``clasp_beta`` to ``clasp_beta * clasp_beta_growth``
            over the query rounds, 100.0 [code, method-spec.md §3.2].
        seed: seed of the random strategies (``"random"``, ``"fg_random"``, ``"clasp_pe"``), 0.
        fg_random_min_share: ``"fg_random"`` draws uniformly among the volumes whose predicted foreground (the
            dilated ``M`` of ASD, voxels in model space) is non-empty and at least this share of the pool's median
            foreground; the others follow, largest foreground first. 0.5 [inferred: a volume-level reading of
            nnActive's foreground-aware random, method-spec.md §3.3]; 0 excludes only empty predictions.
        rounds: query rounds R the budget is spread over (multi-round test-time query, method-spec.md §1.3, §4.1
            ``query_schedule``), 1. With R > 1 the budget is the total over the schedule, split by
            :func:`~.rounds.round_budgets`, and each ranking proposes the current round's share (see
            :func:`~.rounds.plan_round`); R = 1 proposes the whole budget at once.
        sampling: ``"top_k"`` (default) or ``"power"``: picks are made from the noised key
            ``log(max(score, 1e-12)) + g``, ``g ~ Gumbel(0, 1 / sampling_beta)`` drawn once per case from
            ``default_rng(seed)`` (the Gumbel-top-k trick: the first pick is drawn with probability proportional to
            ``score ** sampling_beta``, later ones without replacement; in the greedy ``assft`` query each case
            keeps its one draw while its score is recomputed after every pick). The score is the strategy's key as it
            is, min-max normalised where the strategy normalises, so the pool's lowest case (key 0) is drawn last.
            ClaSP PE's power noising (method-spec.md
            §3.2), offered for the scores that are otherwise taken top-k: ``assft`` (its combined score at each
            greedy step), ``asd_only``, ``dkd_only``, ``mean_entropy``, ``mc_dropout``, ``bald``, and the ASSFT branch
            of ``budget_aware``. Refused for strategies that already draw or cover (``random``, ``fg_random``,
            ``clasp_pe``, ``coreset``, ``typiclust``, ``probcover``).
        sampling_beta: beta of ``"power"``, 1.0 (ClaSP PE's first-round beta; larger = closer to top-k).
        kd_direction: ``"high"`` (the method, default) or ``"low"``: DKD uses ``1 - KD~`` instead of ``KD~``, so the
            volumes on which the adapted encoder moved *least* are preferred. RESULTS.md ("DKD's knowledge
            divergence once it is live") measured live KD at -0.38 to -0.61 Spearman with the adapted model's error
            on one setting (hippocampus harsh); ``"low"`` is that sign, offered for the benchmark to decide.
        kd_min_budget: the knowledge divergence enters DKD only when this ranking proposes at least this many
            volumes; below it KD~ is 1 for every case (DKD = diversity, as at cold start). 0 (always).
        kd_min_round: the same by query round: the divergence enters from round index ``kd_min_round`` on
            (0 = the first round). 0 (always).
        coverage: the coverage rule of ``budget_aware`` at small budgets, ``"typiclust"``.
        coverage_max_budget: ``budget_aware`` uses ``coverage`` when the ranking proposes at most this many
            volumes and the ASSFT query (DKD + ASD with the settings above) beyond, 4 [query-research.md §1.3:
            "opposite strategies suit high and low budgets"; the switch point is a hypothesis until the benchmark
            decides it on the development split, which is why ``budget_aware`` is not the default].
        probcover_purity: alpha of ProbCover's radius rule (the largest ball radius whose balls are at least this
            pure with respect to k-means pseudo-labels), 0.95 [ProbCover's default].
        propose_ood: propose volumes flagged as out of distribution (:mod:`.ood`) like any other, False: by default
            they are ranked after every in-distribution volume and never proposed.
    """

    strategy: Strategy = Strategy.ASSFT
    kd_metric: KDMetric = KDMetric.JS
    kd_temperature: float = 1.0
    kd_stages: int = 2
    source_knowledge: SourceKnowledge = SourceKnowledge.PRETRAINED_VS_ADAPTED
    div_space: DivSpace = DivSpace.PRETRAINED
    fg_mask: FgMask = FgMask.PRED_ARGMAX
    fg_prob_threshold: float = 0.5
    fg_dilation: int = 2
    asd_reduce: AsdReduce = AsdReduce.VOXEL_MEAN
    asd_empty_fg: float = 1.0
    combine: Combine = Combine.WEIGHTED_SUM
    dkd_weight: float = 0.5
    two_stage_factor: int = 3
    normalise_scores: bool = True
    mc_samples: int = 10
    clasp_fg_ratio: float = 0.66
    clasp_beta: float = 1.0
    clasp_beta_growth: float = 100.0
    seed: int = 0
    fg_random_min_share: float = 0.5
    rounds: int = 1
    sampling: Sampling = Sampling.TOP_K
    sampling_beta: float = 1.0
    kd_direction: KDDirection = KDDirection.HIGH
    kd_min_budget: int = 0
    kd_min_round: int = 0
    coverage: Coverage = Coverage.TYPICLUST
    coverage_max_budget: int = 4
    probcover_purity: float = 0.95
    propose_ood: bool = False

    def __post_init__(self) -> None:
        check_fields(
            self,
            enums=_ENUM_FIELDS,
            numbers=_FLOAT_RANGES,
            wholes=_INT_MINIMA,
            flags=("normalise_scores", "propose_ood"),
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready values (enums as their strings)."""
        out: Dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.value if isinstance(value, Enum) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QueryConfig:
        """Build from :meth:`to_dict` output (or a subset of it; missing keys take their defaults).

        Raises:
            ValueError: ``data`` is not a mapping, has a key that is not a setting, or a value is invalid.
        """
        return cls(**check_keys(cls, data, "query"))


_ENUM_FIELDS: Dict[str, Type[Enum]] = {
    "strategy": Strategy,
    "kd_metric": KDMetric,
    "source_knowledge": SourceKnowledge,
    "div_space": DivSpace,
    "fg_mask": FgMask,
    "asd_reduce": AsdReduce,
    "combine": Combine,
    "sampling": Sampling,
    "kd_direction": KDDirection,
    "coverage": Coverage,
}

#: name -> (low, high, low end open); every value must be finite.
_FLOAT_RANGES: Dict[str, Range] = {
    "kd_temperature": (0.0, math.inf, True),
    "fg_prob_threshold": (0.0, 1.0, True),
    "asd_empty_fg": (0.0, 1.0, False),
    "dkd_weight": (0.0, 1.0, False),
    "clasp_fg_ratio": (0.0, 1.0, False),
    "clasp_beta": (0.0, math.inf, True),
    "clasp_beta_growth": (0.0, math.inf, True),
    "fg_random_min_share": (0.0, 1.0, False),
    "sampling_beta": (0.0, math.inf, True),
    "probcover_purity": (0.0, 1.0, True),
}

_INT_MINIMA: Dict[str, int] = {
    "kd_stages": 1,
    "fg_dilation": 0,
    "two_stage_factor": 1,
    "mc_samples": 2,
    "seed": 0,
    "rounds": 1,
    "kd_min_budget": 0,
    "kd_min_round": 0,
    "coverage_max_budget": 0,
}
