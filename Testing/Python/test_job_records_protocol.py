"""The job protocol's typed records (``ASSFTActive.jobs``): ``result.json`` as :class:`JobResult` and ``ranking.json``
as :class:`RankingFile`, one schema each, written by the engine and read back through the same code.

Each test guards a divergence that existed before: a result dict built by hand with keys duplicated in ``metrics``,
a ranking in three JSON schemas (``query/records.py``, ``api.py``, the Slicer module) plus a fourth in the module's
self-test, distributed ranking that skipped the staging, the device default written five times, CLI choices
re-listed as strings.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from conftest import make_tiny_card

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import (
    RANKING_CSV_COLUMNS,
    JobResult,
    RankingEntry,
    RankingFile,
    read_job_result,
    read_ranking_file,
    write_ranking_file,
    write_result,
)

REPO = Path(__file__).resolve().parents[2]


def entry(case_id: str, rank, **changes) -> RankingEntry:
    values = dict(case_id=case_id, rank=rank, selected=False, labeled=rank is None, dkd=0.5, asd=0.25, score=0.5)
    values.update(changes)
    return RankingEntry(**values)


def adapt_result(**changes) -> JobResult:
    values = dict(
        status="done",
        kind="adapt",
        model_card="/store/site/v1/card.json",
        ranking="/job/ranking.json",
        predictions={"a": "/job/predictions/a.nii.gz"},
        pseudo_labeled=("a",),
        activated=True,
        activation={"activate": True, "reason": "cross-validated Dice improved"},
        metrics={"version": "v1"},
    )
    values.update(changes)
    return JobResult(**values)


# ---------------------------------------------------------------------------------------------------- result.json
def test_a_result_round_trips_through_its_file_and_each_key_is_written_once(tmp_path):
    result = adapt_result()
    write_result(tmp_path, result)
    data = json.loads((tmp_path / "result.json").read_text())

    assert read_job_result(tmp_path) == result
    assert set(data) == {
        "status",
        "kind",
        "model_card",
        "ranking",
        "predictions",
        "pseudo_labeled",
        "activated",
        "activation",
        "metrics",
    }
    assert data["activated"] is True and data["pseudo_labeled"] == ["a"]
    assert result.activation_reason == "cross-validated Dice improved"


def test_a_rank_result_has_no_activation_and_a_failure_only_status_and_message(tmp_path):
    rank = JobResult(status="done", kind="rank", model_card="card.json", ranking="ranking.json")
    assert "activated" not in rank.to_dict() and "activation" not in rank.to_dict()
    assert JobResult.from_dict(rank.to_dict()) == rank
    cancelled = JobResult(status="cancelled", message="cancelled")
    assert cancelled.to_dict() == {"status": "cancelled", "message": "cancelled"} and not cancelled.done
    with pytest.raises(ValueError, match="only an adapt or sfr job"):
        JobResult(status="done", kind="rank", activated=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activated": None}, "missing key(s) ['activated']"),
        ({"pseudo_labeled": None}, "missing key(s) ['pseudo_labeled']"),
        ({"pseudo_labeled": "a"}, "pseudo_labeled"),
        ({"predictions": ["a"]}, "predictions"),
        ({"status": "finished"}, "status"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
    ],
)
def test_a_malformed_result_file_is_refused_with_the_key_named(tmp_path, change, message):
    data = adapt_result().to_dict()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(JobError, match=re.escape(message)):
        read_job_result(tmp_path)


def test_no_result_file_reads_as_none_and_relative_paths_resolve_against_the_job(tmp_path):
    assert read_job_result(tmp_path) is None
    assert JobResult.path("predictions/a.nii.gz", tmp_path) == tmp_path / "predictions" / "a.nii.gz"
    assert JobResult.path("/abs/a.nii.gz", tmp_path) == Path("/abs/a.nii.gz") and JobResult.path(None, tmp_path) is None


@dataclass
class FakeAdaptOutcome:
    """What ``adapt_model`` returns, as far as the worker reads it."""

    card_path: Path
    version: str = "v1"
    activated: bool = True
    summary: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return self.summary


def test_the_worker_builds_the_adapt_result_as_a_record_without_copies_in_metrics(tmp_path, monkeypatch):
    """The worker's result used to repeat ``activated`` and ``pseudo_labeled`` inside ``metrics``."""
    import ASSFTActive.finetune.adapt as adapt
    from ASSFTActive import worker
    from ASSFTActive.jobs import JobSpec

    pseudo = [{"case_id": "b", "kept": True}, {"case_id": "c", "kept": False}]
    summary = {
        "metrics": {"dice_after": 0.8},
        "labeled": ["a"],
        "skipped": [],
        "pseudo": pseudo,
        "seconds": 1.0,
        "resumed_from": None,
        "activation": {"activate": True, "reason": "guard off"},
        "predictions": {"b": str(tmp_path / "b.nii.gz")},
    }
    outcome = FakeAdaptOutcome(card_path=tmp_path / "card.json", summary=summary)
    monkeypatch.setattr(adapt, "run_adaptation", lambda *args, **kwargs: outcome)
    spec = JobSpec(
        kind="adapt",
        images={"a": "/a.nii.gz", "b": "/b.nii.gz", "c": "/c.nii.gz"},
        labels={"a": "/la.nii.gz"},
        store=str(tmp_path / "store"),
    )

    class Ctx:
        is_main = True

    result = worker._run_adaptation(spec, tmp_path, Ctx(), channel=None)

    assert isinstance(result, JobResult)
    assert result.pseudo_labeled == ("b",) and result.activated and result.activation_reason == "guard off"
    assert not {"activated", "pseudo_labeled", "activation"} & set(result.to_dict()["metrics"])
    assert result.metrics["pseudo"] == pseudo and result.metrics["version"] == "v1"


