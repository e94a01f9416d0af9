"""nnU-Net v2 result folders as a model source.

A trained nnU-Net v2 model is a folder ``<Dataset>/<Trainer>__<Plans>__<configuration>`` holding ``plans.json``,
``dataset.json`` and ``fold_<k>/checkpoint_final.pth`` (or ``fold_all``). This module turns one fold of such a folder
into the fields of a model card (:func:`card_for_checkpoint`) without touching the folder:

- the network: ``plans["configurations"][c]["architecture"]`` (nnU-Net >= 2.2: ``network_class_name`` and
  ``arch_kwargs``) or the older ``UNet_class_name`` / ``conv_kernel_sizes`` / ``pool_op_kernel_sizes`` keys, built
  with the ``dynamic-network-architectures`` package nnU-Net itself uses (:func:`build_network`). The operators the
  plans name by dotted path (``torch.nn.modules.conv.Conv3d``) are looked up in an allow-list, never imported by name;
- the axis order: nnU-Net reads images with SimpleITK (array axes ``[k, j, i]``) and applies ``transpose_forward``;
  ASSFT's arrays are ``[i, j, k]``. The network is wrapped so that it receives its input in nnU-Net's axis order
  (``axes`` in the card's arguments), and the card's ``spacing`` and ``patch_size`` are the plans' values in ASSFT's
  axis order. No reorientation (nnU-Net never reorients either);
- the intensity normalisation: the plans' ``normalization_schemes`` and ``use_mask_for_norm`` and, for
  ``CTNormalization``, ``foreground_intensity_properties_per_channel`` (profile ``"nnunet"``,
  :func:`ASSFTActive.inference.preprocess.nnunet_intensity_transform` applies it);
- the classes: ``dataset.json`` ``labels`` (background first, the ``ignore`` label dropped; region-based models are
  refused: their outputs are sigmoids, not one softmax channel per class);
- the weights: ``checkpoint_final.pth`` read with ``torch.load(weights_only=True)`` and an allow-list of exactly the
  numpy scalar types nnU-Net's training log and ``torch.device`` hold (:func:`read_checkpoint`); a pickled whole
  model is refused;
- the test-time mirroring: the checkpoint's ``inference_allowed_mirroring_axes`` (nnU-Net's network axes, read
  without torch by :func:`checkpoint_mirroring_axes`) become the card's ``test_time_mirroring`` in ASSFT's axes
  (:func:`model_space_mirroring`); the predictor averages the logits over every flip of those axes, as nnU-Net's
  default predictor does.

What is not reproduced: nnU-Net's cropping to the non-zero bounding box before prediction (statistics are taken
over that box, as nnU-Net does, but the whole volume is predicted) and its third-order spline resampling (ASSFT
resamples trilinearly; no resampling happens when the volume already has the plans' spacing). The cascade's second
stage is refused (it needs the first stage's segmentation as input).

This module imports neither torch nor numpy at import time: reading the card is torch-free like
:mod:`ASSFTActive.cards`, which it lies below (it imports no card type). Writing an adapted model back in nnU-Net's
layout is :mod:`.nnunet_export`.

References:
    Isensee et al., "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
    Nature Methods 2021; nnU-Net v2 ``documentation/explanation_plans_files.md`` and
    ``explanation_normalization.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ModelError
from .jsonfile import read_json_object

PLANS_FILE = "plans.json"
DATASET_FILE = "dataset.json"
#: Checkpoint names nnU-Net writes into a fold folder, in the order a folder is searched.
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
WEIGHTS_FORMAT = "nnunet_checkpoint"
PROFILE = "nnunet"
#: The intensity normalisation schemes of nnU-Net that ASSFT reproduces.
SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization")
#: The network classes of ``dynamic_network_architectures`` a plans file may name.
NETWORK_CLASSES = {
    "PlainConvUNet": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "ResidualEncoderUNet": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
#: The operators plans name by dotted path (``_kw_requires_import``), mapped to ``torch.nn`` attribute names. A plans
#: file is data from anywhere: ``pydoc.locate`` on its strings (what nnU-Net does) would import any module it names.
OPERATORS = {
    "Conv1d": "Conv1d",
    "Conv2d": "Conv2d",
    "Conv3d": "Conv3d",
    "InstanceNorm1d": "InstanceNorm1d",
    "InstanceNorm2d": "InstanceNorm2d",
    "InstanceNorm3d": "InstanceNorm3d",
    "BatchNorm1d": "BatchNorm1d",
    "BatchNorm2d": "BatchNorm2d",
    "BatchNorm3d": "BatchNorm3d",
    "GroupNorm": "GroupNorm",
    "LayerNorm": "LayerNorm",
    "Dropout": "Dropout",
    "Dropout1d": "Dropout1d",
    "Dropout2d": "Dropout2d",
    "Dropout3d": "Dropout3d",
    "LeakyReLU": "LeakyReLU",
    "ReLU": "ReLU",
    "PReLU": "PReLU",
    "GELU": "GELU",
    "ELU": "ELU",
}
_FOLD = re.compile(r"^fold_(all|[0-9]+)$")


# --------------------------------------------------------------------------------------------- the folder


def is_training_folder(folder: Path) -> bool:
    """Whether ``folder`` looks like an nnU-Net v2 training output (``plans.json`` + ``dataset.json``)."""
    return (folder / PLANS_FILE).is_file() and (folder / DATASET_FILE).is_file()


def checkpoint_in(folder: Path) -> Optional[Path]:
    """The checkpoint an nnU-Net folder means: a training folder's lowest fold (``fold_all`` last), or a fold folder's
    own checkpoint; ``None`` when ``folder`` is neither.

    Raises:
        ModelError: an nnU-Net folder without any ``fold_<k>/checkpoint_final.pth``.
    """
    if _FOLD.match(folder.name) and is_training_folder(folder.parent):
        found = _fold_checkpoint(folder)
        if found is None:
            raise ModelError(
                f"{folder}: no {' or '.join(CHECKPOINT_NAMES)} in this nnU-Net fold folder; train the "
                "fold to the end or pass another fold."
            )
        return found
    if not is_training_folder(folder):
        return None
    folds = sorted(
        (p for p in folder.iterdir() if p.is_dir() and _FOLD.match(p.name)),
        key=lambda p: (p.name == "fold_all", int(p.name[5:]) if p.name[5:].isdigit() else 0),
    )
    for fold in folds:
        found = _fold_checkpoint(fold)
        if found is not None:
            return found
    raise ModelError(
        f"{folder}: an nnU-Net training folder (plans.json, dataset.json) but no fold_<k>/"
        f"{CHECKPOINT_NAMES[0]}; pass a folder whose training finished."
    )


def _fold_checkpoint(fold: Path) -> Optional[Path]:
    for name in CHECKPOINT_NAMES:
        if (fold / name).is_file():
            return fold / name
    return None


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint inside ``<training folder>/fold_<k>/``."""
    return (
        path.suffix == ".pth" and _FOLD.match(path.parent.name) is not None and is_training_folder(path.parent.parent)
    )


