"""The units of work of a run, each through the product's own code: shifted data, the ranking pass, the selection,
Adapt Model (``ASSFTActive.finetune.adapt.adapt_model``), the evaluation.

One process (the runner's); caches live per process and per task: a pool's shifted images are written once to a
work folder (Adapt Model reads its images from disk) and the ranking pass over the pool runs once per task, shared
by every arm, budget and draw. Training seeds come from the record key, never from the process's history, so a
resumed run computes the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .arms import Arm
from .shifts import apply_shift
from .tasks import ANATOMIES, Task

_CACHE: Dict[str, Any] = {}


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()[:4], "little")


def card_of(task: Task):
    """The source model's card (cached per model spec)."""
    from ASSFTActive.store import resolve_card

    key = f"card:{task.model}"
    if key not in _CACHE:
        spec = task.model if task.model == "default" else str(Path(task.model).expanduser())
        if spec != "default" and not Path(spec).exists():
            anatomy = ANATOMIES[task.setting.anatomy]
            raise FileNotFoundError(
                f"the {anatomy.name} source model {spec} does not exist; train it with `{anatomy.make_model}`"
            )
        _CACHE[key] = resolve_card(spec)
    return _CACHE[key]


def pretrained(task: Task):
    """The frozen source model (``LoadedModel``), cached per model spec."""
    from ASSFTActive.models import load_model

    key = f"model:{task.model}"
    if key not in _CACHE:
        _CACHE[key] = load_model(card_of(task))
    return _CACHE[key]


def case_pair(task: Task, case: str):
    """``(image, label)`` of ``case`` as its site shows it (cached per setting and case)."""
    from ASSFTActive.io import read_label, read_volume

    key = f"case:{task.setting.name}:{case}"
    if key not in _CACHE:
        original = read_volume(task.data / "imagesTr" / f"{case}.nii.gz")
        shift = task.setting.site_of(case).shift
        image = original if shift is None else apply_shift(original, shift, case)
        image = replace(image, path=Path(f"{case}.nii.gz"))  # case_id() of the in-memory volume
        label = read_label(task.data / "labelsTr" / f"{case}.nii.gz", original, card_of(task).num_classes)
        _CACHE[key] = (image, label)
    return _CACHE[key]


def pool_images(task: Task, work: Path) -> Dict[str, str]:
    """``{case: path}`` of the pool's shifted images, written once per task under ``work``."""
    from ASSFTActive.io import write_volume

    folder = work / "images" / task.key.replace("/", "_")
    paths = {c: str(folder / f"{c}.nii.gz") for c in task.pool}
    for case, path in paths.items():
        if not Path(path).is_file():
            write_volume(case_pair(task, case)[0], Path(path))
    return paths


def analyse_pool(task: Task) -> Dict[str, Dict[str, Any]]:
    """The ranking pass of the source model over the pool (what ``assft rank`` computes), per case: ``probs
    [C, I, J, K]`` (float16), pooled ``features`` / ``pretrained_features`` and the source model's ``dice``
    (diagnostic only, never an input of a selector); for slice / region proposals and the effort count
    (:mod:`.sparse`), on the image's grid ``[I, J, K]``: ``entropy_levels`` (uint8, ``round(255 H)``), ``region``
    (bool, ASD's dilated predicted foreground), ``prefill`` (the hard prediction an annotator would correct) and the
    voxel ``spacing``. Cached per task."""
    from ASSFTActive.evaluate import dice_per_class, mean_scored
    from ASSFTActive.inference import Predictor

    key = f"analysis:{task.key}:{task.model}"
    if key not in _CACHE:
        predictor = Predictor(pretrained(task))
        out = {}
        for case in task.pool:
            image, label = case_pair(task, case)
            prediction = predictor.predict(image, keep_probs=True)
            dice = dice_per_class(prediction.label, np.asarray(label.array), card_of(task).num_classes)
            out[case] = {
                "case_id": case,
                "probs": prediction.probs.astype(np.float16),
                "features": [f.copy() for f in prediction.features],
                "pretrained_features": [f.copy() for f in prediction.pretrained_features],
                "dice": float(mean_scored(dice)),
                "entropy_levels": prediction.entropy_levels,
                "region": prediction.region,
                "prefill": prediction.label,
                "spacing": tuple(float(s) for s in image.spacing),
            }
        _CACHE[key] = out
    return _CACHE[key]


