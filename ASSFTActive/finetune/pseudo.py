"""Selective pseudo-labelling: which unlabelled volumes are reliable enough to train on (method-spec §1.7).

Pure numpy functions, each testable alone: per-volume foreground confidence, semantic distance to the labelled set,
min-max normalised reliability, the selection of the reliable subset R, and the optional voxel-level mask.

References:
    Yang, Marcus, Sotiras, "Active Selective Semi-supervised Fine-tuning" (ASSFT), arXiv:2509.10784 v3: reliable
    unqueried samples are chosen by predictive confidence and semantic distance to the labelled samples. The
    formulas below are the [inferred] reading of ``shared/research/method-spec.md`` §1.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import ConfidenceMetric, PseudoLabelConfig, PseudoMode, SelectMode

__all__ = [
    "PseudoCandidate",
    "PseudoDecision",
    "foreground_confidence",
    "minmax",
    "reliability",
    "select_reliable",
    "semantic_distance",
    "voxel_confidence_mask",
]


def foreground_confidence(
    label: np.ndarray,
    max_prob: np.ndarray,
    entropy: np.ndarray,
    metric: ConfidenceMetric = ConfidenceMetric.FG_MAX_PROB,
    empty_value: float = 0.0,
) -> float:
    """``conf_u`` of method-spec §1.7: confidence of the teacher inside its own predicted foreground.

    Args:
        label: the teacher's argmax ``[I, J, K]`` (class 0 is background).
        max_prob: ``max_c p_c`` ``[I, J, K]``.
        entropy: normalised entropy ``H / log C`` ``[I, J, K]``.
        metric: ``fg_max_prob``: mean over predicted-foreground voxels of ``max_c p_c(v)``;
            ``one_minus_fg_entropy``: ``1 -`` mean normalised entropy over the same voxels.
        empty_value: the confidence when no voxel is predicted foreground.

    Returns:
        a number in ``[0, 1]``.
    """
    label, max_prob, entropy = np.asarray(label), np.asarray(max_prob), np.asarray(entropy)
    if not (label.ndim == 3 and label.shape == max_prob.shape == entropy.shape):
        raise ValueError(
            f"label, max_prob and entropy must be [I, J, K] maps of one shape, got {label.shape}, "
            f"{max_prob.shape}, {entropy.shape}"
        )
    metric = ConfidenceMetric(metric)
    foreground = label != 0
    if not foreground.any():
        return float(empty_value)
    if metric == ConfidenceMetric.FG_MAX_PROB:
        return float(np.clip(max_prob[foreground].mean(dtype=np.float64), 0.0, 1.0))
    return float(np.clip(1.0 - entropy[foreground].mean(dtype=np.float64), 0.0, 1.0))


def semantic_distance(features: np.ndarray, labeled_features: Sequence[np.ndarray]) -> float:
    """``dist_u = min_l [1 - cos(g(x_u), g(x_l))]`` (method-spec §1.7).

    Args:
        features: pooled deepest-stage encoder features ``[D]`` of the unlabelled volume.
        labeled_features: the same for each labelled volume (at least one).

    Returns:
        a cosine distance in ``[0, 2]``.
    """
    if len(labeled_features) == 0:
        raise ValueError("semantic_distance needs at least one labelled volume's features")
    u = np.asarray(features, dtype=np.float64).ravel()
    matrix = np.stack([np.asarray(f, dtype=np.float64).ravel() for f in labeled_features])
    if matrix.shape[1] != u.shape[0]:
        raise ValueError(f"feature sizes differ: {u.shape[0]} vs labelled {matrix.shape[1]}")
    norms = np.linalg.norm(matrix, axis=1) * max(np.linalg.norm(u), 1e-12)
    cosine = (matrix @ u) / np.clip(norms, 1e-12, None)
    return float(np.clip(1.0 - cosine.max(), 0.0, 2.0))


def minmax(values: Sequence[float]) -> np.ndarray:
    """Min-max normalise to ``[0, 1]``; all zeros when the values do not spread."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return array
    low, high = float(array.min()), float(array.max())
    if high - low <= 1e-12:
        return np.zeros_like(array)
    return (array - low) / (high - low)


def reliability(confidence: Sequence[float], distance: Sequence[float], dist_weight: float = 1.0) -> np.ndarray:
    """``rel_u = conf~_u - mu · dist~_u`` with both terms min-max normalised over the pool (method-spec §1.7)."""
    return minmax(confidence) - float(dist_weight) * minmax(distance)


