"""Model cards, the architecture registry and safe weight loading.

The card itself (:class:`ModelCard`, :func:`load_card`, ...) lives in the torch-free
:mod:`ASSFTActive.cards` and is re-exported here; this module adds what needs torch: building the card's network
and loading its weights.

Weights are only ever read with ``safetensors`` or ``torch.load(..., weights_only=True)``: a user's checkpoint is
never unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .cards import (  # noqa: F401  (re-exported: the card API has always been importable from here)
    CARD_SCHEMA_VERSION,
    DEFAULT_MODEL,
    EMBEDDED_DEFAULT_CARD,
    PREPROCESSING_PROFILES,
    RESOURCES,
    WEIGHT_FORMATS,
    ModelCard,
    load_card,
    save_card,
)
from .errors import ModelError
from .io import PathLike

# --------------------------------------------------------------------------------------------- architectures


#: The MONAI networks a card may name (``monai:<Name>``): 3D segmentation networks whose constructors were checked to
#: have no argument that fetches weights (no ``pretrained``, ``weights``, ``url`` or ``download``; a test re-checks
#: the installed MONAI). Others are refused even when they are network classes: ``EfficientNetBN``,
#: ``ResNetFeatures`` and ``MILModel`` download from the internet by default (into ``$HOME/.cache``), whatever the card
#: says.
ALLOWED_MONAI_NETWORKS = (
    "AttentionUnet",
    "BasicUNet",
    "BasicUNetPlusPlus",
    "DynUNet",
    "HighResNet",
    "MedNeXt",
    "SegResNet",
    "SegResNetDS",
    "SegResNetDS2",
    "SwinUNETR",
    "UNETR",
    "UNet",
    "VNet",
)
#: A network with more parameters than this (2 GB of float32 weights) is refused before it is allocated: a card with
#: channels in the tens of thousands is a mistake, not a model.
MAX_PARAMETERS = 500_000_000


def _monai_network(name: str) -> Callable[..., nn.Module]:
    """The network class ``name`` of ``monai.networks.nets``: only ``torch.nn.Module`` subclasses defined in MONAI,
    and of those only :data:`ALLOWED_MONAI_NETWORKS`.

    A card is data from anywhere; resolving any attribute of the namespace would let it call functions (e.g.
    ``resnet10(pretrained=True)``, which downloads weights) or reach objects like ``__class__``, and some network
    classes download weights from their constructor by default.
    """
    import inspect

    from monai.networks import nets

    builder = getattr(nets, name, None) if name.isidentifier() and not name.startswith("_") else None
    if (
        builder is None
        or not inspect.isclass(builder)
        or not issubclass(builder, nn.Module)
        or not str(getattr(builder, "__module__", "")).startswith("monai.networks")
    ):
        raise ModelError(
            f"architecture monai:{name} is not a network class (torch.nn.Module) of "
            "monai.networks.nets; name a network class such as monai:BasicUNet or monai:SwinUNETR."
        )
    if name not in ALLOWED_MONAI_NETWORKS:
        raise ModelError(
            f"architecture monai:{name} is not one of the networks ASSFT builds: its constructor is not "
            "checked to stay off the network (some MONAI networks download weights by default). Use one "
            f"of {', '.join('monai:' + n for n in ALLOWED_MONAI_NETWORKS)}."
        )
    return builder


def _parameters_on_meta(builder: Callable[..., nn.Module], arguments: Mapping[str, Any]) -> Optional[int]:
    """Parameters of the network built on torch's ``meta`` device (shapes only, nothing allocated); ``None`` when it
    cannot be built there (the real build then reports why)."""
    try:
        with torch.device("meta"):
            network = builder(**dict(arguments))
    except Exception:
        return None
    return sum(p.numel() for p in network.parameters())


def _default_out_channels(builder: Callable[..., nn.Module]) -> Optional[int]:
    """The constructor's default ``out_channels``, when it has one."""
    import inspect

    try:
        parameter = inspect.signature(builder).parameters.get("out_channels")
    except (TypeError, ValueError):
        return None
    default = parameter.default if parameter is not None else None
    return default if isinstance(default, int) and not isinstance(default, bool) else None


ARCHITECTURES: Dict[str, str] = {
    "UNet": "UNet",
    "BasicUNet": "BasicUNet",
    "SwinUNETR": "SwinUNETR",
}


