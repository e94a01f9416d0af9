"""Compute a pre-trained card's source statistics for the out-of-distribution rule (``source_reference.json``).

For every source training volume (by default the card's ``provenance.train_cases``), one pass of the card's model
gives the pre-trained deepest-stage pooled feature and the predicted-foreground share; the file beside the card
keeps the unit features, the largest leave-one-out nearest-neighbour distance and the largest share
(:class:`ASSFTActive.query.ood.SourceReference`). About 10 s for the embedded default on 2 CPU cores:

    .venv/bin/python scripts/make_source_reference.py --card ASSFTActive/resources/models/hippocampus-unet/card.json \
        --images ../shared/data/hippocampus/imagesTr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.api import foreground_share, make_predictor  # noqa: E402
from ASSFTActive.cards import load_card  # noqa: E402
from ASSFTActive.io import find_images, read_volume  # noqa: E402
from ASSFTActive.plausibility import check_image  # noqa: E402
from ASSFTActive.query import QueryConfig, RegionSpec  # noqa: E402
from ASSFTActive.query.ood import REFERENCE_FILE, SourceReference  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", type=Path, required=True, help="the pre-trained model's card.json")
    parser.add_argument("--images", required=True, help="folder of the source training images")
    parser.add_argument("--cases", nargs="*", help="case ids (default: the card's provenance.train_cases)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    card = load_card(args.card)
    cases = args.cases or list(card.provenance.get("train_cases", []))
    if len(cases) < 2:
        parser.error("give at least 2 source cases (--cases), or a card whose provenance lists train_cases")
    by_id = {path.name.split(".")[0]: path for path in find_images(args.images)}
    missing = [c for c in cases if c not in by_id]
    if missing:
        parser.error(f"{len(missing)} source cases are not in {args.images}: {missing[:5]}")
    predictor = make_predictor(card, torch.device("cpu"))
    regions = RegionSpec.from_config(QueryConfig())
    embeddings, shares = [], []
    for case in cases:
        prediction = predictor.predict(check_image(read_volume(by_id[case])), regions=regions)
        embeddings.append(prediction.pretrained_features[-1])
        shares.append(foreground_share(prediction))
    reference = SourceReference.from_volumes(embeddings, shares, cases)
    out = args.card.parent / REFERENCE_FILE
    out.write_text(json.dumps(reference.to_dict()) + "\n", encoding="utf-8")
    print(
        f"{len(cases)} source volumes: largest leave-one-out feature distance {reference.nn_distance_max:.4f}, "
        f"largest foreground share {reference.foreground_share_max:.4f}; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
