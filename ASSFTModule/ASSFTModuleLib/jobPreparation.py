"""Fill a job folder from the scene: the pool's volumes, the labeled volumes' class label maps, ``job.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from ASSFTActive.io import write_volume

from .errors import ASSFTModuleError
from .geometry import volumeFromNode
from .jobs import CASES_FILE, IMAGE_SUFFIX, assignCaseIds, atomicWriteText, caseIdForName, newJobDir, writeJobFile
from .modelCard import modelReference
from .records import JobSpec, ModelCard
from .segmentation import (
    conversionVolume,
    findSegmentationForVolume,
    requireKnownSegments,
    segmentationToClassLabelmap,
)


def prepareJob(scene, workDir, kind: str, volumeNodes: Sequence, modelCard: ModelCard, model: str, budget: int,
               storeDir=None, modelName: str = "", query: Optional[dict] = None,
               finetune: Optional[dict] = None) -> JobSpec:
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
        :class:`JobSpec`.

    Raises:
        ASSFTModuleError: no volumes, a volume under a transform, or ``adapt`` without any labeled volume.
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

    jobDir = newJobDir(workDir, kind)
    images: Dict[str, Path] = {}
    labels: Dict[str, Path] = {}
    for caseId, node in zip(caseIds, volumeNodes):
        images[caseId] = write_volume(volumeFromNode(node), jobDir / "images" / f"{caseId}{IMAGE_SUFFIX}")
        if caseId in conversions:
            labels[caseId] = write_volume(conversionVolume(conversions[caseId]),
                                          jobDir / "labels" / f"{caseId}{IMAGE_SUFFIX}")
    store = Path(storeDir) if storeDir else Path(workDir) / "models"
    store.mkdir(parents=True, exist_ok=True)
    writeJobFile(jobDir, kind, images, labels, modelReference(model), store,
                 caseIdForName(modelName or f"{modelCard.name}-adapted"), budget, query, finetune)
    caseNodeIds = {caseId: node.GetID() for caseId, node in zip(caseIds, volumeNodes)}
    cases = {caseId: {"node_id": node.GetID(), "name": node.GetName()} for caseId, node in zip(caseIds, volumeNodes)}
    atomicWriteText(jobDir / CASES_FILE, json.dumps(cases, indent=2))
    return JobSpec(jobDir=jobDir, kind=kind, caseNodeIds=caseNodeIds, images=images, labels=labels)
