"""One progress model for a whole job (ASSFTActive.progress.JobProgress): monotonic, weighted by phase cost, a time
left, a final state in words; the command-line bar that uses it; hd95 without MONAI's FutureWarning."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

from ASSFTActive.progress import CANCELLED, DONE, FAILED, Event, JobProgress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def adaptEvents():
    """The events of an adapt job on 12 volumes (3 labelled) in the order the worker sends them (as logged on the
    sample), with the seconds each took there: start-up; load (reading the labels, then comparing each with the
    prediction: the phase starts over); scoring; then 3 cross-validation folds and the final run, each a supervised
    and a semi-supervised stage of 20 steps, with cross-validation scoring and a pseudo-labelling round of the 9
    unlabelled volumes between them (160 train steps in all); predict, commit, re-rank."""
    events = [(9.0, Event("phase", phase="start"))]
    events += [(3.5 if i == 1 else 0.01, Event("progress", phase="load", step=i, total=3)) for i in range(1, 4)]
    events += [(0.2, Event("progress", phase="load", step=i, total=3)) for i in range(1, 4)]
    events += [(0.2, Event("progress", phase="evaluate", step=i, total=3)) for i in range(1, 4)]
    step = 0
    for fold in range(4):
        if fold < 3:
            events += [(0.2, Event("progress", phase="validate", step=i, total=2)) for i in range(1, 3)]
        events += [(1.2, Event("progress", phase="train", step=step + i, total=160)) for i in range(1, 21)]
        events += [(0.32, Event("progress", phase="pseudo", step=i, total=9)) for i in range(1, 10)]
        events += [(1.2, Event("progress", phase="train", step=step + 20 + i, total=160)) for i in range(1, 21)]
        step += 40
    events += [(0.2, Event("progress", phase="evaluate", step=i, total=3)) for i in range(1, 4)]
    events += [(0.25, Event("progress", phase="predict", step=i, total=12)) for i in range(1, 13)]
    events += [(1.0, Event("phase", phase="commit"))]
    events += [(0.25, Event("progress", phase="rank", step=i, total=12)) for i in range(1, 13)]
    return events


def test_adapt_job_fraction_only_moves_forward_and_follows_time_not_phases():
    clock = Clock()
    model = JobProgress("adapt", volumes=12, clock=clock)
    fractions, times = [], []
    events = adaptEvents()
    total_time = sum(seconds for seconds, _ in events)
    for seconds, event in events:
        clock.now += seconds
        state = model.update(event)
        fractions.append(state.fraction)
        times.append(clock.now / total_time)
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] < 1.0 and model.state.status == "running"
    # weighted by cost: the fraction stays close to the share of the time spent (per-phase bars were off by 50 %),
    # also while the pseudo-labelling rounds run between training steps
    assert max(abs(f - t) for f, t in zip(fractions, times)) < 0.1
    assert model.finish(DONE).fraction == 1.0


def test_time_left_estimate_is_close_halfway_through_training():
    clock = Clock()
    model = JobProgress("adapt", volumes=12, clock=clock)
    events = adaptEvents()
    total_time = sum(seconds for seconds, _ in events)
    for seconds, event in events:
        clock.now += seconds
        state = model.update(event)
        if event.phase == "train" and event.step == 80:
            break
    assert state.remaining_s is not None
    assert state.remaining_s == pytest.approx(total_time - clock.now, rel=0.15)
    assert "left" in state.describe() and "train step 80/160" in state.describe()


def test_failed_and_cancelled_jobs_never_end_on_a_full_bar_and_say_so_in_words():
    for status, words in ((FAILED, "failed at"), (CANCELLED, "cancelled at")):
        model = JobProgress("adapt", volumes=4)
        model.update(Event("progress", phase="load", step=2, total=4))
        end = model.finish(status, "the labels look wrong")
        assert end.status == status and end.fraction < 1.0 and words in end.describe()
        assert end.colour in ("red", "grey")
        assert model.update(Event("progress", phase="rank", step=4, total=4)) == end  # an ended job stays ended
    done = JobProgress("rank", volumes=3)
    assert done.finish(DONE).describe().startswith("Rank done in") and done.state.colour == "green"
    with pytest.raises(ValueError):
        JobProgress("rank").finish("running")


def test_a_phase_that_starts_over_adds_its_units_and_the_bar_never_goes_back():
    model = JobProgress("adapt", volumes=6)
    seen = []
    for _round in range(3):
        for step in range(1, 5):
            seen.append(model.update(Event("progress", phase="load", step=step, total=4)).fraction)
    seen.append(model.update(Event("progress", phase="evaluate", step=1, total=3)).fraction)  # an earlier phase again
    assert all(b >= a for a, b in zip(seen, seen[1:]))


def test_format_duration_reads_as_words():
    assert format_duration(42.4) == "42 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"


def test_cli_bar_shows_one_percentage_for_the_run_without_step_rates(monkeypatch):
    from ASSFTActive.cli import common

    stream = io.StringIO()
    monkeypatch.setattr(common.sys, "stderr", stream)
    bar = common.ProgressBar(kind="rank", volumes=4)
    with bar.job():
        bar(Event("phase", phase="rank", total=4, message="ranking 4 volumes on cpu"))
        for step in range(1, 5):
            bar(Event("progress", phase="rank", step=step, total=4, message=f"case {step}"))
    text = stream.getvalue()
    assert "it/s" not in text and "step/s" not in text
    assert "rank 4/4" in text
    assert text.strip().splitlines()[-1].startswith("Rank done in")


def test_cli_bar_ends_failed_in_words_when_the_command_raises(monkeypatch):
    from ASSFTActive.cli import common

    stream = io.StringIO()
    monkeypatch.setattr(common.sys, "stderr", stream)
    bar = common.ProgressBar(kind="adapt", volumes=2)
    with pytest.raises(RuntimeError):
        with bar.job():
            bar(Event("progress", phase="load", step=1, total=2))
            raise RuntimeError("no labels")
    assert "Adapt failed at" in stream.getvalue() and "no labels" in stream.getvalue()


def test_hd95_uses_monai_without_its_future_warning():
    pytest.importorskip("monai")
    from ASSFTActive.evaluate import hd95_per_class

    a = np.zeros((12, 10, 8), np.uint8)
    b = np.zeros_like(a)
    a[2:8, 2:7, 1:6] = 1
    b[3:9, 2:7, 1:6] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        value = hd95_per_class(a, b, 2, (1.0, 1.0, 2.0))
    assert value[0] == pytest.approx(1.0)


def sfrEvents(folds=2, pool=10, sam_steps=6000, retrain_steps=6000):
    """The events of an SFR job in the order the worker sends them, with made-up seconds per event that are not the
    model's priors (SAM steps 0.08 s, 3D re-training steps 0.2 s, SAM's pseudo-label 1.5 s per volume): start-up;
    the SAM prior's and the labels' loading; per pass (``folds`` cross-validation folds, then the final run) SAM
    fine-tuning, its pseudo-labels of the pool and the Mean-Teacher re-training, whose steps count from 0 again in
    every pass, with the guard's scoring between training steps; predict, commit, re-rank."""
    events = [(9.0, Event("phase", phase="start")), (2.0, Event("phase", phase="load", message="SAM prior"))]
    events += [(1.0, Event("progress", phase="load", step=i, total=2)) for i in (1, 2, 1, 2)]
    for index in range(folds + 1):
        if index == folds:
            events.append((0.1, Event("phase", phase="train", message="sfr: final run")))
        events.append((3.0, Event("phase", phase="sfr_finetune", step=0, total=sam_steps)))
        events += [
            (0.08, Event("progress", phase="sfr_finetune", step=i, total=sam_steps)) for i in range(1, sam_steps + 1)
        ]
        events += [(1.5, Event("progress", phase="sfr_pseudo_labels", step=i, total=pool)) for i in range(1, pool + 1)]
        events.append((0.5, Event("phase", phase="train", step=0, total=retrain_steps)))
        for i in range(1, retrain_steps + 1):
            events.append((0.2, Event("progress", phase="train", step=i, total=retrain_steps)))
            if index < folds and i % 500 == 0:
                events.append((1.0, Event("progress", phase="validate", step=1, total=1)))
    volumes = pool + 2
    events += [(0.3, Event("progress", phase="predict", step=i, total=volumes)) for i in range(1, volumes + 1)]
    events += [(1.0, Event("phase", phase="commit"))]
    events += [(0.3, Event("progress", phase="rank", step=i, total=volumes)) for i in range(1, volumes + 1)]
    return events


