"""Models the user already has, in their own tool's layout: nnU-Net v2 result folders and MONAI bundles.

A source is recognised by its folder layout and read into a model card's fields in memory; the
user's folder is never written. The card's ``path`` is the source's weights file (``fold_<k>/checkpoint_final.pth``,
``models/model.pt``), so a card reference stored in a job or a store version resolves to the same model again.

The hook into the one card resolver (:func:`ASSFTActive.store.resolve_card_path`, :func:`ASSFTActive.cards.load_card`):

- :func:`weights_in_folder`: the weights file a source folder means (the resolver returns it);
- :func:`card_for_weights`: the card fields of such a weights file (``load_card`` validates them and returns the
  card).

Torch-free, like :mod:`ASSFTActive.cards`, and below it: a source imports no card type, so the cards import the
sources and not the other way round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from . import bundle, nnunet

__all__ = ["card_for_weights", "weights_in_folder"]


def weights_in_folder(folder: Path) -> Optional[Path]:
    """The weights file of the source ``folder`` is (an nnU-Net training or fold folder, a MONAI bundle), or ``None``.

    Raises:
        ModelError: an nnU-Net folder without a finished fold, a bundle without JSON config or state dict.
    """
    folder = Path(folder)
    found = nnunet.checkpoint_in(folder)
    if found is not None:
        return found
    if bundle.is_bundle(folder):
        return bundle.weights_in(folder)
    bundle.check_incomplete(folder)
    return None


def card_for_weights(path: Path) -> Optional[Dict[str, Any]]:
    """The card fields (the card file's JSON) of a source's weights file, or ``None`` when ``path`` is not one."""
    path = Path(path)
    if nnunet.is_checkpoint(path):
        return nnunet.card_for_checkpoint(path)
    if bundle.is_weights(path):
        return bundle.card_for_weights(path)
    return None
