"""A store version that lost its manifest is refused by every way of naming it, never used as a plain card."""

from __future__ import annotations

import pytest
from conftest import make_tiny_card

from ASSFTActive.cli import main
from ASSFTActive.models import load_card, save_card
from ASSFTActive.store import ModelStore, StoreError, resolve_card_path


@pytest.fixture
def store(tmp_path):
    """Model ``site`` with v1 (active) and v2, made from a tiny card."""
    base = make_tiny_card(tmp_path / "base").parent
    store = ModelStore(tmp_path / "store")
    for _ in range(2):
        with store.begin("site") as pending:
            (pending.path / "weights.safetensors").write_bytes((base / "weights.safetensors").read_bytes())
            save_card(load_card(base / "card.json"), pending.path / "card.json")
            pending.commit()
    store.activate("site", "v1")
    return store


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("named", ["card", "folder"])
def test_a_version_without_its_manifest_is_refused_through_its_card_and_its_folder(store, version, named):
    folder = store.root / "site" / version
    (folder / "version.json").unlink()
    spec = folder / "card.json" if named == "card" else folder
    with pytest.raises(StoreError, match="without its manifest"):
        resolve_card_path(spec)


def test_the_store_folder_names_the_active_version_that_lost_its_manifest(store):
    (store.root / "site" / "v1" / "version.json").unlink()
    with pytest.raises(StoreError, match=r"v1: the active version has no readable version.json"):
        resolve_card_path(store.root / "site")


def test_a_tampered_version_without_its_manifest_is_one_error_line_for_check_card(store, capsys):
    weights = store.root / "site" / "v1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (store.root / "site" / "v1" / "version.json").unlink()
    assert main(["check-card", str(store.root / "site" / "v1" / "card.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "without its manifest" in err[0]


def test_complete_versions_and_cards_outside_a_store_still_resolve(store, tmp_path):
    assert resolve_card_path(store.root / "site" / "v2" / "card.json").parent.name == "v2"
    assert resolve_card_path(store.root / "site").parent.name == "v1"
    loose = tmp_path / "copies" / "v1"  # a card in a folder named like a version, but in no store
    make_tiny_card(loose)
    assert resolve_card_path(loose / "card.json") == (loose / "card.json").resolve()
    assert resolve_card_path(loose) == (loose / "card.json").resolve()
