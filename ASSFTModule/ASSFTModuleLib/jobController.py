"""The job controller: starts, follows and ends the module's background work, without Qt.

The widget receives one :class:`JobController` (as SlicerNNUnet's widget receives its logic) and subscribes to
its signals; it never builds a process, reads a job folder or decides which model is active. The controller
owns:

* the runner of the worker process (``python -m ASSFTActive.worker JOB_DIR``; a ``qt.QProcess`` runner in
  desktop Slicer, :class:`~.jobProcess.SubprocessJobRunner` headless), the device probe and the card check
  (``python -m ASSFTActive check-card CARD --modules``, :class:`CardCheck`), each with the same runner kind;
* the running job: the model it started with, its folder, Cancel;
* what happens at the end: the outcome (``done`` / ``cancelled`` / ``error``, read from the job folder, not from
  how the launcher died), loading the results into the scene, switching the parameter node to an adapted model
  that the engine activated, and pruning old job folders. The slice views are left as the user has them.

Signals are plain Python callbacks (:class:`Signal`).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Tuple

from ASSFTActive.errors import JobError
from ASSFTActive.jobs import RESULT_CANCELLED, RESULT_DONE, RESULT_ERROR, read_job_result
from ASSFTActive.progress import CANCELLED as PROGRESS_CANCELLED
from ASSFTActive.progress import DONE as PROGRESS_DONE
from ASSFTActive.progress import FAILED as PROGRESS_FAILED
from ASSFTActive.progress import JobProgress, ProgressState, job_units

from . import guidance, jobFolder, overlay, ranking
from .errors import ASSFTModuleError, JobFailedError
from .jobProcess import WorkerOutput, deviceProbeCommand, formatEvent, parseDeviceProbe, pythonExecutable, workerCommand
from .parameters import DEFAULT_QUERY_ROUNDS, AdaptMethodChoice, ModelSource, adaptJobFor, jobQuery, modelReferenceFor
from .records import OutputLine, PreparedJob

#: Job folders kept under ``<workDir>/jobs`` (older ones are removed when a new job starts; the folder of the
#: ranking shown in the panel and that of the newest ranking are always kept).
KEEP_JOB_FOLDERS = 3
#: The job setting behind "Train anyway" (``FinetuneConfig.allow_implausible_labels``, ``SfrConfig``'s too).
ALLOW_IMPLAUSIBLE_LABELS = "allow_implausible_labels"
#: Worker output lines kept for the failure report (:func:`~.jobFolder.failureReport`).
OUTPUT_LINES_KEPT = 200

DONE, CANCELLED, ERROR = RESULT_DONE, RESULT_CANCELLED, RESULT_ERROR


class Signal:
    """A list of callbacks: ``connect(callback)``, ``emit(*args)``."""

    def __init__(self):
        self._callbacks: List[Callable] = []

    def connect(self, callback: Callable) -> None:
        if callback not in self._callbacks:
            self._callbacks.append(callback)

    def disconnect(self, callback: Callable) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def emit(self, *args) -> None:
        for callback in list(self._callbacks):
            callback(*args)


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended.

    Attributes:
        status: ``done``, ``cancelled`` or ``error``.
        message: plain text for the status line.
        jobDir: the job folder.
        kind: the job kind, ``rank``, ``adapt`` or ``sfr``.
        details: the worker's last lines (its log's tail, else its printed output) for an error.
        loaded: what was loaded into the scene (``logic.LoadedResult``), None when nothing was.
        progress: the job's final :class:`~ASSFTActive.progress.ProgressState` (done / failed / cancelled in words).
        labelsRefused: the engine's label checks refused the labels: the UI offers "Train anyway"
            (``startJob("adapt", trainAnyway=True)``), with the engine's warning as the message.
    """

    status: str
    message: str
    jobDir: Optional[Path]
    kind: str = ""
    details: str = ""
    loaded: object = None
    progress: Optional[ProgressState] = None
    labelsRefused: bool = False


