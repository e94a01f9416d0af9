"""Scoring and selection of unlabeled volumes for annotation (active learning).

Pipeline, each step a pure function testable alone:

1. voxel maps from the class probabilities (:mod:`.voxelwise`): normalised entropy, adaptive foreground;
2. entropy sums over the scored regions (:mod:`.regions`) and per-case scores (:mod:`.scores`): ASD, knowledge
   divergence, mean entropy, MC-dropout (epistemic and BALD), ClaSP PE;
3. one :class:`CaseEvidence` per case (:func:`summarize_case`);
4. a full ordering of the pool, the first ``budget`` selected (:func:`select`);
5. the multi-round schedule (:mod:`.rounds`: :func:`round_budgets`, :func:`plan_round`). How well each score
   predicts the model's error (hidden labels) is the benchmark harness's (``Testing/Benchmarks/harness``).

No torch, no I/O: inputs are numpy arrays, settings are one frozen :class:`QueryConfig`.
Formulas and defaults follow ``method-spec.md`` (§1.4 DKD, §1.5 ASD, §1.6 combination, §3 ClaSP PE).
"""

from .config import AsdReduce, Combine, DivSpace, FgMask, KDMetric, QueryConfig, SourceKnowledge, Strategy
from .diversity import minmax_normalise
from .evidence import summarize_case
from .records import CaseEvidence, RankedCase, Ranking
from .regions import RegionSpec, RegionSums, region_sums
from .rounds import RoundPlan, plan_round, round_budgets
from .scores import (
    McDropoutAccumulator,
    anatomical_segmentation_difficulty,
    bald_from_moments,
    bald_mutual_information,
    bald_voxel_map,
    batchnorm_divergence,
    clasp_class_scores,
    feature_divergence,
    knowledge_divergence,
    mc_dropout_epistemic,
    mc_dropout_epistemic_from_mean,
    mc_dropout_voxel_map,
    mean_entropy,
)
from .selection import clasp_beta, fg_random_eligible, select
from .voxelwise import (
    class_foreground_masks,
    foreground_mask,
    normalized_entropy,
    power_entropy_class_maps,
    predictive_entropy,
)

__all__ = [
    "RegionSpec",
    "RegionSums",
    "region_sums",
    "AsdReduce",
    "McDropoutAccumulator",
    "RoundPlan",
    "CaseEvidence",
    "Combine",
    "DivSpace",
    "FgMask",
    "KDMetric",
    "QueryConfig",
    "RankedCase",
    "Ranking",
    "SourceKnowledge",
    "Strategy",
    "anatomical_segmentation_difficulty",
    "bald_from_moments",
    "bald_mutual_information",
    "bald_voxel_map",
    "batchnorm_divergence",
    "clasp_beta",
    "clasp_class_scores",
    "class_foreground_masks",
    "feature_divergence",
    "fg_random_eligible",
    "foreground_mask",
    "knowledge_divergence",
    "mc_dropout_epistemic",
    "mc_dropout_epistemic_from_mean",
    "mc_dropout_voxel_map",
    "mean_entropy",
    "minmax_normalise",
    "normalized_entropy",
    "plan_round",
    "power_entropy_class_maps",
    "predictive_entropy",
    "round_budgets",
    "select",
    "summarize_case",
]
