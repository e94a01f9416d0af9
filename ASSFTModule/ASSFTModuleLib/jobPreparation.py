"""Fill a job folder from the scene: the pool's volumes, the labeled volumes' class label maps, ``job.json``
(the engine's :class:`~ASSFTActive.jobs.JobSpec`) and the scene's case list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ASSFTActive.cards import ModelCard
from ASSFTActive.io import atomic_write_text, write_volume
from ASSFTActive.jobs import JobSpec, write_job

from .errors import ASSFTModuleError
from .geometry import volumeFromNode
from .jobs import CASES_FILE, IMAGE_SUFFIX, assignCaseIds, caseIdForName, newJobDir
from .modelCard import modelReference
from .records import PreparedJob
from .segmentation import (
    conversionVolume,
    findSegmentationForVolume,
    requireKnownSegments,
    segmentationToClassLabelmap,
)


def prepareJob(scene, workDir, kind: str, volumeNodes: Sequence, modelCard: ModelCard, model: str, budget: int,
               storeDir=None, modelName: str = "", query: Optional[dict] = None,
               finetune: Optional[dict] = None) -> PreparedJob:
    """Write the scene's volumes and labels into a new job folder with its ``job.json``.

    A volume counts as labeled when its segmentation has a non-empty segment named after a model class; its
    class label map goes to ``labels/``. Segments with other names stop the preparation (they are never guessed).

    Args:
        scene: the MRML scene.
        workDir: folder for jobs (``<workDir>/jobs``) and, by default, the model store (``<workDir>/models``).
        kind: ``rank`` or ``adapt``.
        volumeNodes: the pool (scalar volume nodes).
        modelCard: the active model's card (class names).
        model: ``"default"`` or the card path, as the user chose it.
        budget: volumes to propose.
        storeDir: model store folder; default ``<workDir>/models``.
        modelName: name of the adapted model; default ``<card name>-adapted``.
        query, finetune: engine configuration dictionaries passed through unchanged.

    Returns:
        :class:`PreparedJob`.

    Raises:
        ASSFTModuleError: no volumes, a volume under a transform, ``adapt`` without any labeled volume, or settings
            the engine's :class:`~ASSFTActive.jobs.JobSpec` refuses (budget, ``finetune``).
        UnknownSegmentNamesError: a segmentation has segments that are not model classes.
    """
    if not volumeNodes:
        raise ASSFTModuleError("There are no volumes to work on. Load the unlabeled volumes into the scene first.")
    for node in volumeNodes:
        transform = node.GetParentTransformNode()
        if transform is not None:
            raise ASSFTModuleError(
                f"Volume '{node.GetName()}' is under transform '{transform.GetName()}'. Harden the transform "
                "(Data module: right-click, Harden transform) or remove it, so that the engine sees the geometry "
                "shown on screen."
            )
    caseIds = assignCaseIds([node.GetName() for node in volumeNodes])
    conversions = {}
    for caseId, node in zip(caseIds, volumeNodes):
        segmentationNode = findSegmentationForVolume(scene, node)
        if segmentationNode is None:
            continue
        conversion = segmentationToClassLabelmap(scene, segmentationNode, node, modelCard)
        requireKnownSegments(conversion, segmentationNode, modelCard)
        if conversion.isLabeled:
            conversions[caseId] = conversion
    if kind == "adapt" and not conversions:
        raise ASSFTModuleError(
            "Adapt Model needs at least one labeled volume: annotate a proposed volume (Annotate) so that its "
            "segmentation has a non-empty segment named after a model class."
        )

    if int(budget) < 1:
        raise ASSFTModuleError(f"The budget must be at least 1 volume, got {budget}.")
    jobDir = newJobDir(workDir, kind).resolve()
    images = {caseId: jobDir / "images" / f"{caseId}{IMAGE_SUFFIX}" for caseId in caseIds}
    labels = {caseId: jobDir / "labels" / f"{caseId}{IMAGE_SUFFIX}" for caseId in caseIds if caseId in conversions}
    store = (Path(storeDir) if storeDir else Path(workDir) / "models").resolve()
    try:
        job = JobSpec(kind=kind, images=images, labels=labels, model=modelReference(model), store=str(store),
                      name=caseIdForName(modelName or f"{modelCard.name}-adapted"), budget=int(budget),
                      query=dict(query or {}), finetune=dict(finetune or {}))
    except ValueError as exc:
        jobDir.rmdir()  # still empty: nothing was written yet
        raise ASSFTModuleError(f"Cannot prepare the {kind} job: {exc}.") from exc
    for caseId, node in zip(caseIds, volumeNodes):
        write_volume(volumeFromNode(node), images[caseId])
        if caseId in conversions:
            write_volume(conversionVolume(conversions[caseId]), labels[caseId])
    store.mkdir(parents=True, exist_ok=True)
    write_job(jobDir, job)
    caseNodeIds = {caseId: node.GetID() for caseId, node in zip(caseIds, volumeNodes)}
    cases = {caseId: {"node_id": node.GetID(), "name": node.GetName()} for caseId, node in zip(caseIds, volumeNodes)}
    atomic_write_text(jobDir / CASES_FILE, json.dumps(cases, indent=2))
    return PreparedJob(jobDir=jobDir, job=job, caseNodeIds=caseNodeIds)

