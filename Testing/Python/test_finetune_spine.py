"""The adaptation spine (``run_adaptation``) with a fake method: what the spine owns happens once, in order, for any
method; a failing method leaves the store and the active model as they were; a pseudo-labeller plugs into ASSFT's
method without patching anything."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Sequence

import pytest
import torch
from conftest import FAST_FINETUNE, make_tiny_card, read_json, write_dataset

from ASSFTActive.finetune.adapt import AdaptRequest, run_adaptation
from ASSFTActive.finetune.assft import SelectiveSelfTraining
from ASSFTActive.finetune.checkpoints import PseudoLabels
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.finetune.method import Trained
from ASSFTActive.finetune.pseudo import PseudoDecision
from ASSFTActive.finetune.result import AdaptResult
from ASSFTActive.store import ModelStore

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=3)
    return {"card": card, "images": images, "labels": labels, "store": tmp_path / "store", "tmp": tmp_path}


def _config(guard: bool = True, final: str = "fold_average") -> FinetuneConfig:
    data = json.loads(json.dumps(FAST_FINETUNE))
    data["validation"] = dict(data.get("validation") or {}, guard=guard, final=final, fold_budget=None)  # whole folds
    data["train"]["iterations"] = 4
    data["semi_iterations"] = 2
    return FinetuneConfig.from_dict(data)


class FakeMethod:
    """An adaptation method that records what the spine asks of it; its "training" nudges one bias."""

    def __init__(self, config: FinetuneConfig, fail_in: str = "", nudge: float = 0.0):
        self.config, self.fail_in, self.nudge = config, fail_in, nudge
        self.calls: List[Any] = []

    def _call(self, name: str, *details: Any) -> None:
        self.calls.append((name,) + details if details else name)
        if name == self.fail_in:
            raise RuntimeError(f"the fake method failed in {name}")

    def run_config(self) -> FinetuneConfig:
        self._call("run_config")
        return self.config

    def identity(self) -> Mapping[str, Any]:
        self._call("identity")
        return {"fake": self.config.to_dict()}

    def settings(self) -> Dict[str, Any]:
        self._call("settings")
        return {"fake": {"nudge": self.nudge}}

    def recipe_steps(self, config: FinetuneConfig) -> int:
        return 6

    def load(self, card, progress) -> None:
        self._call("load", card.name)

    def prepare(self, run) -> None:
        self._call("prepare", run.method is self, sorted(run.pool))

    def recipe(self, run, network, train, stop, *, progress_offset, label, scorer) -> tuple:
        self._call("recipe", tuple(sorted(c.case_id for c in train)), stop, label.strip())
        for step in (3, stop):
            scorer(network, step)
        return ()  # no pseudo-labels

    def train_final(self, run, labeled, stop, cross_validated) -> Trained:
        self._call("train_final", len(labeled), stop, cross_validated)
        with torch.no_grad():
            next(run.network.parameters()).add_(self.nudge)
        run.network.eval()
        return Trained(resumed_from=0, pseudo=(), provenance={"fake_entry": [1, 2]}, summary={"fake_count": 2})

    def result(self, result: AdaptResult) -> AdaptResult:
        self._call("result", result.version)
        return result


def _request(world, events=None, model=None) -> AdaptRequest:
    return AdaptRequest(
        world["images"],
        world["labels"],
        world["store"],
        model=model or world["card"],
        name="site",
        progress=None if events is None else events.append,
    )


@pytest.mark.parametrize("final", ["retrain", "fold_average"])
def test_the_spine_runs_a_methods_parts_once_each_in_order_and_commits_once(world, final):
    events = []
    method = FakeMethod(_config(guard=True, final=final))
    result = run_adaptation(_request(world, events), method)
    names = [c if isinstance(c, str) else c[0] for c in method.calls]
    folds_then = ["run_config", "load", "identity", "prepare", "recipe", "recipe", "recipe"]
    if final == "retrain":
        assert names == folds_then + ["train_final", "settings", "result"]
        assert method.calls[-3][1:] == (3, 3, True), "the final training stops at the cross-validated best step"
    else:
        assert names == folds_then + ["settings", "result"], "the folds' average: no final training"
        assert any("average of the 3 cross-validation folds' weights at step 3" in e.message for e in events)
    assert method.calls[3] == ("prepare", True, ["case_003", "case_004"])
    folds = [c[1] for c in method.calls if c[0] == "recipe"]
    assert sorted(len(f) for f in folds) == [2, 2, 2] and set().union(*folds) == {"case_000", "case_001", "case_002"}
    phases = [e.phase for e in events if e.event == "phase"]
    assert phases.count("commit") == 1 and phases.count("done") == 1
    assert phases.index("load") < phases.index("validate") < phases.index("commit") < phases.index("done")
    decisions = [e for e in events if e.event == "metric" and e.phase == "evaluate" and "activating" in e.message]
    assert len(decisions) == 1 and events.index(decisions[0]) < [e.phase for e in events].index("commit")
    # the fake training changed nothing the held-out folds could see: the guard refuses, the version is kept
    assert not result.activated and result.decision.method != "unguarded"
    store = ModelStore(world["store"])
    assert [v.version for v in store.versions("site")] == ["v1"] and store.active("site") is None
    provenance = read_json(result.version_dir / "provenance.json")
    assert provenance["activation"] == result.decision.to_dict()
    if final == "retrain":
        assert provenance["fake_entry"] == [1, 2], "the method's final training's provenance"
    else:
        assert provenance["final"] == "fold_average" and provenance["pseudo_labeled"] == []
    assert read_json(result.version_dir / "config.json")["fake"] == {"nudge": 0.0}


def test_a_method_failing_in_its_final_training_leaves_the_active_model_untouched(world):
    first = run_adaptation(_request(world), FakeMethod(_config(guard=False), nudge=0.5))
    store = ModelStore(world["store"])
    assert first.activated and store.active("site").version == "v1"
    before = sorted(p.name for p in (world["store"] / "site").iterdir())
    failing = FakeMethod(_config(guard=False), fail_in="train_final", nudge=1.0)
    events = []
    with pytest.raises(RuntimeError, match="failed in train_final"):
        run_adaptation(_request(world, events, model=world["store"] / "site"), failing)
    assert "commit" not in [e.phase for e in events] and "settings" not in failing.calls
    assert store.active("site").version == "v1" and [v.version for v in store.versions("site")] == ["v1"]
    assert sorted(p.name for p in (world["store"] / "site").iterdir()) == before


class KeepFirstLabeller:
    """A pseudo-labeller handed to ASSFT's method: keeps the first pool volume with an all-background label."""

    def __init__(self):
        self.rounds: List[int] = []

    def label_pool(self, run, round_index: int, network, train: Sequence) -> PseudoLabels:
        import numpy as np

        from ASSFTActive.io import read_volume

        self.rounds.append(round_index)
        ids = sorted(run.pool)
        shape = read_volume(run.pool[ids[0]]).array.shape
        decisions = tuple(PseudoDecision(c, 1.0, 0.0, 1.0, i == 0, i + 1) for i, c in enumerate(ids))
        return PseudoLabels(decisions, labels={ids[0]: np.zeros(shape, dtype=np.uint8)}, masks={})


def test_a_pseudo_labeller_plugs_into_assfts_method_without_patching(world):
    labeller = KeepFirstLabeller()
    result = run_adaptation(_request(world), SelectiveSelfTraining(_config(guard=False), labeller=labeller))
    assert labeller.rounds == [1]
    assert [(d.case_id, d.kept) for d in result.pseudo] == [("case_003", True), ("case_004", False)]
    assert read_json(result.version_dir / "provenance.json")["pseudo_labeled"][0]["case_id"] == "case_003"
