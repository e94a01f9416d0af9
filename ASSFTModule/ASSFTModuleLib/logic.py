"""The module's MRML logic: one object holding the scene (and application logic) that the widget calls.

Every method works on MRML nodes and files only; there is no Qt here, so the same code runs in desktop Slicer
(given ``slicer.mrmlScene`` and ``slicer.app.applicationLogic()``) and headless on slicer-core in tests.
The heavy work (ranking, fine-tuning) is not done here: :meth:`prepareJob` writes a job folder for the engine's
worker process, and :meth:`loadJobResult` brings its results back into the scene.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from ASSFTActive.cards import ModelCard
from ASSFTActive.io import Volume
from ASSFTActive.jobs import ADAPT_KINDS, RoundPlan

from . import jobFolder, overlay, plot, ranking, regions, segmentation, unitProposals
from .errors import ASSFTModuleError
from .geometry import loadVolumeFile
from .modelCard import readModelCard
from .records import CaseState, FinishedJob, LabelConversion, PreparedJob, RankingRow, RegionMarker, RestoredLabels

#: Attribute of a ranking table node: the job folder its rows point into (overlays, regions, predictions); that
#: folder is never pruned while the table is shown (:meth:`ASSFTSceneLogic.protectedJobFolders`).
RANKING_JOB_ATTRIBUTE = "ASSFT.JobDirectory"


@dataclass(frozen=True)
class LoadedResult:
    """What :meth:`ASSFTSceneLogic.loadJobResult` put into the scene.

    Attributes:
        result: the job's ``result.json``.
        activeModel: the card of the adapted model when an ``adapt`` or ``sfr`` job activated it, else None (keep
            the model).
        adaptedModel: the card of the new model version of an ``adapt`` or ``sfr`` job (stored even when not
            activated).
        tableNode: the ranking table (None when the job wrote no ranking).
        chartNode: the DKD-against-ASD chart (None without ranking).
        predictionNodes: ``{case_id: prediction segmentation node}``.
        skippedCases: case ids whose volume is no longer in the scene.
        queryRound: the round of the multi-round query schedule the ranking belongs to and how many volumes it
            proposes (None without ranking, or when its ``config.json`` does not record it).
    """

    result: FinishedJob
    activeModel: Optional[Path]
    adaptedModel: Optional[Path] = None
    tableNode: object = None
    chartNode: object = None
    predictionNodes: Dict[str, object] = field(default_factory=dict)
    skippedCases: Tuple[str, ...] = ()
    queryRound: Optional[RoundPlan] = None


@dataclass(frozen=True)
class CaseView:
    """What :meth:`ASSFTSceneLogic.showCase` shows for one ranked volume."""

    case: RankingRow
    volumeNode: object
    overlayNode: object = None
    regionsNode: object = None
    regions: Tuple[RegionMarker, ...] = ()


class ASSFTSceneLogic:
    """MRML logic of the ASSFT module.

    Args:
        scene: the ``vtkMRMLScene``.
        appLogic: the ``vtkSlicerApplicationLogic`` (module logics are looked up through it: Volumes, Plots).
        volumesLogic: overrides the Volumes logic found through ``appLogic``.
    """

    def __init__(self, scene, appLogic=None, volumesLogic=None):
        self.scene = scene
        self.appLogic = appLogic
        self.volumesLogic = volumesLogic or (appLogic.GetModuleLogic("Volumes") if appLogic is not None else None)

    # ------------------------------------------------------------------ model and pool
    def modelCard(self, model) -> ModelCard:
        """The card of ``model`` (a card path, or ``"default"`` / empty for the embedded default), read and checked
        by the engine as the worker will read it (no torch is imported).

        Raises:
            ASSFTModuleError: the card is missing or not a valid model card.
        """
        return readModelCard(model)

    def poolVolumeNodes(self) -> list:
        """The scene's grey-level volumes, in scene order (ASSFT overlays and label maps excluded)."""
        nodes = []
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetClassName() != "vtkMRMLScalarVolumeNode" or node.GetAttribute(overlay.ROLE_ATTRIBUTE):
                continue
            if node.GetHideFromEditors() or node.GetImageData() is None:
                continue
            nodes.append(node)
        return nodes

    # ------------------------------------------------------------------ segmentations
    def annotationSegmentation(self, volumeNode, modelCard: ModelCard, predictionPath: Optional[str] = None):
        """The volume's segmentation with one segment per model class, created when missing.

        When ``predictionPath`` is given and the segmentation has no manual work yet, the class segments are
        pre-filled from that prediction label map.
        """
        node = segmentation.ensureClassSegmentation(self.scene, volumeNode, modelCard)
        if predictionPath:
            segmentation.prefillFromPrediction(
                self.scene,
                self._volumesLogic(),
                node,
                str(predictionPath),
                modelCard,
                overwrite=False,
                volumeNode=volumeNode,
            )
        return node

    def classLabelmap(self, volumeNode, modelCard: ModelCard, segmentationNode=None) -> LabelConversion:
        """The volume's segmentation as class indices ``[I, J, K]`` (unknown segment names reported)."""
        if segmentationNode is None:
            segmentationNode = segmentation.findLabelSegmentation(self.scene, volumeNode, modelCard)
        if segmentationNode is None:
            raise ASSFTModuleError(f"Volume '{volumeNode.GetName()}' has no segmentation yet; press Annotate first.")
        return segmentation.segmentationToClassLabelmap(self.scene, segmentationNode, volumeNode, modelCard)

    def labelIssues(self, volumeNode, modelCard: ModelCard, segmentationNode=None) -> Tuple[str, ...]:
        """What the engine's label checks (``ASSFTActive.label_checks.find_label_issues``, numpy only) say
        of this volume's labels alone: no foreground, or a model class with no voxel (a half-labelled volume).
        Shown when labels are saved, so that the user paints the missing class (or later chooses Train anyway)
        instead of learning it from Adapt Model's refusal. Empty when the labels look complete or there are none.
        """
        from ASSFTActive.label_checks import find_label_issues

        if segmentationNode is None:
            segmentationNode = segmentation.findLabelSegmentation(self.scene, volumeNode, modelCard)
        if segmentationNode is None:
            return ()
        conversion = segmentation.segmentationToClassLabelmap(self.scene, segmentationNode, volumeNode, modelCard)
        caseId = jobFolder.caseIdForName(volumeNode.GetName())
        return tuple(issue.message for issue in find_label_issues({caseId: conversion.labels}, modelCard.class_names))

    def isLabeled(self, volumeNode, modelCard: ModelCard) -> bool:
        """Whether the volume has a segmentation with a non-empty segment named after a model class (a volume with
        proposed slices / regions: whether one of them is marked done, ``unitProposals.annotatedConversion``)."""
        node = segmentation.findLabelSegmentation(self.scene, volumeNode, modelCard)
        if node is None:
            return False
        conversion = unitProposals.annotatedConversion(
            volumeNode, segmentation.segmentationToClassLabelmap(self.scene, node, volumeNode, modelCard)
        )
        return conversion is not None and (conversion.isLabeled or bool(unitProposals.proposalsOf(volumeNode)))

    def refreshLabeledStates(self, tableNode, modelCard: ModelCard) -> int:
        """Mark rows whose volume got labels since ranking as labeled, and rows whose labels are gone (emptied, or
        a segmentation made outside ASSFT that the user unmarked as expert labels) as proposed or unlabeled again.

        Returns:
            the number of rows whose state changed.
        """
        changed = 0
        for row in range(tableNode.GetNumberOfRows()):
            case, nodeId = ranking.rankedCaseFromTable(tableNode, row)
            node = self.scene.GetNodeByID(nodeId) if nodeId else None
            if node is None:
                continue
            labeled = self.isLabeled(node, modelCard)
            if labeled == case.labeled:
                continue
            ranking.setCaseState(tableNode, case.caseId, CaseState.of(labeled, case.pseudoLabeled, case.selected))
            changed += 1
        return changed

    # ------------------------------------------------------------------ jobs
    def prepareJob(
        self,
        kind: str,
        workDir,
        model,
        budget: int,
        volumeNodes: Optional[Sequence] = None,
        query: Optional[dict] = None,
        finetune: Optional[dict] = None,
        sfr: Optional[dict] = None,
        storeDir=None,
    ) -> PreparedJob:
        """Write a ``rank``, ``adapt`` or ``sfr`` job folder for the pool (default: :meth:`poolVolumeNodes`);
        ``query`` holds the engine's query settings (``rounds``: the multi-round schedule, also for the re-rank of
        an adaptation), ``sfr`` an ``sfr`` job's settings (its ``method``: ``sfr`` or ``sfr_plus``), ``storeDir``
        the model store (default ``<workDir>/models``); :meth:`planJob`, then its files written here."""
        return self.planJob(
            kind, workDir, model, budget, volumeNodes, query=query, finetune=finetune, sfr=sfr, storeDir=storeDir
        ).writeFiles()

    def planJob(
        self,
        kind: str,
        workDir,
        model,
        budget: int,
        volumeNodes: Optional[Sequence] = None,
        query: Optional[dict] = None,
        finetune: Optional[dict] = None,
        sfr: Optional[dict] = None,
        storeDir=None,
    ) -> jobFolder.JobPlan:
        """:meth:`prepareJob` without writing the volumes: the returned :class:`~.jobFolder.JobPlan` writes them
        with ``writeFiles()`` in any thread (the job controller does it off the GUI thread)."""
        card = self.modelCard(model)
        nodes = list(volumeNodes) if volumeNodes is not None else self.poolVolumeNodes()
        return jobFolder.planJob(
            self.scene,
            workDir,
            kind,
            nodes,
            card,
            str(model or ""),
            budget,
            storeDir=storeDir,
            query=query,
            finetune=finetune,
            sfr=sfr,
        )

    def loadJobResult(
        self,
        jobDir,
        model,
        tableNode=None,
        showPredictions: bool = True,
        caseNodes: Optional[Dict[str, object]] = None,
        schedule: Optional[Callable[[Callable[[], None]], None]] = None,
    ) -> LoadedResult:
        """Bring a finished job's results into the scene.

        Args:
            jobDir: the job folder.
            model: the model that was active when the job started (card path or ``"default"``).
            tableNode: ranking table to overwrite (a new one when None).
            showPredictions: refresh the prediction segmentations of the volumes still in the scene.
            caseNodes: ``{case_id: volume node}`` the results go to; default: the nodes the job was prepared from
                (:func:`~.jobFolder.caseNodesInScene`). :meth:`restoreLatestRanking` passes the nodes loaded again
                from the same files.
            schedule: when given, each volume's prediction is shown by a callable handed to it (the panel passes
                one that runs it on a later GUI turn: on a pool of CTs each takes 0.2-0.4 s, all at once froze the
                panel); ``predictionNodes`` then stays empty. None: shown before returning.

        Returns:
            :class:`LoadedResult`; ``activeModel`` is the adapted card after an ``adapt`` or ``sfr`` job that
            activated it.

        Raises:
            JobFailedError: the job did not finish with ``done``.
        """
        result = jobFolder.readJobResult(jobDir)
        adaptedModel = result.modelCard if result.kind in ADAPT_KINDS else None
        activeModel = adaptedModel if result.activated else None
        card = self.modelCard(adaptedModel if adaptedModel is not None else model)
        cases = jobFolder.readCaseNodes(jobDir)
        if caseNodes is None:
            nodes = jobFolder.caseNodesInScene(self.scene, cases)  # the nodes the job was prepared from, no others
        else:
            nodes = {caseId: node for caseId, node in caseNodes.items() if caseId in cases}
        skipped = tuple(sorted(set(cases) - set(nodes)))

        chartNode = None
        queryRound = None
        if result.ranking is not None:
            rankingData = ranking.readRanking(result.ranking, result.pseudoLabeled)
            queryRound = jobFolder.readQueryRound(result.ranking)
            labeled = {caseId for caseId, node in nodes.items() if self.isLabeled(node, card)}
            tableNode = ranking.writeRankingTable(
                self.scene,
                rankingData,
                caseNames={caseId: node.GetName() for caseId, node in nodes.items()},
                caseNodeIds={caseId: node.GetID() for caseId, node in nodes.items()},
                labeled=labeled,
                tableNode=tableNode,
            )
            tableNode.SetAttribute(RANKING_JOB_ATTRIBUTE, str(Path(jobDir).resolve()))
            unitProposals.attachProposals(result.ranking, nodes)  # --unit slice / region: what Annotate steps through
            chartNode = plot.scoresChart(self.scene, tableNode)

        predictionNodes = {}
        if showPredictions:
            for caseId, path in sorted(result.predictions.items()):
                if caseId not in nodes or path is None:
                    continue
                if schedule is not None:
                    schedule(functools.partial(self.showPrediction, nodes[caseId], path, card))
                else:
                    predictionNodes[caseId] = self.showPrediction(nodes[caseId], path, card)
        return LoadedResult(
            result=result,
            activeModel=activeModel,
            adaptedModel=adaptedModel,
            tableNode=tableNode,
            chartNode=chartNode,
            predictionNodes=predictionNodes,
            skippedCases=skipped,
            queryRound=queryRound,
        )

    def showPrediction(self, volumeNode, path, card):
        """The (hidden) prediction segmentation of one volume from its job's label file; skipped (None) when the
        volume left the scene before a scheduled call ran."""
        if volumeNode.GetScene() is not self.scene:
            return None
        labels = segmentation.readClassLabelmapFile(self.scene, self._volumesLogic(), str(path))
        predictionNode = segmentation.showPredictionSegmentation(self.scene, volumeNode, labels, card)
        predictionNode.GetDisplayNode().SetVisibility(False)
        return predictionNode

    def restoreLatestRanking(
        self,
        workDir,
        tableNode=None,
        volumeNodes: Optional[Sequence] = None,
        schedule: Optional[Callable[[Callable[[], None]], None]] = None,
    ):
        """Show again the newest successful ranking under ``<workDir>/jobs`` (its table, chart, overlays, regions,
        predictions and probably-wrong list) on the volumes it ranked, after the browser server restarted or the
        scene was loaded again.

        A case is re-attached to a volume only when the volume is the one the job was prepared from (same node and
        :data:`~.jobFolder.CASE_TOKEN_ATTRIBUTE`), or when it was loaded from the very file the job linked, unchanged
        (same path, size and modification time: :func:`~.jobFolder.caseNodesFromFiles`). Volumes loaded from other
        files, or written into the job from the scene, are never given another volume's results.

        Args:
            workDir: the folder of ``jobs/``.
            tableNode: ranking table to overwrite (a new one when None).
            volumeNodes: the volumes that may receive results (default: :meth:`poolVolumeNodes`).
            schedule: show the predictions later, one per call handed to it (see :meth:`loadJobResult`).

        Returns:
            ``(jobDir, LoadedResult)``, or None when there is no finished ranking or none of its volumes is loaded.

        Raises:
            ASSFTModuleError: the ranking's files or its model card cannot be read (the message says which).
        """
        from ASSFTActive.errors import JobError
        from ASSFTActive.jobs import read_job

        jobDir = jobFolder.latestRankingJobDir(workDir)
        if not jobDir:
            return None
        nodes = self._jobCaseNodes(jobDir, volumeNodes)
        if not nodes:
            return None
        try:
            model = read_job(jobDir).model
        except JobError as exc:
            raise ASSFTModuleError(f"Cannot show the last ranking again: {exc}") from exc
        return Path(jobDir), self.loadJobResult(jobDir, model, tableNode=tableNode, caseNodes=nodes, schedule=schedule)

    def _jobCaseNodes(self, jobDir, volumeNodes: Optional[Sequence] = None) -> dict:
        """``{case_id: volume node}`` of a job's cases that are in the scene: the very node the job was prepared
        from, or a volume loaded again from the same, unchanged file (:meth:`restoreLatestRanking`'s rule)."""
        cases = jobFolder.readCaseNodes(jobDir)
        nodes = jobFolder.caseNodesInScene(self.scene, cases)
        pool = [
            node
            for node in (volumeNodes if volumeNodes is not None else self.poolVolumeNodes())
            if node not in nodes.values()
        ]
        nodes.update(jobFolder.caseNodesFromFiles({c: i for c, i in cases.items() if c not in nodes}, pool))
        return nodes

    def restoreSavedLabels(
        self, workDir, modelCard: ModelCard, volumeNodes: Optional[Sequence] = None
    ) -> RestoredLabels:
        """After Slicer started again: read back the labels the user had painted, from the newest job that saved
        labels for each volume (every job writes the labelled volumes' class label maps, partial ones with their
        annotated slices or regions, into ``labels/``), so that no annotation is lost with an unsaved scene. The
        newest job prepared from a volume decides: when it saved no labels for it (the user had removed them), older
        labels are not brought back.

        Only volumes with no segmentation to read labels from get them (:func:`~.segmentation.findLabelSegmentation`
        finds none): labels in the scene are the user's current work and are never replaced. A volume gets labels
        only from a job that was prepared from it (the same node, or the same unchanged file), as
        :meth:`restoreLatestRanking` decides. A partial label marks its units done again (:meth:`loadSavedLabels`).
        A job folder whose case list cannot be read is skipped and named in the result. Job folders are read newest
        first until every volume without labels is decided, so this is usually one folder.

        Args:
            volumeNodes: the volumes that may get labels back (default: :meth:`poolVolumeNodes`).

        Raises:
            ASSFTModuleError: a saved label file cannot be read or does not fit its volume (the message names
                both); the volumes before it keep what they got.
        """
        volumes: Dict[str, Path] = {}
        unreadable = []
        candidates = [  # labels in the scene are never replaced, so only volumes without them are looked for
            node
            for node in (volumeNodes if volumeNodes is not None else self.poolVolumeNodes())
            if segmentation.findLabelSegmentation(self.scene, node, modelCard) is None
        ]
        pending = {node.GetID() for node in candidates}
        for jobDir in jobFolder.jobDirsNewestFirst(workDir):  # every job folder, not only finished ones
            if not pending:  # usually after the newest job: it holds the whole pool
                break
            try:
                nodes = self._jobCaseNodes(jobDir, candidates)
            except ASSFTModuleError:
                unreadable.append(Path(jobDir))
                continue
            for caseId, node in sorted(nodes.items()):
                if node.GetID() not in pending:
                    continue
                pending.discard(node.GetID())  # the newest job of this volume decides: labels then, or none then
                path = jobFolder.savedLabelFile(jobDir, caseId)
                if path is None:
                    continue
                try:
                    self.loadSavedLabels(node, path, modelCard)
                except ASSFTModuleError as exc:
                    raise ASSFTModuleError(
                        f"Cannot read back the labels of '{node.GetName()}' ({path}): {exc}"
                    ) from exc
                volumes[node.GetName()] = path
        return RestoredLabels(volumes, tuple(unreadable))

    # ------------------------------------------------------------------ looking at one case
    def volumeNodeForCase(self, case: RankingRow, nodeId: str = ""):
        """The case's volume node; loaded from the job's image file when it is no longer in the scene."""
        node = self.scene.GetNodeByID(nodeId) if nodeId else None
        if node is not None:
            return node
        if case.image is None:
            raise ASSFTModuleError(f"Case '{case.caseId}' is not in the scene and its image file is unknown.")
        return loadVolumeFile(self._volumesLogic(), str(case.image), name=case.caseId)

    def showCase(self, tableNode, row: int, threshold: float, opacity: float) -> CaseView:
        """Show a ranked volume: the volume in the slice views, its entropy overlay and its regions."""
        case, nodeId = ranking.rankedCaseFromTable(tableNode, row)
        volumeNode = self.volumeNodeForCase(case, nodeId)
        overlayNode = None
        if case.entropyMap is not None:
            overlayNode = overlay.loadOverlay(self.scene, self._volumesLogic(), volumeNode, str(case.entropyMap))
            overlay.showOverlay(self.scene, volumeNode, overlayNode, threshold, opacity)
        else:
            overlay.hideOverlay(self.scene)
            for composite in self._sliceCompositeNodes():
                composite.SetBackgroundVolumeID(volumeNode.GetID())
        regionsNode, caseRegions = None, ()
        if case.regions is not None:
            caseRegions = regions.readRegions(case.regions).regions
            regionsNode = regions.regionsToMarkups(self.scene, volumeNode, caseRegions)
        regions.showOnlyRegionsOf(self.scene, volumeNode)
        self.showOnlyLabelsOf(volumeNode)
        return CaseView(
            case=case,
            volumeNode=volumeNode,
            overlayNode=overlayNode,
            regionsNode=regionsNode,
            regions=tuple(caseRegions),
        )

    def showOnlyLabelsOf(self, volumeNode) -> int:
        """Hide every segmentation that belongs to another volume (ASSFT annotations and predictions, and the user's
        segmentations made on another volume), so that no other case's labels are drawn over ``volumeNode``; its
        own annotation is shown. Returns the number of segmentations hidden."""
        return segmentation.showOnlySegmentationsOf(self.scene, volumeNode)

    # ------------------------------------------------------------------ job folders
    @staticmethod
    def rankingJobDirectory(tableNode) -> str:
        """The job folder a ranking table's rows point into ("" for no table or a table without one)."""
        return (tableNode.GetAttribute(RANKING_JOB_ATTRIBUTE) or "") if tableNode is not None else ""

    def protectedJobFolders(self, workDir, tableNode=None) -> list:
        """Job folders that pruning must keep: the folder of the ranking shown (``tableNode``) and the newest job
        that ended with a ranking (a failed or cancelled job never pushes it out)."""
        folders = [self.rankingJobDirectory(tableNode), jobFolder.latestRankingJobDir(workDir)]
        return [str(folder) for folder in folders if folder]

    def caseForVolume(self, tableNode, volumeNode) -> Optional[RankingRow]:
        """The ranking table row of ``volumeNode`` as a :class:`RankingRow`, or None when it is not ranked."""
        if tableNode is None or volumeNode is None:
            return None
        for row in range(tableNode.GetNumberOfRows()):
            case, nodeId = ranking.rankedCaseFromTable(tableNode, row)
            if nodeId == volumeNode.GetID():
                return case
        return None

    def showEntropy(self, volumeNode, entropy: Volume, threshold: float, opacity: float):
        """Show an in-memory entropy map ``[I, J, K]`` as the overlay of ``volumeNode``; returns the overlay node."""
        overlayNode = overlay.overlayFromVolume(self.scene, volumeNode, entropy)
        overlay.showOverlay(self.scene, volumeNode, overlayNode, threshold, opacity)
        return overlayNode

    def updateOverlay(self, volumeNode, threshold: float, opacity: float) -> None:
        """Apply new threshold and opacity to the overlay of ``volumeNode`` (no-op without overlay)."""
        overlayNode = overlay.findOverlayNode(self.scene, volumeNode)
        if overlayNode is None:
            return
        overlay.setOverlayDisplay(overlayNode, threshold)
        overlay.setOverlayOpacity(self.scene, opacity, overlayNode)

    def regionCenter(self, regionsNode, index: int) -> Tuple[float, float, float]:
        """RAS centre of region ``index`` of a regions markups node."""
        return regions.regionCenter(regionsNode, index)

    def jumpToRegion(self, regionsNode, index: int) -> Dict[str, float]:
        """Centre every slice view on region ``index``; returns ``{slice view: offset}``."""
        return regions.jumpSlicesTo(self.scene, regions.regionCenter(regionsNode, index))

    # ------------------------------------------------------------------ annotating proposed slices / regions
    def proposals(self, volumeNode) -> Tuple[unitProposals.UnitProposal, ...]:
        """The volume's proposed slices or regions, best first (empty: annotate the whole volume)."""
        return unitProposals.proposalsOf(volumeNode)

    def jumpToNextProposal(self, volumeNode) -> Optional[int]:
        """Centre every slice view on the next proposed slice / region not yet done (after the current one,
        wrapping round); returns its position, or None when all are done or there are none."""
        position = unitProposals.nextProposal(volumeNode)
        if position is not None:
            unitProposals.jumpToProposal(self.scene, volumeNode, position)
        return position

    def markProposalDone(self, volumeNode, position: Optional[int] = None) -> Tuple[unitProposals.UnitProposal, ...]:
        """Mark proposal ``position`` (default: the one the views are on) done; returns the done units.

        Raises:
            ASSFTModuleError: no proposal is shown yet (step to one first) or there is no such proposal.
        """
        if position is None:
            position = unitProposals.currentProposal(volumeNode)
            if position is None:
                raise ASSFTModuleError("No proposed slice or region is shown yet: choose Next proposed slice first.")
        return unitProposals.markDone(volumeNode, position)

    def savedLabels(self, volumeNode, modelCard: ModelCard, segmentationNode=None) -> Optional[LabelConversion]:
        """The labels as saved (:meth:`classLabelmap`, then 255 = not annotated outside the done units of a volume
        with proposals); None when such a volume has no done unit (``unitProposals.notLabelledReason``)."""
        return unitProposals.annotatedConversion(
            volumeNode, self.classLabelmap(volumeNode, modelCard, segmentationNode)
        )

    def loadSavedLabels(self, volumeNode, path, modelCard: ModelCard):
        """Read a label file saved for ``volumeNode`` (a job folder's or the browser's ``labels/``, after Slicer or the
        browser started again) into its annotation segmentation; returns the segmentation node.

        A partial label (255 = not annotated outside the slices or regions annotated) marks those units done again,
        the volume's proposals first (``unitProposals.restoreSavedLabels``), so that the volume stays annotated in
        exactly those voxels and the next job or save writes the same file; nothing is painted where it was not
        annotated. A full label is painted as it is.

        Raises:
            ASSFTModuleError: the file cannot be read, lies on another voxel grid, has no annotated voxel, or its
                annotated voxels are no union of slices or a few regions.
        """
        try:
            labels = segmentation.readClassLabelmapFileOnGrid(self.scene, self._volumesLogic(), str(path), volumeNode)
        except (OSError, ValueError) as exc:
            raise ASSFTModuleError(str(exc)) from exc
        classes = unitProposals.restoreSavedLabels(volumeNode, labels.array)
        segmentationNode = self.annotationSegmentation(volumeNode, modelCard)
        try:
            segmentation.fillSegmentationFromClassLabelmap(
                segmentationNode, Volume(array=classes, affine=labels.affine), modelCard
            )
        except ValueError as exc:  # class values the model does not have
            raise ASSFTModuleError(str(exc)) from exc
        return segmentationNode

    # ------------------------------------------------------------------ plot
    def scoresChart(self, tableNode):
        """The DKD-against-ASD chart of a ranking table."""
        return plot.scoresChart(self.scene, tableNode)

    def showScoresChart(self, tableNode) -> bool:
        """Show the chart in a layout with a plot view (needs the Plots logic, i.e. desktop Slicer)."""
        return plot.showChartInLayout(self.appLogic, plot.scoresChart(self.scene, tableNode))

    # ------------------------------------------------------------------ helpers
    def _volumesLogic(self):
        if self.volumesLogic is None:
            raise ASSFTModuleError("No Volumes module logic is available to read image files.")
        return self.volumesLogic

    def _sliceCompositeNodes(self) -> list:
        className = "vtkMRMLSliceCompositeNode"
        count = self.scene.GetNumberOfNodesByClass(className)
        return [self.scene.GetNthNodeByClass(i, className) for i in range(count)]
