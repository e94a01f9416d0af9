"""Adapt Model as a user gets it: target-test Dice after ``adapt_model`` on a few labels, per fine-tuning recipe.

Question (issue 8): does Adapt Model with two to eight labelled volumes make the model better, never worse, and do
the pseudo-labels add anything over the labels alone? Every arm runs the product's own ``adapt_model`` (no second
trainer) into a throw-away model store; what is measured is the model that is **active afterwards**: the adapted
one when the guard activated it, else the current (pre-trained) one. The adapted model's own Dice is recorded too,
so what the guard prevented is visible.

Setting: the pre-trained model is the embedded default (a small MONAI UNet trained on the *source* split of MSD
Hippocampus). The target site is the target pool and target test split (``ASSFTActive.splits``; the 40 cases of
``reserved.txt`` are never read) under a seeded scanner shift at two strengths: **mild** (0.3: the default model
is decent, mean Dice ~0.64) and **harsh** (0.7: it fails, ~0.46). Labelled volumes are random draws from the pool
(the query is not under test here; ``annotation_efficiency.py`` measures queries), the same draws for every arm.

Statistics: per budget and arm, the mean target-test Dice over draws × training seeds; the paired per-test-case
difference to ``labels_only`` (same draws and seeds) and to the floor, with a 95 % t-interval over test cases; and
the noise floor: the standard deviation of the mean test Dice across training seeds of the same draw (how much two
runs of the same recipe differ), printed beside every gap.

Usage (from the repository root; writes ``results/adapt_<profile><tag>.{json,md}``; the commands behind each
table of RESULTS.md are listed there):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/adapt_benchmark.py --profile quick --arms assft,assft_no_pseudo
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/adapt_benchmark.py --summarise results/adapt_quick_x.json \
        --reference lr1e-4_plain_no_pseudo
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
RESULTS = HERE / "results"
SHIFTS = {"mild": 0.3, "harsh": 0.7}

#: Arms: FinetuneConfig overrides on top of the product defaults (the ``assft`` arm is the default itself).
#: ``legacy`` is the recipe before issue 8 (full learning rate everywhere, no penalty, no guard).
ARMS: Dict[str, Dict[str, Any]] = {
    "assft": {},
    "assft_no_pseudo": {"pseudo": {"mode": "none"}},
    "labels_only_unguarded": {"pseudo": {"mode": "none"}, "validation": {"guard": False}},
    "assft_unguarded": {"validation": {"guard": False}},
    "legacy": {"train": {"learning_rate": 1e-3, "encoder_lr_scale": 1.0, "l2sp_weight": 0.0},
               "pseudo": {"mode": "selective", "teacher": "offline", "strong_view": False,
                          "cutmix_probability": 0.0, "voxel_threshold": None},
               "validation": {"guard": False}},
    "legacy_no_pseudo": {"train": {"learning_rate": 1e-3, "encoder_lr_scale": 1.0, "l2sp_weight": 0.0},
                         "pseudo": {"mode": "none"}, "validation": {"guard": False}},
    "protected_no_pseudo": {"train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
                            "pseudo": {"mode": "none"}, "validation": {"guard": False}},
    "protected_offline": {"train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
                          "pseudo": {"mode": "selective", "teacher": "offline", "strong_view": False,
                                     "cutmix_probability": 0.0, "voxel_threshold": None},
                          "validation": {"guard": False}},
    "protected_mean_teacher": {"train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
                               "pseudo": {"mode": "selective", "teacher": "ema", "strong_view": True,
                                          "cutmix_probability": 0.5, "voxel_threshold": 0.7,
                                          "class_keep_min": 0.5},
                               "validation": {"guard": False}},
}
#: The learning-rate and protection sweep that chose the defaults (RESULTS.md, "Few-label fine-tuning").
_PLAIN = {"encoder_lr_scale": 1.0, "l2sp_weight": 0.0}
_PROTECTED = {"encoder_lr_scale": 0.1, "l2sp_weight": 0.01}
_OFFLINE = {"mode": "selective", "teacher": "offline", "strong_view": False, "cutmix_probability": 0.0,
            "voxel_threshold": None}
_MEAN_TEACHER = {"mode": "selective", "teacher": "ema", "strong_view": True, "cutmix_probability": 0.5,
                 "voxel_threshold": 0.7, "class_keep_min": 0.5}
for _lr, _name in ((1e-4, "lr1e-4"), (3e-5, "lr3e-5")):
    ARMS[f"{_name}_plain_no_pseudo"] = {"train": {"learning_rate": _lr, **_PLAIN}, "pseudo": {"mode": "none"},
                                        "validation": {"guard": False}}
    ARMS[f"{_name}_protected_no_pseudo"] = {"train": {"learning_rate": _lr, **_PROTECTED},
                                            "pseudo": {"mode": "none"}, "validation": {"guard": False}}
    ARMS[f"{_name}_protected_offline"] = {"train": {"learning_rate": _lr, **_PROTECTED}, "pseudo": _OFFLINE,
                                          "validation": {"guard": False}}
    ARMS[f"{_name}_protected_mean_teacher"] = {"train": {"learning_rate": _lr, **_PROTECTED},
                                               "pseudo": _MEAN_TEACHER, "validation": {"guard": False}}
    ARMS[f"{_name}_plain_offline"] = {"train": {"learning_rate": _lr, **_PLAIN}, "pseudo": _OFFLINE,
                                      "validation": {"guard": False}}
    ARMS[f"{_name}_plain_mean_teacher"] = {"train": {"learning_rate": _lr, **_PLAIN}, "pseudo": _MEAN_TEACHER,
                                           "validation": {"guard": False}}
    ARMS[f"{_name}_plain_mean_teacher_confidence"] = {"train": {"learning_rate": _lr, **_PLAIN},
                                                      "pseudo": {**_MEAN_TEACHER, "dist_weight": 0.0},
                                                      "validation": {"guard": False}}

PROFILES = {
    "quick": {"budgets": [2, 4], "draws": 2, "train_seeds": 2, "pool_size": 36, "test_size": 20,
              "iterations": 100, "semi_iterations": 100},
    "full": {"budgets": [2, 4, 8], "draws": 3, "train_seeds": 3, "pool_size": 0, "test_size": 0,
             "iterations": 100, "semi_iterations": 100},
}


@dataclass(frozen=True)
class Task:
    shift: str
    budget: int
    draw: int
    seed: int
    arm: str
    labeled: Tuple[str, ...]


_WORKER: Dict[str, Any] = {}


def _init(setup: Dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(setup["threads"])
    _WORKER.clear()
    _WORKER.update(setup)
    _WORKER["test"] = {}


def _test_cases(shift: str):
    """Shifted target-test images with their labels (cached per worker)."""
    from ASSFTActive.io import read_label, read_volume
    from ASSFTActive.models import resolve_card
    from ASSFTActive.shifts import ShiftConfig, apply_shift

    if shift not in _WORKER["test"]:
        classes = resolve_card("default").num_classes
        root = Path(_WORKER["data"])
        pairs = []
        for case in _WORKER["test_ids"]:
            original = read_volume(root / "imagesTr" / f"{case}.nii.gz")
            image = apply_shift(original, ShiftConfig(strength=SHIFTS[shift]), case)
            pairs.append((image, read_label(root / "labelsTr" / f"{case}.nii.gz", original, classes)))
        _WORKER["test"][shift] = pairs
    return _WORKER["test"][shift]


def _test_dice(card_path: Optional[Path], shift: str) -> List[float]:
    """Mean foreground Dice of each target-test case for a model card (``None`` = the embedded default)."""
    from ASSFTActive.evaluate import evaluate_model
    from ASSFTActive.models import load_card, load_model, resolve_card

    card = resolve_card("default") if card_path is None else load_card(card_path)
    report = evaluate_model(load_model(card), None, _test_cases(shift), hd95=False)
    return [float(np.mean(c.dice)) for c in report.cases]


def _config(arm: str, seed: int):
    from ASSFTActive.finetune.config import FinetuneConfig

    data = FinetuneConfig().to_dict()
    data["train"].update(iterations=_WORKER["iterations"], seed=seed)
    data["semi_iterations"] = _WORKER["semi_iterations"]
    data["predict_pool"] = False
    data["validation"]["hd95"] = False
    for key, value in ARMS[arm].items():
        data[key].update(value)
    return FinetuneConfig.from_dict(data)


def run_task(task: Task) -> Dict[str, Any]:
    from ASSFTActive.finetune.adapt import adapt_model

    if task.arm == "floor":
        return {"task": task.__dict__, "test_dice": _test_dice(None, task.shift), "activated": False,
                "adapted_dice": None, "seconds": 0.0}
    root = Path(_WORKER["data"])
    images = {c: str(Path(_WORKER["pool_dirs"][task.shift]) / f"{c}.nii.gz") for c in _WORKER["pool_ids"]}
    labels = {c: str(root / "labelsTr" / f"{c}.nii.gz") for c in task.labeled}
    store = tempfile.mkdtemp(prefix="adapt-bench-")
    start = time.perf_counter()
    try:
        result = adapt_model(images, labels, store=store, model="default", name="bench",
                             config=_config(task.arm, task.seed))
        adapted = _test_dice(result.card_path, task.shift)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    floor = _test_dice(None, task.shift)
    return {"task": task.__dict__, "activated": result.activated, "adapted_dice": adapted,
            "test_dice": adapted if result.activated else floor, "activation": result.decision.to_dict(),
            "kept": [d.case_id for d in result.pseudo if d.kept], "seconds": time.perf_counter() - start}


def _interval(values: Sequence[float]) -> Tuple[float, float]:
    from ASSFTActive.finetune.guard import mean_interval

    mean, low, high = mean_interval(values)
    return mean, (high - low) / 2 if not math.isnan(low) else float("nan")


def summarise(runs: List[Dict[str, Any]], arms: Sequence[str], budgets: Sequence[int],
              reference: str = "assft_no_pseudo") -> Dict[str, Any]:
    """Per shift, budget and arm: mean Dice, paired differences to ``reference`` (labels only) and to the floor,
    and the noise floor."""
    table: Dict[str, Any] = {}
    for shift in SHIFTS:
        floor_runs = [r for r in runs if r["task"]["shift"] == shift and r["task"]["arm"] == "floor"]
        if not floor_runs:
            continue
        floor = np.array(floor_runs[0]["test_dice"])
        table[shift] = {"floor": float(floor.mean()), "budgets": {}}
        for budget in budgets:
            row = {}
            for arm in arms:
                mine = [r for r in runs if r["task"]["shift"] == shift and r["task"]["budget"] == budget
                        and r["task"]["arm"] == arm]
                if not mine:
                    continue
                per_run = np.array([r["test_dice"] for r in mine])  # [runs, cases]
                per_case = per_run.mean(axis=0)
                by_draw: Dict[int, List[float]] = {}
                for r in mine:
                    by_draw.setdefault(r["task"]["draw"], []).append(float(np.mean(r["test_dice"])))
                spreads = [float(np.std(v, ddof=1)) for v in by_draw.values() if len(v) > 1]
                entry = {"mean": float(per_case.mean()), "runs": len(mine),
                         "run_means": [float(x) for x in per_run.mean(axis=1)],
                         "activated": sum(bool(r["activated"]) for r in mine),
                         "adapted_mean": (float(np.mean([np.mean(r["adapted_dice"]) for r in mine]))
                                          if all(r["adapted_dice"] is not None for r in mine) else None),
                         "noise_floor": float(np.mean(spreads)) if spreads else None,
                         "vs_floor": _interval(per_case - floor)}
                paired = [r for r in runs if r["task"]["shift"] == shift and r["task"]["budget"] == budget
                          and r["task"]["arm"] == reference]
                if paired and arm != reference:
                    ref = np.array([r["test_dice"] for r in paired]).mean(axis=0)
                    entry["vs_labels_only"] = _interval(per_case - ref)
                row[arm] = entry
            table[shift]["budgets"][str(budget)] = row
    return table


def markdown(report: Dict[str, Any]) -> str:
    lines = [f"# Adapt Model benchmark ({report['profile']}{report['tag']})", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; {report['seconds'] / 60:.1f} min; revision {report['revision']}.", "",
             "Mean target-test Dice of the model that is active after Adapt Model (the adapted one when the guard "
             "activated it, else the pre-trained one); `adapted` is the adapted model's own Dice; Δ are paired "
             "per-test-case differences with a 95 % interval over test cases; `noise` is the standard deviation of "
             "the mean Dice between training seeds of the same labelled set.", ""]
    for shift, data in report["summary"].items():
        lines += [f"## {shift} shift (strength {SHIFTS[shift]}), floor {data['floor']:.3f}", "",
                  f"| budget | arm | active Dice | adapted Dice | activated | Δ vs floor | Δ vs {report['reference']} "
                  "| noise |",
                  "|---|---|---|---|---|---|---|---|"]
        for budget, row in data["budgets"].items():
            for arm, e in row.items():
                def fmt(pair):
                    return "" if pair is None else f"{pair[0]:+.3f} ± {pair[1]:.3f}"

                adapted = "" if e["adapted_mean"] is None else f"{e['adapted_mean']:.3f}"
                noise = "" if e["noise_floor"] is None else f"{e['noise_floor']:.3f}"
                lines.append(f"| {budget} | {arm} | {e['mean']:.3f} | {adapted} | {e['activated']}/{e['runs']} | "
                             f"{fmt(e['vs_floor'])} | {fmt(e.get('vs_labels_only'))} | {noise} |")
        lines.append("")
    return "\n".join(lines)


def write_pool(data: Path, pool: Sequence[str], strength: float, folder: Path) -> None:
    from ASSFTActive.io import read_volume, write_volume
    from ASSFTActive.shifts import ShiftConfig, apply_shift

    folder.mkdir(parents=True, exist_ok=True)
    for case in pool:
        original = read_volume(data / "imagesTr" / f"{case}.nii.gz")
        write_volume(apply_shift(original, ShiftConfig(strength=strength), case), folder / f"{case}.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arms", default="assft,assft_no_pseudo,legacy,legacy_no_pseudo")
    parser.add_argument("--shifts", default="mild,harsh")
    parser.add_argument("--budgets", type=int, nargs="+")
    parser.add_argument("--draws", type=int)
    parser.add_argument("--train-seeds", type=int)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--semi-iterations", type=int)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference", default="assft_no_pseudo", help="the labels-only arm others are paired with")
    parser.add_argument("--tag", default="")
    parser.add_argument("--first-seed", type=int, default=0, help="training seeds start here (to add seeds)")
    parser.add_argument("--summarise", type=Path, nargs="+", metavar="JSON",
                        help="only rewrite the tables of earlier runs' JSON (the runs of several files are merged "
                             "into the first, e.g. more seeds of the same arms; --reference may change)")
    args = parser.parse_args()
    if args.summarise is not None:
        report = json.loads(args.summarise[0].read_text())
        for extra in args.summarise[1:]:
            more = json.loads(extra.read_text())
            report["runs"] += [r for r in more["runs"] if r["task"]["arm"] != "floor"]
            report["command"] += f" + {more['command']}"
            report["seconds"] += more["seconds"]
        arms = list(dict.fromkeys(r["task"]["arm"] for r in report["runs"] if r["task"]["arm"] != "floor"))
        report.update(reference=args.reference, tag=report.get("tag", ""),
                      summary=summarise(report["runs"], arms, report["profile_settings"]["budgets"], args.reference))
        args.summarise[0].write_text(json.dumps(report, indent=1))
        args.summarise[0].with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return
    if not (args.data / "imagesTr").is_dir():
        raise SystemExit(f"error: {args.data} has no imagesTr folder (MSD hippocampus expected)")
    profile = dict(PROFILES[args.profile])
    for key in ("budgets", "draws", "train_seeds", "iterations", "semi_iterations"):
        if getattr(args, key) is not None:
            profile[key] = getattr(args, key)
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {unknown}; known: {sorted(ARMS)}")
    shifts = [s for s in args.shifts.split(",") if s]

    from ASSFTActive.splits import split_cases

    reserved = set((args.data / "reserved.txt").read_text().split())
    cases = sorted(p.name[: -len(".nii.gz")] for p in (args.data / "imagesTr").glob("*.nii.gz"))
    split = split_cases(cases, reserved)
    pool = list(split.target_pool[: profile["pool_size"] or None])
    test = list(split.target_test[: profile["test_size"] or None])
    assert not (set(pool) | set(test)) & reserved, "a reserved case was selected"
    rng_tasks: List[Task] = []
    for shift in shifts:
        rng_tasks.append(Task(shift, 0, 0, 0, "floor", ()))
        for budget in profile["budgets"]:
            for draw in range(profile["draws"]):
                rng = np.random.default_rng([budget, draw, 11])
                labeled = tuple(sorted(rng.choice(pool, size=budget, replace=False).tolist()))
                for seed in range(args.first_seed, args.first_seed + profile["train_seeds"]):
                    for arm in arms:
                        rng_tasks.append(Task(shift, budget, draw, seed, arm, labeled))
    work = Path(tempfile.mkdtemp(prefix="adapt-bench-pool-"))
    started = time.time()
    try:
        pool_dirs = {}
        for shift in shifts:
            pool_dirs[shift] = str(work / shift)
            write_pool(args.data, pool, SHIFTS[shift], work / shift)
        setup = {"data": str(args.data), "pool_ids": pool, "test_ids": test, "pool_dirs": pool_dirs,
                 "iterations": profile["iterations"], "semi_iterations": profile["semi_iterations"],
                 "threads": max(1, (os.cpu_count() or 2) // args.workers)}
        runs = []
        with futures.ProcessPoolExecutor(args.workers, initializer=_init, initargs=(setup,)) as pool_exec:
            jobs = {pool_exec.submit(run_task, t): t for t in rng_tasks}
            for done, job in enumerate(futures.as_completed(jobs), 1):
                result = job.result()
                runs.append(result)
                t = result["task"]
                print(f"[{done}/{len(jobs)}] {t['shift']} B={t['budget']} draw {t['draw']} seed {t['seed']} "
                      f"{t['arm']}: active {np.mean(result['test_dice']):.3f} "
                      f"activated={result['activated']} ({result['seconds']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    report = {
        "profile": args.profile, "tag": args.tag, "command": " ".join(["Testing/Benchmarks/adapt_benchmark.py"]
                                                                      + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "revision": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
        "seconds": time.time() - started, "profile_settings": profile, "arms": {a: ARMS[a] for a in arms},
        "pool": pool, "test": test, "runs": runs, "reference": args.reference,
        "summary": summarise(runs, arms, profile["budgets"], args.reference),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"adapt_{args.profile}{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
