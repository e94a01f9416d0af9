"""Coverage queries for tiny budgets: TypiClust (typical volumes of clusters) and ProbCover (ball coverage).

At budgets of the order of the number of modes of the pool, representativeness beats informativeness: uncertainty
and divergence spend two to four labels on the tails of the pool, while a label on a typical volume teaches the
model about a whole group (``query-research.md`` §1.2; ACDC in RESULTS.md: the uncertainty queries pick extreme
volumes and lose to random). Both rules work in the frozen pre-trained encoder's pooled deepest-stage embedding of
the pool (``CaseEvidence.pretrained_embedding``, the vectors DKD's diversity and coreset already use), so they cost
nothing beyond the ranking's pass.

Geometry: embeddings are scaled to unit length and compared by Euclidean distance, as both papers do on
normalised self-supervised features (``|a - b|^2 = 2 (1 - cos)``, so the order of distances is the order of cosine
distances used elsewhere in :mod:`.diversity`). k-means is scipy's ``kmeans2`` with k-means++ seeding (MONAI has no
clustering); with one seed per ranking it is deterministic.

Pure numpy/scipy; each order function returns the pool indices in rank order, the score of each case (indexed
like the pool) and, for the reason shown to the annotator, the size of the group each case stood for.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List

import numpy as np
from scipy.cluster.vq import kmeans2

__all__ = [
    "CoverageOrder",
    "ball_purity",
    "kmeans_labels",
    "probcover_order",
    "probcover_radius",
    "typicality",
    "typiclust_order",
]

#: TypiClust's neighbourhood size for typicality (its code: ``min(20, cluster size)``).
TYPICALITY_NEIGHBOURS = 20


@dataclass(frozen=True)
class CoverageOrder:
    """A full ordering of the pool by a coverage rule.

    Attributes:
        order: pool indices in rank order (every case once).
        scores: ``[N]`` the key each case was ranked by, indexed like the pool (typicality for TypiClust, the
            number of newly covered volumes for ProbCover).
        group_sizes: ``[N]`` how many pool volumes the case stood for when it was picked (its cluster's size for
            TypiClust, the volumes its ball newly covered for ProbCover), indexed like the pool.
        radius: ProbCover's ball radius delta (Euclidean, unit embeddings); NaN for TypiClust.
    """

    order: List[int]
    scores: np.ndarray
    group_sizes: np.ndarray
    radius: float = float("nan")


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[N, M]`` between rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0))


def kmeans_labels(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """Cluster index ``[N]`` of each row of ``points`` ``[N, D]`` by k-means (k-means++ seeding, seeded).

    Clusters that k-means leaves empty are dropped and the labels renumbered ``0 .. k' - 1`` in order of first
    appearance, so every label names a non-empty cluster. ``n_clusters`` is clipped to ``[1, N]``.
    """
    n = points.shape[0]
    k = int(min(max(n_clusters, 1), n))
    if k <= 1:
        return np.zeros(n, dtype=int)
    if k == n:
        return np.arange(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "One of the clusters is empty": handled by the renumbering below
        _, labels = kmeans2(points.astype(np.float64), k, minit="++", seed=np.random.default_rng(seed))
    _, renumbered = np.unique(labels, return_inverse=True)
    first = {}
    for label in renumbered:
        first.setdefault(int(label), len(first))
    return np.array([first[int(label)] for label in renumbered], dtype=int)


def typicality(points: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """TypiClust's typicality ``[N]``: the inverse mean distance of each row to its ``K`` nearest other rows.

    ``K = min(neighbours, N - 1)``; a single point (no neighbour) has typicality ``+inf`` (it is its group's only
    member, so its most typical one). A distance of 0 to all K neighbours (duplicates) also gives ``+inf``.

    Args:
        points: ``[N, D]`` embeddings (unit rows).
        neighbours: K.

    References:
        Hacohen, Dekel, Weinshall, "Active learning on a budget: opposite strategies suit high and low budgets",
        ICML 2022, arXiv 2202.02794 (``Typicality(x) = (1/K sum_{x_i in KNN(x)} ||x - x_i||_2)^-1``).
    """
    n = points.shape[0]
    k = min(int(neighbours), n - 1)
    if k < 1:
        return np.full(n, np.inf)
    distances = _distances(points, points)
    np.fill_diagonal(distances, np.inf)
    nearest = np.sort(distances, axis=1)[:, :k]
    mean = nearest.mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mean > 0, 1.0 / np.maximum(mean, 1e-300), np.inf)


def typiclust_order(pool: np.ndarray, labeled: np.ndarray, budget: int, seed: int) -> CoverageOrder:
    """TypiClust's selection, continued into a full ordering of the pool.

    1. k-means on the pool and the labelled cases together into ``|L| + max(budget, 1)`` clusters.
    2. Repeatedly take the largest cluster (most pool volumes; ties: lowest cluster index) that holds no labelled
       case and no case picked so far, and pick its most typical pool volume (:func:`typicality` computed within
       the cluster; ties: first listed). TypiClust ignores clusters of fewer than 5 points when it can; with pools
       of tens of volumes every cluster counts, so the size order alone prefers large groups.
    3. When every cluster is covered, continue round-robin over the clusters, largest first, each time taking the
       most typical volume not yet ranked. This only orders the cases beyond the budget.

    Args:
        pool: ``[N, D]`` unit embeddings of the candidates.
        labeled: ``[M, D]`` unit embeddings of the labelled cases (``M`` may be 0).
        budget: the number of volumes this ranking proposes.
        seed: k-means seed.

    Returns:
        the :class:`CoverageOrder`; ``scores`` = typicality within the cluster, ``group_sizes`` = the cluster's pool
        volumes.

    References:
        Hacohen, Dekel, Weinshall, ICML 2022, arXiv 2202.02794; code github.com/avihu111/TypiClust
        (``typiclust.py``: ``n_clusters = len(labeled) + budget``, typicality with ``K = min(20, cluster size)``).
    """
    n, m = pool.shape[0], labeled.shape[0]
    points = np.concatenate([pool, labeled]) if m else pool
    labels = kmeans_labels(points, m + max(int(budget), 1), seed)
    pool_labels, labeled_labels = labels[:n], labels[n:]
    clusters = np.unique(pool_labels)
    sizes = {int(c): int(np.sum(pool_labels == c)) for c in clusters}
    typical = np.zeros(n, dtype=np.float64)
    for c in clusters:
        members = np.flatnonzero(pool_labels == c)
        typical[members] = typicality(pool[members])
    finite = typical[np.isfinite(typical)]
    top = float(finite.max()) if finite.size else 1.0
    scores = np.where(np.isfinite(typical), typical, 2.0 * top)  # a lone member: more typical than anything else

    by_size = sorted(sizes, key=lambda c: (-sizes[c], c))
    taken = np.zeros(n, dtype=bool)
    order: List[int] = []
    group_sizes = np.zeros(n, dtype=np.float64)

    def most_typical(cluster: int) -> int:
        members = np.flatnonzero((pool_labels == cluster) & ~taken)
        return int(members[np.lexsort((members, -scores[members]))[0]])

    covered = {int(c) for c in labeled_labels}
    for cluster in by_size:  # step 2: uncovered clusters, largest first
        if cluster not in covered:
            pick = most_typical(cluster)
            order.append(pick)
            taken[pick] = True
            group_sizes[pick] = sizes[cluster]
    while len(order) < n:  # step 3: round-robin beyond the budget
        for cluster in by_size:
            if np.any((pool_labels == cluster) & ~taken):
                pick = most_typical(cluster)
                order.append(pick)
                taken[pick] = True
                group_sizes[pick] = sizes[cluster]
    return CoverageOrder(order=order, scores=scores, group_sizes=group_sizes)


def ball_purity(points: np.ndarray, labels: np.ndarray, radius: float) -> float:
    """Share of the balls ``B(x, radius)`` (one per row) whose points all carry the label of their centre.

    References:
        Yehuda, Dekel, Hacohen, Weinshall, "Active learning through a covering lens", NeurIPS 2022,
        arXiv 2205.11320 (purity of delta-balls with respect to k-means pseudo-labels).
    """
    distances = _distances(points, points)
    inside = distances <= radius
    same = labels[:, None] == labels[None, :]
    return float(np.mean(np.all(~inside | same, axis=1)))


def probcover_radius(points: np.ndarray, n_clusters: int, purity: float, seed: int) -> float:
    """ProbCover's radius rule: the largest delta whose balls are at least ``purity`` pure.

    The pseudo-labels are k-means clusters of ``points`` (``n_clusters`` of them; ProbCover uses the number of
    classes, a volume pool has none, so the caller passes the number of groups the budget can cover). The ball
    ``B(x_i, delta)`` is pure exactly while ``delta`` is below ``d_i``, the distance from ``x_i`` to the nearest point
    of another cluster, so purity falls monotonically with delta and the rule is the largest pairwise distance
    below the ``ceil(purity * N)``-th largest ``d_i`` (O(N^2), no scan over radii). With a single cluster every ball
    is pure and the rule would cover the pool with one ball; the radius is then the median pairwise distance, so
    that a ball still stands for "similar volumes".

    Args:
        points: ``[N, D]`` unit embeddings (pool and labelled cases).
        n_clusters: k of the pseudo-labels.
        purity: alpha, e.g. 0.95 (ProbCover's default).
        seed: k-means seed.

    Returns:
        delta (Euclidean); 0 when fewer than two points are given or no positive radius is pure enough.

    References:
        Yehuda et al., NeurIPS 2022, arXiv 2205.11320 (delta = the largest radius with purity >= alpha = 0.95).
    """
    n = points.shape[0]
    if n < 2:
        return 0.0
    distances = _distances(points, points)
    pairs = distances[np.triu_indices(n, 1)]
    labels = kmeans_labels(points, n_clusters, seed)
    if np.unique(labels).size <= 1:
        return float(np.median(pairs))
    other = np.where(labels[:, None] != labels[None, :], distances, np.inf)
    first_impure = np.sort(other.min(axis=1))[::-1]  # d_i, largest first
    needed = int(np.ceil(purity * n - 1e-9))
    limit = first_impure[max(needed, 1) - 1]  # purity(delta) >= alpha  <=>  delta < limit
    below = pairs[pairs < limit]
    return float(below.max()) if below.size else 0.0


def probcover_order(pool: np.ndarray, labeled: np.ndarray, budget: int, purity: float, seed: int) -> CoverageOrder:
    """ProbCover's greedy maximum coverage, continued into a full ordering of the pool.

    The radius is :func:`probcover_radius` over the pool and the labelled cases, with ``|L| + max(budget, 1)``
    pseudo-label clusters (at least 2). The balls of the labelled cases are covered from the start. Each step
    picks the pool volume whose ball holds the most pool volumes not yet covered (ties: first listed) and covers
    them. When everything is covered, ProbCover falls back to random; here the order continues by the most
    not-yet-ranked volumes within the radius (local density), so the ranking stays deterministic.

    Returns:
        the :class:`CoverageOrder`; ``scores`` = the volumes newly covered by the pick (the density count once
        everything is covered), ``group_sizes`` = the volumes newly covered, ``radius`` = delta.

    References:
        Yehuda, Dekel, Hacohen, Weinshall, "Active learning through a covering lens", NeurIPS 2022,
        arXiv 2205.11320; code github.com/avihu111/TypiClust (``probcover.py``).
    """
    n, m = pool.shape[0], labeled.shape[0]
    points = np.concatenate([pool, labeled]) if m else pool
    radius = probcover_radius(points, max(m + max(int(budget), 1), 2), purity, seed)
    within = _distances(pool, pool) <= radius  # [N, N], symmetric, diagonal true
    uncovered = np.ones(n, dtype=bool)
    if m:
        uncovered &= ~np.any(_distances(pool, labeled) <= radius, axis=1)
    gain = within[:, uncovered].sum(axis=1)  # uncovered volumes in each ball, kept up to date: O(N^2) in all
    density = within.sum(axis=1)  # not-yet-ranked volumes in each ball
    taken = np.zeros(n, dtype=bool)
    order: List[int] = []
    scores = np.zeros(n, dtype=np.float64)
    group_sizes = np.zeros(n, dtype=np.float64)
    while len(order) < n:
        candidates = np.flatnonzero(~taken)
        if gain[candidates].max() > 0:
            pick = int(candidates[np.argmax(gain[candidates])])
            scores[pick] = group_sizes[pick] = float(gain[pick])
        else:
            pick = int(candidates[np.argmax(density[candidates])])
            scores[pick] = float(density[pick])
        newly = within[pick] & uncovered
        if newly.any():
            gain -= within[:, newly].sum(axis=1)
            uncovered &= ~newly
        density -= within[:, pick]
        taken[pick] = True
        order.append(pick)
    return CoverageOrder(order=order, scores=scores, group_sizes=group_sizes, radius=radius)
