"""Train a real nnU-Net v2 model on the hippocampus source split and compare its Dice through nnU-Net and through ASSFT.

Issue 28's goal: a real, trained nnU-Net model reaches the same Dice through the product (``--model <nnU-Net result
folder>``, :mod:`ASSFTActive.sources.nnunet`) as through nnU-Net's own inference (difference <= 0.01).

Needs ``nnunetv2`` installed SEPARATELY (it is not a dependency of ASSFT and must never be added to
requirements.txt), e.g. ``pip install --target /tmp/nnunet-lib nnunetv2==2.6.4`` and then
``PYTHONPATH=/tmp/nnunet-lib``; the project's venv provides torch, SimpleITK and dynamic-network-architectures.
Nothing imports this script (not the product, not the tests).

Data: MSD Task04 hippocampus at ``../shared/data/hippocampus`` (``imagesTr``/``labelsTr``), the SOURCE split of
``Testing/Benchmarks/splits/hippocampus.json`` only (``reserved.txt`` cases are never used; the split already
excludes them and this script checks again). Training cases: the first ``--train-cases`` of the source split's
training part (:func:`Testing.Benchmarks.harness.splits.hold_out`); test cases: the first ``--test-cases`` of its
held-out part (the source test), never seen in training.

Stages (all under ``--work``, default ``/tmp/h14``: ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``):
``prepare`` writes the raw dataset and runs nnU-Net's own fingerprint / plan / preprocess (3d_fullres); ``train``
runs nnU-Net's own trainer (a built-in short trainer, ``nnUNetTrainer_5epochs`` by default, with
``num_iterations_per_epoch`` set on the instance to keep CPU time small; the checkpoint names the built-in class,
so ``nnUNetv2_predict`` runs it), fold 0; ``compare`` predicts the test cases with ``nnUNetPredictor``
(``predict_from_files_sequential``, without and with test-time mirroring) and with ASSFT
(:func:`ASSFTActive.evaluate.evaluate_cases` on the result folder, as ``assft evaluate --model`` does: with the
checkpoint's test-time mirroring, the card's ``test_time_mirroring``, and once more with it switched off), scores all
of them with the same Dice (:func:`ASSFTActive.evaluate.dice_per_class`) and writes
``Testing/Benchmarks/results/nnunet_equivalence.json``.

Run on one CPU thread::

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/nnunet-lib .venv/bin/python scripts/nnunet_equivalence.py all
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hippocampus"
SPLIT = ROOT / "Testing" / "Benchmarks" / "splits" / "hippocampus.json"
RESULT = ROOT / "Testing" / "Benchmarks" / "results" / "nnunet_equivalence.json"
DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID:03d}_HippocampusSource"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
FOLD = 0
CLASSES = {"background": 0, "anterior": 1, "posterior": 2}


def set_environment(work: Path) -> None:
    """nnU-Net's folders and one CPU thread; must run before nnunetv2 is imported (it reads them at import)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["nnUNet_def_n_proc"] = "1"
    os.environ["nnUNet_n_proc_DA"] = "0"  # SingleThreadedAugmenter: data augmentation in the main process
    import torch

    torch.set_num_threads(1)


def find_builtin_trainers() -> None:
    """Let nnU-Net find its built-in trainers without importing every trainer module.

    nnU-Net looks a trainer class up by name (``recursive_find_python_class``), importing each module under
    ``nnunetv2/training/nnUNetTrainer`` until one defines it; 2.6.4's ``primus`` trainers import ``timm``, which is not
    installed here, so that lookup fails before it reaches the built-in short trainers. This replaces the lookup (in the
    two modules that call it: training and prediction) by the classes of ``nnUNetTrainer_Xepochs`` and the base class,
    imported directly; what is trained and predicted is unchanged.
    """
    import inspect

    import nnunetv2.inference.predict_from_raw_data as predict_module
    import nnunetv2.run.run_training as training_module
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as base
    from nnunetv2.training.nnUNetTrainer.variants.training_length import nnUNetTrainer_Xepochs as lengths

    known = {
        n: c
        for module in (base, lengths)
        for n, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, base.nnUNetTrainer)
    }
    original = training_module.recursive_find_python_class

    def lookup(folder: str, class_name: str, current_module: str):
        return known[class_name] if class_name in known else original(folder, class_name, current_module)

    training_module.recursive_find_python_class = lookup
    predict_module.recursive_find_python_class = lookup


