"""A model adapted from an nnU-Net folder written back in nnU-Net v2's layout (``assft export-nnunet``).

Above :mod:`ASSFTActive.cards` (it follows a card's ``pretrained`` chain to the nnU-Net fold it came from); the reading
of nnU-Net folders, below the cards, is :mod:`.nnunet`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..cards import ModelCard
from ..errors import ModelError
from .nnunet import _FOLD, CHECKPOINT_NAMES, DATASET_FILE, PLANS_FILE, WEIGHTS_FORMAT, is_checkpoint, read_checkpoint

__all__ = ["export", "source_card"]


def source_card(card: ModelCard) -> ModelCard:
    """The nnU-Net card ``card`` descends from (itself, or the first of its ``pretrained`` chain read from an nnU-Net
    folder).

    Raises:
        ModelError: the card is not an nnU-Net network or does not descend from an nnU-Net folder.
    """
    current, seen = card, set()
    while True:
        if not current.architecture.startswith("nnunet:"):
            raise ModelError(
                f"{card.path or card.name}: not an nnU-Net network ({current.architecture}); only models "
                "read from an nnU-Net folder, or adapted from one, can be written in nnU-Net's layout."
            )
        if current.weights_format == WEIGHTS_FORMAT and current.path is not None and is_checkpoint(current.path):
            return current
        if current.pretrained is None or str(current.path) in seen:
            raise ModelError(
                f"{card.path or card.name}: its pre-trained model is not an nnU-Net folder; nothing to "
                "copy plans.json and dataset.json from."
            )
        seen.add(str(current.path))
        current = current.pretrained_card()


def export(card: ModelCard, network, out: Path, fold: str = "fold_0") -> Path:
    """Write ``network`` (the card's model, e.g. an adapted store version) as an nnU-Net v2 training folder that
    nnU-Net's own predictor runs: ``<out>/<Trainer>__<Plans>__<configuration>/`` with the source folder's
    ``plans.json`` and ``dataset.json`` and ``<fold>/checkpoint_final.pth`` holding the new ``network_weights``
    (nnU-Net's key names, aliases included) and the source checkpoint's ``init_args``, ``trainer_name`` and
    ``inference_allowed_mirroring_axes`` (what ``nnUNetPredictor.initialize_from_trained_model_folder`` reads).

    The folder is assembled beside its destination and renamed into place only when complete; an existing
    destination is never overwritten.

    Returns:
        the written training folder.

    Raises:
        ModelError: the card does not descend from an nnU-Net folder, or the destination exists.
    """
    import shutil
    import tempfile

    import torch

    source = source_card(card)
    folder = Path(source.provenance["folder"])
    original = read_checkpoint(source.path)
    out = Path(out).resolve()
    if not _FOLD.match(fold):
        raise ModelError(f"fold {fold!r} must be fold_<k> or fold_all.")
    target = out / folder.name
    if target.exists():
        raise ModelError(f"{target}: exists; choose another --out folder (an nnU-Net folder is never overwritten).")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".assft-export-", dir=str(out)))
    try:
        shutil.copyfile(folder / PLANS_FILE, staging / PLANS_FILE)
        shutil.copyfile(folder / DATASET_FILE, staging / DATASET_FILE)
        (staging / fold).mkdir()
        checkpoint = {
            "network_weights": {k: v.detach().cpu() for k, v in network.state_dict().items()},
            "init_args": original.get("init_args"),
            "trainer_name": original.get("trainer_name"),
            "inference_allowed_mirroring_axes": original.get("inference_allowed_mirroring_axes"),
            "current_epoch": original.get("current_epoch"),
            "assft_provenance": json.dumps(
                {
                    "model": card.name,
                    "card": str(card.path),
                    "source_checkpoint": str(source.path),
                    "provenance": dict(card.provenance),
                },
                default=str,
            ),
        }
        torch.save(checkpoint, staging / fold / CHECKPOINT_NAMES[0])
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
