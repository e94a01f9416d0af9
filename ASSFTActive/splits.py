"""Deterministic splits of a labelled collection into source, target pool and target test.

The split depends only on each case's name (a hash), so it is the same on every machine and does not change when
cases are added. Cases listed as reserved (``shared/data/hippocampus/reserved.txt``) are never assigned: they are
kept for external evaluation and must not be trained, tuned or selected on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Tuple

from .errors import InputError

#: Share of cases (in tenths) per part: 4/10 source, 4/10 target pool, 2/10 target test.
SOURCE_TENTHS = 4
POOL_TENTHS = 4


@dataclass(frozen=True)
class DomainSplit:
    """Case ids of each part, sorted."""

    source: Tuple[str, ...]
    target_pool: Tuple[str, ...]
    target_test: Tuple[str, ...]


def _bucket(case: str) -> int:
    return int(hashlib.sha256(case.encode("utf-8")).hexdigest(), 16) % 10


def split_cases(cases: Iterable[str], reserved: Iterable[str] = ()) -> DomainSplit:
    """Assign every non-reserved case to source, target pool or target test by a hash of its name."""
    excluded = set(reserved)
    kept = sorted(c for c in set(cases) if c not in excluded)
    source = tuple(c for c in kept if _bucket(c) < SOURCE_TENTHS)
    pool = tuple(c for c in kept if SOURCE_TENTHS <= _bucket(c) < SOURCE_TENTHS + POOL_TENTHS)
    test = tuple(c for c in kept if _bucket(c) >= SOURCE_TENTHS + POOL_TENTHS)
    return DomainSplit(source=source, target_pool=pool, target_test=test)


def read_reserved(path: Optional[Path]) -> Tuple[str, ...]:
    """Case ids in a ``reserved.txt`` (one per line); empty only when ``path`` is ``None``.

    Raises:
        InputError: the file is named but absent: a split made without it could train or select on reserved cases,
            so it must not fall back to "nothing reserved" silently.
    """
    if path is None:
        return ()
    if not Path(path).is_file():
        raise InputError(f"{path}: the list of reserved cases is missing; without it a split could use cases kept "
                         "for external evaluation. Restore the file (or pass no list on purpose).")
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
