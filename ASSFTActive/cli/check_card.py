"""``assft check-card``: is a model card usable? Validate it, list the network's modules, run one forward pass.

    assft check-card CARD                 card JSON, 'default', or a store folder <store>/<name>[/v<k>]
    assft check-card CARD --modules       ... and list every module name (to choose encoder_stages)

Checks, in order: the card's fields and types (the schema), the architecture (a network class of MONAI), one output
channel per class name, the weights file (inside the card's folder, weights-only, the encoder loads), then one
forward pass on a zero patch of the card's ``patch_size``: the output must have ``len(class_names)`` channels and
the input's size, and every encoder stage must produce an output. Exit code 0 when the card passes, 2 otherwise.
A card with encoder weights only (``weights_format`` ``swinvit_ssl``) passes with its head's keys missing, and the
check says that the head will be initialised.
"""

from __future__ import annotations

import argparse
from typing import List, Tuple

from ..cards import ModelCard
from ..sources import nnunet
from .common import add_device_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-card",
        help="validate a model card, list its modules, run one forward pass",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("card", help="card JSON, 'default', or a store folder <store>/<name>[/v<k>]")
    parser.add_argument(
        "--modules", action="store_true", help="list every module name of the network (candidates for encoder_stages)"
    )
    add_device_argument(parser)
    parser.set_defaults(run=run)


def forward_check(model, device) -> Tuple[Tuple[int, ...], List[Tuple[str, Tuple[int, ...]]]]:
    """One forward pass of a zero patch ``[1, in_channels, *patch_size]``.

    Returns:
        the output shape and ``(stage, output shape)`` of every encoder stage.

    Raises:
        ModelError: the pass fails, the output has another channel count or size, or a stage produced nothing.
    """
    import torch

    from ..errors import ModelError

    card = model.card
    network = model.network.to(device).eval()
    modules = dict(network.named_modules())
    seen = {}

    def record(name: str):
        def hook(_module, _inputs, out) -> None:  # returns None: the output is left unchanged
            seen.setdefault(name, tuple((out[0] if isinstance(out, (list, tuple)) else out).shape))

        return hook

    hooks = [modules[name].register_forward_hook(record(name)) for name in card.encoder_stages]
    in_channels = int(card.arguments.get("in_channels", 1))
    patch = torch.zeros((1, in_channels) + tuple(card.patch_size), device=device)
    try:
        with torch.no_grad():
            output = network(patch)
    except Exception as exc:  # any failure of the user's network/arguments is the card's problem
        raise ModelError(
            f"{card.path or card.name}: the forward pass on a {list(card.patch_size)} patch failed "
            f"({type(exc).__name__}: {exc}). Check patch_size and the constructor arguments."
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    if isinstance(output, (list, tuple)):
        output = output[0]
    shape = tuple(output.shape)
    expected = (1, card.num_classes) + tuple(card.patch_size)
    if shape != expected:
        raise ModelError(
            f"{card.path or card.name}: the network returned shape {list(shape)} for a "
            f"{list(card.patch_size)} patch; expected {list(expected)} (one channel per class name)."
        )
    silent = [name for name in card.encoder_stages if name not in seen]
    if silent:
        raise ModelError(f"{card.path or card.name}: encoder_stages {silent} produced no output in the forward pass.")
    return shape, [(name, seen[name]) for name in card.encoder_stages]


def describe(card: ModelCard) -> List[str]:
    """Lines ``assft check-card`` prints about what a card will do to a volume: the preprocessing (profile and
    values, spacing, orientation, patch) and, for a source, where it came from and what is and is not reproduced (for
    nnU-Net, the test-time mirroring axes taken from its checkpoint)."""
    spacing = "the volume's own" if card.spacing is None else f"{list(card.spacing)} mm"
    lines = [
        f"preprocessing: {dict(card.preprocessing)}",
        f"spacing:      {spacing}; orientation: {card.orientation or 'as stored (no reorientation)'}; "
        f"patch: {list(card.patch_size)}",
    ]
    source = card.provenance.get("source") if isinstance(card.provenance, dict) else None
    if source == "nnunet" and card.path is not None:
        checkpoint = nnunet.read_checkpoint(card.path)
        lines.append(
            f"source:       nnU-Net {card.provenance.get('configuration')} {card.provenance.get('fold')} "
            f"of {card.provenance.get('folder')} (trainer {checkpoint.get('trainer_name')})"
        )
        mirror = card.test_time_mirroring
        lines.append(
            "applied:      "
            + (
                f"test-time mirroring over model axes {list(mirror)} (nnU-Net axes "
                f"{nnunet.mirroring_axes(checkpoint)}; {2 ** len(mirror)} passes per window)"
                if mirror
                else "no test-time mirroring (the checkpoint allows none)"
            )
        )
        lines.append(f"not applied:  {', '.join(card.provenance.get('not_reproduced', []))}")
    elif source == "monai_bundle":
        lines.append(
            f"source:       MONAI bundle {card.provenance.get('folder')} (version {card.provenance.get('version')})"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    from ..models import HEAD_INIT_SEED, load_model
    from ..store import resolve_card
    from .common import resolve_device

    device = resolve_device(args.device)
    card = resolve_card(args.card)
    print(f"card:         {card.path}\narchitecture: {card.architecture}\nclasses:      {', '.join(card.class_names)}")
    model = load_model(card)
    print(f"weights:      {card.weights_path} ({model.report.summary()})")
    for label, keys in (("missing", model.report.missing), ("unexpected", model.report.unexpected)):
        if keys:
            print(f"  {label} keys: {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}")
    if not card.has_trained_head:
        print(
            f"head:         initialised, not loaded: {card.weights_format!r} holds encoder weights only; the "
            f"{len(model.report.missing)} head tensors (the missing keys) are drawn with seed {HEAD_INIT_SEED}. The "
            "first ranking uses DKD's diversity alone (no ASD without a trained head); the first Adapt trains head "
            "and encoder"
        )
    print("\n".join(describe(card)))
    if args.modules:
        print("modules (name: type); * = an encoder stage of the card:")
        for name, module in model.network.named_modules():
            if name:
                marker = "*" if name in card.encoder_stages else " "
                print(f"  {marker} {name}: {type(module).__name__}")
    shape, stages = forward_check(model, device)
    print(f"forward pass: {list(card.patch_size)} patch -> output {list(shape)}")
    for name, stage_shape in stages:
        print(f"  encoder stage {name}: {list(stage_shape)}")
    print("the card is usable")
    return 0
