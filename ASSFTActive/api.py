"""The engine's entry points: rank a pool of volumes and write what an annotator needs.

``rank_pool`` runs one sliding-window pass per volume (probabilities plus encoder features of the current and the frozen
pre-trained model), reduces it to a :class:`~ASSFTActive.query.CaseEvidence`, writes the entropy overlay, its regions
and the predicted label map on a background thread while the next volume is predicted
(:class:`~ASSFTActive.inference.writing.BackgroundWriter`: the maps of at most two earlier volumes wait beside the one
being predicted), then selects the budget with the configured strategy and writes ``ranking.csv``, ``ranking.json`` (one
:class:`~ASSFTActive.jobs.RankingFile`) and ``config.json``. Given a data-parallel context it shards the pool across
ranks itself, with the same staging and the same all-or-nothing output.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import __version__
from .cards import load_card
from .confine import replace_into
from .distributed import DistContext, map_shards, shippable
from .errors import InputError
from .inference import (
    BackgroundWriter,
    InferenceConfig,
    Prediction,
    Predictor,
    default_device,
    overlay_paths,
    write_overlay,
)
from .io import Volume, atomic_write_text, case_id, read_volume, write_volume
from .jobs import RANKING_CONFIG_FILE, RANKING_CSV, RANKING_FILE, RankingEntry, RankingFile, write_ranking_file
from .models import LoadedModel, ModelCard, load_model
from .plausibility import check_image
from .progress import ProgressCallback, emit
from .query import (
    CaseEvidence,
    McDropoutAccumulator,
    QueryConfig,
    Ranking,
    RegionSpec,
    RoundPlan,
    Strategy,
    plan_round,
    select,
    summarize_case,
)
from .query.ood import SourceReference, air_share, card_modality, load_reference, ood_reason
from .query.units import ProposedUnit, Unit, UnitConfig, select_units, volume_priors, volume_units
from .query.wrong import probably_wrong_list

#: Strategies that need MC-dropout passes (their running moments: :class:`~ASSFTActive.query.McDropoutAccumulator`).
MC_STRATEGIES = (Strategy.MC_DROPOUT, Strategy.BALD)


@dataclass(frozen=True)
class VolumeReport:
    """One analysed volume and the files written for it.

    Attributes:
        labeled: the volume already has an expert label (not a candidate; its embedding anchors diversity).
        evidence: the scores the selectors need.
        entropy_map, regions, prediction: written files (``None`` when outputs were not requested).
        units: the volume's candidate slices or regions with their scores (:mod:`ASSFTActive.query.units`; empty
            for ``--unit volume`` and for labelled volumes).
    """

    case_id: str
    image: Path
    labeled: bool
    evidence: CaseEvidence
    entropy_map: Optional[Path] = None
    regions: Optional[Path] = None
    prediction: Optional[Path] = None
    units: Tuple[ProposedUnit, ...] = ()


@dataclass(frozen=True)
class RankResult:
    """Everything ``rank_pool`` produced (``proposed``: the slices or regions proposed, best first, with
    ``--unit slice|region``)."""

    ranking: Ranking
    volumes: Sequence[VolumeReport]
    out_dir: Path
    files: Mapping[str, Path] = field(default_factory=dict)
    proposed: Tuple[ProposedUnit, ...] = ()


def make_predictor(
    card: ModelCard,
    device: Optional[torch.device] = None,
    inference: InferenceConfig = InferenceConfig(),
    feature_cache: Optional[Path] = None,
) -> Predictor:
    """Load the card's model and, if it was adapted from another, the frozen pre-trained one."""
    device = device or default_device()
    current = load_model(card, device)
    pretrained: Optional[LoadedModel] = None
    if card.pretrained is not None:
        pretrained = load_model(card.pretrained_card(), device)
    return Predictor(current, pretrained, inference, device, feature_cache)


def output_paths(out_dir: Path, name: str) -> Tuple[Path, Path, Path]:
    """Where :func:`analyse_volume` writes a volume's files: ``(entropy map, regions, prediction)``, known before
    they are written (the names :func:`~ASSFTActive.inference.overlay.write_overlay` gives)."""
    out_dir = Path(out_dir)
    return (*overlay_paths(out_dir / "overlays", name), out_dir / "predictions" / f"{name}.nii.gz")


