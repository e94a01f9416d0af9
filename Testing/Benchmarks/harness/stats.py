"""The benchmark's statistics, in one module: paired gaps with intervals, the random-subset distribution, headroom.

Two layouts of the same numbers:

* one pool (the issue-15 reports of ``annotation_efficiency.py``): a strategy's runs at one budget are ``(query
  seed, training seed)`` pairs, each with a Dice per target-test case. :func:`draw_matrix` gives per-case Dice
  ``[S, N]`` (one row per query seed), :func:`paired_gap` the mean paired gap with a t-interval over the cases, a
  Wilcoxon p over the cases, a two-level (cases x draws) bootstrap interval and the *noise floor* (sd of the
  reference's draw means); :func:`aubc_runs` the area under the Dice-versus-budget curve per run;
* replicated pools (the harness, issue 23): per pool ``p`` a strategy has ``[S_p, N]`` per-case Dice (its draws:
  one row for a deterministic query, 30 for random), on the **same** N evaluation cases in every pool.
  :func:`clustered_gap` resamples pools, each strategy's draws within a pool, and the evaluation cases by cluster
  (ACDC: by patient, both frames together), the case resample shared by every pool because the cases are;
  :func:`percentile_in_random` places a strategy in the distribution of random subsets; :func:`oracle_headroom`
  is what the best (and the 90th-percentile) random subset gains over random's mean; :func:`headroom_captured`
  the share of it a strategy gets; :func:`wilcoxon_over_pools` is the signed-rank test over the per-pool gaps
  (meaningful from 5 pools: it then carries the draw noise, unlike a test over cases against random's mean).

Written here rather than taken from a library: scipy gives the pieces (``scipy.stats.wilcoxon``, the t quantile),
not the crossed (pools x draws x clustered cases) resampling of a benchmark gap.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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
        return {
            "gap": self.gap,
            "case_half_width": self.case_half_width,
            "p_wilcoxon": self.p_wilcoxon,
            "low": self.low,
            "high": self.high,
            "noise_floor": self.noise_floor,
            "cases": self.cases,
            "draws": list(self.draws),
            "excludes_zero": self.excludes_zero,
        }


def paired_gap(
    arm: np.ndarray, reference: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> PairedGap:
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
    return PairedGap(
        gap=gap,
        case_half_width=half,
        p_wilcoxon=p,
        low=low,
        high=high,
        noise_floor=floor,
        cases=n,
        draws=(arm.shape[0], reference.shape[0]),
    )


def aubc_runs(runs_by_budget: Mapping[int, Sequence[Mapping[str, Any]]], aubc) -> List[float]:
    """AUBC of every ``(query seed, training seed)`` present at all budgets, with ``aubc(budgets, values)``."""
    budgets = sorted(runs_by_budget)
    keyed = [
        {(int(r.get("query_seed", 0)), int(r.get("train_seed", 0))): float(r["mean_dice"]) for r in runs_by_budget[b]}
        for b in budgets
    ]
    common = sorted(set.intersection(*(set(k) for k in keyed))) if keyed else []
    return [aubc(budgets, [k[pair] for k in keyed]) for pair in common]


def spread(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation, ``None`` for fewer than 2 values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def aubc(budgets: Sequence[int], values: Sequence[float]) -> float:
    """Normalised area under the Dice-versus-budget curve on a log2 budget axis (each doubling weighs the same).

    Equals the mean Dice when the curve is flat; a single budget gives its own value.
    """
    if len(budgets) == 1:
        return float(values[0])
    x = np.log2(np.asarray(budgets, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0) / (x[-1] - x[0]))


# ---------------------------------------------------------------------------------------- replicated pools

#: Per pool, per-case Dice ``[S_p, N]`` of one strategy (S_p draws; the same N evaluation cases in every pool).
PoolMatrices = Sequence[np.ndarray]


@dataclass(frozen=True)
class ClusteredGap:
    """Strategy A minus reference R over replicated pools, paired per pool and per evaluation case.

    Attributes:
        gap: mean over pools of (mean over cases of A's per-case Dice - R's), each averaged over its draws.
        low, high: 95 % percentile interval of a bootstrap that resamples the pools, each strategy's draws within
            a pool, and the evaluation cases by cluster (one resample of the cases shared by all pools).
        pools: number of pools; cases: evaluation cases; clusters: distinct clusters among them.
        per_pool: the gap in each pool.
        p_wilcoxon: two-sided Wilcoxon signed-rank p over ``per_pool`` (NaN below :data:`MIN_POOLS_FOR_WILCOXON`
            pools or when every pool gap is 0).
    """

    gap: float
    low: float
    high: float
    pools: int
    cases: int
    clusters: int
    per_pool: Tuple[float, ...]
    p_wilcoxon: float

    def to_dict(self) -> Dict[str, Any]:
        return {
            "gap": self.gap,
            "ci_low": self.low,
            "ci_high": self.high,
            "pools": self.pools,
            "cases": self.cases,
            "clusters": self.clusters,
            "per_pool": list(self.per_pool),
            "p_wilcoxon": None if math.isnan(self.p_wilcoxon) else self.p_wilcoxon,
        }


#: Below this many pools a signed-rank test over pools cannot reach p < 0.05 (n = 5 gives at best 0.0625).
MIN_POOLS_FOR_WILCOXON = 5


def _matrices(values: PoolMatrices, name: str) -> List[np.ndarray]:
    out = [np.atleast_2d(np.asarray(m, dtype=np.float64)) for m in values]
    if not out:
        raise ValueError(f"{name}: no pool")
    widths = {m.shape[1] for m in out}
    if len(widths) != 1:
        raise ValueError(
            f"{name}: the pools were scored on different numbers of cases {sorted(widths)}; every "
            "pool of a setting must be evaluated on the same cases"
        )
    return out


def clustered_gap(
    arm: PoolMatrices,
    reference: PoolMatrices,
    clusters: Optional[Sequence[str]] = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> ClusteredGap:
    """The gap of ``arm`` over ``reference`` with an interval over pools, draws and clustered evaluation cases.

    Args:
        arm, reference: per pool, per-case Dice ``[S_p, N]`` (same pools in the same order; draw counts may differ
            between the two and between pools).
        clusters: the cluster of each of the N cases (ACDC: the patient); ``None`` = every case its own cluster.
        resamples: bootstrap resamples.
        seed: the bootstrap's seed (fixed, so a re-rendered report prints the same).

    Cases whose Dice is NaN anywhere are dropped (with their cluster's other cases kept).
    """
    from scipy import stats

    arm_m, ref_m = _matrices(arm, "arm"), _matrices(reference, "reference")
    if len(arm_m) != len(ref_m):
        raise ValueError(f"the arm has {len(arm_m)} pools and the reference {len(ref_m)}; pair them pool by pool")
    n = arm_m[0].shape[1]
    if ref_m[0].shape[1] != n:
        raise ValueError(f"the two strategies were scored on different cases: {n} vs {ref_m[0].shape[1]}")
    labels = list(range(n)) if clusters is None else list(clusters)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} cluster names for {n} cases")
    keep = np.ones(n, dtype=bool)
    for m in arm_m + ref_m:
        keep &= ~np.isnan(m).any(axis=0)
    arm_m, ref_m = [m[:, keep] for m in arm_m], [m[:, keep] for m in ref_m]
    labels = [c for c, k in zip(labels, keep) if k]
    names = sorted(set(labels), key=str)
    index = {c: i for i, c in enumerate(names)}
    member = np.array([index[c] for c in labels])
    # per pool: per-case gap of the draw means, and the cluster sums (for a fast clustered resample)
    diffs = np.stack([a.mean(axis=0) - r.mean(axis=0) for a, r in zip(arm_m, ref_m)])  # [P, N]
    per_pool = np.round(diffs.mean(axis=1), 12)
    gap = float(per_pool.mean())
    p = float("nan")
    if len(per_pool) >= MIN_POOLS_FOR_WILCOXON and np.any(per_pool != 0):
        p = float(stats.wilcoxon(per_pool).pvalue)
    rng = np.random.default_rng(seed)
    k, pools = len(names), len(arm_m)
    boot = np.empty(resamples)
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, k, size=k), minlength=k)[member].astype(np.float64)  # [N]
        chosen = rng.integers(0, pools, size=pools)
        total = 0.0
        for q in chosen:
            a, r = arm_m[q], ref_m[q]
            a_mean = a[rng.integers(0, a.shape[0], size=a.shape[0])].mean(axis=0)
            r_mean = r[rng.integers(0, r.shape[0], size=r.shape[0])].mean(axis=0)
            total += float(np.dot(weights, a_mean - r_mean) / weights.sum())
        boot[b] = total / pools
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return ClusteredGap(
        gap=gap,
        low=low,
        high=high,
        pools=pools,
        cases=int(keep.sum()),
        clusters=k,
        per_pool=tuple(float(x) for x in per_pool),
        p_wilcoxon=p,
    )


@dataclass(frozen=True)
class SetPairedGap:
    """A recipe minus the default on the *same* labelled sets (issue 25: a recipe chosen on paired sets).

    Attributes:
        gap: mean over labelled sets of (mean over cases of the recipe's per-case Dice - the default's).
        low, high: 95 % percentile interval of a bootstrap that resamples the labelled sets and, with one shared
            resample, the evaluation cases by cluster (ACDC: by patient).
        sets: labelled sets; cases: evaluation cases kept; clusters: distinct clusters among them.
        per_set: the gap on each labelled set.
    """

    gap: float
    low: float
    high: float
    sets: int
    cases: int
    clusters: int
    per_set: Tuple[float, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "gap": self.gap,
            "ci_low": self.low,
            "ci_high": self.high,
            "sets": self.sets,
            "cases": self.cases,
            "clusters": self.clusters,
            "per_set": list(self.per_set),
        }


def set_paired_gap(
    arm: np.ndarray,
    reference: np.ndarray,
    clusters: Optional[Sequence[str]] = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> SetPairedGap:
    """The gap of ``arm`` over ``reference`` when row ``s`` of both was trained on the same labelled set.

    Unlike :func:`clustered_gap` (whose strategies' draws are independent), the pairing by set is kept: the
    bootstrap draws a set and takes both rows, so the set-to-set spread that both share cancels.

    Args:
        arm, reference: per-case Dice ``[S, N]``, row ``s`` of both on labelled set ``s``.
        clusters: the cluster of each of the N cases; ``None`` = every case its own cluster.
        resamples, seed: the bootstrap's.

    Cases whose Dice is NaN anywhere are dropped.
    """
    a = np.atleast_2d(np.asarray(arm, dtype=np.float64))
    r = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    if a.shape != r.shape:
        raise ValueError(f"paired by labelled set, the two need the same shape: {a.shape} vs {r.shape}")
    labels = list(range(a.shape[1])) if clusters is None else list(clusters)
    if len(labels) != a.shape[1]:
        raise ValueError(f"{len(labels)} cluster names for {a.shape[1]} cases")
    keep = ~(np.isnan(a).any(axis=0) | np.isnan(r).any(axis=0))
    diff = np.round(a[:, keep] - r[:, keep], 12)  # [S, N']
    labels = [c for c, k in zip(labels, keep) if k]
    names = sorted(set(labels), key=str)
    member = np.array([names.index(c) for c in labels])
    per_set = diff.mean(axis=1)
    rng = np.random.default_rng(seed)
    sets, k = diff.shape[0], len(names)
    boot = np.empty(resamples)
    for b in range(resamples):
        weights = np.bincount(rng.integers(0, k, size=k), minlength=k)[member].astype(np.float64)
        rows = diff[rng.integers(0, sets, size=sets)]
        boot[b] = float(np.dot(rows.mean(axis=0), weights) / weights.sum())
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return SetPairedGap(
        gap=float(per_set.mean()),
        low=low,
        high=high,
        sets=sets,
        cases=int(keep.sum()),
        clusters=k,
        per_set=tuple(float(x) for x in per_set),
    )


def wilcoxon_over_pools(per_pool_gaps: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of per-pool gaps; NaN below :data:`MIN_POOLS_FOR_WILCOXON` pools or when
    every gap is 0 (no test is meaningful there)."""
    from scipy import stats

    gaps = np.asarray(per_pool_gaps, dtype=np.float64)
    if gaps.size < MIN_POOLS_FOR_WILCOXON or not np.any(gaps != 0):
        return float("nan")
    return float(stats.wilcoxon(gaps).pvalue)


def percentile_in_random(value: float, random_values: Sequence[float]) -> float:
    """Where ``value`` falls in the distribution of random subsets, in percent: the share of random subsets below
    it, ties counted half (the mid-rank percentile). 50 = random's median, 100 = above every random subset.

    Raises:
        ValueError: no random subset.
    """
    values = np.asarray(random_values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no random subset to compare with")
    return float(100.0 * ((values < value).sum() + 0.5 * (values == value).sum()) / values.size)


@dataclass(frozen=True)
class Headroom:
    """What choosing could gain over random in one pool: best and 90th-percentile random subset minus the mean.

    Attributes:
        mean: random's mean Dice over its subsets; best: the best subset; p90: the 90th percentile.
        best_gain, p90_gain: ``best - mean`` and ``p90 - mean`` (>= 0).
        subsets: how many random subsets were measured (the best of more subsets is higher: report it).
    """

    mean: float
    best: float
    p90: float
    subsets: int

    @property
    def best_gain(self) -> float:
        return self.best - self.mean

    @property
    def p90_gain(self) -> float:
        return self.p90 - self.mean

    def to_dict(self) -> Dict[str, Any]:
        return {
            "mean": self.mean,
            "best": self.best,
            "p90": self.p90,
            "best_gain": self.best_gain,
            "p90_gain": self.p90_gain,
            "subsets": self.subsets,
        }


def oracle_headroom(random_values: Sequence[float]) -> Headroom:
    """The oracle-subset headroom of one pool from the mean Dice of each random subset.

    Raises:
        ValueError: no random subset.
    """
    values = np.asarray(random_values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no random subset: the headroom needs the random-subset distribution")
    return Headroom(
        mean=float(values.mean()),
        best=float(values.max()),
        p90=float(np.percentile(values, 90)),
        subsets=int(values.size),
    )


def headroom_captured(value: float, headroom: Headroom) -> float:
    """The share of the oracle-subset headroom a strategy captures: ``(value - mean) / (best - mean)``.

    1 = as good as the best random subset, 0 = random's mean, negative = below it; NaN when every random subset
    scored the same (no headroom to capture).
    """
    span = headroom.best_gain
    if span <= 0:
        return float("nan")
    return float((value - headroom.mean) / span)


def pooled_percentile(values: Sequence[float], random_by_pool: Sequence[Sequence[float]]) -> float:
    """Mean over pools of :func:`percentile_in_random` (a strategy's value in pool p against that pool's random
    subsets)."""
    if len(values) != len(random_by_pool):
        raise ValueError(f"{len(values)} values for {len(random_by_pool)} pools")
    return float(np.mean([percentile_in_random(v, r) for v, r in zip(values, random_by_pool)]))


# ----------------------------------------------------------------------------- effort to reach a Dice (issue 27)


def effort_to_reach(efforts: Sequence[float], values: Sequence[float], target: float) -> Tuple[float, bool]:
    """The effort at which a Dice-versus-effort curve first reaches ``target``.

    Args:
        efforts: increasing efforts of the curve's points (the first is usually 0: no adaptation).
        values: mean Dice at each point.
        target: the Dice to reach.

    Returns:
        ``(effort, True)`` with the effort linearly interpolated between the last point below ``target`` and the
        first at or above it (the first point's effort when it is already there); ``(last effort, False)`` when
        the curve never reaches ``target`` (the effort needed is above the last one measured).

    Raises:
        ValueError: no point, lengths differ, or efforts that decrease.
    """
    e, v = np.asarray(efforts, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if e.size == 0 or e.shape != v.shape:
        raise ValueError(f"a curve needs points with one value each, got {e.size} efforts and {v.size} values")
    if np.any(np.diff(e) < 0):
        raise ValueError(f"efforts must not decrease along the curve, got {e.tolist()}")
    for i in range(e.size):
        if v[i] >= target:
            if i == 0 or v[i] == v[i - 1]:
                return float(e[i]), True
            share = (target - v[i - 1]) / (v[i] - v[i - 1])
            return float(e[i - 1] + share * (e[i] - e[i - 1])), True
    return float(e[-1]), False


@dataclass(frozen=True)
class EffortRatio:
    """Effort of an arm to reach a Dice over the effort of a reference to reach it (lower = cheaper).

    Attributes:
        value: the ratio on the pools' mean curves; NaN when neither curve reaches the target or the reference
            needs no effort.
        low, high: 95 % percentile interval of a bootstrap over pools (each resample's curves are the means of its
            pools; a censored resample counts at its bound).
        bound: ``"exact"`` (both reach the target), ``"upper"`` (only the arm does: the true ratio is at most
            ``value``, the reference's effort being above its last point), ``"lower"`` (only the reference does),
            ``None`` (neither).
        arm_effort, reference_effort: the efforts on the mean curves (the last point's when not reached).
        target: the Dice to reach (mean over pools).
    """

    value: float
    low: float
    high: float
    bound: Optional[str]
    arm_effort: float
    reference_effort: float
    target: float

    def to_dict(self) -> Dict[str, Any]:
        clean = lambda x: None if x is None or math.isnan(x) else float(x)  # noqa: E731
        return {
            "ratio": clean(self.value),
            "ci_low": clean(self.low),
            "ci_high": clean(self.high),
            "bound": self.bound,
            "arm_effort": clean(self.arm_effort),
            "reference_effort": clean(self.reference_effort),
            "target": clean(self.target),
        }


def _ratio(arm: Tuple[np.ndarray, np.ndarray], ref: Tuple[np.ndarray, np.ndarray], target: float):
    ea, reached_a = effort_to_reach(arm[0], arm[1], target)
    er, reached_r = effort_to_reach(ref[0], ref[1], target)
    bound = "exact" if reached_a and reached_r else "upper" if reached_a else "lower" if reached_r else None
    value = ea / er if bound is not None and er > 0 else float("nan")
    return value, bound, ea, er


def effort_ratio(
    arm_efforts: np.ndarray,
    arm_values: np.ndarray,
    ref_efforts: np.ndarray,
    ref_values: np.ndarray,
    targets: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> EffortRatio:
    """The effort ratio of an arm to a reference to reach each pool's target, with a bootstrap over pools.

    Args:
        arm_efforts, arm_values: ``[P, K]`` the arm's curve per pool (K points, the same budgets in every pool;
            efforts increasing along K).
        ref_efforts, ref_values: ``[P, L]`` the reference's.
        targets: ``[P]`` the Dice to reach per pool (e.g. 95 % of the pool's converged ceiling).
        resamples, seed: the bootstrap's.

    Raises:
        ValueError: the arrays do not share the pool count, or a curve's arrays differ in shape.
    """
    a_e, a_v = np.atleast_2d(np.asarray(arm_efforts, float)), np.atleast_2d(np.asarray(arm_values, float))
    r_e, r_v = np.atleast_2d(np.asarray(ref_efforts, float)), np.atleast_2d(np.asarray(ref_values, float))
    t = np.asarray(targets, dtype=np.float64)
    if a_e.shape != a_v.shape or r_e.shape != r_v.shape or not a_e.shape[0] == r_e.shape[0] == t.size:
        raise ValueError(
            f"curves per pool must match: arm {a_e.shape}/{a_v.shape}, reference {r_e.shape}/{r_v.shape}, "
            f"{t.size} targets"
        )

    def on(rows: np.ndarray):
        return _ratio(
            (a_e[rows].mean(axis=0), a_v[rows].mean(axis=0)),
            (r_e[rows].mean(axis=0), r_v[rows].mean(axis=0)),
            float(t[rows].mean()),
        )

    pools = t.size
    value, bound, ea, er = on(np.arange(pools))
    rng = np.random.default_rng(seed)
    boot = np.array([on(rng.integers(0, pools, size=pools))[0] for _ in range(resamples)])
    boot = boot[~np.isnan(boot)]
    low, high = (float(x) for x in np.percentile(boot, [2.5, 97.5])) if boot.size else (float("nan"),) * 2
    return EffortRatio(float(value), low, high, bound, float(ea), float(er), float(t.mean()))


def labelled_set(record: Mapping[str, Any]) -> Tuple[str, ...]:
    """The labelled volumes a record trained on, sorted: what identifies its labelled set (the draw alone does not:
    pool replicates that share volumes can draw the same set, and the query's seed changed once,
    :func:`.work.query_seed`)."""
    return tuple(sorted(record.get("labelled") or []))


def distinct_labelled_sets(records: Iterable[Mapping[str, Any]]) -> int:
    """How many different labelled sets ``records`` trained on. Pool replicates that share volumes (ACDC-Path's
    share 10-14 of 16) can draw the same set with the same draw seed, and such a set counts once here."""
    return len({labelled_set(r) for r in records})