def configuration_name(folder: Path, plans: Mapping[str, Any]) -> str:
    """The configuration a training folder was trained with: the last ``__`` part of its name
    (``nnUNetTrainer__nnUNetPlans__3d_fullres``), or the only configuration of the plans."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or not configurations:
        raise ModelError(f'{folder / PLANS_FILE}: no "configurations"; not an nnU-Net v2 plans file.')
    parts = folder.name.split("__")
    if len(parts) == 3 and parts[2] in configurations:
        return parts[2]
    if len(configurations) == 1:
        return next(iter(configurations))
    raise ModelError(
        f"{folder}: the folder name does not say which configuration of plans.json was trained "
        f"({sorted(configurations)}); keep nnU-Net's folder name <Trainer>__<Plans>__<configuration>."
    )


def configuration(plans: Mapping[str, Any], name: str, where: Path) -> Dict[str, Any]:
    """The configuration ``name`` with ``inherits_from`` resolved (the parent's entries, overridden by the child's)."""
    configurations = plans["configurations"]
    chain: List[str] = []
    current: Optional[str] = name
    while current is not None:
        if current in chain or current not in configurations:
            raise ModelError(f"{where}: configuration {current!r} is missing or inherits from itself.")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    merged: Dict[str, Any] = {}
    for item in reversed(chain):
        merged.update(configurations[item])
    return merged


def class_names(dataset: Mapping[str, Any], where: Path) -> Tuple[str, ...]:
    """Output channel names from ``dataset.json`` ``labels`` (``{"background": 0, "Anterior": 1, ...}``)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f'{where}: no "labels" object; not an nnU-Net v2 dataset.json.')
    if any(isinstance(v, (list, tuple)) for v in labels.values()) or "regions_class_order" in dataset:
        raise ModelError(
            f"{where}: a region-based nnU-Net model (labels with lists of values); its outputs are one "
            "sigmoid per region, not one softmax channel per class, and ASSFT cannot rank or adapt it."
        )
    values = {name: value for name, value in labels.items() if name != "ignore"}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
        raise ModelError(f'{where}: "labels" values must be integers, got {labels}.')
    ordered = sorted(values, key=lambda name: values[name])
    if [values[n] for n in ordered] != list(range(len(ordered))):
        raise ModelError(f'{where}: "labels" must be consecutive from 0 (background), got {labels}.')
    return tuple(ordered)


