"""The panel's "Query rounds" (the multi-round test-time query, ``QueryConfig.rounds``) on real MRML: the value in the
parameter node goes into ``job.json``'s ``query.rounds`` of every job the panel writes (Rank, and Adapt Model's
``adapt`` / ``sfr`` job, whose re-ranking follows it), a value below 1 is refused before anything is written, and
the round a finished ranking belongs to (``config.json``'s ``query_round``, in the engine's own format) comes back
in the status text. The process runner records instead of running (the real worker runs a two-round rank from the
panel in ``test_slicer_job.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import slicer_scene

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import jobFolder  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError, ResultFormatError  # noqa: E402
from ASSFTModuleLib.jobController import DONE, ERROR, JobController  # noqa: E402
from ASSFTModuleLib.parameters import (  # noqa: E402
    DEFAULT_QUERY_ROUNDS,
    AdaptMethodChoice,
    jobQuery,
    queryRoundsValue,
)
from slicer_scene import RecordingRunner, fakeFinishedJob  # noqa: E402

from ASSFTActive.jobs import read_job  # noqa: E402
from ASSFTActive.query.rounds import plan_round  # noqa: E402

ROUNDS_REFUSED = "Query rounds must be a whole number of at least 1"


def parameterNode(
    workDirectory: Path, cardPath: Path, queryRounds=DEFAULT_QUERY_ROUNDS, budget=4, method=AdaptMethodChoice.ASSFT
):
    """The parameter node fields the controller reads, with the rounds (budget 4 by default here)."""
    return slicer_scene.parameterNode(workDirectory, cardPath, queryRounds=queryRounds, budget=budget, method=method)


@pytest.fixture()
def setup(tmp_path):
    env, logic, _card, cardPath, nodes = slicer_scene.threeVolumeScene(tmp_path)
    controller = JobController(logic, runnerFactory=RecordingRunner, environment=dict, python=sys.executable)
    finished = []
    controller.finished.connect(finished.append)
    return env, logic, controller, nodes, cardPath, tmp_path, finished


def jobFolders(workDirectory: Path) -> list:
    folder = workDirectory / "jobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_rank_writes_the_panels_query_rounds_into_job_json(setup):
    env, logic, controller, nodes, cardPath, tmp_path, _ = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=2, budget=4))

    spec = controller.startJob("rank")

    job = read_job(spec.jobDir)  # what the worker will read
    assert job.kind == "rank" and job.budget == 4 and job.query == {"rounds": 2}
    assert job.query_config().rounds == 2  # the engine's own settings accept it as the schedule's R


@pytest.mark.parametrize("method, kind", [(AdaptMethodChoice.ASSFT, "adapt"), (AdaptMethodChoice.SFR_PLUS, "sfr")])
def test_adapt_model_writes_the_query_rounds_its_re_ranking_follows(setup, method, kind):
    env, logic, controller, nodes, cardPath, tmp_path, _ = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=3, budget=6, method=method))

    job = read_job(controller.startJob("adapt").jobDir)

    assert job.kind == kind and job.labels and job.budget == 6
    assert job.query == {"rounds": 3} and job.query_config().rounds == 3


def test_one_round_is_written_too_and_is_the_single_shot_query(setup):
    env, logic, controller, nodes, cardPath, tmp_path, _ = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    assert DEFAULT_QUERY_ROUNDS == 1
    assert read_job(controller.startJob("rank").jobDir).query == {"rounds": 1}


@pytest.mark.parametrize("rounds", [0, -1, -5, 2.5, True, "two", None])
@pytest.mark.parametrize("kind", ["rank", "adapt"])
def test_query_rounds_below_one_or_not_whole_are_refused_before_anything_is_written(setup, rounds, kind):
    env, logic, controller, nodes, cardPath, tmp_path, _ = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=rounds))

    with pytest.raises(ASSFTModuleError, match=ROUNDS_REFUSED) as refused:
        controller.startJob(kind)

    assert repr(rounds) in str(refused.value)  # the message shows the value that was refused
    assert jobFolders(tmp_path / "work") == [] and controller._runner.commands == []
    assert not controller.isRunning() and controller.job is None


@pytest.mark.parametrize("rounds", [0, -3])
def test_the_logic_refuses_query_rounds_below_one_from_any_caller(setup, rounds):
    env, logic, controller, nodes, cardPath, tmp_path, _ = setup
    with pytest.raises(ASSFTModuleError, match=ROUNDS_REFUSED):
        logic.prepareJob("rank", tmp_path / "work", str(cardPath), budget=2, query={"rounds": rounds})
    assert jobFolders(tmp_path / "work") == []
    # other query settings pass through unchanged, rounds as a whole number
    spec = logic.prepareJob(
        "rank", tmp_path / "work", str(cardPath), budget=2, query={"rounds": 2.0, "strategy": "random"}
    )
    assert read_job(spec.jobDir).query == {"rounds": 2, "strategy": "random"}


def test_query_rounds_values_accepted_from_a_spin_box_or_a_number_field():
    assert [queryRoundsValue(v) for v in (1, 2, 3.0, "4", " 5 ")] == [1, 2, 3, 4, 5]
    with pytest.raises(ASSFTModuleError, match="at most 100"):
        queryRoundsValue(101)
    assert jobQuery(2, {"rounds": 5, "strategy": "assft"}) == {"rounds": 2, "strategy": "assft"}


def writeQueryRound(jobDir: Path, budget: int, rounds: int, labeled: int) -> dict:
    """``config.json`` with the engine's own plan (``plan_round(...).to_dict()``), as ``rank_pool`` writes it."""
    plan = plan_round(budget, rounds, labeled).to_dict()
    (jobDir / "config.json").write_text(json.dumps({"strategy": "assft", "query_round": plan}))
    return plan


