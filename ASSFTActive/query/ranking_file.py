"""The ranking on disk: ``ranking.json`` and ``ranking.csv``, the one schema every reader and writer shares.

A :class:`~.records.Ranking` is the in-memory result of :func:`~.selection.select`; :class:`RankingFile` is its file
form (``null`` for a score that was not computed), built by :func:`ASSFTActive.api.ranking_file`, written and read
through :func:`ASSFTActive.jobs.write_ranking_file` / :func:`ASSFTActive.jobs.read_ranking_file` (the job protocol
owns the files, this module the record). Standard library only, so the Slicer GUI reads a ranking without numpy.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from ..settings import check_record_keys, optional_number, optional_text

__all__ = ["RANKING_CSV_COLUMNS", "RankingEntry", "RankingFile", "WrongList"]


@dataclass(frozen=True)
class RankingEntry:
    """One volume of ``ranking.json`` (and one line of ``ranking.csv``).

    Attributes:
        case_id: the volume's case id (file name without suffix).
        rank: 1 = proposed first; ``None`` for a labelled volume (the engine does not rank them).
        selected: among the first ``budget`` ranks (proposed for annotation); never true for a labelled volume.
        labeled: the volume already has an expert label; its embedding anchored diversity.
        dkd, asd, score: the ranking's scores (:class:`ASSFTActive.query.RankedCase`); ``None`` when not computed
            (NaN in memory is ``None`` here: the DKD and score of a labelled volume, ASD at cold start).
        knowledge_divergence: raw KD of the volume (``None`` when not computed).
        image: the image file; entropy_map, regions, prediction: the files written for it (``None`` when not).
        reason: one line saying why the volume was proposed, or why it was held back (``None`` for the others).
        asd_class_balanced: the score of the "where the model is probably wrong" list (``None`` when not computed).
        ood: why the volume looks out of distribution for the model (``None`` when it does not).
        proposed_slices: with ``--unit slice``, the slices proposed in this volume, best first, each
            ``{"axis": k, "index": i[, "score": s]}`` on the image's own voxel grid (``None`` otherwise).
        proposed_regions: with ``--unit region``, the boxes proposed, each ``{"start": [i, j, k], "size": [a, b, c]
            [, "score": s]}`` in voxels of the image's grid (``None`` otherwise).
    """

    case_id: str
    rank: Optional[int]
    selected: bool
    labeled: bool
    dkd: Optional[float] = None
    asd: Optional[float] = None
    score: Optional[float] = None
    knowledge_divergence: Optional[float] = None
    image: Optional[str] = None
    entropy_map: Optional[str] = None
    regions: Optional[str] = None
    prediction: Optional[str] = None
    reason: Optional[str] = None
    asd_class_balanced: Optional[float] = None
    ood: Optional[str] = None
    proposed_slices: Optional[Tuple[Dict[str, Any], ...]] = None
    proposed_regions: Optional[Tuple[Dict[str, Any], ...]] = None

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id:
            raise ValueError(f'every case needs a "case_id" (a non-empty string), got {self.case_id!r}')
        where = f"case {self.case_id!r}"
        for key in ("selected", "labeled"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f'{where}: "{key}" must be true or false, got {getattr(self, key)!r}')
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f'{where}: "rank" must be a whole number >= 1 or null, got {self.rank!r}')
        if self.labeled and self.selected:
            raise ValueError(f'{where}: a labelled volume is not proposed for annotation ("selected": false)')
        if not self.labeled and self.rank is None:
            raise ValueError(f'{where}: an unlabelled volume needs a "rank"')
        for key in ("dkd", "asd", "score", "knowledge_divergence", "asd_class_balanced"):
            object.__setattr__(self, key, optional_number(getattr(self, key), f'{where}: "{key}"'))
        for key in ("image", "entropy_map", "regions", "prediction", "reason", "ood"):
            object.__setattr__(self, key, optional_text(getattr(self, key), f'{where}: "{key}"'))
        for key, required in (("proposed_slices", ("axis", "index")), ("proposed_regions", ("start", "size"))):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, _units(getattr(self, key), required, f'{where}: "{key}"'))

    def to_dict(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("proposed_slices", "proposed_regions"):  # absent unless proposed (files of --unit volume)
            if out[key] is None:
                del out[key]
            else:
                out[key] = [dict(u) for u in out[key]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "case") -> RankingEntry:
        """Build and check one entry.

        Raises:
            ValueError: unknown or missing keys, wrong types.
        """
        names = [f.name for f in fields(cls)]
        check_record_keys(
            data,
            where,
            required=("case_id", "rank", "selected", "labeled"),
            optional=[n for n in names if n not in ("case_id", "rank", "selected", "labeled")],
        )
        try:
            return cls(**dict(data))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


def _whole(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _units(units: Any, required: Tuple[str, ...], where: str) -> Tuple[Dict[str, Any], ...]:
    """Checked slice (``axis`` 0-2, ``index`` >= 0) or region (``start`` >= 0, ``size`` >= 1, three each) records."""
    if not isinstance(units, (list, tuple)):
        raise ValueError(f"{where} must be a list")
    checked = []
    for unit in units:
        if not isinstance(unit, Mapping):
            raise ValueError(f"{where}: every item must be an object, got {unit!r}")
        check_record_keys(unit, where, required=required, optional=("score",))
        if required == ("axis", "index"):
            ok = unit["axis"] in (0, 1, 2) and _whole(unit["axis"], 0) and _whole(unit["index"], 0)
        else:
            ok = (
                all(isinstance(unit[k], (list, tuple)) and len(unit[k]) == 3 for k in required)
                and all(_whole(v, 0) for v in unit["start"])
                and all(_whole(v, 1) for v in unit["size"])
            )
        if not ok:
            raise ValueError(
                f"{where}: {dict(unit)} is not a slice {{axis 0-2, index >= 0}} or a region "
                "{start [3 whole numbers >= 0], size [3 whole numbers >= 1]}"
            )
        item = {k: (list(unit[k]) if isinstance(unit[k], (list, tuple)) else unit[k]) for k in required}
        if "score" in unit:
            item["score"] = optional_number(unit["score"], f'{where}: "score"')
        checked.append(item)
    return tuple(checked)


#: Columns of ``ranking.csv``, in order.
RANKING_CSV_COLUMNS = (
    "rank",
    "case_id",
    "selected",
    "labeled",
    "dkd",
    "asd",
    "score",
    "knowledge_divergence",
    "image",
    "asd_class_balanced",
    "ood",
    "reason",
)


@dataclass(frozen=True)
class WrongList:
    """The second list of ``ranking.json``: "where the model is probably wrong" (:mod:`.wrong`).

    Attributes:
        score: the score the volumes are ordered by (``asd_class_balanced``).
        evidence: one line saying how well that score predicted the error, and on which split (from the shipped
            evidence file; empty when there is none).
        cases: every volume's case id, the most likely wrong first (volumes without the score last).
    """

    score: str
    evidence: str
    cases: Tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.score, str) or not self.score:
            raise ValueError(f'"probably_wrong": "score" must be a non-empty string, got {self.score!r}')
        if not isinstance(self.evidence, str):
            raise ValueError(f'"probably_wrong": "evidence" must be a string, got {self.evidence!r}')
        cases = tuple(self.cases)
        if not all(isinstance(c, str) and c for c in cases) or len(set(cases)) != len(cases):
            raise ValueError('"probably_wrong": "cases" must be distinct case ids')
        object.__setattr__(self, "cases", cases)

    def to_dict(self) -> Dict[str, Any]:
        return {"score": self.score, "evidence": self.evidence, "cases": list(self.cases)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WrongList:
        check_record_keys(data, '"probably_wrong"', required=("score", "evidence", "cases"), optional=())
        if not isinstance(data["cases"], (list, tuple)):
            raise ValueError('"probably_wrong": "cases" must be a list')
        return cls(score=data["score"], evidence=data["evidence"], cases=tuple(data["cases"]))


def _checked_cases(cases: Any, budget: int) -> Tuple[RankingEntry, ...]:
    """The cases of a ranking: records with distinct ids, ranks 1..n, at most ``budget`` selected."""
    cases = tuple(cases)
    if not all(isinstance(c, RankingEntry) for c in cases):
        raise ValueError('"cases" must hold RankingEntry records')
    ids = [c.case_id for c in cases]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"case id(s) {repeated} appear more than once")
    ranks = sorted(c.rank for c in cases if c.rank is not None)
    if ranks != list(range(1, len(ranks) + 1)):
        raise ValueError(f"the ranks must be 1..{len(ranks)}, got {ranks}")
    if sum(c.selected for c in cases) > budget:
        raise ValueError(f"more volumes are selected than the budget {budget}")
    return cases


@dataclass(frozen=True)
class RankingFile:
    """``ranking.json``: the one schema of a ranking on disk, written by the engine (:func:`ASSFTActive.api.rank_pool`
    and the worker) and read by the Slicer module and scripts through :func:`ASSFTActive.jobs.read_ranking_file`.

    Attributes:
        strategy: the selection strategy (a :class:`ASSFTActive.query.Strategy` value).
        budget: volumes requested.
        model: the model card's path (its name when it has no file).
        cases: the ranked volumes in rank order, then the labelled ones (``rank`` null).
        probably_wrong: the "where the model is probably wrong" list over the same volumes (``None`` in rankings
            written before it existed, or at cold start without a segmentation head).
        unit: what ``budget`` counts and what is proposed: ``volume`` (``selected`` volumes), ``slice`` or
            ``region`` (each case's ``proposed_slices`` / ``proposed_regions``; ``selected`` marks the volumes
            that hold one).
        asd_unavailable: why no volume has an ASD (``asd`` null): at cold start, when the model holds encoder
            weights only and has no trained segmentation head, the volumes are ranked by DKD's diversity alone and
            this says so; ``None`` (absent from the file) when ASD was computed.
    """

    strategy: str
    budget: int
    model: str
    cases: Tuple[RankingEntry, ...]
    probably_wrong: Optional[WrongList] = None
    unit: str = "volume"
    asd_unavailable: Optional[str] = None

    def __post_init__(self) -> None:
        if self.unit not in ("volume", "slice", "region"):
            raise ValueError(f'"unit" must be volume, slice or region, got {self.unit!r}')
        if not isinstance(self.strategy, str) or not self.strategy:
            raise ValueError(f'"strategy" must be a non-empty string, got {self.strategy!r}')
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f'"budget" must be a whole number >= 0, got {self.budget!r}')
        if not isinstance(self.model, str):
            raise ValueError(f'"model" must be a string, got {self.model!r}')
        if self.asd_unavailable is not None and (not isinstance(self.asd_unavailable, str) or not self.asd_unavailable):
            raise ValueError(f'"asd_unavailable" must be a non-empty string or absent, got {self.asd_unavailable!r}')
        cases = _checked_cases(self.cases, self.budget)
        ids = [c.case_id for c in cases]
        if self.probably_wrong is not None:
            if not isinstance(self.probably_wrong, WrongList):
                raise ValueError('"probably_wrong" must be a WrongList record')
            unknown = sorted(set(self.probably_wrong.cases) - set(ids))
            if unknown:
                raise ValueError(f'"probably_wrong" names case id(s) {unknown} that are not in "cases"')
        object.__setattr__(self, "cases", cases)

    @property
    def selected_ids(self) -> Tuple[str, ...]:
        """Case ids proposed for annotation, in rank order."""
        return tuple(c.case_id for c in sorted(self.cases, key=lambda c: c.rank or 0) if c.selected)

    def entry(self, case_id: str) -> RankingEntry:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)

    def to_dict(self) -> Dict[str, Any]:
        out = {
            "strategy": self.strategy,
            "budget": self.budget,
            "model": self.model,
            "cases": [case.to_dict() for case in self.cases],
        }
        if self.probably_wrong is not None:
            out["probably_wrong"] = self.probably_wrong.to_dict()
        if self.unit != "volume":
            out["unit"] = self.unit
        if self.asd_unavailable is not None:  # absent when ASD was computed (files written before are unchanged)
            out["asd_unavailable"] = self.asd_unavailable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankingFile:
        """Build and check a ranking.

        Raises:
            ValueError: unknown or missing keys, wrong types, inconsistent ranks (the message names the case).
        """
        check_record_keys(
            data,
            "a ranking",
            required=("strategy", "budget", "cases"),
            optional=("model", "probably_wrong", "unit", "asd_unavailable"),
        )
        if not isinstance(data["cases"], (list, tuple)):
            raise ValueError('"cases" must be a list')
        cases = tuple(RankingEntry.from_dict(row, where=f"case {index}") for index, row in enumerate(data["cases"]))
        wrong = data.get("probably_wrong")
        return cls(
            strategy=data["strategy"],
            budget=data["budget"],
            model=data.get("model", ""),
            cases=cases,
            probably_wrong=None if wrong is None else WrongList.from_dict(wrong),
            unit=data.get("unit", "volume"),
            asd_unavailable=data.get("asd_unavailable"),
        )

    def to_csv(self) -> str:
        """``ranking.csv``: :data:`RANKING_CSV_COLUMNS`, numbers with 6 decimals, ``None`` as an empty cell."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(RANKING_CSV_COLUMNS)
        for case in self.cases:
            row = case.to_dict()
            writer.writerow(
                [
                    f"{row[k]:.6f}" if isinstance(row[k], float) else ("" if row[k] is None else row[k])
                    for k in RANKING_CSV_COLUMNS
                ]
            )
        return buffer.getvalue()
