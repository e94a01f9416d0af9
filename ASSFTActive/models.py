"""Model cards, the architecture registry and safe weight loading.

A model card is a JSON file beside its weights that says everything needed to rebuild and run a network:
architecture and constructor arguments, weights file and layout, preprocessing, spacing, patch size, class names,
and which layers are the encoder stages whose pooled outputs feed DKD. ``resources/model-card.schema.json`` is the
JSON Schema of a card.

Weights are only ever read with ``safetensors`` or ``torch.load(..., weights_only=True)``: a user's checkpoint is
never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .errors import ModelError
from .io import PathLike, atomic_write_text

RESOURCES = Path(__file__).resolve().parent / "resources"
EMBEDDED_DEFAULT_CARD = RESOURCES / "models" / "hippocampus-unet" / "card.json"
CARD_SCHEMA_VERSION = 1

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

    def pretrained_card(self) -> "ModelCard":
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
    def from_dict(cls, data: Mapping[str, Any], path: Optional[Path] = None) -> "ModelCard":
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
    return atomic_write_text(path, json.dumps(card.to_dict(), indent=2) + "\n")


def resolve_card(spec: Optional[PathLike]) -> ModelCard:
    """A card from a CLI/job argument: ``None`` or ``"default"`` is the embedded default, else a card path."""
    if spec is None or str(spec) == "default":
        return load_card(EMBEDDED_DEFAULT_CARD)
    return load_card(spec)


# --------------------------------------------------------------------------------------------- architectures


def _monai_network(name: str) -> Callable[..., nn.Module]:
    from monai.networks import nets

    builder = getattr(nets, name, None)
    if builder is None or not callable(builder):
        raise ModelError(f"architecture monai:{name} is not a network of monai.networks.nets.")
    return builder


ARCHITECTURES: Dict[str, str] = {
    "UNet": "UNet",
    "BasicUNet": "BasicUNet",
    "SwinUNETR": "SwinUNETR",
}


def build_network(card: ModelCard) -> nn.Module:
    """Instantiate the card's architecture with its arguments (random weights)."""
    arch = card.architecture
    if arch.startswith("monai:"):
        builder = _monai_network(arch.split(":", 1)[1])
    elif arch in ARCHITECTURES:
        builder = _monai_network(ARCHITECTURES[arch])
    else:
        raise ModelError(
            f"{card.path or card.name}: architecture {arch!r} unknown. Use one of {sorted(ARCHITECTURES)} or "
            "'monai:<NetworkName>'."
        )
    try:
        network = builder(**dict(card.arguments))
    except TypeError as exc:
        raise ModelError(f"{card.path or card.name}: arguments do not fit {arch}: {exc}") from exc
    names = dict(network.named_modules())
    absent = [s for s in card.encoder_stages if s not in names]
    if absent:
        raise ModelError(f"{card.path or card.name}: encoder_stages {absent} are not modules of {arch}.")
    return network


# --------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint did: tensors copied, keys the network lacked, keys the checkpoint lacked."""

    loaded: int
    missing: Tuple[str, ...]
    unexpected: Tuple[str, ...]

    def summary(self) -> str:
        return f"{self.loaded} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected"


