"""adapt_model end to end on synthetic volumes: the new version, its provenance, bad input, cancel and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import (
    FAST_FINETUNE,
    make_tiny_card,
    read_json,
    synthetic_case,
    tree,
    write_dataset,
    write_swapped_label,
)

from ASSFTActive.errors import CancelledError, InputError, JobError, ModelError
from ASSFTActive.finetune.adapt import AdaptResult, adapt_model
from ASSFTActive.finetune.checkpoints import card_signature
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.io import Volume, write_volume
from ASSFTActive.models import load_card, load_model
from ASSFTActive.store import ModelStore, StoreError

#: In-process runs use one thread (the conftest fixture), like the worker subprocesses.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world(tmp_path):
    """A tiny base model, 6 synthetic volumes (3 labelled), an empty store folder."""
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=6, labeled=3)
    return {"card": card, "images": images, "labels": labels, "store": tmp_path / "store", "tmp": tmp_path}


def _config(**changes) -> FinetuneConfig:
    data = json.loads(json.dumps(FAST_FINETUNE))
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return FinetuneConfig.from_dict(data)


UNGUARDED = {"guard": False}


def test_adapting_writes_an_active_version_with_card_weights_config_and_provenance(world):
    events = []
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        name="site",
        config=_config(validation=UNGUARDED),
        progress=events.append,
    )
    assert (result.name, result.version, result.activated) == ("site", "v1", True)
    assert ModelStore(world["store"]).active("site").version == "v1"
    files = sorted(p.name for p in result.version_dir.iterdir())
    assert files == ["card.json", "config.json", "provenance.json", "version.json", "weights.safetensors"]
    card = load_card(result.card_path)
    assert card.name == "site" and card.pretrained == str(world["card"].resolve())
    assert card.pretrained_card().path == world["card"].resolve()
    provenance = read_json(result.version_dir / "provenance.json")
    assert [c["case_id"] for c in provenance["labeled"]] == ["case_000", "case_001", "case_002"]
    assert {d["case_id"] for d in provenance["pseudo_decisions"][0]} == {"case_003", "case_004", "case_005"}
    kept = [d for d in provenance["pseudo_decisions"][0] if d["kept"]]
    assert len(kept) == 2 and all({"confidence", "distance", "reliability"} <= set(d) for d in kept)
    assert provenance["seeds"]["train"] == 0 and provenance["package_version"]
    assert read_json(result.version_dir / "config.json")["finetune"] == _config(validation=UNGUARDED).to_dict()
    assert provenance["activation"]["method"] == "unguarded" and "guard is off" in provenance["activation"]["reason"]
    assert card.provenance["metrics"]["after"]["mean_dice"] == pytest.approx(result.dice_after)
    phases = [e.phase for e in events if e.event == "phase"]
    assert phases.index("train") < phases.index("pseudo") < phases.index("commit") < phases.index("done")
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert steps == list(range(1, 21))


def _adapt_world(world, subjects=None, progress=None, **changes) -> AdaptResult:
    """Adapt Model on the world's volumes into its store (model ``site``), with ``_config(**changes)``."""
    return adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        name="site",
        config=_config(**changes),
        progress=progress,
        subjects=subjects,
    )


def test_a_cross_validated_improvement_is_activated_with_its_reason(world):
    result = _adapt_world(world, train={"iterations": 60}, semi_iterations=20)
    assert result.metrics["evaluated_on"] == "cross_validation"
    assert result.dice_after > result.dice_before + 0.2, "held-out Dice of the folds against the random model"
    assert result.activated and result.decision.method == "cross_validation"
    assert "better than the current model" in result.decision.reason
    provenance = read_json(result.version_dir / "provenance.json")
    assert provenance["activation"] == result.decision.to_dict()


