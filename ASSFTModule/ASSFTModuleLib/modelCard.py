"""The model the user chose, as the engine understands it: the ``model`` value of ``job.json`` and its card.

Cards are read and checked by the engine's torch-free :mod:`ASSFTActive.cards` (the worker reads them the same
way, so a card the panel accepts is a card the job accepts); this file only maps the panel's values to a model
reference and the engine's errors to the module's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ASSFTActive.cards import DEFAULT_MODEL, ModelCard, load_card
from ASSFTActive.errors import AssftError
from ASSFTActive.store import resolve_card_path

from .errors import ASSFTModuleError


def modelReference(model: Union[str, Path, None]) -> str:
    """The ``model`` value for ``job.json``: ``"default"`` (also for ``None``, ``""`` or ``"."``) or an absolute
    path."""
    if model is None or str(model).strip() in ("", DEFAULT_MODEL, "."):
        return DEFAULT_MODEL
    return str(Path(model).resolve())


def readModelCard(model: Union[str, Path, None]) -> ModelCard:
    """The card of ``model`` (a card path, or ``"default"`` / empty for the embedded default), resolved and
    checked exactly as the worker does it (``ASSFTActive.store.resolve_card_path``, ``ASSFTActive.cards.load_card``).

    Raises:
        ASSFTModuleError: the card is missing or not a valid model card (the message says which file and why).
    """
    try:
        return load_card(resolve_card_path(modelReference(model)))
    except AssftError as exc:
        raise ASSFTModuleError(
            f"{exc} In the panel, choose a model card file (card.json) or the embedded default model."
        ) from exc
