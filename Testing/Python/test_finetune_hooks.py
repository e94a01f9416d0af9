"""The trainer's plug points: hooks are called in order with the trainer's state, loss terms add to the loss they are
handed, a hook can stop training early, and the resumable state carries a term's teacher."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest
import torch
from conftest import box_cases, make_tiny_card

from ASSFTActive.finetune.config import TrainConfig
from ASSFTActive.finetune.training import (
    CheckpointHook,
    LossTerm,
    ProgressHook,
    PseudoLabelTerm,
    SemiParts,
    SupervisedCase,
    TrainHook,
    TrainSchedule,
    ema_teacher,
    train_supervised,
)
from ASSFTActive.models import build_network, load_card

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(TrainHook):
    """Every call as ``(hook, step, start, last, network in training mode)``."""

    def __init__(self, log: List[Tuple], name: str = "hook"):
        self.log, self.name = log, name

    def _note(self, event: str, state) -> None:
        self.log.append((self.name, event, state.step, state.start, state.last, state.network.training))

    def on_train_start(self, state) -> None:
        self._note("start", state)

    def on_step(self, state) -> None:
        self._note("step", state)

    def on_validation(self, state) -> None:
        self._note("validation", state)
        state.network.eval()  # a scorer may evaluate; the trainer puts training mode back

    def on_train_end(self, state) -> None:
        self._note("end", state)


class ConstantTerm(LossTerm):
    """Adds ``value`` to the loss and records the batch it saw."""

    def __init__(self, value: float, log: List[Tuple]):
        self.value, self.log = value, log

    def add(self, loss, batch, state):
        self.log.append(("term", state.step, tuple(batch.images.shape), tuple(batch.logits.shape)))
        state.metrics["constant"] = self.value
        return loss + self.value


def test_hooks_are_called_in_order_with_the_trainers_state(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    log: List[Tuple] = []
    config = TrainConfig(iterations=6, batch_size=1, learning_rate=0.01)
    losses = train_supervised(
        build_network(card),
        card,
        box_cases(1),
        config,
        device=CPU,
        terms=[ConstantTerm(0.0, log)],
        hooks=[Recorder(log, "a"), Recorder(log, "b")],
        schedule=TrainSchedule(start=1, stop=5, validate_every=2),
    )
    assert len(losses) == 4
    calls = [(who, event, step) for who, event, step, *_ in log if who != "term"]
    assert calls[:2] == [("a", "start", 1), ("b", "start", 1)]
    assert [c for c in calls if c[0] == "a"] == [
        ("a", "start", 1),
        ("a", "step", 2),
        ("a", "validation", 2),
        ("a", "step", 3),
        ("a", "step", 4),
        ("a", "validation", 4),
        ("a", "step", 5),
        ("a", "validation", 5),
        ("a", "end", 5),
    ]
    assert all(entry[3:5] == (1, 5) for entry in log if entry[0] != "term"), "start and last as scheduled"
    steps = [entry for entry in log if entry[1] == "step"]
    assert all(entry[5] for entry in steps), "the network trains during steps"
    assert not [entry for entry in log if entry[1] == "end"][0][5], "eval mode at the end"
    terms = [entry for entry in log if entry[0] == "term"]
    assert [entry[1] for entry in terms] == [1, 2, 3, 4], "terms see the 0-based step being trained"
    assert terms[0][2][:2] == (1, 1) and terms[0][3][:2] == (1, card.num_classes)
    # terms are added before the hooks of the same step run
    assert log.index(terms[0]) < log.index(next(e for e in log if e[1] == "step"))


def test_a_loss_term_adds_to_the_loss_and_reports_its_part(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    events, log = [], []
    config = TrainConfig(iterations=2, batch_size=1, seed=4)
    network = build_network(card)
    train_supervised(
        network,
        card,
        box_cases(1),
        config,
        device=CPU,
        terms=[ConstantTerm(2.5, log)],
        hooks=[ProgressHook(events.append)],
    )
    metrics = [e.metrics for e in events]
    assert [m["constant"] for m in metrics] == [2.5, 2.5]
    assert metrics[0]["loss"] == pytest.approx(metrics[0]["loss_labeled"] + 2.5, rel=1e-6)


def test_a_hook_can_stop_training_early(tmp_path):
    class StopAfterThree(TrainHook):
        def on_step(self, state):
            state.stop = state.step >= 3

    card = load_card(make_tiny_card(tmp_path / "model"))
    log: List[Tuple] = []
    losses = train_supervised(
        build_network(card),
        card,
        box_cases(1),
        TrainConfig(iterations=10, batch_size=1),
        device=CPU,
        hooks=[StopAfterThree(), Recorder(log)],
    )
    assert len(losses) == 3
    assert [(event, step) for _, event, step, *_ in log][-2:] == [("validation", 3), ("end", 3)]


def test_the_checkpoint_state_carries_the_optimiser_and_a_terms_teacher(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    network = build_network(card)
    saved = []
    term = PseudoLabelTerm(box_cases(1, 10), SemiParts(ema_decay=0.5), ema_teacher(network))
    train_supervised(
        network,
        card,
        box_cases(1),
        TrainConfig(iterations=4, batch_size=1),
        device=CPU,
        terms=[term],
        hooks=[CheckpointHook(2, lambda step, net, state: saved.append((step, net, state)))],
    )
    assert [step for step, _, _ in saved] == [2, 4]
    step, net, state = saved[-1]
    assert net is network and sorted(state) == ["optimizer", "scheduler", "teacher"]
    teacher = term.teacher.state_dict()
    assert all(torch.equal(state["teacher"][k], teacher[k]) for k in teacher)
    assert any(not torch.equal(v, network.state_dict()[k]) for k, v in teacher.items() if v.dtype.is_floating_point), (
        "the teacher is an average, not the student"
    )
    assert np.isfinite([float(v.float().sum()) for v in teacher.values()]).all()


def test_a_labelled_case_counts_only_its_annotated_voxels(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model"))
    case = box_cases(1)[0]
    unannotated = SupervisedCase(case.case_id, case.image, case.label, np.zeros(case.label.array.shape, dtype=bool))
    events = []
    train_supervised(
        build_network(card),
        card,
        [unannotated],
        TrainConfig(iterations=2, batch_size=1),
        device=CPU,
        hooks=[ProgressHook(events.append)],
    )
    assert [e.metrics["loss_labeled"] for e in events] == [0.0, 0.0]
    events.clear()
    train_supervised(
        build_network(card),
        card,
        [case],
        TrainConfig(iterations=2, batch_size=1),
        device=CPU,
        hooks=[ProgressHook(events.append)],
    )
    assert all(e.metrics["loss_labeled"] > 0.1 for e in events)
