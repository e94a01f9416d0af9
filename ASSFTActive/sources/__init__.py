"""Models the user already has, in their own tool's layout: nnU-Net v2 result folders and MONAI bundles.

A source is recognised by its folder layout and read into a :class:`~ASSFTActive.cards.ModelCard` in memory; the
user's folder is never written. The card's ``path`` is the source's weights file (``fold_<k>/checkpoint_final.pth``,
``models/model.pt``), so a card reference stored in a job or a store version resolves to the same model again.

The hook into the one card resolver (:func:`ASSFTActive.store.resolve_card_path`, :func:`ASSFTActive.cards.load_card`):

- :func:`weights_in_folder`: the weights file a source folder means (the resolver returns it);
- :func:`card_for_weights`: the card of such a weights file (``load_card`` returns it).

Torch-free, like :mod:`ASSFTActive.cards`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..cards import ModelCard
from . import bundle, nnunet

__all__ = ["card_for_weights", "describe", "is_source_weights", "weights_in_folder"]


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


def is_source_weights(path: Path) -> bool:
    """Whether ``path`` is the weights file of a source layout."""
    path = Path(path)
    return nnunet.is_checkpoint(path) or bundle.is_weights(path)


def card_for_weights(path: Path) -> Optional[ModelCard]:
    """The card of a source's weights file, or ``None`` when ``path`` is not one."""
    path = Path(path)
    if nnunet.is_checkpoint(path):
        return nnunet.card_for_checkpoint(path)
    if bundle.is_weights(path):
        return bundle.card_for_weights(path)
    return None


def describe(card: ModelCard) -> List[str]:
    """Lines ``assft check-card`` prints about what a card will do to a volume: the preprocessing (profile and
    values, spacing, orientation, patch) and, for a source, where it came from and what is not reproduced (for
    nnU-Net, the checkpoint's test-time mirroring axes)."""
    spacing = "the volume's own" if card.spacing is None else f"{list(card.spacing)} mm"
    lines = [f"preprocessing: {dict(card.preprocessing)}",
             f"spacing:      {spacing}; orientation: {card.orientation or 'as stored (no reorientation)'}; "
             f"patch: {list(card.patch_size)}"]
    source = card.provenance.get("source") if isinstance(card.provenance, dict) else None
    if source == "nnunet" and card.path is not None:
        checkpoint = nnunet.read_checkpoint(card.path)
        lines.append(f"source:       nnU-Net {card.provenance.get('configuration')} {card.provenance.get('fold')} "
                     f"of {card.provenance.get('folder')} (trainer {checkpoint.get('trainer_name')})")
        lines.append(f"not applied:  test-time mirroring over nnU-Net axes {nnunet.mirroring_axes(checkpoint)}; "
                     f"{', '.join(card.provenance.get('not_reproduced', []))}")
    elif source == "monai_bundle":
        lines.append(f"source:       MONAI bundle {card.provenance.get('folder')} (version "
                     f"{card.provenance.get('version')})")
    return lines
