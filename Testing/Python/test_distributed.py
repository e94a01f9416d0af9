"""Scale-out: the worker under ``torchrun`` with two CPU processes (Gloo): DDP fine-tuning and sharded ranking."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import FAST_FINETUNE, make_tiny_card, read_json, tree, worker_env, write_dataset

from ASSFTActive.distributed import DistContext, init_from_env, map_shards
from ASSFTActive.jobs import EXIT_DONE, JobSpec, read_events, read_ranking_file, write_job
from ASSFTActive.store import ModelStore


def test_a_single_process_context_shards_nothing_away_and_its_collectives_are_identities():
    ctx = DistContext.single(torch.device("cpu"))
    assert not ctx.distributed and ctx.is_main
    assert ctx.shard([1, 2, 3]) == [1, 2, 3]
    assert ctx.all_gather("x") == ["x"] and ctx.gather_to_main(5) == [5] and ctx.broadcast({"a": 1}) == {"a": 1}
    network = torch.nn.Linear(2, 2)
    assert ctx.wrap(network) is network
    assert init_from_env("cpu").world_size == 1


class ThreadRank:
    """One rank of an in-process data-parallel group: the collectives ``rank_pool`` uses, over threads (the same
    contract as :class:`DistContext`, without a process group), so sharding, staging and failure run in seconds."""

    def __init__(self, rank: int, group: ThreadGroup):
        self.rank, self.group = rank, group
        self.world_size, self.local_rank, self.backend = group.size, rank, "threads"
        self.device = torch.device("cpu")
        self.distributed, self.is_main = True, rank == 0

    def shard(self, items):
        return list(items[self.rank :: self.world_size])

    def all_gather(self, obj):
        self.group.slots[self.rank] = obj
        self.group.barrier.wait()
        out = list(self.group.slots)
        self.group.barrier.wait()
        return out

    def broadcast(self, obj):
        return self.all_gather(obj)[0]

    def barrier(self):
        self.group.barrier.wait()


class ThreadGroup:
    def __init__(self, size: int):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=300)

    def run(self, work):
        """``work(ctx)`` on every rank at once; ``[(result, error)]`` in rank order."""
        outcomes = [None] * self.size

        def target(rank):
            try:
                outcomes[rank] = (work(ThreadRank(rank, self)), None)
            except BaseException as exc:  # noqa: BLE001 - the test inspects what every rank raised
                outcomes[rank] = (None, exc)

        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes


def test_map_shards_over_two_ranks_runs_each_item_once_and_returns_the_items_order_on_every_rank():
    items = [f"case_{i}" for i in range(7)]
    calls = []

    def upper(item):
        calls.append(item)
        return item.upper()

    outcomes = ThreadGroup(2).run(lambda ctx: map_shards(ctx, items, upper))
    assert [error for _, error in outcomes] == [None, None]
    assert [result for result, _ in outcomes] == [[item.upper() for item in items]] * 2
    assert sorted(calls) == sorted(items)  # every item once, on one rank
    whole = ThreadGroup(3).run(
        lambda ctx: map_shards(ctx, items, lambda shard: [len(shard)] * len(shard), whole_shard=True)
    )
    assert whole[0][0] == [3, 2, 2, 3, 2, 2, 3]  # rank r's share is items[r::3]
    assert map_shards(None, items, upper) == [item.upper() for item in items]


def test_map_shards_raises_a_failing_ranks_own_error_on_every_rank():
    """Rank 1 fails on its first item: rank 0 finishes its share, reaches the gather and raises rank 1's error."""
    from ASSFTActive.errors import InputError

    def fail_on_one(item):
        if item == 1:
            raise InputError("case_1.nii.gz: not a readable volume")
        return item

    outcomes = ThreadGroup(2).run(lambda ctx: map_shards(ctx, list(range(6)), fail_on_one))
    errors = [error for _, error in outcomes]
    assert all(isinstance(e, InputError) and "case_1.nii.gz" in str(e) for e in errors), errors


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


def test_an_error_that_cannot_be_pickled_reaches_the_other_ranks_as_a_job_error_with_its_message():
    from ASSFTActive.errors import JobError

    def fail(item):
        if item == 0:
            raise _Unpicklable("a lock held by the reader")
        return item

    outcomes = ThreadGroup(2).run(lambda ctx: map_shards(ctx, [0, 1], fail))
    assert isinstance(outcomes[0][1], _Unpicklable)
    assert isinstance(outcomes[1][1], JobError) and "a lock held by the reader" in str(outcomes[1][1])


