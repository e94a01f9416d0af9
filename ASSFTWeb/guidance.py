"""The page's one-line "next step": what the annotator does now in the round (rank -> annotate the proposed volumes
-> save -> adapt), read from where the round stands. Plain text, no trame."""

from __future__ import annotations

from typing import Mapping, Sequence

from ASSFTModuleLib.guidance import outOfDistributionNote


def next_step(
    rows: Sequence[Mapping],
    job_running: bool,
    job_kind: str = "",
    failed: bool = False,
    annotated: str = "",
    painted_voxels: int = 0,
    saved: bool = False,
    can_train_anyway: bool = False,
    unit: str = "volume",
) -> str:
    """One line saying what to do next.

    Args:
        rows: the ranking table's rows (dicts with ``volume`` and ``state``); empty before the first Rank.
        job_running: a job runs; ``job_kind`` is its kind (``rank``, ``adapt``, ``sfr``).
        failed: the last job failed; ``can_train_anyway``: it was refused by the label checks.
        annotated: the volume open in the segment editor (empty: none); ``painted_voxels`` its labelled voxels;
            ``saved``: they were saved since the last change.
        unit: what Rank proposes (``volume``, ``slice``, ``region``): with slices or regions the annotator steps with
            Next proposed slice / region, paints there and presses Mark done before Save labels.
    """
    if job_running:
        what = "ranking the pool" if job_kind == "rank" else "adapting the model"
        return f"Wait while the server is {what} (the bar shows how far it is), or press Cancel."
    if can_train_anyway:
        return "Fix the labels the checks refused (Annotate, then Save labels), or press Train anyway."
    if failed:
        return "The job failed: read the message and the worker's last lines above, fix the cause, then try again."
    if not rows:
        return "Next: press Rank Volumes to score every volume of the pool and propose the ones to label."
    proposed = [r["volume"] for r in rows if r.get("state") == "proposed"]
    labeled = [r["volume"] for r in rows if r.get("state") == "labeled"]
    if annotated and unit != "volume" and not saved:
        return (
            f"Next: press Next proposed {unit} to go to a {unit} of {annotated} the ranking proposed, paint (or "
            f"correct) it, press Mark done, repeat, then Save labels (only the {unit}s marked done count)."
        )
    if annotated and painted_voxels and not saved:
        return f"Next: paint every class of {annotated} (pick the class in the segment list), then Save labels."
    if annotated and not painted_voxels:
        return (
            f"Next: paint {annotated} in the slice views (pick the class in the segment list on the left), "
            "then Save labels."
        )
    if proposed and unit != "volume":
        return (
            f"Next: click an orange (proposed) row such as {proposed[0]}, press Annotate, then Next proposed "
            f"{unit} and Mark done for each proposed {unit}, then Save labels."
        )
    if proposed:
        first = proposed[0]
        return (
            f"Next: click an orange (proposed) row such as {first}, press Annotate, paint each class, then "
            f"Save labels ({len(proposed)} proposed volume{'s' if len(proposed) != 1 else ''} left)."
        )
    if labeled:
        return (
            f"Next: press Adapt Model to fine-tune on the {len(labeled)} labelled volume"
            f"{'s' if len(labeled) != 1 else ''}; the pool is re-ranked afterwards."
        )
    held_back = held_back_reasons(rows)
    if held_back and not annotated:  # ranking again would change nothing
        return outOfDistributionNote(held_back, len(rows), proposed=0)
    return "Next: pick a row, press Annotate and label it, then Save labels and Adapt Model."


def held_back_reasons(rows: Sequence[Mapping]) -> tuple:
    """The ``ood`` reasons of the rows the ranking held back as out of distribution (flagged, not proposed, not
    labelled)."""
    return tuple(r["ood"] for r in rows if r.get("ood") and r.get("state") not in ("proposed", "labeled"))
