"""MONAI bundles as a model source.

A bundle (MONAI model zoo, MONAI Label, Auto3DSeg) is a folder::

    configs/inference.json    network_def, preprocessing (a Compose of transforms), inferer (roi_size), ...
    configs/metadata.json     network_data_format.outputs.pred.channel_def: the class names
    models/model.pt           the weights: a state dict (or {"model": state dict}, CheckpointLoader's layout)

This module turns it into the fields of a model card (:func:`card_for_weights`) without running anything from
the bundle:

- ``network_def`` must name one of the MONAI networks ASSFT builds
  (:data:`ASSFTActive.models.ALLOWED_MONAI_NETWORKS`), with literal arguments or ``@id`` references to literals;
- ``preprocessing`` is mapped transform by transform onto the card's fields (``Orientationd`` -> ``orientation``,
  ``Spacingd`` -> ``spacing``, ``ScaleIntensityRanged`` -> the ``ct_window`` profile, ``NormalizeIntensityd`` with
  ``nonzero`` -> ``zscore_nonzero`` with ``keep_zeros``; loading and type transforms are ASSFT's own); a transform
  the card cannot express is refused, named;
- ``inferer.roi_size`` is the patch size.

Why not ``monai.bundle.ConfigParser.get_parsed_content``: it instantiates every ``_target_`` and evaluates every
``"$..."`` string, i.e. it runs Python code written in the bundle (``"$import os"``), and a model is data from
anywhere. The card is also read where torch must not be imported (the Slicer GUI). The subset read here (literals,
``@id`` references, ``::`` or ``#`` as id separators) is what ``ConfigParser`` resolves for the same items; a test
compares the network this module describes with the one ``ConfigParser`` instantiates from the same file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

from ..errors import ModelError
from .jsonfile import read_json_object

INFERENCE_FILE = Path("configs") / "inference.json"
METADATA_FILE = Path("configs") / "metadata.json"
WEIGHTS_FILE = Path("models") / "model.pt"
#: Transforms that only load, add a channel or change the type: ASSFT's reader does their job.
PASS_THROUGH = (
    "LoadImaged",
    "LoadImage",
    "EnsureChannelFirstd",
    "EnsureChannelFirst",
    "EnsureTyped",
    "EnsureType",
    "ToTensord",
    "ToTensor",
    "AddChanneld",
    "CastToTyped",
    "Identityd",
)
#: Encoder stages of the MONAI networks a bundle may use, from the constructor arguments.
_MONAI_PREFIX = re.compile(r"^(monai\.networks\.nets\.)?([A-Za-z_][A-Za-z0-9_]*)$")


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` is a bundle (``configs/inference.json`` and ``models/model.pt``)."""
    return (folder / INFERENCE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def weights_in(folder: Path) -> Path:
    return folder / WEIGHTS_FILE


def check_incomplete(folder: Path) -> None:
    """Refuse, saying what is missing, a folder that looks like a bundle (a ``configs`` folder with an inference
    config or ``metadata.json``) but is not one ASSFT reads.

    Raises:
        ModelError: a YAML config, or no ``models/model.pt`` (e.g. only TorchScript ``model.ts``: that is code).
    """
    configs = folder / "configs"
    if not configs.is_dir() or is_bundle(folder):
        return
    if not (folder / INFERENCE_FILE).is_file():
        if any((configs / name).is_file() for name in ("inference.yaml", "inference.yml")):
            raise ModelError(
                f"{folder}: the bundle's inference config is YAML; ASSFT reads configs/inference.json. "
                "Save the same config as JSON beside it."
            )
        if (configs / METADATA_FILE.name).is_file():
            raise ModelError(f"{folder}: a MONAI bundle without {INFERENCE_FILE}.")
        return
    raise ModelError(
        f"{folder}: a MONAI bundle without {WEIGHTS_FILE} (the state dict); a TorchScript model.ts is "
        "code and is not loaded. Put the trained weights there (torch.save(network.state_dict(), ...))."
    )


def is_weights(path: Path) -> bool:
    """Whether ``path`` is ``<bundle>/models/model.pt``."""
    return path.name == WEIGHTS_FILE.name and path.parent.name == "models" and is_bundle(path.parent.parent)


class _Config:
    """Items of a bundle config by id (``a::b::0`` or ``a#b#0``), with ``@id`` references to literals resolved."""

    def __init__(self, data: Mapping[str, Any], where: Path):
        self.data = data
        self.where = where

    def get(self, ident: str) -> Any:
        node: Any = self.data
        for part in re.split(r"::|#", ident):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ModelError(f"{self.where}: no item {ident!r}.")
        return node

    def literal(self, value: Any, ident: str, depth: int = 0) -> Any:
        """``value`` with ``@id`` references resolved; ``$`` expressions and nested ``_target_`` refused."""
        if depth > 16:
            raise ModelError(f"{self.where}: references around {ident!r} form a cycle.")
        if isinstance(value, str) and value.startswith("@"):
            return self.literal(self.get(value[1:]), value[1:], depth + 1)
        if isinstance(value, str) and value.startswith(("$", "%")):
            raise ModelError(
                f"{self.where}: {ident} is an expression ({value!r}); ASSFT does not run code from a "
                "bundle. Write the value itself into the config."
            )
        if isinstance(value, dict):
            if "_target_" in value:
                raise ModelError(
                    f"{self.where}: {ident} builds an object ({value['_target_']}); only literal values are read."
                )
            return {k: self.literal(v, f"{ident}::{k}", depth) for k, v in value.items()}
        if isinstance(value, list):
            return [self.literal(v, f"{ident}::{i}", depth) for i, v in enumerate(value)]
        return value


def _target(item: Mapping[str, Any]) -> str:
    return str(item.get("_target_", "")).rsplit(".", 1)[-1]


def network(config: _Config) -> Tuple[str, Dict[str, Any]]:
    """``(MONAI network class name, constructor arguments)`` of ``network_def``."""
    item = config.get("network_def")
    if isinstance(item, str) and item.startswith("@"):
        item = config.get(item[1:])
    if not isinstance(item, dict) or "_target_" not in item:
        raise ModelError(f'{config.where}: "network_def" must be an object with a "_target_".')
    match = _MONAI_PREFIX.match(str(item["_target_"]))
    if match is None:
        raise ModelError(f"{config.where}: network_def _target_ {item['_target_']!r} is not a MONAI network name.")
    unsupported = sorted(k for k in item if k.startswith("_") and k not in ("_target_", "_desc_"))
    if unsupported:
        raise ModelError(f'{config.where}: network_def uses {unsupported}; only "_target_" is read.')
    arguments = {k: config.literal(v, f"network_def::{k}") for k, v in item.items() if not k.startswith("_")}
    return match.group(2), arguments


def _transforms(config: _Config) -> List[Mapping[str, Any]]:
    try:
        item = config.get("preprocessing")
    except ModelError:
        return []
    if isinstance(item, dict) and _target(item) == "Compose":
        item = item.get("transforms", [])
    if not isinstance(item, list):
        raise ModelError(f'{config.where}: "preprocessing" must be a Compose or a list of transforms.')
    return [t for t in item if isinstance(t, dict)]


def preprocessing(config: _Config) -> Dict[str, Any]:
    """``{"preprocessing", "spacing", "orientation"}`` of the card from the bundle's preprocessing transforms."""
    profile: Dict[str, Any] = {}
    spacing = None
    orientation = None
    refused = []
    for index, transform in enumerate(_transforms(config)):
        name = _target(transform)
        ident = f"preprocessing::transforms::{index}"
        args = {k: config.literal(v, f"{ident}::{k}") for k, v in transform.items() if not k.startswith("_")}
        if name in PASS_THROUGH:
            continue
        if name == "Orientationd" and str(args.get("axcodes", "")).upper() == "RAS":
            orientation = "RAS"
        elif name == "Spacingd" and isinstance(args.get("pixdim"), list) and len(args["pixdim"]) == 3:
            spacing = tuple(float(s) for s in args["pixdim"])
        elif (
            name == "ScaleIntensityRanged"
            and float(args.get("b_min", 0)) == 0.0
            and float(args.get("b_max", 1)) == 1.0
            and args.get("clip", False) is True
            and not profile
        ):
            profile = {"profile": "ct_window", "a_min": float(args["a_min"]), "a_max": float(args["a_max"])}
        elif (
            name == "NormalizeIntensityd"
            and args.get("nonzero", False) is True
            and not profile
            and set(args) <= {"keys", "nonzero", "channel_wise", "dtype"}
        ):
            profile = {"profile": "zscore_nonzero", "keep_zeros": True}  # MONAI leaves the zero voxels at 0
        else:
            refused.append(f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items() if k != 'keys')})")
    if refused:
        raise ModelError(
            f"{config.where}: preprocessing transform(s) {refused} cannot be expressed by a model card "
            "(orientation RAS, spacing, ScaleIntensityRanged to [0, 1] with clip, NormalizeIntensityd "
            "nonzero). Write a model card for this network instead (see `assft check-card`)."
        )
    if not profile:
        raise ModelError(
            f"{config.where}: no intensity transform (ScaleIntensityRanged or NormalizeIntensityd) in "
            '"preprocessing"; ASSFT needs to know how intensities were normalised.'
        )
    return {"preprocessing": profile, "spacing": spacing, "orientation": orientation}


