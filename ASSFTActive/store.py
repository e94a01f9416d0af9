"""The model store: every adapted model version kept side by side, one of them active.

Layout::

    <store>/<name>/v1/            card.json, weights.safetensors, config.json, provenance.json, version.json
    <store>/<name>/v2/            ...
    <store>/<name>/active.json    {"version": "v2", ...}: which version is in use
    <store>/<name>/.pending-*/    a version being written (invisible; removed when its process is gone)

:meth:`ModelStore.add_version` writes a whole version (weights, card, settings, provenance) and activates it when
asked. A new version is assembled in a ``.pending-*`` folder; ``version.json`` (the manifest: every file with its
size and SHA-256) is written last, the folder is checked (manifest, card, weights loading into the card's network),
and only then renamed to ``v<k>`` in one ``rename``. The ``active.json`` pointer is replaced atomically, and only to
point at a version that passes the same check. A killed writer therefore leaves either nothing visible or a complete
version, and never changes the active model halfway. Old versions stay; :meth:`ModelStore.activate` rolls back.

This module imports torch only to check and write weights (:func:`verify_version` with ``load=True``,
:meth:`ModelStore.add_version`); listing versions is torch-free so the Slicer GUI can show them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional

from . import __version__
from .cards import DEFAULT_MODEL, EMBEDDED_DEFAULT_CARD, ModelCard, card_anatomy, load_card, save_card
from .confine import output_mode
from .errors import AssftError, ModelError, OutputError
from .io import PathLike, atomic_write_text
from .processes import is_running

__all__ = [
    "ACTIVE_FILE",
    "MANIFEST_FILE",
    "ModelStore",
    "ModelVersion",
    "PendingVersion",
    "StoreError",
    "resolve_card",
    "resolve_card_path",
    "verify_version",
]

MANIFEST_FILE = "version.json"
ACTIVE_FILE = "active.json"
CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
PENDING_PREFIX = ".pending-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_VERSION = re.compile(r"^v([1-9][0-9]*)$")


class StoreError(AssftError):
    """The model store cannot be used: not writable, unknown model or version, incomplete or corrupt version."""


def check_name(name: str) -> str:
    """A model name usable as a folder name on every platform."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(
            f"model name {name!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 100 characters, "
            "starting with a letter or digit)."
        )
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelVersion:
    """One complete version of a model in a store.

    Attributes:
        name: model name (folder under the store root).
        version: ``"v<k>"``.
        path: the version folder.
        created: creation time (seconds since the epoch).
        metrics: the summary metrics recorded in the manifest (e.g. held-out Dice before/after).
        active: whether ``active.json`` points at this version.
    """

    name: str
    version: str
    path: Path
    created: float
    metrics: Mapping[str, Any] = field(default_factory=dict)
    active: bool = False

    @property
    def number(self) -> int:
        return int(self.version[1:])

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "card": str(self.card_path),
            "created": self.created,
            "metrics": dict(self.metrics),
            "active": self.active,
        }


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify_version(path: PathLike, load: bool = True) -> Dict[str, Any]:
    """Check that a version folder is complete and usable; return its manifest.

    Checks: the manifest exists, every file it lists is present with its recorded size and SHA-256, the card is a
    valid model card, and (``load``) its weights load into the card's network.

    Raises:
        StoreError: anything missing, changed or unreadable (the message names the file).
        ModelError: the weights do not fit the card (from :func:`ASSFTActive.models.load_model`).
    """
    path = Path(path)
    manifest = _read_json(path / MANIFEST_FILE)
    if manifest is None:
        raise StoreError(f"{path}: incomplete model version (no readable {MANIFEST_FILE}); it cannot be used.")
    files = manifest.get("files")
    if not isinstance(files, dict) or CARD_FILE not in files:
        raise StoreError(f"{path / MANIFEST_FILE}: the manifest lists no {CARD_FILE}; the version is corrupt.")
    for name, entry in files.items():
        target = path / name
        if not target.is_file():
            raise StoreError(f"{target}: listed in the manifest but missing; the version is corrupt.")
        if target.stat().st_size != int(entry.get("bytes", -1)) or _sha256(target) != entry.get("sha256"):
            raise StoreError(f"{target}: content differs from the manifest (changed or truncated after writing).")
    if load:
        from .models import load_model

        card = load_card(path / CARD_FILE)
        if card.weights_path.parent != path.resolve():
            raise StoreError(f"{path / CARD_FILE}: weights must lie in the version folder, got {card.weights}.")
        load_model(card)
    return manifest


