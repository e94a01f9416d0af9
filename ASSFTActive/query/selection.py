"""Rank a pool of unlabeled cases: ASSFT's greedy DKD + ASD query and the baselines it is compared with.

Every strategy returns a *full* ordering of the candidates (rank 1 .. N, the first ``budget`` selected), built in
pick order: the table is never re-sorted after the picks, so the selected cases are always the top ranks.
Ties go to the case listed first in ``evidence``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import rankdata

from .config import Combine, Coverage, DivSpace, KDDirection, QueryConfig, Sampling, Strategy
from .coverage import probcover_order, typiclust_order
from .diversity import (
    cosine_distance_matrix,
    diversity,
    dkd_along_order,
    has_spread,
    initial_min_distance,
    minmax_normalise,
    unit_rows,
)
from .records import CaseEvidence, RankedCase, Ranking

__all__ = ["COLD_START_ASD_REASON", "clasp_beta", "cold_start", "fg_random_eligible", "resolved_strategy", "select"]

#: Floor of ClaSP PE scores (and of power-sampled scores) before the logarithm (a class absent scores 0).
CLASP_LOG_FLOOR = 1e-12

#: ``Ranking.asd_unavailable`` (and ``ranking.json``'s ``asd_unavailable``) of a pool ranked at cold start.
COLD_START_ASD_REASON = (
    "ASD needs a prediction, and the model has no trained segmentation head yet (encoder-only "
    "weights): ranked by DKD's diversity alone; Adapt trains the head, and rankings with the "
    "adapted model use both scores"
)

Order = Tuple[List[int], np.ndarray]  # pool indices in rank order, and each case's score indexed like the pool

#: Strategies whose picks can be sampled from a noised score (``QueryConfig.sampling = "power"``).
SAMPLED_STRATEGIES = (
    Strategy.ASSFT,
    Strategy.DKD_ONLY,
    Strategy.ASD_ONLY,
    Strategy.MEAN_ENTROPY,
    Strategy.MC_DROPOUT,
    Strategy.BALD,
    Strategy.BUDGET_AWARE,
)


def select(
    evidence: Sequence[CaseEvidence],
    budget: int,
    config: QueryConfig,
    labeled_embeddings: Sequence[np.ndarray] = (),
    labeled_current_embeddings: Sequence[np.ndarray] = (),
    round_index: int = 0,
    total_rounds: int = 1,
) -> Ranking:
    """Order the whole pool with ``config.strategy`` and select the first ``budget`` cases.

    Strategies (``RankedCase.score`` in brackets; higher = picked earlier):

    * ``assft``: greedy query of method-spec.md §1.4c and §1.6. ``KD~`` = min-max normalised KD over the pool,
      or 1 for every case when all KD are equal (cold start: identical encoders, so DKD reduces to diversity);
      ``Div_i(Q)`` = smallest cosine distance, in the ``config.div_space`` embedding, to the labeled cases and
      the cases already picked (1 while both are empty); ``DKD_i(Q) = KD~_i * Div_i(Q)``, recomputed after every
      pick; ``ASD~`` = min-max normalised ASD. ``config.combine``: ``weighted_sum`` picks the largest
      ``lambda * DKD + (1 - lambda) * ASD~`` [that value]; ``product`` the largest ``DKD * ASD~`` [that value];
      ``rank_mean`` the smallest ``lambda * rank(DKD) + (1 - lambda) * rank(ASD~)`` among the remaining cases
      (average ranks for ties, 1 = best; lambda = 0.5 is the plain mean) [``(n - r) / (n - 1)`` for that mean
      rank r among n remaining, 1 = best]; ``two_stage`` orders the pool by greedy DKD alone, keeps the first
      ``k * budget`` (``k = config.two_stage_factor``), puts them first ordered by ``ASD~`` [``ASD~``] and lets
      the rest follow in DKD order [DKD at its greedy pick]. The greedy continues past the budget so every case
      gets a rank. With ``normalise_scores=False`` raw KD and ASD are used (KD still becomes 1 when it has no
      spread, for the cold start).
      At cold start (:func:`cold_start`: no case has a prediction, the card holds encoder weights only) ``assft``
      ranks as ``dkd_only`` and the ranking's ``asd_unavailable`` says why (:data:`COLD_START_ASD_REASON`).
    * ``dkd_only`` / ``asd_only``: the ablations lambda = 1 / lambda = 0 of ``weighted_sum`` (``combine`` is
      ignored). ``dkd_only`` needs no probabilities: it is the cold-start query.
    * ``random``: uniform order from ``numpy.random.default_rng(config.seed)`` [the uniform key].
    * ``mean_entropy``: descending whole-volume mean entropy [mean entropy].
    * ``coreset``: k-centre greedy on ``pretrained_embedding`` with cosine distance, starting from
      ``labeled_embeddings``; without labeled cases the first pick is the case farthest from the pool's mean
      direction (mean of the unit embeddings) [distance to the nearest labeled or picked case, or to the mean
      direction for that first pick].
    * ``clasp_pe``: volume-level ClaSP PE (method-spec.md §3.2, §3.4), see :func:`clasp_beta` for the noise
      schedule [the noised log-score the case was picked by].
    * ``mc_dropout``: descending MC-dropout epistemic score [epistemic score].
    * ``bald``: descending BALD mutual information (:func:`~.scores.bald_mutual_information`) [that value].
    * ``fg_random``: foreground-size-aware random (:func:`fg_random_eligible`): the eligible cases (predicted
      foreground non-empty and at least ``config.fg_random_min_share`` times the pool's median) in the uniform
      order of ``random`` with the same seed, then the others by descending foreground size [``1 + u`` for an
      eligible case with uniform key ``u``, the foreground voxel count divided by the pool's largest (at most 1)
      for the others].

    * ``typiclust``: :func:`~.coverage.typiclust_order` in the pre-trained embedding [typicality within the
      case's cluster].
    * ``probcover``: :func:`~.coverage.probcover_order` in the pre-trained embedding, radius by
      ``config.probcover_purity`` [volumes newly covered by the pick].
    * ``budget_aware``: ``config.coverage`` (``typiclust`` or ``probcover``) when ``budget <=
      config.coverage_max_budget``, otherwise ``assft`` with the other settings (:func:`resolved_strategy`). Not the
      default: the switch is a hypothesis until the benchmark decides it on the development split.

    ``config.sampling = "power"`` replaces each top-k pick by a pick from the noised key (see
    :class:`~.config.QueryConfig`) for the strategies in :data:`SAMPLED_STRATEGIES` [the noised key]. The knowledge
    divergence enters DKD as ``KD~`` (``kd_direction="high"``) or ``1 - KD~`` (``"low"``), and only when ``budget
    >= kd_min_budget`` and ``round_index >= kd_min_round`` (else KD~ = 1: DKD is diversity alone).

    Out-of-distribution cases (``CaseEvidence.ood_reason`` not empty) are ranked after every other case, in the
    order listed, and never selected, unless ``config.propose_ood`` [NaN]. Every selected case gets a one-line
    ``RankedCase.reason``; a held-back case gets the reason it was held back.

    ``RankedCase.dkd`` is, for every strategy, ``KD~ * Div`` of the case given the labeled cases and all cases
    ranked before it (for ``assft`` the DKD at the moment it was picked); ``RankedCase.asd`` is the raw ASD.

    Args:
        evidence: one record per unlabeled candidate (unique ``case_id``).
        budget: number of cases to select, >= 0; a budget larger than the pool selects every case.
        config: query settings.
        labeled_embeddings: ``[D]`` pre-trained embeddings of the already labeled cases (diversity with
            ``div_space="pretrained"``, and coreset).
        labeled_current_embeddings: ``[D]`` current-encoder embeddings of the labeled cases (diversity with
            ``div_space="current"``).
        round_index: index t of this query round, ``0 <= t < total_rounds`` (ClaSP PE noise schedule).
        total_rounds: number of query rounds T of the experiment.

    Returns:
        the :class:`Ranking` of every candidate; empty when ``evidence`` is empty.

    Raises:
        ValueError: invalid budget or rounds, duplicate case ids, inconsistent embeddings, or evidence missing a
            score the strategy needs (e.g. no probabilities at cold start, no MC-dropout score).
    """
    cases = list(evidence)
    _check_arguments(cases, budget, round_index, total_rounds)
    budget, round_index, total_rounds = int(budget), int(round_index), int(total_rounds)
    labeled_embeddings, labeled_current_embeddings = list(labeled_embeddings), list(labeled_current_embeddings)
    strategy = resolved_strategy(config, budget)
    if config.sampling == Sampling.POWER and config.strategy not in SAMPLED_STRATEGIES:
        raise ValueError(
            f"sampling='power' noises a score that is otherwise taken top-k; strategy {config.strategy.value!r} "
            f"already draws or covers. Use sampling='top_k', or one of "
            f"{', '.join(s.value for s in SAMPLED_STRATEGIES)}."
        )
    if not cases:
        return Ranking(strategy=config.strategy.value, budget=budget, cases=())

    ids = [case.case_id for case in cases]
    space = config.div_space
    pool_vectors = [c.current_embedding if space == DivSpace.CURRENT else c.pretrained_embedding for c in cases]
    pool = unit_rows(pool_vectors, ids, f"{space.value} embedding")
    labeled = _labeled_rows(space, labeled_embeddings, labeled_current_embeddings, pool.shape[1])
    if strategy == Strategy.CORESET and not labeled_embeddings and labeled_current_embeddings:
        raise ValueError(
            "strategy 'coreset' works in the pre-trained embedding, but only labeled_current_embeddings were "
            "given; pass labeled_embeddings for the labeled cases."
        )

    held = [] if config.propose_ood else [i for i, c in enumerate(cases) if c.out_of_distribution]
    ranked = [i for i in range(len(cases)) if i not in set(held)]
    scores = np.full(len(cases), np.nan)
    reasons = [""] * len(cases)
    order: List[int] = []
    if ranked:
        sub = [cases[i] for i in ranked]
        sub_order, sub_scores, sub_reasons = _order(
            sub, pool[ranked], labeled, budget, config, strategy, labeled_embeddings, round_index, total_rounds
        )
        order = [ranked[j] for j in sub_order]
        scores[ranked] = sub_scores
        for j, text in enumerate(sub_reasons):
            reasons[ranked[j]] = text
    for i in held:
        order.append(i)
        reasons[i] = f"not proposed: {cases[i].ood_reason}"
    n_selected = min(budget, len(ranked))
    if config.propose_ood:
        for i in order[:n_selected]:
            if cases[i].out_of_distribution:
                reasons[i] += f" (flagged: {cases[i].ood_reason})"

    kd_tilde = _kd_tilde(cases, config, budget, round_index)
    dkd = dkd_along_order(order, kd_tilde, pool, labeled)
    rows = tuple(
        RankedCase(
            case_id=ids[index],
            dkd=float(dkd[index]),
            asd=cases[index].asd,
            score=float(scores[index]),
            rank=rank,
            selected=rank <= n_selected,
            reason=reasons[index] if (rank <= n_selected or index in held) else "",
        )
        for rank, index in enumerate(order, start=1)
    )
    return Ranking(
        strategy=config.strategy.value,
        budget=budget,
        cases=rows,
        asd_unavailable=COLD_START_ASD_REASON if cold_start(cases) else "",
    )


def resolved_strategy(config: QueryConfig, budget: int) -> Strategy:
    """The strategy that ranks a pool for ``budget`` proposals: ``config.strategy``, except that ``budget_aware``
    becomes ``config.coverage`` when ``budget <= config.coverage_max_budget`` and ``assft`` beyond."""
    if config.strategy != Strategy.BUDGET_AWARE:
        return config.strategy
    if budget <= config.coverage_max_budget:
        return Strategy.TYPICLUST if config.coverage == Coverage.TYPICLUST else Strategy.PROBCOVER
    return Strategy.ASSFT


def _order(
    cases: List[CaseEvidence],
    pool: np.ndarray,
    labeled: np.ndarray,
    budget: int,
    config: QueryConfig,
    strategy: Strategy,
    labeled_embeddings: Sequence[np.ndarray],
    round_index: int,
    total_rounds: int,
) -> Tuple[List[int], np.ndarray, List[str]]:
    """Order ``cases`` (all candidates) with ``strategy``: ``(order, scores, reason of each case)``."""
    noise = _noise(len(cases), config)
    reasons = [""] * len(cases)
    if strategy in (Strategy.ASSFT, Strategy.DKD_ONLY, Strategy.ASD_ONLY):
        kd_tilde = _kd_tilde(cases, config, budget, round_index)
        cold = strategy == Strategy.ASSFT and cold_start(cases)
        if cold:
            strategy = Strategy.DKD_ONLY  # the cold-start rule: no ASD yet, DKD's diversity alone
        if strategy == Strategy.DKD_ONLY:
            asd_tilde = np.zeros(len(cases))
        else:
            _require(cases, lambda c: c.has_probabilities, strategy, "probabilities (ASD)", _COLD_START_HINT)
            asd_tilde = _asd_tilde(cases, config)
        order, scores, asd_led = _assft_order(kd_tilde, asd_tilde, pool, labeled, budget, config, strategy, noise)
        kd_live = has_spread(np.array([c.knowledge_divergence for c in cases])) and bool(np.any(kd_tilde != 1.0))
        reasons = _assft_reasons(cases, order, asd_led, kd_live, config, budget)
        if cold:
            reasons = [r + "; ASD not computed (no trained segmentation head yet)" if r else r for r in reasons]
    elif strategy in (Strategy.TYPICLUST, Strategy.PROBCOVER):
        ids = [case.case_id for case in cases]
        embedded = unit_rows([c.pretrained_embedding for c in cases], ids, "pretrained embedding")
        anchors = _labeled_rows(DivSpace.PRETRAINED, labeled_embeddings, (), embedded.shape[1])
        if strategy == Strategy.TYPICLUST:
            result = typiclust_order(embedded, anchors, budget, config.seed)
        else:
            result = probcover_order(embedded, anchors, budget, config.probcover_purity, config.seed)
        order, scores = result.order, result.scores
        for index in order[:budget]:
            reasons[index] = _coverage_reason(strategy, int(result.group_sizes[index]))
    else:
        order, scores = _BASELINES[strategy](
            cases, budget, config, labeled_embeddings, round_index, total_rounds, noise
        )
        for index in order[:budget]:
            reasons[index] = _baseline_reason(strategy, cases[index], config, scores[index])
    if config.strategy == Strategy.BUDGET_AWARE:
        why = (
            f"coverage at budget {budget} <= {config.coverage_max_budget}"
            if budget <= config.coverage_max_budget
            else f"DKD + ASD at budget {budget} > {config.coverage_max_budget}"
        )
        for index in order[:budget]:
            reasons[index] += f" ({why})"
    if noise is not None:
        for index in order[:budget]:
            reasons[index] += f"; drawn from the noised score (beta {config.sampling_beta:g})"
    return order, scores, reasons


def cold_start(cases: Sequence[CaseEvidence]) -> bool:
    """The cold-start rule of the ``assft`` query: when no candidate has a prediction (every ASD is NaN: the model
    holds encoder weights only, its head not trained yet), the pool is ranked by DKD alone (``dkd_only``, lambda =
    1), and since the encoders are the same model at that point, KD~ is 1 and DKD is the diversity ``Div``. A pool
    where only some cases lack ASD is not cold start: ``assft`` refuses it (the evidence was built inconsistently).
    """
    return bool(cases) and not any(case.has_probabilities for case in cases)


def _noise(n: int, config: QueryConfig) -> Optional[np.ndarray]:
    """``[N]`` Gumbel(0, 1 / beta) draws, one per case, for ``sampling="power"``; None for top-k."""
    if config.sampling != Sampling.POWER:
        return None
    return np.random.default_rng(config.seed).gumbel(0.0, 1.0 / config.sampling_beta, size=n)


def _noised(values: np.ndarray, noise: Optional[np.ndarray]) -> np.ndarray:
    """The key picks are made by: ``values`` (top-k), or ``log(max(values, floor)) + noise``."""
    if noise is None:
        return values
    return np.log(np.maximum(values, CLASP_LOG_FLOOR)) + noise


def _ordinal(value: float, values: np.ndarray) -> str:
    """ "#k of N": the place of ``value`` among ``values`` sorted from the highest."""
    finite = values[np.isfinite(values)]
    return f"#{int(np.sum(finite > value)) + 1} of {finite.size}"


def _coverage_reason(strategy: Strategy, group: int) -> str:
    if strategy == Strategy.TYPICLUST:
        return f"most typical of a group of {group} similar volume{'s' if group != 1 else ''}"
    if group > 0:
        return f"covers a group of {group} similar volume{'s' if group != 1 else ''} not yet covered"
    return "densest volume left once every group is covered"


def _assft_reasons(
    cases: List[CaseEvidence], order: List[int], asd_led: np.ndarray, kd_live: bool, config: QueryConfig, budget: int
) -> List[str]:
    asd = np.array([c.asd for c in cases], dtype=np.float64)
    reasons = [""] * len(cases)
    for index in order[:budget]:
        if asd_led[index]:
            reasons[index] = f"most uncertain anatomy (ASD {asd[index]:.2f}, {_ordinal(asd[index], asd)})"
        elif kd_live and config.kd_direction == KDDirection.LOW:
            reasons[index] = "unlike the volumes already chosen, and the adapted encoder moved little on it"
        elif kd_live:
            reasons[index] = "unlike the volumes already chosen, and the adapted encoder moved most on it"
        else:
            reasons[index] = "unlike the volumes already chosen or labelled (diversity)"
    return reasons


def _baseline_reason(strategy: Strategy, case: CaseEvidence, config: QueryConfig, score: float) -> str:
    if strategy == Strategy.RANDOM:
        return f"drawn at random (seed {config.seed})"
    if strategy == Strategy.FG_RANDOM:
        return "drawn at random among volumes with a typical predicted foreground size"
    if strategy == Strategy.MEAN_ENTROPY:
        return f"most uncertain volume overall (mean entropy {case.mean_entropy:.2f})"
    if strategy == Strategy.MC_DROPOUT:
        return "the model's dropout passes disagree most on it"
    if strategy == Strategy.BALD:
        return "the model's dropout passes disagree most on it (BALD)"
    if strategy == Strategy.CORESET:
        return f"farthest from the volumes already chosen or labelled (cosine distance {score:.2f})"
    if strategy == Strategy.CLASP_PE:
        return "drawn by ClaSP PE's class-stratified, noised entropy"
    return ""


_COLD_START_HINT = "summarize the cases with the segmentation probabilities, or use strategy 'dkd_only' at cold start"


def _check_arguments(cases: List[CaseEvidence], budget: int, round_index: int, total_rounds: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be a whole number of cases, got {budget!r}.")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}.")
    for name, value in (("round_index", round_index), ("total_rounds", total_rounds)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
    if total_rounds < 1 or not 0 <= round_index < total_rounds:
        raise ValueError(
            f"round_index={round_index} and total_rounds={total_rounds}: need total_rounds >= 1 and "
            "0 <= round_index < total_rounds."
        )
    for position, case in enumerate(cases):
        if not isinstance(case, CaseEvidence):
            raise ValueError(f"evidence[{position}] is a {type(case).__name__}, not a CaseEvidence.")
    counts = Counter(case.case_id for case in cases)
    duplicates = sorted(case_id for case_id, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(f"case ids must be unique in a pool; repeated: {', '.join(duplicates)}.")


def _labeled_rows(
    space: DivSpace,
    labeled_embeddings: Sequence[np.ndarray],
    labeled_current_embeddings: Sequence[np.ndarray],
    dimension: int,
) -> np.ndarray:
    pretrained, current = list(labeled_embeddings), list(labeled_current_embeddings)
    chosen, other, other_name = (
        (current, pretrained, "labeled_embeddings")
        if space == DivSpace.CURRENT
        else (pretrained, current, "labeled_current_embeddings")
    )
    if not chosen and other:
        wanted = "labeled_current_embeddings" if space == DivSpace.CURRENT else "labeled_embeddings"
        raise ValueError(
            f"div_space={space.value!r} measures diversity in that embedding, but only {other_name} were given; "
            f"pass {wanted} for the labeled cases."
        )
    if not chosen:
        return np.zeros((0, dimension), dtype=np.float64)
    rows = unit_rows(chosen, None, f"labeled {space.value} embedding")
    if rows.shape[1] != dimension:
        raise ValueError(
            f"labeled {space.value} embeddings have length {rows.shape[1]} but the pool's have {dimension}; they "
            "must come from the same encoder stage."
        )
    return rows


def _require(
    cases: List[CaseEvidence], has: Callable[[CaseEvidence], bool], strategy: Strategy, what: str, hint: str
) -> None:
    missing = [case.case_id for case in cases if not has(case)]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"strategy {strategy.value!r} needs {what} for every case; missing for {shown}. {hint}.")


def _kd_tilde(cases: List[CaseEvidence], config: QueryConfig, budget: int, round_index: int) -> np.ndarray:
    """KD~ ``[N]``: min-max normalised KD (raw with ``normalise_scores=False``), ``1 - KD~`` with
    ``kd_direction="low"``, and all ones without spread (cold start) or while the divergence is not active yet
    (``budget < kd_min_budget`` or ``round_index < kd_min_round``)."""
    kd = np.array([case.knowledge_divergence for case in cases], dtype=np.float64)
    active = budget >= config.kd_min_budget and round_index >= config.kd_min_round
    if not active or not has_spread(kd):
        return np.ones_like(kd)  # the cold-start rule: DKD is diversity alone
    if config.kd_direction == KDDirection.LOW:
        return 1.0 - minmax_normalise(kd) if config.normalise_scores else float(kd.max()) - kd
    return minmax_normalise(kd) if config.normalise_scores else kd


def _asd_tilde(cases: List[CaseEvidence], config: QueryConfig) -> np.ndarray:
    asd = np.array([case.asd for case in cases], dtype=np.float64)
    return minmax_normalise(asd) if config.normalise_scores else asd


def _best(candidates: np.ndarray, primary: np.ndarray, secondary: np.ndarray) -> int:
    """Index (into the pool) of the candidate with the largest ``primary``, then ``secondary``, then first listed."""
    keys = np.lexsort((candidates, -secondary, -primary))
    return int(candidates[keys[0]])


def _assft_order(
    kd_tilde: np.ndarray,
    asd_tilde: np.ndarray,
    pool: np.ndarray,
    labeled: np.ndarray,
    budget: int,
    config: QueryConfig,
    strategy: Strategy,
    noise: Optional[np.ndarray],
) -> Tuple[List[int], np.ndarray, np.ndarray]:
    """``(order, scores, asd_led)``: ``asd_led[i]`` is True when ASD's term outweighed DKD's at the pick of i."""
    if strategy == Strategy.DKD_ONLY:
        return _greedy(kd_tilde, asd_tilde, pool, labeled, Combine.WEIGHTED_SUM, 1.0, False, noise)
    if strategy == Strategy.ASD_ONLY:
        return _greedy(kd_tilde, asd_tilde, pool, labeled, Combine.WEIGHTED_SUM, 0.0, False, noise)
    if config.combine != Combine.TWO_STAGE:
        return _greedy(
            kd_tilde, asd_tilde, pool, labeled, config.combine, config.dkd_weight, config.normalise_scores, noise
        )

    dkd_order, dkd_scores, _ = _greedy(kd_tilde, asd_tilde, pool, labeled, Combine.WEIGHTED_SUM, 1.0, False, None)
    shortlist_size = min(config.two_stage_factor * budget, len(dkd_order))
    shortlist = np.array(dkd_order[:shortlist_size], dtype=int)
    key = _noised(asd_tilde[shortlist], None if noise is None else noise[shortlist])
    by_asd = shortlist[np.argsort(-key, kind="stable")]  # ties keep their DKD order
    scores = dkd_scores.copy()
    scores[shortlist] = key
    asd_led = np.zeros(len(dkd_order), dtype=bool)
    asd_led[shortlist] = True
    return [int(i) for i in by_asd] + dkd_order[shortlist_size:], scores, asd_led


def _greedy(
    kd_tilde: np.ndarray,
    asd_tilde: np.ndarray,
    pool: np.ndarray,
    labeled: np.ndarray,
    combine: Combine,
    weight: float,
    normalise_dkd: bool,
    noise: Optional[np.ndarray] = None,
) -> Tuple[List[int], np.ndarray, np.ndarray]:
    """Greedy batch query of method-spec.md §1.6, run until every case has a rank.

    With ``normalise_dkd`` the weighted sum uses DKD min-max normalised over the remaining candidates at each step
    [inferred]: diversity is a raw cosine distance (often 0.02-0.1 between pooled features of one anatomy), so
    without it the normalised ASD~ in [0, 1] decides every pick after the first and DKD is ignored. The reported
    score is the combined value (the noised key with ``noise``); ``RankedCase.dkd`` stays the raw DKD. With
    ``noise`` ``[N]`` (one Gumbel draw per case) each pick is the largest ``log(max(score, 1e-12)) + noise``.

    Returns:
        ``(order, scores, asd_led)``; ``asd_led[i]``: ASD's term ``(1 - weight) * ASD~`` was at least DKD's
        ``weight * DKD`` (normalised as combined) when i was picked.
    """
    n = pool.shape[0]
    min_distance = initial_min_distance(pool, labeled)
    remaining = np.ones(n, dtype=bool)
    order: List[int] = []
    scores = np.zeros(n, dtype=np.float64)
    asd_led = np.zeros(n, dtype=bool)
    for _ in range(n):
        candidates = np.flatnonzero(remaining)
        dkd = kd_tilde[candidates] * diversity(min_distance[candidates])
        asd = asd_tilde[candidates]
        dkd_term = weight * (minmax_normalise(dkd) if normalise_dkd else dkd)
        asd_term = (1.0 - weight) * asd
        weighted = dkd_term + asd_term
        cand_noise = None if noise is None else noise[candidates]
        if combine == Combine.PRODUCT:
            score = _noised(dkd * asd, cand_noise)
            pick = _best(candidates, score, weighted)
        elif combine == Combine.RANK_MEAN:
            mean_rank = weight * rankdata(-dkd) + (1.0 - weight) * rankdata(-asd)
            score = _noised((len(candidates) - mean_rank) / max(len(candidates) - 1, 1), cand_noise)
            pick = _best(candidates, score, weighted)
        else:
            score = _noised(weighted, cand_noise)
            pick = _best(candidates, score, np.zeros_like(score))
        at = np.searchsorted(candidates, pick)
        scores[pick] = score[at]
        asd_led[pick] = weight < 1.0 and asd_term[at] >= dkd_term[at]
        order.append(pick)
        remaining[pick] = False
        min_distance = np.minimum(min_distance, cosine_distance_matrix(pool, pool[pick : pick + 1])[:, 0])
    return order, scores, asd_led


# ------------------------------------------------------------------------------------------------- baselines

Baseline = Callable[[List[CaseEvidence], int, QueryConfig, Sequence[np.ndarray], int, int, Optional[np.ndarray]], Order]


def _by_descending(values: np.ndarray, noise: Optional[np.ndarray] = None) -> Order:
    """Descending order of ``values`` (top-k), or of the noised key with ``noise`` (``sampling="power"``)."""
    key = _noised(values.astype(np.float64), noise)
    order = np.argsort(-key, kind="stable")
    return [int(i) for i in order], key


def _random(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    keys = np.random.default_rng(config.seed).random(len(cases))
    return _by_descending(keys)


def fg_random_eligible(foreground_voxels: np.ndarray, min_share: float) -> np.ndarray:
    """Which cases ``fg_random`` draws from: ``f_i > 0`` and ``f_i >= min_share * median_j f_j``.

    ``f`` is the predicted foreground size of each pool case (``CaseEvidence.foreground_voxels``: voxels of the
    dilated predicted foreground ``M``, in model space, so a physical volume at the card's spacing). The median is
    over the whole candidate pool. An empty prediction is never eligible (the model found no anatomy there, so a
    label teaches little about the anatomy, or the volume does not show it); a tiny one is not eligible either.
    When the median is 0 (most predictions empty) every non-empty case is eligible.

    Args:
        foreground_voxels: ``[N]`` finite, >= 0.
        min_share: ``QueryConfig.fg_random_min_share`` in ``[0, 1]``.

    Returns:
        boolean ``[N]``.

    References:
        nnActive's foreground-aware random baselines (``random-label``, method-spec.md §3.3): random that knows
        where the anatomy is; here at volume level and from the model's prediction instead of the labels.
    """
    sizes = np.asarray(foreground_voxels, dtype=np.float64)
    if sizes.size == 0:
        return np.zeros(0, dtype=bool)
    return (sizes > 0) & (sizes >= min_share * float(np.median(sizes)))


def _fg_random(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    _require(
        cases,
        lambda c: not math.isnan(c.foreground_voxels),
        config.strategy,
        "the predicted foreground size",
        _COLD_START_HINT,
    )
    keys = np.random.default_rng(config.seed).random(len(cases))  # the same draw as 'random' with this seed
    sizes = np.array([case.foreground_voxels for case in cases], dtype=np.float64)
    eligible = fg_random_eligible(sizes, config.fg_random_min_share)
    largest = float(sizes.max())
    scores = np.where(eligible, 1.0 + keys, sizes / largest if largest > 0 else 0.0)
    return _by_descending(scores)


def _mean_entropy(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    _require(
        cases,
        lambda c: not math.isnan(c.mean_entropy),
        config.strategy,
        "probabilities (mean entropy)",
        _COLD_START_HINT,
    )
    return _by_descending(np.array([case.mean_entropy for case in cases], dtype=np.float64), noise)


def _mc_dropout(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    _require(
        cases,
        lambda c: c.epistemic is not None,
        config.strategy,
        "an MC-dropout epistemic score",
        "pass prob_samples to summarize_case",
    )
    return _by_descending(np.array([case.epistemic for case in cases], dtype=np.float64), noise)


def _bald(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    _require(
        cases,
        lambda c: c.mutual_information is not None,
        config.strategy,
        "a BALD mutual-information score",
        "pass prob_samples (or mutual_information) to summarize_case",
    )
    return _by_descending(np.array([case.mutual_information for case in cases], dtype=np.float64), noise)


def _coreset(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    """k-centre greedy (Sener & Savarese, "Active learning for CNNs: a core-set approach", ICLR 2018)."""
    ids = [case.case_id for case in cases]
    pool = unit_rows([case.pretrained_embedding for case in cases], ids, "pretrained embedding")
    labeled = _labeled_rows(DivSpace.PRETRAINED, labeled_embeddings, (), pool.shape[1])
    n = pool.shape[0]
    scores = np.zeros(n, dtype=np.float64)
    remaining = np.ones(n, dtype=bool)
    order: List[int] = []
    min_distance = initial_min_distance(pool, labeled)
    if labeled.shape[0] == 0:
        mean = pool.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        to_mean = cosine_distance_matrix(pool, (mean / norm)[None, :])[:, 0] if norm > 0 else np.ones(n)
        first = int(np.argmax(to_mean))
        scores[first] = to_mean[first]
        order.append(first)
        remaining[first] = False
        min_distance = cosine_distance_matrix(pool, pool[first : first + 1])[:, 0]
    while len(order) < n:
        candidates = np.flatnonzero(remaining)
        pick = int(candidates[np.argmax(min_distance[candidates])])
        scores[pick] = min_distance[pick]
        order.append(pick)
        remaining[pick] = False
        min_distance = np.minimum(min_distance, cosine_distance_matrix(pool, pool[pick : pick + 1])[:, 0])
    return order, scores


def clasp_beta(config: QueryConfig, round_index: int, total_rounds: int) -> float:
    """ClaSP PE inverse noise scale of round t: ``beta_t = beta_0 * growth ** (t / (T - 1))``.

    With the defaults ``beta_0 = 1`` and ``growth = 100`` this is nnActive's exponential schedule from 1 to 100
    over the T query steps (method-spec.md §3.2): heavy noise (diversity) early, near-greedy late. A single round
    (T = 1) uses ``beta_0``, the first step of the schedule.
    """
    if total_rounds <= 1:
        return float(config.clasp_beta)
    return float(config.clasp_beta * config.clasp_beta_growth ** (round_index / (total_rounds - 1)))


def _clasp_pe(cases, budget, config, labeled_embeddings, round_index, total_rounds, noise=None) -> Order:
    """Volume-level ClaSP PE (method-spec.md §3.2 and §3.4 [inferred adaptation]).

    Each class score s (index 0 = plain PE) is power-noised, ``log(max(s, 1e-12)) + Gumbel(0, 1 / beta_t)`` (one
    independent draw per case and score, as nnActive's ``power_noising``). Of ``n = min(budget, N)`` picks,
    ``floor(n * clasp_fg_ratio)`` are split equally across the foreground classes (the remainder goes to classes
    drawn at random) and each class picks by its noised class score; the other picks go by the noised plain PE.
    Buckets pick in turn (classes in a random order, then plain PE) so that every prefix of the ranking is
    balanced, and a case is never picked twice. Cases beyond the budget follow by noised plain PE. One generator,
    ``default_rng(config.seed)``, draws all noise and the class order.

    References:
        Lüth et al., arXiv 2601.13677 (TMLR 2026); nnActive ``class_power_pe66_exp`` (github.com/MIC-DKFZ/nnActive).
    """
    _require(cases, lambda c: c.clasp_scores.size >= 2, config.strategy, "ClaSP class scores", _COLD_START_HINT)
    lengths = sorted({case.clasp_scores.size for case in cases})
    if len(lengths) != 1:
        raise ValueError(f"clasp_scores of the pool have different class counts {lengths}; use one model for all.")
    raw = np.stack([case.clasp_scores for case in cases])  # [N, C]
    n, n_classes = raw.shape
    rng = np.random.default_rng(config.seed)
    beta = clasp_beta(config, round_index, total_rounds)
    noised = np.log(np.maximum(raw, CLASP_LOG_FLOOR)) + rng.gumbel(0.0, 1.0 / beta, size=raw.shape)

    n_pick = min(budget, n)
    n_class_picks = math.floor(n_pick * config.clasp_fg_ratio + 1e-9)
    foreground = n_classes - 1
    quota = np.zeros(n_classes, dtype=int)
    quota[1:] = n_class_picks // foreground
    class_order = [int(c) for c in rng.permutation(np.arange(1, n_classes))]
    for c in class_order[: n_class_picks % foreground]:
        quota[c] += 1
    quota[0] = n_pick - n_class_picks

    taken = np.zeros(n, dtype=bool)
    order: List[int] = []
    scores = np.zeros(n, dtype=np.float64)
    buckets = class_order + [0]
    while quota.sum() > 0:
        for bucket in buckets:
            if quota[bucket] == 0:
                continue
            candidates = np.flatnonzero(~taken)
            pick = int(candidates[np.argmax(noised[candidates, bucket])])
            scores[pick] = noised[pick, bucket]
            order.append(pick)
            taken[pick] = True
            quota[bucket] -= 1
    rest = np.flatnonzero(~taken)
    rest = rest[np.argsort(-noised[rest, 0], kind="stable")]
    scores[rest] = noised[rest, 0]
    return order + [int(i) for i in rest], scores


_BASELINES: Dict[Strategy, Baseline] = {
    Strategy.RANDOM: _random,
    Strategy.MEAN_ENTROPY: _mean_entropy,
    Strategy.CORESET: _coreset,
    Strategy.CLASP_PE: _clasp_pe,
    Strategy.MC_DROPOUT: _mc_dropout,
    Strategy.FG_RANDOM: _fg_random,
    Strategy.BALD: _bald,
}
