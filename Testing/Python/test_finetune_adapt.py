"""adapt_model end to end on synthetic volumes: the new version, its provenance, bad input, cancel and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_finetune_training import FAST_FINETUNE, make_tiny_card, read_json, synthetic_case, tree, write_dataset

from ASSFTActive.errors import CancelledError, InputError, JobError, ModelError
from ASSFTActive.finetune.adapt import adapt_model
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.io import Volume, write_volume
from ASSFTActive.models import load_card
from ASSFTActive.store import ModelStore, StoreError


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_adapting_writes_an_active_version_with_card_weights_config_and_provenance(world):
    events = []
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                         config=_config(), progress=events.append)
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
    assert read_json(result.version_dir / "config.json")["finetune"] == _config().to_dict()
    assert card.provenance["metrics"]["after"]["mean_dice"] == pytest.approx(result.dice_after)
    phases = [e.phase for e in events if e.event == "phase"]
    assert phases.index("train") < phases.index("pseudo") < phases.index("commit") < phases.index("done")
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert steps == list(range(1, 21))


def test_training_improves_the_fit_on_the_labelled_volumes(world):
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                         config=_config(train={"iterations": 60}, semi_iterations=20))
    assert result.metrics["evaluated_on"] == "labeled"
    assert result.dice_after > result.dice_before + 0.2


def test_enough_labels_are_split_into_training_and_validation_with_the_best_step_kept(world):
    images, labels = write_dataset(world["tmp"] / "more", count=7, labeled=6, first_seed=20)
    result = adapt_model(images, labels, store=world["store"], model=world["card"],
                         config=_config(validation={"min_labeled": 5, "fraction": 0.2, "hd95": True}))
    assert len(result.validation) == 1 and len(result.labeled) == 5
    assert result.metrics["evaluated_on"] == "validation" and result.metrics["cases"] == list(result.validation)
    history = result.metrics["history"]
    assert [h["step"] for h in history] == [6, 12, 18, 20]
    best = max(history, key=lambda h: h["mean_dice"])
    assert result.metrics["best_step"] == best["step"]
    assert result.dice_after == pytest.approx(best["mean_dice"])
    assert set(result.metrics["after"]["hd95"]) == {"box_a", "box_b"}


@pytest.mark.parametrize("mode, kept", [("none", 0), ("all", 3), ("selective", 2)])
def test_pseudo_label_modes_decide_how_many_unlabelled_volumes_are_used(world, mode, kept):
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                         config=_config(pseudo={"mode": mode}))
    assert sum(d.kept for d in result.pseudo) == kept
    assert len(result.pseudo) == (0 if mode == "none" else 3)


def test_ema_teacher_and_voxel_mask_run_and_are_recorded(world):
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                         config=_config(pseudo={"teacher": "ema", "voxel_threshold": 0.5, "rounds": 2}))
    config = read_json(result.version_dir / "config.json")["finetune"]
    assert config["pseudo"]["teacher"] == "ema" and config["pseudo"]["rounds"] == 2
    assert len(read_json(result.version_dir / "provenance.json")["pseudo_decisions"]) == 2


def test_a_model_adapted_twice_still_points_at_the_original_pretrained_card(world):
    first = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                        config=_config())
    second = adapt_model(world["images"], world["labels"], store=world["store"],
                         model=world["store"] / "site", config=_config())
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
    result = adapt_model(world["images"], labels, store=world["store"], model=world["card"], config=_config(),
                         progress=events.append)
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
        adapt_model(dict(world["images"], case_009=world["tmp"] / "nowhere.nii.gz"), world["labels"],
                    store=world["store"], model=world["card"])
    with pytest.raises(InputError, match="no matching image"):
        adapt_model(world["images"], dict(world["labels"], other=world["labels"]["case_000"]),
                    store=world["store"], model=world["card"])
    assert not world["store"].exists()


def test_an_unwritable_store_fails_before_training(world):
    blocker = world["tmp"] / "blocker"
    blocker.write_text("a file, not a folder")
    events = []
    with pytest.raises(StoreError, match="is a file"):
        adapt_model(world["images"], world["labels"], store=blocker / "store", model=world["card"],
                    config=_config(), progress=events.append)
    assert not any(e.phase == "train" for e in events)


def test_cancelling_mid_training_leaves_the_store_and_the_active_version_as_they_were(world):
    adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                config=_config())
    before = tree(world["store"])

    def cancel_at_step_5(event):
        if event.phase == "train" and event.step == 5:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                    config=_config(), progress=cancel_at_step_5)
    assert tree(world["store"]) == before
    assert ModelStore(world["store"]).active("site").version == "v1"


def test_a_cancelled_run_resumes_from_its_last_checkpoint(world):
    work = world["tmp"] / "work"

    def cancel_at_step_14(event):
        if event.phase == "train" and event.step == 14:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], config=_config(),
                    work_dir=work, progress=cancel_at_step_14)
    assert (work / "checkpoint.pt").is_file() and (work / "pseudo-r1.npz").is_file()
    events = []
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                         config=_config(), work_dir=work, progress=events.append)
    assert result.resumed_from == 12  # stage 1 ended at 12; the semi-supervised checkpoint every 4 steps is next
    steps = [e.step for e in events if e.event == "progress" and e.phase == "train"]
    assert steps == list(range(13, 21))
    assert [v.version for v in ModelStore(world["store"]).versions(result.name)] == ["v1"]
    assert not work.exists(), "checkpoints are removed once the version is committed"


def test_a_checkpoint_written_for_another_card_is_refused(world):
    work = world["tmp"] / "work"

    def cancel(event):
        if event.phase == "train" and event.step == 5:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], config=_config(),
                    work_dir=work, progress=cancel)
    other = make_tiny_card(world["tmp"] / "other", arguments={**load_card(world["card"]).arguments,
                                                              "channels": [8, 16, 32]})
    with pytest.raises(ModelError, match="another model card"):
        adapt_model(world["images"], world["labels"], store=world["store"], model=other, config=_config(),
                    work_dir=work)
    with pytest.raises(JobError, match="changed since this checkpoint"):
        adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                    config=_config(train={"seed": 3}), work_dir=work)
    assert not world["store"].exists()


def test_reject_if_worse_stores_the_version_without_activating_it(world, monkeypatch):
    import ASSFTActive.finetune.adapt as adapt

    first = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                        config=_config())
    real = adapt.summarise_report
    calls = []

    def worse_after(report):
        summary = real(report)
        calls.append(1)
        if len(calls) > 1:  # the second evaluation is "after"
            summary["mean_dice"] = -1.0
        return summary

    monkeypatch.setattr(adapt, "summarise_report", worse_after)
    events = []
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"], name="site",
                         config=_config(validation={"reject_if_worse": True}), progress=events.append)
    assert result.version == "v2" and not result.activated
    assert ModelStore(world["store"]).active("site").version == first.version
    assert any("not changed" in e.message for e in events if e.event == "warning")


def test_predictions_of_the_unlabelled_pool_are_written_on_the_image_grid(world):
    out = world["tmp"] / "pred"
    result = adapt_model(world["images"], world["labels"], store=world["store"], model=world["card"],
                         config=_config(), predictions_dir=out)
    assert sorted(result.predictions) == ["case_003", "case_004", "case_005"]
    from ASSFTActive.io import read_volume

    prediction = read_volume(result.predictions["case_003"])
    image = read_volume(world["images"]["case_003"])
    assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