_CHECKPOINT_WRAPPERS = ("state_dict", "model_state_dict", "network_weights", "model", "net")


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``weights_only`` torch checkpoint, unwrapping common containers.

    Raises:
        ModelError: missing file, a pickled object that ``weights_only`` refuses, or an unknown layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found. Check the card's \"weights\" field.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ModelError(f"{path}: not a valid safetensors file ({exc}).") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}). ASSFT never unpickles "
            "model objects; save a state dict (model.state_dict()) or a safetensors file instead."
        ) from exc
    for _ in range(2):
        if isinstance(obj, dict) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _CHECKPOINT_WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_tensor_dict(obj):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ModelError(
            f"{path}: unknown checkpoint layout (top level: {keys}). Expected a state dict of tensors, optionally "
            f"under one of {list(_CHECKPOINT_WRAPPERS)}."
        )
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def swinvit_ssl_to_swinunetr(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map the published ``model_swinvit.pt`` encoder keys onto MONAI ``SwinUNETR`` keys.

    ``module.layers1.0.blocks.0.mlp.fc1.weight`` -> ``swinViT.layers1.0.blocks.0.mlp.linear1.weight``. The MLP
    renaming matters: MONAI names the MLP layers ``linear1``/``linear2``, so a plain prefix swap followed by
    ``load_state_dict(strict=False)`` silently drops all MLP weights (``shared/research/model-formats.md`` §B1).
    Keys of the SSL heads (rotation, contrastive, reconstruction) are kept unmapped and reported as unexpected.
    """
    mapped: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(("patch_embed.", "layers")):
            name = "swinViT." + name.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
        mapped[name] = value
    return mapped


def load_weights(network: nn.Module, card: ModelCard, state: Optional[Mapping[str, torch.Tensor]] = None) -> LoadReport:
    """Copy the card's weights into ``network`` and check that the whole encoder was loaded.

    Missing decoder or head tensors are allowed (e.g. a self-supervised encoder with a new segmentation head) and
    reported; a missing or mis-shaped encoder tensor is an error, because DKD and fine-tuning would then start from
    random features without anyone noticing.

    Raises:
        ModelError: unknown layout, shape mismatch, or an encoder that did not load.
    """
    where = card.path or card.name
    if state is None:
        state = read_state_dict(card.weights_path)
    if card.weights_format == "swinvit_ssl":
        state = swinvit_ssl_to_swinunetr(state)
        encoder_prefixes: Tuple[str, ...] = ("swinViT.",)
    else:
        state = _strip_prefix(state, "module.")
        encoder_prefixes = tuple(s + "." for s in _encoder_modules(card))
    own = network.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if mismatched:
        k = mismatched[0]
        raise ModelError(
            f"{where}: checkpoint does not match the card: {k} has shape {tuple(state[k].shape)} but the network "
            f"expects {tuple(own[k].shape)} ({len(mismatched)} mismatched tensors). Check the card's arguments."
        )
    loadable = {k: v for k, v in state.items() if k in own}
    missing = tuple(sorted(k for k in own if k not in loadable))
    unexpected = tuple(sorted(k for k in state if k not in own))
    encoder_keys = [k for k in own if k.startswith(encoder_prefixes)]
    encoder_missing = [k for k in encoder_keys if k not in loadable]
    if not encoder_keys or encoder_missing:
        example = encoder_missing[:3] if encoder_missing else list(state)[:3]
        raise ModelError(
            f"{where}: the encoder did not load ({len(encoder_missing) or 'all'} encoder tensors missing, e.g. "
            f"{example}; {len(unexpected)} checkpoint keys unused). The checkpoint layout does not match "
            f"weights_format {card.weights_format!r}."
        )
    network.load_state_dict(loadable, strict=False)
    return LoadReport(loaded=len(loadable), missing=missing, unexpected=unexpected)


def _encoder_modules(card: ModelCard) -> List[str]:
    """Module prefixes that make up the encoder: the declared stages (their parameters must all load)."""
    return list(card.encoder_stages)


@dataclass
class LoadedModel:
    """A network with its card and what loading its weights did."""

    card: ModelCard
    network: nn.Module
    report: LoadReport


def load_model(card: ModelCard, device: Optional[torch.device] = None) -> LoadedModel:
    """Build the card's network, load its weights safely and put it in eval mode on ``device`` (CPU default)."""
    network = build_network(card)
    report = load_weights(network, card)
    network.to(device or torch.device("cpu")).eval()
    return LoadedModel(card=card, network=network, report=report)


def save_weights(network: nn.Module, path: PathLike) -> Path:
    """Write the network's state dict as safetensors, atomically."""
    from safetensors.torch import save

    from .io import atomic_write_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    return atomic_write_bytes(path, save(state))


def embedded_cards() -> List[ModelCard]:
    """The cards shipped with the package."""
    return [load_card(p) for p in sorted((RESOURCES / "models").glob("*/card.json"))]


def derive_card(base: ModelCard, *, name: str, weights: str, pretrained: str,
                provenance: Mapping[str, Any]) -> ModelCard:
    """A card for new weights of the same network (e.g. an adapted model in a store)."""
    return replace(base, name=name, weights=weights, weights_format="state_dict", pretrained=pretrained,
                   provenance=dict(provenance), path=None)