def split_cases(train_n: int, test_n: int) -> Dict[str, List[str]]:
    """The first ``train_n`` training and ``test_n`` held-out cases of the hippocampus source split."""
    sys.path.insert(0, str(ROOT))
    from Testing.Benchmarks.harness.splits import hold_out

    source = json.loads(SPLIT.read_text())["source"]
    reserved = set((DATA / "reserved.txt").read_text().split()) if (DATA / "reserved.txt").is_file() else set()
    bad = [c for c in source if c in reserved or f"{c}.nii.gz" in reserved]
    if bad:
        raise SystemExit(f"{SPLIT}: source cases listed in reserved.txt: {bad}")
    train, held = hold_out(source)
    if len(train) < train_n or len(held) < test_n:
        raise SystemExit(
            f"the source split has {len(train)} training and {len(held)} held-out cases; "
            f"asked for {train_n} and {test_n}"
        )
    return {"train": list(train[:train_n]), "test": list(held[:test_n])}


def raw_folder(work: Path) -> Path:
    return work / "nnUNet_raw" / DATASET_NAME


def result_folder(work: Path, trainer: str) -> Path:
    return work / "nnUNet_results" / DATASET_NAME / f"{trainer}__{PLANS}__{CONFIGURATION}"


def prepare(work: Path, train: Sequence[str]) -> None:
    """nnU-Net's raw layout (links to the shared files) and its own plan-and-preprocess for 3d_fullres."""
    raw = raw_folder(work)
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in train:
        for src, dst in (
            (DATA / "imagesTr" / f"{case}.nii.gz", raw / "imagesTr" / f"{case}_0000.nii.gz"),
            (DATA / "labelsTr" / f"{case}.nii.gz", raw / "labelsTr" / f"{case}.nii.gz"),
        ):
            if not dst.exists():
                dst.symlink_to(src)
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": CLASSES,
                "numTraining": len(train),
                "file_ending": ".nii.gz",
                "name": DATASET_NAME,
                "description": "MSD Task04 hippocampus, ASSFT source split (CC-BY-SA 4.0)",
            },
            indent=1,
        )
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch's threads to this number; 0 is refused
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], PLANS, configurations=(CONFIGURATION,), num_processes=(1,), verbose=False)
    os.environ["nnUNet_n_proc_DA"] = "0"


def train_model(work: Path, trainer: str, iterations: int, val_iterations: int) -> Dict[str, object]:
    """nnU-Net's own trainer, fold 0, on the CPU; returns what the JSON records about the training."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    t0 = time.time()
    net_trainer = get_trainer_from_args(
        str(DATASET_ID), CONFIGURATION, FOLD, trainer, PLANS, device=torch.device("cpu")
    )
    net_trainer.num_iterations_per_epoch = iterations
    net_trainer.num_val_iterations_per_epoch = val_iterations
    net_trainer.run_training()
    train_s = time.time() - t0
    net_trainer.perform_actual_validation(False)
    return {
        "trainer": trainer,
        "epochs": net_trainer.num_epochs,
        "iterations_per_epoch": iterations,
        "val_iterations_per_epoch": val_iterations,
        "batch_size": net_trainer.batch_size,
        "patch_size": list(net_trainer.configuration_manager.patch_size),
        "fold": FOLD,
        "train_wall_s": round(train_s, 1),
        "train_and_validation_wall_s": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }


def dice_table(per_case: Dict[str, Sequence[float]]) -> Dict[str, float]:
    from ASSFTActive.evaluate import mean_scored

    names = [n for n in CLASSES if n != "background"]
    table = {n: mean_scored(d[i] for d in per_case.values()) for i, n in enumerate(names)}
    table["mean"] = mean_scored(mean_scored(d) for d in per_case.values())
    return table


def predict_nnunet(work: Path, trainer: str, test: Sequence[str], mirroring: bool) -> Dict[str, object]:
    """nnU-Net's own predictor on the raw test images; Dice per case against the true labels."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from ASSFTActive.evaluate import dice_per_class
    from ASSFTActive.io import read_volume

    out = work / ("pred_nnunet_mirror" if mirroring else "pred_nnunet")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(result_folder(work, trainer)), use_folds=(FOLD,), checkpoint_name="checkpoint_final.pth"
    )
    predictor.predict_from_files_sequential(
        [[str(DATA / "imagesTr" / f"{c}.nii.gz")] for c in test],
        [str(out / c) for c in test],
        save_probabilities=False,
        overwrite=True,
    )
    wall = time.time() - t0
    torch.set_num_threads(1)
    dice = {}
    for c in test:
        pred = read_volume(out / f"{c}.nii.gz").array
        truth = read_volume(DATA / "labelsTr" / f"{c}.nii.gz").array
        dice[c] = dice_per_class(pred.astype("int64"), truth.astype("int64"), len(CLASSES))
    return {"dice_per_case": dice, "wall_s": round(wall, 1), "mirroring": mirroring}