@dataclass(frozen=True)
class PseudoCandidate:
    """What the teacher says about one unlabelled volume.

    Attributes:
        case_id: the volume's name.
        confidence: ``conf_u`` (:func:`foreground_confidence`).
        distance: ``dist_u`` (:func:`semantic_distance`).
    """

    case_id: str
    confidence: float
    distance: float


@dataclass(frozen=True)
class PseudoDecision:
    """The selection verdict on one unlabelled volume (kept with the model version as provenance).

    Attributes:
        reliability: ``rel_u`` (NaN when the mode does not compute it).
        kept: whether the volume is pseudo-labelled for training.
        rank: 1-based rank by reliability (1 = most reliable).
    """

    case_id: str
    confidence: float
    distance: float
    reliability: float
    kept: bool
    rank: int

    def to_dict(self) -> Dict[str, Any]:
        def clean(x: float) -> Optional[float]:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "case_id": self.case_id,
            "confidence": clean(self.confidence),
            "distance": clean(self.distance),
            "reliability": clean(self.reliability),
            "kept": self.kept,
            "rank": self.rank,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PseudoDecision:
        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            case_id=str(data["case_id"]),
            confidence=num(data["confidence"]),
            distance=num(data["distance"]),
            reliability=num(data["reliability"]),
            kept=bool(data["kept"]),
            rank=int(data["rank"]),
        )


def select_reliable(candidates: Sequence[PseudoCandidate], config: PseudoLabelConfig) -> Tuple[PseudoDecision, ...]:
    """Decide which unlabelled volumes are pseudo-labelled (method-spec §1.7).

    * ``none``: none; ``all``: every candidate.
    * ``selective`` + ``topk``: the ``ceil(keep_fraction · N)`` largest reliabilities (ties: listed first wins).
    * ``selective`` + ``threshold``: ``conf_u >= tau_conf`` and ``dist_u <= quantile(dist, tau_dist_quantile)``.

    Returns:
        one decision per candidate, in the order given.
    """
    n = len(candidates)
    if n == 0:
        return ()
    conf = np.array([c.confidence for c in candidates], dtype=np.float64)
    dist = np.array([c.distance for c in candidates], dtype=np.float64)
    rel = reliability(conf, dist, config.dist_weight)
    order = sorted(range(n), key=lambda i: (-rel[i], i))
    ranks = np.empty(n, dtype=int)
    ranks[order] = np.arange(1, n + 1)
    mode = PseudoMode(config.mode)
    if mode == PseudoMode.NONE:
        kept = np.zeros(n, dtype=bool)
    elif mode == PseudoMode.ALL:
        kept = np.ones(n, dtype=bool)
    elif SelectMode(config.select_mode) == SelectMode.TOPK:
        count = min(n, int(math.ceil(config.keep_fraction * n - 1e-9)))
        kept = np.zeros(n, dtype=bool)
        kept[order[:count]] = True
    else:
        limit = float(np.quantile(dist, config.tau_dist_quantile))
        kept = (conf >= config.tau_conf) & (dist <= limit + 1e-12)
    return tuple(
        PseudoDecision(
            case_id=c.case_id,
            confidence=float(conf[i]),
            distance=float(dist[i]),
            reliability=float(rel[i]),
            kept=bool(kept[i]),
            rank=int(ranks[i]),
        )
        for i, c in enumerate(candidates)
    )


def voxel_confidence_mask(
    label: np.ndarray, max_prob: np.ndarray, threshold: Optional[float], class_keep_min: float = 0.0
) -> Optional[np.ndarray]:
    """The trusted voxels of an offline pseudo-label as bool ``[I, J, K]``; ``None`` when the threshold is off.

    ``max_c p_c(v) >= threshold``, relaxed per predicted class by ``class_keep_min`` (the rule of
    :func:`~ASSFTActive.finetune.semi.confident_voxels`, shared with the online teacher).

    Args:
        label: the teacher's argmax ``[I, J, K]``.
        max_prob: its ``max_c p_c`` ``[I, J, K]``.
    """
    if threshold is None:
        return None
    import torch

    from .semi import confident_from_maps

    return confident_from_maps(
        torch.from_numpy(np.ascontiguousarray(max_prob)),
        torch.from_numpy(np.ascontiguousarray(label)).long(),
        float(threshold),
        class_keep_min,
    ).numpy()
