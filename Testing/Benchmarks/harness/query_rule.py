"""The rule that chooses the default query (issue 23 item 3), applied to the development records as written in
RESULTS.md ("The rule that will choose the default query", 2026-12-06) before any of them existed.

1. A candidate *qualifies at a budget* when its gap to the mean of the random subsets has a 95 % lower bound
   >= :attr:`QueryRule.min_low` (-0.01) in every setting of :attr:`QueryRule.settings`, the uniform controls too.
2. Among the candidates that qualify at every budget of :attr:`QueryRule.budgets` (2 and 4: the rule chooses the
   default at B <= 4 from both), the default is the one with the highest mean gap over the settings and budgets,
   the heterogeneous settings weighted twice. Candidates within :attr:`QueryRule.tie` (0.005) of the best are tied;
   a tie goes to a candidate that needs no extra pass (MC dropout), then to today's default, then to the best.
3. If none qualifies, today's default (``assft``) stays.

Until every (setting, budget) has a complete record (:attr:`QueryRule.min_pools` pools, every pool with the
random subsets) the rule chooses nothing: :func:`apply_rule` says per candidate where it already fails step 1 and
what is missing. A cell counts only from the development split. Pure functions of the report's summary
(:func:`~.report.summarise`); the command is ``python -m Testing.Benchmarks.harness rule --names dev2 dev``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .runner import HETERO, UNIFORM

__all__ = ["CellGap", "CandidateVerdict", "QueryDecision", "QueryRule", "apply_rule", "cells_from_summaries"]


@dataclass(frozen=True)
class QueryRule:
    """The rule's constants, as written in RESULTS.md before the runs.

    Attributes:
        candidates: the query arms the rule chooses among (``budget_aware`` is ``typiclust`` at B <= 4, its
            default coverage, so it has no records of its own at these budgets).
        settings: every setting a candidate must pass (the profiles' uniform controls and heterogeneous pools);
            heterogeneous: those weighted twice in step 2.
        budgets: the budgets of step 1 and of step 2's mean.
        min_low: the lower bound a gap must reach in every setting (step 1).
        tie: differences of the weighted mean gap below this are ties (step 2).
        extra_pass: candidates that need an extra inference pass (MC dropout); none of today's candidates does.
        default: today's default query.
        min_pools: pools a cell needs to count (the issue's replication).
        split: the split the rule is applied on.
    """

    candidates: Tuple[str, ...] = (
        "assft",
        "typiclust",
        "probcover",
        "assft_power",
        "asd_only",
        "coreset",
        "clasp_pe",
    )
    settings: Tuple[str, ...] = UNIFORM + HETERO
    heterogeneous: Tuple[str, ...] = HETERO
    budgets: Tuple[int, ...] = (2, 4)
    min_low: float = -0.01
    tie: float = 0.005
    extra_pass: Tuple[str, ...] = ()
    default: str = "assft"
    min_pools: int = 5
    split: str = "development"


@dataclass(frozen=True)
class CellGap:
    """One candidate's gap to random in one (setting, budget), from a report summary.

    Attributes:
        gap, low, high: the mean gap and its 95 % interval (over pools, draws and evaluation cases).
        pools: pools the gap was measured on (fewer than the rule's ``min_pools``: not counted).
        source: the record folder it came from (e.g. ``dev2``).
    """

    gap: float
    low: float
    high: float
    pools: int
    source: str


@dataclass(frozen=True)
class CandidateVerdict:
    """Step 1 for one candidate: per budget, the settings it fails, those not measured yet, and its weighted mean
    gap (``None`` until every cell is measured)."""

    candidate: str
    fails: Mapping[int, Tuple[str, ...]]
    missing: Mapping[int, Tuple[str, ...]]
    score: Optional[float]

    @property
    def qualifies(self) -> bool:
        """Measured in every cell and failing none."""
        return not any(self.fails.values()) and not any(self.missing.values())

    @property
    def failed(self) -> bool:
        """Already fails step 1 somewhere: no record still to come can make it qualify."""
        return any(self.fails.values())


@dataclass(frozen=True)
class QueryDecision:
    """The rule's outcome: ``default`` is ``None`` while a cell of a candidate not yet failed is missing."""

    default: Optional[str]
    reason: str
    verdicts: Tuple[CandidateVerdict, ...]
    cells: Mapping[Tuple[str, str, int], CellGap] = field(default_factory=dict)


def cells_from_summaries(
    summaries: Sequence[Tuple[str, Mapping[str, Any]]], rule: QueryRule = QueryRule()
) -> Dict[Tuple[str, str, int], CellGap]:
    """``{(candidate, setting, budget): CellGap}`` from report summaries (``(source, summary)`` pairs, the first
    source with a complete cell winning), on the rule's split only; a partial arm (``incomplete``) or one short of
    ``rule.min_pools`` pools is left out."""
    cells: Dict[Tuple[str, str, int], CellGap] = {}
    for source, summary in summaries:
        for entry in summary.values():
            if entry.get("split") != rule.split or entry.get("setting") not in rule.settings:
                continue
            for budget_key, row in (entry.get("budgets") or {}).items():
                budget = int(budget_key)
                for arm, stats in (row.get("arms") or {}).items():
                    gap = stats.get("gap_vs_random")
                    key = (arm, entry["setting"], budget)
                    if arm not in rule.candidates or key in cells or stats.get("incomplete") or not gap:
                        continue
                    if gap["pools"] < rule.min_pools:
                        continue
                    cells[key] = CellGap(gap["gap"], gap["ci_low"], gap["ci_high"], gap["pools"], source)
    return cells


def _verdict(candidate: str, cells: Mapping[Tuple[str, str, int], CellGap], rule: QueryRule) -> CandidateVerdict:
    fails: Dict[int, Tuple[str, ...]] = {}
    missing: Dict[int, Tuple[str, ...]] = {}
    for budget in rule.budgets:
        here = {s: cells.get((candidate, s, budget)) for s in rule.settings}
        fails[budget] = tuple(s for s, c in here.items() if c is not None and c.low < rule.min_low)
        missing[budget] = tuple(s for s, c in here.items() if c is None)
    score = None
    if not any(missing.values()):
        weights = {s: 2.0 if s in rule.heterogeneous else 1.0 for s in rule.settings}
        total = sum(weights[s] * cells[(candidate, s, b)].gap for s in rule.settings for b in rule.budgets)
        score = total / (sum(weights.values()) * len(rule.budgets))
    return CandidateVerdict(candidate, fails, missing, score)


def apply_rule(cells: Mapping[Tuple[str, str, int], CellGap], rule: QueryRule = QueryRule()) -> QueryDecision:
    """Steps 1-3 on ``cells`` (:func:`cells_from_summaries`)."""
    verdicts = tuple(_verdict(c, cells, rule) for c in rule.candidates)
    open_ = [v for v in verdicts if not v.failed and not v.qualifies]
    if open_:
        waiting = ", ".join(
            f"{v.candidate} ({'; '.join(f'B = {b}: ' + ', '.join(m) for b, m in v.missing.items() if m)})"
            for v in open_
        )
        reason = f"not decided: candidates not yet failed still miss records: {waiting}"
        return QueryDecision(None, reason, verdicts, cells)
    qualified = [v for v in verdicts if v.qualifies]
    if not qualified:
        return QueryDecision(
            rule.default, f"no candidate qualifies (step 3): {rule.default!r} stays the default", verdicts, cells
        )
    best = max(v.score for v in qualified)
    tied = [v for v in qualified if best - v.score < rule.tie]
    no_pass = [v for v in tied if v.candidate not in rule.extra_pass] or tied
    names = [v.candidate for v in no_pass]
    if rule.default in names:
        chosen = rule.default
    else:
        chosen = max(no_pass, key=lambda v: v.score).candidate
    how = (
        f"{chosen!r} has the highest weighted mean gap ({best:+.4f})"
        if len(tied) == 1
        else f"tied within {rule.tie} ({', '.join(v.candidate for v in tied)}); the tie goes to {chosen!r}"
    )
    return QueryDecision(chosen, f"step 2: {how}", verdicts, cells)


def markdown(decision: QueryDecision, rule: QueryRule = QueryRule()) -> str:
    """A table per budget (candidate x setting: gap [low], a cross where step 1 fails) and the decision."""
    lines: List[str] = []
    for budget in rule.budgets:
        lines.append(f"| B = {budget}: gap vs random [95 % low] | " + " | ".join(rule.settings) + " |")
        lines.append("|---|" + "---|" * len(rule.settings))
        for v in decision.verdicts:
            row = []
            for s in rule.settings:
                c = decision.cells.get((v.candidate, s, budget))
                if c is None:
                    row.append("-")
                else:
                    mark = " **fails**" if c.low < rule.min_low else ""
                    row.append(f"{c.gap:+.3f} [{c.low:+.3f}]{mark}")
            lines.append(f"| `{v.candidate}` | " + " | ".join(row) + " |")
        lines.append("")
    for v in decision.verdicts:
        state = "qualifies" if v.qualifies else ("fails step 1" if v.failed else "not yet failed")
        score = "" if v.score is None else f", weighted mean gap {v.score:+.4f}"
        lines.append(f"- `{v.candidate}`: {state}{score}")
    lines.append("")
    lines.append(f"**Decision:** {decision.reason}")
    return "\n".join(lines) + "\n"
