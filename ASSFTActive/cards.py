"""Model cards, without torch: the JSON file that says how to rebuild and run a network, read and validated.

A model card is a JSON file beside its weights that says everything needed to rebuild and run a network:
architecture and constructor arguments, weights file and layout, preprocessing, spacing, patch size, class names,
and which layers are the encoder stages whose pooled outputs feed DKD. ``resources/model-card.schema.json`` is the
JSON Schema of a card.

This module imports neither torch nor MONAI, so a process that only needs a card (the Slicer GUI reading class
names, the job protocol) can read one; building the network and loading weights is :mod:`ASSFTActive.models`,
which re-exports everything here. What a model *reference* means (``default``, a card file, a store folder) is the
store's to say: :func:`ASSFTActive.store.resolve_card`, so that this module imports nothing above it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Dict, Mapping, Optional, Tuple

from .errors import ModelError
from .io import PathLike, atomic_write_text
from .sources import card_for_weights
from .sources.nnunet import check_preprocessing as check_nnunet_preprocessing

RESOURCES = Path(__file__).resolve().parent / "resources"
EMBEDDED_DEFAULT_CARD = RESOURCES / "models" / "hippocampus-unet" / "card.json"
CARD_SCHEMA_VERSION = 1
#: The model reference (job.json ``model``, CLI ``--model``) that names the embedded default model.
DEFAULT_MODEL = "default"

#: Weight layouts a card may declare.
WEIGHT_FORMATS = ("state_dict", "swinvit_ssl", "nnunet_checkpoint")
#: Weight layouts that hold a pre-trained encoder only (no segmentation head): the head is initialised when the
#: network is built (:data:`ASSFTActive.models.HEAD_INIT_SEED`), the first ranking has no prediction to take ASD from
#: (DKD's diversity alone ranks), and the first Adapt trains head and encoder together.
ENCODER_ONLY_FORMATS = ("swinvit_ssl",)
#: Preprocessing profiles understood by :mod:`ASSFTActive.inference.preprocess`.
PREPROCESSING_PROFILES = ("zscore_nonzero", "ct_window", "nnunet")
#: Bounds of a card's ``patch_size`` (voxels per axis) and ``spacing`` (mm per axis): values outside them are
#: typing mistakes (a patch of 100000 voxels, a spacing of 0 or -1 mm), refused when the card is read.
MIN_PATCH_EDGE, MAX_PATCH_EDGE = 4, 512
MIN_SPACING_MM, MAX_SPACING_MM = 0.01, 50.0


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
        test_time_mirroring: model-space axes (``0..2`` of the card's ``[I, J, K]`` after orientation and spacing)
            whose every flip combination the predictor averages the window logits over (nnU-Net's default inference,
            set from its checkpoint's ``inference_allowed_mirroring_axes``); ``None`` = one plain pass.
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
    test_time_mirroring: Optional[Tuple[int, ...]] = None
    path: Optional[Path] = field(default=None, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_trained_head(self) -> bool:
        """False for an encoder-only card (:data:`ENCODER_ONLY_FORMATS`): its segmentation head is initialised,
        not trained, so its prediction means nothing until the first Adapt (whose stored card has a head)."""
        return self.weights_format not in ENCODER_ONLY_FORMATS

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
        if self.test_time_mirroring is None:
            data.pop("test_time_mirroring")  # cards without mirroring are written as before
        else:
            data["test_time_mirroring"] = list(self.test_time_mirroring)
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
        required = [
            "name",
            "architecture",
            "arguments",
            "weights",
            "class_names",
            "encoder_stages",
            "patch_size",
            "preprocessing",
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise ModelError(f"{where}: missing required field(s) {missing}. See resources/model-card.schema.json.")
        _check_types(data, where)
        card = cls(
            name=data["name"],
            architecture=data["architecture"],
            arguments=dict(data["arguments"]),
            weights=data["weights"],
            class_names=tuple(data["class_names"]),
            encoder_stages=tuple(data["encoder_stages"]),
            patch_size=tuple(int(s) for s in data["patch_size"]),
            preprocessing=dict(data["preprocessing"]),
            weights_format=data.get("weights_format", "state_dict"),
            spacing=tuple(float(s) for s in data["spacing"]) if data.get("spacing") is not None else None,
            orientation=data.get("orientation", "RAS"),
            pretrained=data.get("pretrained"),
            provenance=dict(data.get("provenance") or {}),
            test_time_mirroring=(
                tuple(int(a) for a in data["test_time_mirroring"])
                if data.get("test_time_mirroring") is not None
                else None
            ),
            path=path,
        )
        _validate(card, where)
        return card


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_types(data: Mapping[str, Any], where: str) -> None:
    """Refuse a card whose fields have the wrong JSON types (the schema's ``type`` of every field)."""

    def need(ok: bool, field_name: str, what: str) -> None:
        if not ok:
            raise ModelError(
                f"{where}: field {field_name!r} must be {what}, got {data.get(field_name)!r}. "
                "See resources/model-card.schema.json."
            )

    for key in ("name", "architecture", "weights"):
        need(isinstance(data[key], str) and bool(data[key].strip()), key, "a non-empty string")
    need(isinstance(data["arguments"], dict), "arguments", "a JSON object of constructor arguments")
    need(isinstance(data["preprocessing"], dict), "preprocessing", 'a JSON object with a "profile"')
    for key in ("class_names", "encoder_stages"):
        need(
            isinstance(data[key], (list, tuple)) and all(isinstance(x, str) and x for x in data[key]),
            key,
            "a list of non-empty strings",
        )
    patch = data["patch_size"]
    whole = isinstance(patch, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in patch)
    need(whole and len(patch) == 3, "patch_size", "three integers")
    spacing = data.get("spacing")
    triple = isinstance(spacing, (list, tuple)) and len(spacing) == 3
    need(spacing is None or (triple and all(map(_is_number, spacing))), "spacing", "null or three numbers (mm)")
    need(isinstance(data.get("weights_format", "state_dict"), str), "weights_format", "a string")
    need(data.get("pretrained") is None or isinstance(data["pretrained"], str), "pretrained", "null or a path")
    need(data.get("provenance") is None or isinstance(data["provenance"], dict), "provenance", "a JSON object")
    mirror = data.get("test_time_mirroring")
    need(
        mirror is None
        or (
            isinstance(mirror, (list, tuple))
            and len(mirror) >= 1
            and len(set(mirror)) == len(mirror)
            and all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 2 for a in mirror)
        ),
        "test_time_mirroring",
        "null or a list of distinct spatial axes 0, 1, 2 (model space)",
    )