#: The engine's refusal of implausible labels ends with command-line advice; the GUIs offer a button instead.
_CLI_LABEL_ADVICE = re.compile(r"pass --allow-implausible-labels \(FinetuneConfig\.allow_implausible_labels\)")


def labelRefusal(message: str) -> Tuple[bool, str]:
    """``(refused, message)``: whether ``message`` is the engine's refusal of implausible labels, and the message
    with its command-line advice replaced by the panel's choice (``Train anyway``)."""
    if "--allow-implausible-labels" not in message:
        return False, message
    text = _CLI_LABEL_ADVICE.sub("choose Train anyway", message)
    return True, re.sub(r"\.{2,}", ".", text).strip()


def jobOutcome(jobDir, exitCode: int, cancelled: bool, errorText: str) -> tuple:
    """``(status, message)`` of an ended worker from its job folder: the worker's own ``result.json`` decides
    (a Cancel that arrived after the new model was committed still ends ``done``); without a result, a Cancel is
    ``cancelled`` and anything else an ``error``."""
    try:
        record = read_job_result(jobDir) if jobDir is not None else None
    except JobError:  # a malformed result: an error, reported with the file's problem when the result is loaded
        record = None
    status = record.status if record is not None else ""
    if status == DONE:
        return DONE, ""
    if status == CANCELLED or cancelled:
        return CANCELLED, "Cancelled. The active model is unchanged."
    return ERROR, errorText


#: The engine's verdict on a usable card (last line of ``assft check-card``).
CARD_USABLE = "the card is usable"
#: A module line of the ``--modules`` listing (stripped of its indent): ``* name: Type`` for an encoder stage.
_MODULE_LINE = re.compile(r"^(\*\s+)?(\S+): (\S+)$")


@dataclass(frozen=True)
class CardCheck:
    """What ``assft check-card CARD --modules`` said about a model card (run in a child process: the GUI never
    imports torch).

    Attributes:
        card: the card reference checked (``"default"`` or a card path).
        usable: the check passed (exit code 0 and the engine's verdict line).
        message: the verdict: ``the card is usable``, or the engine's ``error:`` line without its prefix.
        modules: ``(name, type)`` of every module of the network, in the network's order (empty when the card
            failed before the network was built).
        encoderStages: the modules the card names as ``encoder_stages``.
        output: everything the check printed.
        headInitialised: the card holds encoder weights only; its segmentation head will be initialised (the
            engine's ``head:`` line), so the first ranking uses diversity alone.
    """

    card: str
    usable: bool
    message: str
    modules: Tuple[Tuple[str, str], ...] = ()
    encoderStages: Tuple[str, ...] = ()
    output: str = ""
    headInitialised: bool = False

    def summary(self) -> str:
        """One line for the status label."""
        if not self.usable:
            return f"Card check failed: {self.message}"
        return (
            f"Card check passed: {self.card} is usable ({len(self.modules)} modules; encoder stages: "
            f"{', '.join(self.encoderStages) or 'none'})."
            + (
                " Encoder weights only: the segmentation head will be initialised, the first ranking uses "
                "diversity alone (no ASD), and the first Adapt trains head and encoder."
                if self.headInitialised
                else ""
            )
        )


def cardCheckCommand(card: str, python: Optional[str] = None) -> List[str]:
    """``[python, "-m", "ASSFTActive", "check-card", CARD, "--modules"]``."""
    return [python or pythonExecutable(), "-m", "ASSFTActive", "check-card", str(card), "--modules"]


