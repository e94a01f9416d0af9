"""The background worker as a real subprocess (DESIGN.md §4): events, result, cancel, kill -9 and resume, faults."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from conftest import (
    FAST_FINETUNE,
    make_tiny_card,
    read_json,
    synthetic_case,
    tree,
    worker_env,
    write_dataset,
)

from ASSFTActive.io import Volume, write_volume
from ASSFTActive.jobs import (
    EXIT_CANCELLED,
    EXIT_DONE,
    EXIT_ERROR,
    JobResult,
    JobSpec,
    read_events,
    read_job_result,
    read_ranking_file,
    write_job,
)
from ASSFTActive.progress import Event
from ASSFTActive.store import ModelStore

pytestmark = pytest.mark.slow


class Worker:
    """``python -m ASSFTActive.worker JOB_DIR`` with its stdout read line by line in the background."""

    def __init__(self, job_dir: Path, cwd: Path, **env: str):
        cwd.mkdir(parents=True, exist_ok=True)
        self.stderr_path = job_dir.parent / f"{job_dir.name}-stderr-{time.time_ns()}.txt"
        self._stderr = open(self.stderr_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ASSFTActive.worker", str(job_dir)],
            cwd=str(cwd),
            env=worker_env(**env),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.raw: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def events_until(self, predicate, timeout: float = 120.0) -> List[Event]:
        """Events read so far, up to and including the first one that satisfies ``predicate``."""
        seen = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                break
            if line is None:
                break
            self.raw.append(line)
            event = Event.from_json(line)
            seen.append(event)
            if predicate(event):
                return seen
        raise AssertionError(
            f"no matching event; got {[(e.event, e.phase, e.step) for e in seen][-5:]}; stderr:\n"
            + self.stderr_path.read_text()[-3000:]
        )

    def finish(self, timeout: float = 300.0) -> int:
        code = self.process.wait(timeout=timeout)
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                break
            self.raw.append(line)
        self._stderr.close()
        return code

    @property
    def events(self) -> List[Event]:
        return [Event.from_json(line) for line in self.raw]


def run_worker(job_dir: Path, cwd: Path, **env: str):
    worker = Worker(job_dir, cwd, **env)
    code = worker.finish()
    return code, worker


@pytest.fixture
def world(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=6, labeled=3)
    return {"card": card, "images": images, "labels": labels, "store": tmp_path / "store", "tmp": tmp_path}


@pytest.fixture(scope="module")
def primed_store(tmp_path_factory):
    """A store whose model ``site`` has an active version v1 (made once), and the world it was made from."""
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig

    tmp = tmp_path_factory.mktemp("primed")
    card = make_tiny_card(tmp / "base")
    images, labels = write_dataset(tmp / "data", count=6, labeled=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adapt_model(
            images, labels, store=tmp / "store", model=card, name="site", config=FinetuneConfig.from_dict(FAST_FINETUNE)
        )
    finally:
        torch.set_num_threads(threads)
    return {"card": card, "images": images, "labels": labels, "store": tmp / "store"}


def adapt_job(world, job_dir: Path, finetune=None, labels=None, **changes) -> Path:
    spec = JobSpec(
        kind="adapt",
        images={k: str(v) for k, v in world["images"].items()},
        labels={k: str(v) for k, v in (labels or world["labels"]).items()},
        model=str(world["card"]),
        store=str(world["store"]),
        name="site",
        budget=2,
        finetune=finetune or FAST_FINETUNE,
        **changes,
    )
    write_job(job_dir, spec)
    return job_dir


def long_training(iterations: int = 100000, checkpoint_every: int = 4) -> dict:
    return {
        "train": {"iterations": iterations, "batch_size": 1},
        "semi_iterations": 4,
        "validation": {"hd95": False},
        "checkpoint_every": checkpoint_every,
    }


def test_adapt_job_streams_events_and_ends_with_done_a_result_and_a_new_active_model(world):
    job = adapt_job(world, world["tmp"] / "job")
    (world["tmp"] / "tmpdir").mkdir()
    code, worker = run_worker(job, world["tmp"] / "cwd", TMPDIR=str(world["tmp"] / "tmpdir"))
    assert code == EXIT_DONE, worker.stderr_path.read_text()[-2000:]
    events = worker.events
    assert events[0].event == "phase" and events[0].phase == "start"
    assert events[-1].event == "done" and [e.event for e in events].count("done") == 1
    assert not any(e.event == "error" for e in events)
    train_steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    # three cross-validation folds, each two thirds of the 20-step recipe (fold_budget 2), shown on the run's bar of
    # 3 x 20 steps; the new model is their average at the stopping step (no training)
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 60
    assert [s for s in train_steps if s % 20 == 0] == [20, 40, 60], "each fold ends at its end of the bar"
    assert len(train_steps) < 60, "the folds train fewer steps than the bar shows"
    assert all(e.total == 60 for e in events if e.phase == "train" and e.event == "progress")
    assert any(e.event == "metric" and "dice_after" in e.metrics for e in events)
    assert (job / "events.jsonl").read_text().splitlines() == [line.rstrip("\n") for line in worker.raw]
    assert "DONE" in (job / "log.txt").read_text()

    result = read_json(job / "result.json")
    assert result["status"] == "done" and result["kind"] == "adapt"
    # activated, activation and pseudo_labeled are top-level keys (what the Slicer module reads), written once
    assert JobResult.from_dict(result) == read_job_result(job)
    assert result["activated"] is True and not {"activated", "activation", "pseudo_labeled"} & set(result["metrics"])
    assert result["activation"]["method"] == "cross_validation" and result["activation"]["activate"] is True
    kept = [d["case_id"] for d in result["metrics"]["pseudo"] if d["kept"]]
    assert result["pseudo_labeled"] == kept
    assert set(kept) <= {"case_003", "case_004", "case_005"}
    active = ModelStore(world["store"]).active("site")
    assert result["model_card"] == str(active.card_path) and active.version == "v1"
    assert result["ranking"] == str(job / "ranking.json")
    ranking = read_json(job / "ranking.json")
    assert sum(row["selected"] for row in ranking["cases"]) == 2
    assert sorted(result["predictions"]) == ["case_003", "case_004", "case_005"]
    assert all(Path(p).is_file() and Path(p).parent.parent == job for p in result["predictions"].values())
    assert result["metrics"]["after"]["mean_dice"] is not None and result["metrics"]["version"] == "v1"
    # the worker wrote only in its job folder and the store
    assert tree(world["tmp"] / "cwd") == [] and tree(world["tmp"] / "tmpdir") == []
    assert sorted(p.name for p in world["tmp"].iterdir() if not p.name.startswith("job-stderr")) == [
        "base",
        "cwd",
        "data",
        "job",
        "store",
        "tmpdir",
    ]


def test_rank_job_result_lists_no_pseudo_labels_and_activates_nothing(world):
    job = world["tmp"] / "job"
    write_job(
        job,
        JobSpec(
            kind="rank",
            images={k: str(v) for k, v in world["images"].items()},
            labels={k: str(v) for k, v in world["labels"].items()},
            model=str(world["card"]),
            budget=2,
        ),
    )
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_DONE, worker.stderr_path.read_text()[-2000:]
    result = read_json(job / "result.json")
    assert result["status"] == "done" and result["kind"] == "rank"
    assert result["pseudo_labeled"] == [] and "activated" not in result
    assert result["ranking"] == str(job / "ranking.json") and len(result["metrics"]["selected"]) == 2
    assert list(read_ranking_file(job / "ranking.json").selected_ids) == result["metrics"]["selected"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_training_stops_at_the_next_step_with_a_cancelled_result_and_the_store_untouched(
    primed_store, tmp_path, sig
):
    """The worker is frozen (SIGSTOP) so that ``events.jsonl`` shows exactly where it was, signalled, and let go:
    at most the one event it was writing follows, then the ``cancelled`` error; no wall-clock bound (the
    ``finish`` timeout only stops a hung test)."""
    world = dict(primed_store, store=tmp_path / "store", tmp=tmp_path)
    shutil.copytree(primed_store["store"], world["store"])
    before = tree(world["store"])
    job = adapt_job(world, world["tmp"] / "job", finetune=long_training())
    worker = Worker(job, world["tmp"] / "cwd")
    worker.events_until(lambda e: e.event == "progress" and e.phase == "train" and e.step >= 10)

    def train_steps() -> List[int]:
        return [e.step for e in read_events(job) if e.event == "progress" and e.phase == "train"]

    worker.process.send_signal(signal.SIGSTOP)
    try:
        reached = train_steps()[-1]
        worker.process.send_signal(sig)
    finally:
        worker.process.send_signal(signal.SIGCONT)
    code = worker.finish(timeout=600)

    assert code == EXIT_CANCELLED
    total = next(e.total for e in worker.events if e.event == "progress" and e.phase == "train")
    after = [step for step in train_steps() if step > reached]
    assert len(after) <= 1 and reached + len(after) < total  # stopped mid-training, at the next step at the latest
    last = worker.events[-1]
    assert (last.event, last.message) == ("error", "cancelled")
    assert [e.event for e in worker.events].count("error") == 1 and not any(e.event == "done" for e in worker.events)
    assert not any(e.phase == "commit" for e in worker.events)
    assert read_json(job / "result.json") == {"status": "cancelled", "message": "cancelled"}
    assert tree(world["store"]) == before
    assert ModelStore(world["store"]).active("site").version == "v1"


def test_after_kill_9_a_new_run_of_the_job_resumes_from_the_last_checkpoint(world):
    # the final training writes checkpoint.pt; the guard's folds (tested in test_finetune_adapt) keep only their
    # finished scores, so the guard is off here to reach the final run at once
    unguarded = dict(long_training(iterations=160, checkpoint_every=10), validation={"hd95": False, "guard": False})
    job = adapt_job(world, world["tmp"] / "job", finetune=unguarded)
    worker = Worker(job, world["tmp"] / "cwd")
    worker.events_until(lambda e: e.event == "progress" and e.phase == "train" and e.step >= 25)
    worker.process.kill()
    worker.finish(timeout=30)
    assert (job / "checkpoints" / "checkpoint.pt").is_file()
    assert ModelStore(world["store"]).versions("site") == []
    site = world["store"] / "site"
    assert not site.exists() or not list(site.glob("v*"))

    code, second = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_DONE, second.stderr_path.read_text()[-2000:]
    resume = [e for e in second.events if e.phase == "resume"]
    assert len(resume) == 1 and resume[0].step >= 20
    steps = [e.step for e in second.events if e.event == "progress" and e.phase == "train"]
    assert steps[0] == resume[0].step + 1 and steps[-1] == 164
    assert read_json(job / "result.json")["metrics"]["resumed_from"] == resume[0].step
    assert [v.version for v in ModelStore(world["store"]).versions("site")] == ["v1"]
    assert len([e for e in read_events(job) if e.event == "done"]) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_commit_lets_the_job_finish_with_the_new_version_and_says_so(world, sig):
    """Frozen (SIGSTOP) as soon as the ``commit`` phase is printed, signalled, let go: the version being written is
    finished and activated, the job ends ``done`` with exit 0, and ``log.txt`` says the signal came too late."""
    unguarded = dict(FAST_FINETUNE, validation={"every": 6, "hd95": False, "guard": False})
    job = adapt_job(world, world["tmp"] / "job", finetune=unguarded)
    worker = Worker(job, world["tmp"] / "cwd")
    worker.events_until(lambda e: e.event == "phase" and e.phase == "commit", timeout=300)
    worker.process.send_signal(signal.SIGSTOP)
    try:
        worker.process.send_signal(sig)
    finally:
        worker.process.send_signal(signal.SIGCONT)
    code = worker.finish(timeout=300)

    assert code == EXIT_DONE, worker.stderr_path.read_text()[-2000:]
    assert worker.events[-1].event == "done" and not any(e.event == "error" for e in worker.events)
    assert ModelStore(world["store"]).active("site").version == "v1"
    assert f"{signal.Signals(sig).name} arrived after the new version was committed" in (job / "log.txt").read_text()


def test_a_job_without_usable_labels_ends_with_an_error_event_and_the_store_unchanged(world):
    image, label, affine = synthetic_case(99)
    bad = write_volume(Volume(label[:, :-3], affine), world["tmp"] / "bad" / "case_000.nii.gz")
    job = adapt_job(world, world["tmp"] / "job", labels={"case_000": bad})
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_ERROR
    warnings = [e for e in worker.events if e.event == "warning"]
    assert warnings and str(bad) in warnings[0].message
    last = worker.events[-1]
    assert last.event == "error" and "none of the 1 labelled volumes" in last.message
    assert read_json(job / "result.json")["status"] == "error"
    assert not world["store"].exists()


def test_an_adapt_job_of_one_patients_volumes_stores_the_model_without_activating_it(world):
    subjects = {c: "patient-A" for c in world["labels"]}
    job = adapt_job(world, world["tmp"] / "job", subjects=subjects)
    assert read_json(job / "job.json")["subjects"] == subjects
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_DONE, worker.stderr_path.read_text()[-2000:]
    result = read_json(job / "result.json")
    assert result["activated"] is False and result["activation"]["method"] == "too_few_subjects"
    assert ModelStore(world["store"]).active("site") is None


def test_job_subjects_must_name_its_images_and_are_written_only_when_given(world):
    images = {k: str(v) for k, v in world["images"].items()}
    for subjects, words in (
        ({"nowhere": "A"}, r"subjects \['nowhere'\] name no image"),
        ({"case_000": ""}, "non-empty"),
    ):
        with pytest.raises(ValueError, match=words):
            JobSpec(kind="rank", images=images, subjects=subjects)
    assert "subjects" not in JobSpec(kind="rank", images=images).to_dict()
    assert JobSpec(kind="rank", images=images, subjects={"case_000": "A"}).to_dict()["subjects"] == {"case_000": "A"}


def test_an_invalid_job_file_ends_with_an_error_event_naming_the_problem(world):
    job = world["tmp"] / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({"kind": "adapt", "images": {"a": "/x.nii.gz"}, "colour": "red"}))
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_ERROR
    assert worker.events[-1].event == "error" and "unknown key(s) ['colour']" in worker.events[-1].message


def test_an_unwritable_store_ends_with_an_error_before_training(world):
    blocker = world["tmp"] / "blocker"
    blocker.write_text("file")
    world = dict(world, store=blocker / "store")
    job = adapt_job(world, world["tmp"] / "job")
    code, worker = run_worker(job, world["tmp"] / "cwd")
    assert code == EXIT_ERROR and "not a folder" in worker.events[-1].message
    assert not any(e.phase == "train" for e in worker.events)