def _old_architecture(config: Mapping[str, Any], where: Path) -> Dict[str, Any]:
    """``architecture`` for plans written before nnU-Net 2.2 (``UNet_class_name`` and friends), as nnU-Net's own
    ``get_network_from_plans`` of that time built it."""
    try:
        kernels = config["conv_kernel_sizes"]
        strides = config["pool_op_kernel_sizes"]
        base, top = int(config["UNet_base_num_features"]), int(config["unet_max_num_features"])
        encoder, decoder = config["n_conv_per_stage_encoder"], config["n_conv_per_stage_decoder"]
        name = config.get("UNet_class_name", "PlainConvUNet")
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f'{where}: the configuration has neither "architecture" nor the older UNet_* keys ({exc}).'
        ) from exc
    dim = len(kernels[0])
    kwargs = {
        "n_stages": len(kernels),
        "features_per_stage": [min(base * 2**i, top) for i in range(len(kernels))],
        "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": kernels,
        "strides": strides,
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        "n_conv_per_stage_decoder": decoder,
    }
    kwargs["n_blocks_per_stage" if name == "ResidualEncoderUNet" else "n_conv_per_stage"] = encoder
    return {
        "network_class_name": name,
        "arch_kwargs": kwargs,
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _axes(plans: Mapping[str, Any], where: Path) -> List[int]:
    """For each of the network's input axes, the ASSFT array axis (``[i, j, k]``) it is: SimpleITK's reversed order
    ``[k, j, i]`` permuted by ``transpose_forward``."""
    transpose = plans.get("transpose_forward", [0, 1, 2])
    if sorted(transpose) != [0, 1, 2]:
        raise ModelError(f"{where}: transpose_forward must be a permutation of [0, 1, 2], got {transpose}.")
    return [2 - int(t) for t in transpose]


def normalisation(plans: Mapping[str, Any], config: Mapping[str, Any], where: Path) -> Dict[str, Any]:
    """The card's ``preprocessing`` for the plans' normalisation of channel 0."""
    schemes = config.get("normalization_schemes")
    masks = config.get("use_mask_for_norm", [False])
    if not isinstance(schemes, list) or len(schemes) != 1:
        raise ModelError(
            f"{where}: {len(schemes) if isinstance(schemes, list) else 'no'} input channels "
            "(normalization_schemes); ASSFT runs single-channel models only."
        )
    scheme = schemes[0]
    if scheme not in SCHEMES:
        raise ModelError(f"{where}: normalisation scheme {scheme!r} is not reproduced by ASSFT; supported: {SCHEMES}.")
    use_mask = bool(masks[0]) if isinstance(masks, list) and masks else False
    preprocessing: Dict[str, Any] = {"profile": PROFILE, "scheme": scheme, "use_mask_for_norm": use_mask}
    if scheme == "CTNormalization":
        properties = (
            plans.get("foreground_intensity_properties_per_channel")
            or plans.get("foreground_intensity_properties_by_modality")
            or {}
        )
        stats = properties.get("0") if isinstance(properties, dict) else None
        keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
        if not isinstance(stats, dict) or not all(isinstance(stats.get(k), (int, float)) for k in keys):
            raise ModelError(
                f'{where}: CTNormalization needs foreground_intensity_properties_per_channel["0"] with {list(keys)}.'
            )
        preprocessing.update({k: float(stats[k]) for k in keys})
    return preprocessing


def check_preprocessing(preprocessing: Mapping[str, Any], where: str) -> None:
    """Validate a card's ``"nnunet"`` preprocessing (called by :func:`ASSFTActive.cards.load_card`'s validation)."""
    scheme = preprocessing.get("scheme")
    if scheme not in SCHEMES:
        raise ModelError(f'{where}: the nnunet profile needs "scheme" one of {SCHEMES}, got {scheme!r}.')
    if not isinstance(preprocessing.get("use_mask_for_norm", False), bool):
        raise ModelError(f'{where}: the nnunet profile\'s "use_mask_for_norm" must be true or false.')
    if scheme == "CTNormalization":
        values = [preprocessing.get(k) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or values[2] > values[3]:
            raise ModelError(f"{where}: CTNormalization needs numbers mean, std, percentile_00_5 <= percentile_99_5.")


def card_for_checkpoint(checkpoint: Path) -> Dict[str, Any]:
    """The card fields (the card file's JSON) of one fold of an nnU-Net training folder, built from its JSON files
    (the folder is not changed). :func:`ASSFTActive.cards.load_card` validates them and gives the card the checkpoint
    itself as its path, so that the card reference (``str(card.path)``, stored in jobs and store versions) resolves
    to the same fold again.

    Raises:
        ModelError: a file is missing or unreadable, or the model is one ASSFT cannot run (named in the message).
    """
    checkpoint = Path(checkpoint).resolve()
    folder = checkpoint.parent.parent
    plans = read_json_object(folder / PLANS_FILE)
    dataset = read_json_object(folder / DATASET_FILE)
    name = configuration_name(folder, plans)
    if "cascade" in name or (plans["configurations"].get(name) or {}).get("previous_stage"):
        raise ModelError(
            f"{folder}: configuration {name!r} is a cascade stage that needs the previous stage's "
            "segmentation as input; use the 3d_fullres or 3d_lowres folder."
        )
    config = configuration(plans, name, folder / PLANS_FILE)
    patch = config.get("patch_size")
    spacing = config.get("spacing")
    if not (isinstance(patch, list) and len(patch) == 3 and isinstance(spacing, list) and len(spacing) == 3):
        raise ModelError(
            f"{folder / PLANS_FILE}: configuration {name!r} is not 3D (patch_size {patch}); ASSFT runs "
            "3D models: use the 3d_fullres folder."
        )
    classes = class_names(dataset, folder / DATASET_FILE)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise ModelError(
            f"{folder / DATASET_FILE}: {len(channels)} input channels {channels}; ASSFT runs "
            "single-channel models only."
        )
    architecture = config.get("architecture") or _old_architecture(config, folder / PLANS_FILE)
    class_name = str(architecture.get("network_class_name", "")).rsplit(".", 1)[-1]
    if class_name not in NETWORK_CLASSES:
        raise ModelError(
            f"{folder / PLANS_FILE}: network {architecture.get('network_class_name')!r} is not one ASSFT "
            f"builds; supported: {sorted(NETWORK_CLASSES)}."
        )
    kwargs = dict(architecture.get("arch_kwargs") or {})
    axes = _axes(plans, folder / PLANS_FILE)
    in_assft_order = [0, 0, 0]
    for network_axis, array_axis in enumerate(axes):
        in_assft_order[array_axis] = network_axis
    n_stages = int(kwargs.get("n_stages", 0))
    mirror = checkpoint_mirroring_axes(checkpoint)
    return dict(
        name=_card_name(folder, checkpoint),
        architecture=f"nnunet:{class_name}",
        arguments={
            "in_channels": 1,
            "out_channels": len(classes),
            "arch_kwargs": kwargs,
            "requires_import": list(architecture.get("_kw_requires_import") or []),
            "axes": axes,
        },
        weights=checkpoint.name,
        class_names=classes,
        encoder_stages=[f"encoder.stages.{i}" for i in range(n_stages)],
        patch_size=[int(patch[a]) for a in in_assft_order],
        preprocessing=normalisation(plans, config, folder / PLANS_FILE),
        weights_format=WEIGHTS_FORMAT,
        spacing=[float(spacing[a]) for a in in_assft_order],
        orientation=None,
        pretrained=None,
        test_time_mirroring=model_space_mirroring(mirror, axes),
        provenance={
            "source": "nnunet",
            "folder": str(folder),
            "fold": checkpoint.parent.name,
            "configuration": name,
            "plans_name": plans.get("plans_name"),
            "dataset_name": plans.get("dataset_name"),
            "transpose_forward": plans.get("transpose_forward", [0, 1, 2]),
            "inference_allowed_mirroring_axes": list(mirror) if mirror is not None else None,
            "not_reproduced": ["crop to the non-zero box before prediction", "third-order resampling (trilinear here)"],
        },
    )


def model_space_mirroring(nnunet_axes: Optional[Sequence[int]], axes: Sequence[int]) -> Optional[List[int]]:
    """The card's ``test_time_mirroring`` for nnU-Net's ``inference_allowed_mirroring_axes``.

    nnU-Net's mirroring axis ``m`` is the network's spatial input axis ``m``; the network receives ASSFT's array axis
    ``axes[m]`` there (:func:`_axes`, the card's ``arguments["axes"]``), and flipping an input axis before the
    permutation is flipping the permuted axis after it. So the axis is ``axes[m]`` in the card's model space (the
    card has no reorientation: model space keeps the array's axis order).

    Args:
        nnunet_axes: the checkpoint's axes (network spatial axes, 0-based), or ``None`` (mirroring off).
        axes: for each network input axis, the ASSFT array axis it is.

    Returns:
        the sorted model-space axes, or ``None`` when ``nnunet_axes`` is ``None`` or empty.
    """
    if not nnunet_axes:
        return None
    if not all(0 <= int(m) < len(axes) for m in nnunet_axes):
        raise ModelError(
            f"nnU-Net checkpoint: inference_allowed_mirroring_axes {list(nnunet_axes)} are not axes of "
            f"a {len(axes)}D network."
        )
    return sorted({int(axes[int(m)]) for m in nnunet_axes})


#: pickle opcodes that push one whole number (the mirroring axes are a tuple of them).
_INT_OPS = frozenset({"BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4"})
#: opcodes that only store the value on top of the stack in the memo; they change nothing this parser reads.
_MEMO_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE", "FRAME"})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _axes_after_key(ops: Sequence[Tuple[str, Any]], key: str) -> Optional[Tuple[int, ...]]:
    """The value pickled right after the string ``key`` when it is ``None`` or a tuple or list of whole numbers.

    A stack machine for exactly the opcodes that build such a value (whole numbers, ``None``, marks, tuples, lists);
    the first other opcode ends the value (the dict's next key, ``SETITEM``, or an object the file names, which is
    refused, never built).

    Args:
        ops: ``(opcode name, argument)`` pairs of a pickle, as :func:`pickletools.genops` lists them.

    Raises:
        ValueError: ``key`` is there but its value is something else (a pickled object, nested containers).
    """
    mark = object()

    def pop_to_mark(stack: List[Any]) -> List[Any]:
        at = max(i for i, item in enumerate(stack) if item is mark)
        items = stack[at + 1 :]
        del stack[at:]
        return items

    for index, (name, arg) in enumerate(ops):
        if name not in _STRING_OPS or arg != key:
            continue
        stack: List[Any] = []
        try:
            for name, arg in ops[index + 1 :]:
                if name in _MEMO_OPS:
                    continue
                if name in _INT_OPS:
                    stack.append(int(arg))
                elif name in ("NONE", "MARK", "EMPTY_TUPLE", "EMPTY_LIST"):
                    stack.append({"NONE": None, "MARK": mark, "EMPTY_TUPLE": (), "EMPTY_LIST": []}[name])
                elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    count = int(name[-1])
                    items = stack[-count:]
                    del stack[-count:]
                    stack.append(tuple(items))
                elif name in ("TUPLE", "LIST"):
                    items = pop_to_mark(stack)
                    stack.append(tuple(items) if name == "TUPLE" else items)
                elif name == "APPEND":
                    item = stack.pop()
                    stack[-1].append(item)
                elif name == "APPENDS":
                    items = pop_to_mark(stack)
                    stack[-1].extend(items)
                else:
                    break
        except (IndexError, ValueError, AttributeError) as exc:
            raise ValueError(f"{key}: malformed value ({exc})") from exc
        value = stack[0] if len(stack) == 1 else mark
        if value is None:
            return None
        if isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ValueError(f"{key} is not None or a tuple of whole numbers")
    return None


def checkpoint_mirroring_axes(checkpoint: Path) -> Optional[Tuple[int, ...]]:
    """The checkpoint's ``inference_allowed_mirroring_axes`` without torch (card reading stays torch-free).

    A checkpoint written by ``torch.save`` is a zip holding ``<name>/data.pkl`` (the dict) and one file per tensor
    storage. ``data.pkl`` is not unpickled: :func:`pickletools.genops` lists its opcodes (parsing only, no object is
    built, nothing the file names is imported or called) and :func:`_axes_after_key` reads the whole numbers pickled
    after the key. A checkpoint in torch's legacy (non-zip) format is read with :func:`read_checkpoint` instead
    (weights-only, allow-listed).

    Returns:
        the axes as nnU-Net stores them (network spatial axes), or ``None`` when the entry is missing or ``None``.

    Raises:
        ModelError: the file cannot be parsed, or the entry is not ``None`` or a tuple of whole numbers.
    """
    import pickletools
    import zipfile

    checkpoint = Path(checkpoint)
    if not zipfile.is_zipfile(checkpoint):
        return mirroring_axes(read_checkpoint(checkpoint))
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise ValueError("no data.pkl in the archive")
            data = archive.read(sorted(names, key=len)[0])
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
        return _axes_after_key(ops, "inference_allowed_mirroring_axes")
    except Exception as exc:
        raise ModelError(
            f"{checkpoint}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc}); "
            "a checkpoint written by nnU-Net's trainer is a torch.save zip whose "
            "inference_allowed_mirroring_axes is None or a tuple of whole numbers."
        ) from exc


def _card_name(folder: Path, checkpoint: Path) -> str:
    """A store-safe name: ``<Dataset>-<configuration>-<fold>``."""
    raw = f"{folder.parent.name}-{folder.name.split('__')[-1]}-{checkpoint.parent.name}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip("._-")[:100] or "nnunet"


# --------------------------------------------------------------------------------------------- torch side


def _operator(value: Any, key: str) -> Any:
    if value is None:
        return None
    import torch.nn as nn

    short = str(value).rsplit(".", 1)[-1]
    if short not in OPERATORS:
        raise ModelError(
            f"plans.json: {key} = {value!r} is not an operator ASSFT builds; supported: "
            f"{sorted(OPERATORS)} (of torch.nn)."
        )
    return getattr(nn, OPERATORS[short])


_AXIS_CLASSES: Dict[str, Any] = {}


def _network_class(name: str) -> Any:
    """``name`` of ``dynamic_network_architectures``, subclassed so that its input and output are in ASSFT's array
    axis order (the permutation is not a parameter: the state dict keys stay nnU-Net's)."""
    if name in _AXIS_CLASSES:
        return _AXIS_CLASSES[name]
    try:
        from dynamic_network_architectures.architectures import unet
    except ImportError as exc:
        raise ModelError(
            "nnU-Net models need the package dynamic-network-architectures (pip install "
            "'dynamic-network-architectures==0.4.4', or the assft[nnunet] extra)."
        ) from exc
    base = getattr(unet, name)

    def forward(self, x):  # x: [B, C, I, J, K] in ASSFT's axes -> logits [B, classes, I, J, K]
        axes = tuple(self.assft_axes)
        if axes == (0, 1, 2):
            return base.forward(self, x)
        y = base.forward(self, x.permute(0, 1, *(2 + a for a in axes)))
        inverse = [axes.index(a) for a in range(3)]
        return y.permute(0, 1, *(2 + a for a in inverse))

    cls = type(
        name,
        (base,),
        {"forward": forward, "__module__": __name__, "__doc__": f"nnU-Net's {name}, fed in ASSFT's array axis order."},
    )
    _AXIS_CLASSES[name] = cls
    return cls


def build_network(architecture: str, **arguments: Any):
    """The network of an ``nnunet:<Class>`` card (random weights, deep supervision off).

    Args:
        architecture: ``nnunet:PlainConvUNet`` or ``nnunet:ResidualEncoderUNet``.
        arguments: the card's arguments: ``in_channels``, ``out_channels``, ``arch_kwargs`` (the plans'),
            ``requires_import`` (which of them name operators) and ``axes`` (network axis -> ASSFT array axis).
    """
    name = architecture.split(":", 1)[1]
    if name not in NETWORK_CLASSES:
        raise ModelError(
            f"architecture {architecture} unknown; nnU-Net networks: "
            f"{', '.join('nnunet:' + n for n in NETWORK_CLASSES)}."
        )
    kwargs = dict(arguments.get("arch_kwargs") or {})
    for key in arguments.get("requires_import") or []:
        if key in kwargs:
            kwargs[key] = _operator(kwargs[key], key)
    axes = [int(a) for a in arguments.get("axes", [0, 1, 2])]
    if sorted(axes) != [0, 1, 2]:
        raise ModelError(f"nnU-Net card: axes must be a permutation of [0, 1, 2], got {axes}.")
    network = _network_class(name)(
        input_channels=int(arguments.get("in_channels", 1)),
        num_classes=int(arguments["out_channels"]),
        deep_supervision=False,
        **kwargs,
    )
    network.assft_axes = tuple(axes)
    return network


def _allowed_globals() -> List[Any]:
    """What nnU-Net's checkpoint holds besides tensors and plain containers: numpy scalars (the training log's
    ``ema_fg_dice``, ``_best_ema``, ...) and their dtypes, under numpy 1's and numpy 2's module names. Nothing that
    runs code: a numpy scalar is rebuilt from its dtype and raw bytes."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: List[Any] = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    for kind in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_):
        allowed.append(type(np.dtype(kind)))
    return allowed


def read_checkpoint(path: Path) -> Dict[str, Any]:
    """Read an nnU-Net checkpoint with ``torch.load(weights_only=True)``, allowing exactly :func:`_allowed_globals`.

    Returns:
        the checkpoint dict (``network_weights``, ``init_args``, ``trainer_name``,
        ``inference_allowed_mirroring_axes``, ...).

    Raises:
        ModelError: the file is missing, a pickled object outside the allow-list (e.g. a whole model saved with
            ``torch.save(model)``), or not an nnU-Net checkpoint.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: nnU-Net checkpoint not found.")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot be read as a weights-only nnU-Net checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). ASSFT never unpickles model objects; a checkpoint written by "
            "nnU-Net's trainer holds tensors, numbers and numpy scalars only. A whole pickled model is refused: save "
            "{'network_weights': model.state_dict()} instead."
        ) from exc
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        top = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ModelError(f'{path}: no "network_weights" state dict (top level: {top}); not an nnU-Net v2 checkpoint.')
    return checkpoint


def read_state_dict(path: Path) -> Dict[str, Any]:
    """The network weights of an nnU-Net checkpoint, with ``torch.compile``'s ``_orig_mod.`` prefix removed."""
    weights = read_checkpoint(path)["network_weights"]
    return {k[len("_orig_mod.") :] if k.startswith("_orig_mod.") else k: v for k, v in weights.items()}


def mirroring_axes(checkpoint: Mapping[str, Any]) -> Optional[Sequence[int]]:
    """The checkpoint's ``inference_allowed_mirroring_axes`` (nnU-Net's network axes), or ``None``."""
    axes = checkpoint.get("inference_allowed_mirroring_axes")
    return tuple(int(a) for a in axes) if isinstance(axes, (list, tuple)) else None