def parseCardCheck(card: str, output: str, exitCode: int, errorText: str = "") -> CardCheck:
    """The :class:`CardCheck` of a finished ``check-card`` process from its merged stdout/stderr and exit code."""
    lines = [line.strip() for line in output.splitlines()]
    modules, stages = [], []
    listing = False
    for line in lines:
        if line.startswith("modules (name: type)"):
            listing = True
            continue
        match = _MODULE_LINE.match(line) if listing else None
        if match is None:
            listing = False
            continue
        modules.append((match.group(2), match.group(3)))
        if match.group(1):
            stages.append(match.group(2))
    errors = [line[len("error:") :].strip() for line in lines if line.startswith("error:")]
    usable = exitCode == 0 and CARD_USABLE in lines
    if usable:
        message = CARD_USABLE
    elif errors:
        message = errors[-1]
    elif errorText:
        message = errorText
    else:
        tail = [line for line in lines if line.strip()][-1:]
        message = f"the check ended with exit code {exitCode}" + (f": {tail[0]}" if tail else "")
    headInitialised = any(line.startswith("head:") and "initialised" in line for line in lines)
    return CardCheck(
        card=str(card),
        usable=usable,
        message=message,
        modules=tuple(modules),
        encoderStages=tuple(stages),
        output=output,
        headInitialised=headInitialised,
    )