_GLOO_RANK = """
import json, os, sys
import torch.distributed as dist
from ASSFTActive.distributed import init_from_env, map_shards
from ASSFTActive.errors import InputError
ctx = init_from_env("cpu")

def work(item):
    if item == 3:
        raise InputError("case_3.nii.gz: the file is truncated (rank %d)" % ctx.rank)
    return item * 10

try:
    out = {"result": map_shards(ctx, list(range(6)), work)}
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
print(json.dumps(out))
sys.stdout.flush()
ctx.close()
"""


def _gloo_pair(code: str, tmp_path: Path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(
                RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
            ),
        )
        for rank in range(2)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs], outs


def test_map_shards_in_two_gloo_processes_gives_both_ranks_the_failing_ranks_message(tmp_path):
    """Item 3 is rank 1's (items[1::2]); without the error shipping rank 0 would wait in the gather."""
    results, outs = _gloo_pair(_GLOO_RANK, tmp_path)
    assert results == [{"error": "InputError", "message": "case_3.nii.gz: the file is truncated (rank 1)"}] * 2, outs


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory):
    from ASSFTActive.models import load_card

    tmp = tmp_path_factory.mktemp("pool")
    images, labels = write_dataset(tmp / "data", count=5, labeled=2)
    return load_card(make_tiny_card(tmp / "base")), [images[k] for k in sorted(images)], sorted(labels), tmp


def test_rank_pool_sharded_over_ranks_writes_what_one_process_writes(small_pool):
    """``rank_pool(..., ctx)`` shards, stages and gathers itself; rank 0 publishes and writes the ranking."""
    from ASSFTActive.api import rank_pool

    card, images, labeled, tmp = small_pool
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = rank_pool(images, card, 2, tmp / "single", labeled_ids=labeled, device=torch.device("cpu"))
        outcomes = ThreadGroup(2).run(
            lambda ctx: rank_pool(images, card, 2, tmp / "sharded", labeled_ids=labeled, ctx=ctx)
        )
    finally:
        torch.set_num_threads(threads)
    assert [error for _, error in outcomes] == [None, None]
    main, other = outcomes[0][0], outcomes[1][0]
    assert main.ranking == single.ranking and other.ranking == single.ranking
    assert other.volumes == () and other.files == {}
    assert tree(tmp / "sharded") == tree(tmp / "single")  # no staging folder left, the same files
    a, b = read_ranking_file(tmp / "single" / "ranking.json"), read_ranking_file(tmp / "sharded" / "ranking.json")
    assert [(c.case_id, c.rank, c.selected, c.labeled) for c in a.cases] == [
        (c.case_id, c.rank, c.selected, c.labeled) for c in b.cases
    ]
    for x, y in zip(a.cases, b.cases):
        assert (x.dkd is None and y.dkd is None) or x.dkd == pytest.approx(y.dkd, abs=1e-6)
        if not y.labeled:  # published from the staging folder into the ranking folder
            assert Path(y.prediction).parent == tmp / "sharded" / "predictions"
    assert read_json(tmp / "sharded" / "config.json")["world_size"] == 2


def test_a_volume_failing_on_one_rank_fails_every_rank_and_publishes_nothing(small_pool, tmp_path):
    """All-or-nothing across ranks: the failing rank's error reaches rank 0 and no rank waits for the timeout."""
    import shutil

    from ASSFTActive.api import rank_pool
    from ASSFTActive.errors import InputError

    card, images, labeled, tmp = small_pool
    pool = [tmp_path / p.name for p in images]
    for source, target in zip(images, pool):
        shutil.copy(source, target)
    pool[3].write_bytes(b"\x1f\x8b\x08garbage")  # images[3::2] is rank 1's shard
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcomes = ThreadGroup(2).run(lambda ctx: rank_pool(pool, card, 2, out, labeled_ids=labeled, ctx=ctx))
    finally:
        torch.set_num_threads(threads)
    errors = [error for _, error in outcomes]
    assert all(isinstance(e, InputError) and pool[3].name in str(e) for e in errors), errors
    assert tree(out) == []  # no ranking, no overlay, no prediction, no staging folder


def _torchrun(job: Path, cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "ASSFTActive.worker",
        str(job),
        "--device",
        "cpu",
    ]
    return subprocess.run(command, cwd=str(cwd), env=worker_env(), capture_output=True, text=True, timeout=600)