def test_sfr_time_left_is_plausible_from_the_first_sam_steps_and_at_half_way():
    """Issue 26: at 51 % an SFR job said 'about 7 s left' with 6,000 SAM steps still to run. Weighted by each
    phase's step count (all passes, from the job's settings) times its own timed cost per step, the time left is
    within a factor of 2 of the truth early on and at half way, and the bar follows the time spent."""
    from ASSFTActive.progress import sfr_units

    events = sfrEvents()
    total_time = sum(seconds for seconds, _ in events)
    clock = Clock()
    model = JobProgress("sfr", volumes=12, clock=clock, units=sfr_units(12, 2, 6000, 6000, folds=2))
    checked, fractions = [], []
    for seconds, event in events:
        clock.now += seconds
        state = model.update(event)
        fractions.append(state.fraction)
        truth = total_time - clock.now
        early = event.phase == "sfr_finetune" and event.step == 100 and not checked
        if early or (state.fraction >= 0.51 and len(checked) == 1):
            assert state.remaining_s is not None
            assert truth / 2 <= state.remaining_s <= truth * 2, (state.describe(), truth)
            assert abs(state.fraction - clock.now / total_time) < 0.15, (state.fraction, clock.now / total_time)
            checked.append(state.remaining_s / truth)
    assert len(checked) == 2
    assert all(b >= a for a, b in zip(fractions, fractions[1:]))


