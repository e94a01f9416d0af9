"""Per-case scores: one number (or one small vector) per unlabeled volume.

Each score is a pure function of the model outputs of one case: ``probs -> voxel map -> reduction``. None of them
modifies its input. Formulas marked [inferred] are design decisions of ``method-spec.md``, not read from a paper.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from .config import KDMetric, QueryConfig
from .regions import RegionSpec, region_sums
from .voxelwise import _normalized_entropy, check_probs

__all__ = [
    "McDropoutAccumulator",
    "anatomical_segmentation_difficulty",
    "bald_from_moments",
    "bald_mutual_information",
    "bald_voxel_map",
    "batchnorm_divergence",
    "clasp_class_scores",
    "feature_divergence",
    "knowledge_divergence",
    "mc_dropout_epistemic",
    "mc_dropout_voxel_map",
    "mean_entropy",
]

#: Value MONAI Label's ``EpistemicScoring.entropy_3d_volume`` puts in place of probabilities ``<= 0``.
MONAI_LABEL_PROB_FLOOR = 0.00005

#: Variance floor of :func:`batchnorm_divergence` (the ``eps`` of ``torch.nn.BatchNorm3d``).
BN_VARIANCE_EPS = 1e-5


# --------------------------------------------------------------------------------------------------------- ASD


def anatomical_segmentation_difficulty(probs: np.ndarray, config: QueryConfig) -> float:
    """ASD: mean normalised entropy inside the adaptive predicted foreground (method-spec.md §1.5, [inferred]).

    ``ASD = sum_{v in M} H(v) / |M|`` with ``H`` from :func:`~.voxelwise.normalized_entropy` and ``M`` from
    :func:`~.voxelwise.foreground_mask` (``config.fg_mask``, ``config.fg_prob_threshold``, ``config.fg_dilation``).
    With ``config.asd_reduce == "class_balanced"`` it is the mean over the predicted foreground classes of the
    per-class mean inside ``dilate(argmax == c)``, so that large organs do not dominate small ones. Entropy in the
    background (outside ``M``) never counts. A volume with no predicted foreground scores ``config.asd_empty_fg``.

    Args:
        probs: softmax probabilities ``[C, I, J, K]``, class 0 = background.
        config: query settings.

    Returns:
        ASD in ``[0, 1]``.
    """
    return region_sums(probs, RegionSpec.from_config(config)).asd(config)


def mean_entropy(probs: np.ndarray) -> float:
    """Whole-volume mean of the normalised entropy (the classic "mean entropy" baseline).

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.

    Returns:
        mean entropy in ``[0, 1]``.
    """
    return float(_normalized_entropy(check_probs(probs)).mean(dtype=np.float64))


# ---------------------------------------------------------------------------------------------------------- KD


def _as_vector(value: object, what: str) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(
            f"{what} must be a non-empty pooled feature vector [D], got shape {vector.shape}. Average the stage "
            "output over space (and drop the batch axis) before scoring."
        )
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} contains NaN or infinite values.")
    return vector


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x)
    return shifted - math.log(float(np.sum(np.exp(shifted))))


def feature_divergence(current: np.ndarray, pretrained: np.ndarray, metric: KDMetric, temperature: float) -> float:
    """Divergence between two pooled feature vectors ``[D]`` of one encoder stage (method-spec.md §1.4b).

    * ``"js"``: Jensen-Shannon divergence (natural log, in ``[0, ln 2]``) between ``softmax(g / tau)`` channel
      distributions.
    * ``"sym_kl"``: ``KL(p || q) + KL(q || p)`` between the same distributions.
    * ``"cosine"``: ``1 - cos(g_current, g_pretrained)`` on the raw features (``tau`` unused), in ``[0, 2]``; two
      zero vectors are at distance 0, a zero and a non-zero vector at distance 1.

    Identical vectors give 0 for every metric.
    """
    metric = KDMetric(metric)
    a = _as_vector(current, "current feature")
    b = _as_vector(pretrained, "pre-trained feature")
    if a.shape != b.shape:
        raise ValueError(f"current feature has shape {a.shape} but the pre-trained one has {b.shape}.")
    if metric == KDMetric.COSINE:
        norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if norm_a == 0.0 or norm_b == 0.0:
            return 0.0 if norm_a == norm_b else 1.0
        cosine = float(np.dot(a, b)) / (norm_a * norm_b)
        return float(min(max(1.0 - cosine, 0.0), 2.0))
    log_p = _log_softmax(a / temperature)
    log_q = _log_softmax(b / temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    if metric == KDMetric.SYM_KL:
        value = float(np.sum(p * (log_p - log_q)) + np.sum(q * (log_q - log_p)))
    else:
        log_m = np.logaddexp(log_p, log_q) - math.log(2.0)
        value = 0.5 * float(np.sum(p * (log_p - log_m))) + 0.5 * float(np.sum(q * (log_q - log_m)))
    return max(value, 0.0)


def knowledge_divergence(
    current_features: Sequence[np.ndarray],
    pretrained_features: Sequence[np.ndarray],
    config: QueryConfig,
) -> float:
    """KD: how far the current encoder moved away from the frozen pre-trained one on this case.

    ``KD = (1/S) sum_s div(g_s(E_theta, x), g_s(E_0, x))`` over the deepest ``S = config.kd_stages`` stages, with
    ``div`` = :func:`feature_divergence` (``config.kd_metric``, ``config.kd_temperature``) (method-spec.md §1.4b,
    [inferred]). It is exactly 0 when the two encoders are identical (cold start, round 0).

    Args:
        current_features: one pooled feature vector ``[D_s]`` per encoder stage of the current (adapted) encoder,
            ordered shallow to deep.
        pretrained_features: the same for the frozen pre-trained encoder; same length and shapes.
        config: query settings.

    Returns:
        KD >= 0 (JS at most ln 2, cosine at most 2).
    """
    current = list(current_features)
    pretrained = list(pretrained_features)
    if len(current) != len(pretrained):
        raise ValueError(
            f"current encoder gave {len(current)} stage features but the pre-trained encoder gave "
            f"{len(pretrained)}; both must come from the same stages."
        )
    if len(current) < config.kd_stages:
        raise ValueError(
            f"kd_stages={config.kd_stages} but only {len(current)} encoder stage feature(s) were given; lower "
            "QueryConfig.kd_stages or extract more stages."
        )
    stages = range(len(current) - config.kd_stages, len(current))
    values = [feature_divergence(current[s], pretrained[s], config.kd_metric, config.kd_temperature) for s in stages]
    return float(np.mean(values))


def batchnorm_divergence(
    stage_stats: Sequence[Tuple[np.ndarray, np.ndarray]],
    running_stats: Sequence[Tuple[np.ndarray, np.ndarray]],
    eps: float = BN_VARIANCE_EPS,
) -> float:
    """Source gap from BatchNorm statistics (``source_knowledge="bn_stats"``, method-spec.md §1.4a option 2).

    For each BN layer l, the per-channel Gaussian ``KL(N(mu_l(x), var_l(x)) || N(mu_l^src, var_l^src))`` between the
    feature statistics of this case and the running statistics stored in the pre-trained checkpoint, averaged over
    the channels of the layer (so wide layers do not dominate), then summed over layers. ``eps`` is added to every
    variance, as BatchNorm does.

    Args:
        stage_stats: per BN layer, the pair ``(mean [D_l], var [D_l])`` of the layer input over the voxels of this
            case (per channel, biased variance).
        running_stats: per BN layer, the pair ``(running_mean [D_l], running_var [D_l])`` of the pre-trained model;
            same layers in the same order.
        eps: variance floor.

    Returns:
        divergence >= 0; 0 when the case statistics equal the stored ones.
    """
    stats = list(stage_stats)
    running = list(running_stats)
    if len(stats) != len(running):
        raise ValueError(
            f"got statistics of {len(stats)} BatchNorm layers for the case but {len(running)} stored ones; they "
            "must describe the same layers."
        )
    if not stats:
        raise ValueError("batchnorm_divergence needs at least one BatchNorm layer; the encoder has none.")
    total = 0.0
    for layer, ((mean_x, var_x), (mean_s, var_s)) in enumerate(zip(stats, running)):
        arrays = [
            _as_vector(value, f"BatchNorm layer {layer} {name}")
            for value, name in (
                (mean_x, "case mean"),
                (var_x, "case variance"),
                (mean_s, "running mean"),
                (var_s, "running variance"),
            )
        ]
        if len({array.shape for array in arrays}) != 1:
            raise ValueError(
                f"BatchNorm layer {layer}: means and variances have different shapes "
                f"{[array.shape for array in arrays]}."
            )
        mu_x, v_x, mu_s, v_s = arrays
        if np.any(v_x < 0) or np.any(v_s < 0):
            raise ValueError(f"BatchNorm layer {layer}: a variance is negative.")
        v_x = v_x + eps
        v_s = v_s + eps
        kl = 0.5 * (np.log(v_s / v_x) + (v_x + (mu_x - mu_s) ** 2) / v_s - 1.0)
        total += float(np.mean(kl))
    return max(total, 0.0)


# ------------------------------------------------------------------------------------------------- MC dropout


def _check_prob_samples(prob_samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(prob_samples)
    if samples.ndim != 5:
        raise ValueError(
            f"prob_samples must have shape [T, C, I, J, K] (T stochastic passes), got shape {samples.shape}."
        )
    if samples.shape[0] < 2:
        raise ValueError(
            f"MC-dropout scoring needs at least 2 stochastic passes, got T={samples.shape[0]} (MONAI Label "
            "enforces the same minimum); raise QueryConfig.mc_samples."
        )
    if not np.all(np.isfinite(samples)):
        raise ValueError("prob_samples contains NaN or infinite values.")
    return samples


def mc_dropout_voxel_map(prob_samples: np.ndarray) -> np.ndarray:
    """Voxel map of MONAI Label's epistemic score: entropy of the mean foreground prediction over T passes.

    Faithful to ``EpistemicScoring.entropy_3d_volume`` of MONAI Label: with more than one channel the background
    channel is dropped; for each remaining channel c the mean over the T passes ``pbar_c = sum_t p_tc / T``
    contributes ``-pbar_c ln pbar_c``; the map is the sum over channels. It is the entropy of the sample-mean
    prediction restricted to the foreground channels (not a variance and not mutual information), unnormalised.
    Because it depends on the passes only through their mean, :func:`mc_dropout_voxel_map_from_mean` computes it
    from a running mean, so memory stays at one sample whatever T is.

    Args:
        prob_samples: softmax outputs of T >= 2 forward passes with dropout active, ``[T, C, I, J, K]``.

    Returns:
        ``float32`` ``[I, J, K]``.

    References:
        MONAI Label, ``monailabel/tasks/scoring/epistemic.py`` (``EpistemicScoring``),
        github.com/Project-MONAI/MONAILabel. Gal & Ghahramani, "Dropout as a Bayesian approximation", ICML 2016.
    """
    samples = _check_prob_samples(prob_samples)
    floored = np.maximum(samples.astype(np.float32), np.float32(MONAI_LABEL_PROB_FLOOR))  # per pass, as MONAI Label
    return mc_dropout_voxel_map_from_mean(floored.mean(axis=0))


def mc_dropout_voxel_map_from_mean(mean_probs: np.ndarray) -> np.ndarray:
    """:func:`mc_dropout_voxel_map` from the mean ``[C, I, J, K]`` of the T passes' softmax outputs.

    MONAI Label floors probabilities ``<= 0`` at ``5e-5`` in each pass before averaging; here the floor applies to
    the mean, which differs only where a softmax output underflowed to exactly 0 in some pass.
    """
    mean = np.asarray(mean_probs)
    if mean.ndim != 4 or not np.all(np.isfinite(mean)):
        raise ValueError(f"mean_probs must be finite with shape [C, I, J, K], got shape {mean.shape}.")
    channels = range(1, mean.shape[0]) if mean.shape[0] > 1 else range(1)
    entropy = np.zeros(mean.shape[1:], dtype=np.float32)
    for channel in channels:
        average = np.maximum(mean[channel].astype(np.float32), np.float32(MONAI_LABEL_PROB_FLOOR))
        entropy -= average * np.log(average)
    return entropy


def mc_dropout_epistemic_from_mean(mean_probs: np.ndarray) -> float:
    """:func:`mc_dropout_epistemic` from the mean ``[C, I, J, K]`` of T >= 2 passes (a running mean)."""
    return float(np.mean(mc_dropout_voxel_map_from_mean(mean_probs), dtype=np.float64))


def mc_dropout_epistemic(prob_samples: np.ndarray) -> float:
    """MONAI Label's epistemic score of a case: the volume mean of :func:`mc_dropout_voxel_map`.

    Args:
        prob_samples: ``[T, C, I, J, K]`` softmax outputs of T >= 2 passes with dropout active.

    Returns:
        the score (higher = more uncertain), as ``EpistemicScoring`` stores in ``epistemic_entropy``.

    References:
        MONAI Label ``EpistemicScoring`` (``np.nanmean`` of the entropy volume; inputs here are checked to be
        finite, so the mean equals the nanmean).
    """
    return float(np.mean(mc_dropout_voxel_map(prob_samples), dtype=np.float64))


# ------------------------------------------------------------------------------------------------------- BALD


def _entropy_nats64(probs: np.ndarray) -> np.ndarray:
    """``-sum_c p_c ln p_c`` per voxel of ``probs`` ``[C, ...]`` in float64, with ``0 ln 0 = 0``."""
    entropy = np.zeros(probs.shape[1:], dtype=np.float64)
    for channel in probs:  # one class at a time keeps memory at a few [I, J, K] arrays
        p = channel.astype(np.float64)
        positive = p > 0
        entropy -= np.where(positive, p * np.log(np.where(positive, p, 1.0)), 0.0)
    return entropy


def bald_from_moments(mean_probs: np.ndarray, mean_sample_entropy: np.ndarray) -> np.ndarray:
    """BALD voxel map from the two running means of T passes: ``MI(v) = H[pbar](v) - mean_t H[p_t](v)``.

    Args:
        mean_probs: ``pbar = (1/T) sum_t p_t``, ``[C, I, J, K]``.
        mean_sample_entropy: ``(1/T) sum_t H[p_t]``, ``[I, J, K]``, entropies in nats over all C classes.

    Returns:
        ``float64`` ``[I, J, K]`` in ``[0, ln C]`` (negative rounding residues are clipped to 0; the exact value is
        >= 0 because entropy is concave).
    """
    mean = np.asarray(mean_probs)
    expected = np.asarray(mean_sample_entropy, dtype=np.float64)
    if mean.ndim != 4 or not np.all(np.isfinite(mean)):
        raise ValueError(f"mean_probs must be finite with shape [C, I, J, K], got shape {mean.shape}.")
    if expected.shape != mean.shape[1:] or not np.all(np.isfinite(expected)):
        raise ValueError(f"mean_sample_entropy must be finite with shape {mean.shape[1:]}, got {expected.shape}.")
    return np.clip(_entropy_nats64(mean) - expected, 0.0, math.log(mean.shape[0]))


def bald_voxel_map(prob_samples: np.ndarray) -> np.ndarray:
    """Voxel map of BALD: the mutual information between the prediction and the model weights under MC dropout.

    ``MI(v) = H[(1/T) sum_t p_t(v)] - (1/T) sum_t H[p_t(v)]`` with ``H[p] = -sum_c p_c ln p_c`` over **all** C
    classes, background included (nats). The first term is the total predictive entropy, the second its expected
    aleatoric part; what remains is the disagreement between the passes: 0 when every pass predicts the same
    distribution (however uncertain), ``ln 2`` for two passes that are one-hot on different classes.

    Args:
        prob_samples: softmax outputs of T >= 2 passes with dropout active, ``[T, C, I, J, K]``.

    Returns:
        ``float64`` ``[I, J, K]`` in ``[0, ln C]``.

    References:
        Houlsby et al., "Bayesian active learning for classification and preference learning", arXiv 1112.5745
        (2011); Gal, Islam & Ghahramani, "Deep Bayesian active learning with image data", ICML 2017.
    """
    samples = _check_prob_samples(prob_samples)
    accumulator = McDropoutAccumulator()
    for sample in samples:
        accumulator.add(sample)
    return accumulator.bald_voxel_map()


def bald_mutual_information(prob_samples: np.ndarray) -> float:
    """BALD score of a case: the whole-volume mean of :func:`bald_voxel_map` (nats, in ``[0, ln C]``).

    The volume mean mirrors :func:`mc_dropout_epistemic` (MONAI Label's reduction), so the two MC-dropout
    baselines differ only in the voxel map: entropy of the mean foreground prediction versus mutual information.
    """
    return float(np.mean(bald_voxel_map(prob_samples), dtype=np.float64))


class McDropoutAccumulator:
    """Running moments of T MC-dropout passes, one pass in memory at a time (the predictor streams them).

    Keeps the sum of the passes' probabilities ``[C, I, J, K]`` and the sum of their entropies ``[I, J, K]``
    (float64), which is all the two MC-dropout scores need: :meth:`epistemic` (MONAI Label, entropy of the mean)
    and :meth:`mutual_information` (BALD, entropy of the mean minus the mean entropy). Memory is one probability
    volume plus one scalar volume, whatever T is.
    """

    def __init__(self) -> None:
        self._total: Optional[np.ndarray] = None
        self._entropy_total: Optional[np.ndarray] = None
        self.count = 0

    def add(self, sample: np.ndarray) -> None:
        """Add one pass's softmax probabilities ``[C, I, J, K]`` (not modified, not kept)."""
        array = check_probs(sample, "MC-dropout sample")
        if self._total is not None and array.shape != self._total.shape:
            raise ValueError(f"MC-dropout sample has shape {array.shape}, the earlier ones {self._total.shape}.")
        entropy = _entropy_nats64(array)
        if self._total is None:
            self._total = array.astype(np.float64)
            self._entropy_total = entropy
        else:
            self._total += array
            self._entropy_total += entropy
        self.count += 1

    def _check(self) -> None:
        if self.count < 2:
            raise ValueError(
                f"MC-dropout scoring needs at least 2 stochastic passes, got T={self.count}; raise "
                "QueryConfig.mc_samples."
            )

    @property
    def mean_probs(self) -> np.ndarray:
        """``pbar`` ``[C, I, J, K]`` float32."""
        self._check()
        return (self._total / self.count).astype(np.float32)

    @property
    def mean_sample_entropy(self) -> np.ndarray:
        """``(1/T) sum_t H[p_t]`` ``[I, J, K]`` float64 (nats)."""
        self._check()
        return self._entropy_total / self.count

    def bald_voxel_map(self) -> np.ndarray:
        """:func:`bald_voxel_map` of the passes added so far."""
        self._check()
        return bald_from_moments(self._total / self.count, self.mean_sample_entropy)

    def mutual_information(self) -> float:
        """:func:`bald_mutual_information` of the passes added so far."""
        return float(np.mean(self.bald_voxel_map(), dtype=np.float64))

    def epistemic(self) -> float:
        """:func:`mc_dropout_epistemic` (from the mean, :func:`mc_dropout_epistemic_from_mean`)."""
        return mc_dropout_epistemic_from_mean(self.mean_probs)


# ------------------------------------------------------------------------------------------------------ ClaSP


def clasp_class_scores(probs: np.ndarray, config: QueryConfig) -> np.ndarray:
    """Volume-level ClaSP PE scores (method-spec.md §3.4, [inferred] adaptation of the patch-level method §3.2).

    Index 0: mean of the plain predictive entropy ``PE`` over the whole volume. Index ``c >= 1``: mean of
    ``PE * p_c`` over ``dilate(argmax == c)`` (``config.fg_dilation``), or 0 when class c is not predicted.
    ``PE`` is unnormalised (nats), as in nnActive.

    Args:
        probs: softmax probabilities ``[C, I, J, K]``.
        config: query settings.

    Returns:
        ``float64`` ``[C]``, all >= 0.
    """
    return region_sums(probs, RegionSpec.from_config(config)).clasp_scores()
