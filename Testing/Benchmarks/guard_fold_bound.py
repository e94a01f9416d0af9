"""Could a fold-loss limit have refused the guarded runs that stored no per-fold gains? A lower bound per run.

The earlier Adapt benchmark's guarded runs (``results/adapt_quick_guarded*.json``) keep the guard's record: the mean
held-out gain over the ``n`` labelled volumes and its 95 % t-interval (``ASSFTActive.finetune.guard``: ``t(0.975,
n - 1) * sd / sqrt(n)``), not each fold's gain. That is enough for a bound: the sample standard deviation ``sd``
follows from the interval, no single volume's gain lies further than ``sd * (n - 1) / sqrt(n)`` below the mean
(Samuelson's inequality), and a fold's gain is the mean of its held-out volumes' gains, so no fold is below that
either. A run whose bound is above ``-limit`` cannot have been refused by a fold-loss limit ``limit`` (today's
``validation.min_fold_gain = -limit``).

Used by the rule that sets the fold-loss limit (RESULTS.md, issue 25 item 1). Writes
``results/guard_fold_bound.{md,json}``:

    .venv/bin/python Testing/Benchmarks/guard_fold_bound.py
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping

from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("adapt_quick_guarded.json", "adapt_quick_guarded_b8.json")
LIMITS = (0.1, 0.05, 0.02)


def activations(data: Any) -> Iterator[Mapping[str, Any]]:
    """Every guard record (``{"method": "cross_validation", "gain", "gain_high", "reason", ...}``) in a result."""
    if isinstance(data, Mapping):
        record = data.get("activation")
        if isinstance(record, Mapping) and record.get("method") == "cross_validation":
            yield record
        for value in data.values():
            yield from activations(value)
    elif isinstance(data, list):
        for value in data:
            yield from activations(value)


def worst_fold_bound(gain: float, gain_high: float, n: int) -> float:
    """The lowest gain any fold can have: ``gain - sd (n - 1) / sqrt(n)``, ``sd`` from the t-interval's half-width."""
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 labelled volumes, got {n}")
    sd = (gain_high - gain) * math.sqrt(n) / float(stats.t.ppf(0.975, n - 1))
    return gain - sd * (n - 1) / math.sqrt(n)


def labelled_count(reason: str) -> int:
    match = re.search(r"on (\d+) labelled volume", reason)
    if match is None:
        raise ValueError(f"the guard's reason names no number of labelled volumes: {reason[:80]!r}")
    return int(match.group(1))


def rows(results: Path = RESULTS) -> List[Dict[str, Any]]:
    out = []
    for name in SOURCES:
        for record in activations(json.loads((results / name).read_text())):
            n = labelled_count(record["reason"])
            bound = worst_fold_bound(record["gain"], record["gain_high"], n)
            out.append(
                {
                    "source": name,
                    "labelled": n,
                    "activated": bool(record["activate"]),
                    "gain": record["gain"],
                    "worst_fold_at_least": round(bound, 4),
                    "refusable_by": [limit for limit in LIMITS if bound < -limit],
                }
            )
    return out


def main() -> int:
    table = rows()
    lines = [
        "# Guarded runs without per-fold gains: the lowest gain any fold can have",
        "",
        "Written by `Testing/Benchmarks/guard_fold_bound.py` (method in its docstring).",
        "",
        "| source | labelled | activated | mean gain | worst fold at least | limits that could refuse it |",
        "|---|---|---|---|---|---|",
    ]
    for row in table:
        limits = ", ".join(f"{limit:g}" for limit in row["refusable_by"]) or "none"
        lines.append(
            f"| {row['source']} | {row['labelled']} | {row['activated']} | {row['gain']:+.3f} | "
            f"{row['worst_fold_at_least']:+.3f} | {limits} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "guard_fold_bound.md").write_text(text)
    (RESULTS / "guard_fold_bound.json").write_text(json.dumps({"limits": LIMITS, "runs": table}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