def _geometry(image: Volume) -> Volume:
    """``image``'s grid and affine without its voxels (a zero-stride array), so a queued write does not hold them."""
    return Volume(
        array=np.broadcast_to(np.zeros((), dtype=np.uint8), image.shape), affine=image.affine.copy(), path=image.path
    )


def _write_outputs(prediction: Prediction, geometry: Volume, paths: Tuple[Path, Path, Path], name: str) -> None:
    """Bring ``prediction``'s entropy, region and label maps onto the input grid and write them (atomically) to
    ``paths`` (:func:`output_paths`)."""
    entropy_path, regions_path, label_path = paths
    written = write_overlay(geometry, prediction.entropy_levels, prediction.region, entropy_path.parent, name)
    written += (write_volume(geometry.with_array(prediction.label), label_path),)
    if written != paths:  # the report names the files before they exist; the writers must agree
        raise RuntimeError(f"outputs of {name} were written to {written}, expected {paths}")


def analyse_volume(
    image_path: Path,
    predictor: Predictor,
    query: QueryConfig,
    *,
    labeled: bool = False,
    out_dir: Optional[Path] = None,
    image: Optional[Volume] = None,
    writer: Optional[BackgroundWriter] = None,
    units: UnitConfig = UnitConfig(),
) -> VolumeReport:
    """Predict one volume, score it and (when ``out_dir`` is given) write its overlay, regions and prediction.

    Args:
        image_path: the image file (read unless ``image`` is given).
        predictor: loaded current and pre-trained models.
        query: scoring settings.
        labeled: the volume already has an expert label; no outputs are written for it.
        out_dir: the ranking folder; files go to ``overlays/`` and ``predictions/`` below it.
        image: the volume, when already in memory.
        writer: queue the outputs on this writer and return at once (the report names the files; they exist once
            the writer is closed); default: write them before returning.
        units: with ``unit`` slice or region, score every slice / region of an unlabelled volume on its own grid.

    Raises:
        InputError: slice or region units asked of a model with no segmentation head yet (no entropy to score).

    A card with encoder weights only (``ModelCard.has_trained_head`` false) gives the volume no ASD (NaN: the
    query's cold start, :func:`~ASSFTActive.query.selection.cold_start`) and writes no overlay or prediction: the
    initialised head's output says nothing about the volume.
    """
    image = check_image(image if image is not None else read_volume(image_path))
    name = case_id(image_path)
    moments = McDropoutAccumulator()  # running mean of the passes and of their entropies, one pass in memory
    wants_mc = query.strategy in MC_STRATEGIES and not labeled
    prediction = predictor.predict(
        image,
        regions=RegionSpec.from_config(query),
        dropout_samples=query.mc_samples if wants_mc else 0,
        sample_callback=moments.add if wants_mc else None,
    )
    # a labelled volume is never a candidate, only an anchor of diversity: it needs no MC-dropout score
    scoring = replace(query, strategy=Strategy.ASSFT) if labeled and query.strategy in MC_STRATEGIES else query
    # an encoder-only card's head is initialised, not trained: its prediction is no evidence (cold start, no ASD)
    headed = predictor.current.card.has_trained_head
    evidence = summarize_case(
        name,
        prediction.sums if headed else None,
        prediction.features,
        prediction.pretrained_features,
        scoring,
        epistemic=moments.epistemic() if wants_mc else None,
        mutual_information=moments.mutual_information() if wants_mc else None,
    )
    evidence = replace(evidence, ood_reason=volume_ood_reason(image, prediction, predictor.current.card))
    candidates: Tuple[ProposedUnit, ...] = ()
    if units.unit != Unit.VOLUME and not labeled:
        if math.isnan(evidence.asd):
            raise InputError(
                f"--unit {units.unit.value} scores slices or regions by the model's entropy, but the "
                "model has no segmentation head yet (cold start); rank with --unit volume."
            )
        candidates = volume_units(name, prediction.entropy_levels, prediction.region, image.spacing, units)
    entropy_path = regions_path = label_path = None
    if out_dir is not None and not labeled and headed:  # no overlay or label map from an untrained head
        paths = output_paths(Path(out_dir), name)
        geometry = _geometry(image)
        if writer is None:
            _write_outputs(prediction, geometry, paths, name)
        else:
            writer.submit(lambda: _write_outputs(prediction, geometry, paths, name))
        entropy_path, regions_path, label_path = paths
    return VolumeReport(
        case_id=name,
        image=Path(image_path),
        labeled=labeled,
        evidence=evidence,
        entropy_map=entropy_path,
        regions=regions_path,
        prediction=label_path,
        units=candidates,
    )