def evidence_of(analysis: Mapping[str, Any], config) -> Any:
    """``CaseEvidence`` of one analysed case under ``config`` (the second half of ``api.analyse_volume``)."""
    from ASSFTActive.query import RegionSpec, region_sums, summarize_case

    sums = region_sums(analysis["probs"].astype(np.float32), RegionSpec.from_config(config))
    return summarize_case(analysis["case_id"], sums, analysis["features"], analysis["pretrained_features"], config)


def query_seed(replicate: int, draw: int) -> int:
    """The query's seed for one draw of a seeded arm (a distribution of draws: random, foreground-aware random) on
    one pool replicate.

    Until 2026-12-07 the draw alone seeded it. Replicates that share most of their volumes (ACDC-Path's test
    replicates each leave out one patient) then drew the *same* labelled sets: ACDC-Path's test pools 2-4 gave 5
    distinct sets in 15 runs. Records made before keep their labelled sets (each record lists them); the reports
    pair records by their labelled sets, never by the draw alone.
    """
    return _seed_of("query", int(replicate), int(draw))


def query_config(arm: Arm, draw: int, replicate: int):
    """The arm's ``QueryConfig`` (``QueryConfig.from_dict`` checks every field). A seeded arm's draw gets
    :func:`query_seed`; any other arm runs with the product's default seed (``QueryConfig.seed``, e.g. k-means in
    ``typiclust``, the noise of ``clasp_pe``), as a user's ranking would."""
    from ASSFTActive.query import QueryConfig

    query = dict(arm.query)
    if arm.seeded:
        query["seed"] = query_seed(replicate, draw)
    return QueryConfig.from_dict(query)


def select_cases(task: Task, arm: Arm, budget: int, draw: int) -> List[str]:
    """The ``budget`` pool cases the arm labels (the product's ``query.select`` on the ranking pass)."""
    from ASSFTActive.query import select

    if arm.whole_pool:
        return list(task.pool)
    if budget > len(task.pool):
        raise ValueError(f"budget {budget} exceeds the pool of {len(task.pool)} cases of {task.key}")
    config = query_config(arm, draw, task.replicate)
    analysis = analyse_pool(task)
    scoring = replace(config, strategy="assft")  # evidence is strategy-free; the selection uses ``config``
    evidence = [evidence_of(analysis[c], scoring) for c in task.pool]
    return sorted(select(evidence, budget, config, round_index=0, total_rounds=1).selected_ids)


def anatomy_recipe(task: Task) -> Dict[str, Any]:
    """Adapt Model's recipe changes for the task's model (``ANATOMY_RECIPES`` of its card's anatomy) as dotted
    fields (``{"train.iterations": 50}``): part of the product's default for this model, kept in every trained record
    so that records of two defaults are never mixed (:func:`.runner.check_same_task`)."""
    from ASSFTActive.cards import card_anatomy
    from ASSFTActive.finetune.config import ANATOMY_RECIPES

    changes = ANATOMY_RECIPES.get(card_anatomy(card_of(task), ANATOMY_RECIPES) or "", {})
    return {f"{section}.{name}": value for section, fields in changes.items() for name, value in fields.items()}


def finetune_config(arm: Arm, seed: int, recipe: Mapping[str, Any] = MappingProxyType({})):
    """Adapt Model's default ``FinetuneConfig`` for the model (``recipe``: :func:`anatomy_recipe`) with the arm's
    overrides, the guard as the arm says, no pool prediction, and the label checks off (the labels are the
    collection's ground truth: the checks guard a user's mistakes and could only refuse them falsely under a harsh
    shift)."""
    from ASSFTActive.finetune.config import FinetuneConfig

    data = FinetuneConfig().to_dict()
    data["train"]["seed"] = int(seed)
    data["validation"]["guard"] = arm.guard
    data["validation"]["hd95"] = False
    data["predict_pool"] = False
    data["allow_implausible_labels"] = True
    for dotted, value in (*recipe.items(), *arm.finetune):
        node = data
        *path, leaf = dotted.split(".")
        for part in path:
            node = node[part]
        if leaf not in node:
            raise ValueError(f"arm {arm.name}: FinetuneConfig has no field {dotted!r}")
        node[leaf] = value
    return FinetuneConfig.from_dict(data)