def encoder_stages(name: str, arguments: Mapping[str, Any], where: Path) -> Tuple[str, ...]:
    """The encoder stage modules of MONAI network ``name`` built with ``arguments`` (shallow to deep)."""
    if name == "UNet":
        depth = len(arguments.get("channels", ()))
        if depth < 2:
            raise ModelError(f'{where}: UNet needs at least two "channels".')
        return tuple(
            ["model.0"]
            + ["model" + ".1.submodule" * i + ".0" for i in range(1, depth - 1)]
            + ["model" + ".1.submodule" * (depth - 1)]
        )
    if name == "BasicUNet":
        return ("conv_0", "down_1", "down_2", "down_3", "down_4")
    if name == "SegResNet":
        return tuple(f"down_layers.{i}" for i in range(len(arguments.get("blocks_down", (1, 2, 2, 4)))))
    if name == "SwinUNETR":
        return ("swinViT.layers1", "swinViT.layers2", "swinViT.layers3", "swinViT.layers4")
    raise ModelError(
        f"{where}: network {name} in a bundle: ASSFT knows the encoder stages of UNet, BasicUNet, "
        "SegResNet and SwinUNETR only; write a model card naming the encoder_stages."
    )


def class_names(folder: Path, out_channels: Any) -> Tuple[str, ...]:
    """Class names from ``metadata.json`` ``network_data_format.outputs.pred.channel_def`` (index -> name)."""
    path = folder / METADATA_FILE
    metadata = read_json_object(path) if path.is_file() else {}
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
    if not isinstance(channel_def, dict) or not channel_def:
        raise ModelError(
            f"{path}: no network_data_format.outputs.pred.channel_def; the class names of the bundle "
            'are unknown. Add {"0": "background", "1": "..."} there.'
        )
    try:
        ordered = sorted(((int(k), str(v)) for k, v in channel_def.items()))
    except ValueError as exc:
        raise ModelError(f"{path}: channel_def keys must be channel indices, got {list(channel_def)}.") from exc
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise ModelError(f"{path}: channel_def must number the channels 0, 1, ..., got {list(channel_def)}.")
    if out_channels is not None and out_channels != len(ordered):
        raise ModelError(
            f"{path}: channel_def names {len(ordered)} channels but network_def has out_channels = {out_channels}."
        )
    return tuple(name for _, name in ordered)


