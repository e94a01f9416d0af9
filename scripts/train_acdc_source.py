"""Train the ACDC source model: a small MONAI UNet (RV, myocardium, LV) on the *source* split of ACDC only.

This is the second anatomy's stand-in for a pre-trained model, made like the embedded hippocampus default
(``scripts/train_embedded_default.py``): same architecture family and card format, trained from scratch, seeded.

Usage (from the repository root; on one CPU thread of a shared 2-core machine training took 11.7 min and the
evaluation sweep about 10 min):

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py            # train, then evaluate
    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py --evaluate # evaluate only

Data and split: ``../shared/data/acdc`` (200 cine-MRI volumes, 100 patients x 2 frames, identity affines). The split
is :func:`harness.splits.split_acdc`: a hash of the *patient* (both frames always in the same part), the 40
volumes of ``reserved.txt`` left out before splitting and never read. Training uses the source part only; the source
patients whose hash bucket is 0 (:func:`harness.splits.hold_out`) are held out for the source-test Dice.

Where the model goes: ``--out`` (default ``~/.cache/assft/acdc-source``, the folder the annotation-efficiency
benchmark looks in with ``--anatomy acdc``), a folder holding ``card.json`` and ``weights.safetensors``. It is kept
out of the repository on purpose: ACDC is CC BY-NC-SA 4.0 (non-commercial), and weights trained on it are derived
from it, so they must not ship with the project.

Geometry (why the card's spacing and patch size look the way they do): the volumes are stored without spacing
(identity affine, 1 "mm" voxels in voxel space) with 154-428 x 154-512 voxels in plane but only 6-18 slices, the
real slices being 5-10 mm apart against 1.4-1.7 mm in plane. So:

- ``spacing`` ``[2, 2, 1]`` halves the in-plane grid only (median volume 216 x 256 x 9 -> 108 x 128 x 9): the heart
  (about 80 x 70 voxels in plane) keeps ~40 x 35 voxels, training and sliding-window inference get 4x cheaper, and
  no slices are interpolated across the thick slice gap.
- the UNet does not pool along Z at its first level (``strides`` ``[[2, 2, 1], [2, 2, 2], [2, 2, 2]]``, as nnU-Net
  does for anisotropic data): 8 slices become 8, 4, 2, so the coarse levels keep through-plane context without
  collapsing Z to one slice at the bottleneck.
- patches are 8 slices deep (the thinnest volume has 6: it is padded, as MONAI's sliding window pads) and
  64 x 64 in plane for training (128 x 128 original voxels: the whole heart with its surroundings), 80 x 80 for
  inference (fewer windows per volume).

Outputs besides the model: ``Testing/Benchmarks/results/acdc_source_model.md`` and ``.json`` (``--results``): the
source-test Dice per class, the target-test and target-pool Dice without a shift and under a sweep of
``harness.shifts`` strengths, and the mild and harsh shifts chosen for the benchmark
(``harness.shifts.BENCHMARK_SHIFTS["acdc"]``, chosen on the target pool; the target test is only reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

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
from ASSFTActive.io import Volume, case_id, read_label, read_volume  # noqa: E402
from ASSFTActive.models import ModelCard, build_network, load_model, save_card, save_weights  # noqa: E402
from ASSFTActive.store import resolve_card  # noqa: E402
from Testing.Benchmarks.harness.shifts import BENCHMARK_SHIFTS, ShiftConfig, apply_shift  # noqa: E402
from Testing.Benchmarks.harness.splits import (  # noqa: E402
    acdc_path_split,
    acdc_patient,
    groups_of,
    hold_out,
    read_reserved,
    split_acdc,
)

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "acdc"
#: Where the model is written and where ``Testing/Benchmarks/annotation_efficiency.py --anatomy acdc`` looks for it
#: (outside the repository: the weights derive from non-commercial data).
DEFAULT_OUT = Path("~/.cache/assft/acdc-source")
#: The ACDC-Path source model (``--split acdc_path``): trained on the dilated, infarct and normal patients only.
DEFAULT_PATH_OUT = Path("~/.cache/assft/acdc-path-source")
RESULTS = ROOT / "Testing" / "Benchmarks" / "results"

CARD = {
    "name": "acdc-source-unet",
    "architecture": "UNet",
    "arguments": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "channels": [16, 32, 64, 128],
        "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2]],
        "num_res_units": 1,
        "dropout": 0.1,
        "norm": "instance",
    },
    "weights": "weights.safetensors",
    "weights_format": "state_dict",
    "class_names": ["background", "RV", "myocardium", "LV"],
    "encoder_stages": [
        "model.0",
        "model.1.submodule.0",
        "model.1.submodule.1.submodule.0",
        "model.1.submodule.1.submodule.1.submodule",
    ],
    "patch_size": [80, 80, 8],
    "preprocessing": {"profile": "zscore_nonzero"},
    "spacing": [2.0, 2.0, 1.0],
    "orientation": "RAS",
}
#: Training patch (model-space voxels); see the module docstring.
TRAIN_PATCH = (64, 64, 8)

#: Shifts measured by ``--evaluate`` (kind, strength): the strength sweep of the scanner shift the benchmarks use,
#: and each of its parts alone at full strength, to see which part hurts.
SWEEP: Tuple[Tuple[str, float], ...] = tuple(("scanner", s) for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)) + (
    ("gamma", 1.0),
    ("bias_field", 1.0),
    ("noise", 1.0),
)


def load_split(data: Path, rule: str = "acdc") -> Dict[str, List[str]]:
    """Case ids of each part: ``train`` and ``source_test`` (the source split), ``target_pool``, ``target_test``.

    ``rule`` ``acdc``: :func:`split_acdc`; ``acdc_path``: :func:`acdc_path_split` (source = the dilated, infarct
    and normal patients; target pool / test = the development part's pool candidates / evaluation cases of the
    hypertrophic and abnormal-RV patients, the only target cases this script ever scores).
    """
    if not (data / "imagesTr").is_dir():
        sys.exit(f"error: {data} has no imagesTr folder; pass --data <ACDC folder> (../shared/data/acdc).")
    reserved = read_reserved(data / "reserved.txt")
    if not reserved:
        sys.exit(f"error: {data / 'reserved.txt'} lists no case; it must list the reserved cases.")
    cases = [case_id(p) for p in sorted((data / "imagesTr").glob("*.nii.gz"))]
    if rule == "acdc_path":
        path = acdc_path_split(cases, reserved)
        train, held_out = hold_out(path.source, acdc_patient)
        return {
            "train": list(train),
            "source_test": list(held_out),
            "target_pool": list(path.development.pool),
            "target_test": list(path.development.eval),
        }
    split = split_acdc(cases, reserved)
    train, held_out = hold_out(split.source, acdc_patient)
    return {
        "train": list(train),
        "source_test": list(held_out),
        "target_pool": list(split.target_pool),
        "target_test": list(split.target_test),
    }


def read_case(data: Path, case: str, num_classes: int) -> Tuple[Volume, Volume]:
    image = read_volume(data / "imagesTr" / f"{case}.nii.gz")
    return image, read_label(data / "labelsTr" / f"{case}.nii.gz", image, num_classes)


def train(args: argparse.Namespace, parts: Dict[str, List[str]]) -> float:
    """Train on ``parts["train"]`` and write the card (without evaluation numbers) and weights; returns seconds."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    card = ModelCard.from_dict({**CARD, "provenance": {}})
    cases = []
    for c in parts["train"]:
        image, label = read_case(args.data, c, card.num_classes)
        cases.append(SupervisedCase(case_id=c, image=image, label=label))
    network = build_network(card)
    config = TrainConfig(
        iterations=args.iterations,
        patch_size=TRAIN_PATCH,
        batch_size=4,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    start = time.time()

    def progress(event) -> None:
        if event.step % 100 == 0:
            elapsed = time.time() - start
            print(f"[{elapsed / 60:5.1f} min] {event.message}", flush=True)

    train_supervised(network, card, cases, config, hooks=[ProgressHook(progress)])
    seconds = time.time() - start
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_weights(network, out / "weights.safetensors")
    provenance = {
        "description": "Small 3D UNet trained from scratch on the source split of ACDC (cine cardiac MRI, short "
        "axis). Stands in for a pre-trained model in the annotation-efficiency benchmark's second "
        "anatomy. Not shipped: derived from non-commercial data.",
        "data": "ACDC (Bernard et al., IEEE TMI 37(11):2514-2525, 2018), CC BY-NC-SA 4.0; 100 training patients x 2 "
        "frames, SSL4MIS min-max preprocessing, identity affines (voxel space)",
        "licence_note": "derived from CC BY-NC-SA 4.0 data: non-commercial use only, do not ship",
        "split": "harness.splits.split_acdc (sha256 of the patient id; both frames in one part); every patient "
        "of reserved.txt excluded; source patients of hash bucket 0 held out (splits.hold_out)",
        "train_cases": parts["train"],
        "source_test_cases": parts["source_test"],
        "seed": args.seed,
        "iterations": args.iterations,
        "train_config": config.to_dict(),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "script": "scripts/train_acdc_source.py",
    }
    save_card(ModelCard.from_dict({**CARD, "provenance": provenance}), out / "card.json")
    print(f"trained {args.iterations} steps in {seconds / 60:.1f} min; wrote {out}", flush=True)
    return seconds


def dice_of(model, pairs: Sequence[Tuple[Volume, Volume]], cases: Sequence[str]) -> Dict[str, Any]:
    report = evaluate_model(model, None, pairs, hd95=False)
    return {
        "mean_dice": report.mean_dice(),
        "per_class": report.mean_dice_per_class(),
        "per_case": {c: [float(d) for d in m.dice] for c, m in zip(cases, report.cases)},
    }


def shifted(pairs: Sequence[Tuple[Volume, Volume]], cases: Sequence[str], shift: ShiftConfig):
    return [(apply_shift(image, shift, case), label) for (image, label), case in zip(pairs, cases)]


def evaluate(args: argparse.Namespace, parts: Dict[str, List[str]]) -> Dict[str, Any]:
    """Source-test Dice, and target pool / test Dice without a shift and under each shift of :data:`SWEEP`."""
    out = args.out.expanduser()
    card = resolve_card(out)
    model = load_model(card)
    model.network.eval()
    if args.limit:
        parts = {part: cases[: args.limit] for part, cases in parts.items()}
    data = {
        part: [read_case(args.data, c, card.num_classes) for c in parts[part]]
        for part in ("source_test", "target_pool", "target_test")
    }
    results: Dict[str, Any] = {"source_test": dice_of(model, data["source_test"], parts["source_test"])}
    print(f"source test: {json.dumps(results['source_test']['per_class'])}", flush=True)
    rows = []
    chosen = {name: shift.to_dict() for name, shift in BENCHMARK_SHIFTS["acdc"].items()}
    shifts = [None] + [ShiftConfig(kind, strength) for kind, strength in args.sweep]
    shifts += [ShiftConfig(**s) for s in chosen.values() if ShiftConfig(**s) not in shifts]
    for shift in shifts:
        row: Dict[str, Any] = {"shift": None if shift is None else shift.to_dict()}
        for part in ("target_pool", "target_test"):
            pairs = data[part] if shift is None else shifted(data[part], parts[part], shift)
            row[part] = dice_of(model, pairs, parts[part])
        rows.append(row)
        name = "none" if shift is None else f"{shift.kind.value} {shift.strength}"
        print(
            f"{name:>16}: pool {row['target_pool']['mean_dice']:.3f}, test {row['target_test']['mean_dice']:.3f} "
            f"{json.dumps({k: round(v, 3) for k, v in row['target_test']['per_class'].items()})}",
            flush=True,
        )
    results["shifts"] = rows
    results["chosen"] = chosen
    results["rule_choice"] = choose_shifts(results)
    if results["rule_choice"] != chosen:
        print(
            f"warning: the rule picks {results['rule_choice']} but harness.shifts.BENCHMARK_SHIFTS['acdc'] "
            f"holds {chosen}; update BENCHMARK_SHIFTS (or the rule) and rerun with --evaluate.",
            flush=True,
        )
    return results


def machine() -> Dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_evaluation": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.is_available(),
    }