# ---------------------------------------------------------------------------------------------------- ranking.json
def test_a_ranking_round_trips_with_nan_as_null_and_selected_ids_in_rank_order(tmp_path):
    ranking = RankingFile(
        strategy="assft",
        budget=2,
        model="card.json",
        cases=(
            entry("b", 2, selected=True, asd=math.nan),
            entry("a", 1, selected=True),
            entry("c", 3),
            entry("lab", None, dkd=None, score=None),
        ),
    )
    path = write_ranking_file(tmp_path / "ranking.json", ranking)
    data = json.loads(path.read_text())

    assert read_ranking_file(path) == ranking
    assert ranking.selected_ids == ("a", "b") and ranking.entry("b").asd is None
    assert data["cases"][0]["asd"] is None and data["cases"][3]["rank"] is None
    assert set(data) == {"strategy", "budget", "model", "cases"}
    assert list(data["cases"][0]) == [
        "case_id",
        "rank",
        "selected",
        "labeled",
        "dkd",
        "asd",
        "score",
        "knowledge_divergence",
        "image",
        "entropy_map",
        "regions",
        "prediction",
        "reason",
        "asd_class_balanced",
        "ood",
    ]


def test_ranking_csv_is_the_same_record_with_fixed_columns(tmp_path):
    ranking = RankingFile(
        strategy="assft",
        budget=1,
        model="m",
        cases=(entry("a", 1, selected=True, image="/a.nii.gz"), entry("lab", None, dkd=None, score=None)),
    )
    lines = ranking.to_csv().splitlines()
    assert lines[0].split(",") == list(RANKING_CSV_COLUMNS)
    assert lines[1] == "1,a,True,False,0.500000,0.250000,0.500000,,/a.nii.gz,,,"
    assert lines[2] == ",lab,False,True,,0.250000,,,,,,"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"strategy": "assft", "budget": 1, "cases": [{"dkd": 1}]}, "case 0: missing key"),
        (
            {
                "strategy": "assft",
                "budget": 1,
                "cases": [{"case_id": "a", "rank": 1, "selected": True, "labeled": False, "dkd": "high"}],
            },
            "'a'.*dkd",
        ),
        (
            {
                "strategy": "assft",
                "budget": 1,
                "cases": [{"case_id": "a", "rank": 2, "selected": False, "labeled": False}],
            },
            "ranks must be 1..1",
        ),
        (
            {
                "strategy": "assft",
                "budget": 0,
                "cases": [{"case_id": "a", "rank": 1, "selected": True, "labeled": False}],
            },
            "budget",
        ),
        ({"strategy": "assft", "budget": 1, "cases": [], "selected_ids": []}, "unknown key"),
        ({"budget": 1, "cases": []}, "strategy"),
    ],
)
def test_a_malformed_ranking_file_is_refused_naming_the_case_and_key(tmp_path, data, message):
    path = tmp_path / "ranking.json"
    path.write_text(json.dumps(data))
    with pytest.raises(JobError, match=message):
        read_ranking_file(path)
    with pytest.raises(JobError, match="not found"):
        read_ranking_file(tmp_path / "missing.json")


def test_the_query_ranking_has_no_json_form_of_its_own():
    """``ranking.json`` is :class:`RankingFile` only; the in-memory selection record is not a second schema."""
    from ASSFTActive.query import RankedCase, Ranking

    for record in (Ranking, RankedCase):
        assert not hasattr(record, "to_dict") and not hasattr(record, "from_dict")


