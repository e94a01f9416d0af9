"""Outputs written in the background: the writer's order, bound and errors, and ``rank_pool`` writing a volume's
files while the next one is predicted, with the same files and the same all-or-nothing failure as before."""

from __future__ import annotations

import functools
import json
import threading
import time

import numpy as np
import pytest
import torch
from conftest import make_tiny_card, tree, write_dataset

from ASSFTActive.inference.writing import BackgroundWriter

WAIT = 10.0  # seconds an event may take before a test fails instead of hanging


def _blocking_write(started: threading.Event, release: threading.Event):
    def write() -> None:
        started.set()
        assert release.wait(WAIT)

    return write


def _submit_in_thread(writer: BackgroundWriter, write) -> threading.Event:
    """Submit from another thread; the returned event is set once ``submit`` returned."""
    returned = threading.Event()

    def run() -> None:
        writer.submit(write)
        returned.set()

    threading.Thread(target=run, daemon=True).start()
    return returned


def test_writes_run_in_submission_order_on_one_thread_other_than_the_callers():
    done, threads = [], set()
    with BackgroundWriter(max_pending=3) as writer:
        for index in range(6):
            writer.submit(lambda index=index: (done.append(index), threads.add(threading.get_ident())))
    assert done == list(range(6))
    assert len(threads) == 1 and threading.get_ident() not in threads


def test_submit_blocks_while_one_write_runs_and_max_pending_wait():
    started, release = threading.Event(), threading.Event()
    with BackgroundWriter() as writer:  # default: one write may wait beside the running one
        writer.submit(_blocking_write(started, release))
        assert started.wait(WAIT)
        writer.submit(lambda: None)  # waits in the queue; there was room
        third = _submit_in_thread(writer, lambda: None)
        assert not third.wait(0.3)  # no room until the running write ends
        release.set()
        assert third.wait(WAIT)


def test_a_larger_bound_lets_more_writes_wait():
    started, release = threading.Event(), threading.Event()
    with BackgroundWriter(max_pending=2) as writer:
        writer.submit(_blocking_write(started, release))
        assert started.wait(WAIT)
        writer.submit(lambda: None)
        writer.submit(lambda: None)
        fourth = _submit_in_thread(writer, lambda: None)
        assert not fourth.wait(0.3)
        release.set()
        assert fourth.wait(WAIT)


def test_close_waits_for_every_submitted_write():
    done = []
    writer = BackgroundWriter(max_pending=4)
    for index in range(4):
        writer.submit(lambda index=index: (time.sleep(0.05), done.append(index)))
    writer.close()
    assert done == [0, 1, 2, 3]


def test_a_failed_write_is_raised_by_the_next_submit_and_by_close_and_later_writes_are_skipped():
    release = threading.Event()
    done = []

    def fail() -> None:
        assert release.wait(WAIT)
        raise OSError("disk full")

    writer = BackgroundWriter(max_pending=1)
    writer.submit(fail)
    writer.submit(lambda: done.append("queued behind the failure"))
    release.set()
    # no room until the failing write ends, and its error is recorded before its room is given back
    with pytest.raises(OSError, match="disk full"):
        writer.submit(lambda: done.append("submitted after the failure"))
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert done == []


def test_a_failed_write_is_raised_when_the_block_ends():
    with pytest.raises(OSError, match="read-only"):
        with BackgroundWriter() as writer:
            writer.submit(functools.partial(_raise, OSError("read-only file system")))


def test_a_submit_waiting_for_room_raises_the_error_of_the_write_it_waited_for():
    started, release = threading.Event(), threading.Event()
    writer = BackgroundWriter(max_pending=0)

    def fail() -> None:
        started.set()
        assert release.wait(WAIT)
        raise OSError("disk full")

    writer.submit(fail)
    assert started.wait(WAIT)
    errors = []

    def run() -> None:
        try:
            writer.submit(lambda: None)
        except OSError as exc:
            errors.append(exc)

    waiting = threading.Thread(target=run, daemon=True)
    waiting.start()
    release.set()
    waiting.join(WAIT)
    assert [str(e) for e in errors] == ["disk full"]
    with pytest.raises(OSError):
        writer.close()


def test_an_error_in_the_block_skips_waiting_writes_but_waits_for_the_running_one():
    started, release = threading.Event(), threading.Event()
    done = []

    def running() -> None:
        started.set()
        assert release.wait(WAIT)
        done.append("running")

    with pytest.raises(KeyError):
        with BackgroundWriter() as writer:
            writer.submit(running)
            assert started.wait(WAIT)
            writer.submit(lambda: done.append("waiting"))
            threading.Timer(0.1, release.set).start()
            raise KeyError("prediction failed")
    assert done == ["running"]


