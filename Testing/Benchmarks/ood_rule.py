"""Measure the out-of-distribution rule (``ASSFTActive/query/ood.py``) for the embedded hippocampus model.

For each group of volumes, the statistics the rule compares with its thresholds (as ratios to the source training
volumes' own largest value) and how many volumes it flags: hippocampus volumes that are neither source nor reserved,
without shift and under every shift of ``harness/shifts.py``; ACDC cardiac MRI; the five files of
``../shared/data/fixtures``. Prints a table and writes ``results/ood_rule.{json,md}``. About 3 minutes on 2 CPU cores.

Usage: ``PYTHONPATH=. .venv/bin/python Testing/Benchmarks/ood_rule.py [--cases 40] [--acdc 20]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from harness.shifts import ShiftConfig, ShiftKind, apply_shift, benchmark_shift  # noqa: E402

from ASSFTActive.api import foreground_share, make_predictor, volume_ood_reason  # noqa: E402
from ASSFTActive.io import read_volume  # noqa: E402
from ASSFTActive.plausibility import check_image  # noqa: E402
from ASSFTActive.query import QueryConfig, RegionSpec  # noqa: E402
from ASSFTActive.query.ood import (  # noqa: E402
    CT_AIR_SHARE,
    FEATURE_FACTOR,
    FOREGROUND_FACTOR,
    air_share,
    load_reference,
    nearest_source_distance,
)
from ASSFTActive.store import resolve_card  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FIXTURES = (
    "monai-anatomical/anatomical.nii",
    "pyradiomics/brain1_image.nrrd",
    "pyradiomics/breast1_image.nrrd",
    "pyradiomics/prostate_phantom_subvolume.nrrd",
    "totalsegmentator-ct/example_ct_sm.nii.gz",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40, help="hippocampus volumes per shift")
    parser.add_argument("--acdc", type=int, default=20, help="ACDC volumes")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ood_rule")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    card = resolve_card("default")
    predictor = make_predictor(card, torch.device("cpu"))
    reference = load_reference(card.path.parent)
    regions = RegionSpec.from_config(QueryConfig())

    def measure(volume):
        prediction = predictor.predict(volume, regions=regions)
        return {
            "feature_ratio": nearest_source_distance(prediction.pretrained_features[-1], reference.embeddings)
            / reference.nn_distance_max,
            "foreground_ratio": foreground_share(prediction) / reference.foreground_share_max,
            "air_share": air_share(volume.array),
            "reason": volume_ood_reason(volume, prediction, card),
        }

    hippocampus = DATA / "hippocampus"
    used = set(card.provenance["train_cases"]) | set(card.provenance["source_test_cases"])
    reserved = set((hippocampus / "reserved.txt").read_text().split())
    names = sorted(p.name.split(".")[0] for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    cases = [n for n in names if n not in used | reserved][: args.cases]
    shifts = {
        "none": None,
        "mild (benchmark)": benchmark_shift("hippocampus", "mild"),
        "harsh (benchmark)": benchmark_shift("hippocampus", "harsh"),
    }
    shifts.update({f"{kind.value} 1.0": ShiftConfig(kind.value, 1.0, 0) for kind in ShiftKind})
    groups = {}
    for label, shift in shifts.items():
        rows = []
        for name in cases:
            volume = check_image(read_volume(hippocampus / "imagesTr" / f"{name}.nii.gz"))
            rows.append({"case": name, **measure(volume if shift is None else apply_shift(volume, shift, name))})
        groups[f"hippocampus, shift {label}"] = rows
    acdc = sorted((DATA / "acdc" / "imagesTr").glob("*.nii.gz"))[: args.acdc]
    groups["ACDC cardiac MRI"] = [{"case": p.name.split(".")[0], **measure(check_image(read_volume(p)))} for p in acdc]
    for fixture in FIXTURES:
        path = DATA / "fixtures" / fixture
        groups[f"fixture {Path(fixture).name}"] = [
            {"case": Path(fixture).name, **measure(check_image(read_volume(path)))}
        ]

    lines = [
        "| volumes | n | flagged | feature ratio (max) | foreground ratio (max) | air share (max) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in groups.items():
        lines.append(
            f"| {name} | {len(rows)} | {sum(bool(r['reason']) for r in rows)} | "
            f"{max(r['feature_ratio'] for r in rows):.2f} | {max(r['foreground_ratio'] for r in rows):.2f} | "
            f"{max(r['air_share'] for r in rows):.3f} |"
        )
    table = "\n".join(lines)
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    header = (
        "# Out-of-distribution rule, embedded hippocampus model\n\n"
        f"Thresholds: feature ratio > {FEATURE_FACTOR}, foreground ratio > {FOREGROUND_FACTOR}, "
        f"air share >= {CT_AIR_SHARE} (MRI card). Source: "
        f"{len(reference.cases)} training volumes. Revision {revision}, {time.time() - started:.0f} s.\n\n"
    )
    print(header + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(header + table + "\n", encoding="utf-8")
    record = {
        "git": revision,
        "machine": platform.platform(),
        "seconds": time.time() - started,
        "thresholds": {
            "feature_factor": FEATURE_FACTOR,
            "foreground_factor": FOREGROUND_FACTOR,
            "ct_air_share": CT_AIR_SHARE,
        },
        "source": {
            "cases": len(reference.cases),
            "nn_distance_max": reference.nn_distance_max,
            "foreground_share_max": reference.foreground_share_max,
        },
        "groups": groups,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
