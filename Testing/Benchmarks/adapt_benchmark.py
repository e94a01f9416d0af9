"""Adapt Model as a user gets it: target-test Dice after ``run_adaptation`` on a few labels, per fine-tuning recipe.

Question (issue 8): does Adapt Model with two to eight labelled volumes make the model better, never worse, and do
the pseudo-labels add anything over the labels alone? Every arm runs the product's own adaptation spine
(``run_adaptation`` with ASSFT's or SFR's method; the oracle arm hands in its own pseudo-labeller, nothing of the
product is patched; no second trainer) into a throw-away model store; what is measured is the model that is
**active afterwards**: the adapted one when the guard activated it, else the current (pre-trained) one. The adapted
model's own Dice is recorded too, so what the guard prevented is visible.

Setting: the pre-trained model is the embedded default (a small MONAI UNet trained on the *source* split of MSD
Hippocampus). The target site is the target pool and target test split (``harness.splits``; the 40 cases of
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
from Testing.Benchmarks.harness.shifts import BENCHMARK_SHIFTS  # noqa: E402

#: Shift strength of each severity: the hippocampus's benchmark shifts (scanner kind, seed 0).
SHIFTS = {severity: shift.strength for severity, shift in BENCHMARK_SHIFTS["hippocampus"].items()}

#: Arms: FinetuneConfig overrides on top of the product defaults (the ``assft`` arm is the default itself).
#: ``legacy`` is the recipe before issue 8 (full learning rate everywhere, no penalty, no guard).
ARMS: Dict[str, Dict[str, Any]] = {
    "assft": {},
    "assft_no_pseudo": {"pseudo": {"mode": "none"}},
    "labels_only_unguarded": {"pseudo": {"mode": "none"}, "validation": {"guard": False}},
    "assft_unguarded": {"validation": {"guard": False}},
    "legacy": {
        "train": {"learning_rate": 1e-3, "encoder_lr_scale": 1.0, "l2sp_weight": 0.0},
        "pseudo": {
            "mode": "selective",
            "teacher": "offline",
            "strong_view": False,
            "spatial_view": False,
            "cutmix_probability": 0.0,
            "voxel_threshold": None,
        },
        "validation": {"guard": False},
    },
    "legacy_no_pseudo": {
        "train": {"learning_rate": 1e-3, "encoder_lr_scale": 1.0, "l2sp_weight": 0.0},
        "pseudo": {"mode": "none"},
        "validation": {"guard": False},
    },
    "protected_no_pseudo": {
        "train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
        "pseudo": {"mode": "none"},
        "validation": {"guard": False},
    },
    "protected_offline": {
        "train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
        "pseudo": {
            "mode": "selective",
            "teacher": "offline",
            "strong_view": False,
            "spatial_view": False,
            "cutmix_probability": 0.0,
            "voxel_threshold": None,
        },
        "validation": {"guard": False},
    },
    "protected_mean_teacher": {
        "train": {"learning_rate": 3e-4, "encoder_lr_scale": 0.1, "l2sp_weight": 0.01},
        "pseudo": {
            "mode": "selective",
            "teacher": "ema",
            "strong_view": True,
            "spatial_view": False,
            "cutmix_probability": 0.5,
            "voxel_threshold": 0.7,
            "class_keep_min": 0.5,
        },
        "validation": {"guard": False},
    },
}
#: The learning-rate and protection sweep that chose the defaults (RESULTS.md, "Few-label fine-tuning").
_PLAIN = {"encoder_lr_scale": 1.0, "l2sp_weight": 0.0}
_PROTECTED = {"encoder_lr_scale": 0.1, "l2sp_weight": 0.01}
_OFFLINE = {
    "mode": "selective",
    "teacher": "offline",
    "strong_view": False,
    "spatial_view": False,
    "cutmix_probability": 0.0,
    "voxel_threshold": None,
}
#: The Mean-Teacher recipe as measured in the sweep (intensity-only strong view; the spatial jitter is its own arm).
_MEAN_TEACHER = {
    "mode": "selective",
    "teacher": "ema",
    "strong_view": True,
    "spatial_view": False,
    "cutmix_probability": 0.5,
    "voxel_threshold": 0.7,
    "class_keep_min": 0.5,
}
for _lr, _name in ((1e-4, "lr1e-4"), (3e-5, "lr3e-5")):
    ARMS[f"{_name}_plain_no_pseudo"] = {
        "train": {"learning_rate": _lr, **_PLAIN},
        "pseudo": {"mode": "none"},
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_protected_no_pseudo"] = {
        "train": {"learning_rate": _lr, **_PROTECTED},
        "pseudo": {"mode": "none"},
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_protected_offline"] = {
        "train": {"learning_rate": _lr, **_PROTECTED},
        "pseudo": _OFFLINE,
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_protected_mean_teacher"] = {
        "train": {"learning_rate": _lr, **_PROTECTED},
        "pseudo": _MEAN_TEACHER,
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_plain_offline"] = {
        "train": {"learning_rate": _lr, **_PLAIN},
        "pseudo": _OFFLINE,
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_plain_mean_teacher"] = {
        "train": {"learning_rate": _lr, **_PLAIN},
        "pseudo": _MEAN_TEACHER,
        "validation": {"guard": False},
    }
    ARMS[f"{_name}_plain_mean_teacher_confidence"] = {
        "train": {"learning_rate": _lr, **_PLAIN},
        "pseudo": {**_MEAN_TEACHER, "dist_weight": 0.0},
        "validation": {"guard": False},
    }

ARMS["lr1e-4_plain_mean_teacher_spatial"] = {
    "train": {"learning_rate": 1e-4, **_PLAIN},
    "pseudo": {**_MEAN_TEACHER, "spatial_view": True},
    "validation": {"guard": False},
}
#: Oracle arms (diagnosis only, issue 8 item 3): the base arm's recipe, but the kept share of the pool is chosen by
#: the true Dice of the teacher's pseudo-labels against the hidden labels instead of by reliability: how much a
#: perfect volume selection would add.
ORACLE_ARMS = {"oracle_mean_teacher": "lr1e-4_plain_mean_teacher"}
#: Query arms (the full method, issue 8's ``assft``): the base arm's recipe on the labelled set that the product's
#: query proposes (``rank_pool`` with the default ``QueryConfig`` and the embedded model on the shifted pool), one
#: "draw" per budget; paired with the base arm on random draws (``--reference``) they give ASSFT's gain over random.
QUERY_ARMS = {"query_mean_teacher": "lr1e-4_plain_mean_teacher"}
ARMS.update({name: ARMS[base] for name, base in {**ORACLE_ARMS, **QUERY_ARMS}.items()})

#: SFR arms (issue 13): the ``Sfr`` method from the embedded SAM prior (``sfr-sam-tiny``, not Meta's SAM), guard off
#: like the sweep arms. SFR's own schedule (6,000 SAM steps, 6,000 SGD re-training steps) does not fit a CPU benchmark:
#: SAM is fine-tuned ``SFR_SAM_STEPS`` steps, the 3D re-training runs as many steps as Adapt Model's two stages, with
#: SFR's optimiser (SGD lr 0.01) and its consistency ramp shrunk in proportion (40 "epochs" over those steps).
#: ``mean_teacher_no_sam`` is SFR's own baseline: the same re-training with the SAM pseudo-labels' weight at 0 (the
#: unlabelled patches only feed the consistency term).
SFR_ARMS: Dict[str, Dict[str, Any]] = {
    "sfr": {"method": "sfr"},
    "sfr_plus": {"method": "sfr_plus"},
    "mean_teacher_no_sam": {"method": "sfr", "mean_teacher": {"pseudo_weight": 0.0}, "sam": {"iterations": 1}},
}
SFR_SAM_STEPS = 300

PROFILES = {
    "quick": {
        "budgets": [2, 4],
        "draws": 2,
        "train_seeds": 2,
        "pool_size": 36,
        "test_size": 20,
        "iterations": 100,
        "semi_iterations": 100,
    },
    "full": {
        "budgets": [2, 4, 8],
        "draws": 3,
        "train_seeds": 3,
        "pool_size": 0,
        "test_size": 0,
        "iterations": 100,
        "semi_iterations": 100,
    },
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
    from ASSFTActive.store import resolve_card
    from Testing.Benchmarks.harness.shifts import apply_shift

    if shift not in _WORKER["test"]:
        classes = resolve_card("default").num_classes
        root = Path(_WORKER["data"])
        pairs = []
        for case in _WORKER["test_ids"]:
            original = read_volume(root / "imagesTr" / f"{case}.nii.gz")
            image = apply_shift(original, BENCHMARK_SHIFTS["hippocampus"][shift], case)
            pairs.append((image, read_label(root / "labelsTr" / f"{case}.nii.gz", original, classes)))
        _WORKER["test"][shift] = pairs
    return _WORKER["test"][shift]


def _test_dice(card_path: Optional[Path], shift: str) -> List[float]:
    """Mean foreground Dice of each target-test case for a model card (``None`` = the embedded default)."""
    from ASSFTActive.evaluate import evaluate_model
    from ASSFTActive.models import load_card, load_model
    from ASSFTActive.store import resolve_card

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


class OracleLabeller:
    """A :class:`~ASSFTActive.finetune.pseudo_round.PseudoLabeller` that keeps the pool volumes whose teacher label
    has the highest true Dice (hidden labels in ``label_dir``), as many as ``keep_fraction`` of the pool."""

    def __init__(self, label_dir: Path):
        self.label_dir = label_dir

    def label_pool(self, run, round_index, network, train):
        from dataclasses import replace

        from ASSFTActive.evaluate import dice_per_class, mean_scored
        from ASSFTActive.finetune.checkpoints import PseudoLabels
        from ASSFTActive.finetune.config import PseudoMode
        from ASSFTActive.finetune.pseudo import PseudoDecision, select_reliable
        from ASSFTActive.finetune.pseudo_round import TeacherLabeller
        from ASSFTActive.io import read_label, read_volume

        everyone = TeacherLabeller(lambda c, rule: select_reliable(c, replace(rule, mode=PseudoMode.ALL)))
        everything = everyone.label_pool(run, round_index, network, train)
        classes = run.card.num_classes
        dice = {}
        for case, label in everything.labels.items():
            truth = read_label(self.label_dir / f"{case}.nii.gz", read_volume(run.pool[case]), classes).array
            dice[case] = float(mean_scored(dice_per_class(label, truth, classes)))
        order = sorted(dice, key=lambda c: (-dice[c], c))
        keep = set(order[: int(math.ceil(run.config.pseudo.keep_fraction * len(order) - 1e-9))])
        decisions = tuple(
            PseudoDecision(
                d.case_id,
                d.confidence,
                d.distance,
                dice.get(d.case_id, float("nan")),
                d.case_id in keep,
                order.index(d.case_id) + 1 if d.case_id in dice else 0,
            )
            for d in everything.decisions
        )
        return PseudoLabels(
            decisions,
            labels={c: v for c, v in everything.labels.items() if c in keep},
            masks={c: v for c, v in everything.masks.items() if c in keep},
        )


def _sfr_config(arm: str, seed: int):
    from ASSFTActive.sfr.pipeline import SfrConfig

    steps = _WORKER["iterations"] + _WORKER["semi_iterations"]
    data: Dict[str, Any] = {
        "sam": {"iterations": _WORKER["sam_iterations"], "seed": 1337 + seed},
        "retrain": {"iterations": steps, "seed": seed},
        "mean_teacher": {"consistency_epoch_steps": max(1, steps // 40)},
        "validation": {"guard": False, "hd95": False},
        "predict_pool": False,
    }
    for key, value in SFR_ARMS[arm].items():
        data[key] = dict(data.get(key, {}), **value) if isinstance(value, dict) else value
    return SfrConfig.from_dict(data)


def _run_sfr(task: Task, request):
    """SFR's method for an SFR arm; also the true Dice of SAM's last pseudo-labels of the pool (hidden labels)."""
    from ASSFTActive.evaluate import dice_per_class, mean_scored
    from ASSFTActive.finetune.adapt import run_adaptation
    from ASSFTActive.io import read_label
    from ASSFTActive.models import resolve_card
    from ASSFTActive.sfr.pipeline import Sfr
    from ASSFTActive.sfr.pseudo import sfr_pseudo_labels

    classes = resolve_card("default").num_classes
    seen: Dict[str, float] = {}
    root = Path(_WORKER["data"])

    def recording(model, volumes, *args, **kwargs):
        out = sfr_pseudo_labels(model, volumes, *args, **kwargs)
        seen.clear()
        for pseudo, volume in zip(out, volumes):
            truth = read_label(root / "labelsTr" / f"{pseudo.case_id}.nii.gz", volume, classes).array
            seen[pseudo.case_id] = float(mean_scored(dice_per_class(np.asarray(pseudo.label.array), truth, classes)))
        return out

    config = _sfr_config(task.arm, task.seed)
    # SAM's labels are used when their weight is positive: score them
    labeller = recording if config.mean_teacher.pseudo_weight > 0 else sfr_pseudo_labels
    result = run_adaptation(request, Sfr(config, labeller=labeller))
    kept = [r.case_id for r in result.pseudo if r.kept]
    diagnosis = {
        "pseudo_true_dice": float(np.mean(list(seen.values()))) if seen else None,
        "pseudo_true_dice_kept": float(np.mean([seen[c] for c in kept if c in seen])) if kept else None,
    }
    return result, kept, diagnosis


def run_task(task: Task) -> Dict[str, Any]:
    from ASSFTActive.finetune.adapt import AdaptRequest, run_adaptation
    from ASSFTActive.finetune.assft import SelectiveSelfTraining

    if task.arm == "floor":
        return {
            "task": task.__dict__,
            "test_dice": _test_dice(None, task.shift),
            "activated": False,
            "adapted_dice": None,
            "seconds": 0.0,
        }
    root = Path(_WORKER["data"])
    images = {c: str(Path(_WORKER["pool_dirs"][task.shift]) / f"{c}.nii.gz") for c in _WORKER["pool_ids"]}
    labels = {c: str(root / "labelsTr" / f"{c}.nii.gz") for c in task.labeled}
    store = tempfile.mkdtemp(prefix="adapt-bench-")
    request = AdaptRequest(images, labels, store, model="default", name="bench")
    start = time.perf_counter()
    diagnosis: Dict[str, Any] = {}
    try:
        if task.arm in SFR_ARMS:
            result, kept, diagnosis = _run_sfr(task, request)
        else:
            labeller = OracleLabeller(root / "labelsTr") if task.arm in ORACLE_ARMS else None
            result = run_adaptation(request, SelectiveSelfTraining(_config(task.arm, task.seed), labeller=labeller))
            kept = [d.case_id for d in result.pseudo if d.kept]
        adapted = _test_dice(result.card_path, task.shift)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    floor = _test_dice(None, task.shift)
    return {
        "task": task.__dict__,
        "activated": result.activated,
        "adapted_dice": adapted,
        "test_dice": adapted if result.activated else floor,
        "activation": result.decision.to_dict(),
        "kept": kept,
        "seconds": time.perf_counter() - start,
        **diagnosis,
    }


def _interval(values: Sequence[float]) -> Tuple[float, float]:
    from ASSFTActive.finetune.guard import mean_interval

    mean, low, high = mean_interval(values)
    return mean, (high - low) / 2 if not math.isnan(low) else float("nan")


def _draw_balanced_mean(runs: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Per-test-case Dice ``[cases]``: the mean over training seeds of each labelled draw, then over draws (merged
    files may hold more seeds of some draws than of others)."""
    by_draw: Dict[int, List[List[float]]] = {}
    for r in runs:
        by_draw.setdefault(r["task"]["draw"], []).append(r["test_dice"])
    return np.mean([np.mean(np.array(v), axis=0) for v in by_draw.values()], axis=0)


