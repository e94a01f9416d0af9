"""Pool-level building blocks of selection: min-max normalisation, cosine distances, the diversity term.

Pure numpy; every function returns new arrays.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = [
    "cosine_distance_matrix",
    "diversity",
    "dkd_along_order",
    "has_spread",
    "initial_min_distance",
    "minmax_normalise",
    "unit_rows",
]

#: A pool whose scores span less than this (relative to their magnitude) is treated as having no spread.
NO_SPREAD_RTOL = 1e-12


def minmax_normalise(values: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` over the pool (method-spec.md §1.4b, §1.5).

    When every value is equal (no spread, e.g. KD = 0 for all cases at cold start because the current encoder
    is still the pre-trained one) the scores carry no ranking information and every case gets 1; 1 rather than
    0 keeps a product with another score neutral.

    Args:
        values: ``[N]`` finite scores.

    Returns:
        ``float64`` ``[N]`` in ``[0, 1]``.
    """
    array = np.asarray(values, dtype=np.float64)
    if not has_spread(array):
        return np.ones_like(array)
    low, high = float(array.min()), float(array.max())
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def has_spread(values: np.ndarray) -> bool:
    """Whether ``values`` ``[N]`` are not all equal (up to :data:`NO_SPREAD_RTOL` of their magnitude)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return False
    low, high = float(array.min()), float(array.max())
    return high - low > NO_SPREAD_RTOL * max(1.0, abs(high), abs(low))


def unit_rows(
    vectors: Sequence[np.ndarray], names: Optional[Sequence[str]] = None, what: str = "embedding"
) -> np.ndarray:
    """Stack ``[D]`` vectors into ``[N, D]`` rows of unit length (for cosine geometry).

    Raises:
        ValueError: vectors of different lengths, or a zero vector (its direction, hence its cosine distance, is
            undefined).
    """
    rows = [np.asarray(vector, dtype=np.float64) for vector in vectors]
    if not rows:
        return np.zeros((0, 0), dtype=np.float64)
    lengths = {row.shape for row in rows}
    if len(lengths) != 1 or rows[0].ndim != 1:
        raise ValueError(f"every {what} must be a vector of the same length; got shapes {sorted(lengths)}.")
    matrix = np.stack(rows)
    norms = np.linalg.norm(matrix, axis=1)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        labels = [names[i] for i in zero] if names is not None else [str(i) for i in zero]
        raise ValueError(
            f"{what} of {', '.join(labels)} is all zeros, so its cosine distance is undefined; check the encoder "
            "features of these cases."
        )
    return matrix / norms[:, None]


def cosine_distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - cos`` between the unit rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``: ``[N, M]`` in ``[0, 2]``."""
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)


def initial_min_distance(pool: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """Distance of every pool row to its nearest labeled row; ``+inf`` where there is no labeled row."""
    if labeled.shape[0] == 0:
        return np.full(pool.shape[0], np.inf)
    return cosine_distance_matrix(pool, labeled).min(axis=1)


def diversity(min_distance: np.ndarray) -> np.ndarray:
    """``Div_i = min_{j in L u Q} (1 - cos)``, and 1 while ``L u Q`` is empty (method-spec.md §1.4c)."""
    return np.where(np.isinf(min_distance), 1.0, min_distance)


def dkd_along_order(order: Sequence[int], kd_tilde: np.ndarray, pool: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """``DKD_i = KD~_i * Div_i(L u {cases ranked before i})`` for every case of ``order``.

    Args:
        order: pool indices in rank order.
        kd_tilde: ``[N]`` normalised knowledge divergence.
        pool: ``[N, D]`` unit embeddings of the pool (in the diversity space).
        labeled: ``[M, D]`` unit embeddings of the labeled cases (``M`` may be 0).

    Returns:
        ``[N]`` DKD indexed like the pool (not like ``order``).
    """
    min_distance = initial_min_distance(pool, labeled)
    dkd = np.zeros(pool.shape[0], dtype=np.float64)
    for index in order:
        dkd[index] = kd_tilde[index] * diversity(min_distance[index : index + 1])[0]
        min_distance = np.minimum(min_distance, cosine_distance_matrix(pool, pool[index : index + 1])[:, 0])
    return dkd
