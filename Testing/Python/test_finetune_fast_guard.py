"""The guard at a fraction of its cost (issue 25.6): shortened cross-validation folds read at the final run's steps,
and folds that pseudo-label part of the pool, make the same decision as the full guard on a fixed seed."""

from __future__ import annotations

import json

import pytest
from conftest import FAST_FINETUNE, make_tiny_card, write_dataset, write_swapped_label

from ASSFTActive.finetune.adapt import adapt_model
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.finetune.cross_validation import fold_run, fold_share, fold_stage_steps, to_final_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(validation=None, **changes) -> FinetuneConfig:
    data = json.loads(json.dumps(FAST_FINETUNE))
    data.update(changes)
    data["validation"] = dict(data["validation"], **(validation or {}))
    return FinetuneConfig.from_dict(data)


def test_a_fold_step_is_stretched_onto_the_final_run_stage_by_stage():
    assert fold_stage_steps(100, 100, 1 / 3) == (33, 33)
    assert fold_stage_steps(3, 1, 0.1) == (1, 1), "at least one step per stage"
    final = [to_final_step(s, 100, 100, 33, 33) for s in (0, 10, 33, 34, 66)]
    assert final == [0, 30, 100, 103, 200], "stage ends meet stage ends"
    assert [to_final_step(s, 12, 8, 6, 4) for s in range(11)] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert to_final_step(14, 10, 10, 5, 3) == 10 + 10 + 10 + int(round(3 * 10 / 3)), "the third stage"
    steps = [to_final_step(s, 100, 80, 50, 40) for s in range(91)]
    assert steps == sorted(set(steps)), "distinct fold steps stay distinct"


def test_a_fold_budget_of_two_leaves_two_folds_whole_and_gives_three_two_thirds():
    budget = _config({"fold_budget": 2.0}).validation
    assert [fold_share(budget, k) for k in (2, 3, 4)] == [1.0, 2 / 3, 0.5]
    assert fold_share(_config({"fold_budget": 2.0, "fold_fraction": 0.5}).validation, 2) == 0.5, "the smaller wins"
    assert fold_share(_config({"fold_budget": None}).validation, 3) == 1.0, "no budget: folds as long as the final run"


def test_fold_runs_under_a_budget_are_shortened_only_when_the_folds_exceed_it():
    """Under ``fold_budget`` 2, two folds train the final recipe itself; each of three trains two thirds of every
    stage (100 + 100 steps: 67 + 67) and is scored every 17 steps."""
    from dataclasses import dataclass, field
    from typing import Any, Callable, Dict, Optional

    config = _config({"fold_budget": 2.0, "every": 25}, train=dict(FAST_FINETUNE["train"], iterations=100))
    config = FinetuneConfig.from_dict(dict(config.to_dict(), semi_iterations=100))

    @dataclass(frozen=True)
    class Run:  # the fields of AdaptRun that fold_run reads
        config: FinetuneConfig
        rounds: int
        pool: Dict[str, str] = field(default_factory=lambda: {"u": "u.nii.gz"})
        images: Dict[str, str] = field(default_factory=lambda: {"u": "u.nii.gz"})
        labels: Dict[str, Any] = field(default_factory=dict)
        progress: Optional[Callable[..., None]] = None

        @property
        def recipe_steps(self) -> int:
            return self.config.train.iterations + self.rounds * self.config.semi_steps

    run = Run(config=config, rounds=2)
    assert fold_run(run, 0, folds=2) is run
    short = fold_run(run, 0, folds=3).config
    assert (short.train.iterations, short.semi_steps, short.validation.every) == (67, 67, 17)


@pytest.fixture
def world(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=6, labeled=3)
    return {"card": card, "images": images, "labels": labels, "tmp": tmp_path}


FAST = {"fold_fraction": 0.5, "fold_pool_cases": 2}


