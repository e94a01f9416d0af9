"""ASSFT: rank unlabeled volumes for annotation, annotate the proposed ones, adapt the segmentation model.

Module, widget, thin Slicer logic wrapper and self-test. The widget only wires the panel to the parameter node and
to the MRML logic (``ASSFTModuleLib.logic.ASSFTSceneLogic``); ranking and fine-tuning run in the engine's worker
process (``PythonSlicer -m ASSFTActive.worker JOB_DIR``), never in Slicer's process.
"""

from __future__ import annotations

import logging
import pathlib
import tempfile
from typing import Annotated, Optional

import qt
import slicer
import vtk
from ASSFTModuleLib import (
    enginePath,  # also puts the engine (ASSFTActive) on sys.path
    guidance,
    overlay,
    parameters,
    ranking,
    segmentation,
    unitProposals,
)
from ASSFTModuleLib.guiBinding import GuiBinding
from ASSFTModuleLib.jobProcess import workerEnvironment
from ASSFTModuleLib.logic import ASSFTSceneLogic
from ASSFTModuleLib.parameters import AdaptMethodChoice, AnnotationUnitChoice, ModelSource
from ASSFTModuleLib.ranking import HIDDEN_COLUMNS
from slicer import vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ASSFTActive.cards import DEFAULT_MODEL, EMBEDDED_DEFAULT_CARD

parameters.translateLabel = _

#
# ASSFTModule
#


