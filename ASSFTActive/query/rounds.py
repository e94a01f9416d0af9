"""Multi-round test-time query: spread a labelling budget over rounds, with an adaptation between rounds.

The schedule of method-spec.md §1.3 (``query_schedule="rounds"``, §4.1): round 1 ranks the pool with the cold
model (the current encoder is the pre-trained one, so DKD's knowledge divergence is 0 and DKD is diversity alone);
the annotator labels that round's volumes; Adapt Model fine-tunes on them; round 2 ranks the rest with the
adapted model, whose encoder has moved away from the frozen pre-trained one, so the divergence now says which
volumes carry knowledge the model has not learned; and so on. ``QueryConfig.rounds`` is R.

Each ranking is one call of ``assft rank`` (or a re-rank after Adapt Model). The round it belongs to is read from
how many pool volumes are already labelled, so no state has to be kept between calls: :func:`plan_round`.
"""

from __future__ import annotations

from typing import List

from ..jobs import RoundPlan

__all__ = ["RoundPlan", "plan_round", "round_budgets"]


def _whole(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    number = int(value)  # type: ignore[arg-type]
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}.")
    return number


def round_budgets(budget: int, rounds: int) -> List[int]:
    """Per-round budgets: ``budget`` split as evenly as possible over ``min(rounds, budget)`` rounds, larger first.

    No round is empty: a budget smaller than ``rounds`` gives ``budget`` rounds of one volume; a budget of 0 gives
    the single round ``[0]``. Examples: ``(4, 2) -> [2, 2]``, ``(5, 2) -> [3, 2]``, ``(7, 3) -> [3, 2, 2]``,
    ``(2, 4) -> [1, 1]``. The first round, ranked with the cold model, gets the larger share when the budget does
    not divide evenly.

    Raises:
        ValueError: ``budget < 0`` or ``rounds < 1``.
    """
    budget = _whole(budget, "budget", 0)
    rounds = _whole(rounds, "rounds", 1)
    rounds = max(1, min(rounds, budget))
    base, extra = divmod(budget, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def plan_round(budget: int, rounds: int, labeled: int) -> RoundPlan:
    """The round a ranking belongs to and how many volumes it proposes.

    With ``rounds == 1`` this is the single-shot query: round 0 proposes ``budget`` new volumes, however many are
    labelled already (the behaviour of ``assft rank`` without ``--rounds``).

    With ``rounds = R > 1``, ``budget`` is the schedule's **total** number of labelled pool volumes, counted
    cumulatively: with per-round budgets ``b_0 .. b_{R-1}`` and ``c_r = b_0 + ... + b_r``, the current round is the
    first r with ``c_r > labeled``, and the ranking proposes ``c_r - labeled`` volumes (the rest of round r, so a
    round labelled only in part is completed first). Volumes labelled before the schedule count towards it. When
    ``labeled >= budget`` the schedule is complete: the last round, proposing 0.

    Examples: ``plan_round(4, 2, 0)`` is round 0 proposing 2; ``plan_round(4, 2, 2)`` round 1 proposing 2;
    ``plan_round(4, 2, 3)`` round 1 proposing 1; ``plan_round(4, 2, 5)`` round 1 proposing 0 (complete).

    Raises:
        ValueError: ``budget < 0``, ``rounds < 1`` or ``labeled < 0``.
    """
    budgets = tuple(round_budgets(budget, rounds))
    labeled = _whole(labeled, "labeled", 0)
    if _whole(rounds, "rounds", 1) == 1:
        return RoundPlan(budgets=budgets, round_index=0, size=budgets[0], labeled=labeled)
    cumulative = 0
    for index, size in enumerate(budgets):
        cumulative += size
        if cumulative > labeled:
            return RoundPlan(budgets=budgets, round_index=index, size=cumulative - labeled, labeled=labeled)
    return RoundPlan(budgets=budgets, round_index=len(budgets) - 1, size=0, labeled=labeled)