def _row_for(results: Dict[str, Any], shift: Dict[str, Any]) -> Dict[str, Any]:
    return next(r for r in results["shifts"] if r["shift"] == shift)


def markdown(report: Dict[str, Any]) -> str:
    card = report["card"]
    prov = card["provenance"]
    res = report["results"]
    classes = card["class_names"][1:]
    fmt = lambda d: " | ".join(f"{d[c]:.3f}" for c in classes)  # noqa: E731
    parts = report["split"]
    path_split = report.get("split_name") == "acdc_path"
    lines = [
        "# ACDC-Path source model (dilated, infarct and normal patients): source-test Dice and the unseen diagnoses"
        if path_split
        else "# ACDC source model: source-test Dice and the mild / harsh shifts",
        "",
        "Written by `scripts/train_acdc_source.py` (the model itself stays outside the repository, in "
        f"`{report['model_folder_default']}`: ACDC is CC BY-NC-SA 4.0, so weights trained on it are not shipped).",
        "",
        f"- Commands: `{report['commands']['train']}`, then `{report['commands']['evaluate']}`",
        f"- Machine: {report['machine']['nproc']} CPU cores ({report['machine']['cpu']}), "
        f"{prov.get('torch_threads', 1)} torch thread for training, torch {report['machine']['torch']}, "
        f"GPU {'yes' if report['machine']['gpu'] else 'no'}; load average "
        f"{report['machine']['load_average_at_evaluation']} at the evaluation (other jobs shared the machine)",
        f"- Model: MONAI UNet channels {card['arguments']['channels']}, strides {card['arguments']['strides']}, "
        f"spacing {card['spacing']}, inference patch {card['patch_size']}, training patch "
        f"{prov['train_config']['patch_size']}; {prov['iterations']} steps of batch "
        f"{prov['train_config']['batch_size']}, AdamW lr {prov['train_config']['learning_rate']} (cosine), seed "
        f"{prov['seed']}; **training wall time {prov['train_seconds'] / 60:.1f} min**",
        f"- Split by patient (`harness.splits.{'acdc_path_split' if path_split else 'split_acdc'}`, reserved "
        "patients excluded): source "
        f"{len(parts['train']) + len(parts['source_test'])} volumes ({len(parts['train'])} trained on, "
        f"{len(parts['source_test'])} held out as source test), target pool {len(parts['target_pool'])}, target test "
        f"{len(parts['target_test'])} (volumes; two per patient)",
        "",
        "## Source test (no shift)",
        "",
        "| " + " | ".join(classes) + " | mean |",
        "|" + "---|" * (len(classes) + 1),
        f"| {fmt(res['source_test']['per_class'])} | {res['source_test']['mean_dice']:.3f} |",
        "",
        "## Target Dice under each shift (pre-trained source model, no adaptation)",
        "",
        "Mean over cases of the mean foreground Dice; per class on the target test.",
        "",
        "| shift | target pool | target test | " + " | ".join(f"test {c}" for c in classes) + " |",
        "|" + "---|" * (len(classes) + 3),
    ]
    for row in res["shifts"]:
        name = "none" if row["shift"] is None else f"{row['shift']['kind']} {row['shift']['strength']}"
        lines.append(
            f"| {name} | {row['target_pool']['mean_dice']:.3f} | {row['target_test']['mean_dice']:.3f} | "
            f"{fmt(row['target_test']['per_class'])} |"
        )
    if path_split:
        lines += [
            "",
            "## Benchmark shifts",
            "",
            "None of its own: the target pool and test are the hypertrophic and abnormal-RV patients, so the unseen "
            "diagnoses are the shift (harness setting `acdc_path`); `acdc_path_scanner` adds ACDC's mild scanner "
            'shift (`harness.shifts.BENCHMARK_SHIFTS["acdc"]["mild"]`) on top. The rows above are for reading only.',
        ]
        return "\n".join(lines) + "\n"
    agrees = res["rule_choice"] == res["chosen"]
    lines += [
        "",
        '## Chosen benchmark shifts (`harness.shifts.BENCHMARK_SHIFTS["acdc"]`)',
        "",
        report["rule"]
        + (
            " The shifts in `BENCHMARK_SHIFTS` are the ones the rule picks."
            if agrees
            else f" **The rule picks {res['rule_choice']}, not the shifts below: update `BENCHMARK_SHIFTS`.**"
        ),
        "",
        "| severity | shift | target pool | target test | " + " | ".join(f"test {c}" for c in classes) + " |",
        "|" + "---|" * (len(classes) + 4),
    ]
    for severity, shift in res["chosen"].items():
        row = _row_for(res, shift)
        lines.append(
            f"| {severity} | {shift['kind']} {shift['strength']} (seed {shift['seed']}) | "
            f"{row['target_pool']['mean_dice']:.3f} | {row['target_test']['mean_dice']:.3f} | "
            f"{fmt(row['target_test']['per_class'])} |"
        )
    return "\n".join(lines) + "\n"