def test_the_selection_becomes_the_ranking_file_the_engine_writes(tmp_path):
    """``api.write_ranking`` writes exactly ``api.ranking_file`` of the selection, JSON and CSV."""
    from ASSFTActive.api import VolumeReport, ranking_file, select_from_reports, write_ranking
    from ASSFTActive.models import load_card
    from ASSFTActive.query import CaseEvidence, QueryConfig

    rng = np.random.default_rng(0)

    def report(name: str, labeled: bool) -> VolumeReport:
        evidence = CaseEvidence(
            name,
            knowledge_divergence=0.1,
            asd=float(rng.uniform()),
            mean_entropy=0.2,
            pretrained_embedding=rng.normal(size=4),
            current_embedding=rng.normal(size=4),
            clasp_scores=np.ones(2),
        )
        return VolumeReport(
            case_id=name,
            image=tmp_path / f"{name}.nii.gz",
            labeled=labeled,
            evidence=evidence,
            prediction=tmp_path / "predictions" / f"{name}.nii.gz" if not labeled else None,
        )

    reports = [report("a", False), report("b", True), report("c", False), report("d", False)]
    query = QueryConfig()
    selection = select_from_reports(reports, 2, query)
    card = load_card(make_tiny_card(tmp_path / "model"))

    files = write_ranking(tmp_path, selection, reports, card, query)

    expected = ranking_file(selection, reports, card)
    assert read_ranking_file(files["ranking_json"]) == expected
    assert files["ranking_csv"].read_text() == expected.to_csv()
    assert expected.selected_ids == selection.selected_ids
    assert [c.case_id for c in expected.cases] == [c.case_id for c in selection.cases] + ["b"]
    assert expected.entry("b").labeled and expected.entry("b").rank is None


def test_the_slicer_self_test_writes_its_files_with_the_engine_records():
    """The module's self-test once wrote a fourth ranking schema by hand."""
    source = (REPO / "ASSFTModule" / "ASSFTModule.py").read_text()
    assert "write_ranking_file(" in source and "write_result(" in source
    assert '"ranking.json").write_text' not in source and '"result.json").write_text' not in source


# ---------------------------------------------------------------------------------------------------- one rule each
def test_distributed_keeps_only_the_process_group_context():
    import ASSFTActive.distributed as distributed

    assert not hasattr(distributed, "rank_pool_distributed")
    source = Path(distributed.__file__).read_text()
    assert "from . import api" not in source and "from .api" not in source and "InputError" not in source


def test_every_device_default_is_the_inference_default(monkeypatch):
    """``auto`` in the CLI and the worker, a one-process context and ``rank_pool`` all ask one function."""
    import torch

    import ASSFTActive.inference as inference
    from ASSFTActive.cli.common import Device, resolve_device
    from ASSFTActive.distributed import DistContext, init_from_env

    monkeypatch.setattr(inference, "default_device", lambda: torch.device("meta"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("meta")
    assert DistContext.single().device == init_from_env(None).device == torch.device("meta")
    assert resolve_device(Device.CPU.value) == torch.device("cpu")
    for path in (
        "ASSFTActive/api.py",
        "ASSFTActive/distributed.py",
        "ASSFTActive/cli/common.py",
        "ASSFTActive/worker.py",
    ):
        assert "cuda.is_available() else" not in (REPO / path).read_text(), path


def _choices(parser, option: str) -> List[str]:
    import argparse

    for action in parser._actions:
        if option in action.option_strings:
            return list(action.choices)
        if isinstance(action, argparse._SubParsersAction):
            continue
    raise AssertionError(f"no {option}")


def test_command_line_choices_are_the_enum_values():
    from ASSFTActive.cli import build_parser
    from ASSFTActive.cli.common import Device
    from ASSFTActive.finetune.config import PseudoMode
    from ASSFTActive.query import Strategy

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    strategies = [s.value for s in Strategy]
    assert _choices(commands["rank"], "--strategy") == strategies
    assert _choices(commands["demo"], "--strategy") == strategies
    assert _choices(commands["demo"], "--pseudo") == [m.value for m in PseudoMode]
    for name in ("rank", "overlay", "demo"):
        assert _choices(commands[name], "--device") == [d.value for d in Device]


def test_the_worker_takes_the_same_device_choices(tmp_path):
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", "--help"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=120,
    )
    from ASSFTActive.cli.common import Device

    assert out.returncode == 0 and "{" + ",".join(d.value for d in Device) + "}" in out.stdout


def test_the_protocols_files_are_readable_by_others_like_every_other_output(tmp_path):
    """``ranking.json`` was written 0600 (a bare temporary file renamed): others on a shared lab folder could not read
    it. Every file of the protocol now gets ``0666 & ~umask`` (0644 under the usual umask 022)."""
    import os
    import stat

    from ASSFTActive.jobs import JobSpec, write_job

    previous = os.umask(0o022)
    try:
        ranking = RankingFile(strategy="assft", budget=1, model="m", cases=(entry("a", 1, selected=True),))
        paths = [
            write_ranking_file(tmp_path / "ranking.json", ranking),
            write_result(tmp_path, adapt_result()),
            write_job(tmp_path, JobSpec(kind="rank", images={"a": "/x/a.nii.gz"})),
        ]
    finally:
        os.umask(previous)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in paths] == [oct(0o644)] * 3
