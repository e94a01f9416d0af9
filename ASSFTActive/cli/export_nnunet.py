"""``assft export-nnunet``: write a model adapted from an nnU-Net folder back in nnU-Net's layout.

    assft export-nnunet MODEL --out FOLDER [--fold fold_0]

MODEL is a store folder (``<store>/<name>``: its active version, or ``<store>/<name>/v<k>``) of a model adapted from
an nnU-Net v2 result folder. FOLDER receives ``<Trainer>__<Plans>__<configuration>/`` with the original
``plans.json`` and ``dataset.json`` and ``<fold>/checkpoint_final.pth`` holding the adapted weights, so that
``nnUNetv2_predict -d ... -f 0`` (with FOLDER as the dataset's results folder) runs the adapted model. An existing
folder is never overwritten.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-nnunet",
        help="write a model adapted from an nnU-Net folder back in nnU-Net's layout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="store folder <store>/<name>[/v<k>] of a model adapted from an nnU-Net folder")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder that receives <Trainer>__<Plans>__<configuration>/ (e.g. nnUNet_results/"
        "Dataset004_Hippocampus_site)",
    )
    parser.add_argument("--fold", default="fold_0", help="fold folder name to write (default fold_0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..sources.nnunet_export import export
    from ..store import resolve_card

    card = resolve_card(args.model)
    model = load_model(card)
    target = export(card, model.network, args.out, fold=args.fold)
    print(f"wrote {target} ({model.report.summary()}); nnU-Net runs it as fold {args.fold[len('fold_') :]}")
    return 0
