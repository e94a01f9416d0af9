"""The embedded SAM-architecture prior: a small SAM trained here on stitched hippocampus canvases. Not Meta's SAM.

SFR starts from a pre-trained SAM. Meta's ViT-B weights are large, need a GPU to be useful and are never
downloaded by ASSFT, so the package ships a *small network of SAM's architecture* (:class:`~.sam.Sam` with
:func:`prior_sam_config`), trained from scratch on the stitched canvases of the source split of MSD Hippocampus by
``scripts/train_sfr_prior.py``. It gives the SFR pipeline a real starting point on a CPU; it has none of SAM's
knowledge. Its folder holds ``sam-card.json`` (not ``card.json``: it is not a 3D model card) and
``weights.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..errors import ModelError
from ..io import atomic_write_bytes, atomic_write_text
from .inputs import SamInput
from .sam import Sam, SamConfig, load_sam_weights

__all__ = ["CARD_FILE", "NOT_META_SAM", "PRIOR_DIR", "SamPrior", "load_sam_prior", "prior_sam_config", "save_sam_prior"]

PRIOR_DIR = Path(__file__).resolve().parents[1] / "resources" / "models" / "sfr-sam-tiny"
CARD_FILE = "sam-card.json"
NOT_META_SAM = (
    "This is NOT Meta's Segment Anything model: it is a small network of SAM's architecture, trained "
    "from scratch by ASSFT on stitched canvases of MSD Hippocampus (source split), with none of SAM's "
    "pre-training. For the real SAM, supply Meta's sam_vit_b_01ec64.pth yourself."
)


def prior_sam_config(num_classes: int = 3, image_size: int = 256) -> SamConfig:
    """The embedded prior's sizes: patch 8 (a 32 x 32 embedding at 256), 4 blocks of width 64 (windowed 8 x 8,
    the last global), a 64-channel decoder; about 0.5 M parameters, cheap enough to train on one CPU thread."""
    return SamConfig(
        image_size=image_size,
        patch_size=8,
        embed_dim=64,
        depth=4,
        num_heads=2,
        window_size=8,
        global_attn_indexes=(3,),
        out_chans=64,
        mask_in_chans=16,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=256,
        num_mask_tokens=num_classes,
        iou_head_hidden_dim=64,
    )


@dataclass(frozen=True)
class SamPrior:
    """A loaded SAM prior: the network (eval mode), the input space it was trained in, its classes and card."""

    model: Sam
    sam_input: SamInput
    class_names: Tuple[str, ...]
    card: Mapping[str, Any]
    path: Path


def save_sam_prior(
    model: Sam,
    folder: Union[str, Path],
    sam_input: SamInput,
    class_names: Sequence[str],
    provenance: Mapping[str, Any],
    name: str = "sfr-sam-tiny",
) -> Path:
    """Write ``weights.safetensors`` then ``sam-card.json`` into ``folder`` (each atomically); returns the card."""
    from safetensors.torch import save

    if len(class_names) != model.config.num_mask_tokens:
        raise ModelError(f"{len(class_names)} class names for a SAM with {model.config.num_mask_tokens} outputs")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / "weights.safetensors", save(state))
    card: Dict[str, Any] = {
        "name": name,
        "kind": "sam",
        "not_meta_sam": NOT_META_SAM,
        "sam_config": model.config.to_dict(),
        "sam_input": sam_input.to_dict(),
        "class_names": list(class_names),
        "weights": "weights.safetensors",
        "weights_format": "safetensors",
        "provenance": dict(provenance),
    }
    return atomic_write_text(folder / CARD_FILE, json.dumps(card, indent=2, allow_nan=False) + "\n")


def load_sam_prior(folder: Union[str, Path] = PRIOR_DIR, device: Optional[torch.device] = None) -> SamPrior:
    """Read a SAM prior folder (the embedded one by default); every tensor is loaded strictly from safetensors.

    Raises:
        ModelError: a missing or malformed card (not a JSON object, a 3D model card's folder), weights outside the
            folder, or weights that do not fit the card's ``sam_config`` (each naming the card).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.exists() and (folder / "card.json").is_file():
        raise ModelError(
            f"{folder} holds card.json, a 3D model card, not a SAM prior: a SAM prior folder holds {CARD_FILE} and "
            "its weights. Give a SAM prior folder, or none for the embedded one."
        )
    try:
        card = json.loads(card_path.read_text())
        if not isinstance(card, dict):
            raise ValueError(f"the card must be a JSON object, got {type(card).__name__}")
        if not isinstance(card.get("sam_config", {}), dict):
            raise ValueError(f"sam_config must be a JSON object of SamConfig fields, got {card['sam_config']!r}")
        config = SamConfig.from_dict(card["sam_config"])
        sam_input = SamInput.from_dict(card.get("sam_input", {}))
        class_names = tuple(str(c) for c in card["class_names"])
        weights = (folder / str(card["weights"])).resolve()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the SAM prior card {card_path}: {exc}") from exc
    if folder.resolve() not in weights.parents:
        raise ModelError(f"{card_path}: weights {card['weights']!r} lie outside the card's folder")
    if len(class_names) != config.num_mask_tokens:
        raise ModelError(f"{card_path}: {len(class_names)} class names but num_mask_tokens {config.num_mask_tokens}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
        raise ModelError(f"cannot read SAM prior weights {weights}: {exc}") from exc
    model = Sam(config)
    try:
        load_sam_weights(model, state)
    except ModelError as exc:
        raise ModelError(f"{card_path}: its weights {weights.name} do not fit its sam_config: {exc}") from exc
    if device is not None:
        model = model.to(device)
    return SamPrior(model=model.eval(), sam_input=sam_input, class_names=class_names, card=card, path=folder)
