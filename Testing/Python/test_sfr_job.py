"""SFR / SFR+ as a worker job (DESIGN.md §4): the ``sfr`` kind of ``job.json`` and ``result.json``, and the real worker
process running one end to end on the tiny synthetic world, cancelled and resumed."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from conftest import fast_sfr, make_tiny_card, read_json, tree, write_dataset

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import (
    EXIT_CANCELLED,
    EXIT_DONE,
    SFR_METHODS,
    JobResult,
    JobSpec,
    read_events,
    read_job,
    read_job_result,
    write_job,
    write_result,
)
from ASSFTActive.store import ModelStore


def sfr_spec(images, labels, store, card, **changes) -> JobSpec:
    return JobSpec(
        kind="sfr",
        images={k: str(v) for k, v in images.items()},
        labels={k: str(v) for k, v in labels.items()},
        model=str(card),
        store=str(store),
        name="site",
        budget=2,
        **changes,
    )


# ------------------------------------------------------------------ job.json and result.json of an sfr job


def test_an_sfr_job_round_trips_with_its_method_and_settings(tmp_path):
    spec = JobSpec(
        kind="sfr",
        images={"a": "/a.nii.gz", "b": "/b.nii.gz"},
        labels={"a": "/la.nii.gz"},
        store="/store",
        sfr={"method": "sfr_plus", "retrain": {"iterations": 7}},
        sam_prior="/sam/vit-b",
    )
    write_job(tmp_path, spec)
    back = read_job(tmp_path)
    assert back == spec and back.sfr_method == "sfr_plus" and back.sam_prior == "/sam/vit-b"
    config = back.sfr_config()
    assert config.method.value == "sfr_plus"
    # a partial retrain mapping overrides SFR's optimisation key by key (SGD stays), not TrainConfig's defaults
    assert config.retrain.iterations == 7 and config.retrain.optimizer.value == "sgd"
    assert JobSpec(kind="sfr", images={"a": "/a"}, labels={"a": "/l"}, store="/s").sfr_method == "sfr"


def test_rank_and_adapt_jobs_keep_their_job_file_without_sfr_keys(tmp_path):
    spec = JobSpec(kind="adapt", images={"a": "/a.nii.gz"}, labels={"a": "/la.nii.gz"}, store="/store")
    assert "sfr" not in spec.to_dict() and "sam_prior" not in spec.to_dict()
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "kind, data, named",
    [
        ("adapt", {"sam_prior": "/sam/prior"}, "sam_prior applies"),
        ("adapt", {"sfr": {"method": "sfr_plus"}}, "sfr applies"),
        ("rank", {"sfr": {"method": "sfr"}, "sam_prior": "/sam/prior"}, "sfr and sam_prior apply"),
    ],
)
def test_a_rank_or_adapt_job_given_a_sam_prior_or_sfr_settings_is_refused_not_run_without_them(
    tmp_path, kind, data, named
):
    base = {"kind": kind, "images": {"a": "/a"}, "labels": {"a": "/l"}, "store": "/s"}
    with pytest.raises(ValueError, match=f"{named} only to an sfr job; this {kind} job would run without them"):
        JobSpec.from_dict(dict(base, **data))
    (tmp_path / "job.json").write_text(json.dumps(dict(base, **data)), encoding="utf-8")
    with pytest.raises(JobError, match=f"job.json: {named} only to an sfr job"):
        read_job(tmp_path)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sfr": {"method": "sam"}}, "sfr: SfrConfig.method='sam' is not valid"),
        ({"store": ""}, "an sfr job needs store"),
        ({"labels": {}}, "an sfr job needs at least one labelled volume"),
        ({"sfr": "sfr_plus"}, "sfr must be a JSON object"),
    ],
)
def test_an_invalid_sfr_job_is_refused_naming_the_problem(data, message):
    base = {"kind": "sfr", "images": {"a": "/a"}, "labels": {"a": "/l"}, "store": "/s"}
    with pytest.raises(ValueError, match=message):
        JobSpec.from_dict(dict(base, **data))


def test_sfr_settings_the_worker_cannot_use_are_refused_when_written_and_a_job_error_when_read(tmp_path):
    data = {"kind": "sfr", "images": {"a": "/a"}, "labels": {"a": "/l"}, "store": "/s", "sfr": {"iterations": 3}}
    with pytest.raises(ValueError, match="sfr: .*iterations"):
        JobSpec.from_dict(data)
    (tmp_path / "job.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(JobError, match="job.json: sfr: .*iterations"):
        read_job(tmp_path)


def test_the_job_methods_are_the_engine_methods_and_the_cli_choices():
    from ASSFTActive.cli import sfr as cli_sfr
    from ASSFTActive.sfr.pipeline import SfrMethod

    assert SFR_METHODS == tuple(m.value for m in SfrMethod) == cli_sfr.METHODS


def test_an_sfr_result_carries_the_activation_and_pseudo_labels_like_adapt(tmp_path):
    result = JobResult(
        status="done",
        kind="sfr",
        model_card="/store/site/v1/card.json",
        activated=False,
        activation={"activate": False, "reason": "no gain"},
        pseudo_labeled=("b",),
        metrics={"method": "sfr_plus"},
    )
    write_result(tmp_path, result)
    written = read_json(tmp_path / "result.json")
    assert written["activated"] is False and written["activation"]["reason"] == "no gain"
    assert read_job_result(tmp_path) == result and result.activation_reason == "no gain"
    with pytest.raises(ValueError, match="missing key"):
        JobResult.from_dict({k: v for k, v in written.items() if k != "activated"})


# ------------------------------------------------------------------ the real worker


@pytest.fixture
def world(tmp_path):
    # the embedded SAM prior's classes: SFR refuses a prior whose class names differ from the model's
    card = make_tiny_card(tmp_path / "base", class_names=["background", "anterior", "posterior"])
    images, labels = write_dataset(tmp_path / "data", count=6, labeled=3)
    return {"card": card, "images": images, "labels": labels, "store": tmp_path / "store", "tmp": tmp_path}


def _worker():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_worker_protocol import Worker, run_worker

    return Worker, run_worker


@pytest.mark.slow  # about 15 s on one thread: the worker's start-up, then three folds and the final run
def test_an_sfr_plus_job_runs_in_the_worker_and_ends_with_the_adapt_result(world):
    _, run_worker = _worker()
    job = world["tmp"] / "job"
    write_job(
        job, sfr_spec(world["images"], world["labels"], world["store"], world["card"], sfr=fast_sfr(method="sfr_plus"))
    )
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_DONE, worker.stderr_path.read_text()[-3000:]
    events = worker.events
    assert events[0].phase == "start" and "sfr job" in events[0].message
    assert events[-1].event == "done" and "new model" in events[-1].message
    phases = {e.phase for e in events}
    assert {"sfr_finetune", "sfr_pseudo_labels", "train", "validate", "commit", "rank"} <= phases, phases

    result = read_job_result(job)
    assert result.kind == "sfr" and result.done
    active = ModelStore(world["store"]).active_version("site")
    assert result.activated == (active == "v1") and result.activation_reason
    assert result.activation["method"] == "cross_validation"
    assert result.metrics["method"] == "sfr_plus" and result.metrics["version"] == "v1"
    kept = [p["case_id"] for p in result.metrics["pseudo"] if p["kept"]]
    assert list(result.pseudo_labeled) == kept and len(kept) == 2  # SFR+ keeps ceil(kappa 0.5 * 3) of the pool
    # re-ranked with the model that is active now, like adapt
    assert result.ranking == str(job / "ranking.json") and len(result.metrics["selected"]) == 2
    assert sorted(result.predictions) == ["case_003", "case_004", "case_005"]
    provenance = read_json(Path(result.model_card).parent / "provenance.json")
    assert provenance["method"] == "sfr_plus"
    assert tree(job / "checkpoints") == []  # the commit removed the resumable state


@pytest.mark.slow  # about 20 s on one thread: two worker runs
def test_an_sfr_job_cancelled_in_re_training_resumes_without_fine_tuning_sam_again(world):
    Worker, run_worker = _worker()
    job = world["tmp"] / "job"
    # one labelled volume: no folds, so the final run comes at once
    labels = dict(list(world["labels"].items())[:1])
    write_job(
        job,
        sfr_spec(
            world["images"],
            labels,
            world["store"],
            world["card"],
            sfr=fast_sfr(retrain=dict(fast_sfr()["retrain"], iterations=40)),
        ),
    )
    worker = Worker(job, world["tmp"] / "cwd")
    worker.events_until(lambda e: e.event == "progress" and e.phase == "train" and e.step >= 5)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.finish(timeout=120) == EXIT_CANCELLED
    assert read_json(job / "result.json") == {"status": "cancelled", "message": "cancelled"}
    assert (job / "checkpoints" / "checkpoint.pt").is_file() and (job / "checkpoints" / "pseudo-r0.npz").is_file()
    assert ModelStore(world["store"]).versions("site") == []
    first = [e for e in worker.events if e.event == "progress" and e.phase == "sfr_finetune"]
    assert len(first) == 2  # SAM was fine-tuned (2 steps) in the first run

    # the same job, run again, continues where it stopped
    code, second = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_DONE, second.stderr_path.read_text()[-3000:]
    assert not any(e.phase in ("sfr_finetune", "sfr_pseudo_labels") for e in second.events)
    (resume,) = [e for e in second.events if e.phase == "resume"]
    steps = [e.step for e in second.events if e.event == "progress" and e.phase == "train"]
    assert resume.step >= 4 and resume.step % 2 == 0 and steps[0] == resume.step + 1 and steps[-1] == 40
    result = read_job_result(job)
    assert result.kind == "sfr" and result.metrics["resumed_from"] == resume.step
    assert result.activation_reason
    assert [v.version for v in ModelStore(world["store"]).versions("site")] == ["v1"]
    assert len([e for e in read_events(job) if e.event == "done"]) == 1
    assert json.loads((job / "job.json").read_text())["kind"] == "sfr"
