"""The project's goals file, ``Testing/Benchmarks/results/goals.json`` (``../shared/BENCHMARKS.md``, "Goals file"):
one row per goal measurement, merged by :data:`GOAL_KEY` and written atomically. Every benchmark that writes goal
rows (the harness report, ``guard_cost.py``) goes through :func:`merge_goal_rows`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from ASSFTActive.io import atomic_write_text

#: A goal row's key. ``effort`` (the effort measure of a ``sparse`` row) is absent, i.e. ``None``, from the other
#: topics' rows, so their keys are what they were.
GOAL_KEY = ("topic", "goal", "setting", "budget", "split", "effort")


def goal_key(row: Mapping[str, Any]) -> Tuple[Any, ...]:
    return tuple(row.get(k) for k in GOAL_KEY)


def merge_goal_rows(
    path: Path, rows: Sequence[Mapping[str, Any]], drop_source_rows: bool = False
) -> List[Dict[str, Any]]:
    """Merge ``rows`` into the goals file at ``path``: a row with the same key is replaced, the others are kept (NaN
    written as null), the file rewritten atomically and sorted by key.

    Args:
        path: the goals file (created when missing).
        rows: the new rows; each has the :data:`GOAL_KEY` fields it uses and usually ``source``, the result file
            it was computed from.
        drop_source_rows: also drop every existing row written from one of ``rows``' sources, so that a variant
            the source no longer holds leaves no stale row behind.

    Returns:
        The existing rows that were replaced although another source wrote them. Two record folders of the same
        split (e.g. ``dev`` before a recipe change and ``dev2`` after it) write the same keys, and the folder
        reported last wins; a caller says so, so that a report run for its table alone does not silently put an
        older folder's numbers back into the goals file.
    """
    existing = json.loads(path.read_text(encoding="utf-8")).get("rows", []) if path.is_file() else []
    sources = {r.get("source") for r in rows if r.get("source")}
    new = {goal_key(r): {k: _null_if_nan(v) for k, v in r.items()} for r in rows}
    taken: List[Dict[str, Any]] = []
    merged: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
    for r in existing:
        key = goal_key(r)
        if drop_source_rows and r.get("source") in sources:
            continue
        if key in new:
            if r.get("source") and r.get("source") != new[key].get("source"):
                taken.append(r)
            continue
        merged[key] = r
    merged.update(new)
    ordered = sorted(merged.values(), key=lambda r: tuple(str(x) for x in goal_key(r)))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"rows": ordered}, indent=1) + "\n")
    return taken


def _null_if_nan(value: Any) -> Any:
    """NaN as ``None`` (JSON has no NaN). Not ``ASSFTActive.evaluate.json_ready``: that module imports torch, and
    this merge runs in the torch-free tier (``tools/check_python39.sh``) through ``guard_cost.py --goals-only``."""
    return None if isinstance(value, float) and math.isnan(value) else value


def taken_over_message(taken: Sequence[Mapping[str, Any]], path: Path) -> str:
    """One line for :func:`merge_goal_rows`'s returned rows: how many, from which sources (empty when none)."""
    if not taken:
        return ""
    sources = sorted({str(r.get("source")) for r in taken})
    return (
        f"note: {len(taken)} row(s) of {path.name} written from {', '.join(sources)} were replaced by this report's "
        "(same topic, goal, setting, budget and split); if that folder holds the current numbers, report it again "
        "(or report this one with --goals '')."
    )


__all__ = ["GOAL_KEY", "goal_key", "merge_goal_rows", "taken_over_message"]
