"""``assft rank``: score a pool of volumes by DKD and ASD and propose a budget of them for annotation."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..query.config import Strategy
from .common import ProgressBar, add_device_argument, add_model_argument, resolve_device, warn_line

#: ``--strategy`` choices: the :class:`~ASSFTActive.query.Strategy` values.
STRATEGIES = tuple(s.value for s in Strategy)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "rank", help="rank volumes for annotation (DKD + ASD) and write overlays", description=__doc__
    )
    parser.add_argument("--images", required=True, help="folder or glob of NIfTI/NRRD/MetaImage volumes")
    parser.add_argument("--labels", help="folder of existing labels; volumes with a label count as labeled")
    add_model_argument(parser)
    parser.add_argument(
        "--budget",
        type=int,
        required=True,
        help="how many volumes to propose (with --unit slice|region: how many slices or regions); "
        "with --rounds R > 1 the total over the R rounds",
    )
    parser.add_argument(
        "--unit",
        choices=("volume", "slice", "region"),
        default="volume",
        help="what to propose: whole volumes (default), single slices, or boxes of --region-size "
        "voxels where the model is unsure, spread over the pool (ranking.json lists each "
        "volume's proposed_slices / proposed_regions on the image's own voxel grid)",
    )
    parser.add_argument(
        "--slice-axis",
        type=int,
        choices=(0, 1, 2),
        help="with --unit slice: the image file's voxel axis to slice (default: its coarsest-spacing axis)",
    )
    parser.add_argument(
        "--region-size",
        type=int,
        nargs=3,
        default=(32, 32, 32),
        metavar=("I", "J", "K"),
        help="with --unit region: a region's size in voxels of the image grid (default 32 32 32)",
    )
    parser.add_argument(
        "--min-gap",
        type=int,
        default=3,
        help="with --unit slice: slices proposed in one volume are at least this many apart (default 3)",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default=Strategy.ASSFT.value, help="selection strategy")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="multi-round test-time query: spread --budget over R rounds with Adapt Model between "
        "them; each call proposes the current round's share, the round being read from how "
        "many pool volumes are labelled (default 1: the whole budget at once)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random strategies")
    parser.add_argument(
        "--propose-ood",
        action="store_true",
        help="propose volumes flagged as out of distribution (another modality or body part than the "
        "model's training data) like any other; by default they are ranked last, not proposed",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-overlays", action="store_true", help="write only the ranking, no overlays")
    parser.add_argument("--feature-cache", type=Path, help="folder caching the pre-trained encoder's features")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import rank_pool, round_plan
    from ..errors import InputError
    from ..io import case_id, find_images, match_labels
    from ..partial import NOT_ANNOTATED, has_annotation
    from ..query import QueryConfig
    from ..query.units import UnitConfig
    from ..store import resolve_card

    images = find_images(args.images)
    card = resolve_card(args.model)
    labeled = []
    for case, path in sorted(match_labels(images, args.labels, warn=warn_line).items()):
        if has_annotation(path, card.num_classes):
            labeled.append(case)
        else:  # every voxel 255: nobody annotated it, so the volume stays in the pool
            warn_line(
                f"{path}: every voxel is marked not annotated ({NOT_ANNOTATED}); {case} is not a labelled "
                "volume and stays a candidate."
            )
    try:
        query = QueryConfig(strategy=args.strategy, seed=args.seed, rounds=args.rounds, propose_ood=args.propose_ood)
    except ValueError as exc:  # e.g. --rounds 0 or a negative --seed
        raise InputError(f"{exc} (--strategy, --seed, --rounds)") from exc
    try:
        units = UnitConfig(
            unit=args.unit, axis=args.slice_axis, region_size=tuple(args.region_size), min_gap=args.min_gap
        )
    except ValueError as exc:  # e.g. --region-size 0 4 4 or --min-gap 0
        raise InputError(f"{exc} (--unit, --slice-axis, --region-size, --min-gap)") from exc
    candidates = len(images) - len(labeled)
    if args.unit == "volume" and args.budget > candidates:
        warn_line(
            f"--budget {args.budget} is more than the {candidates} unlabelled volume(s) in the pool; every one of "
            "them is proposed."
        )
    bar = ProgressBar(enabled=not args.quiet, kind="rank", volumes=len(images))
    with bar.job():
        result = rank_pool(
            images,
            card,
            args.budget,
            args.out,
            labeled_ids=labeled,
            query=query,
            device=resolve_device(args.device),
            feature_cache=args.feature_cache,
            write_outputs=not args.no_overlays,
            progress=bar,
            units=units,
        )
    print(format_ranking(result.ranking, limit=max(args.budget, 10)))
    if query.rounds > 1:
        plan = round_plan([case_id(p) for p in images], labeled, args.budget, query)
        print(
            f"\nround {plan.round_index + 1} of {plan.total_rounds} (round budgets {list(plan.budgets)}, "
            f"{plan.labeled} pool volumes labelled): {plan.size} proposed"
            + (
                "; after labelling them, run assft adapt and rank again with the adapted model"
                if plan.round_index + 1 < plan.total_rounds and plan.size
                else ""
            )
        )
    if result.proposed:
        print(f"\nproposed {len(result.proposed)} {args.unit}(s) for annotation (on each image's own voxel grid):")
        for unit in result.proposed:
            where = (
                f"axis {unit.axis} slice {unit.index}"
                if unit.index is not None
                else f"voxels {list(unit.start)} size {list(unit.size)}"
            )
            print(f"  {unit.case_id}: {where}  (score {unit.score:.3f})")
    print(f"\nproposed for annotation: {', '.join(result.ranking.selected_ids) or '(none)'}")
    for case in result.ranking.cases:
        if case.reason:
            print(f"  {case.case_id}: {case.reason}")
    print(
        f"wrote {result.files['ranking_csv']}, {result.files['ranking_json'].name}"
        + ("" if args.no_overlays else ", overlays/ and predictions/")
    )
    return 0


def format_ranking(ranking, limit: int = 10) -> str:
    """A fixed-width table of the first ``limit`` ranked volumes."""
    lines = [f"{'rank':>4}  {'volume':<28} {'DKD':>7} {'ASD':>7} {'score':>7}  proposed"]
    for case in ranking.cases[:limit]:
        asd = "n/a" if math.isnan(case.asd) else f"{case.asd:.3f}"
        lines.append(
            f"{case.rank:>4}  {case.case_id:<28} {case.dkd:7.3f} {asd:>7} {case.score:7.3f}  "
            f"{'yes' if case.selected else ''}"
        )
    if len(ranking.cases) > limit:
        lines.append(f"      ... {len(ranking.cases) - limit} more in ranking.csv")
    shown = [case.score for case in ranking.cases[:limit]]
    if any(later > earlier for earlier, later in zip(shown, shown[1:])):
        lines.append(
            "score: what the query ranked each volume by when it picked it. Each pick is scored against the volumes "
            "picked before it (their diversity, normalised over the volumes left), so a later pick can score higher."
        )
    if ranking.asd_unavailable:
        lines.append(f"ASD n/a: {ranking.asd_unavailable}.")
    return "\n".join(lines)