#: Mild: the pool Dice may lose at most this much against no shift.
MILD_MAX_DROP = 0.10
#: Harsh: the pool Dice falls below this share of the source-test Dice.
HARSH_SHARE = 0.5

#: How the mild and harsh strengths are chosen (written into the results; :func:`choose_shifts` applies it).
RULE = (
    f"Chosen on the target pool, never on the target test, among the scanner strengths of the sweep (the kind "
    f"the hippocampus benchmark uses): **mild** is the strongest under which the source model loses at most "
    f"{MILD_MAX_DROP} mean Dice on the pool against no shift (decent: most of each structure is still found), "
    f"**harsh** the weakest under which its pool Dice falls below {HARSH_SHARE:.0%} of its source-test Dice (it "
    "fails). The target test is only reported."
)


def choose_shifts(results: Dict[str, Any]) -> Dict[str, Any]:
    """The mild and harsh scanner shifts :data:`RULE` picks from the sweep (``None`` where none qualifies)."""
    unshifted = _row_for(results, None)["target_pool"]["mean_dice"]
    source = results["source_test"]["mean_dice"]
    scanner = sorted(
        (r for r in results["shifts"] if r["shift"] is not None and r["shift"]["kind"] == "scanner"),
        key=lambda r: r["shift"]["strength"],
    )
    mild = [r["shift"] for r in scanner if r["target_pool"]["mean_dice"] >= unshifted - MILD_MAX_DROP]
    harsh = [r["shift"] for r in scanner if r["target_pool"]["mean_dice"] < HARSH_SHARE * source]
    return {"mild": mild[-1] if mild else None, "harsh": harsh[0] if harsh else None}