@pytest.mark.parametrize("final", ["retrain", "fold_average"])
def test_cross_validation_holds_each_label_out_once_and_the_final_run_stops_at_the_best_step(world, final):
    events = []
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(validation={"final": final, "fold_budget": None}),  # whole folds (their shortening: fast_guard)
        progress=events.append,
    )
    cv = result.metrics["cross_validation"]
    assert sorted(c for fold in cv["folds"] for c in fold) == ["case_000", "case_001", "case_002"]
    assert len(cv["folds"]) == 3 and cv["steps"] == [0, 6, 12, 18, 20]
    curve = [sum(cv["dice"][c][i] for c in cv["dice"]) / 3 for i in range(len(cv["steps"]))]
    best = cv["steps"][1 + max(range(len(curve) - 1), key=lambda i: (curve[i + 1], -i))]
    assert result.metrics["stop_step"] == best == result.decision.stop_step
    assert result.dice_after == pytest.approx(curve[cv["steps"].index(best)])
    assert result.dice_before == pytest.approx(curve[0])
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    if final == "retrain":
        assert steps == list(range(1, 3 * 20 + best + 1)), "three folds of 20 steps, then the final run to the stop"
    else:
        assert steps == list(range(1, 3 * 20 + 1)), "three folds of 20 steps; their average needs no training"
    assert set(result.metrics["before"]["hd95"]) == {"box_a", "box_b"}


def test_adapting_on_contradicting_labels_does_not_change_the_active_model(tmp_path):
    """A decent model, then two labelled volumes whose classes are swapped in one of them: not activated."""
    card = _trained_card(tmp_path)
    images, labels = write_dataset(tmp_path / "data", count=4, labeled=2, first_seed=40)
    labels["case_001"] = write_swapped_label(labels["case_001"], tmp_path / "swapped")
    store = tmp_path / "store"
    first = adapt_model(
        images,
        {"case_000": labels["case_000"]},
        store=store,
        model=card,
        name="site",
        config=_config(validation=UNGUARDED),
    )
    events, handed = [], []
    # the label checks refuse the swapped label before training (test_label_meaning.py); past them, the guard
    result = adapt_model(
        images,
        labels,
        store=store,
        model=store / "site",
        name="site",
        config=_config(allow_implausible_labels=True),
        progress=events.append,
        before_commit=lambda model, ctx: handed.append(model),
    )
    assert any("swapped" in e.message for e in events if e.event == "warning")
    assert result.version == "v2" and not result.activated
    current = load_model(load_card(first.card_path)).network.state_dict()
    assert all(torch.equal(v, current[k]) for k, v in handed[0].network.state_dict().items()), (
        "re-ranking (before_commit) gets the model that stays active"
    )
    assert ModelStore(store).active("site").version == first.version
    assert result.decision.gain < 0.005 and "likely not better" in result.decision.reason
    assert any("active model was not changed" in e.message for e in events if e.event == "warning")
    assert read_json(result.version_dir / "provenance.json")["activation"]["activate"] is False


def test_empty_labels_are_caught_by_the_pool_check(tmp_path):
    card = _trained_card(tmp_path)
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=2, first_seed=60)
    from ASSFTActive.io import read_volume

    for case in labels:
        empty = read_volume(labels[case])
        labels[case] = write_volume(empty.with_array(np.zeros_like(empty.array)), tmp_path / "empty" / f"{case}.nii.gz")
    result = adapt_model(
        images,
        labels,
        store=tmp_path / "store",
        model=card,
        name="site",
        config=_config(train={"iterations": 30}, allow_implausible_labels=True),
    )
    assert not result.activated and ModelStore(tmp_path / "store").active("site") is None
    assert result.decision.pool is not None and set(result.decision.pool.collapsed) == {"box_a", "box_b"}


def test_one_labelled_volume_is_stored_but_not_activated(world):
    result = adapt_model(
        world["images"],
        {"case_000": world["labels"]["case_000"]},
        store=world["store"],
        model=world["card"],
        name="site",
        config=_config(),
    )
    assert not result.activated and result.decision.method == "too_few_labels"
    assert result.metrics["evaluated_on"] == "labeled" and result.metrics["stop_step"] == 20
    assert ModelStore(world["store"]).active("site") is None
    assert [v.version for v in ModelStore(world["store"]).versions("site")] == ["v1"]


def test_the_guard_holds_out_the_volumes_of_one_subject_together(world):
    subjects = {"case_000": "patient-A", "case_001": "patient-A"}
    result = _adapt_world(world, subjects=subjects)
    folds = sorted(tuple(f) for f in result.metrics["cross_validation"]["folds"])
    assert folds == [("case_000", "case_001"), ("case_002",)], "two subjects, two folds; patient A's volumes together"


