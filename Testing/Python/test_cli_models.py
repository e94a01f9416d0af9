"""`assft models` as a user types it: the embedded model, store versions with the active one, roll back."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_card

from ASSFTActive.cli import main
from ASSFTActive.models import load_card, save_card
from ASSFTActive.store import ModelStore


@pytest.fixture
def store(tmp_path):
    base = make_tiny_card(tmp_path / "base").parent
    store = ModelStore(tmp_path / "store")
    for dice in (0.61, 0.72):
        with store.begin("site") as pending:
            (pending.path / "weights.safetensors").write_bytes((base / "weights.safetensors").read_bytes())
            save_card(load_card(base / "card.json"), pending.path / "card.json")
            pending.commit(metrics={"dice_before": 0.5, "dice_after": dice})
    store.activate("site", "v2")
    return store


def test_models_lists_the_embedded_default(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "hippocampus-unet" in out and "anterior, posterior" in out


def test_models_lists_every_version_and_marks_the_active_one(store, capsys):
    assert main(["models", "--store", str(store.root)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " site " in f" {line} "]
    assert len(lines) == 2
    assert lines[0].startswith("  site") and "v1" in lines[0] and "Dice 0.500 -> 0.610" in lines[0]
    assert lines[1].startswith("* site") and "v2" in lines[1] and "Dice 0.500 -> 0.720" in lines[1]


def test_models_marks_a_version_whose_weights_were_changed_after_writing(store, capsys):
    weights = store.root / "site" / "v2" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the active version's weights flipped
    weights.write_bytes(bytes(data))
    assert main(["models", "--store", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("* site") and "v2" in line)
    assert "CHANGED" in lines[index + 1] and "weights.safetensors" in lines[index + 1]
    assert not any("CHANGED" in line for line in lines[:index])  # v1 is intact
    assert any(line.startswith("! 1 version(s) differ") and "site v2" in line for line in lines)
    assert main(["models", "--store", str(store.root), "--json"]) == 0
    listing = {v["version"]: v["problem"] for v in json.loads(capsys.readouterr().out)["store"]}
    assert listing["v1"] == "" and "content differs from the manifest" in listing["v2"]


def test_activate_rolls_back_and_the_listing_follows(store, capsys):
    assert main(["models", "activate", "--store", str(store.root), "site", "v1"]) == 0
    assert "active version v2 -> v1" in capsys.readouterr().out
    assert store.active("site").version == "v1"
    assert main(["models", "--store", str(store.root), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["active"]) for v in listing["store"]] == [("v1", True), ("v2", False)]
    assert main(["models", "--store", str(store.root), "activate", "site", "v2"]) == 0
    assert store.active("site").version == "v2"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["activate", "site", "v9"], "no complete version v9"),
        (["activate", "nobody", "v1"], "no complete version v1 of model 'nobody'"),
        (["activate", "site", "latest"], "not of the form v1, v2"),
    ],
)
def test_activating_what_does_not_exist_is_an_error_and_changes_nothing(store, capsys, argv, message):
    assert main(["models", "--store", str(store.root)] + argv) == 2
    assert message in capsys.readouterr().err
    assert store.active("site").version == "v2"


def test_activate_without_a_store_says_what_to_pass(capsys):
    assert main(["models", "activate", "site", "v1"]) == 2
    assert "pass --store" in capsys.readouterr().err