def foreground_share(prediction: Prediction) -> float:
    """Share of the model-space voxels in the dilated predicted foreground (rule 2 of :mod:`ASSFTActive.query.ood`)."""
    return float(prediction.sums.foreground_voxels) / max(1, int(np.prod(prediction.space.model_shape)))


@lru_cache(maxsize=8)
def _source_reference(card_path: str) -> Tuple[Optional[SourceReference], str]:
    """The source statistics beside the pre-trained card of ``card_path`` and the card's modality (read once)."""
    pretrained = load_card(Path(card_path)).pretrained_card()
    folder = pretrained.path.parent if pretrained.path is not None else None
    return (
        load_reference(folder) if folder is not None else None,
        card_modality(pretrained.preprocessing.get("profile", "")),
    )


def volume_ood_reason(image: Volume, prediction: Prediction, card: ModelCard) -> str:
    """Why ``image`` looks out of distribution for ``card``'s model (:func:`ASSFTActive.query.ood.ood_reason`), or
    ``""``; a card without a file, or whose pre-trained card has no source reference, gets the modality rule only."""
    if card.path is not None:
        reference, modality = _source_reference(str(card.path))
    else:
        reference, modality = None, card_modality(card.preprocessing.get("profile", ""))
    share = foreground_share(prediction) if card.has_trained_head else 0.0  # an untrained head's share: no rule
    return ood_reason(
        np.asarray(prediction.pretrained_features[-1]), share, air_share(image.array), modality, reference
    )


def analyse_pool(
    images: Sequence[Path],
    predictor: Predictor,
    query: QueryConfig,
    labeled_ids: Sequence[str],
    out_dir: Optional[Path],
    progress: Optional[ProgressCallback] = None,
    *,
    background_writes: bool = True,
    units: UnitConfig = UnitConfig(),
) -> List[VolumeReport]:
    """:func:`analyse_volume` for every image, with a progress event per volume (once it is predicted and scored).

    The outputs of a volume are written while the next one is predicted (``background_writes=False``: before it);
    every file exists when this returns, and a failed write raises here, as a failed prediction does.
    """
    reports = []
    labeled = set(labeled_ids)
    with BackgroundWriter(enabled=background_writes) as writer:
        for index, path in enumerate(images):
            name = case_id(path)
            reports.append(
                analyse_volume(
                    Path(path), predictor, query, labeled=name in labeled, out_dir=out_dir, writer=writer, units=units
                )
            )
            emit(progress, "progress", phase="rank", step=index + 1, total=len(images), message=name)
    return reports


def select_from_reports(
    reports: Sequence[VolumeReport], budget: int, query: QueryConfig, *, round_index: int = 0, total_rounds: int = 1
) -> Ranking:
    """Rank the unlabeled volumes; the labeled ones are never candidates and anchor diversity (DKD, coreset).

    ``round_index`` of ``total_rounds`` is the query round (ClaSP PE's noise schedule; :func:`round_plan`).
    """
    candidates = [r.evidence for r in reports if not r.labeled]
    labeled = [r.evidence for r in reports if r.labeled]
    return select(
        candidates,
        budget,
        query,
        labeled_embeddings=[e.pretrained_embedding for e in labeled],
        labeled_current_embeddings=[e.current_embedding for e in labeled],
        round_index=round_index,
        total_rounds=total_rounds,
    )


def propose_units(
    ranking: Ranking, reports: Sequence[VolumeReport], budget: int, query: QueryConfig, units: UnitConfig
) -> Tuple[Ranking, Tuple[ProposedUnit, ...]]:
    """``budget`` slices or regions spread over the pool (:func:`~ASSFTActive.query.units.select_units`), the
    volume ``ranking`` as their prior; the ranking comes back with ``selected`` marking the volumes that hold a
    proposal. Out-of-distribution volumes get none unless ``query.propose_ood``; labelled volumes have no units.
    """
    by_id = {r.case_id: r for r in reports}
    eligible = [c.case_id for c in ranking.cases if query.propose_ood or not by_id[c.case_id].evidence.ood_reason]
    chosen = tuple(select_units([u for r in reports for u in r.units], budget, volume_priors(eligible), units))
    count = {c.case_id: sum(u.case_id == c.case_id for u in chosen) for c in ranking.cases}
    word = units.unit.value
    cases = tuple(
        replace(
            c,
            selected=count[c.case_id] > 0,
            reason=(
                c.reason
                if c.reason.startswith("not proposed")
                else f"{count[c.case_id]} {word}(s) proposed (foreground entropy, volume rank as prior)"
                if count[c.case_id]
                else ""
            ),
        )
        for c in ranking.cases
    )
    return Ranking(strategy=ranking.strategy, budget=budget, cases=cases), chosen


