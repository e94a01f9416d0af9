"""Deterministic splits of a labelled collection into source, target pool and target test.

The split depends only on a hash of each case's *group* name, so it is the same on every machine and does not
change when cases are added. A group is the unit that must never straddle two parts: for MSD Hippocampus each case
is its own group; for ACDC the group is the patient (``patient001`` for ``patient001_frame01`` and
``patient001_frame02``: the two frames of one patient are nearly the same anatomy, so a split by volume would put the
same heart in training and test). Cases listed as reserved (``shared/data/<collection>/reserved.txt``) are never
assigned, and neither is any other case of a group that holds a reserved case: they are kept for external
evaluation and must not be trained, tuned or selected on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ASSFTActive.errors import InputError

#: Share of groups (in tenths) per part: 4/10 source, 4/10 target pool, 2/10 target test.
SOURCE_TENTHS = 4
POOL_TENTHS = 4

#: Maps a case id to the name of its group (the unit a split never divides).
Grouping = Callable[[str], str]

#: ACDC case ids: ``patientNNN_frameNN`` (``frame01`` end-diastole, ``frame02`` end-systole).
ACDC_CASE = re.compile(r"^(patient\d{3})_frame\d{2}$")


@dataclass(frozen=True)
class DomainSplit:
    """Case ids of each part, sorted."""

    source: Tuple[str, ...]
    target_pool: Tuple[str, ...]
    target_test: Tuple[str, ...]


def _bucket(name: str) -> int:
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % 10


def each_case(case: str) -> str:
    """The grouping of collections whose cases are independent (MSD Hippocampus): every case is its own group."""
    return case


def acdc_patient(case: str) -> str:
    """The patient of an ACDC case: ``patient042`` for ``patient042_frame01``.

    Raises:
        InputError: ``case`` is not named ``patientNNN_frameNN``; guessing a group could let one patient straddle
            two parts.
    """
    match = ACDC_CASE.match(case)
    if match is None:
        raise InputError(f"{case!r} is not an ACDC case id (expected patientNNN_frameNN, e.g. patient001_frame01); "
                         "the ACDC split groups the frames of one patient and cannot place this case.")
    return match.group(1)


def split_cases(cases: Iterable[str], reserved: Iterable[str] = (), group: Grouping = each_case) -> DomainSplit:
    """Assign every non-reserved case to source, target pool or target test by a hash of its group's name.

    Args:
        cases: case ids of the collection.
        reserved: case ids kept for external evaluation; their whole groups are left out.
        group: the case's group (:func:`each_case`, the default, or :func:`acdc_patient`); all cases of one group
            land in the same part.
    """
    kept_cases = set(cases)
    excluded_groups = {group(c) for c in reserved}
    kept = sorted(c for c in kept_cases if group(c) not in excluded_groups)
    buckets = {c: _bucket(group(c)) for c in kept}
    source = tuple(c for c in kept if buckets[c] < SOURCE_TENTHS)
    pool = tuple(c for c in kept if SOURCE_TENTHS <= buckets[c] < SOURCE_TENTHS + POOL_TENTHS)
    test = tuple(c for c in kept if buckets[c] >= SOURCE_TENTHS + POOL_TENTHS)
    return DomainSplit(source=source, target_pool=pool, target_test=test)


def split_acdc(cases: Iterable[str], reserved: Iterable[str] = ()) -> DomainSplit:
    """The ACDC split: :func:`split_cases` grouped by patient (both frames of a patient in the same part)."""
    return split_cases(cases, reserved, group=acdc_patient)


def hold_out(cases: Sequence[str], group: Grouping = each_case) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """``(train, held_out)`` of a source split: the groups whose hash bucket is 0 are held out.

    Within the source split (buckets 0-3) this holds out about a quarter of the groups, to report a source-test
    Dice; the same rule made the embedded default's source test (``scripts/train_embedded_default.py``).
    """
    held = tuple(c for c in cases if _bucket(group(c)) == 0)
    return tuple(c for c in cases if _bucket(group(c)) != 0), held


def groups_of(cases: Iterable[str], group: Grouping = each_case) -> Dict[str, List[str]]:
    """``{group: [cases]}``, both sorted."""
    out: Dict[str, List[str]] = {}
    for c in sorted(set(cases)):
        out.setdefault(group(c), []).append(c)
    return out


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
