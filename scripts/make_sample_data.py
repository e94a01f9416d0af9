"""Reproduce the shipped sample "new site": hippocampus target cases under a simulated scanner shift.

Usage:

    .venv/bin/python scripts/make_sample_data.py --data ../shared/data/hippocampus \
        --out ASSFTActive/resources/sample

Writes ``pool/{images,labels}`` (volumes to rank and adapt on; their labels stand in for the annotator) and
``test/{images,labels}`` (held-out volumes to measure Dice before and after adaptation). Cases come from the target
pool and target test parts of :func:`harness.splits.split_cases`; reserved cases are never used. The data are a
derivative of MSD Task04 Hippocampus and keep its CC-BY-SA 4.0 licence (see the README written beside them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.io import case_id, read_volume, write_volume  # noqa: E402
from Testing.Benchmarks.harness.shifts import ShiftConfig, apply_shift  # noqa: E402
from Testing.Benchmarks.harness.splits import read_reserved, split_cases  # noqa: E402

LICENCE = """# Sample data: a simulated new site

Derived from the Medical Segmentation Decathlon, Task04 Hippocampus (T1 MRI; labels 0 background, 1 anterior,
2 posterior hippocampus). Simpson et al., "A large annotated medical image dataset for the development and evaluation
of segmentation algorithms", arXiv:1902.09063 (2019); Antonelli et al., "The Medical Segmentation Decathlon",
Nature Communications 13, 4128 (2022). Images from Vanderbilt University Medical Center.

Licence: Creative Commons Attribution-ShareAlike 4.0 International (CC-BY-SA 4.0). These files are a derivative
(intensities changed by a simulated scanner shift; labels unchanged) and are distributed under the same licence.

Made by `scripts/make_sample_data.py` with the settings in `sample.json`.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pool", type=int, default=12, help="pool cases to ship")
    parser.add_argument("--test", type=int, default=6, help="test cases to ship")
    parser.add_argument("--kind", default="scanner")
    parser.add_argument("--strength", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    shift = ShiftConfig(kind=args.kind, strength=args.strength, seed=args.seed)
    ids = [case_id(p) for p in sorted((args.data / "imagesTr").glob("*.nii.gz"))]
    split = split_cases(ids, read_reserved(args.data / "reserved.txt"))
    chosen = {"pool": split.target_pool[: args.pool], "test": split.target_test[: args.test]}
    for part, cases in chosen.items():
        for case in cases:
            image = read_volume(args.data / "imagesTr" / f"{case}.nii.gz")
            label = read_volume(args.data / "labelsTr" / f"{case}.nii.gz")
            shifted = apply_shift(image, shift, case)
            stored = shifted.with_array(np.rint(shifted.array).astype(np.int16))  # int16 keeps the sample small
            write_volume(stored, args.out / part / "images" / f"{case}.nii.gz")
            write_volume(label.with_array(label.array.astype("uint8")), args.out / part / "labels" / f"{case}.nii.gz")
    (args.out / "README.md").write_text(LICENCE)
    (args.out / "sample.json").write_text(
        json.dumps({"shift": shift.to_dict(), **{k: list(v) for k, v in chosen.items()}}, indent=2) + "\n"
    )
    print(f"wrote {sum(len(v) for v in chosen.values())} cases to {args.out}")


if __name__ == "__main__":
    main()
