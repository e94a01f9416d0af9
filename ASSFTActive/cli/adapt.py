"""``assft adapt``: fine-tune a model on labelled volumes plus reliable pseudo-labelled ones; store a new version.

Images with a label file of the same name in ``--labels`` are the labelled set; the other images are the
unlabelled pool that selective pseudo-labelling draws from. The new version is written to ``--store`` and becomes
the active one only when training and validation finished (see ``assft models``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..finetune.config import PseudoMode
from ..finetune.fold_pseudo import FoldVote
from .common import add_device_argument, add_work_dir_argument, progress_channel, read_settings_file, work_dir_lock

#: ``--pseudo`` choices: the values of :class:`~ASSFTActive.finetune.config.PseudoMode`.
PSEUDO_MODES = tuple(mode.value for mode in PseudoMode)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "adapt", help="fine-tune the model on labelled + reliable pseudo-labelled volumes", description=__doc__
    )
    add_input_arguments(parser, "adapt")
    parser.add_argument(
        "--pseudo",
        choices=PSEUDO_MODES,
        default=None,
        help="pseudo-labelling of the unlabelled pool (default: selective)",
    )
    parser.add_argument("--iterations", type=int, help="supervised training steps (default 100)")
    parser.add_argument("--semi-iterations", type=int, help="semi-supervised steps (default: = --iterations)")
    parser.add_argument(
        "--keep-fraction", type=float, help="share of the pool pseudo-labelled in selective mode (default 0.5)"
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="training patch in voxels (default: the card's patch size)",
    )
    parser.add_argument("--batch-size", type=int, help="patches per step (default 4)")
    parser.add_argument("--learning-rate", type=float, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--seed", type=int, help="seed of sampling, augmentation and the cross-validation folds")
    parser.add_argument(
        "--partial-labels",
        action="store_true",
        help="the labels are deliberately partial (some slices, an outline, part of a structure); "
        "without it such labels are refused",
    )
    add_run_arguments(parser, "fine-tuning settings (FinetuneConfig)")
    add_work_dir_argument(parser)
    parser.set_defaults(run=run)


def add_input_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The data, model and store options of every adaptation command (``assft adapt``, ``assft sfr``)."""
    parser.add_argument("--images", required=True, help="folder or glob of all volumes (labelled and unlabelled)")
    parser.add_argument("--labels", required=True, help="folder of label maps named like their images")
    parser.add_argument(
        "--model",
        default="default",
        help=f"model to {verb}: 'default', a card JSON, or a store folder <store>/<name>[/v<k>]",
    )
    parser.add_argument("--store", required=True, type=Path, help="model store folder for the new version")
    parser.add_argument("--name", help="model name in the store (default: <card name>-adapted)")
    parser.add_argument(
        "--subjects",
        type=Path,
        help='JSON file {"<case id>": "<subject>"} for volumes that share a subject (two frames of one heart, two '
        "scans of one patient): the guard's cross-validation holds a subject's volumes out together",
    )


