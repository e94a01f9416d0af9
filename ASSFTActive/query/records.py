"""Typed records of the query step: the evidence about one case, and the ranking of a pool.

Values that a strategy could not compute are ``float('nan')`` in the records. A :class:`Ranking` is the in-memory
result of :func:`~.selection.select`; it has no JSON form of its own: on disk a ranking is
:class:`ASSFTActive.jobs.RankingFile` (``ranking.json``, the one schema, with ``null`` for NaN), built from it by
:func:`ASSFTActive.api.ranking_file`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["CaseEvidence", "RankedCase", "Ranking"]


def _frozen_vector(value: Any, what: str, allow_empty: bool = False) -> np.ndarray:
    vector = np.array(value, dtype=np.float64)  # always a copy: the record must not alias caller memory
    if vector.ndim != 1 or (vector.size == 0 and not allow_empty):
        raise ValueError(f"{what} must be a non-empty vector [D], got shape {vector.shape}.")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"{what} contains NaN or infinite values.")
    vector.setflags(write=False)
    return vector


def _number(value: Any, what: str, allow_nan: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{what} must be a number, got {value!r}.")
    number = float(value)
    if math.isnan(number) and allow_nan:
        return number
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}.")
    return number


def _json_float(value: float) -> Optional[float]:
    return None if math.isnan(value) else float(value)


def _from_json_float(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True, eq=False)
class CaseEvidence:
    """Everything the selectors need about one unlabeled volume (built by :func:`~.evidence.summarize_case`).

    Attributes:
        case_id: the volume's name (unique within a pool).
        knowledge_divergence: raw KD (method-spec.md §1.4b), >= 0; 0 when the encoders are identical.
        asd: raw ASD in ``[0, 1]`` (method-spec.md §1.5); NaN when no segmentation head exists yet (cold start).
        mean_entropy: whole-volume mean normalised entropy in ``[0, 1]``; NaN at cold start.
        pretrained_embedding: ``[D]`` pooled deepest-stage feature of the frozen pre-trained encoder.
        current_embedding: ``[D]`` the same for the current (adapted) encoder.
        clasp_scores: ``[C]`` from :func:`~.scores.clasp_class_scores`; empty ``[0]`` at cold start.
        epistemic: MC-dropout score (:func:`~.scores.mc_dropout_epistemic`), when computed.
        mutual_information: BALD score (:func:`~.scores.bald_mutual_information`), when computed.
        foreground_voxels: ``|M|``, voxels (in model space) of the dilated predicted foreground that ASD averages
            over (:class:`~.regions.RegionSums`); NaN at cold start. Used by ``fg_random``.
        asd_class_balanced: ASD with ``asd_reduce="class_balanced"`` whatever the query's setting (the score of the
            "where the model is probably wrong" list, :func:`~.wrong.probably_wrong`); NaN at cold start.
        ood_reason: empty when the volume looks like what the model was made for; otherwise one line saying why
            it is flagged as out of distribution (:mod:`.ood`). Flagged volumes are not proposed unless
            ``QueryConfig.propose_ood``.

    Arrays are stored as read-only ``float64`` copies. Records compare by identity (they hold arrays).
    """

    case_id: str
    knowledge_divergence: float
    asd: float
    mean_entropy: float
    pretrained_embedding: np.ndarray
    current_embedding: np.ndarray
    clasp_scores: np.ndarray
    epistemic: Optional[float] = None
    mutual_information: Optional[float] = None
    foreground_voxels: float = float("nan")
    asd_class_balanced: float = float("nan")
    ood_reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id:
            raise ValueError(f"case_id must be a non-empty string, got {self.case_id!r}.")
        where = f"case {self.case_id!r}"
        kd = _number(self.knowledge_divergence, f"{where}: knowledge_divergence")
        if kd < 0:
            raise ValueError(f"{where}: knowledge_divergence must be >= 0, got {kd}.")
        set_ = object.__setattr__
        set_(self, "knowledge_divergence", kd)
        for name in ("asd", "mean_entropy", "asd_class_balanced"):
            value = _number(getattr(self, name), f"{where}: {name}", allow_nan=True)
            if not math.isnan(value) and not 0.0 <= value <= 1.0 + 1e-6:
                raise ValueError(f"{where}: {name} must lie in [0, 1], got {value}.")
            set_(self, name, value)
        set_(self, "pretrained_embedding", _frozen_vector(self.pretrained_embedding, f"{where}: pretrained_embedding"))
        set_(self, "current_embedding", _frozen_vector(self.current_embedding, f"{where}: current_embedding"))
        clasp = _frozen_vector(self.clasp_scores, f"{where}: clasp_scores", allow_empty=True)
        if np.any(clasp < 0):
            raise ValueError(f"{where}: clasp_scores must be >= 0.")
        set_(self, "clasp_scores", clasp)
        if self.epistemic is not None:
            set_(self, "epistemic", _number(self.epistemic, f"{where}: epistemic"))
        if self.mutual_information is not None:
            mi = _number(self.mutual_information, f"{where}: mutual_information")
            if mi < 0:
                raise ValueError(f"{where}: mutual_information must be >= 0, got {mi}.")
            set_(self, "mutual_information", mi)
        size = _number(self.foreground_voxels, f"{where}: foreground_voxels", allow_nan=True)
        if size < 0:
            raise ValueError(f"{where}: foreground_voxels must be >= 0, got {size}.")
        set_(self, "foreground_voxels", size)
        if not isinstance(self.ood_reason, str):
            raise ValueError(f"{where}: ood_reason must be a string, got {self.ood_reason!r}.")

    @property
    def out_of_distribution(self) -> bool:
        """True when :mod:`.ood` flagged the volume (``ood_reason`` says why)."""
        return bool(self.ood_reason)

    @property
    def has_probabilities(self) -> bool:
        """False at cold start, when the case was summarised without a segmentation posterior."""
        return not math.isnan(self.asd)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (arrays as lists, NaN as ``None``)."""
        return {
            "case_id": self.case_id,
            "knowledge_divergence": self.knowledge_divergence,
            "asd": _json_float(self.asd),
            "mean_entropy": _json_float(self.mean_entropy),
            "pretrained_embedding": self.pretrained_embedding.tolist(),
            "current_embedding": self.current_embedding.tolist(),
            "clasp_scores": self.clasp_scores.tolist(),
            "epistemic": self.epistemic,
            "mutual_information": self.mutual_information,
            "foreground_voxels": _json_float(self.foreground_voxels),
            "asd_class_balanced": _json_float(self.asd_class_balanced),
            "ood_reason": self.ood_reason,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> CaseEvidence:
        """Inverse of :meth:`to_dict`."""
        return cls(
            case_id=data["case_id"],
            knowledge_divergence=data["knowledge_divergence"],
            asd=_from_json_float(data["asd"]),
            mean_entropy=_from_json_float(data["mean_entropy"]),
            pretrained_embedding=np.asarray(data["pretrained_embedding"], dtype=np.float64),
            current_embedding=np.asarray(data["current_embedding"], dtype=np.float64),
            clasp_scores=np.asarray(data["clasp_scores"], dtype=np.float64),
            epistemic=data.get("epistemic"),
            mutual_information=data.get("mutual_information"),
            foreground_voxels=_from_json_float(data.get("foreground_voxels")),
            asd_class_balanced=_from_json_float(data.get("asd_class_balanced")),
            ood_reason=data.get("ood_reason", ""),
        )


@dataclass(frozen=True)
class RankedCase:
    """One row of a ranking.

    Attributes:
        case_id: the volume.
        dkd: ``DKD = KD~ * Div`` of this case given the labeled set and every case ranked before it; for the
            ``assft`` strategies this is the DKD at the moment the greedy query picked it (method-spec.md §1.4c).
        asd: raw ASD of the case (NaN at cold start).
        score: the key the strategy ranked this case by when it was ranked (higher = picked earlier); its
            meaning depends on the strategy, see :func:`~.selection.select`.
        rank: 1 = first pick.
        selected: True for the first ``budget`` ranks.
        reason: one line saying why the case was proposed (e.g. "most typical of a group of 9 similar volumes"),
            or why an out-of-distribution case was held back; empty for the other cases.
    """

    case_id: str
    dkd: float
    asd: float
    score: float
    rank: int
    selected: bool
    reason: str = ""


@dataclass(frozen=True)
class Ranking:
    """A full ordering of the candidate pool by one strategy; the first ``budget`` cases are selected.

    Attributes:
        strategy: the strategy's name (a :class:`~.config.Strategy` value).
        budget: the requested number of cases (may exceed the pool; then every case is selected).
        cases: every candidate, ordered by rank (rank 1 first).
        asd_unavailable: why no case has an ASD (cold start: the model has no trained segmentation head, so the
            pool was ranked by DKD's diversity alone; :func:`~.selection.cold_start`), or ``""``.
    """

    strategy: str
    budget: int
    cases: Tuple[RankedCase, ...]
    asd_unavailable: str = ""

    @property
    def selected_ids(self) -> Tuple[str, ...]:
        """Case ids to annotate, in pick order."""
        return tuple(case.case_id for case in self.cases if case.selected)
