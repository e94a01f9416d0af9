"""How volumes enter SAM (space, intensity profile, slice axis), and the labelled-volume record SFR trains on.

Kept apart from :mod:`.finetune` and :mod:`.pseudo` so both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..io import Volume
from .config import known_fields

__all__ = ["SamInput", "SfrCase"]


@dataclass(frozen=True)
class SfrCase:
    """A volume SAM is fine-tuned on, with its (true or pseudo) label on the same grid.

    The fields are those of :class:`ASSFTActive.finetune.training.SupervisedCase`, which SFR accepts as well.

    Attributes:
        voxel_mask: optional bool ``[I, J, K]``; only these voxels count (SFR+ on confident pseudo-label voxels).
    """

    case_id: str
    image: Volume
    label: Volume
    voxel_mask: Optional[np.ndarray] = None


@dataclass(frozen=True)
class SamInput:
    """How a volume enters SAM: the space it is brought to and the axis its slices are cut along.

    Duck-types the fields of a model card that :func:`ASSFTActive.inference.preprocess.to_model_space` reads, so the 3D
    models and SAM share one preprocessing path.

    Attributes:
        orientation: ``"RAS"`` reorients to the closest RAS voxel order (then axis 2 is axial); ``None`` keeps it.
        spacing: target spacing in mm, ``None`` keeps the native grid.
        preprocessing: intensity profile (``zscore_nonzero`` as SFR's z-scoring, or ``ct_window``).
        slice_axis: the axis of the model-space array the slices are taken along (2: axial in RAS).
        resize: allow shrinking slices that do not fit the canvas natively (:func:`.stitching.plan_layout`).
    """

    orientation: Optional[str] = "RAS"
    spacing: Optional[Tuple[float, float, float]] = None
    preprocessing: Mapping[str, Any] = field(default_factory=lambda: {"profile": "zscore_nonzero"})
    slice_axis: int = 2
    resize: bool = True

    def __post_init__(self) -> None:
        if self.slice_axis not in (0, 1, 2):
            raise InputError(f"slice_axis must be 0, 1 or 2, got {self.slice_axis}")
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "preprocessing", dict(self.preprocessing))

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["spacing"] = list(self.spacing) if self.spacing is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamInput:
        return cls(**known_fields(cls, data))
