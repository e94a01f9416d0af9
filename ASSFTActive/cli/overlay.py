"""``assft overlay``: the voxel-wise entropy map of one volume and its high-entropy regions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_device_argument, add_model_argument, resolve_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "overlay", help="write the entropy map and high-entropy regions of one volume", description=__doc__
    )
    parser.add_argument("--image", required=True, type=Path, help="a NIfTI/NRRD/MetaImage volume")
    add_model_argument(parser)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.3,
        help="normalised entropy at or above which a voxel is uncertain, strictly between 0 and 1",
    )
    parser.add_argument(
        "--max-regions", type=int, default=5, help="how many regions to list, largest total entropy first (1 or more)"
    )
    add_device_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import make_predictor
    from ..errors import InputError
    from ..inference import OverlayConfig, write_overlay
    from ..io import case_id, read_volume
    from ..plausibility import check_image
    from ..query import QueryConfig, RegionSpec
    from ..store import resolve_card

    try:  # the settings are checked before the image is read or the model loaded
        config = OverlayConfig(threshold=args.threshold, max_regions=args.max_regions)
    except ValueError as exc:
        raise InputError(f"{exc} (--threshold, --max-regions).") from exc
    card = resolve_card(args.model)
    if not card.has_trained_head:
        raise InputError(
            f"{card.path or card.name} holds encoder weights only ({card.weights_format}): its "
            "segmentation head is not trained, so there is no prediction to take an entropy overlay "
            "from. Label a few volumes, run assft adapt, and use the adapted model (--model "
            "<store>/<name>)."
        )
    image = check_image(read_volume(args.image))
    predictor = make_predictor(card, resolve_device(args.device))
    prediction = predictor.predict(image, regions=RegionSpec.from_config(QueryConfig()))
    map_path, regions_path = write_overlay(
        image, prediction.entropy_levels, prediction.region, args.out, case_id(args.image), config
    )
    regions = json.loads(regions_path.read_text())["regions"]
    print(f"entropy map: {map_path}\nregions:     {regions_path}")
    for index, region in enumerate(regions, 1):
        x, y, z = region["center_ras"]
        print(
            f"  {index}. centre RAS ({x:.1f}, {y:.1f}, {z:.1f}) mm, {region['volume_mm3']:.0f} mm³, "
            f"mean entropy {region['mean_entropy']:.2f}"
        )
    return 0