#: Seed of the random initialisation of an encoder-only card's head (decoder and output layer): the network is built
#: under ``torch.manual_seed(HEAD_INIT_SEED)`` in a forked RNG (the caller's random state is left as it was), with
#: the constructor's own initialisers (MONAI's defaults: PyTorch's Kaiming-uniform for convolutions, ones and
#: zeros for norms), so every process that builds the same card starts Adapt from the same head.
HEAD_INIT_SEED = 0


def build_network(card: ModelCard) -> nn.Module:
    """Instantiate the card's architecture with its arguments (random weights; for an encoder-only card the
    weights are drawn with :data:`HEAD_INIT_SEED`, so its head is the same on every build)."""
    if not card.has_trained_head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(HEAD_INIT_SEED)
            return _build_network(card)
    return _build_network(card)


def _build_network(card: ModelCard) -> nn.Module:
    arch = card.architecture
    if arch.startswith("nnunet:"):  # an nnU-Net v2 result folder (ASSFTActive.sources.nnunet)
        from functools import partial

        from .sources.nnunet import build_network as build_nnunet

        builder = partial(build_nnunet, arch)
    elif arch.startswith("monai:"):
        builder = _monai_network(arch.split(":", 1)[1])
    elif arch in ARCHITECTURES:
        builder = _monai_network(ARCHITECTURES[arch])
    else:
        raise ModelError(
            f"{card.path or card.name}: architecture {arch!r} unknown. Use one of {sorted(ARCHITECTURES)} or "
            "'monai:<NetworkName>'."
        )
    out_channels = card.arguments.get("out_channels", _default_out_channels(builder))
    if out_channels is not None and out_channels != card.num_classes:
        raise ModelError(
            f"{card.path or card.name}: {arch} has out_channels = {out_channels} but class_names lists "
            f"{card.num_classes} classes; give one class name per output channel (background first)."
        )
    where = card.path or card.name
    count = _parameters_on_meta(builder, card.arguments)
    if count is not None and count > MAX_PARAMETERS:
        raise ModelError(
            f"{where}: {arch} with these arguments has {count:,} parameters (more than "
            f'{MAX_PARAMETERS:,}); check the channel counts of the card\'s "arguments".'
        )
    try:
        network = builder(**dict(card.arguments))
    except ImportError as exc:  # MONAI's optional imports (OptionalImportError is an ImportError)
        raise ModelError(
            f"{where}: {arch} needs an optional package that is not installed ({exc}); install it or "
            "choose another architecture."
        ) from exc
    except (
        TypeError,
        ValueError,
        AssertionError,
        KeyError,
        IndexError,
        NotImplementedError,
        ZeroDivisionError,
        RuntimeError,
        MemoryError,
    ) as exc:
        raise ModelError(f"{where}: arguments do not fit {arch}: {type(exc).__name__}: {exc}") from exc
    names = dict(network.named_modules())
    absent = [s for s in card.encoder_stages if s not in names]
    if absent:
        raise ModelError(f"{card.path or card.name}: encoder_stages {absent} are not modules of {arch}.")
    return network