class ASSFTModule(ScriptedLoadableModule):
    """Module description (title, category, help)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ASSFT Active Annotation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Active Learning")]
        # MRML classes of these modules are used by the parameter node and the logic
        self.parent.dependencies = ["Markups", "Segmentations", "Plots", "Tables"]
        self.parent.contributors = ["ASSFT maintainers (ASSFT project)"]
        self.parent.helpText = _(
            "Adapt a pre-trained 3D segmentation model to your site with few expert labels. "
            "<b>Rank Volumes</b> scores every volume in the scene (diversified knowledge divergence, anatomical "
            "segmentation difficulty) and proposes the most useful ones; click a volume to see its uncertainty "
            "overlay and high-entropy regions; <b>Annotate</b> opens the Segment Editor with one segment per model "
            "class; <b>Query rounds</b> R &gt; 1 spreads the budget over R rounds (label a round, Adapt Model, "
            "rank the next one with the adapted model); <b>Adapt Model</b> fine-tunes the model in a separate "
            "process and re-ranks the pool, with "
            "the chosen <b>Adapt method</b>: ASSFT (selective pseudo-labels), SFR or SFR+ (SAM fine-tuned on the "
            "labeled volumes gives the pseudo-labels, then Mean-Teacher re-training)."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI and PyTorch. The embedded default model was trained on, and the sample data is "
            "derived from, the Medical Segmentation Decathlon hippocampus data (Simpson et al. 2019, Antonelli et al. "
            "2022), licensed CC-BY-SA 4.0; the sample data is distributed under the same licence."
        )


#
# Parameter node
#


@parameterNodeWrapper
class ASSFTModuleParameterNode:
    """The panel's state (saved with the scene).

    modelSource - the embedded default model or a model card file (ASSFTModuleLib.parameters.ModelSource).
    modelCardPath - the card file (card.json) when modelSource is CardFile; an adapted model's card after Adapt.
    workDirectory - folder for job folders (jobs/) and the model store (models/).
    budget - volumes to propose; with queryRounds R > 1 the total over R rounds.
    queryRounds - rounds of the multi-round test-time query (job.json's query.rounds, for Rank and for the re-rank
        after Adapt Model): 1 proposes the whole budget at once; R > 1 spreads it over R rounds, each ranked with the
        model adapted on the rounds before (ASSFTModuleLib.parameters.queryRoundsValue).
    adaptMethod - how Adapt Model adapts: ASSFT, SFR or SFR+ (ASSFTModuleLib.parameters.AdaptMethodChoice).
    annotationUnit - what Rank proposes and Annotate steps through: volumes, slices or regions (job.json's
        query.units; ASSFTModuleLib.parameters.AnnotationUnitChoice, ASSFTModuleLib.unitProposals).
    overlayOpacity, overlayThreshold - entropy overlay display in the slice views.
    prefillFromPrediction - Annotate starts from the model's prediction.
    rankingTable - the ranking table node.
    currentVolume, currentRegions - the volume shown and its high-entropy regions.
    lastJobDirectory - the last job folder (results are loaded from it).
    """

    modelSource: ModelSource = ModelSource.Default
    modelCardPath: pathlib.Path
    workDirectory: pathlib.Path
    budget: Annotated[int, WithinRange(1, 1000)] = 3
    queryRounds: Annotated[int, WithinRange(1, parameters.MAX_QUERY_ROUNDS)] = parameters.DEFAULT_QUERY_ROUNDS
    adaptMethod: AdaptMethodChoice = AdaptMethodChoice.ASSFT
    annotationUnit: AnnotationUnitChoice = AnnotationUnitChoice.VOLUME
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    overlayThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.3
    prefillFromPrediction: bool = True
    rankingTable: Optional[vtkMRMLTableNode] = None
    currentVolume: Optional[vtkMRMLScalarVolumeNode] = None
    # a markups fiducial node; typed as vtkMRMLNode because Markups classes may not be loaded at import time
    currentRegions: Optional[vtkMRMLNode] = None
    lastJobDirectory: str = ""


#
# ASSFTModuleWidget
#


class ASSFTModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: wires widgets to the parameter node, to the job controller and to the scene logic.

    Args:
        parent: the module panel.
        controller: the :class:`ASSFTModuleLib.jobController.JobController` (default: the logic makes one with
            Qt process runners); it owns the jobs, the device probe and what happens when a job ends.
    """

    def __init__(self, parent=None, controller=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[ASSFTModuleLogic] = None
        self.controller = controller
        self.sceneLogic: Optional[ASSFTSceneLogic] = None
        self._parameterNode: Optional[ASSFTModuleParameterNode] = None
        self._binding: Optional[GuiBinding] = None
        self._describedModel = None
        self._labelsReadBackFor: set = set()  # volume node IDs whose saved labels were looked for in this scene

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ASSFTModule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._binding = GuiBinding(self.ui)

        self.logic = ASSFTModuleLogic()
        self.sceneLogic = self.logic.sceneLogic
        if self.controller is None:
            self.controller = self.logic.createJobController()
        self.controller.statusChanged.connect(self.setStatus)
        self.controller.logLine.connect(self.ui.logTextEdit.appendPlainText)
        self.controller.progressStateChanged.connect(self.setProgressState)
        self.controller.runningChanged.connect(self.onRunningChanged)
        self.controller.deviceChanged.connect(self.setDevice)
        self.controller.failed.connect(self.showFailure)
        self.controller.finished.connect(self.onJobFinished)
        self.controller.cardChecked.connect(self.onCardChecked)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.rankButton.connect("clicked(bool)", self.onRankButton)
        self.ui.adaptButton.connect("clicked(bool)", self.onAdaptButton)
        self.ui.cancelButton.connect("clicked(bool)", self.controller.cancel)
        self.ui.checkCardButton.connect("clicked(bool)", self.onCheckCardButton)
        self.ui.annotateButton.connect("clicked(bool)", self.onAnnotateButton)
        self.ui.nextProposalButton.connect("clicked(bool)", self.onNextProposalButton)
        self.ui.markDoneButton.connect("clicked(bool)", self.onMarkDoneButton)
        self.ui.showPlotButton.connect("clicked(bool)", self.onShowPlotButton)
        self.ui.rankingTableView.connect("clicked(QModelIndex)", self.onRankingRowClicked)
        self.ui.regionListWidget.connect("itemClicked(QListWidgetItem*)", self.onRegionClicked)
        self.ui.expertLabelCheckBox.connect("toggled(bool)", self.onExpertLabelToggled)

        self.initializeParameterNode()
        self.ui.deviceLabel.text = _("checking...")
        self.controller.probeDevice()
        self.updateButtonStates()

    def cleanup(self) -> None:
        self.controller.cancel()
        self._binding.unbind()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.restoreLastRanking()
        self.restoreSavedLabels()
        self.refreshLabeledStates()

    def restoreLastRanking(self) -> None:
        """After a scene close or a restart of Slicer: the work folder's last ranking comes back on the volumes loaded
        again from the same, unchanged files (ASSFTSceneLogic.restoreLatestRanking), never on other volumes."""
        node = self._parameterNode
        if node is None or node.rankingTable is not None or self.controller.isRunning():
            return
        if not self.sceneLogic.poolVolumeNodes():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to show the last ranking again."), waitCursor=True):
            # the table now, each volume's prediction on a later GUI turn (CT pools: 0.2-0.4 s each)
            restored = self.sceneLogic.restoreLatestRanking(
                node.workDirectory, schedule=lambda show: qt.QTimer.singleShot(0, show)
            )
            if restored is None:
                return
            jobDir, loaded = restored
            node.rankingTable = loaded.tableNode
            node.lastJobDirectory = str(jobDir)
            self.showRankingTable(loaded.tableNode)
            table = loaded.tableNode
            cases = [ranking.rankedCaseFromTable(table, row)[0] for row in range(table.GetNumberOfRows())]
            overlay.READ_AHEAD.start([case.entropyMap for case in cases if not case.labeled])  # before the clicks
            self.setStatus(_("Last ranking shown again from job {job}.").format(job=jobDir.name))

    def restoreSavedLabels(self) -> None:
        """After a restart without a saved scene: the labels painted before come back from the job folders on the
        volumes they were painted on, never over labels in the scene (ASSFTSceneLogic.restoreSavedLabels)."""
        node = self._parameterNode
        if node is None or self.controller.isRunning():
            return
        fresh = [v for v in self.sceneLogic.poolVolumeNodes() if v.GetID() not in self._labelsReadBackFor]
        if not fresh:  # each volume once per scene: entering the panel again reads no folder
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to read back the saved labels."), waitCursor=True):
            card = self.sceneLogic.modelCard(self.controller.modelReference())
            self._labelsReadBackFor.update(v.GetID() for v in fresh)
            line = self.sceneLogic.restoreSavedLabels(node.workDirectory, card, fresh).statusLine()
            if line:
                self.setStatus(line)

    def exit(self) -> None:
        """The panel stays connected to its parameter node while hidden (see ASSFTModuleLib.guiBinding)."""

    def refreshLabeledStates(self) -> None:
        """Volumes annotated in the Segment Editor since ranking show as labeled when the user comes back."""
        if self._parameterNode is None or self._parameterNode.rankingTable is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to update the annotation states."), waitCursor=True):
            card = self.sceneLogic.modelCard(self.controller.modelReference())
            self.sceneLogic.refreshLabeledStates(self._parameterNode.rankingTable, card)
            self.updateGuidance()
            volume = self._parameterNode.currentVolume
            issues = self.sceneLogic.labelIssues(volume, card) if volume is not None else ()
            if issues:  # flagged as the labels come back from the Segment Editor, not 13 s into Adapt Model
                self.setStatus(guidance.labelCheckLine(volume.GetName(), issues))

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._labelsReadBackFor.clear()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if str(parameterNode.workDirectory) in ("", "."):
            parameterNode.workDirectory = self.logic.defaultWorkDirectory()
        cardPath = parameters.initialCardPath(parameterNode.modelCardPath)
        if cardPath != parameterNode.modelCardPath:
            parameterNode.modelCardPath = cardPath
        self.setParameterNode(parameterNode)

    def setParameterNode(self, inputParameterNode: Optional[ASSFTModuleParameterNode]) -> None:
        if not self._binding.bind(inputParameterNode):
            return  # the same MRML node (each getParameterNode() makes a new wrapper): already connected
        self.controller.setParameterNode(inputParameterNode)
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.showRankingTable(self._parameterNode.rankingTable)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtonStates()
        if self._parameterNode is None:
            return
        self.ui.modelCardPathLineEdit.enabled = self._parameterNode.modelSource == ModelSource.CardFile
        modelKey = (self._parameterNode.modelSource, parameters.cardPathText(self._parameterNode.modelCardPath))
        if modelKey != self._describedModel:
            self._describedModel = modelKey
            self.ui.activeModelLabel.text = self.controller.modelDescription()
        self.updateOverlayDisplay()

    def updateGuidance(self) -> None:
        """The one next step under the Rank button and the legend (ASSFTModuleLib.guidance)."""
        running = self.controller is not None and self.controller.isRunning()
        table = self._parameterNode.rankingTable if self._parameterNode is not None else None
        writing = running and self.controller.isWritingJob()
        self.ui.nextStepLabel.text = guidance.nextStep(table, running=running, writing=writing)
        try:
            classNames = self.sceneLogic.modelCard(self.controller.modelReference()).class_names
        except Exception:  # no parameter node or an unreadable card: the legend without classes
            classNames = ()
        rows = []
        for entry in guidance.legend(classNames):
            swatch = ""
            if entry.color is not None:
                hexColor = "#" + "".join(f"{round(255 * c):02x}" for c in entry.color)
                swatch = f'<span style="color:{hexColor}">&#9632;</span> '
            rows.append(f"{swatch}<b>{entry.label}</b>: {entry.text}")
        self.ui.legendLabel.text = "<br>".join(rows)

    def updateButtonStates(self) -> None:
        running = self.controller is not None and self.controller.isRunning()
        hasVolume = self._parameterNode is not None and self._parameterNode.currentVolume is not None
        hasTable = self._parameterNode is not None and self._parameterNode.rankingTable is not None
        self.ui.rankButton.enabled = not running
        self.ui.adaptButton.enabled = not running
        self.ui.cancelButton.enabled = running
        self.ui.checkCardButton.enabled = self.controller is not None and not self.controller.isCheckingCard()
        self.ui.annotateButton.enabled = hasVolume and not running
        hasProposals = hasVolume and bool(self.sceneLogic.proposals(self._parameterNode.currentVolume))
        self.ui.nextProposalButton.enabled = hasProposals
        self.ui.markDoneButton.enabled = hasProposals
        self.ui.showPlotButton.enabled = hasTable
        self.updateGuidance()

    def showRankingTable(self, tableNode) -> None:
        self.ui.rankingTableView.setMRMLTableNode(tableNode)
        if tableNode is None:
            return
        for name in HIDDEN_COLUMNS:
            index = tableNode.GetColumnIndex(name)
            if index >= 0:
                self.ui.rankingTableView.setColumnHidden(index, True)

    # ------------------------------------------------------------------ controller signals
    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def setProgressState(self, state) -> None:
        """One bar per job (``ASSFTActive.progress.ProgressState``): it only moves forward, shows the phase and the
        time left, and ends in words and colour (green done, red failed, grey cancelled)."""
        self.ui.progressBar.value = int(round(1000 * state.fraction))
        self.ui.progressBar.setFormat(state.describe())  # no %p, %v or %m in it: shown as written
        self.ui.progressBar.toolTip = state.describe()
        self.ui.progressBar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {state.colour}; }}")

    def setDevice(self, text: str) -> None:
        self.ui.deviceLabel.text = text

    def showFailure(self, message: str, details: str) -> None:
        """The worker's error in the status line and a dialog, and its last lines in the panel's log. A refusal of
        the labels offers "Train anyway" instead (see :meth:`onJobFinished`)."""
        if details:
            self.ui.logTextEdit.appendPlainText(_("--- the worker's last lines ---"))
            self.ui.logTextEdit.appendPlainText(details)
        outcome = self.controller.lastOutcome
        if outcome is not None and outcome.labelsRefused:
            return
        slicer.util.errorDisplay(_("The job failed: {error}").format(error=message), detailedText=details or None)

    def onRunningChanged(self, running: bool) -> None:
        if running:
            self.ui.logTextEdit.clear()
        self.updateButtonStates()

    def onJobFinished(self, outcome) -> None:
        self.updateButtonStates()
        if self._parameterNode is not None:
            self.showRankingTable(self._parameterNode.rankingTable)
        if outcome.labelsRefused and slicer.util.confirmYesNoDisplay(
            _(
                "Adapt Model refused the labels:\n\n{reason}\n\nTrain anyway? The model may learn to miss a "
                "class or to predict nothing; the previous model stays available."
            ).format(reason=outcome.message),
            windowTitle=_("Train anyway?"),
        ):
            self.startJob("adapt", trainAnyway=True)

    # ------------------------------------------------------------------ buttons
    def onRankButton(self) -> None:
        self.startJob("rank")

    def onAdaptButton(self) -> None:
        """Adapt Model with the parameter node's adapt method (the controller picks the job kind)."""
        self.startJob("adapt")

    def onCheckCardButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to check the model card."), waitCursor=True):
            self.controller.checkCard()
        self.updateButtonStates()

    def onCardChecked(self, check) -> None:
        """The verdict is in the status line and the module names in the log (both from the controller)."""
        self.updateButtonStates()

    def startJob(self, kind: str, trainAnyway: bool = False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the job."), waitCursor=True):
            self.controller.startJob(kind, trainAnyway=trainAnyway)
        self.updateButtonStates()

    # ------------------------------------------------------------------ looking at a case
    def onRankingRowClicked(self, modelIndex) -> None:
        self.showRankingRow(modelIndex.row())

    def showRankingRow(self, row: int) -> None:
        """Show a ranked volume (the user clicked its row): the only place that changes the slice views."""
        with slicer.util.tryWithErrorDisplay(_("Failed to show the volume."), waitCursor=True):
            view = self.sceneLogic.showCase(
                self._parameterNode.rankingTable,
                row,
                self._parameterNode.overlayThreshold,
                self._parameterNode.overlayOpacity,
            )
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.currentVolume = view.volumeNode
                self._parameterNode.currentRegions = view.regionsNode
            self.ui.regionListWidget.clear()
            for index, region in enumerate(view.regions):
                self.ui.regionListWidget.addItem(region.describe(index))
            slicer.util.setSliceViewerLayers(background=view.volumeNode, fit=True)
            self.updateExpertLabelTick()

    def updateExpertLabelTick(self) -> None:
        """The tick is offered when the shown volume has a segmentation made outside ASSFT with class-named segments;
        it is ticked when the user marked it (never by default)."""
        volume = self._parameterNode.currentVolume if self._parameterNode is not None else None
        candidates = []
        if volume is not None:
            card = self.sceneLogic.modelCard(self.controller.modelReference())
            candidates = segmentation.expertLabelCandidates(slicer.mrmlScene, volume, card)
        wasBlocked = self.ui.expertLabelCheckBox.blockSignals(True)
        self.ui.expertLabelCheckBox.enabled = bool(candidates)
        self.ui.expertLabelCheckBox.checked = any(segmentation.isExpertLabel(node) for node in candidates)
        if candidates:
            self.ui.expertLabelCheckBox.text = _("Use '{name}' as this volume's expert labels").format(
                name=candidates[0].GetName()
            )
        self.ui.expertLabelCheckBox.blockSignals(wasBlocked)

    def onExpertLabelToggled(self, checked: bool) -> None:
        volume = self._parameterNode.currentVolume if self._parameterNode is not None else None
        if volume is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to mark the labels."), waitCursor=True):
            card = self.sceneLogic.modelCard(self.controller.modelReference())
            for node in segmentation.expertLabelCandidates(slicer.mrmlScene, volume, card):
                segmentation.setExpertLabel(node, checked)
        self.refreshLabeledStates()

    def onRegionClicked(self, item) -> None:
        regionsNode = self._parameterNode.currentRegions if self._parameterNode else None
        index = self.ui.regionListWidget.row(item)
        if regionsNode is None or index < 0:
            return
        self.sceneLogic.jumpToRegion(regionsNode, index)

    def updateOverlayDisplay(self) -> None:
        """Apply the parameter node's overlay opacity and threshold (the sliders are bound to it)."""
        if self._parameterNode is None or self._parameterNode.currentVolume is None:
            return
        self.sceneLogic.updateOverlay(
            self._parameterNode.currentVolume, self._parameterNode.overlayThreshold, self._parameterNode.overlayOpacity
        )

    def onShowPlotButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the plot."), waitCursor=True):
            self.sceneLogic.showScoresChart(self._parameterNode.rankingTable)

    # ------------------------------------------------------------------ annotation
    def onAnnotateButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to open the segmentation."), waitCursor=True):
            volumeNode = self._parameterNode.currentVolume
            card = self.sceneLogic.modelCard(self.controller.modelReference())
            prediction = None
            if self._parameterNode.prefillFromPrediction:
                case = self.sceneLogic.caseForVolume(self._parameterNode.rankingTable, volumeNode)
                prediction = case.prediction if case is not None else None
            segmentationNode = self.sceneLogic.annotationSegmentation(volumeNode, card, prediction)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.util.getModuleWidget("SegmentEditor").editor
            editor.setSegmentationNode(segmentationNode)
            editor.setSourceVolumeNode(volumeNode)

    def onNextProposalButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the next proposed slice or region."), waitCursor=True):
            volumeNode = self._parameterNode.currentVolume
            if self.sceneLogic.jumpToNextProposal(volumeNode) is None:
                slicer.util.infoDisplay(_("Every proposed slice or region of this volume is marked done."))
            self.ui.statusLabel.text = unitProposals.progressLine(volumeNode)

    def onMarkDoneButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to mark the slice or region done."), waitCursor=True):
            volumeNode = self._parameterNode.currentVolume
            self.sceneLogic.markProposalDone(volumeNode)
            self.ui.statusLabel.text = unitProposals.progressLine(volumeNode)


#
# ASSFTModuleLogic
#


class ASSFTModuleLogic(ScriptedLoadableModuleLogic):
    """Slicer-side wrapper: the parameter node, paths, and the objects that do the work on ``slicer.mrmlScene``:
    the MRML logic (``self.sceneLogic``, an :class:`ASSFTSceneLogic`) and the job controller it builds."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.sceneLogic = ASSFTSceneLogic(slicer.mrmlScene, slicer.app.applicationLogic())

    def getParameterNode(self) -> ASSFTModuleParameterNode:
        return ASSFTModuleParameterNode(super().getParameterNode())

    @staticmethod
    def defaultWorkDirectory() -> pathlib.Path:
        documents = qt.QStandardPaths.writableLocation(qt.QStandardPaths.DocumentsLocation)
        return pathlib.Path(documents or slicer.app.temporaryPath) / "ASSFT"

    @staticmethod
    def workerEnvironment() -> dict:
        """Environment of child processes: Slicer's start-up environment (as slicer.util uses for PythonSlicer)
        plus the engine on PYTHONPATH."""
        return workerEnvironment(slicer.util.startupEnvironment())

    @staticmethod
    def ensureWorkerRequirements() -> bool:
        """Install missing worker packages after asking the user (first use only)."""
        from ASSFTModuleLib.installer import ensureWorkerRequirements

        return ensureWorkerRequirements(enginePath.requirementsPath())

    def createJobController(self):
        """The job controller of desktop Slicer (Qt process runners)."""
        from ASSFTModuleLib.jobRunner import createJobController

        return createJobController(self.sceneLogic, self.workerEnvironment, self.ensureWorkerRequirements)


#
# ASSFTModuleTest
#


class ASSFTModuleTest(ScriptedLoadableModuleTest):
    """Runs the MRML logic end to end in real Slicer; the worker job too when its packages are installed."""

    #: The worker job of the self-test is cancelled after this many seconds (the GUI stays responsive meanwhile).
    WORKER_SELFTEST_TIMEOUT_S = 300

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_GeometryAndSegmentation()
        self.setUp()
        self.test_RankingOverlayRegionsPlot()
        self.setUp()
        self.test_WorkerJob()

    def _sceneLogic(self) -> ASSFTSceneLogic:
        return ASSFTSceneLogic(slicer.mrmlScene, slicer.app.applicationLogic())

    @staticmethod
    def _syntheticCase(name: str):
        import numpy as np
        from ASSFTModuleLib import geometry

        from ASSFTActive.io import Volume

        shape = (24, 20, 16)
        i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
        angle = np.deg2rad(25)
        affine = np.eye(4)
        affine[:3, :3] = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        ) @ np.diag([0.8, 1.1, 2.0])
        affine[:3, 3] = (5.0, -10.0, 20.0)
        image = (i * 100 + j * 10 + k).astype(np.int16)
        labels = np.zeros(shape, np.uint8)
        labels[3:9, 4:10, 2:6] = 1
        labels[12:20, 8:15, 6:12] = 2
        node = geometry.addVolumeNode(slicer.mrmlScene, Volume(image, affine), name)
        return node, image, labels, affine

    @staticmethod
    def _writeCard(folder: pathlib.Path) -> pathlib.Path:
        """A copy of the embedded card under another name (the module reads its name and class names)."""
        import json

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "card.json"
        card = json.loads(EMBEDDED_DEFAULT_CARD.read_text(encoding="utf-8"))
        card.update(name="self-test", class_names=["background", "anterior", "posterior"])
        path.write_text(json.dumps(card))
        return path

    def test_GeometryAndSegmentation(self):
        import numpy as np
        from ASSFTModuleLib import geometry, segmentation

        from ASSFTActive.io import Volume

        self.delayDisplay("Geometry and segmentation round trip")
        logic = self._sceneLogic()
        node, image, labels, affine = self._syntheticCase("selftest_geometry")
        back = geometry.volumeFromNode(node)
        np.testing.assert_array_equal(back.array, image)
        np.testing.assert_allclose(back.affine, affine, atol=1e-9)

        with tempfile.TemporaryDirectory() as folder:
            card = logic.modelCard(self._writeCard(pathlib.Path(folder)))
            segmentationNode = logic.annotationSegmentation(node, card)
            self.assertEqual(segmentation.segmentNames(segmentationNode), ["anterior", "posterior"])
            segmentation.fillSegmentationFromClassLabelmap(segmentationNode, Volume(labels, affine), card)
            conversion = logic.classLabelmap(node, card)
            np.testing.assert_array_equal(conversion.labels, labels)
            segmentationNode.GetSegmentation().AddEmptySegment("unknown", "tumour", (1, 1, 0))
            self.assertEqual(logic.classLabelmap(node, card).unknownSegments, ("tumour",))
        self.delayDisplay("Geometry and segmentation passed")

    def test_RankingOverlayRegionsPlot(self):
        import json

        import numpy as np
        from ASSFTModuleLib import geometry

        from ASSFTActive.io import Volume, write_volume
        from ASSFTActive.jobs import (
            RANKING_FILE,
            JobResult,
            RankingEntry,
            RankingFile,
            write_ranking_file,
            write_result,
        )

        self.delayDisplay("Ranking table, overlay, regions and plot from result files")
        logic = self._sceneLogic()
        with tempfile.TemporaryDirectory() as folder:
            folder = pathlib.Path(folder)
            cardPath = self._writeCard(folder / "model")
            nodes = [self._syntheticCase(f"selftest_{n}")[0] for n in range(2)]
            spec = logic.prepareJob("rank", folder / "work", str(cardPath), budget=1)
            cases = []
            for rank, (caseId, node) in enumerate(zip(spec.job.images, nodes), start=1):
                affine = geometry.ijkToRasArray(node)
                entropy = np.zeros((24, 20, 16), np.float32)
                entropy[10:14, 6:10, 4:8] = 0.8
                entropyPath = write_volume(Volume(entropy, affine), spec.jobDir / f"{caseId}_entropy.nrrd")
                regionsPath = spec.jobDir / f"{caseId}_regions.json"
                center = (affine @ [11.5, 7.5, 5.5, 1.0])[:3].tolist()
                regionsPath.write_text(
                    json.dumps(
                        {
                            "case_id": caseId,
                            "threshold": 0.5,
                            "regions": [
                                {
                                    "center_ras": center,
                                    "bbox_ijk_min": [10, 6, 4],
                                    "bbox_ijk_max": [13, 9, 7],
                                    "volume_mm3": 112.6,
                                    "mean_entropy": 0.8,
                                    "voxel_count": 64,
                                }
                            ],
                        }
                    )
                )
                cases.append(
                    RankingEntry(
                        case_id=caseId,
                        image=spec.job.images[caseId],
                        dkd=1.0 / rank,
                        asd=0.5 * rank,
                        score=1.0 / rank,
                        rank=rank,
                        selected=rank == 1,
                        labeled=False,
                        entropy_map=str(entropyPath),
                        regions=str(regionsPath),
                    )
                )
            # the engine's own records and writers: the files are exactly what the worker writes
            rankingPath = write_ranking_file(
                spec.jobDir / RANKING_FILE,
                RankingFile(strategy="assft", budget=1, model=str(cardPath), cases=tuple(cases)),
            )
            write_result(spec.jobDir, JobResult(status="done", kind="rank", ranking=str(rankingPath)))
            loaded = logic.loadJobResult(spec.jobDir, str(cardPath))
            self.assertEqual(loaded.tableNode.GetNumberOfRows(), 2)
            self.assertEqual(loaded.chartNode.GetNumberOfPlotSeriesNodes(), 2)
            view = logic.showCase(loaded.tableNode, 0, threshold=0.3, opacity=0.5)
            self.assertTrue(geometry.sameGeometry(view.overlayNode, view.volumeNode))
            np.testing.assert_allclose(logic.regionCenter(view.regionsNode, 0), view.regions[0].centerRas)
            logic.jumpToRegion(view.regionsNode, 0)
            logic.showScoresChart(loaded.tableNode)
        self.delayDisplay("Ranking, overlay, regions and plot passed")

    def test_WorkerJob(self):
        """Rank a synthetic pool with the real worker and the embedded model (needs torch and monai).

        The worker runs in a child process while the GUI keeps processing events; it is cancelled after
        ``WORKER_SELFTEST_TIMEOUT_S``.
        """
        from ASSFTModuleLib import installer, jobFolder, jobProcess
        from ASSFTModuleLib.jobProcess import SubprocessJobRunner, formatEvent

        missing = installer.missingWorkerRequirements(enginePath.requirementsPath())
        if missing or not EMBEDDED_DEFAULT_CARD.is_file():
            logging.warning("ASSFT self-test: worker job not run; missing packages %s or default model card", missing)
            self.delayDisplay("Worker job skipped: install the packages with Rank Volumes first")
            return
        self.delayDisplay("Worker job with the embedded model")
        logic = self._sceneLogic()
        for n in range(3):
            self._syntheticCase(f"selftest_pool_{n}")
        with tempfile.TemporaryDirectory() as folder:
            spec = logic.prepareJob("rank", pathlib.Path(folder), DEFAULT_MODEL, budget=1)
            ended = []
            runner = SubprocessJobRunner(
                lambda event: logging.info(formatEvent(event)), lambda *args: ended.append(args)
            )
            runner.start(jobProcess.workerCommand(spec.jobDir), ASSFTModuleLogic.workerEnvironment(), str(spec.jobDir))
            deadline = qt.QElapsedTimer()
            deadline.start()
            while not runner.wait(0.05):
                slicer.app.processEvents()
                if deadline.elapsed() > 1000 * self.WORKER_SELFTEST_TIMEOUT_S:
                    runner.cancel()
                    runner.wait(30)
                    self.fail(f"the worker job took longer than {self.WORKER_SELFTEST_TIMEOUT_S} s")
            self.assertEqual(jobFolder.readJobResult(spec.jobDir).status, "done")
            loaded = logic.loadJobResult(spec.jobDir, DEFAULT_MODEL)
            self.assertEqual(loaded.tableNode.GetNumberOfRows(), 3)
        self.delayDisplay("Worker job passed")
