"""``assft sfr``: adapt a model with SFR or SFR+ (SAM fine-tuned on stitched volumes as a teacher, then Mean-Teacher
re-training of the 3D model); store a new version, activated when the same guard as ``assft adapt`` agrees.

Images with a label file of the same name in ``--labels`` are the labelled set; the other images are the pool SAM
pseudo-labels. The SAM is the embedded ``sfr-sam-tiny`` prior (not Meta's SAM) unless ``--sam`` names a SAM prior
folder (``sam-card.json`` + weights). With ``--work-dir`` the run is resumable: running the same command again skips
the finished cross-validation folds, reuses SAM's pseudo-labels and continues the re-training from its last
checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ..jobs import SFR_METHODS
from .adapt import add_input_arguments, add_run_arguments
from .common import add_work_dir_argument, read_settings_file

#: ``--method`` choices: the values of :class:`~ASSFTActive.sfr.config.SfrMethod`.
METHODS = SFR_METHODS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sfr", help="adapt the model with SFR / SFR+ (SAM pseudo-labels + Mean Teacher)", description=__doc__
    )
    add_input_arguments(parser, "re-train")
    parser.add_argument("--method", choices=METHODS, default=None, help="sfr (default) or sfr_plus")
    parser.add_argument(
        "--sam", type=Path, help="SAM prior folder (default: the embedded sfr-sam-tiny, not Meta's SAM)"
    )
    parser.add_argument("--sam-iterations", type=int, help="SAM fine-tuning steps (default 6000, SFR's)")
    parser.add_argument("--iterations", type=int, help="3D re-training steps (default 6000, SFR's)")
    parser.add_argument("--seed", type=int, help="seed of SAM fine-tuning, re-training and the folds")
    add_run_arguments(parser, "SFR settings (SfrConfig)")
    add_work_dir_argument(parser)
    parser.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The :class:`~ASSFTActive.sfr.config.SfrConfig` of the command line: ``--config``, then the options."""
    from ..errors import InputError
    from ..sfr.config import SfrConfig

    data: Dict[str, Any] = read_settings_file(args.config)
    try:
        base = SfrConfig.from_dict(data)
        sam, retrain, validation = base.sam.to_dict(), base.retrain.to_dict(), base.validation.to_dict()
        if args.sam_iterations is not None:
            sam["iterations"] = args.sam_iterations
            sam["warmup_iterations"] = min(sam["warmup_iterations"], max(0, args.sam_iterations - 1))
        if args.iterations is not None:
            retrain["iterations"] = args.iterations
        if args.seed is not None:
            sam["seed"] = retrain["seed"] = args.seed
        if args.no_guard:
            validation["guard"] = False
        updates: Dict[str, Any] = dict(base.to_dict(), sam=sam, retrain=retrain, validation=validation)
        if args.method is not None:
            updates["method"] = args.method
        if args.allow_implausible_labels:
            updates["allow_implausible_labels"] = True
        return SfrConfig.from_dict(updates)
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid SFR settings: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from ..sfr.pipeline import Sfr
    from .adapt import run_command

    return run_command(args, Sfr(build_config(args), args.sam), format_summary)


def format_summary(result) -> str:
    """What an SFR run did: ``assft adapt``'s summary with the method and SAM's pseudo-labels."""
    from .adapt import format_summary as adapt_summary

    kept = [p for p in result.pseudo if p.kept]
    return adapt_summary(
        result,
        title=f"{result.method.value}: ",
        pseudo_line=f"SAM pseudo-labelled volumes re-trained on: {len(kept)} of {len(result.pseudo)} unlabelled",
    )
