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

from dataclasses import dataclass
from typing import Any, List, Mapping, Tuple

from ..settings import check_record_keys

__all__ = ["RoundPlan", "plan_round", "round_budgets"]


@dataclass(frozen=True)
class RoundPlan:
    """Where a ranking stands in a multi-round query schedule (``query_round`` of the ranking's ``config.json``,
    read by :func:`ASSFTActive.jobs.read_query_round`; made by :func:`plan_round`).

    Attributes:
        budgets: the per-round budgets (:func:`~ASSFTActive.query.rounds.round_budgets`); they sum to the
            schedule's total budget.
        round_index: the current round, 0-based (``round_index + 1`` of ``len(budgets)`` for people).
        size: how many volumes this ranking proposes.
        labeled: labelled pool volumes counted when the plan was made.
    """

    budgets: Tuple[int, ...]
    round_index: int
    size: int
    labeled: int

    @property
    def total_rounds(self) -> int:
        return len(self.budgets)

    @property
    def complete(self) -> bool:
        """Every round's volumes are labelled: nothing is left to propose."""
        return self.labeled >= sum(self.budgets)

    def to_dict(self) -> dict:
        return {
            "round": self.round_index + 1,
            "rounds": self.total_rounds,
            "round_budgets": list(self.budgets),
            "proposed": self.size,
            "labeled_before": self.labeled,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundPlan:
        """Read :meth:`to_dict`'s output.

        Raises:
            ValueError: missing or unknown keys, values that are not whole numbers, ``rounds`` other than the number
                of round budgets, or ``round`` outside ``1..rounds``.
        """
        check_record_keys(
            data,
            "a query round",
            required=("round", "rounds", "round_budgets", "proposed", "labeled_before"),
            optional=(),
        )

        def whole(value: Any, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        budgets = data["round_budgets"]
        if (
            not isinstance(budgets, list)
            or not budgets
            or not all(whole(b, 0) for b in budgets)
            or not whole(data["rounds"], 1)
            or data["rounds"] != len(budgets)
            or not whole(data["round"], 1)
            or data["round"] > data["rounds"]
            or not whole(data["proposed"], 0)
            or not whole(data["labeled_before"], 0)
        ):
            raise ValueError(
                "'query_round' must hold whole numbers 'round' (1..rounds), 'rounds', 'round_budgets' "
                f"(one per round), 'proposed' and 'labeled_before', got {dict(data)!r}"
            )
        return cls(
            budgets=tuple(budgets), round_index=data["round"] - 1, size=data["proposed"], labeled=data["labeled_before"]
        )


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
