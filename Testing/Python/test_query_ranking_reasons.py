"""What the annotator reads in ranking.json: a reason per proposed volume, the "where the model is probably wrong"
list with its measured correlation, and out-of-distribution volumes held back (issues 23.4 and 29.21)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from ASSFTActive.jobs import read_ranking_file
from ASSFTActive.query import RANKING_CSV_COLUMNS, RankingEntry, RankingFile, WrongList
from ASSFTActive.query.wrong import (
    ERROR_EVIDENCE_FILE,
    WRONG_SCORE,
    ErrorEvidence,
    load_error_evidence,
    probably_wrong_list,
    probably_wrong_order,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_POOL = REPO / "ASSFTActive" / "resources" / "sample" / "pool" / "images"
PHANTOM = REPO.parent / "shared" / "data" / "fixtures" / "pyradiomics" / "prostate_phantom_subvolume.nrrd"


def entry(case_id: str, rank, **kwargs) -> RankingEntry:
    return RankingEntry(
        case_id=case_id,
        rank=rank,
        selected=kwargs.pop("selected", False),
        labeled=kwargs.pop("labeled", False),
        **kwargs,
    )


def test_ranking_entries_carry_reason_ood_and_class_balanced_asd_through_json_and_csv():
    ranking = RankingFile(
        strategy="typiclust",
        budget=1,
        model="m",
        cases=(
            entry("a", 1, selected=True, reason="most typical of a group of 9 similar volumes", asd_class_balanced=0.2),
            entry("b", 2, ood="out of distribution: looks like CT", reason="not proposed: out of distribution"),
        ),
        probably_wrong=WrongList(score=WRONG_SCORE, evidence="Spearman +0.69", cases=("b", "a")),
    )
    again = RankingFile.from_dict(json.loads(json.dumps(ranking.to_dict())))
    assert again == ranking
    header, first, second = ranking.to_csv().splitlines()
    assert header.split(",")[-3:] == ["asd_class_balanced", "ood", "reason"]
    assert RANKING_CSV_COLUMNS[:9] == (
        "rank",
        "case_id",
        "selected",
        "labeled",
        "dkd",
        "asd",
        "score",
        "knowledge_divergence",
        "image",
    )  # earlier columns stay where they were
    assert first.endswith(",0.200000,,most typical of a group of 9 similar volumes")


def test_a_ranking_without_the_new_fields_still_reads():
    old = {
        "strategy": "assft",
        "budget": 1,
        "model": "m",
        "cases": [{"case_id": "a", "rank": 1, "selected": True, "labeled": False}],
    }
    ranking = RankingFile.from_dict(old)
    assert ranking.probably_wrong is None and ranking.cases[0].reason is None


def test_the_wrong_list_may_only_name_ranked_volumes():
    with pytest.raises(ValueError, match='not in "cases"'):
        RankingFile(
            strategy="assft",
            budget=0,
            model="",
            cases=(entry("a", 1),),
            probably_wrong=WrongList(score=WRONG_SCORE, evidence="", cases=("z",)),
        )


def test_probably_wrong_orders_by_descending_score_with_missing_scores_last():
    values = [("a", 0.1), ("b", math.nan), ("c", 0.4), ("d", 0.1)]
    assert [c for c, _ in probably_wrong_order(values)] == ["c", "a", "d", "b"]
    assert probably_wrong_list([("a", math.nan)]) is None  # cold start: no segmentation head, no list


def test_the_wrong_list_states_the_shipped_evidence_and_its_split():
    evidence = load_error_evidence()
    assert evidence is not None and evidence.score == WRONG_SCORE
    assert "not the development split" in evidence.summary or "development split" in evidence.split
    listed = probably_wrong_list([("a", 0.2), ("b", 0.3)])
    assert listed.cases == ("b", "a") and listed.evidence == evidence.summary


def test_without_an_evidence_file_no_number_is_shown(tmp_path):
    assert load_error_evidence(tmp_path / "absent.json") is None
    listed = probably_wrong_list([("a", 0.2)], ErrorEvidence(WRONG_SCORE, "s", "", (("x", 0.5, 10, "f"),)))
    assert listed.evidence == ""


def test_the_shipped_evidence_is_what_the_committed_benchmark_json_says():
    sys.path.insert(0, str(REPO / "Testing" / "Benchmarks"))
    from error_predictor_evidence import DEFAULT_RESULTS, RESULTS, evidence

    files = [(name, RESULTS / file) for name, file in DEFAULT_RESULTS]
    if not all(path.is_file() for _, path in files):
        pytest.skip("the committed benchmark results are not in this checkout")
    shipped = json.loads(ERROR_EVIDENCE_FILE.read_text(encoding="utf-8"))
    if any(s["source"] not in {str(p.relative_to(REPO)) for _, p in files} for s in shipped["settings"]):
        pytest.skip("the shipped evidence was made from other results files (e.g. a development split)")
    assert shipped == evidence(files).to_dict()


# ------------------------------------------------------------------------------------------- through rank_pool
@pytest.mark.skipif(not PHANTOM.is_file(), reason="../shared/data/fixtures is not available")
def test_rank_pool_writes_reasons_the_wrong_list_and_holds_back_the_phantom(tmp_path, one_thread):
    from ASSFTActive.api import rank_pool
    from ASSFTActive.query import QueryConfig
    from ASSFTActive.store import resolve_card

    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted(SAMPLE_POOL.glob("*.nii.gz"))[:4]:
        shutil.copy(image, pool / image.name)
    shutil.copy(PHANTOM, pool / PHANTOM.name)
    images = sorted(pool.iterdir())
    card = resolve_card("default")
    result = rank_pool(images, card, 2, tmp_path / "out", query=QueryConfig(strategy="asd_only"), write_outputs=False)
    ranking = read_ranking_file(result.files["ranking_json"])
    phantom = ranking.entry("prostate_phantom_subvolume")
    assert not phantom.selected and phantom.rank == 5
    assert phantom.ood.startswith("out of distribution:")
    assert phantom.reason.startswith("not proposed: out of distribution")
    chosen = [ranking.entry(c) for c in ranking.selected_ids]
    assert len(chosen) == 2 and all(c.reason.startswith("most uncertain anatomy") for c in chosen)
    wrong = ranking.probably_wrong
    assert wrong.score == WRONG_SCORE and set(wrong.cases) == {c.case_id for c in ranking.cases}
    scores = [ranking.entry(c).asd_class_balanced for c in wrong.cases]
    assert scores == sorted(scores, reverse=True)
    assert wrong.evidence == load_error_evidence().summary
    asked = rank_pool(
        images,
        card,
        1,
        tmp_path / "out2",
        query=QueryConfig(strategy="asd_only", propose_ood=True),
        write_outputs=False,
    )
    assert asked.ranking.selected_ids == ("prostate_phantom_subvolume",)  # the most uncertain, when asked for


@pytest.mark.slow
@pytest.mark.skipif(not PHANTOM.is_file(), reason="../shared/data/fixtures is not available")
def test_assft_rank_prints_each_reason_and_proposes_the_phantom_only_with_propose_ood(tmp_path):
    import subprocess

    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted(SAMPLE_POOL.glob("*.nii.gz"))[:2]:
        shutil.copy(image, pool / image.name)
    shutil.copy(PHANTOM, pool / PHANTOM.name)

    def assft(*extra):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ASSFTActive",
                "rank",
                "--images",
                str(pool),
                "--budget",
                "1",
                "--strategy",
                "asd_only",
                "--no-overlays",
                "--quiet",
                "--device",
                "cpu",
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )

    plain = assft("--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    assert "prostate_phantom_subvolume: not proposed: out of distribution" in plain.stdout
    assert "most uncertain anatomy" in plain.stdout
    asked = assft("--out", str(tmp_path / "asked"), "--propose-ood")
    assert asked.returncode == 0, asked.stderr
    assert "proposed for annotation: prostate_phantom_subvolume" in asked.stdout
