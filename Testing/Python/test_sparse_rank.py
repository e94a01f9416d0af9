"""`assft rank --unit slice|region` as a user types it: a budget of slices or regions spread over the pool."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SHAPE, make_tiny_card, worker_env, write_dataset

from ASSFTActive.api import rank_pool
from ASSFTActive.cards import load_card
from ASSFTActive.errors import InputError
from ASSFTActive.io import read_volume
from ASSFTActive.jobs import read_ranking_file
from ASSFTActive.partial import annotated_slices_mask, write_partial_label
from ASSFTActive.query import QueryConfig
from ASSFTActive.query.ranking_file import RankingEntry, RankingFile
from ASSFTActive.query.units import UnitConfig


def assft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ASSFTActive", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=worker_env(),
    )


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse_pool")
    images, labels = write_dataset(root, count=4, labeled=1)
    return root, make_tiny_card(root / "model", seed=3)


def test_rank_unit_slice_spreads_the_slice_budget_over_the_unlabelled_volumes(pool, tmp_path):
    root, card = pool
    out = tmp_path / "out"
    done = assft(
        "rank",
        "--images",
        str(root / "images"),
        "--labels",
        str(root / "labels"),
        "--model",
        str(card),
        "--budget",
        "5",
        "--unit",
        "slice",
        "--min-gap",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--no-overlays",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads((out / "ranking.json").read_text())
    assert payload["unit"] == "slice" and payload["budget"] == 5
    record = read_ranking_file(out / "ranking.json")
    by_case = {c.case_id: c for c in record.cases}
    assert by_case["case_000"].labeled and by_case["case_000"].proposed_slices is None
    slices = {c.case_id: c.proposed_slices for c in record.cases if not c.labeled}
    assert sum(len(s) for s in slices.values()) == 5
    cap = math.ceil(5 / 3) + 1
    for case, items in slices.items():
        assert len(items) <= cap
        assert {s["axis"] for s in items} <= {2}  # the 1.5 mm axis of the synthetic volumes
        assert all(0 <= s["index"] < SHAPE[2] for s in items)
        indices = sorted(s["index"] for s in items)
        assert all(b - a >= 2 for a, b in zip(indices, indices[1:]))
        assert by_case[case].selected == bool(items)  # selected = the volume holds a proposal
    assert "proposed 5 slice(s)" in done.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["units"]["unit"] == "slice" and config["units"]["min_gap"] == 2


def test_rank_unit_region_proposes_boxes_of_the_stated_size_inside_each_volume(pool, tmp_path):
    root, card_path = pool
    images = sorted((root / "images").iterdir())
    result = rank_pool(
        images,
        load_card(card_path),
        3,
        tmp_path / "out",
        device=torch.device("cpu"),
        write_outputs=False,
        units=UnitConfig(unit="region", region_size=(8, 8, 8)),
    )
    assert len(result.proposed) == 3
    record = read_ranking_file(tmp_path / "out" / "ranking.json")
    regions = [r for c in record.cases for r in (c.proposed_regions or ())]
    assert len(regions) == 3 and all(r["size"] == [8, 8, 8] for r in regions)
    assert all(0 <= a and a + z <= n for r in regions for a, z, n in zip(r["start"], r["size"], SHAPE))
    scores = [u.score for u in result.proposed]
    assert scores == sorted(scores, reverse=True)


def test_rank_unit_slice_with_several_rounds_is_refused(pool, tmp_path):
    root, card_path = pool
    with pytest.raises(InputError, match="--rounds"):
        rank_pool(
            sorted((root / "images").iterdir()),
            load_card(card_path),
            3,
            tmp_path / "out",
            device=torch.device("cpu"),
            query=QueryConfig(rounds=2),
            units=UnitConfig(unit="slice"),
        )


def test_ranking_file_refuses_a_slice_outside_the_three_axes():
    with pytest.raises(ValueError, match="proposed_slices"):
        RankingEntry(case_id="a", rank=1, selected=True, labeled=False, proposed_slices=[{"axis": 3, "index": 0}])
    entry = RankingEntry(
        case_id="a", rank=1, selected=True, labeled=False, proposed_slices=[{"axis": 2, "index": 4, "score": 0.5}]
    )
    again = RankingFile.from_dict(RankingFile("assft", 1, "m", (entry,), unit="slice").to_dict())
    assert again.unit == "slice" and again.cases[0].proposed_slices == ({"axis": 2, "index": 4, "score": 0.5},)
    plain = RankingEntry(case_id="b", rank=1, selected=True, labeled=False).to_dict()
    assert "proposed_slices" not in plain and "proposed_regions" not in plain  # --unit volume files as before


def test_a_label_file_with_no_annotated_voxel_leaves_its_volume_in_the_pool(pool, tmp_path):
    root, card = pool
    labels = tmp_path / "labels"
    image = read_volume(root / "images" / "case_001.nii.gz")
    annotated = annotated_slices_mask(image.shape, [{"axis": 2, "index": 5}])
    write_partial_label(np.ones(image.shape, np.uint8), annotated, image, labels / "case_001.nii.gz")
    write_partial_label(np.zeros(image.shape, np.uint8), np.zeros(image.shape, bool), image, labels / "case_002.nii.gz")
    out = tmp_path / "out"
    done = assft(
        "rank",
        "--images",
        str(root / "images"),
        "--labels",
        str(labels),
        "--model",
        str(card),
        "--budget",
        "2",
        "--unit",
        "slice",
        "--out",
        str(out),
        "--quiet",
        "--no-overlays",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr
    cases = {c.case_id: c for c in read_ranking_file(out / "ranking.json").cases}
    assert cases["case_001"].labeled and not cases["case_002"].labeled
    assert "case_002 is not a labelled volume" in done.stderr