def card_for_weights(weights: Path) -> Dict[str, Any]:
    """The card fields (the card file's JSON) of the bundle whose ``models/model.pt`` is ``weights``
    (:func:`ASSFTActive.cards.load_card` validates them; the card's path is that file).

    Raises:
        ModelError: a file is missing or unreadable, or something the card cannot express (named in the message).
    """
    weights = Path(weights).resolve()
    folder = weights.parent.parent
    where = folder / INFERENCE_FILE
    config = _Config(read_json_object(where), where)
    name, arguments = network(config)
    mapped = preprocessing(config)
    try:
        roi = config.literal(config.get("inferer::roi_size"), "inferer::roi_size")
    except ModelError as exc:
        raise ModelError(f"{where}: no inferer::roi_size (the sliding-window patch size).") from exc
    if not (isinstance(roi, list) and len(roi) == 3 and all(isinstance(r, int) for r in roi)):
        raise ModelError(f"{where}: inferer::roi_size must be three integers, got {roi!r}.")
    metadata = read_json_object(folder / METADATA_FILE) if (folder / METADATA_FILE).is_file() else {}
    return dict(
        name=re.sub(r"[^A-Za-z0-9._-]", "_", folder.name).lstrip("._-")[:100] or "bundle",
        architecture=f"monai:{name}",
        arguments=arguments,
        weights=weights.name,
        class_names=class_names(folder, arguments.get("out_channels")),
        encoder_stages=encoder_stages(name, arguments, where),
        patch_size=list(roi),
        preprocessing=mapped["preprocessing"],
        spacing=mapped["spacing"],
        orientation=mapped["orientation"],
        provenance={
            "source": "monai_bundle",
            "folder": str(folder),
            "version": metadata.get("version"),
            "monai_version": metadata.get("monai_version"),
        },
    )
