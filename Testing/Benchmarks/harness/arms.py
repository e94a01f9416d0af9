"""What is compared: an arm is a query strategy plus a fine-tuning recipe through the product's Adapt Model.

Arms name any ``QueryConfig`` strategy (``Arm.query`` holds ``QueryConfig`` fields, ``strategy`` among them), so a
strategy added to the product is benchmarked by naming it: ``--arms strategy=typicality`` builds the arm
``typicality`` on the fly (:func:`parse_arm`). The recipe is the product's Adapt Model default
(``FinetuneConfig()``) with the guard **off** for the comparisons (every adapted model is scored) and on for the one
final table (``guard=True``). The converged ceiling is the whole pool labelled at 120 / 400 / 800 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

#: Random subsets per pool by budget (the random-subset distribution): ``BENCHMARKS.md`` asks >= 30 at B = 2 and
#: >= 15 at B = 4; larger budgets get 10.
RANDOM_DRAWS = {2: 30, 4: 15}
DEFAULT_RANDOM_DRAWS = 10
#: Draws per pool and budget of the other seeded arms (foreground-aware random, a noised-score sampler): 5 draws x
#: 5 pools = 25 labelled sets per setting, beyond the >= 10 ``BENCHMARKS.md`` asks for a claim.
SEEDED_DRAWS = 5

#: Step counts of the converged ceiling (the whole pool labelled); the flat point is the ceiling.
CEILING_STEPS = (120, 400, 800)


@dataclass(frozen=True)
class Arm:
    """One line of the results table.

    Attributes:
        name: key in the records and reports.
        query: ``QueryConfig`` fields (``strategy`` first); ``()`` for the floor and ceiling arms.
        finetune: ``FinetuneConfig`` overrides as dotted names, e.g. ``(("train.iterations", 400),)``.
        guard: run Adapt Model's activation guard (off for comparisons).
        seeded: the selection is random: one labelled set per draw (the random-subset distribution).
        whole_pool: label every pool case (the ceiling); the budget is ignored.
        label: text in the tables.
    """

    name: str
    query: Tuple[Tuple[str, Any], ...] = ()
    finetune: Tuple[Tuple[str, Any], ...] = ()
    guard: bool = False
    seeded: bool = False
    whole_pool: bool = False
    label: str = ""

    @property
    def strategy(self) -> str:
        return str(dict(self.query).get("strategy", ""))

    def draws(self, budget: int, override: int = 0) -> int:
        """How many labelled sets this arm is measured on per (pool, budget)."""
        if not self.seeded:
            return 1
        if override:
            return override
        if self.strategy == "random":
            return RANDOM_DRAWS.get(budget, DEFAULT_RANDOM_DRAWS)
        return SEEDED_DRAWS

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "query": dict(self.query),
            "finetune": dict(self.finetune),
            "guard": self.guard,
            "seeded": self.seeded,
            "whole_pool": self.whole_pool,
            "label": self.label or self.name,
        }


def ceiling_arm(steps: int) -> Arm:
    """The whole pool labelled, fine-tuned ``steps`` steps (half supervised, half Adapt Model's second stage)."""
    return Arm(
        f"ceiling_{steps}",
        finetune=(("semi_iterations", steps // 2), ("train.iterations", steps - steps // 2)),
        whole_pool=True,
        label=f"whole pool labelled, {steps} steps",
    )


def _strategy(name: str, label: str = "", **query: Any) -> Arm:
    seeded = name in ("random", "fg_random")
    return Arm(name=name, query=(("strategy", name), *sorted(query.items())), seeded=seeded, label=label or name)


#: The named arms. ``random`` is the reference distribution; the product's default query is ``assft``.
ARMS: Dict[str, Arm] = {
    a.name: a
    for a in (
        _strategy("random", "random (the distribution of random subsets)"),
        _strategy("fg_random", "foreground-aware random"),
        _strategy("coreset", "k-centre coreset"),
        _strategy("clasp_pe", "ClaSP PE (volume level)"),
        _strategy("mean_entropy", "mean entropy"),
        _strategy("assft", "ASSFT query (DKD+ASD), the product default"),
        Arm("assft_guarded", (("strategy", "assft"),), guard=True, label="ASSFT query + Adapt Model with its guard"),
        *(ceiling_arm(steps) for steps in CEILING_STEPS),
    )
}

#: The baselines a default must match or beat (issue 23's ``gap_vs_best_baseline``), when measured.
BASELINES = ("fg_random", "coreset", "clasp_pe", "typicality")


def parse_arm(text: str) -> Arm:
    """An arm by name (:data:`ARMS`) or built from ``QueryConfig`` fields: ``strategy=typicality`` or
    ``name:strategy=assft,combine=two_stage`` (values parsed as int / float / bool when they look like one). Two
    fields are the arm's, not the query's: ``seeded=true`` (a sampling query: measured on several draws) and
    ``guard=true`` (Adapt Model's guard on).

    Raises:
        ValueError: an unknown arm name, or fields without ``strategy``.
    """
    if "=" not in text:
        if text not in ARMS:
            raise ValueError(f"unknown arm {text!r}; known: {sorted(ARMS)}, or strategy=<QueryConfig strategy>")
        return ARMS[text]
    name, _, body = text.rpartition(":") if ":" in text.split("=", 1)[0] else ("", "", text)
    fields: Dict[str, Any] = {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        fields[key.strip()] = _value(value.strip())
    if "strategy" not in fields:
        raise ValueError(f"arm {text!r} names no strategy (e.g. strategy=typicality)")
    strategy = str(fields["strategy"])
    seeded = bool(fields.pop("seeded", strategy in ("random", "fg_random")))
    guard = bool(fields.pop("guard", False))
    extra = {k: v for k, v in fields.items() if k != "strategy"}
    name = name or (strategy if not extra else strategy + "_" + "_".join(f"{k}-{v}" for k, v in sorted(extra.items())))
    return Arm(
        name=name, query=(("strategy", strategy), *sorted(extra.items())), seeded=seeded, guard=guard, label=name
    )


def _value(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
