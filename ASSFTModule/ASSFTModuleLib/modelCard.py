"""Read the parts of an engine model card the module needs (name and class names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from .enginePath import defaultModelCardPath
from .errors import ASSFTModuleError
from .records import ModelCard

#: The value of ``job.json``'s ``model`` field that names the embedded default model.
DEFAULT_MODEL = "default"


def resolveModelCardPath(model: Union[str, Path, None]) -> Path:
    """The card file named by ``model``: ``None``, ``""`` or ``"default"`` mean the embedded default card."""
    if model is None or str(model).strip() in ("", DEFAULT_MODEL, "."):
        return defaultModelCardPath()
    return Path(model)


def readModelCard(model: Union[str, Path, None]) -> ModelCard:
    """Read a model card JSON file.

    Args:
        model: a card path, or ``"default"`` / empty for the embedded default card.

    Raises:
        ASSFTModuleError: missing file, invalid JSON, or no usable ``class_names``.
    """
    path = resolveModelCardPath(model)
    if not path.is_file():
        raise ASSFTModuleError(
            f"{path}: model card not found. Choose an existing card file (card.json) or the embedded default model."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ASSFTModuleError(
            f"{path}: cannot read the model card ({exc}). Check that it is a valid JSON file."
        ) from exc
    classNames = data.get("class_names") if isinstance(data, dict) else None
    if not isinstance(classNames, list) or len(classNames) < 2 or not all(isinstance(c, str) for c in classNames):
        raise ASSFTModuleError(
            f"{path}: the model card needs \"class_names\": a list of at least two names, background first "
            "(e.g. [\"background\", \"anterior\", \"posterior\"])."
        )
    if len(set(classNames)) != len(classNames):
        raise ASSFTModuleError(f"{path}: \"class_names\" has duplicates {classNames}; every class needs its own name.")
    name = str(data.get("name") or path.parent.name)
    return ModelCard(name=name, classNames=tuple(classNames), path=path)


def modelReference(model: Union[str, Path, None]) -> str:
    """The ``model`` value for ``job.json``: ``"default"`` or an absolute card path."""
    if model is None or str(model).strip() in ("", DEFAULT_MODEL, "."):
        return DEFAULT_MODEL
    return str(Path(model).resolve())