def summarise(
    runs: List[Dict[str, Any]], arms: Sequence[str], budgets: Sequence[int], reference: str = "assft_no_pseudo"
) -> Dict[str, Any]:
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
                mine = [
                    r
                    for r in runs
                    if r["task"]["shift"] == shift and r["task"]["budget"] == budget and r["task"]["arm"] == arm
                ]
                if not mine:
                    continue
                per_run = np.array([r["test_dice"] for r in mine])  # [runs, cases]
                per_case = _draw_balanced_mean(mine)
                by_draw: Dict[int, List[float]] = {}
                for r in mine:
                    by_draw.setdefault(r["task"]["draw"], []).append(float(np.mean(r["test_dice"])))
                spreads = [float(np.std(v, ddof=1)) for v in by_draw.values() if len(v) > 1]
                entry = {
                    "mean": float(per_case.mean()),
                    "runs": len(mine),
                    "run_means": [float(x) for x in per_run.mean(axis=1)],
                    "activated": sum(bool(r["activated"]) for r in mine),
                    "adapted_mean": (
                        float(np.mean([np.mean(r["adapted_dice"]) for r in mine]))
                        if all(r["adapted_dice"] is not None for r in mine)
                        else None
                    ),
                    "noise_floor": float(np.mean(spreads)) if spreads else None,
                    "vs_floor": _interval(per_case - floor),
                }
                for key in ("pseudo_true_dice", "pseudo_true_dice_kept"):
                    values = [r[key] for r in mine if r.get(key) is not None]
                    if values:
                        entry[key] = float(np.mean(values))
                paired = [
                    r
                    for r in runs
                    if r["task"]["shift"] == shift and r["task"]["budget"] == budget and r["task"]["arm"] == reference
                ]
                if paired and arm != reference:
                    ref = _draw_balanced_mean(paired)
                    entry["vs_labels_only"] = _interval(per_case - ref)
                row[arm] = entry
            table[shift]["budgets"][str(budget)] = row
    return table


