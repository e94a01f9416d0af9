"""``assft evaluate``: Dice and HD95 per class of a model on labelled volumes, printed and written as CSV/Markdown.

Every image with a label file of the same name in ``--labels`` is predicted and scored. A label that does not fit
its image (other grid, classes the model lacks) is skipped with a warning; the table says how many were scored.
The labels go through Adapt's label checks first (:mod:`ASSFTActive.label_checks`): an all-background
label, a painted box, an inverted mask, a one-slice label or an outline, a class far larger than the anatomy's
structure, a label away from or with classes swapped against the model's prediction is skipped with the reason, and
a model class that no label contains (a 0/1 mask for a two-class model) refuses the evaluation, unless
``--allow-implausible-labels``; ``--partial-labels`` accepts partial labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import ProgressBar, add_device_argument, warn_line


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a model (Dice, HD95 per class) on labelled volumes", description=__doc__
    )
    parser.add_argument("--images", required=True, help="folder or glob of volumes")
    parser.add_argument("--labels", required=True, help="folder of label maps named like their images")
    parser.add_argument(
        "--model", default="default", help="model: 'default', a card JSON, or a store folder <store>/<name>[/v<k>]"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for evaluation.csv (per case) and evaluation.md (per class)"
    )
    parser.add_argument("--no-hd95", action="store_true", help="skip the (slower) HD95")
    parser.add_argument(
        "--allow-implausible-labels",
        action="store_true",
        help="score labels the label checks refuse (empty, a box, swapped classes, ...), with a warning each",
    )
    parser.add_argument(
        "--partial-labels",
        action="store_true",
        help="the labels are deliberately partial (some slices, part of a structure)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..evaluate import LabelledCase, evaluate_cases
    from ..io import atomic_write_text, case_id, find_images, match_labels
    from ..label_checks import EvaluationChecks, thresholds_for
    from ..models import load_card, load_model
    from ..partial import NOT_ANNOTATED
    from ..store import resolve_card_path
    from .common import resolve_device

    images = find_images(args.images)
    labels = match_labels(images, args.labels, warn=warn_line)
    if not labels:
        raise InputError(
            f"{args.labels}: no label file is named like an image of {args.images}; name each label "
            "like its image (e.g. case_001.nii.gz in both folders)."
        )
    cases = [LabelledCase(case_id(p), p, labels[case_id(p)]) for p in images if case_id(p) in labels]
    device = resolve_device(args.device)
    card = load_card(resolve_card_path(args.model))
    model = load_model(card, device)
    checks = EvaluationChecks(
        tuple(card.class_names), thresholds_for(card), partial=args.partial_labels, allow=args.allow_implausible_labels
    )
    bar = ProgressBar(enabled=not args.quiet)
    try:
        report = evaluate_cases(
            model, cases, hd95=not args.no_hd95, device=device, progress=bar, skip_unreadable=True, label_checks=checks
        )
    finally:
        bar.close()
    if not report.cases:
        raise InputError(f"none of the {len(cases)} labelled volumes could be scored: {report.skipped[0].reason}")
    skipped = report.skipped
    out = Path(args.out)
    csv_path = atomic_write_text(out / "evaluation.csv", report.to_csv())
    header = (
        f"Model `{card.name}` ({card.path}) on {len(report.cases)} labelled volume(s)"
        + (f"; {len(skipped)} skipped" if skipped else "")
        + "\n\n"
    )
    md_path = atomic_write_text(out / "evaluation.md", header + report.to_markdown())
    print(header + report.to_markdown(), end="")
    partial = [case for case in report.cases if case.not_annotated]
    if partial:  # the value 255 is read as "not annotated", never as a class: say so, a 0/255 mask is common
        print(
            f"\npartial labels, scored on their annotated voxels only: {len(partial)} label file(s) mark voxels as "
            f"not annotated ({NOT_ANNOTATED}): "
            + ", ".join(f"{case.case_id} ({case.not_annotated} voxels)" for case in partial[:8])
            + (", ..." if len(partial) > 8 else "")
        )
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    print(f"\nwrote {csv_path} and {md_path}")
    return 0
