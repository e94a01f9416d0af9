"""Refuse labels that would train a model on nothing or on the wrong structure, before any training starts.

An all-background label file (an export that lost its segments, a mask saved before painting) trains a model that
predicts nothing; a class that no labelled volume contains (a 0/1 mask of another structure given to a model with
two foreground classes) teaches the network to forget that class. Both look like ordinary label files, so they are
caught here, by looking at what the labelled set contains, and reported with the case names:

* **no foreground**: a label with only background voxels;
* **class never labelled**: a foreground class of the model that no labelled volume contains.

``FinetuneConfig.allow_implausible_labels`` (``assft adapt --allow-implausible-labels``) turns the refusal into a
warning for the rare case where this is intended (e.g. healthy volumes with truly nothing to segment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..plausibility import check_image

__all__ = ["LabelIssue", "find_label_issues", "require_plausible_labelled_set", "require_plausible_labels"]


@dataclass(frozen=True)
class LabelIssue:
    """One reason to distrust the labelled set.

    Attributes:
        kind: ``"no_foreground"`` or ``"class_never_labelled"``.
        cases: the labelled volumes concerned (for ``class_never_labelled``: every labelled volume).
        class_name: the class concerned, or ``None``.
        message: a sentence a user can act on.
    """

    kind: str
    cases: Tuple[str, ...]
    class_name: Optional[str]
    message: str


def find_label_issues(labels: Mapping[str, np.ndarray], class_names: Sequence[str]) -> List[LabelIssue]:
    """What looks wrong in a labelled set.

    Args:
        labels: ``{case_id: class-index label map [I, J, K]}`` of every labelled volume.
        class_names: the model's classes, background first.

    Returns:
        the issues, empty-label cases first, then classes in class order.
    """
    issues: List[LabelIssue] = []
    present = {case: set(int(v) for v in np.unique(np.asarray(array))) for case, array in labels.items()}
    empty = tuple(sorted(case for case, values in present.items() if not values - {0}))
    if empty:
        issues.append(LabelIssue("no_foreground", empty, None, (
            f"{len(empty)} label file(s) contain only background: {', '.join(empty)}. Training on them teaches the "
            "model to predict nothing.")))
    labelled = [values for case, values in present.items() if case not in empty]
    if labelled:
        for index, name in enumerate(class_names[1:], start=1):
            if not any(index in values for values in labelled):
                issues.append(LabelIssue("class_never_labelled", tuple(sorted(present)), name, (
                    f"class {name!r} (value {index}) appears in none of the {len(present)} labelled volume(s) "
                    f"({', '.join(sorted(present)[:8])}{', ...' if len(present) > 8 else ''}); the labels may be of "
                    "another structure or use other class values than the model card.")))
    return issues


def require_plausible_labels(labels: Mapping[str, np.ndarray], class_names: Sequence[str], allow: bool,
                             warn: Optional[Callable[[str], None]] = None) -> List[LabelIssue]:
    """Raise on implausible labels unless ``allow``; then each issue is passed to ``warn`` instead.

    Raises:
        InputError: an issue was found and ``allow`` is false; the message lists every issue and how to proceed.
    """
    issues = find_label_issues(labels, class_names)
    if issues and not allow:
        raise InputError(
            "the labels look wrong, so the model was not adapted: " + " ".join(i.message for i in issues)
            + " Fix the label files (or the model card's class_names), or pass --allow-implausible-labels "
            "(FinetuneConfig.allow_implausible_labels) if this is intended."
        )
    for issue in issues:
        if warn is not None:
            warn(f"training on implausible labels (allowed): {issue.message}")
    return issues


def require_plausible_labelled_set(cases: Sequence[Any], class_names: Sequence[str], allow: bool,
                                   warn: Optional[Callable[[str], None]] = None) -> List[LabelIssue]:
    """The checks of adaptation's labelled set: every image plausible, then the labels.

    Args:
        cases: records with ``case_id``, ``image`` and ``label`` (:class:`~ASSFTActive.io.Volume`) attributes.
        class_names, allow, warn: as in :func:`require_plausible_labels`.

    Raises:
        InputError: an implausible image (:func:`ASSFTActive.plausibility.check_image`, never allowed), or
            implausible labels when ``allow`` is false.
    """
    for case in cases:
        check_image(case.image)
    return require_plausible_labels({c.case_id: np.asarray(c.label.array) for c in cases}, class_names, allow, warn)