def _adapt(world, name, validation=None, labels=None, **changes):
    events = []
    result = adapt_model(
        world["images"],
        labels or world["labels"],
        store=world["tmp"] / name,
        model=world["card"],
        config=_config(validation, **changes),
        progress=events.append,
    )
    return result, events


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_the_fast_guard_activates_the_same_improvement_with_half_the_fold_steps(world):
    changes = {
        "train": dict(FAST_FINETUNE["train"], iterations=60),
        "semi_iterations": 20,
        "allow_implausible_labels": True,
    }  # the synthetic boxes are tiny; this test is about the guard
    full, full_events = _adapt(world, "full", {"fold_budget": None}, **changes)
    fast, fast_events = _adapt(world, "fast", FAST, **changes)
    assert full.activated and fast.activated, (full.decision.reason, fast.decision.reason)
    assert fast.metrics["cross_validation"]["steps"][-1] == 80, "the fold curve is read at the final run's steps"
    assert set(fast.metrics["cross_validation"]["steps"]) <= set(range(0, 81, 2))
    trained = [
        len([e for e in events if e.event == "progress" and e.phase == "train" and "fold" in e.message])
        for events in (full_events, fast_events)
    ]
    assert trained == [3 * 80, 3 * 40], "each fold trains half the steps"
    fold_messages = [e.message for e in fast_events if e.phase == "validate" and e.event == "phase"]
    assert all("30 + 10 steps per stage instead of 60 + 20, 2 of 3 unlabelled volumes" in m for m in fold_messages)
    fold_bar = [
        (e.step, e.total) for e in fast_events if e.event == "progress" and e.phase == "train" and "fold" in e.message
    ]
    assert {total for _, total in fold_bar} == {3 * 80}, "fold progress is shown on the run's whole bar"
    steps = [step for step, _ in fold_bar]
    assert steps == sorted(steps) and steps[-1] == 3 * 80, "the three folds fill the bar (their average: no training)"


def _trained_card(tmp_path):
    """A tiny model fitted to the synthetic boxes (a decent "current" model), as a card."""
    from ASSFTActive.models import load_card, load_model, save_card, save_weights

    base = make_tiny_card(tmp_path / "untrained")
    images, labels = write_dataset(tmp_path / "source", count=3, labeled=3, first_seed=80)
    result = adapt_model(
        images,
        labels,
        store=tmp_path / "pretraining",
        model=base,
        name="source",
        config=_config(
            {"guard": False},
            train=dict(FAST_FINETUNE["train"], iterations=60),
            semi_iterations=1,
            pseudo={"mode": "none"},
        ),
    )
    folder = tmp_path / "pretrained"
    folder.mkdir()
    save_weights(load_model(load_card(result.card_path)).network, folder / "weights.safetensors")
    save_card(load_card(base), folder / "card.json")
    return folder / "card.json"


def test_the_fast_guard_refuses_contradicting_labels_like_the_full_guard(tmp_path):
    """A decent model and two labelled volumes, the classes of one swapped: both guards refuse, for one reason."""
    card = _trained_card(tmp_path)
    images, labels = write_dataset(tmp_path / "data", count=4, labeled=2, first_seed=40)
    labels["case_001"] = write_swapped_label(labels["case_001"], tmp_path / "swapped")
    world = {"images": images, "card": card, "tmp": tmp_path}
    full, _ = _adapt(world, "full", {"min_fold_gain": -0.05}, labels=labels, allow_implausible_labels=True)
    fast, _ = _adapt(world, "fast", dict(FAST, min_fold_gain=-0.05), labels=labels, allow_implausible_labels=True)
    assert not full.activated and not fast.activated, (full.decision.reason, fast.decision.reason)
    assert full.decision.failed == fast.decision.failed


def test_another_method_s_folds_run_in_full_with_a_warning():
    """SFR's recipe is its re-training, not ASSFT's stages: the fold shortcut must not stretch its steps."""
    from types import SimpleNamespace

    from ASSFTActive.finetune.cross_validation import fold_run

    warnings = []
    config = _config({"fold_fraction": 0.5})
    sfr_like = SimpleNamespace(
        config=config,
        pool={"u": "u.nii.gz"},
        recipe_steps=config.train.iterations,
        rounds=1,
        warn=lambda message, phase: warnings.append(message),
    )
    assert fold_run(sfr_like, 0) is sfr_like
    assert warnings and "this method's folds run in full" in warnings[0]
