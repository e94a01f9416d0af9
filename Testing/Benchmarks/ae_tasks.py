"""Worker side of the annotation-efficiency benchmark: shifted data, pool analysis, fine-tuning, evaluation.

Every function here runs in a worker process with one torch thread (see :func:`init_worker`), so arms run in
parallel and each result is bit-for-bit independent of which worker ran it: training and MC dropout are seeded per
task, never from the process's history.

The pool analysis is the product's ranking pass (``Predictor.predict`` -> ``query.summarize_case``, what
``api.analyse_volume`` does) split in two so that one network pass serves every strategy: the worker returns the
probabilities and pooled encoder features, the parent summarises them with each arm's :class:`QueryConfig`.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Filled by :func:`init_worker` in each worker process.
_STATE: Dict[str, Any] = {}

#: Strategies whose ranking pass adds MC-dropout passes (``ASSFTActive.api.MC_STRATEGIES``, without importing torch).
MC_STRATEGIES = ("mc_dropout", "bald")


@dataclass(frozen=True)
class Setup:
    """What every worker needs to rebuild the experiment's data and models deterministically.

    Attributes:
        data: the anatomy's data folder (``imagesTr``, ``labelsTr``): MSD hippocampus or ACDC.
        pool: target-pool case ids (candidates for labelling).
        test: target-test case ids (evaluation only).
        shift: ``ShiftConfig.to_dict()`` of the simulated new site.
        train: ``TrainConfig.to_dict()`` of the supervised stage (its seed is replaced per run).
        semi_iterations: steps of the second stage (labelled only in ``none`` mode, labelled + pseudo otherwise).
        pseudo: ``PseudoLabelConfig.to_dict()`` of the selective stage (its ``mode`` is replaced per arm).
        image_dir: folder of the shifted pool volumes as ``<case>.nii.gz`` (written by the parent); fine-tuning
            goes through the product's ``finetune.adapt.adapt_model``, which reads its images from disk.
        guard: run Adapt Model's activation guard (the product default) or use every adapted model.
        model: the pre-trained model, as ``ASSFTActive.store.resolve_card`` reads it: ``"default"`` (the embedded
            hippocampus model) or a model folder / card file (the ACDC source model of
            ``scripts/train_acdc_source.py``).
    """

    data: str
    pool: Tuple[str, ...]
    test: Tuple[str, ...]
    shift: Dict[str, Any]
    train: Dict[str, Any]
    semi_iterations: int
    pseudo: Dict[str, Any]
    image_dir: str = ""
    guard: bool = True
    model: str = "default"


def init_worker(setup: Setup, threads: int = 1) -> None:
    """Process initialiser: one torch thread, the setup, and lazily loaded shifted volumes."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _STATE.clear()
    _STATE["setup"] = setup
    _STATE["volumes"] = {}


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def shifted_case(case: str):
    """``(image, label)`` of one case on the simulated new site (cached per worker)."""
    from ASSFTActive.io import read_label, read_volume
    from Testing.Benchmarks.harness.shifts import ShiftConfig, apply_shift

    cache = _STATE["volumes"]
    if case not in cache:
        setup: Setup = _STATE["setup"]
        root = Path(setup.data)
        original = read_volume(root / "imagesTr" / f"{case}.nii.gz")
        image = apply_shift(original, ShiftConfig(**setup.shift), case)
        image = replace(image, path=Path(f"{case}.nii.gz"))  # case_id() of the in-memory volume
        label = read_label(root / "labelsTr" / f"{case}.nii.gz", original, default_card().num_classes)
        cache[case] = (image, label)
    return cache[case]


def default_card():
    """The card of the pre-trained model of this run (``Setup.model``)."""
    from ASSFTActive.store import resolve_card

    if "card" not in _STATE:
        _STATE["card"] = resolve_card(_STATE["setup"].model)
    return _STATE["card"]


def pretrained_model():
    """The frozen pre-trained model (the "pre-trained Med-VFM" of this benchmark): the embedded default on the
    hippocampus, the ACDC source model on ACDC."""
    from ASSFTActive.models import load_model

    if "pretrained" not in _STATE:
        _STATE["pretrained"] = load_model(default_card())
    return _STATE["pretrained"]


def fresh_network():
    """A new copy of the pre-trained network with its weights."""
    from ASSFTActive.models import load_model

    return load_model(default_card()).network


# ------------------------------------------------------------------------------------------------- analysis