def round_plan(names: Sequence[str], labeled_ids: Sequence[str], budget: int, query: QueryConfig) -> RoundPlan:
    """The round of ``query.rounds`` this ranking of the pool ``names`` belongs to and how many volumes it proposes
    (:func:`~ASSFTActive.query.plan_round`: read from how many pool volumes are labelled)."""
    return plan_round(budget, query.rounds, len(set(labeled_ids) & set(names)))


def _round_warnings(plan: RoundPlan, budget: int, encoders_identical: bool) -> List[str]:
    """What an annotator should know about where the schedule stands (multi-round query only)."""
    if plan.total_rounds == 1:
        return []
    if plan.complete:
        return [
            f"the {plan.total_rounds}-round schedule of budget {budget} is complete ({plan.labeled} pool volumes "
            "are labelled); nothing is proposed. Raise --budget to label more."
        ]
    if plan.round_index > 0 and encoders_identical:
        return [
            f"round {plan.round_index + 1} of {plan.total_rounds} ranks with a model that was not adapted, so "
            "DKD's knowledge divergence is 0; run Adapt Model (assft adapt) on the labelled volumes and rank "
            "with the adapted model (--model <store>/<name>)."
        ]
    return []


def _text(path: Optional[Path]) -> Optional[str]:
    return str(path) if path else None


def ranking_file(
    ranking: Ranking,
    reports: Sequence[VolumeReport],
    card: ModelCard,
    proposed: Sequence[ProposedUnit] = (),
    unit: Unit = Unit.VOLUME,
) -> RankingFile:
    """The :class:`~ASSFTActive.jobs.RankingFile` of a selection: the ranked volumes in rank order with their scores
    and files (with ``unit`` slice or region, each volume's ``proposed`` units, best first), then the labelled ones
    (not ranked; their ASD and KD are reported)."""
    by_id = {r.case_id: r for r in reports}
    unit = Unit(unit)
    entries = []
    for case in ranking.cases:
        report = by_id[case.case_id]
        mine = tuple(u.to_record() for u in proposed if u.case_id == case.case_id) if unit != Unit.VOLUME else None
        entries.append(
            RankingEntry(
                case_id=case.case_id,
                rank=case.rank,
                selected=case.selected,
                labeled=False,
                dkd=case.dkd,
                asd=case.asd,
                score=case.score,
                knowledge_divergence=report.evidence.knowledge_divergence,
                image=str(report.image),
                entropy_map=_text(report.entropy_map),
                regions=_text(report.regions),
                prediction=_text(report.prediction),
                reason=case.reason or None,
                asd_class_balanced=report.evidence.asd_class_balanced,
                ood=report.evidence.ood_reason or None,
                proposed_slices=mine if unit == Unit.SLICE else None,
                proposed_regions=mine if unit == Unit.REGION else None,
            )
        )
    for report in reports:
        if report.labeled:
            entries.append(
                RankingEntry(
                    case_id=report.case_id,
                    rank=None,
                    selected=False,
                    labeled=True,
                    asd=report.evidence.asd,
                    knowledge_divergence=report.evidence.knowledge_divergence,
                    image=str(report.image),
                    asd_class_balanced=report.evidence.asd_class_balanced,
                    ood=report.evidence.ood_reason or None,
                )
            )
    wrong = (
        None
        if ranking.asd_unavailable
        else probably_wrong_list(
            [(e.case_id, math.nan if e.asd_class_balanced is None else e.asd_class_balanced) for e in entries]
        )
    )
    return RankingFile(
        strategy=ranking.strategy,
        budget=ranking.budget,
        model=str(card.path) if card.path else card.name,
        cases=tuple(entries),
        probably_wrong=wrong,
        unit=unit.value,
        asd_unavailable=ranking.asd_unavailable or None,
    )