def _single(job: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", str(job)],
        cwd=str(cwd),
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    card = make_tiny_card(tmp / "base")
    images, labels = write_dataset(tmp / "data", count=7, labeled=3)
    (tmp / "cwd").mkdir()
    return {
        "card": card,
        "images": {k: str(v) for k, v in images.items()},
        "labels": {k: str(v) for k, v in labels.items()},
        "tmp": tmp,
    }


@pytest.mark.slow
@pytest.mark.parametrize("final", ["fold_average", "retrain"])
def test_two_gloo_processes_fine_tune_with_ddp_and_store_one_version(world, final):
    job = world["tmp"] / f"adapt-{final}"
    store = world["tmp"] / f"store-{final}"
    # whole folds: the collapse of their average in this world, and one event per step, need them
    finetune = dict(FAST_FINETUNE, validation=dict(FAST_FINETUNE["validation"], final=final, fold_budget=None))
    write_job(
        job,
        JobSpec(
            kind="adapt",
            images=world["images"],
            labels=world["labels"],
            model=str(world["card"]),
            store=str(store),
            name="site",
            budget=2,
            finetune=finetune,
        ),
    )
    out = _torchrun(job, world["tmp"] / "cwd")
    assert out.returncode == EXIT_DONE, out.stderr[-3000:]
    events = read_events(job)
    assert events[-1].event == "done" and not any(e.event == "error" for e in events)
    messages = [e.message for e in events if e.event == "phase"]
    assert "2 ranks, backend gloo, device cpu" in messages
    assert any("2 ranks hold identical weights" in m for m in messages)
    # only rank 0 reports: one event per training step (three guard folds of 20, then the final run), one done;
    # in this world the folds' average stops predicting a class on the pool (as in test_finetune_fold_average), so
    # that run averages (on every rank alike), warns, and trains the final run too
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert steps == list(range(1, len(steps) + 1)) and 60 < len(steps) <= 80
    fallback = [e for e in events if e.event == "warning" and "folds' average all but stopped" in e.message]
    assert len(fallback) == (final == "fold_average")
    assert out.stdout.count('"event": "done"') == 1
    result = read_json(job / "result.json")
    assert result["model_card"] == str(ModelStore(store).active("site").card_path), result.get("decision")
    assert [v.version for v in ModelStore(store).versions("site")] == ["v1"]
    assert sorted(result["predictions"]) == ["case_003", "case_004", "case_005", "case_006"]


@pytest.mark.slow
def test_ranking_sharded_over_two_processes_equals_the_single_process_ranking(world):
    rankings = {}
    for name, launch in (("single", _single), ("sharded", _torchrun)):
        job = world["tmp"] / f"rank-{name}"
        write_job(
            job,
            JobSpec(kind="rank", images=world["images"], labels=world["labels"], model=str(world["card"]), budget=2),
        )
        out = launch(job, world["tmp"] / "cwd")
        assert out.returncode == EXIT_DONE, out.stderr[-3000:]
        assert read_events(job)[-1].event == "done"
        rankings[name] = read_json(job / "ranking.json")
        assert sorted(read_json(job / "result.json")["predictions"]) == ["case_003", "case_004", "case_005", "case_006"]
    single, sharded = rankings["single"]["cases"], rankings["sharded"]["cases"]
    assert [r["case_id"] for r in sharded] == [r["case_id"] for r in single]
    assert [r["selected"] for r in sharded] == [r["selected"] for r in single]
    for a, b in zip(single, sharded):
        for key in ("dkd", "asd", "score"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], abs=1e-5)
    assert read_json(world["tmp"] / "rank-sharded" / "config.json")["world_size"] == 2


@pytest.mark.slow
def test_a_volume_failing_on_rank_1_under_torchrun_puts_its_real_error_in_result_json(world):
    """The worker's rank 0 writes ``result.json``; the error raised on rank 1 (a truncated image of its shard) is the
    message there, and both ranks end promptly (no collective timeout)."""
    images = dict(world["images"])
    bad = world["tmp"] / "broken" / "case_005.nii.gz"  # the sorted pool's images[5]: rank 1's share (images[1::2])
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(b"\x1f\x8b\x08garbage")
    images["case_005"] = str(bad)
    job = world["tmp"] / "rank-failing"
    write_job(job, JobSpec(kind="rank", images=images, labels=world["labels"], model=str(world["card"]), budget=2))
    out = _torchrun(job, world["tmp"] / "cwd")
    assert out.returncode != EXIT_DONE
    result = read_json(job / "result.json")
    assert result["status"] == "error" and "case_005.nii.gz" in result["message"], result
    assert not result["message"].startswith("unexpected"), result
    assert read_events(job)[-1].event == "error"
