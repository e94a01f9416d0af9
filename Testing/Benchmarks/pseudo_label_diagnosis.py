"""How good are the pseudo-labels Adapt Model would train on, and does its reliability score find the good ones?

Diagnosis only (it reads the hidden labels of the pool, which the product never sees). For each shift (mild,
harsh), budget and random draw of labelled pool volumes:

1. the **teacher** is the product's supervised stage: ``adapt_model`` with ``pseudo.mode = "none"``, the guard
   off, and a one-step second stage, so the stored model is the supervised result;
2. the teacher predicts every other pool volume; the product's own functions give each one its foreground
   confidence, its semantic distance to the labelled set and its reliability, and ``select_reliable`` keeps the
   top half (method-spec §1.7);
3. the true Dice of each pseudo-label is measured against the hidden label.

Printed and written: the Spearman correlation of reliability, confidence and (minus) distance with the true Dice;
the mean true Dice of the kept half, of the rejected half and of an **oracle** half (the best half by true Dice);
the ratio of predicted to true foreground volume (does the teacher under-segment?).

Usage (from the repository root; about 10 minutes on 2 cores):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/pseudo_label_diagnosis.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapt_benchmark import DEFAULT_DATA, RESULTS, SHIFTS, write_pool  # noqa: E402


def diagnose(
    data: Path, pool: List[str], folder: Path, labeled: List[str], iterations: int, seed: int
) -> Dict[str, Any]:
    from scipy import stats

    from ASSFTActive.evaluate import dice_per_class, mean_scored
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig, PseudoLabelConfig
    from ASSFTActive.finetune.pseudo import PseudoCandidate, foreground_confidence, select_reliable, semantic_distance
    from ASSFTActive.inference import Predictor
    from ASSFTActive.io import read_label, read_volume
    from ASSFTActive.models import load_card, load_model

    config = FinetuneConfig.from_dict(
        {
            "train": {"iterations": iterations, "seed": seed},
            "semi_iterations": 1,
            "pseudo": {"mode": "none"},
            "validation": {"guard": False, "hd95": False},
            "predict_pool": False,
        }
    )
    images = {c: str(folder / f"{c}.nii.gz") for c in pool}
    labels = {c: str(data / "labelsTr" / f"{c}.nii.gz") for c in labeled}
    store = tempfile.mkdtemp(prefix="pl-diagnosis-")
    try:
        result = adapt_model(images, labels, store=store, model="default", name="teacher", config=config)
        teacher = Predictor(load_model(load_card(result.card_path)))
    finally:
        shutil.rmtree(store, ignore_errors=True)
    rule = PseudoLabelConfig()
    references = [teacher.predict(read_volume(images[c])).features[-1] for c in labeled]
    rows = []
    for case in pool:
        if case in labeled:
            continue
        image = read_volume(images[case])
        prediction = teacher.predict(image)
        classes = teacher.current.card.num_classes
        truth = np.asarray(read_label(data / "labelsTr" / f"{case}.nii.gz", image, classes).array)
        rows.append(
            {
                "case": case,
                "confidence": foreground_confidence(
                    prediction.label,
                    prediction.max_prob,
                    prediction.entropy,
                    rule.confidence,
                    rule.empty_foreground_confidence,
                ),
                "distance": semantic_distance(prediction.features[-1], references),
                "true_dice": float(mean_scored(dice_per_class(prediction.label, truth, classes))),
                "volume_ratio": float((prediction.label > 0).sum() / max(1, (truth > 0).sum())),
            }
        )
    decisions = select_reliable([PseudoCandidate(r["case"], r["confidence"], r["distance"]) for r in rows], rule)
    for row, decision in zip(rows, decisions):
        row["reliability"], row["kept"] = decision.reliability, decision.kept
    dice = np.array([r["true_dice"] for r in rows])
    kept = np.array([r["kept"] for r in rows])
    oracle = dice >= np.sort(dice)[::-1][kept.sum() - 1]

    def rho(key: str, sign: float = 1.0) -> float:
        return float(stats.spearmanr([sign * r[key] for r in rows], dice).correlation)

    return {
        "labeled": labeled,
        "rows": rows,
        "spearman_reliability": rho("reliability"),
        "spearman_confidence": rho("confidence"),
        "spearman_minus_distance": rho("distance", -1.0),
        "dice_all": float(dice.mean()),
        "dice_kept": float(dice[kept].mean()),
        "dice_rejected": float(dice[~kept].mean()) if (~kept).any() else None,
        "dice_oracle_half": float(dice[oracle].mean()),
        "volume_ratio_mean": float(np.mean([r["volume_ratio"] for r in rows])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=36)
    parser.add_argument("--iterations", type=int, default=100, help="supervised steps of the teacher")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    from Testing.Benchmarks.harness.splits import read_reserved, split_cases

    reserved = read_reserved(args.data / "reserved.txt")
    cases = sorted(p.name[: -len(".nii.gz")] for p in (args.data / "imagesTr").glob("*.nii.gz"))
    pool = list(split_cases(cases, reserved).target_pool[: args.pool_size])
    assert not set(pool) & set(reserved)
    out: Dict[str, Any] = {
        "command": " ".join(["Testing/Benchmarks/pseudo_label_diagnosis.py"] + sys.argv[1:]),
        "results": [],
    }
    lines = [
        "# Pseudo-label diagnosis",
        "",
        f"Command: `{out['command']}`",
        "",
        "| shift | B | draw | ρ(reliability, Dice) | ρ(confidence) | ρ(−distance) | Dice all | kept | rejected "
        "| oracle half | predicted/true volume |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    work = Path(tempfile.mkdtemp(prefix="pl-diagnosis-pool-"))
    try:
        for shift, strength in SHIFTS.items():
            write_pool(args.data, pool, strength, work / shift)
            for budget in args.budgets:
                for draw in range(args.draws):
                    rng = np.random.default_rng([budget, draw, 11])  # the draws of adapt_benchmark.py
                    labeled = sorted(rng.choice(pool, size=budget, replace=False).tolist())
                    r = diagnose(args.data, pool, work / shift, labeled, args.iterations, seed=0)
                    r.update(shift=shift, budget=budget, draw=draw)
                    out["results"].append(r)
                    line = (
                        f"| {shift} | {budget} | {draw} | {r['spearman_reliability']:+.2f} | "
                        f"{r['spearman_confidence']:+.2f} | {r['spearman_minus_distance']:+.2f} | "
                        f"{r['dice_all']:.3f} | {r['dice_kept']:.3f} | {r['dice_rejected']:.3f} | "
                        f"{r['dice_oracle_half']:.3f} | {r['volume_ratio_mean']:.2f} |"
                    )
                    lines.append(line)
                    print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pseudo_label_diagnosis.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "pseudo_label_diagnosis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
