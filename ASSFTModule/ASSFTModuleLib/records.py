"""Typed records shared by the module logic and the widget.

They mirror the files of the engine's job protocol (``ranking.json``, regions JSON, ``result.json``, JSON-line
events); the readers in :mod:`ranking`, :mod:`regions` and :mod:`jobs` build them. Field names are camelCase
(Slicer side); the JSON keys they come from are snake_case (engine side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np


class CaseState:
    """Annotation state of a volume, as shown in the ranking table."""

    UNLABELED = "unlabeled"
    PROPOSED = "proposed"
    LABELED = "labeled"
    PSEUDO_LABELED = "pseudo-labeled"

    ALL = (UNLABELED, PROPOSED, LABELED, PSEUDO_LABELED)

    @staticmethod
    def of(labeled: bool, pseudoLabeled: bool, selected: bool) -> str:
        """The state shown for a case: labeled, else proposed (what to annotate next), else pseudo-labeled."""
        if labeled:
            return CaseState.LABELED
        if selected:
            return CaseState.PROPOSED
        if pseudoLabeled:
            return CaseState.PSEUDO_LABELED
        return CaseState.UNLABELED


@dataclass(frozen=True)
class ModelCard:
    """The parts of a model card the module needs.

    Attributes:
        name: model name shown to the user.
        classNames: class names, index 0 is background.
        path: the card file.
    """

    name: str
    classNames: Tuple[str, ...]
    path: Optional[Path] = None

    @property
    def foregroundClassNames(self) -> Tuple[str, ...]:
        """Class names without background: one segment each."""
        return self.classNames[1:]

    def classIndex(self, name: str) -> Optional[int]:
        """Class index of a segment name (exact match after stripping spaces), None when unknown."""
        try:
            return self.classNames.index(name.strip())
        except ValueError:
            return None


@dataclass(frozen=True)
class RankedCase:
    """One row of ``ranking.json``."""

    caseId: str
    image: Optional[Path]
    dkd: float
    asd: float
    score: float
    rank: int
    selected: bool
    labeled: bool
    pseudoLabeled: bool = False
    entropyMap: Optional[Path] = None
    regions: Optional[Path] = None
    prediction: Optional[Path] = None


@dataclass(frozen=True)
class Ranking:
    """A whole ``ranking.json``: cases ordered by rank."""

    strategy: str
    budget: int
    model: str
    cases: Tuple[RankedCase, ...]
    path: Optional[Path] = None

    def case(self, caseId: str) -> RankedCase:
        for case in self.cases:
            if case.caseId == caseId:
                return case
        raise KeyError(caseId)


@dataclass(frozen=True)
class Region:
    """One high-entropy region (connected component of the thresholded entropy map)."""

    centerRas: Tuple[float, float, float]
    bboxIjkMin: Tuple[int, int, int]
    bboxIjkMax: Tuple[int, int, int]
    volumeMm3: float
    meanEntropy: float
    voxelCount: int

    def describe(self, index: int) -> str:
        """Plain one-line description, e.g. ``R1: 120.0 mm3, mean entropy 0.62 at (1.0, -2.0, 3.0)``."""
        r, a, s = self.centerRas
        return (
            f"R{index + 1}: {self.volumeMm3:.1f} mm3, mean entropy {self.meanEntropy:.2f} "
            f"at ({r:.1f}, {a:.1f}, {s:.1f})"
        )


@dataclass(frozen=True)
class RegionSet:
    """A regions JSON file: the regions of one case, most important first."""

    caseId: str
    threshold: float
    regions: Tuple[Region, ...]
    path: Optional[Path] = None


@dataclass(frozen=True)
class JobEvent:
    """One JSON line printed by the worker (``event`` is progress, metric, phase, warning, error or done).

    Lines that are not JSON events become ``event == "log"`` with the raw text as message.
    """

    event: str
    phase: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    metrics: Dict[str, float] = field(default_factory=dict)
    time: float = 0.0

    @property
    def isFinal(self) -> bool:
        """The worker's last line: ``done`` or ``error``."""
        return self.event in ("done", "error")

    @property
    def fraction(self) -> Optional[float]:
        """Progress within the current phase in [0, 1], or None when the event carries no step/total."""
        if self.total and self.total > 0:
            return min(max(self.step / self.total, 0.0), 1.0)
        return None


@dataclass(frozen=True)
class JobSpec:
    """A job folder prepared by :func:`jobs.prepareJob`.

    Attributes:
        jobDir: the folder holding ``job.json``.
        kind: ``rank`` or ``adapt``.
        caseNodeIds: ``{case_id: volume node ID}`` of the scene volumes written into the job.
        images: ``{case_id: image path}`` as written in ``job.json``.
        labels: ``{case_id: class label map path}`` for the labeled cases.
    """

    jobDir: Path
    kind: str
    caseNodeIds: Dict[str, str]
    images: Dict[str, Path]
    labels: Dict[str, Path]


@dataclass(frozen=True)
class JobResult:
    """``result.json`` of a finished job, paths resolved.

    Attributes:
        modelCard: the card the job used (rank) or the new model version's card (adapt).
        activated: for adapt, whether the new version became the active model (``metrics.activated``).
        pseudoLabeled: case ids the adaptation used as pseudo-labels.
    """

    status: str
    kind: str
    jobDir: Path
    modelCard: Optional[Path]
    ranking: Optional[Path]
    predictions: Dict[str, Path]
    metrics: Dict[str, object]
    pseudoLabeled: Tuple[str, ...] = ()
    activated: bool = True


@dataclass(frozen=True)
class LabelConversion:
    """A segmentation converted to a class-index label map on its volume's grid.

    Attributes:
        labels: ``[I, J, K]`` uint8/int16 class indices (engine order, see ``ASSFTActive.io.Volume``).
        affine: ``[4, 4]`` voxel -> RAS of ``labels`` (equals the volume's IJKToRAS).
        voxelCounts: voxels per foreground class name (0 for classes without a segment or empty ones).
        unknownSegments: segment names that are not classes of the model (they are left out of ``labels``).
    """

    labels: np.ndarray
    affine: np.ndarray
    voxelCounts: Dict[str, int]
    unknownSegments: Tuple[str, ...]

    @property
    def isLabeled(self) -> bool:
        """At least one non-empty segment is named after a model class."""
        return any(count > 0 for count in self.voxelCounts.values())


@dataclass(frozen=True)
class DeviceInfo:
    """Where the worker will compute, as reported by a probe process (the GUI never imports torch)."""

    kind: str
    name: str = ""
    torchVersion: str = ""
    message: str = ""

    def describe(self) -> str:
        if self.kind == "GPU":
            return f"GPU ({self.name})" if self.name else "GPU"
        if self.kind == "CPU":
            return "CPU"
        return f"unknown ({self.message})" if self.message else "unknown"
