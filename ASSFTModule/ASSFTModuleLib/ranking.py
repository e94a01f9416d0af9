"""Read the engine's ``ranking.json`` and show it as a table node (one row per volume).

The table holds everything needed to act on a row (case id, volume node ID, entropy map, regions and prediction
files), so a saved scene keeps working without the job folder's ``ranking.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Collection, Dict, Optional, Tuple

import vtk

from .errors import ResultFormatError
from .records import CaseState, RankedCase, Ranking

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

#: Columns shown to the user, in order.
VISIBLE_COLUMNS = (COLUMN_VOLUME, COLUMN_DKD, COLUMN_ASD, COLUMN_SCORE, COLUMN_RANK, COLUMN_STATE)
#: Columns kept for the logic (hidden in the widget's table view).
HIDDEN_COLUMNS = (COLUMN_CASE, COLUMN_NODE, COLUMN_SELECTED, COLUMN_IMAGE, COLUMN_ENTROPY, COLUMN_REGIONS,
                  COLUMN_PREDICTION)
#: ``RankedCase.rank`` (and the Rank cell) of a case the engine did not rank: labeled cases have ``"rank": null``.
NOT_RANKED = 0

_NUMERIC = (COLUMN_DKD, COLUMN_ASD, COLUMN_SCORE)
_INTEGER = (COLUMN_RANK, COLUMN_SELECTED)


def _optionalPath(value, base: Path) -> Optional[Path]:
    if value in (None, ""):
        return None
    path = Path(str(value))
    return path if path.is_absolute() else (base / path)


def _number(entry: dict, key: str, where: str) -> float:
    value = entry.get(key)
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ResultFormatError(f"{where}: \"{key}\" is {value!r}, expected a number.") from exc


def _rank(entry: dict, where: str) -> int:
    value = entry.get("rank")
    if value is None:
        return NOT_RANKED
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ResultFormatError(f"{where}: \"rank\" is {value!r}, expected a whole number or null.") from exc


def readRanking(path, pseudoLabeled: Collection[str] = ()) -> Ranking:
    """Read ``ranking.json``; cases ordered by rank, unranked (labeled) cases last with rank :data:`NOT_RANKED`.

    Missing numbers (``null``, e.g. the DKD of a labeled case) become NaN.

    Args:
        path: the ranking file; relative paths inside it are taken relative to its folder.
        pseudoLabeled: case ids the job used as pseudo-labeled (from ``result.json``), in addition to a per-case
            ``"pseudo_labeled": true``.

    Raises:
        ResultFormatError: missing file, invalid JSON, or a case without ``case_id``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ResultFormatError(f"{path}: ranking file not found; the job did not write it.") from exc
    except (OSError, ValueError) as exc:
        raise ResultFormatError(f"{path}: cannot read the ranking ({exc}).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise ResultFormatError(f"{path}: expected an object with a \"cases\" list.")
    base = path.parent
    cases = []
    for position, entry in enumerate(data["cases"]):
        where = f"{path}, case {position}"
        if not isinstance(entry, dict) or not entry.get("case_id"):
            raise ResultFormatError(f"{where}: every case needs a \"case_id\".")
        caseId = str(entry["case_id"])
        cases.append(
            RankedCase(
                caseId=caseId,
                image=_optionalPath(entry.get("image"), base),
                dkd=_number(entry, "dkd", where),
                asd=_number(entry, "asd", where),
                score=_number(entry, "score", where),
                rank=_rank(entry, where),
                selected=bool(entry.get("selected", False)),
                labeled=bool(entry.get("labeled", False)),
                pseudoLabeled=bool(entry.get("pseudo_labeled", False)) or caseId in pseudoLabeled,
                entropyMap=_optionalPath(entry.get("entropy_map"), base),
                regions=_optionalPath(entry.get("regions"), base),
                prediction=_optionalPath(entry.get("prediction"), base),
            )
        )
    cases.sort(key=lambda case: (case.rank == NOT_RANKED, case.rank))  # stable: file order within equal keys
    return Ranking(
        strategy=str(data.get("strategy", "")),
        budget=int(data.get("budget", 0) or 0),
        model=str(data.get("model", "")),
        cases=tuple(cases),
        path=path,
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


def writeRankingTable(scene, ranking: Ranking, caseNames: Dict[str, str], caseNodeIds: Dict[str, str],
                      labeled: Collection[str] = (), tableNode=None):
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
    tableNode.SetAttribute(ROLE_ATTRIBUTE, RANKING_ROLE)
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


def rankedCaseFromTable(tableNode, row: int) -> Tuple[RankedCase, str]:
    """Read row ``row`` of a ranking table back.

    Returns:
        ``(RankedCase, volume node ID)``; the node ID is empty when the volume was not in the scene.
    """
    if row < 0 or row >= tableNode.GetNumberOfRows():
        raise IndexError(f"row {row} is outside the ranking table (rows 0..{tableNode.GetNumberOfRows() - 1})")

    def pathOrNone(name: str) -> Optional[Path]:
        text = str(_cell(tableNode, row, name))
        return Path(text) if text else None

    state = str(_cell(tableNode, row, COLUMN_STATE))
    case = RankedCase(
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
    )
    return case, str(_cell(tableNode, row, COLUMN_NODE))


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