def markdown(report: Dict[str, Any]) -> str:
    lines = [
        f"# Adapt Model benchmark ({report['profile']}{report['tag']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}; {report['seconds'] / 60:.1f} min; revision {report['revision']}.",
        "",
        "Mean target-test Dice of the model that is active after Adapt Model (the adapted one when the guard "
        "activated it, else the pre-trained one); `adapted` is the adapted model's own Dice; Δ are paired "
        "per-test-case differences with a 95 % interval over test cases; `noise` is the standard deviation of "
        "the mean Dice between training seeds of the same labelled set.",
        "",
    ]
    for shift, data in report["summary"].items():
        lines += [
            f"## {shift} shift (strength {SHIFTS[shift]}), floor {data['floor']:.3f}",
            "",
            f"| budget | arm | active Dice | adapted Dice | activated | Δ vs floor | Δ vs {report['reference']} "
            "| noise |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for budget, row in data["budgets"].items():
            for arm, e in row.items():

                def fmt(pair):
                    return "" if pair is None else f"{pair[0]:+.3f} ± {pair[1]:.3f}"

                adapted = "" if e["adapted_mean"] is None else f"{e['adapted_mean']:.3f}"
                noise = "" if e["noise_floor"] is None else f"{e['noise_floor']:.3f}"
                lines.append(
                    f"| {budget} | {arm} | {e['mean']:.3f} | {adapted} | {e['activated']}/{e['runs']} | "
                    f"{fmt(e['vs_floor'])} | {fmt(e.get('vs_labels_only'))} | {noise} |"
                )
        lines.append("")
        sam = [
            (budget, arm, e)
            for budget, row in data["budgets"].items()
            for arm, e in row.items()
            if e.get("pseudo_true_dice") is not None
        ]
        if sam:
            lines += [
                "True Dice of SAM's pseudo-labels of the pool (hidden labels; diagnosis only):",
                "",
                "| budget | arm | all pool volumes | kept for re-training |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {budget} | {arm} | {e['pseudo_true_dice']:.3f} | "
                f"{e.get('pseudo_true_dice_kept', float('nan')):.3f} |"
                for budget, arm, e in sam
            ]
            lines.append("")
    return "\n".join(lines)


def write_pool(data: Path, pool: Sequence[str], strength: float, folder: Path) -> None:
    """The pool's images under the scanner shift of ``strength`` (seed 0), written to ``folder``."""
    from ASSFTActive.io import read_volume, write_volume
    from Testing.Benchmarks.harness.shifts import ShiftConfig, apply_shift

    folder.mkdir(parents=True, exist_ok=True)
    for case in pool:
        original = read_volume(data / "imagesTr" / f"{case}.nii.gz")
        write_volume(apply_shift(original, ShiftConfig(strength=strength), case), folder / f"{case}.nii.gz")


def query_selection(pool_dir: Path, budget: int) -> Tuple[str, ...]:
    """The ``budget`` volumes the product's query proposes in a pool folder (cold start: nothing labelled yet)."""
    from ASSFTActive.api import rank_pool
    from ASSFTActive.store import resolve_card

    with tempfile.TemporaryDirectory(prefix="adapt-bench-rank-") as out:
        result = rank_pool(
            sorted(pool_dir.glob("*.nii.gz")), resolve_card("default"), budget, Path(out), write_outputs=False
        )
    return tuple(sorted(result.ranking.selected_ids))


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
    parser.add_argument(
        "--sam-iterations", type=int, default=SFR_SAM_STEPS, help="SAM fine-tuning steps of the SFR arms"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference", default="assft_no_pseudo", help="the labels-only arm others are paired with")
    parser.add_argument("--tag", default="")
    parser.add_argument("--first-seed", type=int, default=0, help="training seeds start here (to add seeds)")
    parser.add_argument("--first-draw", type=int, default=0, help="random labelled draws start here (to add draws)")
    parser.add_argument(
        "--summarise",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only rewrite the tables of earlier runs' JSON (the runs of several files are merged "
        "into the first, e.g. more seeds of the same arms; --reference may change)",
    )
    args = parser.parse_args()
    if args.summarise is not None:
        report = json.loads(args.summarise[0].read_text())
        for extra in args.summarise[1:]:
            more = json.loads(extra.read_text())
            report["runs"] += [r for r in more["runs"] if r["task"]["arm"] != "floor"]
            report["command"] += f" + {more['command']}"
            report["seconds"] += more["seconds"]
        arms = list(dict.fromkeys(r["task"]["arm"] for r in report["runs"] if r["task"]["arm"] != "floor"))
        report.update(
            reference=args.reference,
            tag=report.get("tag", ""),
            summary=summarise(report["runs"], arms, report["profile_settings"]["budgets"], args.reference),
        )
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
    if any(a in SFR_ARMS for a in args.arms.split(",")):
        profile["sam_iterations"] = args.sam_iterations
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS and a not in SFR_ARMS]
    if unknown:
        raise SystemExit(f"error: unknown arm(s) {unknown}; known: {sorted(ARMS) + sorted(SFR_ARMS)}")
    shifts = [s for s in args.shifts.split(",") if s]

    from Testing.Benchmarks.harness.splits import split_cases

    reserved = set((args.data / "reserved.txt").read_text().split())
    cases = sorted(p.name[: -len(".nii.gz")] for p in (args.data / "imagesTr").glob("*.nii.gz"))
    split = split_cases(cases, reserved)
    pool = list(split.target_pool[: profile["pool_size"] or None])
    test = list(split.target_test[: profile["test_size"] or None])
    assert not (set(pool) | set(test)) & reserved, "a reserved case was selected"
    work = Path(tempfile.mkdtemp(prefix="adapt-bench-pool-"))
    started = time.time()
    try:
        pool_dirs = {}
        for shift in shifts:
            pool_dirs[shift] = str(work / shift)
            write_pool(args.data, pool, SHIFTS[shift], work / shift)
        setup = {
            "data": str(args.data),
            "pool_ids": pool,
            "test_ids": test,
            "pool_dirs": pool_dirs,
            "iterations": profile["iterations"],
            "semi_iterations": profile["semi_iterations"],
            "sam_iterations": args.sam_iterations,
            "threads": max(1, (os.cpu_count() or 2) // args.workers),
        }
        runs = []
        with futures.ProcessPoolExecutor(args.workers, initializer=_init, initargs=(setup,)) as pool_exec:
            # the query runs in a worker: torch threads in this process would hang the forked workers
            queried = (
                {
                    shift: {
                        b: pool_exec.submit(query_selection, Path(pool_dirs[shift]), b).result()
                        for b in profile["budgets"]
                    }
                    for shift in shifts
                }
                if any(a in QUERY_ARMS for a in arms)
                else {}
            )
            rng_tasks: List[Task] = []
            for shift in shifts:
                rng_tasks.append(Task(shift, 0, 0, 0, "floor", ()))
                for budget in profile["budgets"]:
                    for draw in range(args.first_draw, args.first_draw + profile["draws"]):
                        rng = np.random.default_rng([budget, draw, 11])
                        labeled = tuple(sorted(rng.choice(pool, size=budget, replace=False).tolist()))
                        for seed in range(args.first_seed, args.first_seed + profile["train_seeds"]):
                            for arm in arms:
                                if arm not in QUERY_ARMS:
                                    rng_tasks.append(Task(shift, budget, draw, seed, arm, labeled))
                                elif draw == args.first_draw:
                                    rng_tasks.append(Task(shift, budget, 0, seed, arm, queried[shift][budget]))
            jobs = {pool_exec.submit(run_task, t): t for t in rng_tasks}
            for done, job in enumerate(futures.as_completed(jobs), 1):
                result = job.result()
                runs.append(result)
                t = result["task"]
                print(
                    f"[{done}/{len(jobs)}] {t['shift']} B={t['budget']} draw {t['draw']} seed {t['seed']} "
                    f"{t['arm']}: active {np.mean(result['test_dice']):.3f} "
                    f"activated={result['activated']} ({result['seconds']:.0f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch

    report = {
        "profile": args.profile,
        "tag": args.tag,
        "command": " ".join(["Testing/Benchmarks/adapt_benchmark.py"] + sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "revision": os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip(),
        "seconds": time.time() - started,
        "profile_settings": profile,
        "arms": {a: ARMS.get(a, SFR_ARMS.get(a)) for a in arms},
        "pool": pool,
        "test": test,
        "runs": runs,
        "reference": args.reference,
        "summary": summarise(runs, arms, profile["budgets"], args.reference),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"adapt_{args.profile}{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