# --------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint did: tensors copied, keys the network lacked, keys the checkpoint lacked.

    ``head_initialised``: the card holds an encoder only (``ModelCard.has_trained_head`` is false), so the
    ``missing`` keys are the segmentation head's, initialised as :func:`build_network` does with
    :data:`HEAD_INIT_SEED`, not loaded.
    """

    loaded: int
    missing: Tuple[str, ...]
    unexpected: Tuple[str, ...]
    head_initialised: bool = False

    def summary(self) -> str:
        text = f"{self.loaded} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        if self.head_initialised:
            text += (
                f"; encoder-only weights: the head ({len(self.missing)} tensors) is initialised with seed "
                f"{HEAD_INIT_SEED}, not trained, until the first Adapt"
            )
        return text


_CHECKPOINT_WRAPPERS = ("state_dict", "model_state_dict", "network_weights", "model", "net")


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``weights_only`` torch checkpoint, unwrapping common containers.

    Raises:
        ModelError: missing file, a pickled object that ``weights_only`` refuses, or an unknown layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f'{path}: weights file not found. Check the card\'s "weights" field.')
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


#: Environment variable that, set to ``1``, lets a card read weights outside its own folder (see
#: :func:`card_weights_file`).
ALLOW_EXTERNAL_WEIGHTS_ENV = "ASSFT_ALLOW_EXTERNAL_WEIGHTS"


def card_weights_file(card: ModelCard, allow_external: Optional[bool] = None) -> Path:
    """The card's weights file, which must lie in the card's folder (or below it), links resolved.

    A card is often a file someone else wrote; without this rule ``"weights": "/etc/shadow"`` or ``"../../x.pt"``
    would make ASSFT open any file the user can read. A user who keeps weights elsewhere on purpose sets
    ``ASSFT_ALLOW_EXTERNAL_WEIGHTS=1`` (the explicit flag). Cards built in memory (no ``path``) are not checked.

    Raises:
        ModelError: the weights resolve outside the card's folder.
    """
    path = card.weights_path
    if card.path is None:
        return path
    if allow_external is None:
        allow_external = os.environ.get(ALLOW_EXTERNAL_WEIGHTS_ENV, "") == "1"
    folder = Path(card.path).resolve().parent
    if not allow_external and folder != path and folder not in path.parents:
        raise ModelError(
            f"{card.path}: weights {card.weights!r} resolve to {path}, outside the card's folder {folder}. Put the "
            f"weights beside the card, or set {ALLOW_EXTERNAL_WEIGHTS_ENV}=1 if you trust this card."
        )
    return path


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
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
        name = key[len("module.") :] if key.startswith("module.") else key
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
    state, encoder_prefixes = _in_network_layout(card, state)
    own = network.state_dict()
    _check_shapes(where, state, own)
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
    # an encoder-only card: the check above leaves only the head's keys missing (none under the encoder's prefixes)
    network.load_state_dict(loadable, strict=False)
    return LoadReport(
        loaded=len(loadable), missing=missing, unexpected=unexpected, head_initialised=not card.has_trained_head
    )


def _in_network_layout(
    card: ModelCard, state: Optional[Mapping[str, torch.Tensor]]
) -> Tuple[Dict[str, torch.Tensor], Tuple[str, ...]]:
    """The card's weights (read when ``state`` is ``None``) under the network's key names, and the key prefixes of
    its encoder."""
    if state is None and card.weights_format == "nnunet_checkpoint":  # ASSFTActive.sources.nnunet
        from .sources.nnunet import read_state_dict as read_nnunet_state_dict

        state = read_nnunet_state_dict(card_weights_file(card))
    if state is None:
        state = read_state_dict(card_weights_file(card))
    if card.weights_format == "swinvit_ssl":
        return swinvit_ssl_to_swinunetr(state), ("swinViT.",)
    return _strip_prefix(state, "module."), tuple(s + "." for s in _encoder_modules(card))


def _check_shapes(where: Any, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    """Every checkpoint tensor that the network has must have the network's shape."""
    mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if mismatched:
        k = mismatched[0]
        raise ModelError(
            f"{where}: checkpoint does not match the card: {k} has shape {tuple(state[k].shape)} but the network "
            f"expects {tuple(own[k].shape)} ({len(mismatched)} mismatched tensors). Check the card's arguments."
        )


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
    """Write the network's state dict as safetensors, atomically.

    A tensor reachable under several names (nnU-Net's networks register each conv also as ``all_modules.0`` and the
    encoder again as ``decoder.encoder``) is written once per name: safetensors refuses shared memory, and every
    name must load back (the encoder check of :func:`load_weights` looks for each one).
    """
    from safetensors.torch import save

    from .io import atomic_write_bytes

    state, seen = {}, set()
    for key, value in network.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        if tensor.numel() and tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        state[key] = tensor
    return atomic_write_bytes(path, save(state))


def embedded_cards() -> List[ModelCard]:
    """The cards shipped with the package."""
    return [load_card(p) for p in sorted((RESOURCES / "models").glob("*/card.json"))]


def derive_card(
    base: ModelCard, *, name: str, weights: str, pretrained: str, provenance: Mapping[str, Any]
) -> ModelCard:
    """A card for new weights of the same network (e.g. an adapted model in a store)."""
    return replace(
        base,
        name=name,
        weights=weights,
        weights_format="state_dict",
        pretrained=pretrained,
        provenance=dict(provenance),
        path=None,
    )
