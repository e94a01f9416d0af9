"""The browser annotator's rows carry why each volume was proposed and its place in "where the model is probably
wrong", with the measured correlation (server side, real slicer-core MRML; no browser)."""

from __future__ import annotations

import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import ranking  # noqa: E402

from ASSFTActive.jobs import RankingEntry, RankingFile, write_ranking_file  # noqa: E402
from ASSFTActive.query import WrongList  # noqa: E402
from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402


class IdleRunner:
    def __init__(self, onEvent, onFinished):
        pass

    def isRunning(self):
        return False


def test_rows_carry_the_reason_and_the_probably_wrong_place_and_the_session_its_evidence(tmp_path):
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=tmp_path), IdleRunner)
    cases = (
        RankingEntry(case_id="a", rank=1, selected=True, labeled=False, reason="covers a group of 5 similar volumes"),
        RankingEntry(
            case_id="b",
            rank=2,
            selected=False,
            labeled=False,
            ood="out of distribution: looks like CT",
            reason="not proposed: out of distribution: looks like CT",
        ),
    )
    path = write_ranking_file(
        tmp_path / "ranking.json",
        RankingFile(
            strategy="probcover",
            budget=1,
            model="m",
            cases=cases,
            probably_wrong=WrongList(score="asd_class_balanced", evidence="Spearman +0.69 to +0.92", cases=("b", "a")),
        ),
    )
    session.parameters.rankingTable = ranking.writeRankingTable(env.scene, ranking.readRanking(path), {}, {})

    rows = session.ranking_rows()
    assert [(r["case"], r["why"], r["wrong"]) for r in rows] == [
        ("a", "covers a group of 5 similar volumes", 2),
        ("b", "not proposed: out of distribution: looks like CT", 1),
    ]
    assert rows[1]["ood"] == "out of distribution: looks like CT"
    assert session.probably_wrong_evidence() == "Spearman +0.69 to +0.92"
