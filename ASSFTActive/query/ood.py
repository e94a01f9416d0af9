"""Out-of-distribution volumes: flag a volume that is not what the model was made for, and say why in one line.

An input of another modality or body part than the model's training data is the *most uncertain* volume of a pool,
not the most useful one: before this rule the hippocampus MRI model proposed a prostate phantom and an abdominal CT
first (issue 29, item 21). A flagged volume is ranked after every other one and not proposed unless the user asks
(``QueryConfig.propose_ood``); ``ranking.json`` carries the reason (``ood``).

The rule has three parts; a volume is flagged when any holds. The thresholds were set from measurements, not
chosen freely, on the embedded hippocampus model (62 source training volumes), 40 other non-reserved hippocampus
volumes without and with shifts of ``Testing/Benchmarks/harness/shifts.py``, 20 ACDC volumes and the five files of
``../shared/data/fixtures`` (``Testing/Benchmarks/ood_rule.py`` prints the table, ``results/ood_rule.md``;
``Testing/Python/test_query_ood.py`` re-measures the fixtures and a hippocampus sample). "Ratio" is a statistic
divided by its largest value over the source training volumes (leave-one-out for the feature distance):

1. **Feature distance to the source statistics** (:data:`FEATURE_FACTOR` = 1.5): the Euclidean distance of the
   volume's unit pre-trained deepest-stage embedding to the nearest source training volume's, as a ratio.
   Measured maxima over the 40 hippocampus volumes: unshifted 0.86, benchmark mild shift 1.09, harsh 1.24, bias
   field at strength 1.0 1.30, scanner at strength 1.0 1.85; fixtures: MONAI brain MRI 1.83, pyradiomics brain MRI
   1.61, abdominal CT 1.82, breast MRI 1.21, prostate phantom 1.10. Features alone do not separate the phantom and
   the breast from a harshly shifted hippocampus, hence rule 2.
2. **Predicted-anatomy share** (:data:`FOREGROUND_FACTOR` = 1.5): the share of the model-space volume inside the
   dilated predicted foreground (the region ASD averages over), as a ratio to the largest source share (0.125: a
   hippocampus crop is about one tenth hippocampus). Measured maxima: unshifted 0.89, mild 0.89, harsh 1.36, gamma
   at strength 1.0 1.69; fixtures: breast MRI 1.80, prostate phantom 1.89 (the others 0.60-0.90).
3. **Intensity profile against the card's modality** (:data:`CT_AIR_SHARE` = 0.05): a card whose preprocessing is
   the CT window expects Hounsfield units, where air is below -500 (the abdominal CT: 36 % of its voxels); a card
   with the MRI profile (z-score over non-zero voxels) flags a volume with at least 5 % of such voxels as CT (none
   of the MRI volumes above has any), and a CT card flags a volume with none below -500 as not CT.

Outcome: all five fixtures flagged; none of the 40 hippocampus volumes unshifted or under the benchmark's mild and
harsh shifts; at strength 1.0, 2 of 40 under gamma and 3 of 40 under the scanner shift; 4 of 20 ACDC cardiac
volumes (another body part) for the hippocampus model. Benchmarks that rank strongly shifted pools through
``rank_pool`` should set ``QueryConfig.propose_ood`` to keep every volume a candidate.

Rules 1 and 2 need the source statistics (:class:`SourceReference`), a file beside the pre-trained card
(:data:`REFERENCE_FILE`) that ``scripts/make_source_reference.py`` computes from the card's training volumes; a card
without it gets rule 3 only, and the ranking says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

__all__ = [
    "CT_AIR_SHARE",
    "FEATURE_FACTOR",
    "FOREGROUND_FACTOR",
    "REFERENCE_FILE",
    "SourceReference",
    "air_share",
    "card_modality",
    "load_reference",
    "nearest_source_distance",
    "ood_reason",
]

#: Rule 1: flag when the nearest-source feature distance exceeds this multiple of the source's own largest one.
FEATURE_FACTOR = 1.5
#: Rule 2: flag when the predicted-foreground share exceeds this multiple of the source's largest share.
FOREGROUND_FACTOR = 1.5
#: Rule 3: share of voxels below :data:`AIR_HU` that makes a volume CT-like.
CT_AIR_SHARE = 0.05
#: Hounsfield units below which a CT voxel is air (MRI intensities are not negative to this extent).
AIR_HU = -500.0
#: The source statistics' file name, beside the pre-trained card.
REFERENCE_FILE = "source_reference.json"


def card_modality(preprocessing_profile: str) -> str:
    """``"CT"`` for the ``ct_window`` profile, ``"MRI"`` for ``zscore_nonzero`` (the profiles of
    :data:`ASSFTActive.cards.PREPROCESSING_PROFILES`), ``""`` for anything else (no modality rule)."""
    return {"ct_window": "CT", "zscore_nonzero": "MRI"}.get(str(preprocessing_profile), "")


def air_share(array: np.ndarray) -> float:
    """Share of the voxels of ``array`` ``[I, J, K]`` below :data:`AIR_HU` (counted slab by slab, no full copy)."""
    data = np.asarray(array)
    if data.size == 0:
        return 0.0
    below = 0
    for slab in range(data.shape[0]):
        below += int(np.count_nonzero(data[slab] < AIR_HU))
    return below / data.size


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not np.isfinite(norm):
        raise ValueError("an embedding of zeros or non-finite values has no direction; check the encoder features.")
    return vector / norm


def nearest_source_distance(embedding: np.ndarray, source: np.ndarray, exclude: Optional[int] = None) -> float:
    """Euclidean distance of the unit ``embedding`` ``[D]`` to the nearest row of ``source`` ``[S, D]`` (unit rows),
    leaving row ``exclude`` out (leave-one-out)."""
    distances = np.linalg.norm(source - _unit(embedding)[None, :], axis=1)
    if exclude is not None:
        distances = np.delete(distances, exclude)
    return float(distances.min())


@dataclass(frozen=True)
class SourceReference:
    """Statistics of the pre-trained model's own training volumes (rules 1 and 2 of :mod:`.ood`).

    Attributes:
        embeddings: ``[S, D]`` unit pre-trained deepest-stage pooled features of the ``S >= 2`` source volumes.
        nn_distance_max: the largest leave-one-out nearest-neighbour distance among ``embeddings``.
        foreground_share_max: the largest share of a source volume's model-space voxels predicted as foreground.
        cases: the source volumes' case ids (provenance).
    """

    embeddings: np.ndarray
    nn_distance_max: float
    foreground_share_max: float
    cases: tuple = ()

    @classmethod
    def from_volumes(cls, embeddings, foreground_shares, cases=()) -> SourceReference:
        """Compute the reference from the source volumes' embeddings ``[S, D]`` and foreground shares ``[S]``."""
        rows = np.stack([_unit(e) for e in embeddings])
        if rows.shape[0] < 2:
            raise ValueError("the source reference needs at least 2 volumes (a leave-one-out distance).")
        nn = max(nearest_source_distance(rows[i], rows, exclude=i) for i in range(rows.shape[0]))
        return cls(
            embeddings=rows,
            nn_distance_max=float(nn),
            foreground_share_max=float(np.max(np.asarray(foreground_shares, dtype=np.float64))),
            cases=tuple(cases),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "embeddings": np.round(self.embeddings, 6).tolist(),
            "nn_distance_max": self.nn_distance_max,
            "foreground_share_max": self.foreground_share_max,
            "cases": list(self.cases),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "source reference") -> SourceReference:
        """Build and check the record.

        Raises:
            ValueError: a missing key or a value out of range (the message names it and the file).
        """
        try:
            rows = np.asarray(data["embeddings"], dtype=np.float64)
            nn, share = float(data["nn_distance_max"]), float(data["foreground_share_max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f'{where}: needs "embeddings" (a list of vectors), "nn_distance_max" and '
                f'"foreground_share_max" ({exc}); re-create it with '
                "scripts/make_source_reference.py"
            ) from exc
        if rows.ndim != 2 or rows.shape[0] < 2 or not np.all(np.isfinite(rows)):
            raise ValueError(f'{where}: "embeddings" must be at least 2 finite vectors of one length')
        if not (np.isfinite(nn) and nn > 0 and np.isfinite(share) and 0 < share <= 1):
            raise ValueError(f'{where}: "nn_distance_max" must be > 0 and "foreground_share_max" in (0, 1]')
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return cls(embeddings=rows, nn_distance_max=nn, foreground_share_max=share, cases=tuple(data.get("cases", ())))


def load_reference(card_folder: Path) -> Optional[SourceReference]:
    """The :class:`SourceReference` beside a pre-trained card (:data:`REFERENCE_FILE`), or ``None`` when absent.

    Raises:
        ValueError: the file exists but is unreadable or invalid (names the file).
    """
    path = Path(card_folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the source reference ({exc})") from exc
    return SourceReference.from_dict(data, where=str(path))


def ood_reason(
    embedding: np.ndarray, foreground_share: float, air: float, modality: str, reference: Optional[SourceReference]
) -> str:
    """One line saying why a volume looks out of distribution, or ``""`` when no rule holds.

    Args:
        embedding: ``[D]`` the volume's pre-trained deepest-stage pooled feature.
        foreground_share: predicted foreground voxels / model-space voxels, in ``[0, 1]``.
        air: :func:`air_share` of the volume's raw intensities.
        modality: :func:`card_modality` of the card (``""``: no modality rule).
        reference: the source statistics, or ``None`` (then only rule 3 applies).
    """
    reasons = []
    if modality == "MRI" and air >= CT_AIR_SHARE:
        reasons.append(f"looks like CT ({100 * air:.0f} % of voxels below {AIR_HU:.0f} HU) but the model takes MRI")
    elif modality == "CT" and air == 0.0:
        reasons.append(f"no voxel below {AIR_HU:.0f}: not a CT in Hounsfield units, which the model takes")
    if reference is not None:
        if np.asarray(embedding).size != reference.embeddings.shape[1]:
            raise ValueError(
                f"the source reference holds {reference.embeddings.shape[1]}-long embeddings but the "
                f"model gives {np.asarray(embedding).size}; re-create {REFERENCE_FILE} for this card "
                "with scripts/make_source_reference.py"
            )
        ratio = nearest_source_distance(embedding, reference.embeddings) / reference.nn_distance_max
        if ratio > FEATURE_FACTOR:
            reasons.append(
                f"unlike every volume the model was trained on (feature distance {ratio:.1f}x the largest among them)"
            )
        share = foreground_share / reference.foreground_share_max
        if share > FOREGROUND_FACTOR:
            reasons.append(
                f"the model marks {100 * foreground_share:.0f} % of it as anatomy, at most "
                f"{100 * reference.foreground_share_max:.0f} % in its training volumes"
            )
    return "out of distribution: " + "; ".join(reasons) if reasons else ""
