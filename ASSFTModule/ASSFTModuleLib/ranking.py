"""Read the engine's ``ranking.json`` and show it as a table node (one row per volume).

The file is read and checked by the engine's own reader (:func:`ASSFTActive.jobs.read_ranking_file`, the one
ranking schema); this module only turns its entries into table rows. The table holds everything needed to act on a
row (case id, volume node ID, entropy map, regions and prediction files), so a saved scene keeps working without
the job folder's ``ranking.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Collection, Dict, Optional, Tuple

import vtk

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import RankingEntry, read_ranking_file

from .errors import ResultFormatError
from .records import CaseState, RankingRow, RankingRows

RANKING_ROLE = "ranking"
ROLE_ATTRIBUTE = "ASSFT.Role"

COLUMN_VOLUME = "Volume"
COLUMN_DKD = "DKD"
COLUMN_ASD = "ASD"
COLUMN_SCORE = "Score"
COLUMN_RANK = "Rank"
COLUMN_STATE = "State"
COLUMN_CASE = "Case ID"
COLUMN_NODE = "Volume node ID"
COLUMN_SELECTED = "Selected"
COLUMN_IMAGE = "Image"
COLUMN_ENTROPY = "Entropy map"
COLUMN_REGIONS = "Regions"
COLUMN_PREDICTION = "Prediction"
COLUMN_WHY = "Why"
COLUMN_WRONG = "Likely wrong"
COLUMN_OOD = "Out of distribution"

#: Columns shown to the user, in order. "Likely wrong" is the second list of ``ranking.json`` ("where the model is
#: probably wrong", 1 = most likely wrong); its header tooltip states the measured correlation.
VISIBLE_COLUMNS = (
    COLUMN_VOLUME,
    COLUMN_DKD,
    COLUMN_ASD,
    COLUMN_SCORE,
    COLUMN_RANK,
    COLUMN_STATE,
    COLUMN_WHY,
    COLUMN_WRONG,
)
#: Columns kept for the logic (hidden in the widget's table view).
HIDDEN_COLUMNS = (
    COLUMN_CASE,
    COLUMN_NODE,
    COLUMN_SELECTED,
    COLUMN_IMAGE,
    COLUMN_ENTROPY,
    COLUMN_REGIONS,
    COLUMN_PREDICTION,
    COLUMN_OOD,
)
#: ``RankingRow.rank`` (and the Rank cell) of a case the engine did not rank: labeled cases have ``"rank": null``.
NOT_RANKED = 0

_NUMERIC = (COLUMN_DKD, COLUMN_ASD, COLUMN_SCORE)
_INTEGER = (COLUMN_RANK, COLUMN_SELECTED, COLUMN_WRONG)


def _optionalPath(value: Optional[str], base: Path) -> Optional[Path]:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def _orNan(value: Optional[float]) -> float:
    return math.nan if value is None else value


def _row(entry: RankingEntry, base: Path, pseudoLabeled: Collection[str], wrongRanks: Dict[str, int]) -> RankingRow:
    """The table row of a ``ranking.json`` entry."""
    return RankingRow(
        caseId=entry.case_id,
        image=_optionalPath(entry.image, base),
        dkd=_orNan(entry.dkd),
        asd=_orNan(entry.asd),
        score=_orNan(entry.score),
        rank=NOT_RANKED if entry.rank is None else entry.rank,
        selected=entry.selected,
        labeled=entry.labeled,
        pseudoLabeled=entry.case_id in pseudoLabeled,
        entropyMap=_optionalPath(entry.entropy_map, base),
        regions=_optionalPath(entry.regions, base),
        prediction=_optionalPath(entry.prediction, base),
        reason=entry.reason or "",
        ood=entry.ood or "",
        wrongRank=wrongRanks.get(entry.case_id, 0),
    )


def readRanking(path, pseudoLabeled: Collection[str] = ()) -> RankingRows:
    """Read ``ranking.json``; cases ordered by rank, unranked (labeled) cases last with rank :data:`NOT_RANKED`.

    Missing numbers (``null``, e.g. the DKD of a labeled case) become NaN.

    Args:
        path: the ranking file; relative paths inside it are taken relative to its folder.
        pseudoLabeled: case ids the job used as pseudo-labeled (``pseudo_labeled`` of ``result.json``).

    Raises:
        ResultFormatError: missing file, invalid JSON, or an entry the engine's schema refuses (the message names
            the file, the case and the key).
    """
    path = Path(path)
    try:
        data = read_ranking_file(path)
    except JobError as exc:
        raise ResultFormatError(str(exc)) from exc
    pseudo = set(pseudoLabeled)
    wrong = data.probably_wrong
    wrongRanks = {caseId: place for place, caseId in enumerate(wrong.cases, start=1)} if wrong else {}
    cases = [_row(entry, path.parent, pseudo, wrongRanks) for entry in data.cases]
    cases.sort(key=lambda case: (case.rank == NOT_RANKED, case.rank))  # stable: file order within equal keys
    return RankingRows(
        strategy=data.strategy,
        budget=data.budget,
        model=data.model,
        cases=tuple(cases),
        path=path,
        wrongEvidence=wrong.evidence if wrong else "",
    )


def _column(name: str, values) -> vtk.vtkAbstractArray:
    if name in _NUMERIC:
        array = vtk.vtkDoubleArray()
    elif name in _INTEGER:
        array = vtk.vtkIntArray()
    else:
        array = vtk.vtkStringArray()
    array.SetName(name)
    for value in values:
        array.InsertNextValue(value)
    return array


def writeRankingTable(
    scene,
    ranking: RankingRows,
    caseNames: Dict[str, str],
    caseNodeIds: Dict[str, str],
    labeled: Collection[str] = (),
    tableNode=None,
):
    """Write a ranking into a table node (created when ``tableNode`` is None), one row per case in rank order.

    Args:
        scene: the MRML scene.
        ranking: from :func:`readRanking`.
        caseNames: ``{case_id: display name}`` (the volume node names); the case id is shown when missing.
        caseNodeIds: ``{case_id: volume node ID}``; empty when the volume is not in the scene.
        labeled: case ids labeled in the scene now (a segmentation with a non-empty class segment).
        tableNode: table to overwrite.

    Returns:
        the ``vtkMRMLTableNode``; columns ``Volume, DKD, ASD, Score, Rank, State`` and hidden bookkeeping columns.
    """
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", "ASSFT ranking")
    rows = ranking.cases
    values = {
        COLUMN_VOLUME: [caseNames.get(c.caseId) or c.caseId for c in rows],
        COLUMN_DKD: [c.dkd for c in rows],
        COLUMN_ASD: [c.asd for c in rows],
        COLUMN_SCORE: [c.score for c in rows],
        COLUMN_RANK: [c.rank for c in rows],
        COLUMN_STATE: [CaseState.of(c.labeled or c.caseId in labeled, c.pseudoLabeled, c.selected) for c in rows],
        COLUMN_CASE: [c.caseId for c in rows],
        COLUMN_NODE: [caseNodeIds.get(c.caseId, "") for c in rows],
        COLUMN_SELECTED: [1 if c.selected else 0 for c in rows],
        COLUMN_IMAGE: [str(c.image) if c.image else "" for c in rows],
        COLUMN_ENTROPY: [str(c.entropyMap) if c.entropyMap else "" for c in rows],
        COLUMN_REGIONS: [str(c.regions) if c.regions else "" for c in rows],
        COLUMN_PREDICTION: [str(c.prediction) if c.prediction else "" for c in rows],
        COLUMN_WHY: [c.reason for c in rows],
        COLUMN_WRONG: [c.wrongRank for c in rows],
        COLUMN_OOD: [c.ood for c in rows],
    }
    wasModifying = tableNode.StartModify()
    tableNode.SetLocked(False)
    tableNode.RemoveAllColumns()
    table = tableNode.GetTable()
    for name in VISIBLE_COLUMNS + HIDDEN_COLUMNS:
        table.AddColumn(_column(name, values[name]))
    if hasattr(tableNode, "SetUseColumnTitleAsColumnHeader"):  # newer Slicer; the name-based call is deprecated there
        for name in VISIBLE_COLUMNS + HIDDEN_COLUMNS:
            tableNode.SetColumnTitle(name, name)
        tableNode.SetUseColumnTitleAsColumnHeader(True)
    else:
        tableNode.SetUseColumnNameAsColumnHeader(True)
    tableNode.SetColumnDescription(COLUMN_WHY, "why the volume was proposed, or held back")
    tableNode.SetColumnDescription(
        COLUMN_WRONG,
        "where the model is probably wrong: 1 = most likely wrong, ordered "
        "by class-balanced ASD. " + (ranking.wrongEvidence or "No measured correlation."),
    )
    tableNode.SetAttribute(ROLE_ATTRIBUTE, RANKING_ROLE)
    tableNode.SetAttribute("ASSFT.ProbablyWrongEvidence", ranking.wrongEvidence)
    tableNode.SetAttribute("ASSFT.Strategy", ranking.strategy)
    tableNode.SetAttribute("ASSFT.Budget", str(ranking.budget))
    tableNode.SetAttribute("ASSFT.Model", ranking.model)
    tableNode.SetAttribute("ASSFT.RankingPath", str(ranking.path) if ranking.path else "")
    tableNode.SetLocked(True)
    tableNode.Modified()
    tableNode.EndModify(wasModifying)
    return tableNode


def _cell(tableNode, row: int, name: str):
    column = tableNode.GetTable().GetColumnByName(name)
    if column is None:
        raise ResultFormatError(f"Table '{tableNode.GetName()}' has no column '{name}'; it is not an ASSFT ranking.")
    return column.GetValue(row)


def rankedCaseFromTable(tableNode, row: int) -> Tuple[RankingRow, str]:
    """Read row ``row`` of a ranking table back.

    Returns:
        ``(RankingRow, volume node ID)``; the node ID is empty when the volume was not in the scene.
    """
    if row < 0 or row >= tableNode.GetNumberOfRows():
        raise IndexError(f"row {row} is outside the ranking table (rows 0..{tableNode.GetNumberOfRows() - 1})")

    def pathOrNone(name: str) -> Optional[Path]:
        text = str(_cell(tableNode, row, name))
        return Path(text) if text else None

    state = str(_cell(tableNode, row, COLUMN_STATE))
    case = RankingRow(
        caseId=str(_cell(tableNode, row, COLUMN_CASE)),
        image=pathOrNone(COLUMN_IMAGE),
        dkd=float(_cell(tableNode, row, COLUMN_DKD)),
        asd=float(_cell(tableNode, row, COLUMN_ASD)),
        score=float(_cell(tableNode, row, COLUMN_SCORE)),
        rank=int(_cell(tableNode, row, COLUMN_RANK)),
        selected=bool(int(_cell(tableNode, row, COLUMN_SELECTED))),
        labeled=state == CaseState.LABELED,
        pseudoLabeled=state == CaseState.PSEUDO_LABELED,
        entropyMap=pathOrNone(COLUMN_ENTROPY),
        regions=pathOrNone(COLUMN_REGIONS),
        prediction=pathOrNone(COLUMN_PREDICTION),
        reason=_optionalCell(tableNode, row, COLUMN_WHY, ""),
        ood=_optionalCell(tableNode, row, COLUMN_OOD, ""),
        wrongRank=int(_optionalCell(tableNode, row, COLUMN_WRONG, 0)),
    )
    return case, str(_cell(tableNode, row, COLUMN_NODE))


def _optionalCell(tableNode, row: int, name: str, default):
    """A cell of a column that tables saved before it existed lack (``default`` then)."""
    column = tableNode.GetTable().GetColumnByName(name)
    return (
        default if column is None else (str(column.GetValue(row)) if isinstance(default, str) else column.GetValue(row))
    )


def tableRowOfCase(tableNode, caseId: str) -> int:
    """Row index of ``caseId`` in a ranking table, -1 when absent."""
    column = tableNode.GetTable().GetColumnByName(COLUMN_CASE)
    if column is None:
        return -1
    for row in range(column.GetNumberOfValues()):
        if column.GetValue(row) == caseId:
            return row
    return -1


def setCaseState(tableNode, caseId: str, state: str) -> None:
    """Change the State cell of one case (e.g. to ``labeled`` after annotation)."""
    if state not in CaseState.ALL:
        raise ValueError(f"unknown state {state!r}; expected one of {CaseState.ALL}")
    row = tableRowOfCase(tableNode, caseId)
    if row < 0:
        raise KeyError(caseId)
    column = tableNode.GetTable().GetColumnByName(COLUMN_STATE)
    column.SetValue(row, state)
    column.Modified()
    tableNode.Modified()