class PendingVersion:
    """A version being written: a hidden folder that becomes ``v<k>`` on :meth:`commit`, or vanishes.

    Use as a context manager; leaving it by an exception (cancel, error) removes the folder.
    """

    def __init__(self, store: ModelStore, name: str):
        self.store = store
        self.name = name
        folder = store.root / name
        folder.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PENDING_PREFIX}{os.getpid()}-", dir=str(folder)))
        os.chmod(self.path, output_mode(folder=True))  # v<k> readable by whoever may read the store, like its files
        self.version: Optional[ModelVersion] = None

    def __enter__(self) -> PendingVersion:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.version is None:
            self.abort()

    def write_json(self, filename: str, data: Any) -> Path:
        return atomic_write_text(self.path / filename, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, metrics: Optional[Mapping[str, Any]] = None, load: bool = True) -> ModelVersion:
        """Write the manifest, check the folder and rename it to the next free ``v<k>``.

        Raises:
            StoreError, ModelError: the folder is not a usable version (it is removed).
        """
        files = {}
        for item in sorted(self.path.iterdir()):
            if item.name == MANIFEST_FILE:
                continue
            if not item.is_file() or item.name.startswith("."):
                raise StoreError(f"{item}: unexpected entry in a model version; only plain files are stored.")
            files[item.name] = {"bytes": item.stat().st_size, "sha256": _sha256(item)}
        manifest = {
            "name": self.name,
            "created": time.time(),
            "package_version": __version__,
            "files": files,
            "metrics": dict(metrics or {}),
        }
        atomic_write_text(self.path / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            verify_version(self.path, load=load)
        except BaseException:
            self.abort()
            raise
        folder = self.store.root / self.name
        number = self.store._next_number(self.name)
        while True:
            final = folder / f"v{number}"
            try:
                os.rename(self.path, final)
                break
            except OSError:
                if not final.exists():
                    self.abort()
                    raise
                number += 1  # another writer took this number first
        self.version = ModelVersion(
            name=self.name,
            version=final.name,
            path=final,
            created=manifest["created"],
            metrics=manifest["metrics"],
            active=False,
        )
        return self.version


class ModelStore:
    """Versions of adapted models under one root folder (see the module docstring for the layout).

    Args:
        root: the store folder (created on first write).
    """

    def __init__(self, root: PathLike):
        self.root = Path(root).expanduser().resolve()

    # ----------------------------------------------------------------------------------------------- reading

    def names(self) -> List[str]:
        """Models with at least one complete version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name) and self.versions(p.name)
        )

    def active_version(self, name: str) -> Optional[str]:
        """The ``v<k>`` that ``active.json`` names, or ``None``."""
        data = _read_json(self.root / check_name(name) / ACTIVE_FILE)
        value = data.get("version") if data else None
        return value if isinstance(value, str) and _VERSION.match(value) else None

    def versions(self, name: str) -> List[ModelVersion]:
        """Complete versions of ``name`` (those with a manifest), oldest first. Pending folders are never listed."""
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        active = self.active_version(name)
        found = []
        for item in folder.iterdir():
            match = _VERSION.match(item.name)
            if not match or not item.is_dir():
                continue
            manifest = _read_json(item / MANIFEST_FILE)
            if manifest is None:
                continue
            found.append(
                ModelVersion(
                    name=name,
                    version=item.name,
                    path=item,
                    created=float(manifest.get("created", 0.0)),
                    metrics=dict(manifest.get("metrics") or {}),
                    active=item.name == active,
                )
            )
        return sorted(found, key=lambda v: v.number)

    def version(self, name: str, version: str) -> ModelVersion:
        """One complete version.

        Raises:
            StoreError: unknown model or version.
        """
        if not isinstance(version, str) or not _VERSION.match(version):
            raise StoreError(f"version {version!r} is not of the form v1, v2, ...")
        for item in self.versions(name):
            if item.version == version:
                return item
        known = [v.version for v in self.versions(name)]
        raise StoreError(
            f"{self.root / name}: no complete version {version} of model {name!r} (versions: {known or 'none'}). "
            "See `assft models --store ...`."
        )

    def active(self, name: str) -> Optional[ModelVersion]:
        """The active version of ``name``, or ``None`` when none was activated."""
        current = self.active_version(name)
        if current is None:
            return None
        for item in self.versions(name):
            if item.version == current:
                return item
        return None

    # ----------------------------------------------------------------------------------------------- writing

    def check_writable(self, name: Optional[str] = None) -> None:
        """Fail early, before any training, when versions cannot be written here; creates nothing.

        The nearest existing folder on the way to ``<root>/<name>`` must be a folder in which a file can be created
        (a probe file is created and removed at once).

        Raises:
            StoreError: a path component is a file, or the folder cannot be written.
        """
        target = self.root / check_name(name) if name is not None else self.root
        existing = target
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StoreError(
                f"{target}: the model store cannot be created because {existing} is a file, not a folder. Choose "
                "another --store folder."
            )
        try:
            handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=str(existing))
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise StoreError(
                f"{target}: the model store is not writable ({exc.strerror or exc} in {existing}). Choose another "
                "--store folder or fix its permissions."
            ) from exc

    def begin(self, name: str) -> PendingVersion:
        """Start writing a new version of ``name`` (a context manager; see :class:`PendingVersion`)."""
        self.check_writable(name)
        self.remove_stale(name)
        return PendingVersion(self, check_name(name))

    def add_version(
        self,
        name: str,
        card: Any,
        network: Any,
        *,
        pretrained: PathLike,
        config: Mapping[str, Any],
        provenance: Mapping[str, Any],
        metrics: Mapping[str, Any],
        activate: bool,
    ) -> ModelVersion:
        """Write ``network`` as the next version of ``name``; make it the active one when ``activate``.

        The version holds the weights (``weights.safetensors``), a card derived from ``card`` (same network, this
        name, ``pretrained`` as the original pre-trained card, ``provenance`` inside), ``config.json`` (the settings
        that made it) and ``provenance.json``; its manifest records ``metrics``. All of it is checked before the
        version becomes visible (:class:`PendingVersion`), and the active pointer changes only after that.

        Args:
            card: the :class:`~ASSFTActive.models.ModelCard` of the model that was adapted.
            network: the ``torch.nn.Module`` to store (not wrapped in DistributedDataParallel).
            config, provenance, metrics: JSON-ready mappings.

        Returns:
            the new :class:`ModelVersion` (``active`` tells whether it was activated).

        Raises:
            StoreError, ModelError: the version cannot be written or does not check out; nothing changed.
        """
        from .models import derive_card, save_weights

        with self.begin(name) as pending:
            save_weights(network, pending.path / WEIGHTS_FILE)
            new_card = derive_card(
                card, name=name, weights=WEIGHTS_FILE, pretrained=str(pretrained), provenance=dict(provenance)
            )
            save_card(new_card, pending.path / CARD_FILE)
            pending.write_json(CONFIG_FILE, dict(config))
            pending.write_json(PROVENANCE_FILE, dict(provenance))
            version = pending.commit(metrics=metrics)
        return self.activate(name, version.version) if activate else version

    def activate(self, name: str, version: str, load: bool = True) -> ModelVersion:
        """Make ``version`` the active one after checking it (:func:`verify_version`); the switch is one rename.

        Raises:
            StoreError, ModelError: unknown, incomplete or unusable version; the active pointer is unchanged.
        """
        item = self.version(name, version)
        verify_version(item.path, load=load)
        previous = self.active_version(name)
        record = {"version": item.version, "activated": time.time(), "previous": previous}
        try:
            atomic_write_text(self.root / name / ACTIVE_FILE, json.dumps(record, indent=2) + "\n")
        except (OSError, OutputError) as exc:
            raise StoreError(f"{self.root / name / ACTIVE_FILE}: cannot switch the active version ({exc}).") from exc
        return ModelVersion(
            name=item.name,
            version=item.version,
            path=item.path,
            created=item.created,
            metrics=item.metrics,
            active=True,
        )

    def remove_stale(self, name: str) -> List[Path]:
        """Delete pending folders left by processes that no longer run (e.g. after ``kill -9``)."""
        folder = self.root / check_name(name)
        removed = []
        if not folder.is_dir():
            return removed
        for item in folder.iterdir():
            if not item.name.startswith(PENDING_PREFIX):
                continue
            pid_text = item.name[len(PENDING_PREFIX) :].split("-", 1)[0]
            if pid_text.isdigit() and (int(pid_text) == os.getpid() or is_running(int(pid_text))):
                continue  # still being written (a reused process id only delays the clean-up)
            shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
        return removed

    def _next_number(self, name: str) -> int:
        folder = self.root / name
        numbers = [int(m.group(1)) for m in (_VERSION.match(p.name) for p in folder.iterdir()) if m]
        return max(numbers, default=0) + 1


def resolve_card_path(spec: Optional[PathLike]) -> Path:
    """The model card a user means by ``spec``.

    Accepted: ``None`` or ``"default"`` (the embedded default), a card JSON file, a version folder of a store
    (``<store>/<name>/v2``), a model folder of a store (``<store>/<name>``: its active version), or a model source
    folder (an nnU-Net v2 result or fold folder, a MONAI bundle: the path of its weights file, which
    :func:`ASSFTActive.cards.load_card` reads as a card; :mod:`ASSFTActive.sources`). Whenever the card
    lies in a store version (however it was named), the version is checked against its manifest (every file's size
    and SHA-256, :func:`verify_version` without loading) on every call, so a version changed after it was written is
    never used silently.

    Raises:
        StoreError: a store folder with no active version, a version that differs from its manifest, or a path
            that is none of the above.
    """
    if spec is None or str(spec) == DEFAULT_MODEL:
        return EMBEDDED_DEFAULT_CARD
    path = Path(spec).expanduser()
    if path.is_file():
        if _is_version_folder(path.parent):
            verify_version(path.parent, load=False)
        else:
            _refuse_version_without_manifest(path.parent)
        return path.resolve()
    if path.is_dir():
        if _is_version_folder(path):
            verify_version(path, load=False)
            return (path / CARD_FILE).resolve()
        _refuse_version_without_manifest(path)
        if (path / ACTIVE_FILE).is_file() or any(_VERSION.match(p.name) for p in path.iterdir()):
            store = ModelStore(path.parent)
            active = store.active(path.name)
            if active is None:
                named = store.active_version(path.name)
                if named is not None and (path / named).is_dir():
                    raise StoreError(
                        f"{path / named}: the active version has no readable {MANIFEST_FILE} (incomplete or changed "
                        "after writing); it cannot be used. Activate a complete version with `assft models activate`."
                    )
                raise StoreError(f"{path}: model has no active version; activate one with `assft models activate`.")
            verify_version(active.path, load=False)
            return active.card_path.resolve()
        if (path / CARD_FILE).is_file():
            return (path / CARD_FILE).resolve()
        # an nnU-Net result folder or a MONAI bundle: its weights file is the card reference (load_card reads it)
        from .sources import weights_in_folder

        source_weights = weights_in_folder(path)
        if source_weights is not None:
            return source_weights.resolve()
    raise ModelError(
        f"{path}: no model card there. Pass 'default', a card JSON file, or a model folder of a store "
        "(<store>/<name> or <store>/<name>/v<k>)."
    )


def resolve_card(spec: Optional[PathLike]) -> ModelCard:
    """The card a CLI/job/GUI model argument means; the one resolver every command uses.

    ``None`` or ``"default"`` is the embedded default; otherwise a card file, a store version folder
    (``<store>/<name>/v<k>``) or a store model folder (``<store>/<name>``: its active version), resolved and
    verified against the version's manifest by :func:`resolve_card_path`.
    """
    return load_card(resolve_card_path(spec))


def reference_anatomy(spec: Optional[PathLike], known: Collection[str]) -> Optional[str]:
    """:func:`~ASSFTActive.cards.card_anatomy` of the model a reference means (:func:`resolve_card`); ``None`` when
    the reference does not resolve: the run that loads the model reports why, with the resolver's own message."""
    try:
        card = resolve_card(spec)
    except (AssftError, OSError, ValueError):
        return None
    return card_anatomy(card, known)


def _is_version_folder(path: Path) -> bool:
    """A store version (or a copy of one): a folder holding a manifest."""
    return (path / MANIFEST_FILE).is_file()


def _refuse_version_without_manifest(folder: Path) -> None:
    """Refuse a ``v<k>`` folder inside a store's model folder (beside ``active.json`` or a complete version) that
    has lost its manifest: its files cannot be checked against what was written, and using its card as a plain card
    would run changed weights without a word.

    Raises:
        StoreError: ``folder`` is such a version.
    """
    model = folder.parent
    if not _VERSION.match(folder.name) or _is_version_folder(folder) or not model.is_dir():
        return
    in_store = (model / ACTIVE_FILE).is_file() or any(
        _VERSION.match(p.name) and _is_version_folder(p) for p in model.iterdir() if p.is_dir()
    )
    if in_store:
        raise StoreError(
            f"{folder}: a model store version without its manifest ({MANIFEST_FILE}; incomplete or changed after "
            "writing); its files cannot be checked, so it is not used. Use a complete version (see `assft models "
            f"--store {model.parent}`), or copy the card and its weights to a folder of their own."
        )