def _validate(card: ModelCard, where: str) -> None:
    """Refuse a card whose values (not types: :func:`_check_types`) cannot describe a usable model."""
    if card.weights_format not in WEIGHT_FORMATS:
        raise ModelError(f"{where}: weights_format {card.weights_format!r} unknown; use one of {WEIGHT_FORMATS}.")
    _validate_classes(card, where)
    _validate_grid(card, where)
    if not card.encoder_stages:
        raise ModelError(f"{where}: encoder_stages is empty; name the encoder layers (network.named_modules()).")
    _validate_preprocessing(card.preprocessing, where)
    asks_download = sorted(k for k, v in card.arguments.items() if "pretrained" in str(k).lower() and v)
    if asks_download:
        raise ModelError(
            f"{where}: arguments {asks_download} would make the network fetch weights from the "
            'internet; ASSFT loads weights only from the card\'s "weights" file. Remove them.'
        )


def _validate_classes(card: ModelCard, where: str) -> None:
    """Background plus at least one class, every name once, one name per output channel."""
    if len(card.class_names) < 2:
        raise ModelError(f"{where}: class_names needs background plus at least one class.")
    duplicates = sorted({name for name in card.class_names if card.class_names.count(name) > 1})
    if duplicates:
        raise ModelError(
            f"{where}: class_names has duplicates {duplicates}; every class needs its own name "
            "(segments are matched to classes by name)."
        )
    out_channels = card.arguments.get("out_channels")
    if out_channels is not None and out_channels != card.num_classes:
        raise ModelError(
            f"{where}: the network has out_channels = {out_channels!r} but class_names lists "
            f"{card.num_classes} classes; give one class name per output channel (background first)."
        )