def write_ranking(
    out_dir: Path,
    ranking: Ranking,
    reports: Sequence[VolumeReport],
    card: ModelCard,
    query: QueryConfig,
    extra: Optional[Mapping] = None,
    proposed: Sequence[ProposedUnit] = (),
    units: UnitConfig = UnitConfig(),
) -> Dict[str, Path]:
    """``ranking.json`` and ``ranking.csv`` (one :class:`~ASSFTActive.jobs.RankingFile`) and ``config.json``
    (resolved settings, model card, versions; ``units`` with ``--unit slice|region``)."""
    out_dir = Path(out_dir)
    record = ranking_file(ranking, reports, card, proposed, units.unit)
    files = {
        "ranking_json": write_ranking_file(out_dir / RANKING_FILE, record),
        "ranking_csv": atomic_write_text(out_dir / RANKING_CSV, record.to_csv()),
    }
    config = {
        "assft_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "query": query.to_dict(),
        "model_card": card.to_dict(),
        "model_card_path": str(card.path) if card.path else None,
        **({"units": units.to_dict()} if units.unit != Unit.VOLUME else {}),
        **(extra or {}),
    }
    files["config_json"] = atomic_write_text(out_dir / RANKING_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return files


def _publish(report: VolumeReport, staging: Path, out_dir: Path) -> VolumeReport:
    """Move a report's files from the staging folder into ``out_dir`` (each move is an atomic rename)."""
    moved = {}
    for key in ("entropy_map", "regions", "prediction"):
        path = getattr(report, key)
        if path is not None:
            # no link planted in out_dir (overlays/, predictions/) is followed, even mid-job: confine.replace_into
            path = replace_into(Path(path), out_dir / Path(path).relative_to(staging))
        moved[key] = path
    return replace(report, **moved)


def remove_stale_outputs(out_dir: Path, pool: Sequence[str]) -> List[Path]:
    """Delete the per-volume files a previous ranking in ``out_dir`` wrote for volumes no longer in ``pool``.

    Re-ranking into the same folder after volumes left the pool would otherwise leave their overlays and
    predictions beside the new ones, and a viewer (or a script globbing ``predictions/``) would take them as current.
    Only the files :func:`output_paths` names for the volumes the previous ``ranking.json`` lists are removed
    (nothing else in the folder); a folder without a readable ``ranking.json`` is left as it is.

    Returns:
        the files removed.
    """
    out_dir = Path(out_dir)
    try:
        previous = json.loads((out_dir / RANKING_FILE).read_text(encoding="utf-8"))
        old = {e["case_id"] for e in previous["cases"] if isinstance(e, dict) and isinstance(e.get("case_id"), str)}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    removed = []
    for name in sorted(old - set(pool)):
        if Path(name).name != name:  # a case id is a file name; anything else was not written by a ranking
            continue
        for path in output_paths(out_dir, name):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


def _check_pool(images: Sequence[Path], budget: int) -> List[str]:
    """The case ids of the pool.

    Raises:
        InputError: a negative budget, or two images with the same case id.
    """
    if budget < 0:
        raise InputError(f"--budget must be 0 or more, got {budget}.")
    names = [case_id(p) for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several images share the case id(s) {duplicates}; give each volume a unique file name.")
    return names


def rank_pool(
    images: Sequence[Path],
    card: ModelCard,
    budget: int,
    out_dir: Path,
    *,
    labeled_ids: Sequence[str] = (),
    query: QueryConfig = QueryConfig(),
    inference: InferenceConfig = InferenceConfig(),
    device: Optional[torch.device] = None,
    feature_cache: Optional[Path] = None,
    write_outputs: bool = True,
    progress: Optional[ProgressCallback] = None,
    predictor: Optional[Predictor] = None,
    ctx: Optional[DistContext] = None,
    units: UnitConfig = UnitConfig(),
) -> RankResult:
    """Score every volume, select ``budget`` of the unlabeled ones and write the ranking folder.

    Per-volume files are written to a hidden staging folder and moved into ``out_dir`` only after every volume was
    analysed and the selection made, so a corrupt file halfway through the pool leaves no partial results behind.
    With a distributed ``ctx`` the same happens across ranks: every rank analyses ``images[rank::world_size]`` into
    the one staging folder (the ranks share the file system), the reports are gathered in the pool's order, and
    rank 0 publishes the files and writes the ranking exactly as one process would; when any rank fails, every
    rank raises (rank 0 the failing rank's error) and nothing is published.

    Args:
        images: image files of the pool (labeled ones included).
        card: the current model.
        budget: how many volumes to propose; with ``query.rounds = R > 1`` the schedule's total, of which this
            ranking proposes the current round's share (:func:`round_plan`; ``config.json`` records the plan
            under ``query_round``).
        out_dir: the ranking folder.
        labeled_ids: case ids that already have expert labels: never proposed, they anchor diversity, and with
            ``query.rounds > 1`` their number among the pool says which round this is.
        query: scoring and selection settings.
        inference: sliding-window settings (when ``predictor`` is not given).
        device: compute device when ``ctx`` is not given (default: :func:`~ASSFTActive.inference.default_device`).
        feature_cache: folder caching the pre-trained encoder's features.
        write_outputs: write overlays and predictions (the ranking files are always written).
        progress: event callback (every rank calls it).
        predictor: reuse already loaded models.
        ctx: the data-parallel context (default: one process on ``device``).
        units: ``unit`` slice or region: ``budget`` counts slices or regions, spread over the unlabelled volumes
            (:func:`propose_units`; one round only).

    Returns:
        the :class:`RankResult`; on ranks other than 0 the same ranking with no volumes and no files.
    """
    if ctx is not None and device is not None and torch.device(device) != ctx.device:
        raise ValueError(f"device {device} differs from the context's device {ctx.device}; pass one of them")
    ctx = ctx or DistContext.single(device)
    images = [Path(p) for p in images]
    names = _check_pool(images, budget)
    if units.unit != Unit.VOLUME and query.rounds != 1:
        raise InputError(f"--unit {units.unit.value} proposes its budget in one round; leave --rounds at 1.")
    out_dir = Path(out_dir)
    staging: Optional[Path] = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=str(out_dir)))
    try:
        staging = Path(ctx.broadcast(str(staging) if staging is not None else None))
        predictor = predictor or make_predictor(card, ctx.device, inference, feature_cache)
        where = f"{ctx.world_size} ranks ({predictor.device.type})" if ctx.distributed else predictor.device.type
        emit(progress, "phase", phase="rank", total=len(images), message=f"ranking {len(images)} volumes on {where}")
        staged = map_shards(
            ctx,
            images,
            lambda shard: analyse_pool(
                shard, predictor, query, labeled_ids, staging if write_outputs else None, progress, units=units
            ),
            whole_shard=True,
        )
        plan = round_plan(names, labeled_ids, budget, query)
        for message in _round_warnings(plan, budget, predictor.encoders_identical) if ctx.is_main else ():
            emit(progress, "warning", phase="rank", message=message)
        ranking = select_from_reports(
            staged, plan.size, query, round_index=plan.round_index, total_rounds=plan.total_rounds
        )
        if ranking.asd_unavailable and ctx.is_main:  # cold start: the panel, the browser and the CLI say why
            emit(progress, "warning", phase="rank", message=ranking.asd_unavailable)
        proposed: Tuple[ProposedUnit, ...] = ()
        if units.unit != Unit.VOLUME:
            ranking, proposed = propose_units(ranking, staged, budget, query, units)
        reports: Sequence[VolumeReport] = ()
        files: Dict[str, Path] = {}
        written: Optional[BaseException] = None
        if ctx.is_main:
            try:
                removed = remove_stale_outputs(out_dir, names)
                if removed:
                    emit(
                        progress,
                        "warning",
                        phase="rank",
                        message=(
                            f"removed {len(removed)} file(s) of an earlier ranking in {out_dir} for volumes no "
                            "longer in "
                            "the pool"
                        ),
                    )
                reports = [_publish(r, staging, out_dir) for r in staged]
                extra = {
                    "encoders_identical": predictor.encoders_identical,
                    "device": predictor.device.type,
                    "query_round": plan.to_dict(),
                }
                if ctx.distributed:
                    extra["world_size"] = ctx.world_size
                files = write_ranking(
                    out_dir, ranking, reports, card, query, extra=extra, proposed=proposed, units=units
                )
            except Exception as exc:
                if not ctx.distributed:
                    raise
                written = exc
        # the other ranks leave only once rank 0 has written the ranking, and fail with it
        failure = ctx.broadcast(shippable(written) if written is not None else None)
        if written is not None:
            raise written
        if failure is not None:
            raise failure
    finally:
        if ctx.is_main and staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return RankResult(ranking=ranking, volumes=reports, out_dir=out_dir, files=files, proposed=proposed)
