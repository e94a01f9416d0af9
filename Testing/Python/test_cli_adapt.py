"""`assft adapt` as a user types it: a new active version with a summary, settings from flags and files, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_tiny_card, read_json, tree, worker_env, write_dataset

from ASSFTActive.cli import main
from ASSFTActive.cli.adapt import format_summary
from ASSFTActive.finetune.fold_pseudo import FoldVote
from ASSFTActive.store import ModelStore

FAST = ["--iterations", "12", "--semi-iterations", "8", "--batch-size", "2", "--learning-rate", "0.01"]


def assft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ASSFTActive", *args],
        cwd=str(cwd),
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


#: In-process runs use one thread (the conftest fixture), like the worker subprocesses.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-adapt")
    card = make_tiny_card(tmp / "base")
    write_dataset(tmp / "data", count=6, labeled=3)
    return {"card": card, "images": tmp / "data" / "images", "labels": tmp / "data" / "labels", "tmp": tmp}


@pytest.mark.slow
def test_adapt_prints_a_summary_shows_progress_and_activates_the_new_version(world):
    store = world["tmp"] / "store"
    done = assft(
        "adapt",
        "--images",
        str(world["images"]),
        "--labels",
        str(world["labels"]),
        "--model",
        str(world["card"]),
        "--store",
        str(store),
        "--name",
        "site",
        *FAST,
        "--predictions",
        str(world["tmp"] / "pred"),
        cwd=world["tmp"],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "model site v1 is now active" in out
    assert "why: better than the current model: cross-validated mean Dice" in out
    assert "labelled volumes: 3; training stopped at step" in out
    assert "each held out once (cross-validation" in out
    assert "box_a" in out and "box_b" in out and "Dice before" in out
    assert "train" in done.stderr  # the progress bar
    assert ModelStore(store).active("site").version == "v1"
    assert sorted(p.name for p in (world["tmp"] / "pred").iterdir()) == [
        "case_003.nii.gz",
        "case_004.nii.gz",
        "case_005.nii.gz",
    ]
    config = read_json(store / "site" / "v1" / "config.json")["finetune"]
    assert config["train"]["iterations"] == 12 and config["pseudo"]["mode"] == "selective"


def test_the_summary_names_the_volumes_the_folds_pseudo_labelled_and_how_many_folds_did():
    summary = {"mean_dice": 0.5, "dice": {"box_a": 0.5}, "hd95": {"box_a": None}}
    result = SimpleNamespace(
        name="site",
        version="v2",
        activated=True,
        decision=SimpleNamespace(reason="better"),
        card_path="card.json",
        labeled=("a", "b", "c"),
        pseudo=(FoldVote("u1", 3, 3), FoldVote("u2", 0, 3), FoldVote("u3", 1, 2)),
        metrics={"before": summary, "after": summary, "stop_step": 150, "cases": ["a"], "evaluated_on": "labeled"},
        skipped=(),
        predictions={},
        seconds=1.0,
    )
    assert (
        "pseudo-labelled volumes: 2 of 3 unlabelled (by the cross-validation folds whose weights were averaged): "
        "u1 (3/3 folds), u3 (1/2 folds)\n" in format_summary(result)
    )


def test_no_guard_activates_without_cross_validation(world, capsys):
    store = world["tmp"] / "store-unguarded"
    code = main(
        [
            "adapt",
            "--images",
            str(world["images"]),
            "--labels",
            str(world["labels"]),
            "--model",
            str(world["card"]),
            "--store",
            str(store),
            "--no-guard",
            "--quiet",
            *FAST,
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "is now active" in out and "why: the guard is off" in out and "labelled training volume(s)" in out
    assert read_json(store / "tiny-unet-adapted" / "v1" / "config.json")["finetune"]["validation"]["guard"] is False


def test_a_subjects_file_of_one_patient_stores_the_model_without_activating_it(world, capsys):
    subjects = world["tmp"] / "one-patient.json"
    subjects.write_text(json.dumps({c: "patient-A" for c in ("case_000", "case_001", "case_002")}))
    store = world["tmp"] / "store-one-patient"
    args = ["adapt", "--images", str(world["images"]), "--labels", str(world["labels"]), "--model", str(world["card"])]
    code = main([*args, "--store", str(store), "--subjects", str(subjects), "--quiet", *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "not activated" in out and "all come from one subject" in out
    assert ModelStore(store).active("tiny-unet-adapted") is None


def test_a_settings_file_is_read_and_flags_override_it(world, capsys):
    settings = world["tmp"] / "settings.json"
    settings.write_text(
        json.dumps(
            {
                "train": {"iterations": 99, "batch_size": 2, "learning_rate": 0.01},
                "semi_iterations": 4,
                "pseudo": {"mode": "all", "keep_fraction": 0.3},
            }
        )
    )
    store = world["tmp"] / "store-none"
    code = main(
        [
            "adapt",
            "--images",
            str(world["images"]),
            "--labels",
            str(world["labels"]),
            "--model",
            str(world["card"]),
            "--store",
            str(store),
            "--config",
            str(settings),
            "--iterations",
            "6",
            "--pseudo",
            "none",
            "--quiet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pseudo-labelled volumes: none" in out and "tiny-unet-adapted v1 is now active" in out
    config = read_json(store / "tiny-unet-adapted" / "v1" / "config.json")["finetune"]
    assert config["train"]["iterations"] == 6 and config["train"]["batch_size"] == 2
    assert config["train"]["learning_rate"] == 0.01
    assert config["pseudo"] == {**config["pseudo"], "mode": "none", "keep_fraction": 0.3}
    assert config["semi_iterations"] == 4


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_labels", "error: no labelled volumes"),
        ("store_is_file", "is a file, not a folder"),
        ("bad_setting", "unknown TrainConfig setting(s) 'lr'"),
        ("missing_images", "no NIfTI/NRRD/MetaImage files found"),
        ("bad_number", "PseudoLabelConfig.keep_fraction must be in (0.0, 1.0]"),
        ("unknown_subject", "subjects names case(s) ['case_999'] that are not among the images"),
        ("subjects_not_object", "the subjects must be a JSON object"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2_and_no_store_change(world, capsys, case, message):
    tmp = world["tmp"] / case
    tmp.mkdir()
    store = tmp / "store"
    args = [
        "adapt",
        "--images",
        str(world["images"]),
        "--labels",
        str(world["labels"]),
        "--model",
        str(world["card"]),
        "--store",
        str(store),
        "--quiet",
        *FAST,
    ]
    if case == "no_labels":
        (tmp / "empty").mkdir()
        args[4] = str(tmp / "empty")
    elif case == "store_is_file":
        (tmp / "file").write_text("x")
        args[8] = str(tmp / "file" / "store")
    elif case == "bad_setting":
        (tmp / "s.json").write_text(json.dumps({"train": {"lr": 0.1}}))
        args += ["--config", str(tmp / "s.json")]
    elif case == "missing_images":
        args[2] = str(tmp / "nowhere")
    elif case == "bad_number":
        args += ["--keep-fraction", "0"]
    elif case in ("unknown_subject", "subjects_not_object"):
        subjects = {"case_999": "A"} if case == "unknown_subject" else ["case_000"]
        (tmp / "subjects.json").write_text(json.dumps(subjects))
        args += ["--subjects", str(tmp / "subjects.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert tree(store) == []
