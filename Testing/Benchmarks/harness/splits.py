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
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10


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
        raise InputError(
            f"{case!r} is not an ACDC case id (expected patientNNN_frameNN, e.g. patient001_frame01); "
            "the ACDC split groups the frames of one patient and cannot place this case."
        )
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
        raise InputError(
            f"{path}: the list of reserved cases is missing; without it a split could use cases kept "
            "for external evaluation. Restore the file (or pass no list on purpose)."
        )
    return tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())


# ------------------------------------------------------------------------ development / test (issue 23)

#: ACDC's five diagnosis groups of 20 training patients each, in patient-number order (``patient001-020`` dilated
#: cardiomyopathy, ``021-040`` hypertrophic cardiomyopathy, ``041-060`` previous myocardial infarction, ``061-080``
#: normal, ``081-100`` abnormal right ventricle; Bernard et al., IEEE TMI 2018). The shared copy carries no
#: ``Info.cfg``; the order is verified from the labels by ``Testing/Python/test_bench_splits.py`` (left-ventricle
#: ejection fraction lowest in the dilated and infarct blocks, myocardium-to-cavity ratio highest in the hypertrophic
#: block, right-to-left ventricle volume ratio highest in the abnormal-RV block).
ACDC_DIAGNOSES = ("dilated", "hypertrophic", "infarct", "normal", "abnormal_rv")

#: Share of a development / test part's groups (in fifths) offered as pool candidates; the rest are evaluation cases.
POOL_FIFTHS = 3


def acdc_diagnosis(case: str) -> str:
    """The diagnosis group of an ACDC case (``patient023_frame01`` -> ``hypertrophic``), see :data:`ACDC_DIAGNOSES`.

    Raises:
        InputError: not an ACDC case id, or a patient number outside 1-100 (the testing patients carry no group).
    """
    number = int(acdc_patient(case)[len("patient") :])
    if not 1 <= number <= 100:
        raise InputError(f"{case!r}: only ACDC training patients 001-100 have a known diagnosis group")
    return ACDC_DIAGNOSES[(number - 1) // 20]


def _hash_unit(salt: str, name: str) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``name`` (the same on every machine)."""
    return int(hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()[:15], 16) / 16**15


@dataclass(frozen=True)
class Part:
    """One target part (development or test): pool candidates (to be labelled) and evaluation cases, sorted."""

    pool: Tuple[str, ...]
    eval: Tuple[str, ...]

    def to_dict(self) -> Dict[str, List[str]]:
        return {"pool": list(self.pool), "eval": list(self.eval)}


@dataclass(frozen=True)
class BenchmarkSplit:
    """Source, development and test cases of one benchmark anatomy, disjoint by group; reserved groups excluded."""

    source: Tuple[str, ...]
    development: Part
    test: Part

    def part(self, name: str) -> Part:
        if name not in ("development", "test"):
            raise ValueError(f"unknown split part {name!r}; use 'development' or 'test'")
        return self.development if name == "development" else self.test

    def to_dict(self) -> Dict[str, Any]:
        return {"source": list(self.source), "development": self.development.to_dict(), "test": self.test.to_dict()}


#: The rule of :func:`benchmark_split`, written into the committed split files.
BENCHMARK_SPLIT_RULE = (
    "Groups (hippocampus: the case; ACDC: the patient, both frames together) of reserved.txt are excluded. Source = "
    "the groups that made the source model (split_cases: sha256(group) % 10 < 4; ACDC-Path: the dilated, infarct and "
    "normal patients). Each other group goes to development when int(sha256('assft-dev-test:' + group)) is even, "
    "else to test; inside each part it is a pool candidate when sha256('assft-pool-eval:' + group) mapped to [0, 1) "
    "is below 3/5, else an evaluation case."
)


def _part(groups: Dict[str, List[str]]) -> Part:
    pool = sorted(c for g, cs in groups.items() if _hash_unit("assft-pool-eval", g) < POOL_FIFTHS / 5 for c in cs)
    rest = sorted(c for g, cs in groups.items() if _hash_unit("assft-pool-eval", g) >= POOL_FIFTHS / 5 for c in cs)
    return Part(pool=tuple(pool), eval=tuple(rest))


def benchmark_split(
    cases: Iterable[str],
    reserved: Iterable[str] = (),
    group: Grouping = each_case,
    is_source: Optional[Callable[[str], bool]] = None,
    is_target: Optional[Callable[[str], bool]] = None,
) -> BenchmarkSplit:
    """Source / development / test by a hash of each group (see :data:`BENCHMARK_SPLIT_RULE`).

    Args:
        cases: case ids of the collection.
        reserved: case ids kept for external evaluation; their whole groups are left out.
        group: the unit a split never divides (:func:`each_case` or :func:`acdc_patient`).
        is_source: which cases belong to the source (default: :func:`split_cases`'s source part, the one the
            embedded hippocampus model and the ACDC source model were trained on).
        is_target: which non-source cases are target cases (default: all); e.g. ACDC-Path keeps two diagnoses.
    """
    cases = sorted(set(cases))
    excluded = {group(c) for c in reserved}
    kept = [c for c in cases if group(c) not in excluded]
    if is_source is None:
        source_set = set(split_cases(kept, (), group).source)
        is_source = source_set.__contains__
    source = tuple(c for c in kept if is_source(c))
    source_groups = {group(c) for c in source}
    dev: Dict[str, List[str]] = {}
    test: Dict[str, List[str]] = {}
    for c in kept:
        g = group(c)
        if g in source_groups or (is_target is not None and not is_target(c)):
            continue
        even = int(hashlib.sha256(f"assft-dev-test:{g}".encode()).hexdigest(), 16) % 2 == 0
        (dev if even else test).setdefault(g, []).append(c)
    return BenchmarkSplit(source=source, development=_part(dev), test=_part(test))


#: The target diagnoses of ACDC-Path: never seen by its source model.
ACDC_PATH_TARGET = ("hypertrophic", "abnormal_rv")


def acdc_path_split(cases: Iterable[str], reserved: Iterable[str] = ()) -> BenchmarkSplit:
    """ACDC-Path: source = the dilated, infarct and normal patients; development and test from the hypertrophic and
    abnormal-RV patients (by patient, reserved patients excluded)."""
    return benchmark_split(
        cases,
        reserved,
        acdc_patient,
        is_source=lambda c: acdc_diagnosis(c) not in ACDC_PATH_TARGET,
        is_target=lambda c: acdc_diagnosis(c) in ACDC_PATH_TARGET,
    )
