"""Typed records shared by the module logic and the widget.

The files of the engine's job protocol are read with the engine's own records, which check them (one schema, one
validation): ``job.json`` (``ASSFTActive.jobs.JobSpec``), ``result.json`` (``ASSFTActive.jobs.JobResult``, held by
:class:`FinishedJob` with the job folder), ``ranking.json`` (``ASSFTActive.jobs.RankingFile``, shown as the rows of
the ranking table, :class:`RankingRow`), events (``ASSFTActive.progress.Event``), the model card
(``ASSFTActive.cards.ModelCard``). The records here add what only the scene has (table state, node IDs, resolved
paths), camelCase (Slicer side).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ASSFTActive.jobs import JobResult as EngineJobResult
from ASSFTActive.jobs import JobSpec


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
class RankingRow:
    """One row of the ranking table: a ``ranking.json`` entry (``ASSFTActive.jobs.RankingEntry``) as the table
    shows it (missing numbers NaN, an unranked case rank 0, paths resolved) plus its state in the scene."""

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
    reason: str = ""  #: why the engine proposed (or held back) the volume, one line; empty for the others
    ood: str = ""  #: why the volume looks out of distribution; empty when it does not
    wrongRank: int = 0  #: place in "where the model is probably wrong" (1 = most likely wrong); 0 when not listed


@dataclass(frozen=True)
class RankingRows:
    """The content of a ranking table: a ``ranking.json`` read by :func:`ranking.readRanking`, cases ordered by
    rank."""

    strategy: str
    budget: int
    model: str
    cases: Tuple[RankingRow, ...]
    path: Optional[Path] = None
    wrongEvidence: str = ""  #: how well the "probably wrong" order predicted error, and on which split

    def case(self, caseId: str) -> RankingRow:
        for case in self.cases:
            if case.caseId == caseId:
                return case
        raise KeyError(caseId)


@dataclass(frozen=True)
class RegionMarker:
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
    regions: Tuple[RegionMarker, ...]
    path: Optional[Path] = None


@dataclass(frozen=True)
class OutputLine:
    """A line of worker output that is not an engine event (e.g. a traceback on stderr), shown as it is."""

    text: str


@dataclass(frozen=True)
class PreparedJob:
    """A job folder prepared from the scene by :func:`jobFolder.planJob` and :meth:`jobFolder.JobPlan.writeFiles`.

    Attributes:
        jobDir: the folder holding ``job.json``.
        job: what ``job.json`` holds (the engine's :class:`ASSFTActive.jobs.JobSpec`: kind, images, labels, ...).
        caseNodeIds: ``{case_id: volume node ID}`` of the scene volumes written into the job.
        ignoredSegments: ``"<segmentation>: <names>"`` for segments left out because they are not model classes.
        notLabelled: why a painted volume was not taken as labelled (proposed slices / regions, none marked done:
            ``unitProposals.notLabelledReason``).
    """

    jobDir: Path
    job: JobSpec
    caseNodeIds: Dict[str, str]
    ignoredSegments: Tuple[str, ...] = ()
    notLabelled: Tuple[str, ...] = ()


@dataclass(frozen=True)
class FinishedJob:
    """``result.json`` of a finished job (the engine's ``ASSFTActive.jobs.JobResult``, checked by the engine's reader)
    with its job folder, paths resolved against it.

    Attributes:
        jobDir: the job folder.
        record: what the worker wrote.
    """

    jobDir: Path
    record: EngineJobResult

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def modelCard(self) -> Optional[Path]:
        """The card the job used (rank) or the new model version's card (adapt, sfr)."""
        return EngineJobResult.path(self.record.model_card, self.jobDir)

    @property
    def ranking(self) -> Optional[Path]:
        return EngineJobResult.path(self.record.ranking, self.jobDir)

    @property
    def predictions(self) -> Dict[str, Path]:
        return {
            caseId: EngineJobResult.path(path, self.jobDir) for caseId, path in self.record.predictions.items() if path
        }

    @property
    def metrics(self) -> Dict[str, object]:
        return dict(self.record.metrics)

    @property
    def pseudoLabeled(self) -> Tuple[str, ...]:
        """Case ids the adaptation kept as pseudo-labels (empty for rank)."""
        return self.record.pseudo_labeled

    @property
    def activated(self) -> bool:
        """Whether the job made a new model version the active model (False for rank)."""
        return self.record.activated

    @property
    def activationReason(self) -> str:
        """Why the guard did or did not activate it (empty for rank)."""
        return self.record.activation_reason

    @property
    def adaptMethod(self) -> str:
        """How the model was adapted, as the panel names it: ``ASSFT``, ``SFR`` or ``SFR+`` (empty for rank)."""
        if self.kind == "adapt":
            return "ASSFT"
        if self.kind == "sfr":
            return "SFR+" if self.record.metrics.get("method") == "sfr_plus" else "SFR"
        return ""


@dataclass(frozen=True)
class RestoredLabels:
    """Labels read back from the job folders after a restart (``ASSFTSceneLogic.restoreSavedLabels``).

    Attributes:
        volumes: ``{volume node name: label file}`` of the volumes that got their labels back.
        unreadableJobs: job folders whose case list could not be read, so their labels could not be placed.
    """

    volumes: Dict[str, Path] = field(default_factory=dict)
    unreadableJobs: Tuple[Path, ...] = ()

    def statusLine(self) -> str:
        """One line for the panel ("" when nothing was read back and nothing was skipped)."""
        parts = []
        if self.volumes:
            names = ", ".join(sorted(self.volumes))
            parts.append(f"Labels read back from the job folders for {len(self.volumes)} volume(s): {names}.")
        if self.unreadableJobs:
            folders = ", ".join(p.name for p in self.unreadableJobs)
            parts.append(f"Could not read the case list of job folder(s) {folders}; their labels were not read back.")
        return " ".join(parts)


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