class JobController:
    """Runs the module's jobs for one scene.

    Args:
        sceneLogic: the MRML logic (:class:`~.logic.ASSFTSceneLogic`).
        runnerFactory: ``runnerFactory(onEvent, onFinished)`` -> a runner with ``start(command, environment,
            workingDirectory)``, ``cancel()`` and ``isRunning()``.
        environment: returns the environment of child processes.
        ensureRequirements: installs what the worker needs (may ask the user); False when declined.
        python: interpreter of the child processes (default ``PythonSlicer`` or this interpreter).
        keepJobFolders: job folders kept (see :data:`KEEP_JOB_FOLDERS`).
        callInMainThread: runs a callable in the thread that owns the runner (Qt: the GUI thread). Given, the job's
            files are written by a background thread, which hands the worker's start back through it (desktop
            Slicer: ``jobRunner.MainThreadCalls.post``; the browser and tests with the subprocess runner can pass
            ``lambda call: call()``). None: the files are written in the calling thread before the worker starts.

    Signals: ``statusChanged(text)``, ``logLine(text)``, ``progressChanged(fraction)`` (the whole job's fraction of
    :class:`~ASSFTActive.progress.JobProgress`: it only moves forward and is 1 only for a job that ended ``done``),
    ``progressStateChanged(ProgressState)`` (the same with the phase, time left and the final state in words),
    ``runningChanged(bool)``, ``deviceChanged(text)``, ``failed(message, details)`` (details: the worker's last
    lines), ``finished(JobOutcome)``, ``cardChecked(CardCheck)``.
    """

    def __init__(
        self,
        sceneLogic,
        runnerFactory: Callable,
        environment: Callable[[], Mapping[str, str]],
        ensureRequirements: Callable[[], bool] = lambda: True,
        python: Optional[str] = None,
        keepJobFolders: int = KEEP_JOB_FOLDERS,
        callInMainThread: Optional[Callable[[Callable[[], None]], None]] = None,
    ):
        self.sceneLogic = sceneLogic
        self.runnerFactory = runnerFactory
        self.environment = environment
        self.ensureRequirements = ensureRequirements
        self.python = python
        self.keepJobFolders = keepJobFolders
        self.parameterNode = None
        self.job: Optional[PreparedJob] = None
        self.jobModel = ""
        self.lastOutcome: Optional[JobOutcome] = None
        self.progress: Optional[JobProgress] = None
        self.callInMainThread = callInMainThread
        self._writer: Optional[threading.Thread] = None
        self._cancelWriting = False
        self._output: deque = deque(maxlen=OUTPUT_LINES_KEPT)
        self._workerError = ""
        self.statusChanged = Signal()
        self.logLine = Signal()
        self.progressChanged = Signal()
        self.progressStateChanged = Signal()
        self.runningChanged = Signal()
        self.deviceChanged = Signal()
        self.failed = Signal()
        self.finished = Signal()
        self.cardChecked = Signal()
        self._runner = runnerFactory(self._onEvent, self._onFinished)
        self._probe = None
        self._probeOutput: List[str] = []
        self._cardCheck = None
        self._cardCheckCard = ""
        self._cardCheckOutput: List[str] = []

    # ------------------------------------------------------------------ state
    def setParameterNode(self, parameterNode) -> None:
        """The panel's parameter node (None while the scene is closed)."""
        self.parameterNode = parameterNode

    def isRunning(self) -> bool:
        """A job is being written or its worker runs."""
        return self._writer is not None or self._runner.isRunning()

    def modelReference(self, parameterNode=None) -> str:
        """``"default"`` or the card path of the parameter node."""
        node = parameterNode if parameterNode is not None else self.parameterNode
        if node is None:
            raise ASSFTModuleError("The module has no parameter node; open the module again.")
        return modelReferenceFor(node.modelSource, node.modelCardPath)

    def modelDescription(self, parameterNode=None) -> str:
        """``name (class, class)`` of the chosen model, or what is wrong with the choice."""
        try:
            card = self.sceneLogic.modelCard(self.modelReference(parameterNode))
        except ASSFTModuleError as error:
            return str(error)
        return f"{card.name} ({', '.join(card.class_names[1:])})"

    # ------------------------------------------------------------------ device
    def probeDevice(self) -> None:
        """Ask a child process where torch computes (the GUI process never imports torch); the answer comes as
        ``deviceChanged``, also when the child cannot start."""
        self._probeOutput = []
        self._probe = self.runnerFactory(self._onProbeOutput, self._onProbeFinished)
        self._probe.start(deviceProbeCommand(self.python), self.environment(), str(Path.cwd()))

    def _onProbeOutput(self, item: WorkerOutput) -> None:
        self._probeOutput.append(item.text if isinstance(item, OutputLine) else item.to_json())

    def _onProbeFinished(self, exitCode: int, cancelled: bool, errorText: str) -> None:
        if errorText and not self._probeOutput:
            self.deviceChanged.emit(f"unknown ({errorText})")
            return
        self.deviceChanged.emit(parseDeviceProbe("\n".join(self._probeOutput)).describe())

    # ------------------------------------------------------------------ card check
    def isCheckingCard(self) -> bool:
        return self._cardCheck is not None and self._cardCheck.isRunning()

    def checkCard(self, parameterNode=None) -> str:
        """Check the chosen model's card in a child process (``assft check-card CARD --modules``: the schema, the
        weights, the module names, one forward pass); the verdict comes as ``statusChanged`` and ``cardChecked``,
        the module names as ``logLine``.

        Returns:
            the card reference being checked.

        Raises:
            ASSFTModuleError: no parameter node, or a check is already running.
        """
        card = self.modelReference(parameterNode)
        if self.isCheckingCard():
            raise ASSFTModuleError("A card check is already running; wait for its verdict.")
        self._cardCheckCard, self._cardCheckOutput = card, []
        self._cardCheck = self.runnerFactory(self._onCardCheckOutput, self._onCardCheckFinished)
        self.statusChanged.emit(f"Checking the model card {card}...")
        self._cardCheck.start(cardCheckCommand(card, self.python), self.environment(), str(Path.cwd()))
        return card

    def _onCardCheckOutput(self, item: WorkerOutput) -> None:
        self._cardCheckOutput.append(item.text if isinstance(item, OutputLine) else item.to_json())

    def _onCardCheckFinished(self, exitCode: int, cancelled: bool, errorText: str) -> None:
        check = parseCardCheck(self._cardCheckCard, "\n".join(self._cardCheckOutput), exitCode, errorText)
        if check.modules:
            self.logLine.emit(f"Modules of {check.card} (name: type; * = an encoder stage of the card):")
            for name, kind in check.modules:
                self.logLine.emit(f"{'*' if name in check.encoderStages else ' '} {name}: {kind}")
        self.statusChanged.emit(check.summary())
        self.cardChecked.emit(check)

    # ------------------------------------------------------------------ jobs
    def startJob(self, kind: str, trainAnyway: bool = False) -> Optional[PreparedJob]:
        """Take a job from the scene, write its folder off the GUI thread, then start the worker.

        Every job's ``query`` holds the parameter node's ``queryRounds`` as ``rounds`` (the multi-round schedule
        over ``budget``): a ``rank`` job ranks with it, an ``adapt`` / ``sfr`` job re-ranks with it.

        The volumes are linked, copied or re-encoded into the job folder by a background thread (minutes for a
        pool of CTs loaded from DICOM); the worker starts when they are written (through ``callInMainThread``).
        Until then :meth:`isRunning` is true and Cancel removes the half-written folder.

        Args:
            kind: ``rank`` (Rank Volumes) or ``adapt`` (Adapt Model: an ``adapt`` job, or an ``sfr`` job with the
                parameter node's ``adaptMethod`` SFR or SFR+; see :func:`~.parameters.adaptJobFor`).
            trainAnyway: the user chose "Train anyway" after the label checks refused the labels: the job's
                ``allow_implausible_labels`` is set (the engine then warns instead of refusing).

        Returns:
            the prepared job (its files may still be being written); None when the user declined installing the
            worker's packages.

        Raises:
            ASSFTModuleError: nothing to run, a job is already running, or query rounds below 1.
        """
        node = self.parameterNode
        if node is None:
            raise ASSFTModuleError("The module has no parameter node; open the module again.")
        if self.isRunning():
            raise ASSFTModuleError("A job is already running; cancel it or wait for it to finish.")
        query = jobQuery(
            getattr(node, "queryRounds", DEFAULT_QUERY_ROUNDS), unit=getattr(node, "annotationUnit", "volume")
        )  # slice / region: query.units
        if not self.ensureRequirements():
            self.statusChanged.emit("Not started: the Python packages the worker needs were not installed.")
            return None
        model = self.modelReference(node)
        sfr, finetune = {}, {}
        if kind == "adapt":
            kind, sfr = adaptJobFor(getattr(node, "adaptMethod", AdaptMethodChoice.ASSFT))
            if trainAnyway:
                if kind == "sfr":
                    sfr = {**sfr, ALLOW_IMPLAUSIBLE_LABELS: True}
                else:
                    finetune = {ALLOW_IMPLAUSIBLE_LABELS: True}
        jobFolder.pruneJobFolders(
            node.workDirectory,
            keep=max(self.keepJobFolders - 1, 0),
            protect=self.sceneLogic.protectedJobFolders(node.workDirectory, node.rankingTable),
        )
        extra = {"finetune": finetune} if finetune else {}
        if self.callInMainThread is None:  # written here, before the worker starts
            plan, spec = (
                None,
                self.sceneLogic.prepareJob(kind, node.workDirectory, model, node.budget, query=query, sfr=sfr, **extra),
            )
        else:
            plan = self.sceneLogic.planJob(kind, node.workDirectory, model, node.budget, query=query, sfr=sfr, **extra)
            spec = plan.prepared
        self.job, self.jobModel = spec, model
        node.lastJobDirectory = str(spec.jobDir)
        self._output.clear()
        self._workerError = ""
        self._cancelWriting = False
        self.progress = JobProgress(kind, volumes=len(spec.job.images), units=job_units(spec.job))
        self.progressChanged.emit(0.0)
        self.progressStateChanged.emit(self.progress.state)
        if plan is None:
            self._jobFilesWritten(spec, "")
        else:
            self.statusChanged.emit(
                f"Writing {len(spec.job.images)} volume(s) into the {kind} job {spec.jobDir.name}..."
            )
            self._writer = threading.Thread(
                target=self._writeJobFiles, args=(plan,), daemon=True, name="ASSFT job writer"
            )
            self._writer.start()
        self.runningChanged.emit(self.isRunning())
        for note in spec.ignoredSegments:
            self.logLine.emit(f"Left out, not classes of the model: {note}")
        for note in spec.notLabelled:
            self.logLine.emit(f"Not labelled: {note}")
        return spec

    def _writeJobFiles(self, plan) -> None:
        """The writer thread: writes the job's files (no MRML), then hands the start to the GUI thread."""
        try:
            written = plan.writeFiles(cancelled=lambda: self._cancelWriting)
            error = ""
        except Exception as exc:  # any failure to write is the job's failure, reported like a worker's
            written, error = None, f"the job folder could not be written: {exc}"
        self.callInMainThread(lambda: self._jobFilesWritten(written, error))

    def _jobFilesWritten(self, written, error: str) -> None:
        self._writer = None
        if written is None or self._cancelWriting:
            self._onFinished(-1, not error, error)
            return
        self.statusChanged.emit(f"Starting {written.job.kind} job in {written.jobDir}")
        self._runner.start(workerCommand(written.jobDir, self.python), self.environment(), str(written.jobDir))

    def isWritingJob(self) -> bool:
        """Whether the job's files are still being written (the worker has not started)."""
        return self._writer is not None

    def waitUntilWritten(self, timeout: Optional[float] = None) -> bool:
        """Block until the background writer has finished (tests, shutdown); False on time-out."""
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)
            return not writer.is_alive()
        return True

    def cancel(self) -> None:
        if not self.isRunning():
            return
        self.statusChanged.emit("Cancelling...")
        if self.isWritingJob():
            self._cancelWriting = True
            return
        self._runner.cancel()

    def _onEvent(self, item: WorkerOutput) -> None:
        text = formatEvent(item)
        self._output.append(text)
        self.logLine.emit(text)
        if isinstance(item, OutputLine):
            return
        if item.event == "error" and item.message:
            self._workerError = item.message
        if self.progress is None:
            return
        before = self.progress.state.fraction
        state = self.progress.update(item)
        if state.fraction != before:
            self.progressChanged.emit(state.fraction)
        self.progressStateChanged.emit(state)
        if item.phase and item.event != "error":
            detail = f" ({item.message})" if item.message and item.event != "progress" else ""
            self.statusChanged.emit(state.describe() + detail)

    def failureReport(self, jobDir=None) -> Tuple[str, str]:
        """``(message, details)`` of the last job's failure: the worker's error and its last lines (log, else what
        it printed; :func:`~.jobFolder.failureReport`). The panel and the browser show both."""
        folder = jobDir if jobDir is not None else (self.job.jobDir if self.job is not None else None)
        return jobFolder.failureReport(folder, list(self._output), self._workerError)

    def _onFinished(self, exitCode: int, cancelled: bool, errorText: str) -> None:
        spec = self.job
        jobDir = spec.jobDir if spec is not None else None
        kind = spec.job.kind if spec is not None else ""
        status, message = jobOutcome(jobDir, exitCode, cancelled, errorText)
        details = ""
        loaded = None
        if status == ERROR and jobDir is not None:
            try:
                jobFolder.readJobResult(jobDir)
                message = message or "the worker ended without a result"
            except JobFailedError:
                reason, details = self.failureReport(jobDir)
                message = errorText or f"Job {Path(jobDir).name} failed: {reason}"
                message = message if message.endswith(".") else message + "."
            except ASSFTModuleError as error:
                message = str(error)
        elif status == DONE:
            try:
                loaded, message = self._loadResult(jobDir)
            except JobFailedError as error:
                status, message, details = ERROR, str(error), error.logTail
            except ASSFTModuleError as error:
                status, message = ERROR, str(error)
        labelsRefused = False
        if status == ERROR:
            labelsRefused, message = labelRefusal(message)
        final = None
        if self.progress is not None:
            ended = {DONE: PROGRESS_DONE, CANCELLED: PROGRESS_CANCELLED}.get(status, PROGRESS_FAILED)
            final = self.progress.finish(ended, message if status == ERROR else "")
            self.progressChanged.emit(final.fraction)
            self.progressStateChanged.emit(final)
        outcome = JobOutcome(
            status=status,
            message=message,
            jobDir=jobDir,
            kind=kind,
            details=details,
            loaded=loaded,
            progress=final,
            labelsRefused=labelsRefused,
        )
        self.lastOutcome = outcome
        self.runningChanged.emit(False)
        self.statusChanged.emit(message)
        if status == ERROR:
            self.failed.emit(message, details)
        self.finished.emit(outcome)

    def _showPredictionsLater(self, jobDir, loaded) -> None:
        """Refresh the (hidden) prediction segmentations of a finished job one volume per call through
        :attr:`callInMainThread`: on a pool of CTs each takes 0.2-0.4 s, all of them at once froze the panel for
        seconds when a job ended (the CT-pool walkthrough, ``Testing/Benchmarks/walkthrough_ct.py``). A volume that
        is no longer the case's node when its turn comes (the scene was closed) is skipped."""
        card = self.sceneLogic.modelCard(loaded.adaptedModel if loaded.adaptedModel is not None else self.jobModel)
        cases = jobFolder.readCaseNodes(jobDir)
        for caseId, path in sorted(loaded.result.predictions.items()):
            if path is not None and caseId in cases:
                self.callInMainThread(lambda caseId=caseId, path=path: self._showPrediction(cases, caseId, path, card))

    def _showPrediction(self, cases, caseId: str, path, card) -> None:
        volumeNode = jobFolder.caseNodesInScene(self.sceneLogic.scene, {caseId: cases[caseId]}).get(caseId)
        if volumeNode is None:
            return
        try:
            self.sceneLogic.showPrediction(volumeNode, path, card)
        except (OSError, ValueError, RuntimeError) as error:  # the results are shown; only this overlay is missing
            self.logLine.emit(f"The prediction of {caseId} could not be shown: {error}")

    def _loadResult(self, jobDir) -> tuple:
        """Load a finished job into the scene and the parameter node; ``(LoadedResult or None, message)``.

        The slice views are not touched: the user may be painting (the ranking table and the hidden prediction
        segmentations change; showing a case is the user's click).
        """
        node = self.parameterNode
        if node is None:  # the scene was closed while the job ran
            return None, (
                f"The job finished while the scene was closed; its results are in {jobDir}. "
                "Load the volumes again and rank to see them."
            )
        later = self.callInMainThread is not None  # the GUI thread: each prediction in a turn of its own
        loaded = self.sceneLogic.loadJobResult(
            jobDir, self.jobModel, tableNode=node.rankingTable, showPredictions=not later
        )
        if later:
            self._showPredictionsLater(jobDir, loaded)
        node.rankingTable = loaded.tableNode
        if loaded.activeModel is not None:
            node.modelSource = ModelSource.CardFile
            node.modelCardPath = Path(loaded.activeModel)
        message = "Done."
        method = f" Adapt method: {loaded.result.adaptMethod}." if loaded.result.adaptMethod else ""
        if loaded.activeModel is not None:
            message = f"Adapted model is now active: {loaded.activeModel}.{method}"
        elif loaded.adaptedModel is not None:
            message = (
                f"The adapted model was stored but not activated: {loaded.result.activationReason} "
                f"({loaded.adaptedModel}).{method}"
            )
        table = loaded.tableNode
        cases = [ranking.rankedCaseFromTable(table, row)[0] for row in range(table.GetNumberOfRows())] if table else []
        proposed = sum(1 for case in cases if case.selected)
        if loaded.queryRound is not None:
            message += " " + jobFolder.describeQueryRound(loaded.queryRound, proposed=proposed)
        if later:  # the maps of the rows the user will click first, read before the click
            overlay.READ_AHEAD.start([case.entropyMap for case in cases if not case.labeled])
        heldBack = guidance.heldBackReasons(cases)
        if heldBack:  # the user is told, not left with an empty proposal
            message += " " + guidance.outOfDistributionNote(heldBack, len(cases), proposed, brief=True)
        if loaded.skippedCases:
            message += " Not in the scene any more: " + ", ".join(loaded.skippedCases)
        return loaded, message
