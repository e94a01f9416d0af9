"""Measure the label-meaning checks on each anatomy's development cases and set their limits by a stated rule.

For every true label of the development split (``Testing.Benchmarks.harness.splits.benchmark_split``; the cases of
``reserved.txt`` are never read) this computes what :mod:`ASSFTActive.label_checks` checks:

* the label's shape (no model): foreground share of the volume, share of its bounding box, the fewest slices a
  class spans, the in-plane interior share of its thinnest class, each class's volume in mm³;
* against the anatomy's model, unshifted and under each benchmark shift (``harness.shifts.BENCHMARK_SHIFTS``):
  label / predicted foreground, label / label-near-the-prediction (the existing ``label_prediction_ratio`` rule),
  and for each pair of classes the swap ratio (voxels predicted the other way round over those predicted as
  labelled, ``ClassOverlap.swap``) with the share that ratio rests on, and how much better the label overlaps the
  prediction when shifted (misregistration).

The rule that turns the worst true label into a limit (fixed before the numbers were looked at):

* ``max_volume_share`` = 2 x the largest true share, at most 0.5;
* ``max_box_fill`` = halfway between the fullest true label and a painted box (1.0);
* ``min_thinnest`` = 2 when every true class spans at least 2 slices along every axis (else 1: no check);
* ``min_interior_share`` = half the lowest true interior share;
* ``max_swap_ratio`` = 2 x the largest true swap ratio (``ClassOverlap.swap``, both ways) among class pairs with at
  least ``min_swap_share`` (0.2) of each class crossed, at least 1 (crossing must win); measured under every shift;
* ``class_volume_mm3`` = [least / 3, most x 3] of the true class volumes;
* ``max_shift_gain`` = 1 + 2 x (the largest true gain - 1), where the gain is how much better a label overlaps the
  prediction when shifted (``registration_shift``), measured under every shift; only for an anatomy whose model
  was measured (else no misregistration check); ``warn_shift_gain`` = the largest true gain (rounded up);
* ``max_away_excess`` = half the smallest label / predicted foreground among true labels lying away from the
  prediction (under 1/15 of their voxels near it) under any shift, rounded down; ``None`` when none lies away (then
  the product's ``label_prediction_ratio``, 15); added 2026-12-07, when the checks refused 5 true ACDC labels under
  the harsh shift, where the model predicts nothing or specks away from the heart;
* ``default`` (cards of other anatomies): only the checks that do not depend on the structure's shape and size: more
  than half the volume foreground (inverted), a class spanning one slice, and the loosest measured swap limit; no
  box, outline, volume or misregistration limit (a small lesion may be box-like or thin, a box-shaped phantom
  real).

The same script also reports how often wrong labels made from the same cases are caught at those limits (classes
swapped, a 1-voxel outline in 3D or drawn in-plane, the middle slice only, a filled box, an inverted mask).

Usage (repository root; about 1 min for the hippocampus on one thread; the ACDC source model of
``scripts/train_acdc_source.py`` is used when ``--acdc-model`` exists, else ACDC's model statistics are reported as
not measured and the shape limits alone come from ACDC):

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/measure_label_checks.py

Writes ``Testing/Benchmarks/results/label_check_thresholds.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ASSFTActive.finetune.config import FinetuneConfig  # noqa: E402
from ASSFTActive.io import case_id, read_label, read_volume  # noqa: E402
from ASSFTActive.label_checks import (  # noqa: E402
    ClassOverlap,
    class_overlap,
    foreground_agreement,
    label_shape,
    pooled_overlap,
    registration_shift,
)
from Testing.Benchmarks.harness.shifts import BENCHMARK_SHIFTS, apply_shift  # noqa: E402
from Testing.Benchmarks.harness.splits import acdc_patient, benchmark_split, each_case, read_reserved  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "Testing" / "Benchmarks" / "results" / "label_check_thresholds.json"
MIN_SWAP_SHARE = 0.2
#: ``FinetuneConfig.label_prediction_ratio``: a label with fewer than 1/15 of its voxels near the prediction lies away.
AWAY_RATIO = FinetuneConfig().label_prediction_ratio
#: Shifts (voxels, along each axis in turn) of the misregistered labels whose detection is reported.
SHIFTS_VOXELS = (2, 4, 6, 10)


def moved_label(foreground: np.ndarray, voxels: int, axis: int) -> np.ndarray:
    """``foreground`` (bool ``[I, J, K]``) moved by ``voxels`` along ``axis``, zero-filled (not wrapped round: on
    ACDC's 6-18 slices a wrapped shift of 10 along the slice axis is the label itself, or its ends swapped); all
    ``False`` when more than half the foreground would leave the grid (no misregistration moves a label off the
    image), so :func:`registration_shift` gives ``None`` and the shift is not counted."""
    out = np.zeros_like(foreground)
    n = foreground.shape[axis]
    if voxels >= n:
        return out
    source = [slice(None)] * 3
    target = [slice(None)] * 3
    source[axis], target[axis] = slice(0, n - voxels), slice(voxels, n)
    out[tuple(target)] = foreground[tuple(source)]
    return out if 2 * out.sum() >= foreground.sum() else np.zeros_like(foreground)


def development_cases(anatomy: str) -> List[str]:
    root = DATA / anatomy
    cases = sorted(case_id(p) for p in (root / "labelsTr").glob("*.nii.gz"))
    reserved = read_reserved(root / "reserved.txt")
    split = benchmark_split(cases, reserved, acdc_patient if anatomy == "acdc" else each_case)
    dev = sorted(split.development.pool + split.development.eval)
    assert not set(dev) & set(reserved)
    return dev


def wrong_labels(label: np.ndarray, num_classes: int) -> Dict[str, np.ndarray]:
    """Labels with the wrong meaning made from a true one."""
    from scipy import ndimage

    out = {}
    swapped = label.copy()
    if num_classes == 3:
        swapped[label == 1], swapped[label == 2] = 2, 1
    else:  # ACDC: right and left ventricle cavities swapped
        swapped[label == 1], swapped[label == num_classes - 1] = num_classes - 1, 1
    out["swapped"] = swapped
    plane = sorted(np.argsort(label.shape)[-2:])  # a contour is drawn in the plane of the two largest axes
    flat = np.zeros((3, 3, 3), dtype=bool)
    flat[tuple(slice(None) if a in plane else slice(1, 2) for a in range(3))] = True
    for name, structure in (("outline_3d", None), ("outline_in_plane", flat)):
        outline = np.zeros_like(label)
        for c in range(1, num_classes):
            mask = label == c
            outline[mask & ~ndimage.binary_erosion(mask, structure=structure)] = c
        out[name] = outline
    where = np.nonzero(label)
    thin = int(np.argmin(label.shape))
    middle = (int(where[thin].min()) + int(where[thin].max())) // 2
    one = np.zeros_like(label)
    index = [slice(None)] * 3
    index[thin] = middle
    one[tuple(index)] = label[tuple(index)]
    out["one_slice"] = one
    box = np.zeros_like(label)
    box[tuple(slice(int(w.min()), int(w.max()) + 1) for w in where)] = 1
    out["filled_box"] = box
    out["inverted"] = (label == 0).astype(label.dtype)
    return out


def measure(anatomy: str, model_path: str) -> Dict[str, Any]:
    from ASSFTActive.inference import Predictor
    from ASSFTActive.models import load_model
    from ASSFTActive.store import resolve_card

    cases = development_cases(anatomy)
    root = DATA / anatomy
    model = None
    if model_path == "default" or Path(model_path).expanduser().exists():
        model = load_model(resolve_card(str(Path(model_path).expanduser()) if model_path != "default" else "default"))
    num_classes = model.card.num_classes if model is not None else 4
    class_names = list(model.card.class_names[1:]) if model is not None else ["RV", "myocardium", "LV"]  # its card
    shapes, pairs = [], []
    shifts = {"none": None, **BENCHMARK_SHIFTS[anatomy]}
    prediction_rows: Dict[str, List[Dict[str, Any]]] = {name: [] for name in shifts}
    wrong: Dict[str, List[Dict[str, Any]]] = {}
    predictors = Predictor(model) if model is not None else None
    for case in cases:
        image = read_volume(root / "imagesTr" / f"{case}.nii.gz")
        label = np.asarray(read_label(root / "labelsTr" / f"{case}.nii.gz", image, num_classes).array)
        shape = label_shape(case, label, image.spacing, num_classes)
        shapes.append(shape)
        pairs.append((case, image, label))
        for kind, bad in wrong_labels(label, num_classes).items():
            wrong.setdefault(kind, []).append(
                {"case": case, "shape": label_shape(case, bad, image.spacing, num_classes).__dict__}
            )
        if predictors is None:
            continue
        for name, shift in shifts.items():
            shown = image if shift is None else apply_shift(image, shift, case)
            predicted = predictors.predict(shown).label
            agreement = foreground_agreement(case, label, predicted)
            overlap = class_overlap(case, label, predicted, num_classes)
            shift = registration_shift(label > 0, predicted > 0, image.spacing)
            moved = (
                {
                    f"shifted_{d}_axis{a}": registration_shift(
                        moved_label(label > 0, d, a), predicted > 0, image.spacing
                    )
                    for d in SHIFTS_VOXELS
                    for a in range(3)
                }
                if name == "none"
                else {}
            )
            pairs_kj = [(k, j) for k in range(1, num_classes) for j in range(k + 1, num_classes)]
            bad = wrong_labels(label, num_classes)["swapped"]
            swapped_overlap = class_overlap(case, bad, predicted, num_classes)
            prediction_rows[name].append(
                {
                    "case": case,
                    "excess": agreement.excess,
                    "away": agreement.away,
                    "counts": overlap.counts,
                    "shift_gain": shift.gain if shift is not None else None,
                    "shifted_label_gain": {k: (v.gain if v is not None else None) for k, v in moved.items()},
                    "swap": [[k, j, *overlap.swap(k, j)] for k, j in pairs_kj],
                    "swapped_label_swap": [[k, j, *swapped_overlap.swap(k, j)] for k, j in pairs_kj],
                }
            )
    return {
        "cases": cases,
        "class_names": class_names,
        "shapes": [s.__dict__ for s in shapes],
        "predictions": prediction_rows if predictors is not None else None,
        "wrong": wrong,
        "model": model_path if model is not None else None,
    }


def limits(measured: Dict[str, Any]) -> Dict[str, Any]:
    shapes = [s for s in measured["shapes"] if s["thinnest"] > 0]
    share = max(s["volume_share"] for s in shapes)
    fill = max(s["box_fill"] for s in shapes)
    thinnest = min(s["thinnest"] for s in shapes)
    interior = min(s["interior_share"] for s in shapes)
    names = measured["class_names"]
    volumes = {
        name: (min(s["class_volume_mm3"][i] for s in shapes), max(s["class_volume_mm3"][i] for s in shapes))
        for i, name in enumerate(names)
    }
    out = {
        "worst_true": {
            "volume_share": share,
            "box_fill": fill,
            "thinnest": thinnest,
            "interior_share": interior,
            "class_volume_mm3": volumes,
        },
        "max_volume_share": round(min(0.5, 2 * share), 4),
        "max_box_fill": round((1.0 + fill) / 2, 4),
        "min_thinnest": 2 if thinnest >= 2 else 1,
        "min_interior_share": round(interior / 2, 4),
        "min_swap_share": MIN_SWAP_SHARE,
        "class_volume_mm3": {n: [round(lo / 3, 1), round(hi * 3, 1)] for n, (lo, hi) in volumes.items()},
    }
    if measured["predictions"] is not None:
        worst_swap, worst_excess, worst_away, worst_gain = 0.0, 0.0, 0.0, 1.0
        per_shift = {}
        for name, rows in measured["predictions"].items():
            swap = max([r for row in rows for _, _, r, sh in row["swap"] if sh >= MIN_SWAP_SHARE] or [0.0])
            excess = max(row["excess"] for row in rows)
            away = max(row["away"] for row in rows)
            pooled = pooled_overlap([ClassOverlap(row["case"], tuple(map(tuple, row["counts"]))) for row in rows])
            swap = max(
                [swap]
                + [pooled.swap(k, j)[0] for k, j, *_ in rows[0]["swap"] if pooled.swap(k, j)[1] >= MIN_SWAP_SHARE]
            )
            gain = max([row["shift_gain"] for row in rows if row["shift_gain"] is not None] or [1.0])
            per_shift[name] = {"swap_ratio": swap, "excess": excess, "away": away, "shift_gain": gain}
            worst_gain = max(worst_gain, gain)
            worst_swap, worst_excess, worst_away = (
                max(worst_swap, swap),
                max(worst_excess, excess),
                max(worst_away, away),
            )
        out["worst_true"].update(
            {
                "swap_ratio": worst_swap,
                "excess": worst_excess,
                "away": worst_away,
                "shift_gain": worst_gain,
                "per_shift": per_shift,
            }
        )
        # true labels lying away from the prediction (they would be refused if the model located them)
        lying_away = [
            row["excess"] for rows in measured["predictions"].values() for row in rows if row["away"] > AWAY_RATIO
        ]
        out["worst_true"]["lying_away"] = len(lying_away)
        out["worst_true"]["least_excess_lying_away"] = min(lying_away) if lying_away else None
        out["max_swap_ratio"] = round(max(1.0, 2 * worst_swap), 3)
        out["max_shift_gain"] = round(1.0 + 2 * (worst_gain - 1.0), 3)
        out["warn_shift_gain"] = math.ceil(worst_gain * 1000) / 1000
        out["max_away_excess"] = math.floor(min(lying_away) / 2 * 100) / 100 if lying_away else None
    else:
        out["max_swap_ratio"] = None
        out["max_shift_gain"] = None
        out["warn_shift_gain"] = None
        out["max_away_excess"] = None
    return out


def caught(measured: Dict[str, Any], lim: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """Share of the wrong labels each check catches at the limits (shape checks; swaps under every shift; shifted
    labels among the shifts that keep half the label on the grid, ``None`` when none does)."""
    rates = {}
    names = measured["class_names"]
    for kind, rows in measured["wrong"].items():
        hit = 0
        for row in rows:
            s = row["shape"]
            span = lim["class_volume_mm3"]
            volumes_out = any(
                not span[n][0] <= s["class_volume_mm3"][i] <= span[n][1]
                for i, n in enumerate(names)
                if s["class_volume_mm3"][i] > 0
            )
            hit += bool(
                s["thinnest"] == 0
                or s["volume_share"] > lim["max_volume_share"]
                or s["box_fill"] > lim["max_box_fill"]
                or s["thinnest"] < lim["min_thinnest"]
                or s["interior_share"] < lim["min_interior_share"]
                or volumes_out
            )
        rates[kind] = hit / len(rows)
    if measured["predictions"] is not None and lim["max_swap_ratio"] is not None:
        for name, rows in measured["predictions"].items():
            hit = sum(
                any(r > lim["max_swap_ratio"] and sh >= MIN_SWAP_SHARE for _, _, r, sh in row["swapped_label_swap"])
                for row in rows
            )
            rates[f"swapped_by_prediction_{name}"] = hit / len(rows)
        for d in SHIFTS_VOXELS:  # over the three axes
            gains = [
                row["shifted_label_gain"][f"shifted_{d}_axis{a}"]
                for row in measured["predictions"]["none"]
                for a in range(3)
            ]
            counted = [g for g in gains if g is not None]  # shifts that keep half the label on the grid
            rates[f"shifted_{d}_voxels_by_prediction"] = (
                sum(g > lim["max_shift_gain"] for g in counted) / len(counted) if counted else None
            )
    return rates


def finite(value: Any) -> Any:
    """``value`` with infinite numbers as ``None`` (JSON has no infinity), recursively."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--acdc-model",
        default="~/.cache/assft/acdc-source",
        help="folder of the ACDC source model (scripts/train_acdc_source.py)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()
    results: Dict[str, Any] = {}
    for anatomy, model in (("hippocampus", "default"), ("acdc", args.acdc_model)):
        if not (DATA / anatomy).exists():
            print(f"{anatomy}: {DATA / anatomy} absent, skipped")
            continue
        measured = measure(anatomy, model)
        lim = limits(measured)
        lim["caught"] = caught(measured, lim)
        lim["development_cases"] = len(measured["cases"])
        lim["model"] = measured["model"]
        results[anatomy] = lim
    measured_swaps = [r["max_swap_ratio"] for r in results.values() if r["max_swap_ratio"] is not None]
    results["default"] = {  # only what does not depend on the structure's shape and size
        "max_volume_share": 0.5,
        "max_box_fill": 1.0,
        "min_thinnest": 2,
        "min_interior_share": 0.0,
        "max_swap_ratio": max(measured_swaps) if measured_swaps else None,
        "min_swap_share": MIN_SWAP_SHARE,
        "class_volume_mm3": None,
        "max_shift_gain": None,
        "max_away_excess": min(  # the loosest measured: no true label of any anatomy refused
            [r["max_away_excess"] for r in results.values() if r.get("max_away_excess") is not None] or [None]
        ),
    }
    for anatomy in ("hippocampus", "acdc"):
        if anatomy in results and results[anatomy]["max_swap_ratio"] is None:
            results[anatomy]["max_swap_ratio"] = results["default"]["max_swap_ratio"]
            results[anatomy]["max_swap_ratio_from"] = "default (no model of this anatomy on this machine)"
    record = {
        "script": "scripts/measure_label_checks.py",
        "seconds": round(time.perf_counter() - start, 1),
        "split": "development (Testing.Benchmarks.harness.splits.benchmark_split), reserved.txt excluded",
        "anatomies": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite(record), indent=1) + "\n")
    print(f"{'anatomy':<12} {'share':>7} {'fill':>6} {'thin':>5} {'interior':>8} {'swap':>6}  caught")
    for anatomy, r in results.items():
        print(
            f"{anatomy:<12} {r['max_volume_share']:>7} {r['max_box_fill']:>6} {r['min_thinnest']:>5} "
            f"{r['min_interior_share']:>8} {str(r['max_swap_ratio']):>6}  "
            + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in r.get("caught", {}).items())
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