def test_a_disabled_writer_writes_in_the_callers_thread_and_raises_at_once():
    threads = []
    writer = BackgroundWriter(enabled=False)
    writer.submit(lambda: threads.append(threading.get_ident()))
    assert threads == [threading.get_ident()]
    with pytest.raises(OSError):
        writer.submit(functools.partial(_raise, OSError("disk full")))
    with pytest.raises(OSError):
        writer.close()


def test_a_closed_writer_refuses_new_writes_and_a_negative_bound_is_refused():
    writer = BackgroundWriter()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(lambda: None)
    with pytest.raises(ValueError):
        BackgroundWriter(max_pending=-1)


def _raise(exc: BaseException) -> None:
    raise exc


# ------------------------------------------------------------------ rank_pool with background writes


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    from ASSFTActive.models import load_card

    root = tmp_path_factory.mktemp("writer-pool")
    images, _ = write_dataset(root / "data", count=3, labeled=0)
    return [images[k] for k in sorted(images)], load_card(make_tiny_card(root / "model"))


def _synchronous(max_pending: int = 1, enabled: bool = True) -> BackgroundWriter:
    """A writer that writes in the caller's thread whatever it is asked for (the writes of before)."""
    return BackgroundWriter(max_pending, enabled=False)


def _rank(images, card, out, **kwargs):
    from ASSFTActive.api import rank_pool

    return rank_pool(images, card, 2, out, device=torch.device("cpu"), **kwargs)


def test_rank_pool_writes_the_same_files_as_synchronous_writes(pool, tmp_path, monkeypatch, one_thread):
    from ASSFTActive import api
    from ASSFTActive.io import read_volume

    images, card = pool
    background = _rank(images, card, tmp_path / "background")
    monkeypatch.setattr(api, "BackgroundWriter", _synchronous)
    writers, write_volume = set(), api.write_volume
    monkeypatch.setattr(api, "write_volume", lambda *a: (writers.add(threading.get_ident()), write_volume(*a))[1])
    synchronous = _rank(images, card, tmp_path / "synchronous")
    assert writers == {threading.get_ident()}  # the reference really was written on the critical path
    assert tree(tmp_path / "background") == tree(tmp_path / "synchronous")
    assert background.ranking == synchronous.ranking
    for a, b in zip(background.volumes, synchronous.volumes):
        assert a.entropy_map == tmp_path / "background" / "overlays" / f"{a.case_id}_entropy.nii.gz"
        assert a.prediction == tmp_path / "background" / "predictions" / f"{a.case_id}.nii.gz"
        for key in ("entropy_map", "prediction"):
            x, y = read_volume(getattr(a, key)), read_volume(getattr(b, key))
            np.testing.assert_array_equal(x.array, y.array)
            np.testing.assert_array_equal(x.affine, y.affine)
        assert json.loads(a.regions.read_text()) == json.loads(b.regions.read_text())


def test_the_outputs_of_a_volume_are_written_while_the_next_is_predicted(pool, tmp_path, monkeypatch, one_thread):
    """The first volume's label map is written only once the second volume's prediction has begun: with writes on
    the critical path this would wait in vain."""
    from ASSFTActive import api

    images, card = pool
    predictor = api.make_predictor(card, torch.device("cpu"))
    second_started = threading.Event()
    predicted = []
    predict = predictor.predict

    def counting_predict(*args, **kwargs):
        predicted.append(1)
        if len(predicted) == 2:
            second_started.set()
        return predict(*args, **kwargs)

    overlapped = []
    write_volume = api.write_volume

    def waiting_write_volume(volume, path):
        if not overlapped:
            overlapped.append(second_started.wait(WAIT))
        return write_volume(volume, path)

    monkeypatch.setattr(predictor, "predict", counting_predict)
    monkeypatch.setattr(api, "write_volume", waiting_write_volume)
    reports = api.analyse_pool(images[:2], predictor, api.QueryConfig(), (), tmp_path)
    assert overlapped == [True]
    assert all(r.prediction.is_file() and r.entropy_map.is_file() and r.regions.is_file() for r in reports)


def test_a_failed_write_fails_the_ranking_and_publishes_nothing(pool, tmp_path, monkeypatch, one_thread):
    from ASSFTActive import api

    images, card = pool
    calls = []
    write_volume = api.write_volume

    def failing_second(volume, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(f"{path}: no space left on device")
        return write_volume(volume, path)

    monkeypatch.setattr(api, "write_volume", failing_second)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="no space left"):
        _rank(images, card, out)
    assert len(calls) == 2  # the third volume's write was skipped
    assert tree(out) == []  # no overlay, no prediction, no ranking, no staging folder
