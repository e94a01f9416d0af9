"""What one benchmark run adapts to: a setting (anatomy, split rule, sites and their shifts), and a task (one
replicated pool of that setting on the development or test split, with its evaluation cases).

A *setting* is a named target site: the uniform controls (``hippocampus_mild`` ... ``acdc_harsh``: one shift for
every case) and the heterogeneous pools (``hippocampus_multisite``: 4 simulated sites with different shift kinds and
strengths in unequal shares; ``acdc_path``: the two ACDC diagnoses its source model never saw). A *task* is one
pool replicate of a setting on one split part: ``pool_size`` pool candidates drawn (seeded, whole groups) from the
part's pool candidates, evaluated on the part's evaluation cases, which are the same for every replicate (so the
arms' gaps pair by case and the statistics can resample pools and cases crossed, see :mod:`.stats`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .shifts import BENCHMARK_SHIFTS, ShiftConfig, ShiftKind
from .splits import (
    BenchmarkSplit,
    Grouping,
    acdc_diagnosis,
    acdc_path_split,
    acdc_patient,
    benchmark_split,
    each_case,
    read_reserved,
)

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"
#: The committed split files (one per split rule), written by ``python -m Testing.Benchmarks.harness splits``.
SPLITS_DIR = Path(__file__).resolve().parents[1] / "splits"


@dataclass(frozen=True)
class Anatomy:
    """A data collection with its split rule and the source model trained on its source part.

    Attributes:
        name: key of :data:`ANATOMIES` and of the committed split file.
        data: folder with ``imagesTr``, ``labelsTr``, ``reserved.txt``.
        group: the unit a split never divides.
        model: the source model (``resolve_card`` spec): ``"default"`` or a model folder.
        make_model: the command that trains ``model`` when it is missing.
        splitter: ``(cases, reserved) -> BenchmarkSplit``.
    """

    name: str
    data: Path
    group: Grouping
    model: str
    make_model: str
    splitter: Callable[[Sequence[str], Sequence[str]], BenchmarkSplit]

    def cases(self) -> List[str]:
        images = self.data / "imagesTr"
        if not images.is_dir():
            raise FileNotFoundError(
                f"{images} is missing: the {self.name} benchmark needs the shared data "
                f"(../shared/data/{self.data.name})"
            )
        return sorted(p.name[: -len(".nii.gz")] for p in images.glob("*.nii.gz"))

    def reserved(self) -> Tuple[str, ...]:
        reserved = read_reserved(self.data / "reserved.txt")
        if not reserved:
            raise ValueError(f"{self.data / 'reserved.txt'} lists no case; it must list the reserved cases")
        return reserved

    def split(self) -> BenchmarkSplit:
        return self.splitter(self.cases(), self.reserved())


ACDC_SOURCE_MODEL = "~/.cache/assft/acdc-source"
ACDC_PATH_SOURCE_MODEL = "~/.cache/assft/acdc-path-source"

ANATOMIES: Dict[str, Anatomy] = {
    "hippocampus": Anatomy(
        "hippocampus",
        SHARED_DATA / "hippocampus",
        each_case,
        "default",
        "(embedded)",
        lambda cases, reserved: benchmark_split(cases, reserved, each_case),
    ),
    "acdc": Anatomy(
        "acdc",
        SHARED_DATA / "acdc",
        acdc_patient,
        ACDC_SOURCE_MODEL,
        "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py",
        lambda cases, reserved: benchmark_split(cases, reserved, acdc_patient),
    ),
    "acdc_path": Anatomy(
        "acdc_path",
        SHARED_DATA / "acdc",
        acdc_patient,
        ACDC_PATH_SOURCE_MODEL,
        "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py "
        "--split acdc_path --out ~/.cache/assft/acdc-path-source",
        acdc_path_split,
    ),
}


@dataclass(frozen=True)
class Site:
    """One simulated site of a setting: its shift (``None`` = the images as stored) and its share of the cases."""

    name: str
    shift: Optional[ShiftConfig]
    share: float = 1.0

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "shift": None if self.shift is None else self.shift.to_dict(), "share": self.share}


@dataclass(frozen=True)
class Setting:
    """A named target site of the benchmark.

    Attributes:
        name: key of :data:`SETTINGS`.
        anatomy: key of :data:`ANATOMIES`.
        sites: the simulated sites; a case's site is fixed by a hash of its group (unequal ``share``s).
        pool_size: pool candidates per replicate (``0`` = all of the part's candidates).
        groups: what the worst-group Dice is taken over: ``"site"``, ``"diagnosis"`` or ``""`` (uniform control).
        heterogeneous: a setting where choosing should matter (the issue's hetero goals).
    """

    name: str
    anatomy: str
    sites: Tuple[Site, ...]
    pool_size: int
    groups: str = ""
    heterogeneous: bool = False

    def site_of(self, case: str) -> Site:
        """The site of ``case`` (every case of one group at the same site)."""
        if len(self.sites) == 1:
            return self.sites[0]
        group = ANATOMIES[self.anatomy].group(case)
        u = int(hashlib.sha256(f"assft-site:{self.name}:{group}".encode()).hexdigest()[:15], 16) / 16**15
        total = sum(s.share for s in self.sites)
        edge = 0.0
        for site in self.sites:
            edge += site.share / total
            if u < edge:
                return site
        return self.sites[-1]

    def group_of(self, case: str) -> str:
        """The group of ``case`` for the worst-group Dice (``"all"`` in a uniform control)."""
        if self.groups == "site":
            return self.site_of(case).name
        if self.groups == "diagnosis":
            return acdc_diagnosis(case)
        return "all"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "anatomy": self.anatomy,
            "sites": [s.to_dict() for s in self.sites],
            "pool_size": self.pool_size,
            "groups": self.groups,
            "heterogeneous": self.heterogeneous,
        }


def _uniform(name: str, anatomy: str, severity: str, pool_size: int) -> Setting:
    return Setting(name, anatomy, (Site(severity, BENCHMARK_SHIFTS[anatomy][severity]),), pool_size)


#: The benchmark's settings. Pool sizes fit the development part's pool candidates (hippocampus 40, ACDC 30
#: volumes, ACDC-Path 22): a replicate draws ``pool_size`` of them, so replicates overlap but differ. The multi-site
#: pool draws 30 of the 40 candidates too (below the issue's 60-90: the hippocampus has 131 non-source,
#: non-reserved cases for two parts, each with evaluation cases); with every candidate in every replicate, the
#: replicates were one pool five times and a deterministic query one labelled set.
SETTINGS: Dict[str, Setting] = {
    "hippocampus_mild": _uniform("hippocampus_mild", "hippocampus", "mild", 30),
    "hippocampus_harsh": _uniform("hippocampus_harsh", "hippocampus", "harsh", 30),
    "acdc_mild": _uniform("acdc_mild", "acdc", "mild", 24),
    "acdc_harsh": _uniform("acdc_harsh", "acdc", "harsh", 24),
    # four scanners in unequal shares, each a different kind and strength of shift
    "hippocampus_multisite": Setting(
        "hippocampus_multisite",
        "hippocampus",
        (
            Site("scanner_mild", ShiftConfig(ShiftKind.SCANNER, 0.3, seed=1), 0.5),
            Site("gamma_strong", ShiftConfig(ShiftKind.GAMMA, 0.9, seed=2), 0.25),
            Site("bias_noise_harsh", ShiftConfig(ShiftKind.SCANNER, 0.8, seed=3), 0.15),
            Site("thick_slices", ShiftConfig(ShiftKind.BLUR, 0.9, seed=4), 0.10),
        ),
        pool_size=30,
        groups="site",
        heterogeneous=True,
    ),
    # the diagnoses the source model never saw, images as stored (a scanner shift can be added as a second site
    # list later; the pathology is the shift here)
    "acdc_path": Setting(
        "acdc_path", "acdc_path", (Site("as_stored", None),), pool_size=16, groups="diagnosis", heterogeneous=True
    ),
    # the same with ACDC's mild scanner shift on top (not in the default profiles; name it with --settings)
    "acdc_path_scanner": Setting(
        "acdc_path_scanner",
        "acdc_path",
        (Site("scanner_mild", BENCHMARK_SHIFTS["acdc"]["mild"]),),
        pool_size=16,
        groups="diagnosis",
        heterogeneous=True,
    ),
}


def setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; known: {sorted(SETTINGS)}")
    return SETTINGS[name]


@dataclass(frozen=True)
class Task:
    """One pool replicate of a setting on one split part.

    Attributes:
        setting: the setting.
        split: ``"development"`` or ``"test"``.
        replicate: pool replicate index (its seed).
        pool: case ids offered for labelling, sorted.
        eval: evaluation case ids (the same for every replicate of the part), sorted.
        model: the source model's ``resolve_card`` spec.
        data: the anatomy's data folder.
    """

    setting: Setting
    split: str
    replicate: int
    pool: Tuple[str, ...]
    eval: Tuple[str, ...]
    model: str
    data: Path

    @property
    def key(self) -> str:
        return f"{self.setting.name}/{self.split}/pool{self.replicate}"

    def clusters(self) -> List[str]:
        """The resampling cluster of each evaluation case (ACDC: the patient)."""
        group = ANATOMIES[self.setting.anatomy].group
        return [group(c) for c in self.eval]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "setting": self.setting.to_dict(),
            "split": self.split,
            "replicate": self.replicate,
            "pool": list(self.pool),
            "eval": list(self.eval),
            "model": self.model,
            "data": str(self.data),
        }


def pool_replicate(candidates: Sequence[str], size: int, replicate: int, group: Grouping) -> Tuple[str, ...]:
    """``size`` cases of ``candidates`` drawn without replacement by whole groups, seeded by ``replicate``
    (all of them when ``size`` is 0 or not smaller); a group that would overshoot ``size`` is skipped."""
    candidates = sorted(candidates)
    if not size or size >= len(candidates):
        return tuple(candidates)
    groups: Dict[str, List[str]] = {}
    for c in candidates:
        groups.setdefault(group(c), []).append(c)
    order = np.random.default_rng([replicate, 23]).permutation(sorted(groups))
    chosen: List[str] = []
    for g in order:
        if len(chosen) + len(groups[g]) <= size:
            chosen += groups[g]
        if len(chosen) == size:
            break
    return tuple(sorted(chosen))


def leave_one_group_out(candidates: Sequence[str], replicate: int, group: Grouping) -> Tuple[str, ...]:
    """``candidates`` without one group: replicate ``r`` leaves out the ``r``-th group of a fixed shuffle, so that
    as many replicates as groups all differ (sorted)."""
    groups = sorted({group(c) for c in candidates})
    left_out = np.random.default_rng(23).permutation(groups)[replicate % len(groups)]
    return tuple(sorted(c for c in candidates if group(c) != left_out))


def make_task(
    setting_name: str,
    split: str,
    replicate: int,
    *,
    pool_size: Optional[int] = None,
    eval_size: Optional[int] = None,
    model: Optional[str] = None,
    split_of: Optional[BenchmarkSplit] = None,
) -> Task:
    """The task of ``replicate`` of a setting on ``split`` (``development`` or ``test``). A part with no more pool
    candidates than the pool size (ACDC-Path's test part: 16, eight patients) gives replicates that each leave out
    another group (:func:`leave_one_group_out`), so that its replicates differ (there: 14 cases, seven patients).

    Args:
        pool_size, eval_size: override the setting's pool size / keep only the first evaluation cases (whole
            groups; smoke runs).
        model: override the anatomy's source model.
        split_of: the anatomy's split (default: computed from the data, which must match the committed file).
    """
    chosen = setting(setting_name)
    anatomy = ANATOMIES[chosen.anatomy]
    parts = split_of if split_of is not None else anatomy.split()
    part = parts.part(split)
    size = chosen.pool_size if pool_size is None else pool_size
    if size and size >= len(part.pool):  # every replicate would be the whole part, one pool five times
        pool = leave_one_group_out(part.pool, replicate, anatomy.group)
    else:
        pool = pool_replicate(part.pool, size, replicate, anatomy.group)
    evaluation = list(part.eval)
    if eval_size:
        evaluation = list(pool_replicate(part.eval, eval_size, 0, anatomy.group))
    reserved = set(anatomy.reserved())
    leaked = reserved & (set(pool) | set(evaluation))
    if leaked:  # the split already drops them; this guards the rule itself
        raise RuntimeError(f"reserved cases {sorted(leaked)} reached the benchmark task")
    return Task(
        setting=chosen,
        split=split,
        replicate=replicate,
        pool=pool,
        eval=tuple(sorted(evaluation)),
        model=model or anatomy.model,
        data=anatomy.data,
    )
