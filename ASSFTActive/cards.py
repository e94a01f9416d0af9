"""Model cards, without torch: the JSON file that says how to rebuild and run a network, read and validated.

A model card is a JSON file beside its weights that says everything needed to rebuild and run a network:
architecture and constructor arguments, weights file and layout, preprocessing, spacing, patch size, class names,
and which layers are the encoder stages whose pooled outputs feed DKD. ``resources/model-card.schema.json`` is the
JSON Schema of a card.

This module imports neither torch nor MONAI, so a process that only needs a card (the Slicer GUI reading class
names, the job protocol) can read one; building the network and loading weights is :mod:`ASSFTActive.models`,
which re-exports everything here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ModelError
from .io import PathLike, atomic_write_text

RESOURCES = Path(__file__).resolve().parent / "resources"
EMBEDDED_DEFAULT_CARD = RESOURCES / "models" / "hippocampus-unet" / "card.json"
CARD_SCHEMA_VERSION = 1
#: The model reference (job.json ``model``, CLI ``--model``) that names the embedded default model.
DEFAULT_MODEL = "default"

#: Weight layouts a card may declare.
WEIGHT_FORMATS = ("state_dict", "swinvit_ssl")
#: Preprocessing profiles understood by :mod:`ASSFTActive.preprocess`.
PREPROCESSING_PROFILES = ("zscore_nonzero", "ct_window")


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, load and run a segmentation network.

    Attributes:
        name: short identifier, also the folder name in a model store.
        architecture: a registry key (``UNet``, ``BasicUNet``, ``SwinUNETR``) or ``monai:<NetworkName>`` for any
            network of ``monai.networks.nets``.
        arguments: keyword arguments of the network constructor.
        weights: weights file, relative to the card's folder (``.safetensors``, ``.pt``, ``.pth``).
        weights_format: ``state_dict`` (keys of this network, optionally ``module.``-prefixed) or ``swinvit_ssl``
            (the published ``model_swinvit.pt`` self-supervised SwinUNETR encoder layout).
        class_names: one name per output channel, index 0 is background.
        encoder_stages: module names (``network.named_modules()``) whose outputs are the encoder stages, shallow to
            deep; their globally pooled outputs are the features of DKD.
        patch_size: sliding-window size in voxels ``[3]``; also the default training patch.
        preprocessing: ``{"profile": "zscore_nonzero"}`` or ``{"profile": "ct_window", "a_min": .., "a_max": ..}``.
        spacing: voxel size in mm the network expects, or ``None`` to run at the volume's own spacing.
        orientation: ``"RAS"`` to reorient inputs to the closest RAS voxel order first, or ``None``.
        pretrained: card (path relative to this card's folder, or absolute) of the frozen pre-trained model whose
            encoder is the "source knowledge" of DKD; ``None`` means this model is itself the pre-trained one.
        provenance: free-form record of how the weights were made (data split, seed, metrics).
        path: where the card was read from (not serialised).
    """

    name: str
    architecture: str
    arguments: Mapping[str, Any]
    weights: str
    class_names: Tuple[str, ...]
    encoder_stages: Tuple[str, ...]
    patch_size: Tuple[int, int, int]
    preprocessing: Mapping[str, Any]
    weights_format: str = "state_dict"
    spacing: Optional[Tuple[float, float, float]] = None
    orientation: Optional[str] = "RAS"
    pretrained: Optional[str] = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def weights_path(self) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / self.weights).resolve()

    def pretrained_card(self) -> ModelCard:
        """The card of the frozen pre-trained model (this card when ``pretrained`` is ``None``)."""
        if self.pretrained is None:
            return self
        base = self.path.parent if self.path is not None else Path.cwd()
        return load_card(base / self.pretrained)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["schema_version"] = CARD_SCHEMA_VERSION
        data["class_names"] = list(self.class_names)
        data["encoder_stages"] = list(self.encoder_stages)
        data["patch_size"] = list(self.patch_size)
        data["spacing"] = list(self.spacing) if self.spacing is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Optional[Path] = None) -> ModelCard:
        where = str(path) if path is not None else "model card"
        data = dict(data)
        version = data.pop("schema_version", CARD_SCHEMA_VERSION)
        if version != CARD_SCHEMA_VERSION:
            raise ModelError(f"{where}: schema_version {version} is not supported (expected {CARD_SCHEMA_VERSION}).")
        known = {f for f in cls.__dataclass_fields__ if f != "path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"{where}: unknown field(s) {unknown}. Known fields: {sorted(known)}.")
        required = ["name", "architecture", "arguments", "weights", "class_names", "encoder_stages", "patch_size",
                    "preprocessing"]
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelError(f"{where}: missing required field(s) {missing}. See resources/model-card.schema.json.")
        card = cls(
            name=str(data["name"]),
            architecture=str(data["architecture"]),
            arguments=dict(data["arguments"]),
            weights=str(data["weights"]),
            class_names=tuple(str(c) for c in data["class_names"]),
            encoder_stages=tuple(str(s) for s in data["encoder_stages"]),
            patch_size=tuple(int(s) for s in data["patch_size"]),
            preprocessing=dict(data["preprocessing"]),
            weights_format=str(data.get("weights_format", "state_dict")),
            spacing=tuple(float(s) for s in data["spacing"]) if data.get("spacing") is not None else None,
            orientation=data.get("orientation", "RAS"),
            pretrained=data.get("pretrained"),
            provenance=dict(data.get("provenance", {})),
            path=path,
        )
        _validate(card, where)
        return card


def _validate(card: ModelCard, where: str) -> None:
    if card.weights_format not in WEIGHT_FORMATS:
        raise ModelError(f"{where}: weights_format {card.weights_format!r} unknown; use one of {WEIGHT_FORMATS}.")
    if len(card.class_names) < 2:
        raise ModelError(f"{where}: class_names needs background plus at least one class.")
    duplicates = sorted({name for name in card.class_names if card.class_names.count(name) > 1})
    if duplicates:
        raise ModelError(f"{where}: class_names has duplicates {duplicates}; every class needs its own name "
                         "(segments are matched to classes by name).")
    if len(card.patch_size) != 3 or min(card.patch_size) < 1:
        raise ModelError(f"{where}: patch_size must be three positive integers, got {list(card.patch_size)}.")
    if not card.encoder_stages:
        raise ModelError(f"{where}: encoder_stages is empty; name the encoder layers (network.named_modules()).")
    profile = card.preprocessing.get("profile")
    if profile not in PREPROCESSING_PROFILES:
        raise ModelError(f"{where}: preprocessing profile {profile!r} unknown; use one of {PREPROCESSING_PROFILES}.")
    if card.orientation not in (None, "RAS"):
        raise ModelError(f"{where}: orientation must be \"RAS\" or null, got {card.orientation!r}.")


def load_card(path: PathLike) -> ModelCard:
    """Read and validate a model card JSON file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ModelError(f"{path}: model card not found. Pass a card JSON file (see `assft models`).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON model card ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a model card must be a JSON object.")
    return ModelCard.from_dict(data, path=path)


def save_card(card: ModelCard, path: PathLike) -> Path:
    """Write ``card`` as JSON, atomically."""
    return atomic_write_text(path, json.dumps(card.to_dict(), indent=2) + "\n")


def resolve_card(spec: Optional[PathLike]) -> ModelCard:
    """A card from a CLI/job argument: ``None`` or ``"default"`` is the embedded default, else a card path."""
    if spec is None or str(spec) == DEFAULT_MODEL:
        return load_card(EMBEDDED_DEFAULT_CARD)
    return load_card(spec)
