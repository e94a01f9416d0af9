"""The Slicer ranking table shows why each volume was proposed and where the model is probably wrong (real MRML)."""

from __future__ import annotations

import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import ranking  # noqa: E402

from ASSFTActive.jobs import RankingEntry, RankingFile, write_ranking_file  # noqa: E402
from ASSFTActive.query import WrongList  # noqa: E402

EVIDENCE = "Spearman +0.69 to +0.92 with the pre-trained model's error; measured on the target pool"


def writeRanking(folder, wrong=True):
    cases = (
        RankingEntry(
            case_id="typical",
            rank=1,
            selected=True,
            labeled=False,
            asd_class_balanced=0.1,
            reason="most typical of a group of 9 similar volumes",
        ),
        RankingEntry(case_id="plain", rank=2, selected=False, labeled=False, asd_class_balanced=0.3),
        RankingEntry(
            case_id="phantom",
            rank=3,
            selected=False,
            labeled=False,
            asd_class_balanced=0.5,
            ood="out of distribution: the model marks 24 % of it as anatomy",
            reason="not proposed: out of distribution: the model marks 24 % of it as anatomy",
        ),
    )
    listed = WrongList(score="asd_class_balanced", evidence=EVIDENCE, cases=("phantom", "plain", "typical"))
    return write_ranking_file(
        folder / "ranking.json",
        RankingFile(strategy="typiclust", budget=1, model="m", cases=cases, probably_wrong=listed if wrong else None),
    )


def test_the_table_shows_the_reason_and_the_probably_wrong_place(tmp_path):
    env = slicer_scene.SlicerScene()
    data = ranking.readRanking(writeRanking(tmp_path))
    table = ranking.writeRankingTable(env.scene, data, {}, {})

    column = table.GetTable().GetColumnByName
    assert [column("Why").GetValue(r) for r in range(3)] == [
        "most typical of a group of 9 similar volumes",
        "",
        "not proposed: out of distribution: the model marks 24 % of it as anatomy",
    ]
    assert [column("Likely wrong").GetValue(r) for r in range(3)] == [3, 2, 1]
    assert "Why" in ranking.VISIBLE_COLUMNS and "Likely wrong" in ranking.VISIBLE_COLUMNS
    assert table.GetAttribute("ASSFT.ProbablyWrongEvidence") == EVIDENCE
    assert EVIDENCE in table.GetColumnDescription("Likely wrong")
    case, _ = ranking.rankedCaseFromTable(table, 2)
    assert case.ood.startswith("out of distribution") and case.wrongRank == 1


def test_a_ranking_without_the_list_shows_no_number(tmp_path):
    env = slicer_scene.SlicerScene()
    data = ranking.readRanking(writeRanking(tmp_path, wrong=False))
    table = ranking.writeRankingTable(env.scene, data, {}, {})
    assert [table.GetTable().GetColumnByName("Likely wrong").GetValue(r) for r in range(3)] == [0, 0, 0]
    assert "No measured correlation" in table.GetColumnDescription("Likely wrong")