def add_run_arguments(parser: argparse.ArgumentParser, settings: str) -> None:
    """The guard, label-check, settings-file, output and device options of every adaptation command."""
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="skip the cross-validated check and activate the new version unconditionally "
        "(one training run instead of the cross-validation folds, about two runs' worth together)",
    )
    parser.add_argument(
        "--allow-implausible-labels",
        action="store_true",
        help="train even when a label has no foreground, a model class appears in no label, or a "
        "label lies far from the current model's prediction (refused by default)",
    )
    parser.add_argument("--config", type=Path, help=f"JSON file of {settings}; the other options override it")
    parser.add_argument(
        "--predictions", type=Path, help="write the new model's label maps of the unlabelled volumes to this folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)


def build_config(args: argparse.Namespace):
    """The :class:`FinetuneConfig` of the command line: the model's anatomy's recipe
    (:data:`~ASSFTActive.finetune.config.ANATOMY_RECIPES`), the ``--config`` file over it, then the explicit
    options."""
    from ..errors import InputError
    from ..finetune.config import ANATOMY_RECIPES, FinetuneConfig
    from ..store import reference_anatomy

    data: Dict[str, Any] = read_settings_file(args.config)
    train = dict(data.get("train") or {})
    for option, key in (
        ("iterations", "iterations"),
        ("batch_size", "batch_size"),
        ("learning_rate", "learning_rate"),
        ("seed", "seed"),
        ("patch_size", "patch_size"),
    ):
        value = getattr(args, option)
        if value is not None:
            train[key] = list(value) if option == "patch_size" else value
    pseudo = dict(data.get("pseudo") or {})
    if args.pseudo is not None:
        pseudo["mode"] = args.pseudo
    if args.keep_fraction is not None:
        pseudo["keep_fraction"] = args.keep_fraction
    validation = dict(data.get("validation") or {})
    if args.no_guard:
        validation["guard"] = False
    data = dict(data, train=train, pseudo=pseudo, validation=validation)
    if args.semi_iterations is not None:
        data["semi_iterations"] = args.semi_iterations
    if args.allow_implausible_labels:
        data["allow_implausible_labels"] = True
    if getattr(args, "partial_labels", False):
        data["partial_labels"] = True
    try:
        return FinetuneConfig.for_anatomy(data, reference_anatomy(args.model, ANATOMY_RECIPES))
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid fine-tuning settings: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from ..finetune.assft import SelectiveSelfTraining

    return run_command(args, SelectiveSelfTraining(build_config(args)), format_summary)


def run_command(args: argparse.Namespace, method: Any, summary: Callable[[Any], str]) -> int:
    """Run :func:`~ASSFTActive.finetune.adapt.run_adaptation` with ``method`` (``assft adapt``: ASSFT's, ``assft
    sfr``: SFR's) on the options of :func:`add_input_arguments` and :func:`add_run_arguments`: the volumes and labels,
    a progress bar, the ``--work-dir`` lock; print ``summary(result)``."""
    from ..finetune.adapt import AdaptRequest, run_adaptation
    from ..finetune.guard import count_subjects
    from ..io import case_id, find_images, match_labels
    from ..progress import sfr_config_units
    from .common import read_json_object, resolve_device, warn_line

    images = find_images(args.images)
    labels = match_labels(images, args.labels, warn=warn_line)
    subjects = read_json_object(args.subjects, "subjects")
    config = getattr(method, "config", None)  # SFR's settings plan its SAM and re-training passes for the bar
    count = count_subjects(list(labels), subjects)
    units = sfr_config_units(config, len(images), len(labels), count) if hasattr(config, "sam") else None
    bar, progress = progress_channel(args, volumes=len(images), units=units)
    try:
        with work_dir_lock(args.work_dir):
            request = AdaptRequest(
                {case_id(p): p for p in images},
                labels,
                args.store,
                model=args.model,
                name=args.name,
                progress=progress,
                work_dir=args.work_dir,
                predictions_dir=args.predictions,
                device=resolve_device(args.device),
                subjects=subjects,
            )
            result = run_adaptation(request, method)
    finally:
        bar.close()
    print(summary(result))
    return 0


def _named(record) -> str:
    """A pseudo-labelled volume in the summary: its id, and how many folds kept it when the folds were averaged."""
    if isinstance(record, FoldVote):
        return f"{record.case_id} ({record.kept_by}/{record.folds} folds)"
    return record.case_id


def format_summary(result, title: str = "", pseudo_line: Optional[str] = None) -> str:
    """What an adaptation did (``assft adapt``, and ``assft sfr`` with its ``title`` and ``pseudo_line``), as a few
    lines and a per-class table of Dice/HD95 before and after."""
    metrics = result.metrics
    before, after = metrics["before"], metrics["after"]
    kept = [d for d in result.pseudo if d.kept]
    by_folds = any(isinstance(d, FoldVote) for d in result.pseudo)
    if pseudo_line is None:
        pseudo_line = (
            (
                f"pseudo-labelled volumes: {len(kept)} of {len(result.pseudo)} unlabelled"
                + (" (by the cross-validation folds whose weights were averaged)" if by_folds else "")
                + (f": {', '.join(map(_named, kept[:8]))}{', ...' if len(kept) > 8 else ''}" if kept else "")
            )
            if result.pseudo
            else "pseudo-labelled volumes: none (--pseudo none, or no unlabelled volume)"
        )
    lines = [
        f"{title}model {result.name} {result.version} "
        + ("is now active" if result.activated else "was stored but NOT activated"),
        f"why: {result.decision.reason}",
        f"card: {result.card_path}",
        f"labelled volumes: {len(result.labeled)}; training stopped at step {metrics['stop_step']}",
        pseudo_line,
    ]
    from ..partial import NOT_ANNOTATED

    partial = getattr(result, "not_annotated", ())
    if partial:  # the value 255 is read as "not annotated", never as a class: say so, a 0/255 mask is common
        lines.insert(
            -1,
            f"partial labels, trained on their annotated voxels only: {len(partial)} label file(s) mark voxels as "
            f"not annotated ({NOT_ANNOTATED}): "
            + ", ".join(f"{case} ({voxels} voxels)" for case, voxels in partial[:8])
            + (", ..." if len(partial) > 8 else ""),
        )
    if result.skipped:
        lines.append(
            f"skipped: {len(result.skipped)} volume(s): "
            + "; ".join(f"{s.case_id} ({s.reason[:80]})" for s in result.skipped[:3])
        )
    where = (
        "labelled volume(s), each held out once (cross-validation; no HD95 after)"
        if metrics["evaluated_on"] == "cross_validation"
        else "labelled training volume(s)"
    )
    lines.append(f"\nDice and HD95 on {len(metrics['cases'])} {where}, before -> after:")
    lines.append(f"{'class':<16} {'Dice before':>11} {'Dice after':>11} {'HD95 before':>12} {'HD95 after':>11}")
    for name in before["dice"]:
        lines.append(
            f"{name:<16} {_num(before['dice'][name]):>11} {_num(after['dice'][name]):>11} "
            f"{_num(before['hd95'].get(name), 2):>12} {_num(after['hd95'].get(name), 2):>11}"
        )
    lines.append(f"{'mean':<16} {_num(before['mean_dice']):>11} {_num(after['mean_dice']):>11}")
    if result.predictions:
        first = next(iter(result.predictions.values()))
        lines.append(f"\npredictions of {len(result.predictions)} unlabelled volumes in {Path(first).parent}")
    lines.append(f"done in {result.seconds:.0f} s")
    return "\n".join(lines)


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
