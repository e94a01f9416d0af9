"""The second list: "where the model is probably wrong", every volume ordered by the score that best predicts its error.

Choosing what to label and checking what to trust are two jobs. The query proposes volumes whose labels should
teach the model most; this list orders *all* volumes by class-balanced ASD (the mean over the predicted classes of
the entropy inside each class's dilated predicted region), the per-volume score whose rank correlation with the
pre-trained model's error (1 - Dice) was the highest in the benchmarks. How well it predicts the error is shown
beside the list, read from :data:`ERROR_EVIDENCE_FILE`, a file that
``Testing/Benchmarks/error_predictor_evidence.py`` writes from committed benchmark JSON (never typed by hand); the
file says which split the correlation was measured on.

Standard library only (the Slicer GUI reads the evidence without numpy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .ranking_file import WrongList

__all__ = [
    "ERROR_EVIDENCE_FILE",
    "WRONG_SCORE",
    "ErrorEvidence",
    "load_error_evidence",
    "probably_wrong_list",
    "probably_wrong_order",
]

#: The score the list is ordered by (``CaseEvidence.asd_class_balanced``).
WRONG_SCORE = "asd_class_balanced"

#: Where the measured correlation is kept (shipped with the package).
ERROR_EVIDENCE_FILE = Path(__file__).resolve().parent.parent / "resources" / "query" / "error_predictor.json"


@dataclass(frozen=True)
class ErrorEvidence:
    """How well :data:`WRONG_SCORE` predicts a volume's error, as measured.

    Attributes:
        score: the score's name (:data:`WRONG_SCORE`).
        split: which split the correlations were measured on, in words (e.g. "development split" or "target pool
            of the power profile, not the development split").
        summary: one line for the user interface, e.g. "Spearman +0.69 to +0.92 with the pre-trained model's
            error (4 settings; target pool of the power profile, not the development split)".
        settings: ``(setting, rho, n, source file)`` per measured setting.
    """

    score: str
    split: str
    summary: str
    settings: Tuple[Tuple[str, float, int, str], ...]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "score": self.score,
            "split": self.split,
            "summary": self.summary,
            "settings": [{"setting": s, "spearman_rho": r, "n": n, "source": f} for s, r, n, f in self.settings],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "error evidence") -> ErrorEvidence:
        """Build and check the record.

        Raises:
            ValueError: a missing key or a value of the wrong type (the message names it).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object")
        for key in ("score", "split", "summary"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f'{where}: "{key}" must be a non-empty string')
        rows = data.get("settings")
        if not isinstance(rows, list) or not rows:
            raise ValueError(f'{where}: "settings" must be a non-empty list')
        settings = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError(f'{where}: every entry of "settings" must be a JSON object')
            rho, n = row.get("spearman_rho"), row.get("n")
            if (
                not isinstance(rho, (int, float))
                or isinstance(rho, bool)
                or not math.isfinite(rho)
                or not -1.0 <= rho <= 1.0
                or not isinstance(n, int)
                or n < 3
            ):
                raise ValueError(f'{where}: every setting needs a "spearman_rho" in [-1, 1] and an "n" >= 3')
            settings.append((str(row.get("setting", "")), float(rho), int(n), str(row.get("source", ""))))
        return cls(score=data["score"], split=data["split"], summary=data["summary"], settings=tuple(settings))


def load_error_evidence(path: Optional[Path] = None) -> Optional[ErrorEvidence]:
    """The measured evidence (:data:`ERROR_EVIDENCE_FILE` by default), or ``None`` when the file is absent.

    Raises:
        ValueError: the file exists but is not a valid record (names the file).
    """
    path = Path(path) if path is not None else ERROR_EVIDENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the error-predictor evidence ({exc})") from exc
    return ErrorEvidence.from_dict(data, where=str(path))


def probably_wrong_order(values: Sequence[Tuple[str, float]]) -> List[Tuple[str, float]]:
    """``(case_id, score)`` pairs from the most to the least likely wrong; NaN (not computed) last, in input order.

    Ties keep the input order.
    """
    indexed = list(enumerate(values))
    known = [(i, v) for i, v in indexed if not math.isnan(v[1])]
    unknown = [(i, v) for i, v in indexed if math.isnan(v[1])]
    known.sort(key=lambda item: (-item[1][1], item[0]))
    return [v for _, v in known + unknown]


def probably_wrong_list(
    values: Sequence[Tuple[str, float]], evidence: Optional[ErrorEvidence] = None
) -> Optional[WrongList]:
    """The :class:`~.ranking_file.WrongList` of ``(case_id, class-balanced ASD)`` pairs (NaN: not computed).

    ``evidence`` defaults to :func:`load_error_evidence`; its ``summary`` is the line shown beside the list (empty
    when no evidence file exists: then no number is shown, none is invented). ``None`` when no volume has the
    score (cold start: no segmentation head yet).
    """
    values = list(values)
    if not values or all(math.isnan(v) for _, v in values):
        return None
    evidence = evidence if evidence is not None else load_error_evidence()
    return WrongList(
        score=WRONG_SCORE,
        evidence=evidence.summary if evidence is not None else "",
        cases=tuple(case_id for case_id, _ in probably_wrong_order(values)),
    )
