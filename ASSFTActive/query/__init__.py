"""Scoring and selection of unlabeled volumes for annotation (active learning).

Pipeline, each step a pure function testable alone:

1. voxel maps from the class probabilities (:mod:`.voxelwise`): normalised entropy, adaptive foreground;
2. entropy sums over the scored regions (:mod:`.regions`) and per-case scores (:mod:`.scores`): ASD, knowledge
   divergence, mean entropy, MC-dropout (epistemic and BALD), ClaSP PE;
3. one :class:`CaseEvidence` per case (:func:`summarize_case`);
4. a full ordering of the pool, the first ``budget`` selected, each with a one-line reason (:func:`select`; the
   coverage rules for tiny budgets in :mod:`.coverage`); out-of-distribution volumes flagged (:mod:`.ood`) and held
   back, and the "where the model is probably wrong" list (:mod:`.wrong`);
5. the multi-round schedule (:mod:`.rounds`: :func:`round_budgets`, :func:`plan_round`). How well each score
   predicts the model's error (hidden labels) is the benchmark harness's (``Testing/Benchmarks/harness``).

No torch, no I/O: inputs are numpy arrays, settings are one frozen :class:`QueryConfig`.
Formulas and defaults follow ``method-spec.md`` (§1.4 DKD, §1.5 ASD, §1.6 combination, §3 ClaSP PE).
"""

from .config import (
    AsdReduce,
    Combine,
    Coverage,
    DivSpace,
    FgMask,
    KDDirection,
    KDMetric,
    QueryConfig,
    Sampling,
    SourceKnowledge,
    Strategy,
)
from .ranking_file import RANKING_CSV_COLUMNS, RankingEntry, RankingFile, WrongList
from .rounds import RoundPlan, plan_round, round_budgets

#: Names served from the numpy modules on first use (module ``__getattr__``), so that importing a torch- and
#: numpy-free part (``config``, ``rounds``, ``ranking_file``: the job protocol and the Slicer GUI read them) does
#: not load numpy. A new numpy module's names go here, not into an import above.
_LAZY = {
    "CoverageOrder": "coverage",
    "probcover_order": "coverage",
    "probcover_radius": "coverage",
    "typicality": "coverage",
    "typiclust_order": "coverage",
    "minmax_normalise": "diversity",
    "summarize_case": "evidence",
    "CaseEvidence": "records",
    "RankedCase": "records",
    "Ranking": "records",
    "RegionSpec": "regions",
    "RegionSums": "regions",
    "region_sums": "regions",
    "McDropoutAccumulator": "scores",
    "anatomical_segmentation_difficulty": "scores",
    "bald_from_moments": "scores",
    "bald_mutual_information": "scores",
    "bald_voxel_map": "scores",
    "batchnorm_divergence": "scores",
    "clasp_class_scores": "scores",
    "feature_divergence": "scores",
    "knowledge_divergence": "scores",
    "mc_dropout_epistemic": "scores",
    "mc_dropout_epistemic_from_mean": "scores",
    "mc_dropout_voxel_map": "scores",
    "mean_entropy": "scores",
    "clasp_beta": "selection",
    "fg_random_eligible": "selection",
    "resolved_strategy": "selection",
    "select": "selection",
    "class_foreground_masks": "voxelwise",
    "foreground_mask": "voxelwise",
    "normalized_entropy": "voxelwise",
    "power_entropy_class_maps": "voxelwise",
    "predictive_entropy": "voxelwise",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "RANKING_CSV_COLUMNS",
    "RankingEntry",
    "WrongList",
    "RankingFile",
    "RegionSpec",
    "RegionSums",
    "region_sums",
    "AsdReduce",
    "McDropoutAccumulator",
    "RoundPlan",
    "CaseEvidence",
    "Combine",
    "Coverage",
    "CoverageOrder",
    "DivSpace",
    "FgMask",
    "KDDirection",
    "KDMetric",
    "QueryConfig",
    "RankedCase",
    "Ranking",
    "Sampling",
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
    "probcover_order",
    "probcover_radius",
    "power_entropy_class_maps",
    "predictive_entropy",
    "resolved_strategy",
    "round_budgets",
    "select",
    "summarize_case",
    "typicality",
    "typiclust_order",
]