def analyse_cases(cases: Sequence[str], network_state: Optional[Dict[str, Any]] = None, mc_samples: int = 0,
                  tag: str = "") -> List[Dict[str, Any]]:
    """One ranking pass per case with the pre-trained model (``network_state=None``) or an adapted one.

    Returns, per case: ``probs [C, I, J, K]`` (float16 to keep the transfer small), ``features`` and
    ``pretrained_features`` (pooled encoder stages), ``epistemic`` and ``mutual_information`` (MC-dropout
    scores: MONAI Label's entropy of the mean and BALD, when ``mc_samples > 0``),
    ``dice`` of this model on the case (diagnostic only: never used by a selector) and ``seconds``.
    """
    import torch

    from ASSFTActive.evaluate import dice_per_class, mean_scored
    from ASSFTActive.inference import Predictor
    from ASSFTActive.models import LoadedModel, LoadReport
    from ASSFTActive.query import McDropoutAccumulator

    card = default_card()
    if network_state is None:
        predictor = Predictor(pretrained_model())
    else:
        network = fresh_network()
        network.load_state_dict(network_state)
        network.eval()
        predictor = Predictor(LoadedModel(card, network, LoadReport(0, (), ())), pretrained_model())
    out = []
    for case in cases:
        image, label = shifted_case(case)
        start = time.perf_counter()
        torch.manual_seed(_seed_of("mc", tag, case))
        moments = McDropoutAccumulator()  # the product's streamed MC-dropout moments (api.analyse_volume)
        prediction = predictor.predict(image, keep_probs=True, dropout_samples=mc_samples,
                                       sample_callback=moments.add if mc_samples else None)
        epistemic = moments.epistemic() if mc_samples else None
        mutual_information = moments.mutual_information() if mc_samples else None
        dice = dice_per_class(prediction.label, np.asarray(label.array), card.num_classes)
        out.append({"case_id": case, "probs": prediction.probs.astype(np.float16),
                    "features": [f.copy() for f in prediction.features],
                    "pretrained_features": [f.copy() for f in prediction.pretrained_features],
                    "epistemic": epistemic, "mutual_information": mutual_information,
                    "dice": float(mean_scored(dice)),
                    "seconds": time.perf_counter() - start})
    return out


# ---------------------------------------------------------------------------------------------- fine-tuning


def finetune(labeled: Sequence[str], pseudo_mode: str, seed: int) -> Tuple[Any, Dict[str, Any]]:
    """Adapt Model as the user gets it: the product's ``adapt_model`` into a throw-away model store.

    Returns the network that is **active afterwards** (the adapted one when the guard activated it, else the
    pre-trained one) and a record with the guard's decision. With ``Setup.guard`` false every arm's adapted model
    is used whatever the guard would say (cheaper: one training run instead of folds + 1).
    """
    import shutil
    import tempfile

    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig, PseudoLabelConfig, TrainConfig, ValidationConfig
    from ASSFTActive.models import load_card, load_model

    setup: Setup = _STATE["setup"]
    config = FinetuneConfig(
        train=TrainConfig.from_dict({**setup.train, "seed": seed}), semi_iterations=setup.semi_iterations,
        pseudo=PseudoLabelConfig.from_dict({**setup.pseudo, "mode": pseudo_mode}),
        validation=ValidationConfig(guard=setup.guard, hd95=False), predict_pool=False,
        # the labels are the collection's ground truth: the label checks (which guard a user's mistakes) could only
        # refuse them falsely, e.g. where the pre-trained model fails under a harsh shift and the label holds
        # label_prediction_ratio times more foreground than it predicts (ACDC, scanner 0.7: up to 19 times; never
        # above 8.7 on the hippocampus, where this changes nothing)
        allow_implausible_labels=True)
    root = Path(setup.data)
    images = {c: str(Path(setup.image_dir) / f"{c}.nii.gz") for c in setup.pool}
    labels = {c: str(root / "labelsTr" / f"{c}.nii.gz") for c in labeled}
    start = time.perf_counter()
    store = tempfile.mkdtemp(prefix="ae-store-")
    try:
        result = adapt_model(images, labels, store=store, model=setup.model, name="benchmark", config=config)
        network = load_model(load_card(result.card_path)).network if result.activated else fresh_network()
    finally:
        shutil.rmtree(store, ignore_errors=True)
    network.eval()
    kept = [d.case_id for d in result.pseudo if d.kept]
    record = {"trainer": "adapt_model", "pseudo_mode": pseudo_mode, "kept": kept,
              "decisions": [d.to_dict() for d in result.pseudo], "seconds": time.perf_counter() - start,
              "activated": result.activated, "activation": result.decision.to_dict()}
    return network, record


def evaluate(network) -> Dict[str, Any]:
    """Dice per test case and class of ``network`` on the shifted target-test cases."""
    from ASSFTActive.evaluate import evaluate_model

    setup: Setup = _STATE["setup"]
    pairs = [shifted_case(c) for c in setup.test]
    report = evaluate_model(network, default_card(), pairs, hd95=False)
    return {"mean_dice": report.mean_dice(), "per_class": report.mean_dice_per_class(),
            "per_case": {c: [float(d) for d in m.dice] for c, m in zip(setup.test, report.cases)}}


