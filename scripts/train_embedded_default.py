"""Reproduce the embedded default model: a small MONAI UNet pre-trained on the *source* split of MSD Hippocampus.

Usage (about 5 minutes on 2 CPU cores):

    .venv/bin/python scripts/train_embedded_default.py --data ../shared/data/hippocampus \
        --out ASSFTActive/resources/models/hippocampus-unet

The source split comes from :func:`harness.splits.split_cases` (a hash of each case name); the cases in
``reserved.txt`` are excluded before splitting and never read. One tenth of the source split (by the same hash) is
held out to report the source-test Dice recorded in the card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.evaluate import evaluate_model  # noqa: E402
from ASSFTActive.finetune.training import (  # noqa: E402
    ProgressHook,
    SupervisedCase,
    TrainConfig,
    train_supervised,
)
from ASSFTActive.io import case_id, read_label, read_volume  # noqa: E402
from ASSFTActive.models import ModelCard, build_network, save_card, save_weights  # noqa: E402
from Testing.Benchmarks.harness.splits import read_reserved, split_cases  # noqa: E402

CARD = {
    "name": "hippocampus-unet",
    "architecture": "UNet",
    "arguments": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "dropout": 0.1,
        "norm": "instance",
    },
    "weights": "weights.safetensors",
    "weights_format": "state_dict",
    "class_names": ["background", "anterior", "posterior"],
    "encoder_stages": [
        "model.0",
        "model.1.submodule.0",
        "model.1.submodule.1.submodule.0",
        "model.1.submodule.1.submodule.1.submodule",
    ],
    "patch_size": [48, 64, 48],
    "preprocessing": {"profile": "zscore_nonzero"},
    "spacing": [1.0, 1.0, 1.0],
    "orientation": "RAS",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MSD hippocampus folder (imagesTr, labelsTr)")
    parser.add_argument("--out", type=Path, required=True, help="folder for card.json and weights.safetensors")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images = sorted((args.data / "imagesTr").glob("*.nii.gz"))
    split = split_cases([case_id(p) for p in images], read_reserved(args.data / "reserved.txt"))
    source = list(split.source)
    held_out = [c for c in source if int(hashlib.sha256(c.encode()).hexdigest(), 16) % 10 == 0]
    train = [c for c in source if c not in held_out]

    card = ModelCard.from_dict({**CARD, "provenance": {}})
    cases = []
    for c in train:
        image = read_volume(args.data / "imagesTr" / f"{c}.nii.gz")
        label = read_label(args.data / "labelsTr" / f"{c}.nii.gz", image, card.num_classes)
        cases.append(SupervisedCase(case_id=c, image=image, label=label))

    network = build_network(card)
    config = TrainConfig(
        iterations=args.iterations, patch_size=(32, 48, 32), batch_size=4, learning_rate=2e-3, seed=args.seed
    )
    start = time.time()
    train_supervised(
        network,
        card,
        cases,
        config,
        hooks=[ProgressHook(lambda e: print(e.message, flush=True) if e.step % 100 == 0 else None)],
    )
    seconds = time.time() - start

    args.out.mkdir(parents=True, exist_ok=True)
    save_weights(network, args.out / "weights.safetensors")
    eval_cases = [
        (read_volume(args.data / "imagesTr" / f"{c}.nii.gz"), args.data / "labelsTr" / f"{c}.nii.gz") for c in held_out
    ]
    metrics = evaluate_model(network, card, eval_cases)
    provenance = {
        "description": "Small 3D UNet trained from scratch on the source split of MSD Task04 Hippocampus (T1 MRI). "
        "Stands in for a pre-trained foundation model in demos and tests.",
        "data": "MSD Task04 Hippocampus, CC-BY-SA 4.0 (Simpson et al. 2019; Antonelli et al. 2022)",
        "split": "harness.splits.split_cases (sha256 of case name); reserved.txt excluded",
        "train_cases": train,
        "source_test_cases": held_out,
        "seed": args.seed,
        "iterations": args.iterations,
        "train_config": config.to_dict(),
        "train_seconds": round(seconds, 1),
        "source_test_dice": metrics.mean_dice_per_class(),
        "source_test_mean_dice": metrics.mean_dice(),
        "script": "scripts/train_embedded_default.py",
    }
    card = ModelCard.from_dict({**CARD, "provenance": provenance})
    save_card(card, args.out / "card.json")
    print(json.dumps({"source_test_dice": provenance["source_test_dice"], "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
