"""The guarded run without a final training (issue 25.6): ``validation.final = fold_average`` makes the new model
the average of the cross-validation folds' weights at the stopping step, decides as the retrained run does, and
resumes its folds only with their weights."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAST_FINETUNE, make_tiny_card, write_dataset
from safetensors.torch import load_file

from ASSFTActive.errors import CancelledError, JobError
from ASSFTActive.finetune.adapt import AdaptRequest, adapt_model, read_checked_labels, score_current_model, start_run
from ASSFTActive.finetune.assft import SelectiveSelfTraining
from ASSFTActive.finetune.checkpoints import Checkpoints, FoldScores
from ASSFTActive.finetune.config import FinalModel, FinetuneConfig, ValidationConfig
from ASSFTActive.finetune.cross_validation import cross_validate
from ASSFTActive.finetune.fold_average import KeptFold, average_folds, average_states
from ASSFTActive.finetune.fold_pseudo import FoldVote, PseudoRound, fold_votes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_average_of_two_states_is_their_mean_and_keeps_counters_and_dtypes():
    first = {"w": torch.tensor([1.0, 3.0]), "h": torch.tensor([2.0], dtype=torch.float16), "n": torch.tensor(5)}
    second = {"w": torch.tensor([3.0, 5.0]), "h": torch.tensor([4.0], dtype=torch.float16), "n": torch.tensor(9)}
    out = average_states([first, second])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["h"].dtype == torch.float16 and float(out["h"]) == 3.0
    assert int(out["n"]) == 5, "a counter is taken from the first state, not averaged"
    assert torch.equal(average_states([first])["w"], first["w"])


def test_states_of_different_networks_are_not_averaged():
    with pytest.raises(ValueError, match="no weights"):
        average_states([])
    with pytest.raises(ValueError, match="other tensors"):
        average_states([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        average_states([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_a_fold_without_weights_at_the_stopping_step_is_an_error_that_says_what_to_do():
    folds = [KeptFold({25: {"w": torch.zeros(1)}}), KeptFold({12: {"w": torch.zeros(1)}})]
    with pytest.raises(JobError, match=r"fold\(s\) \[2\] kept no weights at step 25; delete the job's work folder"):
        average_folds(None, folds, 25)


def test_the_averaged_model_is_the_default_final_model():
    assert ValidationConfig().final == FinalModel.FOLD_AVERAGE


def test_each_pool_volume_counts_the_folds_that_pseudo_labelled_it_in_the_round_they_stopped_in():
    fold_1 = (PseudoRound(100, ("u1", "u2", "u3"), ("u1",)), PseudoRound(150, ("u1", "u2", "u3"), ("u2", "u3")))
    fold_2 = (PseudoRound(100, ("u1", "u2"), ("u1", "u2")), PseudoRound(150, ("u1", "u2"), ("u2",)))
    at_125 = {v.case_id: (v.kept_by, v.folds, v.kept) for v in fold_votes([fold_1, fold_2], 125, ["u1", "u2", "u4"])}
    assert at_125 == {
        "u1": (2, 2, True),
        "u2": (1, 2, True),
        "u3": (0, 1, False),
        "u4": (0, 0, False),  # in the pool, seen by no fold (fold_pool_cases)
    }
    at_200 = {v.case_id: v.kept_by for v in fold_votes([fold_1, fold_2], 200)}
    assert at_200 == {"u1": 0, "u2": 2, "u3": 1}, "the last round before the stop, not the first"
    assert fold_votes([fold_1, fold_2], 100) == (), "weights at a round's first step have not trained with it yet"
    assert fold_votes([(), ()], 200) == (), "no pseudo-labels (none mode): none listed, as a final training lists"
    assert FoldVote("u2", 1, 2).to_dict() == {"case_id": "u2", "kept": True, "kept_by_folds": 1, "folds": 2}


def test_a_fold_record_keeps_its_pseudo_rounds_and_an_older_record_says_it_has_none():
    rounds = (PseudoRound(30, ("a", "b"), ("b",)),)
    fold = FoldScores(("x",), {"x": {30: (0.5,)}}, rounds)
    assert FoldScores.from_dict(json.loads(json.dumps(fold.to_dict()))) == fold
    older = {k: v for k, v in fold.to_dict().items() if k != "pseudo"}
    assert FoldScores.from_dict(older).pseudo is None


def test_fold_weights_round_trip_and_belong_to_their_run(tmp_path):
    weights = {6: {"w": torch.arange(3.0)}, 12: {"w": torch.ones(3)}}
    Checkpoints(tmp_path, "run-a", "card", writer=True).save_fold_weights(1, weights)
    loaded = Checkpoints(tmp_path, "run-a", "card", writer=False).load_fold_weights(1)
    assert sorted(loaded) == [6, 12] and torch.equal(loaded[6]["w"], weights[6]["w"])
    assert Checkpoints(tmp_path, "run-a", "card", writer=False).load_fold_weights(0) is None
    with pytest.raises(JobError, match="volumes or settings changed"):
        Checkpoints(tmp_path, "run-b", "card", writer=False).load_fold_weights(1)
    Checkpoints(tmp_path, "run-a", "card", writer=True).clear()
    assert not tmp_path.exists(), "clear removes the fold weights with the rest"


def _config(final: str) -> FinetuneConfig:
    data = json.loads(json.dumps(FAST_FINETUNE))
    data["validation"] = dict(data["validation"], final=final, folds=2)
    data["allow_implausible_labels"] = True  # the synthetic boxes are tiny; this test is about the final model
    return FinetuneConfig.from_dict(data)


@pytest.fixture
def world(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=2)
    return {"card": card, "images": images, "labels": labels, "tmp": tmp_path}


def _adapt(world, final: str, **kwargs):
    events = []
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["tmp"] / f"store-{final}",
        model=world["card"],
        config=_config(final),
        progress=events.append,
        **kwargs,
    )
    return result, events


def _train_steps(events, folds: bool) -> int:
    return len([e for e in events if e.event == "progress" and e.phase == "train" and ("fold" in e.message) == folds])


@pytest.mark.slow  # two guarded jobs and a third cross-validation end to end
def test_the_fold_average_decides_as_the_retrained_run_and_is_the_folds_mean(world):
    retrained, retrained_events = _adapt(world, "retrain")
    averaged, averaged_events = _adapt(world, "fold_average")
    cv = averaged.metrics["cross_validation"]
    assert cv == retrained.metrics["cross_validation"], "the same folds: the same evidence"
    assert averaged.decision.activate == retrained.decision.activate
    assert averaged.decision.stop_step == retrained.decision.stop_step
    stop = averaged.decision.stop_step
    assert stop > 0, "this world's folds gain (else the test checks nothing)"
    assert _train_steps(averaged_events, folds=True) == _train_steps(retrained_events, folds=True) > 0
    assert _train_steps(retrained_events, folds=False) == stop and _train_steps(averaged_events, folds=False) == 0
    assert any("average of the 2 cross-validation folds' weights at step" in e.message for e in averaged_events)
    totals = {e.total for e in averaged_events if e.event == "progress" and e.phase == "train"}
    assert totals == {_train_steps(averaged_events, folds=True)}, "the bar ends with the folds: no final training"
    provenance = json.loads((averaged.version_dir / "provenance.json").read_text())
    assert provenance["final"] == "fold_average" and provenance["fold_average"] == {"folds": 2, "step": stop}

    # the same two folds run by hand: the stored model is their average at the stopping step
    run = start_run(
        AdaptRequest(world["images"], world["labels"], world["tmp"] / "by-hand", model=world["card"]),
        SelectiveSelfTraining(_config("fold_average")),
    )
    labeled = read_checked_labels(run)
    kept = []
    cross_validate(run, labeled, score_current_model(run, labeled), kept)
    assert len(kept) == 2 and all(stop in fold.weights for fold in kept)
    expected = average_states([fold.weights[stop] for fold in kept])
    stored = load_file(str(averaged.version_dir / "weights.safetensors"))
    assert set(stored) == set(expected)
    for key, tensor in expected.items():
        assert torch.allclose(stored[key].float(), tensor.float(), atol=1e-6), key
    retrained_weights = load_file(str(retrained.version_dir / "weights.safetensors"))
    assert any(not torch.equal(retrained_weights[k], stored[k]) for k in stored), "another model than the retrained"

    # its pseudo-labelled volumes are the folds': each fold's round that its weights at the stop trained with
    votes = fold_votes([fold.pseudo for fold in kept], stop, sorted(run.pool))
    assert averaged.pseudo == votes and any(v.kept for v in votes), "this world's folds pseudo-label before the stop"
    assert all(v.folds == 2 for v in votes), "both folds decided on the whole pool"
    assert provenance["pseudo_labeled"] == [v.to_dict() for v in votes if v.kept]
    assert [len(rounds) for rounds in provenance["fold_pseudo_rounds"]] == [len(fold.pseudo) for fold in kept]
    assert {p["case_id"] for p in averaged.to_dict()["pseudo"]} == set(run.pool)


@pytest.mark.slow  # a guarded job cancelled twice, then resumed
def test_a_resumed_run_skips_a_finished_fold_only_when_its_weights_were_kept(world):
    work = world["tmp"] / "work"

    def cancelling(seen):
        def progress(event):
            seen.append(event)
            if event.event == "phase" and event.message.startswith("cross-validation fold 2 of 2: adapting"):
                raise CancelledError("cancelled by the test")

        return progress

    def adapt(progress):
        return adapt_model(
            world["images"],
            world["labels"],
            store=world["tmp"] / "store",
            model=world["card"],
            config=_config("fold_average"),
            progress=progress,
            work_dir=work,
        )

    with pytest.raises(CancelledError):
        adapt(cancelling([]))
    assert (work / "cv-fold0.json").is_file() and (work / "cv-fold0-weights.pt").is_file()

    kept = []
    with pytest.raises(CancelledError):
        adapt(cancelling(kept))
    assert any(e.message == "cross-validation fold 1 of 2: kept from an earlier run, skipped" for e in kept)

    fold_file = work / "cv-fold0.json"
    fold_file.write_text(json.dumps({k: v for k, v in json.loads(fold_file.read_text()).items() if k != "pseudo"}))
    older = []
    with pytest.raises(CancelledError):
        adapt(cancelling(older))
    assert not any("fold 1 of 2: kept" in e.message for e in older), "a fold file without its rounds is run again"
    assert "pseudo" in json.loads(fold_file.read_text())

    (work / "cv-fold0-weights.pt").unlink()
    rerun = []
    result = adapt(rerun.append)
    assert not any("fold 1 of 2: kept" in e.message for e in rerun)
    assert any(e.message.startswith("cross-validation fold 1 of 2: adapting") for e in rerun), "fold 1 runs again"
    assert json.loads((result.version_dir / "provenance.json").read_text())["final"] == "fold_average"
    assert not work.exists() or not list(work.glob("cv-fold*")), "the commit clears the fold files"


@pytest.mark.slow  # two guarded jobs end to end
def test_an_average_that_collapses_a_class_on_the_pool_is_replaced_by_the_final_training(tmp_path):
    """Folds trained far from their start (a random tiny network, learning rate 0.01) average into a model that
    stops predicting a class on the pool; the run warns, trains the final model instead, and stores what the
    retraining run stores."""
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=7, labeled=3)
    results, events = {}, []
    for final in ("fold_average", "retrain"):
        config = FinetuneConfig.from_dict(
            # whole folds: in this world they leave their starting basin when trained the whole recipe
            dict(FAST_FINETUNE, validation=dict(FAST_FINETUNE["validation"], final=final, fold_budget=None))
        )
        results[final] = adapt_model(
            images, labels, store=tmp_path / final, model=card, config=config, progress=events.append
        )
    warnings = [e.message for e in events if e.event == "warning" and "folds' average" in e.message]
    assert len(warnings) == 1 and "all but stopped predicting box_a on the unlabelled pool" in warnings[0]
    averaged, retrained = results["fold_average"], results["retrain"]
    assert averaged.activated and retrained.activated
    assert averaged.decision.reason == retrained.decision.reason
    provenance = json.loads((averaged.version_dir / "provenance.json").read_text())
    assert "fold_average" not in provenance, "the stored model is the retrained one"
    stored = load_file(str(averaged.version_dir / "weights.safetensors"))
    expected = load_file(str(retrained.version_dir / "weights.safetensors"))
    assert all(torch.equal(stored[k], expected[k]) for k in expected), "trained from the current weights, same seed"