def test_labelled_volumes_of_one_subject_are_stored_but_not_activated(world):
    events = []
    result = _adapt_world(world, subjects={c: "patient-A" for c in world["labels"]}, progress=events.append)
    assert not result.activated and result.decision.method == "too_few_subjects"
    assert "all come from one subject" in result.decision.reason
    assert not any("cross-validation fold" in (e.message or "") for e in events), "no fold can hold out a subject"
    assert ModelStore(world["store"]).active("site") is None


def test_subjects_of_unknown_volumes_or_empty_subjects_are_refused_before_training(world):
    for subjects, words in (({"case_999": "A"}, "not among the images"), ({"case_000": " "}, "non-empty strings")):
        with pytest.raises(InputError, match=words):
            _adapt_world(world, subjects=subjects)
    assert not world["store"].exists() or not list(world["store"].iterdir())


def _trained_card(tmp_path):
    """A tiny model fitted to the synthetic boxes (a decent "pre-trained" model), as a card."""
    from ASSFTActive.models import load_card as read_card
    from ASSFTActive.models import load_model, save_card, save_weights

    base = make_tiny_card(tmp_path / "untrained")
    images, labels = write_dataset(tmp_path / "source", count=3, labeled=3, first_seed=80)
    result = adapt_model(
        images,
        labels,
        store=tmp_path / "pretraining",
        model=base,
        name="source",
        config=_config(train={"iterations": 60}, semi_iterations=1, validation=UNGUARDED, pseudo={"mode": "none"}),
    )
    folder = tmp_path / "pretrained"
    folder.mkdir()
    save_weights(load_model(read_card(result.card_path)).network, folder / "weights.safetensors")
    card = read_card(base)
    save_card(card, folder / "card.json")
    return folder / "card.json"


@pytest.mark.parametrize("mode, kept", [("none", 0), ("all", 3), ("selective", 2)])
def test_pseudo_label_modes_decide_how_many_unlabelled_volumes_are_used(world, mode, kept):
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(pseudo={"mode": mode}, validation={"final": "retrain"}),
    )
    assert sum(d.kept for d in result.pseudo) == kept
    assert len(result.pseudo) == (0 if mode == "none" else 3)


def test_the_folds_average_lists_how_many_folds_pseudo_labelled_each_unlabelled_volume(world):
    """Selective mode keeps 2 of the 3 unlabelled volumes in each fold's round; the average lists the folds' votes."""
    result = _adapt_world(world, validation={"final": "fold_average"})
    assert result.decision.stop_step > 12, "this world stops in its semi-supervised round (else nothing to list)"
    assert [(v.case_id, v.folds) for v in result.pseudo] == [("case_003", 3), ("case_004", 3), ("case_005", 3)]
    assert sum(v.kept_by for v in result.pseudo) == 2 * 3, "two kept in each of the three folds"
    assert [v.case_id for v in result.pseudo if v.kept] == [
        v["case_id"] for v in json.loads((result.version_dir / "provenance.json").read_text())["pseudo_labeled"]
    ]


def _spy_on_training(monkeypatch):
    """Record what each training stage of adapt_model hands the trainer, and the teacher before and after."""
    from ASSFTActive.finetune import recipe

    stages = []
    real = recipe.train_supervised

    def spy(network, card, labeled, config, **kwargs):
        term = next((t for t in kwargs.get("terms", ()) if isinstance(t, recipe.PseudoLabelTerm)), None)
        pseudo = term.cases if term is not None else []
        teacher = term.teacher if term is not None else None
        start = None if teacher is None else {k: v.clone() for k, v in teacher.state_dict().items()}
        losses = real(network, card, labeled, config, **kwargs)
        stages.append(
            {
                "pseudo": list(pseudo),
                "teacher": teacher,
                "teacher_start": start,
                "student": network,
                "semi": term.semi if term is not None else None,
            }
        )
        return losses

    monkeypatch.setattr(recipe, "train_supervised", spy)
    return stages


def _moved(state, reference):
    return any(v.dtype.is_floating_point and not torch.equal(v, reference[k]) for k, v in state.items())