def evaluate(task: Task, network) -> Dict[str, Any]:
    """Dice per evaluation case and class (``{case: [Dice per foreground class]}``) and the mean."""
    from ASSFTActive.evaluate import evaluate_model

    pairs = [case_pair(task, c) for c in task.eval]
    report = evaluate_model(network, card_of(task), pairs, hd95=False)
    return {
        "mean_dice": float(report.mean_dice()),
        "per_case": {c: [float(d) for d in m.dice] for c, m in zip(task.eval, report.cases)},
    }


def adapt_and_evaluate(
    task: Task,
    arm: Arm,
    labelled: Sequence[str],
    seed: int,
    work: Path,
    labels: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Adapt Model on ``labelled`` (the rest of the pool unlabelled) into a throw-away store, then score the model
    that is active afterwards on the evaluation cases. The record keeps the guard's decision and the
    cross-validation (fold gains; what the guard calibration consumes). ``labels``: ``{case: label file}`` of the
    labelled cases (a sparse arm's oracle partial labels); default: the collection's full labels.

    When the guard refused, the refused version (written to the store, not activated) is scored too, as
    ``candidate_mean_dice`` / ``candidate_per_case``: the record's own Dice is the active (source) model's, so without
    it a false refusal would look like a gain of 0 and stay invisible to the calibration. ``final_model`` is a guarded
    run's ``validation.final`` (guarded records without it ran ``retrain``, the default before the folds' average).
    Each volume's subject is its anatomy's split group (ACDC: the patient), so the guard's folds never divide a
    patient's frames (earlier records' folds could; their ``cross_validation.folds`` show it)."""
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.models import load_card, load_model

    images = pool_images(task, work)
    if labels is None:
        labels = {c: str(task.data / "labelsTr" / f"{c}.nii.gz") for c in labelled}
    elif sorted(labels) != sorted(labelled):
        raise ValueError(f"label files for {sorted(labels)} but the labelled cases are {sorted(labelled)}")
    recipe = anatomy_recipe(task)
    config = finetune_config(arm, seed, recipe)
    start = time.perf_counter()
    store = tempfile.mkdtemp(prefix="harness-store-", dir=work)
    try:
        result = adapt_model(
            images,
            labels,
            store=store,
            model=task.model if task.model == "default" else str(Path(task.model).expanduser()),
            name="benchmark",
            config=config,
            subjects={c: ANATOMIES[task.setting.anatomy].group(c) for c in images},
        )
        candidate = load_model(load_card(result.card_path)).network
    finally:
        shutil.rmtree(store, ignore_errors=True)
    seconds = time.perf_counter() - start
    candidate.eval()
    candidate_scores = evaluate(task, candidate)
    scores = candidate_scores if result.activated else floor(task)
    refused = (
        {}
        if result.activated
        else {
            "candidate_mean_dice": candidate_scores["mean_dice"],
            "candidate_per_case": candidate_scores["per_case"],
        }
    )
    metrics = dict(result.metrics)
    return {
        **{k: v for k, v in scores.items() if k in ("mean_dice", "per_case")},
        **refused,
        "train_seconds": round(seconds, 2),
        "activated": bool(result.activated),
        "activation": result.decision.to_dict(),
        "cross_validation": metrics.get("cross_validation"),
        "kept_pseudo": [d.case_id for d in result.pseudo if d.kept],
        "final_model": config.validation.final.value if config.validation.guard else None,
        "anatomy_recipe": recipe,
    }


def floor(task: Task) -> Dict[str, Any]:
    """The source model without adaptation on the evaluation cases."""
    return {**evaluate(task, pretrained(task).network), "train_seconds": 0.0, "activated": False}


def pool_dice(task: Task, cases: Sequence[str]) -> Tuple[float, ...]:
    """The source model's Dice on ``cases`` of the pool (from the ranking pass; diagnostic)."""
    analysis = analyse_pool(task)
    return tuple(float(analysis[c]["dice"]) for c in cases)


def work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="harness-"))
