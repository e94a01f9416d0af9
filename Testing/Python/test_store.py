"""The model store: complete versions only, an atomic active pointer, roll back, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import make_tiny_card, tree

from ASSFTActive.errors import ModelError
from ASSFTActive.models import EMBEDDED_DEFAULT_CARD, load_card, save_card
from ASSFTActive.store import ModelStore, StoreError, resolve_card_path, verify_version


def _add_version(store: ModelStore, name: str, base_folder, metrics=None):
    """Commit a copy of a tiny model as a new version."""
    card = load_card(base_folder / "card.json")
    with store.begin(name) as pending:
        (pending.path / "weights.safetensors").write_bytes((base_folder / "weights.safetensors").read_bytes())
        save_card(card, pending.path / "card.json")
        pending.write_json("provenance.json", {"note": "test"})
        return pending.commit(metrics=metrics or {"dice_after": 0.5})


@pytest.fixture
def base(tmp_path):
    make_tiny_card(tmp_path / "base")
    return tmp_path / "base"


def test_committed_versions_are_numbered_listed_and_only_activated_on_request(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    first = _add_version(store, "m", base)
    second = _add_version(store, "m", base)
    assert (first.version, second.version) == ("v1", "v2")
    assert [v.version for v in store.versions("m")] == ["v1", "v2"]
    assert store.names() == ["m"] and store.active("m") is None
    store.activate("m", "v2")
    assert store.active("m").version == "v2"
    assert [v.active for v in store.versions("m")] == [False, True]
    manifest = json.loads((second.path / "version.json").read_text())
    assert set(manifest["files"]) == {"card.json", "weights.safetensors", "provenance.json"}


def test_a_version_folder_is_readable_by_the_lab_like_its_files_not_private_to_its_writer(tmp_path, base):
    old = os.umask(0o022)
    try:
        version = _add_version(ModelStore(tmp_path / "store"), "m", base)
    finally:
        os.umask(old)
    assert oct(version.path.stat().st_mode & 0o777) == oct(0o755)  # mkdtemp alone: 0700, "versions: none" to others
    assert oct((version.path / "card.json").stat().st_mode & 0o777) == oct(0o644)


def test_activate_rolls_back_to_an_older_version_and_records_the_previous_one(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    _add_version(store, "m", base)
    _add_version(store, "m", base)
    store.activate("m", "v2")
    store.activate("m", "v1")
    record = json.loads((tmp_path / "store" / "m" / "active.json").read_text())
    assert record["version"] == "v1" and record["previous"] == "v2"
    assert store.active("m").card_path == tmp_path / "store" / "m" / "v1" / "card.json"


def test_a_failure_while_writing_leaves_no_visible_version(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        with store.begin("m") as pending:
            (pending.path / "weights.safetensors").write_bytes(b"half")
            raise RuntimeError("killed")
    assert store.versions("m") == [] and tree(tmp_path / "store" / "m") == []


def test_a_version_whose_weights_do_not_fit_its_card_is_refused_at_commit(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    other = make_tiny_card(
        tmp_path / "other", arguments={**load_card(base / "card.json").arguments, "channels": [8, 16, 32]}
    )
    with pytest.raises(ModelError, match="does not match the card"):
        with store.begin("m") as pending:
            (pending.path / "weights.safetensors").write_bytes((base / "weights.safetensors").read_bytes())
            save_card(load_card(other), pending.path / "card.json")
            pending.commit()
    assert store.versions("m") == []


def test_a_version_changed_after_writing_cannot_be_activated(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    version = _add_version(store, "m", base)
    store.activate("m", "v1")
    _add_version(store, "m", base)
    with open(tmp_path / "store" / "m" / "v2" / "weights.safetensors", "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(StoreError, match="differs from the manifest"):
        store.activate("m", "v2")
    assert store.active("m").version == version.version


def test_folders_without_a_manifest_are_invisible_and_stale_pending_folders_are_removed(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    _add_version(store, "m", base)
    (tmp_path / "store" / "m" / "v7").mkdir()  # a half-copied version: no manifest
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "store" / "m" / f".pending-{dead.stdout.strip()}-abc"
    stale.mkdir()
    assert [v.version for v in store.versions("m")] == ["v1"]
    with pytest.raises(StoreError, match="no complete version v7"):
        store.activate("m", "v7")
    assert store.remove_stale("m") == [stale] and not stale.exists()
    assert _add_version(store, "m", base).version == "v8"  # numbers are never reused


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="needs os.waitid to leave an exited child unreaped (POSIX)")
def test_a_pending_folder_is_kept_while_its_writer_runs_and_removed_once_the_writer_is_a_zombie(tmp_path):
    store = ModelStore(tmp_path / "store")
    (tmp_path / "store" / "m").mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        pending = tmp_path / "store" / "m" / f".pending-{writer.pid}-abc"
        pending.mkdir()
        assert store.remove_stale("m") == [] and pending.is_dir()
        writer.stdin.close()
        os.waitid(os.P_PID, writer.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert store.remove_stale("m") == [pending] and not pending.exists()
    finally:
        writer.wait()


def test_an_unwritable_store_is_reported_before_anything_is_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="is a file"):
        ModelStore(blocker / "store").check_writable("m")
    ModelStore(tmp_path / "new" / "store").check_writable("m")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_store_is_reported(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not writable"):
            ModelStore(folder).check_writable("m")
    finally:
        folder.chmod(0o700)


def test_model_names_must_be_plain_folder_names(tmp_path):
    for bad in ("../up", "a/b", "", ".hidden"):
        with pytest.raises(StoreError, match="not allowed"):
            ModelStore(tmp_path).versions(bad)


def test_resolve_card_path_understands_default_cards_versions_and_model_folders(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    _add_version(store, "m", base)
    _add_version(store, "m", base)
    store.activate("m", "v1")
    assert resolve_card_path("default") == EMBEDDED_DEFAULT_CARD
    assert resolve_card_path(base / "card.json") == (base / "card.json").resolve()
    assert resolve_card_path(tmp_path / "store" / "m" / "v2") == tmp_path / "store" / "m" / "v2" / "card.json"
    assert resolve_card_path(tmp_path / "store" / "m") == tmp_path / "store" / "m" / "v1" / "card.json"
    with pytest.raises(ModelError, match="no model card"):
        resolve_card_path(tmp_path)
    verify_version(tmp_path / "store" / "m" / "v2")


def _flip_one_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_active_version_is_refused_when_loaded_through_the_model_folder(tmp_path, base):
    store = ModelStore(tmp_path / "store")
    _add_version(store, "m", base)
    store.activate("m", "v1")
    assert resolve_card_path(tmp_path / "store" / "m") == (tmp_path / "store" / "m" / "v1" / "card.json").resolve()
    _flip_one_byte(tmp_path / "store" / "m" / "v1" / "weights.safetensors")
    with pytest.raises(StoreError, match="differs from the manifest"):
        resolve_card_path(tmp_path / "store" / "m")
    with pytest.raises(StoreError, match="differs from the manifest"):
        resolve_card_path(tmp_path / "store" / "m" / "v1" / "card.json")


def test_every_command_resolves_a_store_folder_with_the_same_verified_resolver(tmp_path, base):
    from ASSFTActive.store import resolve_card

    store = ModelStore(tmp_path / "store")
    _add_version(store, "m", base)
    store.activate("m", "v1")
    assert resolve_card(tmp_path / "store" / "m").path == (tmp_path / "store" / "m" / "v1" / "card.json").resolve()
    (tmp_path / "store" / "m" / "v1" / "provenance.json").write_text("{}")
    with pytest.raises(StoreError, match="differs from the manifest"):
        resolve_card(tmp_path / "store" / "m")


def test_add_version_stores_weights_card_settings_and_provenance_and_activates_only_when_asked(tmp_path, base):
    import torch

    from ASSFTActive.models import load_model

    store = ModelStore(tmp_path / "store")
    card = load_card(base / "card.json")
    network = load_model(card).network
    kept = store.add_version(
        "m",
        card,
        network,
        pretrained=base / "card.json",
        config={"finetune": {"seed": 1}},
        provenance={"note": "kept"},
        metrics={"dice_after": 0.7},
        activate=False,
    )
    assert (kept.version, kept.active, store.active("m")) == ("v1", False, None)
    assert sorted(p.name for p in kept.path.iterdir()) == [
        "card.json",
        "config.json",
        "provenance.json",
        "version.json",
        "weights.safetensors",
    ]
    stored = load_card(kept.card_path)
    assert (stored.name, stored.pretrained, stored.provenance) == ("m", str(base / "card.json"), {"note": "kept"})
    assert json.loads((kept.path / "config.json").read_text()) == {"finetune": {"seed": 1}}
    assert store.version("m", "v1").metrics == {"dice_after": 0.7}
    again = load_model(stored).network.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in network.state_dict().items())
    active = store.add_version(
        "m", card, network, pretrained=base / "card.json", config={}, provenance={}, metrics={}, activate=True
    )
    assert active.version == "v2" and active.active and store.active("m").version == "v2"