def predict_assft(work: Path, trainer: str, test: Sequence[str], mirroring: bool) -> Dict[str, object]:
    """The product on the nnU-Net result folder: ``assft evaluate --model <folder>``'s path, without HD95; with
    ``mirroring`` false the card's ``test_time_mirroring`` is switched off (the pair matched with nnU-Net's
    ``use_mirroring=False``)."""
    import dataclasses

    import torch

    from ASSFTActive.evaluate import LabelledCase, evaluate_cases
    from ASSFTActive.models import load_model
    from ASSFTActive.store import resolve_card

    t0 = time.time()
    card = resolve_card(result_folder(work, trainer))
    model = load_model(card if mirroring else dataclasses.replace(card, test_time_mirroring=None))
    cases = [LabelledCase(c, DATA / "imagesTr" / f"{c}.nii.gz", DATA / "labelsTr" / f"{c}.nii.gz") for c in test]
    report = evaluate_cases(model, cases, hd95=False, device=torch.device("cpu"))
    if report.skipped:
        raise SystemExit(f"ASSFT skipped cases: {[s.to_dict() for s in report.skipped]}")
    return {
        "dice_per_case": {m.case_id: m.dice for m in report.cases},
        "wall_s": round(time.time() - t0, 1),
        "class_names": list(model.card.class_names),
        "test_time_mirroring": model.card.test_time_mirroring,
    }


