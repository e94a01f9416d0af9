"""The panel's "Adapt method: ASSFT / SFR / SFR+" on real MRML: the choice in the parameter node decides the job the
Adapt Model button writes (kind and SFR method in ``job.json``), and an ``sfr`` job's result comes back like an
``adapt`` one (new model, activation and its reason, the method named). The process runner records instead of
running (the real worker runs an ``sfr`` job in ``test_sfr_job.py`` and ``test_slicer_job.py``)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib.jobController import DONE, JobController  # noqa: E402
from ASSFTModuleLib.parameters import AdaptMethodChoice, ModelSource, adaptJobFor  # noqa: E402
from slicer_scene import RecordingRunner, fakeFinishedJob, writeModelCard  # noqa: E402

from ASSFTActive.jobs import JobResult, read_job, write_result  # noqa: E402


def parameterNode(workDirectory: Path, cardPath: Path, method: AdaptMethodChoice):
    """The parameter node fields the controller reads (the real node needs desktop Slicer), with the method."""
    return types.SimpleNamespace(
        modelSource=ModelSource.CardFile,
        modelCardPath=cardPath,
        workDirectory=workDirectory,
        budget=1,
        rankingTable=None,
        lastJobDirectory="",
        adaptMethod=method,
    )


@pytest.fixture()
def setup(tmp_path):
    env, logic, _card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    return env, logic, controller, nodes, cardPath, tmp_path


@pytest.mark.parametrize(
    "method, kind, sfrMethod",
    [
        (AdaptMethodChoice.ASSFT, "adapt", "sfr"),
        (AdaptMethodChoice.SFR, "sfr", "sfr"),
        (AdaptMethodChoice.SFR_PLUS, "sfr", "sfr_plus"),
    ],
)
def test_the_adapt_method_decides_the_job_the_adapt_button_writes(setup, method, kind, sfrMethod):
    env, logic, controller, nodes, cardPath, tmp_path = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, method))

    spec = controller.startJob("adapt")

    job = read_job(spec.jobDir)  # what the worker will read
    assert job.kind == kind and job.sfr_method == sfrMethod
    assert job.sfr == ({} if method is AdaptMethodChoice.ASSFT else {"method": sfrMethod})
    assert list(job.labels) == ["case_b"] and sorted(job.images) == ["case_a", "case_b", "case_c"]
    assert spec.jobDir.name.endswith(f"-{kind}")
    assert controller._runner.commands[0][1:] == ["-m", "ASSFTActive.worker", str(spec.jobDir)]


def test_rank_ignores_the_adapt_method(setup):
    env, logic, controller, nodes, cardPath, tmp_path = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, AdaptMethodChoice.SFR_PLUS))
    assert read_job(controller.startJob("rank").jobDir).kind == "rank"


def test_an_sfr_job_that_was_not_activated_comes_back_with_its_reason_and_keeps_the_model(setup):
    env, logic, controller, nodes, cardPath, tmp_path = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, AdaptMethodChoice.SFR_PLUS))
    finished = []
    controller.finished.connect(finished.append)
    spec = controller.startJob("adapt")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")  # the re-ranking's files
    newCard = writeModelCard(tmp_path / "store" / "test-unet-adapted" / "v1", name="test-unet-adapted")
    write_result(
        spec.jobDir,
        JobResult(
            status="done",
            kind="sfr",
            model_card=str(newCard),
            ranking=str(spec.jobDir / "ranking.json"),
            activated=False,
            activation={"activate": False, "reason": "no cross-validated gain"},
            pseudo_labeled=("case_a",),
            metrics={"method": "sfr_plus"},
        ),
    )
    controller._runner.end(0)

    outcome = finished[-1]
    assert outcome.status == DONE and outcome.kind == "sfr"
    assert "not activated: no cross-validated gain" in outcome.message and "Adapt method: SFR+" in outcome.message
    loaded = outcome.loaded
    assert loaded.adaptedModel == newCard and loaded.activeModel is None
    assert loaded.result.adaptMethod == "SFR+" and loaded.result.pseudoLabeled == ("case_a",)
    assert controller.parameterNode.modelCardPath == cardPath  # the active model did not change
    states = {
        loaded.tableNode.GetTable().GetColumnByName("Case ID").GetValue(r): loaded.tableNode.GetTable()
        .GetColumnByName("State")
        .GetValue(r)
        for r in range(3)
    }
    assert states["case_b"] == "labeled"


def test_adapt_job_for_names_the_engine_kinds():
    assert adaptJobFor(AdaptMethodChoice.ASSFT) == ("adapt", {})
    assert adaptJobFor("sfr_plus") == ("sfr", {"method": "sfr_plus"})
    assert [m.label() for m in AdaptMethodChoice] == ["ASSFT", "SFR", "SFR+"]