def test_an_sfr_jobs_plan_counts_every_pass_of_sam_and_the_re_training():
    from ASSFTActive.jobs import JobSpec
    from ASSFTActive.progress import job_units

    images = {f"case{i}": f"/data/case{i}.nii.gz" for i in range(6)}
    labels = {"case0": "/labels/case0.nii.gz", "case1": "/labels/case1.nii.gz", "case2": "/labels/case2.nii.gz"}
    spec = JobSpec(
        kind="sfr",
        images=images,
        labels=labels,
        model="default",
        store="/store",
        sfr={"method": "sfr_plus", "sam": {"iterations": 50}, "retrain": {"iterations": 40}},
    )
    units = job_units(spec)
    assert units["sfr_finetune"] == 4 * 2 * 50  # 3 folds + the final run, two SAM fine-tunings each (SFR+)
    assert units["train"] == 4 * 40 and units["sfr_pseudo_labels"] == 4 * 2 * 3
    two_patients = JobSpec(**{**spec.to_dict(), "subjects": {"case0": "A", "case1": "A"}})
    assert job_units(two_patients)["train"] == 3 * 40, "one fold per patient: 2 folds + the final run"
    no_guard = JobSpec(
        kind="sfr", images=images, labels=labels, model="default", store="/store", sfr={"validation": {"guard": False}}
    )
    assert job_units(no_guard)["sfr_finetune"] == 6000 and job_units(no_guard)["train"] == 6000
    assert job_units(JobSpec(kind="rank", images=images, labels={}, model="default", store="/store")) == {}


def test_assft_sfrs_bar_plans_every_pass_of_sam_and_the_re_training_from_its_settings():
    """The command line's bar gets the same plan as the panel's: ``assft sfr`` passes SFR's settings to it."""
    import argparse

    from ASSFTActive.cli.common import progress_channel
    from ASSFTActive.progress import sfr_config_units
    from ASSFTActive.sfr.config import SfrConfig

    config = SfrConfig.from_dict({"sam": {"iterations": 30}, "retrain": {"iterations": 20}})
    units = sfr_config_units(config, volumes=8, labelled=2)
    assert units["sfr_finetune"] == 3 * 30 and units["train"] == 3 * 20  # 2 folds + the final run
    bar, _ = progress_channel(argparse.Namespace(quiet=True, command="sfr"), volumes=8, units=units)
    state = bar.model.update(Event("progress", phase="sfr_finetune", step=30, total=30))
    assert state.fraction < 0.5  # one SAM run of three, with the re-training still to come