def _validate_grid(card: ModelCard, where: str) -> None:
    """Patch size, spacing and orientation within their bounds."""
    if len(card.patch_size) != 3 or min(card.patch_size) < MIN_PATCH_EDGE or max(card.patch_size) > MAX_PATCH_EDGE:
        raise ModelError(
            f"{where}: patch_size must be three integers from {MIN_PATCH_EDGE} to {MAX_PATCH_EDGE} "
            f"voxels, got {list(card.patch_size)}."
        )
    if card.spacing is not None and not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in card.spacing):
        raise ModelError(
            f"{where}: spacing must be three voxel sizes from {MIN_SPACING_MM} to {MAX_SPACING_MM} mm, "
            f"got {list(card.spacing)}."
        )
    if card.orientation not in (None, "RAS"):
        raise ModelError(f'{where}: orientation must be "RAS" or null, got {card.orientation!r}.')


def _validate_preprocessing(preprocessing: Mapping[str, Any], where: str) -> None:
    """A known profile; ``ct_window`` with numbers ``a_min < a_max``."""
    profile = preprocessing.get("profile")
    if profile not in PREPROCESSING_PROFILES:
        raise ModelError(f"{where}: preprocessing profile {profile!r} unknown; use one of {PREPROCESSING_PROFILES}.")
    if profile == "ct_window":
        a_min, a_max = preprocessing.get("a_min"), preprocessing.get("a_max")
        if not (_is_number(a_min) and _is_number(a_max)) or not a_min < a_max:
            raise ModelError(
                f"{where}: the ct_window profile needs numbers a_min < a_max (HU), got a_min={a_min!r}, "
                f"a_max={a_max!r}."
            )
    if profile == "nnunet":  # nnU-Net's normalisation schemes (ASSFTActive.sources.nnunet)
        check_nnunet_preprocessing(preprocessing, where)


#: Source-model card names whose anatomy is known; a card may also say ``provenance.anatomy``.
CARD_ANATOMY = {"hippocampus-unet": "hippocampus", "acdc-source-unet": "acdc"}


def card_anatomy(card: ModelCard, known: Collection[str]) -> Optional[str]:
    """The anatomy a card's model segments, when it is one of ``known`` (the anatomies a table has values for: label
    check limits, a recipe): the card's own ``provenance.anatomy`` or its name in :data:`CARD_ANATOMY`, else its
    pre-trained card's (an adapted version names the model it came from there), else ``None``."""
    for candidate in (card, _pretrained_or_none(card)):
        if candidate is None:
            continue
        anatomy = (candidate.provenance or {}).get("anatomy") or CARD_ANATOMY.get(candidate.name)
        if anatomy in known:
            return anatomy
    return None


def _pretrained_or_none(card: ModelCard) -> Optional[ModelCard]:
    try:
        return card.pretrained_card() if card.pretrained else None
    except Exception:  # an unreadable pre-trained card is reported where the model is loaded, not here
        return None


def load_card(path: PathLike) -> ModelCard:
    """Read and validate a model card JSON file, or the weights file of a model source (an nnU-Net fold's
    checkpoint, a MONAI bundle's ``models/model.pt``: :mod:`ASSFTActive.sources` reads the card from its folder)."""
    path = Path(path).resolve()
    if path.suffix in (".pth", ".pt") and path.is_file():
        source_fields = card_for_weights(path)
        if source_fields is not None:
            return ModelCard.from_dict(source_fields, path=path)
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