def test_an_ema_teacher_follows_the_student_and_voxel_masks_leave_unsure_voxels_out(world, monkeypatch):
    stages = _spy_on_training(monkeypatch)
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(
            pseudo={"teacher": "ema", "voxel_threshold": 0.5, "rounds": 2, "class_keep_min": 0.5}, validation=UNGUARDED
        ),
    )
    supervised, *semi = stages
    assert supervised["teacher"] is None and not supervised["pseudo"]
    assert len(semi) == 2 and len(read_json(result.version_dir / "provenance.json")["pseudo_decisions"]) == 2
    for stage in semi:
        teacher, student = stage["teacher"].state_dict(), stage["student"].state_dict()
        assert _moved(teacher, stage["teacher_start"]), "the EMA teacher followed the student"
        assert _moved(teacher, student), "the EMA teacher lags the student (it is not a copy)"
        assert stage["semi"].voxel_threshold == 0.5 and stage["semi"].class_keep_min == 0.5
        masks = [case.voxel_mask for case in stage["pseudo"]]
        assert masks and all(m is not None and m.any() for m in masks)
        assert not all(m.all() for m in masks), "some unsure voxels of the pseudo-labels are left out"


def test_an_offline_teacher_without_voxel_threshold_trains_on_whole_fixed_pseudo_labels(world, monkeypatch):
    stages = _spy_on_training(monkeypatch)
    adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(pseudo={"teacher": "offline", "voxel_threshold": None}, validation=UNGUARDED),
    )
    semi = stages[1]
    assert semi["teacher"] is None and semi["pseudo"]
    assert all(case.voxel_mask is None for case in semi["pseudo"]) and semi["semi"].voxel_threshold is None


def test_a_model_adapted_twice_still_points_at_the_original_pretrained_card(world):
    first = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        name="site",
        config=_config(validation=UNGUARDED),
    )
    second = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["store"] / "site",
        config=_config(validation=UNGUARDED),
    )
    assert second.name == "site" and second.version == "v2"
    assert load_card(second.card_path).pretrained_card().path == world["card"].resolve()
    assert load_card(second.card_path).provenance["base_model"] == str(first.card_path)


def test_a_label_on_another_grid_or_with_unknown_classes_is_skipped_with_a_warning_naming_the_file(world):
    image, label, affine = synthetic_case(50)
    bad_grid = write_volume(Volume(label[:-2], affine), world["tmp"] / "bad" / "case_001.nii.gz")
    wrong = label.copy()
    wrong[0, 0, 0] = 7
    bad_class = write_volume(Volume(wrong, affine), world["tmp"] / "bad" / "case_002.nii.gz")
    labels = dict(world["labels"], case_001=bad_grid, case_002=bad_class)
    events = []
    result = adapt_model(
        world["images"], labels, store=world["store"], model=world["card"], config=_config(), progress=events.append
    )
    warnings = [e.message for e in events if e.event == "warning"]
    assert any(str(bad_grid) in w and "shape" in w for w in warnings)
    assert any(str(bad_class) in w and "[7]" in w for w in warnings)
    assert result.labeled == ("case_000",)
    assert {s.case_id for s in result.skipped} == {"case_001", "case_002"}


def test_no_usable_labelled_volume_is_an_error_and_the_store_is_unchanged(world):
    image, label, affine = synthetic_case(50)
    bad = write_volume(Volume(label[:-2], affine), world["tmp"] / "bad" / "case_000.nii.gz")
    with pytest.raises(InputError, match="none of the 1 labelled volumes can be used"):
        adapt_model(world["images"], {"case_000": bad}, store=world["store"], model=world["card"], config=_config())
    assert not world["store"].exists()


def test_empty_labelled_set_missing_files_and_stray_labels_are_clear_errors(world):
    with pytest.raises(InputError, match="no labelled volumes"):
        adapt_model(world["images"], {}, store=world["store"], model=world["card"])
    with pytest.raises(InputError, match="not found: .*nowhere.nii.gz"):
        adapt_model(
            dict(world["images"], case_009=world["tmp"] / "nowhere.nii.gz"),
            world["labels"],
            store=world["store"],
            model=world["card"],
        )
    with pytest.raises(InputError, match="no matching image"):
        adapt_model(
            world["images"],
            dict(world["labels"], other=world["labels"]["case_000"]),
            store=world["store"],
            model=world["card"],
        )
    assert not world["store"].exists()


