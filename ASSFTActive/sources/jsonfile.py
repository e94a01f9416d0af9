"""The one reader of a source's JSON files (a bundle's configs, an nnU-Net folder's ``plans.json`` and
``dataset.json``). Standard library only, like the source readers that use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ..errors import ModelError


def read_json_object(path: Path) -> Dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        ModelError: the file is missing or unreadable, not JSON, or not a JSON object (names the file).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON file ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: must be a JSON object.")
    return data
