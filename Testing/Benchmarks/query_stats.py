"""Paired statistics of the query benchmark (issue 15 item 1): gaps between two strategies with their uncertainty.

A strategy's runs at one budget are ``(query seed, training seed)`` pairs, each with a Dice per target-test case.
Two sources of noise separate two strategies' means: which test cases were drawn (the same cases for every arm,
so differences are paired per case) and which volumes a random query happened to draw (the query seeds). The
helpers here report both:

* :func:`draw_matrix`: per-case Dice averaged over training seeds, one row per query seed ``[S, N]``;
* :func:`paired_gap`: the mean paired gap, its t-interval over the test cases, a Wilcoxon signed-rank p over the
  test cases, a two-level bootstrap interval that also resamples the query seeds, and the *noise floor*: the
  standard deviation between the reference's query seeds (what a different random draw changes);
* :func:`aubc_runs`: the area under the Dice-versus-budget curve of every ``(query seed, training seed)``, whose
  spread is the AUBC's.

Written here rather than taken from a library: MONAI and scipy give the pieces (``scipy.stats.wilcoxon``, the t
quantile), not the two-level (cases x draws) resampling of a paired benchmark gap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Bootstrap resamples of :func:`paired_gap`; its seed is fixed so that a re-rendered report prints the same.
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0


def case_dice(run: Mapping[str, Any], cases: Sequence[str]) -> np.ndarray:
    """Mean foreground Dice of each case in ``cases`` ``[N]`` from a run's ``per_case`` (``{case: [Dice per
    class]}``); classes that were not scored (NaN) are left out of a case's mean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN case is NaN, on purpose
        return np.array([np.nanmean(np.asarray(run["per_case"][c], dtype=np.float64)) for c in cases])


def draw_matrix(runs: Sequence[Mapping[str, Any]], cases: Sequence[str]) -> np.ndarray:
    """Per-case Dice ``[S, N]``: one row per query seed (sorted), each the mean over that seed's training seeds."""
    by_seed: Dict[int, List[np.ndarray]] = {}
    for run in runs:
        by_seed.setdefault(int(run.get("query_seed", 0)), []).append(case_dice(run, cases))
    return np.stack([np.mean(by_seed[s], axis=0) for s in sorted(by_seed)])


@dataclass(frozen=True)
class PairedGap:
    """Strategy A minus reference R at one budget, paired over the same test cases.

    Attributes:
        gap: mean over test cases of (A's per-case Dice - R's), each averaged over its runs.
        case_half_width: half-width of the 95 % t-interval over the test cases (test-case sampling only).
        p_wilcoxon: two-sided Wilcoxon signed-rank p of the per-case differences (NaN when all are 0).
        low, high: 95 % two-level bootstrap interval: test cases and the query seeds of both strategies resampled
            together (covers the test-case sampling *and* the draw-to-draw noise).
        noise_floor: standard deviation of R's mean Dice between its query seeds (NaN with one seed): how much a
            different random draw moves the reference on its own.
        cases: number of test cases; draws: ``(query seeds of A, query seeds of R)``.
    """

    gap: float
    case_half_width: float
    p_wilcoxon: float
    low: float
    high: float
    noise_floor: float
    cases: int
    draws: Tuple[int, int]

    @property
    def excludes_zero(self) -> bool:
        """The bootstrap interval lies wholly above or below 0."""
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> Dict[str, Any]:
        return {"gap": self.gap, "case_half_width": self.case_half_width, "p_wilcoxon": self.p_wilcoxon,
                "low": self.low, "high": self.high, "noise_floor": self.noise_floor, "cases": self.cases,
                "draws": list(self.draws), "excludes_zero": self.excludes_zero}


def paired_gap(arm: np.ndarray, reference: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
               seed: int = BOOTSTRAP_SEED) -> PairedGap:
    """The gap of ``arm`` over ``reference``.

    Args:
        arm, reference: per-case Dice ``[S, N]`` (:func:`draw_matrix`), the same N cases in the same order; S may
            differ (a deterministic query has one row, random has one per seed).
        resamples: bootstrap resamples.
        seed: the bootstrap's seed.

    Cases whose Dice is NaN in either matrix are dropped.
    """
    from scipy import stats

    arm = np.atleast_2d(np.asarray(arm, dtype=np.float64))
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if arm.shape[1] != reference.shape[1]:
        raise ValueError(f"the two strategies were scored on different cases: {arm.shape} vs {reference.shape}")
    keep = ~(np.isnan(arm).any(axis=0) | np.isnan(reference).any(axis=0))
    arm, reference = arm[:, keep], reference[:, keep]
    n = arm.shape[1]
    diff = np.round(arm.mean(axis=0) - reference.mean(axis=0), 12)  # float noise of the means is no difference
    gap = float(diff.mean())
    half = float(stats.t.ppf(0.975, n - 1) * diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    p = float(stats.wilcoxon(diff).pvalue) if n > 1 and np.any(diff != 0) else float("nan")
    rng = np.random.default_rng(seed)
    case_idx = rng.integers(0, n, size=(resamples, n))
    arm_idx = rng.integers(0, arm.shape[0], size=(resamples, arm.shape[0]))
    ref_idx = rng.integers(0, reference.shape[0], size=(resamples, reference.shape[0]))
    arm_case_means = arm[arm_idx].mean(axis=1)  # [resamples, N]: the arm's per-case mean over resampled draws
    ref_case_means = reference[ref_idx].mean(axis=1)
    rows = np.arange(resamples)[:, None]
    boot = (arm_case_means[rows, case_idx] - ref_case_means[rows, case_idx]).mean(axis=1)
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    draw_means = reference.mean(axis=1)
    floor = float(draw_means.std(ddof=1)) if draw_means.size > 1 else float("nan")
    return PairedGap(gap=gap, case_half_width=half, p_wilcoxon=p, low=low, high=high, noise_floor=floor, cases=n,
                     draws=(arm.shape[0], reference.shape[0]))


def aubc_runs(runs_by_budget: Mapping[int, Sequence[Mapping[str, Any]]], aubc) -> List[float]:
    """AUBC of every ``(query seed, training seed)`` present at all budgets, with ``aubc(budgets, values)``."""
    budgets = sorted(runs_by_budget)
    keyed = [{(int(r.get("query_seed", 0)), int(r.get("train_seed", 0))): float(r["mean_dice"])
              for r in runs_by_budget[b]} for b in budgets]
    common = sorted(set.intersection(*(set(k) for k in keyed))) if keyed else []
    return [aubc(budgets, [k[pair] for k in keyed]) for pair in common]


def spread(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation, ``None`` for fewer than 2 values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