@pytest.mark.parametrize(
    "budget, rounds, labeled, text",
    [
        (4, 2, 1, "Query round 1 of 2 (2 + 2 volumes): 1 volume proposed."),
        (4, 2, 2, "Query round 2 of 2 (2 + 2 volumes): 2 volumes proposed."),
        (5, 3, 0, "Query round 1 of 3 (2 + 2 + 1 volumes): 2 volumes proposed."),
        (2, 1, 1, "Query round 1 of 1 (2 volumes): 2 volumes proposed."),
        (2, 2, 3, "Query round 2 of 2 (1 + 1 volumes): the schedule is complete, no volume proposed."),
    ],
)
def test_the_status_says_which_query_round_a_finished_ranking_is_and_what_it_proposes(
    setup, budget, rounds, labeled, text
):
    env, logic, controller, nodes, cardPath, tmp_path, finished = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=rounds, budget=budget))
    status = []
    controller.statusChanged.connect(status.append)
    spec = controller.startJob("rank")
    proposing = plan_round(budget, rounds, labeled).size  # the ranking proposes what the round asks for
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank", selected=proposing)
    plan = writeQueryRound(spec.jobDir, budget, rounds, labeled)
    controller._runner.end(0)

    outcome = finished[-1]
    assert outcome.status == DONE and status[-1] == outcome.message, outcome.message
    assert outcome.message == f"Done. {text}"
    queryRound = outcome.loaded.queryRound
    assert queryRound.to_dict() == plan


def test_the_re_ranking_after_adapt_model_reports_its_round_after_the_model(setup):
    env, logic, controller, nodes, cardPath, tmp_path, finished = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=2, budget=4))
    spec = controller.startJob("adapt")
    fakeFinishedJob(spec, nodes, tmp_path, kind="adapt", selected=2)
    writeQueryRound(spec.jobDir, 4, 2, 2)
    controller._runner.end(0)

    message = finished[-1].message
    assert message.startswith("Adapted model is now active: ")
    assert message.endswith("Adapt method: ASSFT. Query round 2 of 2 (2 + 2 volumes): 2 volumes proposed.")


def test_the_status_counts_the_volumes_the_ranking_proposed_when_fewer_than_the_round_asks(setup):
    """Volumes held back (e.g. out of distribution) are not counted as proposed: the line says what the table shows."""
    env, logic, controller, nodes, cardPath, tmp_path, finished = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath, queryRounds=2, budget=4))
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank", selected=1)
    writeQueryRound(spec.jobDir, 4, 2, 2)  # round 2 asks for 2
    controller._runner.end(0)
    assert finished[-1].message == "Done. Query round 2 of 2 (2 + 2 volumes): 1 volume proposed."


def test_a_ranking_without_a_recorded_round_says_nothing_about_rounds(setup):
    env, logic, controller, nodes, cardPath, tmp_path, finished = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")  # no config.json: an engine without query rounds
    controller._runner.end(0)
    assert finished[-1].status == DONE and finished[-1].message == "Done."
    assert finished[-1].loaded.queryRound is None


def test_a_malformed_query_round_is_an_error_naming_config_json(setup):
    env, logic, controller, nodes, cardPath, tmp_path, finished = setup
    controller.setParameterNode(parameterNode(tmp_path / "work", cardPath))
    spec = controller.startJob("rank")
    fakeFinishedJob(spec, nodes, tmp_path, kind="rank")
    (spec.jobDir / "config.json").write_text(
        json.dumps(
            {"query_round": {"round": 3, "rounds": 2, "round_budgets": [1, 1], "proposed": 1, "labeled_before": 0}}
        )
    )
    controller._runner.end(0)
    assert finished[-1].status == ERROR
    assert "config.json" in finished[-1].message and "query_round" in finished[-1].message
    assert env.nodes("vtkMRMLTableNode") == []  # nothing half-loaded
    with pytest.raises(ResultFormatError, match="query_round"):
        jobFolder.readQueryRound(spec.jobDir / "ranking.json")
