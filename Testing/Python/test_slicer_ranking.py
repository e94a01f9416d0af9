"""ranking.json -> table node (columns, values, states) and the DKD-against-ASD scatter chart, on real MRML."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import plot, ranking  # noqa: E402
from ASSFTModuleLib.errors import ResultFormatError  # noqa: E402
from ASSFTModuleLib.records import CaseState  # noqa: E402

from ASSFTActive.jobs import RankingEntry, RankingFile, write_ranking_file  # noqa: E402


def writeRanking(folder):
    """A ranking as the engine writes it (its own record and writer), entries out of rank order on purpose."""
    cases = [
        RankingEntry(
            case_id="c3",
            image=str(folder / "c3.nrrd"),
            dkd=0.9,
            asd=0.5,
            score=0.95,
            rank=1,
            selected=True,
            labeled=False,
            entropy_map=str(folder / "c3_entropy.nii.gz"),
            regions="c3_regions.json",
        ),
        RankingEntry(
            case_id="c1",
            image=str(folder / "c1.nrrd"),
            dkd=0.4,
            asd=0.8,
            score=0.7,
            rank=2,
            selected=True,
            labeled=False,
        ),
        RankingEntry(
            case_id="c2",
            image=str(folder / "c2.nrrd"),
            dkd=0.2,
            asd=0.1,
            score=0.1,
            rank=3,
            selected=False,
            labeled=True,
        ),
        RankingEntry(
            case_id="c4",
            image=str(folder / "c4.nrrd"),
            dkd=0.1,
            asd=None,
            score=0.05,
            rank=4,
            selected=False,
            labeled=False,
        ),
        RankingEntry(
            case_id="c5",
            image=str(folder / "c5.nrrd"),
            dkd=0.05,
            asd=0.02,
            score=0.01,
            rank=5,
            selected=False,
            labeled=False,
        ),
    ]
    # written out of order on purpose: the reader orders by rank
    return write_ranking_file(
        folder / "ranking.json",
        RankingFile(strategy="assft", budget=2, model="card.json", cases=tuple(reversed(cases))),
    )


def test_read_ranking_orders_by_rank_and_resolves_relative_paths(tmp_path):
    result = ranking.readRanking(writeRanking(tmp_path), pseudoLabeled=["c4"])

    assert [c.caseId for c in result.cases] == ["c3", "c1", "c2", "c4", "c5"]
    assert result.strategy == "assft" and result.budget == 2
    assert result.cases[0].regions == tmp_path / "c3_regions.json"
    assert result.cases[0].prediction is None
    assert math.isnan(result.case("c4").asd)
    assert result.case("c4").pseudoLabeled and not result.case("c5").pseudoLabeled


def test_ranking_table_columns_values_and_states(tmp_path):
    env = slicer_scene.SlicerScene()
    data = ranking.readRanking(writeRanking(tmp_path), pseudoLabeled=["c4", "c5"])

    table = ranking.writeRankingTable(
        env.scene,
        data,
        caseNames={"c3": "Case three", "c1": "Case one"},
        caseNodeIds={"c3": "vtkMRMLScalarVolumeNode3"},
        labeled={"c1"},
    )

    assert table.IsA("vtkMRMLTableNode")
    assert table.GetNumberOfRows() == 5
    names = [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())]
    assert names[:6] == ["Volume", "DKD", "ASD", "Score", "Rank", "State"]
    assert set(ranking.HIDDEN_COLUMNS) <= set(names)
    column = table.GetTable().GetColumnByName
    assert [column("Volume").GetValue(r) for r in range(5)] == ["Case three", "Case one", "c2", "c4", "c5"]
    assert [column("DKD").GetValue(r) for r in range(5)] == [0.9, 0.4, 0.2, 0.1, 0.05]
    assert [column("Score").GetValue(r) for r in range(5)] == [0.95, 0.7, 0.1, 0.05, 0.01]
    assert [column("Rank").GetValue(r) for r in range(5)] == [1, 2, 3, 4, 5]
    assert [column("State").GetValue(r) for r in range(5)] == [
        CaseState.PROPOSED,
        CaseState.LABELED,
        CaseState.LABELED,
        CaseState.PSEUDO_LABELED,
        CaseState.PSEUDO_LABELED,
    ]
    assert column("DKD").IsA("vtkDoubleArray") and column("Rank").IsA("vtkIntArray")
    assert table.GetLocked()
    assert table.GetAttribute("ASSFT.Role") == "ranking"


def test_table_row_reads_back_as_the_ranked_case(tmp_path):
    env = slicer_scene.SlicerScene()
    data = ranking.readRanking(writeRanking(tmp_path))
    table = ranking.writeRankingTable(env.scene, data, {}, {"c3": "vtkMRMLScalarVolumeNode3"})

    case, nodeId = ranking.rankedCaseFromTable(table, 0)

    assert nodeId == "vtkMRMLScalarVolumeNode3"
    assert case == data.cases[0]
    assert ranking.rankedCaseFromTable(table, 1)[1] == ""
    with pytest.raises(IndexError):
        ranking.rankedCaseFromTable(table, 5)


def test_rewriting_reuses_the_table_and_state_can_change(tmp_path):
    env = slicer_scene.SlicerScene()
    data = ranking.readRanking(writeRanking(tmp_path))
    table = ranking.writeRankingTable(env.scene, data, {}, {})

    again = ranking.writeRankingTable(env.scene, data, {}, {}, tableNode=table)
    ranking.setCaseState(table, "c3", CaseState.LABELED)

    assert again is table and table.GetNumberOfColumns() == len(ranking.VISIBLE_COLUMNS + ranking.HIDDEN_COLUMNS)
    assert table.GetTable().GetColumnByName("State").GetValue(0) == CaseState.LABELED
    with pytest.raises(ValueError):
        ranking.setCaseState(table, "c3", "done")


def test_scores_chart_is_a_scatter_of_dkd_against_asd(tmp_path):
    env = slicer_scene.SlicerScene()
    table = ranking.writeRankingTable(env.scene, ranking.readRanking(writeRanking(tmp_path)), {}, {})

    chart = plot.scoresChart(env.scene, table)
    again = plot.scoresChart(env.scene, table)

    assert again is chart and chart.IsA("vtkMRMLPlotChartNode")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    for node in series:
        assert node.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
        assert node.GetXColumnName() == "ASD" and node.GetYColumnName() == "DKD"
        assert node.GetLabelColumnName() == "Volume"
    assert series[0].GetTableNode() is table
    proposed = series[1].GetTableNode()
    assert proposed.GetNumberOfRows() == 2
    assert [proposed.GetTable().GetColumnByName("DKD").GetValue(r) for r in range(2)] == [0.9, 0.4]
    assert len(env.nodes("vtkMRMLPlotSeriesNode")) == 2
    assert chart.GetXAxisTitle() == "ASD" and chart.GetYAxisTitle() == "DKD"


def test_malformed_ranking_files_say_what_is_wrong(tmp_path):
    """The engine's reader checks the file (one schema); the module passes its message on."""
    missing = tmp_path / "nope.json"
    with pytest.raises(ResultFormatError, match="not found"):
        ranking.readRanking(missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"strategy": "assft", "budget": 1, "cases": [{"dkd": 1}]}), encoding="utf-8")
    with pytest.raises(ResultFormatError, match="case_id"):
        ranking.readRanking(bad)
    worse = tmp_path / "worse.json"
    worse.write_text(
        json.dumps(
            {
                "strategy": "assft",
                "budget": 1,
                "cases": [{"case_id": "a", "rank": 1, "selected": False, "labeled": False, "dkd": "high"}],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ResultFormatError, match="dkd"):
        ranking.readRanking(worse)
    # a key the engine does not write (a per-case "pseudo_labeled" once read here) is refused, not ignored
    stray = tmp_path / "stray.json"
    stray.write_text(
        json.dumps(
            {
                "strategy": "assft",
                "budget": 1,
                "cases": [{"case_id": "a", "rank": 1, "selected": False, "labeled": False, "pseudo_labeled": True}],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ResultFormatError, match="pseudo_labeled"):
        ranking.readRanking(stray)


def test_the_module_reads_rankings_through_the_engine_reader(tmp_path, monkeypatch):
    """No second validation in the module: what the engine's reader returns is what the table shows."""
    import ASSFTActive.jobs as engineJobs

    calls = []
    original = engineJobs.read_ranking_file

    def spy(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(ranking, "read_ranking_file", spy)
    path = writeRanking(tmp_path)
    data = ranking.readRanking(path)
    assert calls == [path]
    assert sorted(c.caseId for c in data.cases) == sorted(e.case_id for e in original(path).cases)
    source = Path(ranking.__file__).read_text()
    assert "json.loads" not in source


def test_labeled_cases_without_rank_or_scores_come_last(tmp_path):
    path = tmp_path / "ranking.json"
    path.write_text(
        json.dumps(
            {
                "strategy": "assft",
                "budget": 1,
                "model": "m",
                "cases": [
                    {
                        "case_id": "lab",
                        "image": "lab.nrrd",
                        "dkd": None,
                        "asd": 0.3,
                        "score": None,
                        "rank": None,
                        "selected": False,
                        "labeled": True,
                    },
                    {
                        "case_id": "u2",
                        "dkd": 0.1,
                        "asd": 0.2,
                        "score": 0.1,
                        "rank": 2,
                        "selected": False,
                        "labeled": False,
                    },
                    {
                        "case_id": "u1",
                        "dkd": 0.5,
                        "asd": 0.4,
                        "score": 0.6,
                        "rank": 1,
                        "selected": True,
                        "labeled": False,
                    },
                ],
            }
        )
    )
    env = slicer_scene.SlicerScene()

    data = ranking.readRanking(path)
    table = ranking.writeRankingTable(env.scene, data, {}, {})

    assert [c.caseId for c in data.cases] == ["u1", "u2", "lab"]
    assert data.case("lab").rank == ranking.NOT_RANKED and math.isnan(data.case("lab").dkd)
    column = table.GetTable().GetColumnByName
    assert [column("Rank").GetValue(r) for r in range(3)] == [1, 2, 0]
    assert column("State").GetValue(2) == CaseState.LABELED
    assert ranking.rankedCaseFromTable(table, 2)[0].rank == ranking.NOT_RANKED