def parse_sweep(text: str) -> Tuple[Tuple[str, float], ...]:
    """``"scanner:0.3,gamma:1"`` -> ``(("scanner", 0.3), ("gamma", 1.0))``."""
    try:
        return tuple((kind, float(strength)) for kind, strength in (item.split(":") for item in text.split(",")))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected kind:strength,... e.g. scanner:0.3,scanner:0.7"
        ) from error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="ACDC folder (imagesTr, labelsTr, reserved.txt)"
    )
    parser.add_argument(
        "--split",
        choices=("acdc", "acdc_path"),
        default="acdc",
        help="acdc: the source split of all five diagnoses (default); acdc_path: the dilated, infarct "
        f"and normal patients only (the ACDC-Path source model; default --out {DEFAULT_PATH_OUT})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="model folder for card.json and weights.safetensors (outside the repository)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for acdc_source_model.md and .json")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the model already in --out")
    parser.add_argument(
        "--sweep",
        type=parse_sweep,
        default=SWEEP,
        help="shifts to measure, as kind:strength,... (default: the scanner sweep and its parts)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="evaluate only the first N cases of each part (smoke runs; 0 = all)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.out is None:
        args.out = DEFAULT_PATH_OUT if args.split == "acdc_path" else DEFAULT_OUT
    parts = load_split(args.data, args.split)
    print(
        f"split by patient: train {len(parts['train'])}, source test {len(parts['source_test'])}, target pool "
        f"{len(parts['target_pool'])}, target test {len(parts['target_test'])} volumes",
        flush=True,
    )
    out = args.out.expanduser()
    if args.evaluate and not (out / "card.json").is_file():
        sys.exit(f"error: {out} holds no card.json; train the model first (run this script without --evaluate).")
    if not args.evaluate:
        train(args, parts)
    results = evaluate(args, parts)
    card = json.loads((out / "card.json").read_text())
    report = {
        "card": card,
        "split": parts,
        "results": results,
        "rule": RULE,
        "split_name": args.split,
        "machine": machine(),
        "model_folder_default": str(DEFAULT_OUT if args.split == "acdc" else DEFAULT_PATH_OUT),
        "patients": {part: sorted(groups_of(cases, acdc_patient)) for part, cases in parts.items()},
        "commands": {
            "train": "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py"
            + (f" --split {args.split}" if args.split != "acdc" else "")
            + (f" --iterations {args.iterations}" if args.iterations != 3000 else ""),
            "evaluate": "OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py --evaluate"
            + (f" --split {args.split}" if args.split != "acdc" else ""),
        },
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "acdc_source_model" if args.split == "acdc" else f"{args.split}_source_model"
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