def train_and_evaluate(labeled: Sequence[str], pseudo_mode: str, seed: int) -> Dict[str, Any]:
    """One training run of an arm; the unit of work of phase B."""
    if not labeled:
        start = time.perf_counter()
        result = evaluate(pretrained_model().network)
        return {**result, "train": {"seconds": 0.0, "pseudo_mode": "none", "kept": []},
                "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    network, record = finetune(labeled, pseudo_mode, seed)
    result = evaluate(network)
    return {**result, "train": record, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------- multi-round paths


def query_path(strategy_key: str, query: Dict[str, Any], first: Sequence[str], round_sizes: Sequence[int],
               seed: int, mc_samples: int) -> Dict[str, Any]:
    """Rounds 1..R-1 of one strategy at one budget: fine-tune on what is labelled, re-rank, label the next batch.

    Round 0 (``first``) was chosen in the parent from the shared cold-start analysis. Each later round trains the
    pre-trained model on the labelled set so far (supervised, the same steps as a final run in ``none`` mode),
    analyses the whole pool with it (the frozen pre-trained encoder runs beside it, so DKD's knowledge divergence
    is no longer 0) and selects the round's batch with the same :class:`QueryConfig`.
    """
    from ASSFTActive.query import QueryConfig, select

    config = QueryConfig.from_dict(query)
    labeled = list(first)
    rounds = [{"selected": list(first)}]
    total_rounds = len(round_sizes)
    for index, size in enumerate(round_sizes[1:], start=1):
        network, record = finetune(labeled, "none", seed)
        state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        wants_mc = config.strategy.value in MC_STRATEGIES
        analysis = analyse_cases([c for c in _STATE["setup"].pool], state,
                                 mc_samples=mc_samples if wants_mc else 0, tag=f"{strategy_key}-r{index}")
        evidence = {a["case_id"]: summarize(a, config) for a in analysis}
        candidates = [evidence[c] for c in _STATE["setup"].pool if c not in set(labeled)]
        anchors = [evidence[c] for c in labeled]
        ranking = select(candidates, size, config,
                         labeled_embeddings=[e.pretrained_embedding for e in anchors],
                         labeled_current_embeddings=[e.current_embedding for e in anchors],
                         round_index=index, total_rounds=total_rounds)
        picked = list(ranking.selected_ids)
        kd = [evidence[c].knowledge_divergence for c in _STATE["setup"].pool]
        rounds.append({"selected": picked, "train_seconds": record["seconds"],
                       "kd_min": float(np.min(kd)), "kd_max": float(np.max(kd)),
                       "interim_pool_dice": float(np.mean([a["dice"] for a in analysis])),
                       "score_vs_interim_error": interim_correlations(analysis, evidence, labeled, config)})
        labeled += picked
    return {"labeled": labeled, "rounds": rounds}


def interim_correlations(analysis: Sequence[Dict[str, Any]], evidence: Dict[str, Any], labeled: Sequence[str],
                         config) -> Dict[str, Any]:
    """Spearman rho of each score with the interim (adapted) model's error over the unlabelled candidates.

    After adaptation DKD's knowledge divergence is live, so this is where it can show whether it predicts error
    (hidden labels; a diagnosis, never an input of a selector). DKD is measured against the labelled cases.
    """
    from ASSFTActive.query import RegionSpec, region_sums
    from Testing.Benchmarks.harness.diagnostics import kd_variant_correlations, score_error_correlations

    done = set(labeled)
    rows = [a for a in analysis if a["case_id"] not in done]
    if len(rows) < 3:
        return {}
    spec = RegionSpec.from_config(config)
    sums = [region_sums(a["probs"].astype(np.float32), spec) for a in rows]
    cases = [evidence[a["case_id"]] for a in rows]
    anchors = [evidence[c] for c in labeled]
    embed = "current_embedding" if config.div_space.value == "current" else "pretrained_embedding"
    extra = {name: [a[key] for a in rows] for key, name in (("epistemic", "mc_dropout"), ("mutual_information", "bald"))
             if all(a.get(key) is not None for a in rows)}
    errors = [1.0 - a["dice"] for a in rows]
    result = score_error_correlations(sums, errors, config, evidence=cases,
                                      labeled_embeddings=[getattr(e, embed) for e in anchors], extra=extra)
    variants = kd_variant_correlations([a["features"] for a in rows], [a["pretrained_features"] for a in rows],
                                       errors, config)
    return {**{name: r.to_dict() for name, r in result.items()},
            **{f"kd_{name}": r.to_dict() for name, r in variants.items()}}


def summarize(analysis: Dict[str, Any], config) -> Any:
    """``CaseEvidence`` of one analysed case under ``config`` (the second half of ``api.analyse_volume``)."""
    from ASSFTActive.query import RegionSpec, region_sums, summarize_case

    sums = region_sums(analysis["probs"].astype(np.float32), RegionSpec.from_config(config))
    evidence = summarize_case(analysis["case_id"], sums, analysis["features"],
                              analysis["pretrained_features"], replace(config, strategy="assft"))
    if analysis.get("epistemic") is not None:
        evidence = replace(evidence, epistemic=float(analysis["epistemic"]))
    if analysis.get("mutual_information") is not None:
        evidence = replace(evidence, mutual_information=float(analysis["mutual_information"]))
    return evidence


def nan_to_none(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
