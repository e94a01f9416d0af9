"""Reproduce the embedded SAM-architecture prior of SFR: a small SAM trained from scratch on stitched canvases of the
*source* split of MSD Hippocampus. It is NOT Meta's SAM (see ``ASSFTActive/sfr/prior.py``).

Usage (about 10 minutes on one CPU thread):

    .venv/bin/python scripts/train_sfr_prior.py --data ../shared/data/hippocampus \
        --out ASSFTActive/resources/models/sfr-sam-tiny

The source split comes from :func:`harness.splits.split_cases` (a hash of each case name) with the cases in
``reserved.txt`` excluded before splitting and never read; the target pool and target test are never read either.
One tenth of the source split (by the same hash as ``scripts/train_embedded_default.py``) is held out to report the
source-test Dice recorded in the card. Training is single-threaded (``torch.set_num_threads(1)``) and deterministic
for the seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.evaluate import dice_per_class, mean_scored  # noqa: E402
from ASSFTActive.io import case_id, read_label, read_volume  # noqa: E402
from ASSFTActive.sfr.finetune import SfrFinetuneConfig, finetune_sam  # noqa: E402
from ASSFTActive.sfr.inputs import SamInput, SfrCase  # noqa: E402
from ASSFTActive.sfr.prior import NOT_META_SAM, prior_sam_config, save_sam_prior  # noqa: E402
from ASSFTActive.sfr.pseudo import sfr_pseudo_labels  # noqa: E402
from ASSFTActive.sfr.sam import build_sam  # noqa: E402
from Testing.Benchmarks.harness.splits import read_reserved, split_cases  # noqa: E402

CLASS_NAMES = ("background", "anterior", "posterior")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="MSD hippocampus folder (imagesTr, labelsTr)")
    parser.add_argument("--out", type=Path, required=True, help="folder for sam-card.json and weights.safetensors")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--canvas", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    images = sorted((args.data / "imagesTr").glob("*.nii.gz"))
    split = split_cases([case_id(p) for p in images], read_reserved(args.data / "reserved.txt"))
    source = list(split.source)
    held_out = [c for c in source if int(hashlib.sha256(c.encode()).hexdigest(), 16) % 10 == 0]
    train = [c for c in source if c not in held_out]

    sam_input = SamInput()
    cases = []
    for c in train:
        image = read_volume(args.data / "imagesTr" / f"{c}.nii.gz")
        label = read_label(args.data / "labelsTr" / f"{c}.nii.gz", image, len(CLASS_NAMES))
        cases.append(SfrCase(case_id=c, image=image, label=label))

    model = build_sam(prior_sam_config(len(CLASS_NAMES), args.canvas), seed=args.seed)
    config = SfrFinetuneConfig(
        iterations=args.iterations,
        batch_size=2,
        learning_rate=2e-3,
        weight_decay=0.01,
        warmup_iterations=min(100, args.iterations // 10),
        lora_rank=0,
        rot_flip=False,
        bezier_probability=0.5,
        seed=args.seed,
    )

    def report(event) -> None:
        if event.event == "progress" and event.step % 100 == 0:
            print(event.message, flush=True)

    result = finetune_sam(model, cases, config, sam_input, progress=report, device=torch.device("cpu"))
    print(f"trained {config.iterations} iterations in {result.seconds:.0f} s", flush=True)

    held_images = [read_volume(args.data / "imagesTr" / f"{c}.nii.gz") for c in held_out]
    pseudo = sfr_pseudo_labels(result.model, held_images, sam_input, case_ids=held_out)
    per_case = {}
    for c, image, p in zip(held_out, held_images, pseudo):
        truth = read_label(args.data / "labelsTr" / f"{c}.nii.gz", image, len(CLASS_NAMES)).array
        per_case[c] = dice_per_class(np.asarray(p.label.array), np.asarray(truth), len(CLASS_NAMES))
    per_class = {name: mean_scored(d[i] for d in per_case.values()) for i, name in enumerate(CLASS_NAMES[1:])}
    mean_dice = mean_scored(per_class.values())
    losses = result.losses
    provenance = {
        "description": NOT_META_SAM,
        "data": "MSD Task04 Hippocampus, CC-BY-SA 4.0 (Simpson et al. 2019; Antonelli et al. 2022)",
        "split": "harness.splits.split_cases (sha256 of case name); reserved.txt excluded; source split only",
        "train_cases": train,
        "source_test_cases": held_out,
        "seed": args.seed,
        "iterations": config.iterations,
        "train_config": config.to_dict(),
        "threads": 1,
        "train_seconds": round(result.seconds, 1),
        "final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4),
        "source_test_dice": per_class,
        "source_test_mean_dice": mean_dice,
        "source_test_dice_per_case": {c: list(d) for c, d in per_case.items()},
        "evaluation": "whole held-out volumes: one stitched canvas each, un-stitched, argmax on the image grid",
        "script": "scripts/train_sfr_prior.py",
        "torch": torch.__version__,
    }
    save_sam_prior(result.model, args.out, sam_input, CLASS_NAMES, provenance)
    print(json.dumps({"source_test_dice": per_class, "mean": mean_dice, "seconds": result.seconds}, indent=2))


if __name__ == "__main__":
    main()
