"""What the panel and the browser say around the buttons: the one next step, and the legend of the table, the chart,
the overlay and the class colours (plain text and RGB; each UI formats it).

No Qt here and no HTML: the scene is read through the ranking table only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from . import plot, ranking
from .records import CaseState
from .segmentation import classColor

#: What the columns and the score mean (the table's header tooltips and the legend).
COLUMN_HELP = (
    (
        "DKD",
        "knowledge divergence: how far this volume's features are from what the model learned (higher: newer "
        "to the model)",
    ),
    (
        "ASD",
        "anatomical segmentation difficulty: how unsure the model is about the structure's boundary (higher: harder)",
    ),
    (
        "Score",
        "the combined value when the volume was picked among those still left; rows are in pick order, so "
        "scores of different rows are not comparable",
    ),
)


@dataclass(frozen=True)
class LegendEntry:
    """One line of a legend.

    Attributes:
        label: the name shown (a state, a series, a class).
        text: what it means, one plain sentence.
        color: RGB in [0, 1], or None when the entry has no colour (a column).
    """

    label: str
    text: str
    color: Optional[Tuple[float, float, float]] = None


def legend(classNames: Sequence[str] = ()) -> Tuple[LegendEntry, ...]:
    """The legend of the ranking table (states and columns), the DKD-against-ASD chart, the entropy overlay and the
    class colours (``classNames``: the model's classes, background first)."""
    entries = [
        LegendEntry(CaseState.PROPOSED, "annotate these next (the ranking picked them)", plot.PROPOSED_COLOR),
        LegendEntry(CaseState.LABELED, "has your labels; Adapt Model trains on it"),
        LegendEntry(CaseState.PSEUDO_LABELED, "the model's own labels were reliable enough to train on"),
        LegendEntry(CaseState.UNLABELED, "not needed this round"),
    ]
    entries += [LegendEntry(name, text) for name, text in COLUMN_HELP]
    entries += [
        LegendEntry("All volumes", "chart: every volume of the pool, DKD against ASD", plot.ALL_COLOR),
        LegendEntry("Proposed", "chart: the proposed volumes", plot.PROPOSED_COLOR),
        LegendEntry(
            "Overlay", "dark red to yellow: where the model is unsure (entropy above the threshold)", (0.9, 0.6, 0.1)
        ),
    ]
    entries += [
        LegendEntry(name, f"class {index}", classColor(index)) for index, name in enumerate(classNames) if index > 0
    ]
    return tuple(entries)


#: The engine's prefix of a volume's out-of-distribution reason (``ASSFTActive.query.ood``), left out when quoted.
_OOD_PREFIX = "out of distribution: "


def outOfDistributionNote(reasons: Sequence[str], total: int, proposed: int, brief: bool = False) -> str:
    """What the ranking held back as out of distribution for the model (``ranking.json``'s ``ood``), with what to do;
    "" when nothing was held back. The next step of both UIs gives the whole note when the ranking left nothing
    proposed (a CT pool ranked with an MRI model: ranking again changes nothing); the status line and the browser's
    caption give the brief one, so that the page does not say the same paragraph three times.

    Args:
        reasons: the ``ood`` reason of every unlabelled volume that was flagged and not proposed.
        total: the volumes ranked.
        proposed: the volumes proposed.
        brief: one short sentence pointing to the Why column.
    """
    if not reasons:
        return ""
    count = f"{len(reasons)} of {total} volume{'s' if total != 1 else ''}"
    if brief:
        return f"{count} not proposed: out of distribution for this model (see the Why column)."
    first = reasons[0][len(_OOD_PREFIX) :] if reasons[0].startswith(_OOD_PREFIX) else reasons[0]
    if proposed:
        return f"{count} not proposed: out of distribution for this model (e.g. {first}); see the Why column."
    return (
        f"No volume proposed: {count} look out of distribution for this model (e.g. {first}). Load volumes like "
        "those the model was trained on, or choose a model made for these; to label one anyway, click its row and "
        "press Annotate."
    )


def labelCheckLine(volumeName: str, issues: Sequence[str]) -> str:
    """The status line when the labels of a volume come back from the Segment Editor and the engine's label checks
    (:meth:`~.logic.ASSFTSceneLogic.labelIssues`) flag them: what is wrong and what to do about it, in the panel, not
    13 s into Adapt Model. "" when nothing is flagged."""
    if not issues:
        return ""
    return (
        f"Check the labels of {volumeName}: {' '.join(issues)} Press Annotate and paint every class of the model "
        "(pick the class in the segment list), or keep them as they are: Adapt Model will then refuse them and "
        "offer Train anyway."
    )


def heldBackReasons(cases: Sequence) -> Tuple[str, ...]:
    """The ``ood`` reasons of the ranking rows (:class:`~.records.RankingRow`) flagged, not proposed, not labelled."""
    return tuple(case.ood for case in cases if case.ood and not case.selected and not case.labeled)


def nextStep(tableNode=None, running: bool = False, writing: bool = False) -> str:
    """The one next step of the round, rank -> annotate the proposed -> Adapt Model, from the ranking table.

    Args:
        tableNode: the ranking table (None before the first Rank Volumes).
        running: a job runs.
        writing: the job's volumes are still being written.
    """
    if writing:
        return "Writing the volumes for the job; the job starts when they are written (Cancel stops it)."
    if running:
        return "Wait for the job to finish; the bar shows the time left (Cancel stops it, nothing is changed)."
    if tableNode is None or tableNode.GetNumberOfRows() == 0:
        return "Next: press Rank Volumes to find the volumes most worth annotating."
    cases = [ranking.rankedCaseFromTable(tableNode, row)[0] for row in range(tableNode.GetNumberOfRows())]
    states = [CaseState.of(case.labeled, case.pseudoLabeled, case.selected) for case in cases]
    proposed = states.count(CaseState.PROPOSED)
    labeled = states.count(CaseState.LABELED)
    if proposed:
        return (
            f"Next: click a proposed row ({proposed} left), press Annotate and paint every class, then come back "
            + ("and press Adapt Model." if labeled else "here.")
        )
    if labeled:
        return f"Next: press Adapt Model to fine-tune the model on your {labeled} labelled volume(s)."
    heldBack = heldBackReasons(cases)
    if heldBack:  # ranking again would change nothing
        return outOfDistributionNote(heldBack, len(cases), proposed=0)
    return "Next: press Rank Volumes again (no volume is proposed or labelled)."