def compare(work: Path, trainer: str, test: Sequence[str], training: Dict[str, object]) -> Dict[str, object]:
    nn_plain = predict_nnunet(work, trainer, test, mirroring=False)
    nn_mirror = predict_nnunet(work, trainer, test, mirroring=True)
    ours = predict_assft(work, trainer, test, mirroring=False)
    ours_mirror = predict_assft(work, trainer, test, mirroring=True)
    table = {
        "nnunet": dice_table(nn_plain["dice_per_case"]),
        "nnunet_mirroring": dice_table(nn_mirror["dice_per_case"]),
        "assft": dice_table(ours["dice_per_case"]),
        "assft_mirroring": dice_table(ours_mirror["dice_per_case"]),
    }
    diff = {k: round(table["assft"][k] - table["nnunet"][k], 5) for k in table["assft"]}
    diff_mirror = {k: round(table["assft_mirroring"][k] - table["nnunet_mirroring"][k], 5) for k in table["assft"]}

    def per_case_max(a_cases, b_cases) -> float:
        return round(max(abs(a - b) for c in test for a, b in zip(a_cases[c], b_cases[c])), 5)

    from importlib import metadata

    import torch

    return {
        "goal": "issue 28: |Dice through ASSFT - Dice through nnU-Net's own inference| <= 0.01 per class",
        "dataset": "MSD Task04 hippocampus (../shared/data/hippocampus), source split only; "
        f"nnU-Net {DATASET_NAME}, {CONFIGURATION}, {PLANS}",
        "train_cases": len(training.get("train_cases", [])) or None,
        "test_cases": list(test),
        "training": training,
        "mirroring_note": "two matched pairs: 'nnunet' and 'assft' predict without test-time mirroring "
        "(nnU-Net's use_mirroring=False; the card's test_time_mirroring switched off), "
        "'nnunet_mirroring' and 'assft_mirroring' with the checkpoint's mirroring axes (both tools' "
        "default); the *_mirroring differences are assft_mirroring - nnunet_mirroring",
        "assft_test_time_mirroring": list(ours_mirror["test_time_mirroring"] or []),
        "dice": table,
        "difference_assft_minus_nnunet": diff,
        "difference_assft_minus_nnunet_mirroring": diff_mirror,
        "max_abs_difference": max(abs(v) for v in diff.values()),
        "max_abs_difference_mirroring": max(abs(v) for v in diff_mirror.values()),
        "max_abs_difference_per_case_class": per_case_max(ours["dice_per_case"], nn_plain["dice_per_case"]),
        "max_abs_difference_per_case_class_mirroring": per_case_max(
            ours_mirror["dice_per_case"], nn_mirror["dice_per_case"]
        ),
        "goal_met": max(abs(v) for v in diff.values()) <= 0.01,
        "goal_met_mirroring": max(abs(v) for v in diff_mirror.values()) <= 0.01,
        "wall_s": {
            "nnunet": nn_plain["wall_s"],
            "nnunet_mirroring": nn_mirror["wall_s"],
            "assft": ours["wall_s"],
            "assft_mirroring": ours_mirror["wall_s"],
        },
        "dice_per_case": {
            "nnunet": nn_plain["dice_per_case"],
            "nnunet_mirroring": nn_mirror["dice_per_case"],
            "assft": ours["dice_per_case"],
            "assft_mirroring": ours_mirror["dice_per_case"],
        },
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "nnunetv2": metadata.version("nnunetv2"),
            "torch": torch.__version__,
            "dynamic_network_architectures": metadata.version("dynamic_network_architectures"),
        },
        "load_average_at_end": list(os.getloadavg()),
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=<nnunetv2 lib> .venv/bin/python scripts/nnunet_equivalence.py all",
    }


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("prepare", "train", "compare", "all"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/h14"))
    parser.add_argument("--train-cases", type=int, default=40)
    parser.add_argument("--test-cases", type=int, default=10)
    parser.add_argument("--trainer", default="nnUNetTrainer_5epochs", help="a built-in nnU-Net trainer class")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=5, help="validation iterations per epoch")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    set_environment(args.work)
    sys.path.insert(0, str(ROOT))
    find_builtin_trainers()
    cases = split_cases(args.train_cases, args.test_cases)
    training_record = args.work / "training.json"
    if args.stage in ("prepare", "all"):
        t0 = time.time()
        prepare(args.work, cases["train"])
        print(f"prepared {len(cases['train'])} cases in {time.time() - t0:.0f} s")
    if args.stage in ("train", "all"):
        record = train_model(args.work, args.trainer, args.iterations, args.val_iterations)
        record["train_cases"] = cases["train"]
        training_record.write_text(json.dumps(record, indent=1))
        print(json.dumps({k: v for k, v in record.items() if k != "train_cases"}))
    if args.stage in ("compare", "all"):
        record = json.loads(training_record.read_text())
        result = compare(args.work, record["trainer"], cases["test"], record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
        tmp.replace(args.out)
        print("| path | " + " | ".join(result["dice"]["assft"]) + " |")
        for name, row in result["dice"].items():
            print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |")
        print(
            f"max |ASSFT - nnU-Net| without mirroring = {result['max_abs_difference']:.4f}, with both tools' "
            f"mirroring = {result['max_abs_difference_mirroring']:.4f}; goal met: {result['goal_met']} / "
            f"{result['goal_met_mirroring']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
