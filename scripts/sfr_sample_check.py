"""SFR and SFR+ from the embedded SAM prior on the shipped sample "new site": Dice on the sample's test volumes, and
SAM's pseudo-labels of the pool with their confidence and true Dice (the diagnostic of issue 13).

Usage (about 4 minutes on one CPU thread):

    .venv/bin/python scripts/sfr_sample_check.py [--labelled 2] [--iterations 300] [--seed 0] [--out result.json]

The first ``--labelled`` pool volumes are the labelled ones, the rest of the pool is unlabelled (their labels are
read only to score the pseudo-labels). Not a benchmark: one seed, a few volumes; the prior is not Meta's SAM.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.evaluate import dice_per_class, mean_scored  # noqa: E402
from ASSFTActive.io import atomic_write_text, read_label, read_volume  # noqa: E402
from ASSFTActive.sfr.finetune import SfrFinetuneConfig, finetune_sam  # noqa: E402
from ASSFTActive.sfr.inputs import SfrCase  # noqa: E402
from ASSFTActive.sfr.plus import SfrPlusConfig, sfr_plus_finetune  # noqa: E402
from ASSFTActive.sfr.prior import load_sam_prior  # noqa: E402
from ASSFTActive.sfr.pseudo import sfr_pseudo_labels  # noqa: E402

SAMPLE = ROOT / "ASSFTActive" / "resources" / "sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--kappa", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)

    meta = json.loads((SAMPLE / "sample.json").read_text())

    def load(part: str, case: str) -> SfrCase:
        image = read_volume(SAMPLE / part / "images" / f"{case}.nii.gz")
        return SfrCase(case, image, read_label(SAMPLE / part / "labels" / f"{case}.nii.gz", image, 3))

    pool = [load("pool", c) for c in meta["pool"]]
    test = [load("test", c) for c in meta["test"]]
    labelled, unlabelled = pool[: args.labelled], pool[args.labelled :]
    prior = load_sam_prior()

    def dice(pseudo, cases) -> float:
        scores = [
            dice_per_class(np.asarray(p.label.array), np.asarray(c.label.array), 3) for p, c in zip(pseudo, cases)
        ]
        return mean_scored(s for row in scores for s in row)

    def test_dice(model) -> float:
        return dice(sfr_pseudo_labels(model, [c.image for c in test], prior.sam_input), test)

    config = SfrFinetuneConfig(iterations=args.iterations, rot_flip=False, seed=args.seed)
    cpu = torch.device("cpu")
    rows = {"prior": test_dice(prior.model)}
    sfr = finetune_sam(prior.model, labelled, config, prior.sam_input, device=cpu)
    rows["sfr"] = test_dice(sfr.model)
    plus = sfr_plus_finetune(
        prior.model,
        labelled,
        [c.image for c in unlabelled],
        config,
        SfrPlusConfig(kappa=args.kappa),
        prior.sam_input,
        pool_ids=[c.case_id for c in unlabelled],
        device=cpu,
    )
    rows["sfr_plus"] = test_dice(plus.model)
    pseudo = [
        {
            "case": p.case_id,
            "confidence": round(p.confidence, 4),
            "true_dice": round(dice([p], [c]), 4),
            "selected": p.case_id in plus.selected,
        }
        for p, c in zip(plus.first_pseudo, unlabelled)
    ]
    kept = [r["true_dice"] for r in pseudo if r["selected"]]
    dropped = [r["true_dice"] for r in pseudo if not r["selected"]]
    result = {
        "test_mean_dice": rows,
        "pool_pseudo_labels": pseudo,
        "selected_mean_true_dice": float(np.mean(kept)) if kept else None,
        "dropped_mean_true_dice": float(np.mean(dropped)) if dropped else None,
        "labelled": [c.case_id for c in labelled],
        "config": config.to_dict(),
        "kappa": args.kappa,
        "note": "one seed on the shipped sample; the SAM prior is not Meta's SAM",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
