"""Adapt Model's recipe per anatomy (issue 25 item 2): an ACDC model adapts with the ACDC recipe unless the user says
otherwise, through every door a user adapts by (job, CLI), and the benchmark never mixes records of two defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD, card_anatomy, load_card
from ASSFTActive.finetune.config import ANATOMY_RECIPES, FinetuneConfig, settings_for_anatomy
from ASSFTActive.store import reference_anatomy

ACDC_NAMES = ("background", "RV", "myocardium", "LV")


def acdc_card(folder: Path, **changes) -> Path:
    """The embedded card renamed as the ACDC source model (4 classes); the weights file is not read here."""
    data = load_card(EMBEDDED_DEFAULT_CARD).to_dict()
    data.update({"name": "acdc-source-unet", "class_names": list(ACDC_NAMES), **changes})
    data["arguments"] = dict(data["arguments"], out_channels=4)
    data["weights"] = str(load_card(EMBEDDED_DEFAULT_CARD).weights_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(data))
    return folder / "card.json"


def test_an_acdc_model_gets_the_acdc_recipe_and_what_the_user_sets_wins():
    assert FinetuneConfig.for_anatomy({}, "acdc").train.iterations == ANATOMY_RECIPES["acdc"]["train"]["iterations"]
    assert FinetuneConfig.for_anatomy({}, "acdc").semi_steps == 50  # the semi-supervised rounds follow
    mine = {"train": {"iterations": 80, "learning_rate": 3e-5}}
    config = FinetuneConfig.for_anatomy(mine, "acdc")
    assert (config.train.iterations, config.train.learning_rate) == (80, 3e-5)
    assert FinetuneConfig.for_anatomy({"train": {"learning_rate": 3e-5}}, "acdc").train.iterations == 50
    for anatomy in ("hippocampus", None, "liver"):
        assert FinetuneConfig.for_anatomy({}, anatomy) == FinetuneConfig()
    assert mine == {"train": {"iterations": 80, "learning_rate": 3e-5}}  # the user's settings are not changed


def test_settings_that_are_not_sections_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="train must be a mapping"):
        settings_for_anatomy({"train": 50}, "acdc")
    with pytest.raises(ValueError, match="must be a mapping"):
        settings_for_anatomy([("train", {})], "acdc")


def test_a_cards_anatomy_comes_from_its_provenance_its_name_or_its_pretrained_card(tmp_path):
    default = load_card(EMBEDDED_DEFAULT_CARD)
    assert card_anatomy(default, ("hippocampus", "acdc")) == "hippocampus"
    assert card_anatomy(default, ANATOMY_RECIPES) is None  # no recipe of its own: the module's defaults
    acdc = load_card(acdc_card(tmp_path / "acdc"))
    assert card_anatomy(acdc, ANATOMY_RECIPES) == "acdc"
    renamed = load_card(acdc_card(tmp_path / "mine", name="my-heart-net", provenance={"anatomy": "acdc"}))
    assert card_anatomy(renamed, ANATOMY_RECIPES) == "acdc"
    adapted = load_card(
        acdc_card(tmp_path / "adapted", name="my-heart-net-v2", pretrained=str(tmp_path / "acdc" / "card.json"))
    )
    assert card_anatomy(adapted, ANATOMY_RECIPES) == "acdc"  # an adapted version keeps its source's recipe
    assert reference_anatomy(tmp_path / "acdc" / "card.json", ANATOMY_RECIPES) == "acdc"
    assert reference_anatomy(tmp_path / "nowhere" / "card.json", ANATOMY_RECIPES) is None  # loading it says why


def test_the_cli_adapts_an_acdc_model_with_the_acdc_recipe_unless_told_otherwise(tmp_path):
    from ASSFTActive.cli import build_parser
    from ASSFTActive.cli.adapt import build_config

    parser = build_parser()
    base = ["adapt", "--images", "i", "--labels", "l", "--store", "s"]
    assert build_config(parser.parse_args(base)).train.iterations == 100  # the embedded hippocampus model
    card = str(acdc_card(tmp_path / "acdc"))
    assert build_config(parser.parse_args(base + ["--model", card])).train.iterations == 50
    assert build_config(parser.parse_args(base + ["--model", card, "--iterations", "120"])).train.iterations == 120


def test_an_adapt_job_on_an_acdc_model_trains_with_the_acdc_recipe(tmp_path):
    from ASSFTActive.jobs.spec import JobSpec
    from ASSFTActive.worker import _method

    card = acdc_card(tmp_path / "acdc")
    spec = JobSpec(kind="adapt", images={"a": "a.nii.gz"}, labels={"a": "a.nii.gz"}, model=str(card), store="s")
    assert _method(spec, tmp_path).config.train.iterations == 50
    told = JobSpec(
        kind="adapt",
        images={"a": "a.nii"},
        labels={"a": "a.nii"},
        model=str(card),
        store="s",
        finetune={"train": {"iterations": 70}},
    )
    assert _method(told, tmp_path).config.train.iterations == 70
    default = JobSpec(kind="adapt", images={"a": "a.nii"}, labels={"a": "a.nii"}, store="s")
    assert _method(default, tmp_path).config.train.iterations == 100


def test_the_benchmark_trains_with_the_models_recipe_and_refuses_to_mix_records_of_another(tmp_path, monkeypatch):
    from Testing.Benchmarks.harness import arms, runner, tasks, work

    acdc = tasks.Task(
        setting=tasks.SETTINGS["acdc_path"],
        split="development",
        replicate=0,
        pool=("a", "b"),
        eval=("x",),
        model=str(acdc_card(tmp_path / "acdc")),
        data=tmp_path,
    )
    assert work.anatomy_recipe(acdc) == {"train.iterations": 50, "validation.fold_budget": 1.5}
    config = work.finetune_config(arms.parse_arm("strategy=random"), 0, work.anatomy_recipe(acdc))
    assert config.train.iterations == 50
    arm = arms.parse_arm("long:strategy=random,finetune.train.iterations=200")
    assert work.finetune_config(arm, 0, work.anatomy_recipe(acdc)).train.iterations == 200  # the arm's own wins
    record = {"arm": {"name": "random"}, "pool_cases": ["a", "b"], "eval_cases": ["x"], "per_case": {}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))  # made before ACDC had its recipe
    with pytest.raises(runner.StaleRecord, match="anatomy recipe"):
        runner.check_same_task(path, acdc)
    path.write_text(json.dumps({**record, "anatomy_recipe": {"train.iterations": 50}}))
    runner.check_same_task(path, acdc)  # unguarded: ACDC's later guard setting (its fold budget) does not touch it
    guarded = {**record, "arm": {"name": "g", "guard": True}}
    path.write_text(json.dumps({**guarded, "anatomy_recipe": {"train.iterations": 50}}))
    with pytest.raises(runner.StaleRecord, match="anatomy recipe"):
        runner.check_same_task(path, acdc)  # guarded before ACDC had its fold budget
    path.write_text(json.dumps({**guarded, "anatomy_recipe": work.anatomy_recipe(acdc)}))
    runner.check_same_task(path, acdc)
    path.write_text(json.dumps({**record, "arm": {"name": "floor"}}))  # no training: any default's floor is the same
    runner.check_same_task(path, acdc)