def test_an_unwritable_store_fails_before_training(world):
    blocker = world["tmp"] / "blocker"
    blocker.write_text("a file, not a folder")
    events = []
    with pytest.raises(StoreError, match="is a file"):
        adapt_model(
            world["images"],
            world["labels"],
            store=blocker / "store",
            model=world["card"],
            config=_config(),
            progress=events.append,
        )
    assert not any(e.phase == "train" for e in events)


def test_cancelling_mid_training_leaves_the_store_and_the_active_version_as_they_were(world):
    adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        name="site",
        config=_config(validation=UNGUARDED),
    )
    before = tree(world["store"])

    def cancel_at_step_5(event):
        if event.phase == "train" and event.step >= 5:  # fold steps are shown on the run's bar (may skip 5)
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            name="site",
            config=_config(),
            progress=cancel_at_step_5,
        )
    assert tree(world["store"]) == before
    assert ModelStore(world["store"]).active("site").version == "v1"


def test_a_cancelled_run_resumes_from_its_last_checkpoint(world):
    work = world["tmp"] / "work"

    def cancel_at_step_14(event):
        if event.phase == "train" and event.step == 14:
            raise CancelledError("cancelled")

    config = _config(validation=UNGUARDED)
    with pytest.raises(CancelledError):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            config=config,
            work_dir=work,
            progress=cancel_at_step_14,
        )
    assert (work / "checkpoint.pt").is_file() and (work / "pseudo-r1.npz").is_file()
    events = []
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=config,
        work_dir=work,
        progress=events.append,
    )
    assert result.resumed_from == 12  # stage 1 ended at 12; the semi-supervised checkpoint every 4 steps is next
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert steps == list(range(13, 21))
    assert [v.version for v in ModelStore(world["store"]).versions(result.name)] == ["v1"]
    assert not work.exists(), "checkpoints are removed once the version is committed"


def test_a_cancelled_cross_validation_resumes_after_its_finished_folds(world):
    work = world["tmp"] / "work"

    def cancel_in_the_second_fold(event):
        if event.phase == "train" and event.step >= 25:  # in the second fold (steps 21-40 of the bar)
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            config=_config(),
            work_dir=work,
            progress=cancel_in_the_second_fold,
        )
    assert (work / "cv-fold0.json").is_file() and not (work / "cv-fold1.json").exists()
    events = []
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(),
        work_dir=work,
        progress=events.append,
    )
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert 20 < steps[0] <= 22, "fold 1 is not trained again (fold 2 starts after step 20 of the bar)"
    assert len(result.metrics["cross_validation"]["folds"]) == 3
    with pytest.raises(JobError, match="changed since this checkpoint"):
        (work / "cv-fold0.json").parent.mkdir(exist_ok=True)
        signature = card_signature(load_card(world["card"]))
        (work / "cv-fold0.json").write_text(
            json.dumps({"format": 1, "fingerprint": "other", "card_signature": signature, "scores": {}})
        )
        adapt_model(
            world["images"], world["labels"], store=world["store"], model=world["card"], config=_config(), work_dir=work
        )


def test_a_checkpoint_written_for_another_card_is_refused(world):
    work = world["tmp"] / "work"

    def cancel(event):
        if event.phase == "train" and event.step >= 5:  # fold steps are shown on the run's bar (may skip 5)
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            config=_config(validation=UNGUARDED),
            work_dir=work,
            progress=cancel,
        )
    other = make_tiny_card(
        world["tmp"] / "other", arguments={**load_card(world["card"]).arguments, "channels": [8, 16, 32]}
    )
    with pytest.raises(ModelError, match="another model card"):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=other,
            config=_config(validation=UNGUARDED),
            work_dir=work,
        )
    with pytest.raises(JobError, match="changed since this checkpoint"):
        adapt_model(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            config=_config(train={"seed": 3}, validation=UNGUARDED),
            work_dir=work,
        )
    assert not world["store"].exists()


def test_predictions_of_the_unlabelled_pool_are_written_on_the_image_grid(world):
    out = world["tmp"] / "pred"
    result = adapt_model(
        world["images"],
        world["labels"],
        store=world["store"],
        model=world["card"],
        config=_config(),
        predictions_dir=out,
    )
    assert sorted(result.predictions) == ["case_003", "case_004", "case_005"]
    from ASSFTActive.io import read_volume

    prediction = read_volume(result.predictions["case_003"])
    image = read_volume(world["images"]["case_003"])
    assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
