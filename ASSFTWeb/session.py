"""The annotator's round on one MRML scene, without any web framework: pool, ranking, case view, labels, jobs.

:class:`AnnotatorSession` is what the page calls. It holds the Slicer module's MRML logic
(:class:`ASSFTModuleLib.logic.ASSFTSceneLogic`) and job controller (:class:`ASSFTModuleLib.jobController.JobController`)
on the scene that trame-slicer renders, so rank and adapt jobs, their results, overlays, regions and class
segmentations behave exactly as in desktop Slicer. It adds only what a browser session needs on top: reading the
pool from a folder (unreadable files are reported and skipped), existing labels from a folder, and saving labels
back next to the data (:mod:`ASSFTWeb.label_files`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ASSFTModuleLib import ranking, unitProposals
from ASSFTModuleLib.errors import ASSFTModuleError
from ASSFTModuleLib.geometry import loadVolumeFile
from ASSFTModuleLib.jobController import JobController
from ASSFTModuleLib.jobProcess import workerEnvironment
from ASSFTModuleLib.logic import ASSFTSceneLogic, CaseView
from ASSFTModuleLib.parameters import (
    DEFAULT_QUERY_ROUNDS,
    AdaptMethodChoice,
    AnnotationUnitChoice,
    ModelSource,
    queryRoundsValue,
)
from ASSFTModuleLib.records import CaseState

from ASSFTActive.cards import DEFAULT_MODEL
from ASSFTActive.io import SUPPORTED_SUFFIXES, Volume, case_id

from .label_files import SavedLabel, save_label_file

#: Default overlay display, as in the Slicer panel.
DEFAULT_THRESHOLD, DEFAULT_OPACITY = 0.2, 0.5


@dataclass
class WebParameters:
    """The fields of the Slicer module's parameter node that the job controller reads and writes."""

    modelSource: ModelSource = ModelSource.Default
    modelCardPath: Path = Path("")
    workDirectory: Path = Path("")
    budget: int = 2
    queryRounds: int = DEFAULT_QUERY_ROUNDS
    adaptMethod: AdaptMethodChoice = AdaptMethodChoice.ASSFT
    annotationUnit: AnnotationUnitChoice = AnnotationUnitChoice.VOLUME
    rankingTable: object = None
    lastJobDirectory: str = ""


@dataclass(frozen=True)
class ServeConfig:
    """What ``assft serve`` was started with.

    Attributes:
        data_dir: folder of the pool's volumes (NIfTI/NRRD/MetaImage).
        labels_dir: folder of label files ``<case id>.nii.gz`` (read at start, written by Save labels);
            default ``<data_dir>/labels``.
        model: ``"default"``, a card JSON, or a store folder (``<store>/<name>[/v<k>]``).
        store_dir: the model store adapted models go to; default ``<work_dir>/models``.
        work_dir: job folders (``<work_dir>/jobs``); default ``<data_dir>/.assft``.
        budget: volumes to propose (with several query rounds: the total over the rounds).
        query, finetune: engine configuration dictionaries passed to every job (``job.json``); ``query["rounds"]``
            is only where the page's Query rounds field starts, the field's value goes into every job.
    """

    data_dir: Path
    labels_dir: Optional[Path] = None
    model: str = DEFAULT_MODEL
    store_dir: Optional[Path] = None
    work_dir: Optional[Path] = None
    budget: int = 2
    query: Dict = field(default_factory=dict)
    finetune: Dict = field(default_factory=dict)

    @property
    def labels_folder(self) -> Path:
        return Path(self.labels_dir) if self.labels_dir else Path(self.data_dir) / "labels"

    @property
    def work_folder(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.data_dir) / ".assft"


class _JobSettings:
    """The scene logic as the job controller sees it, with the server's store and engine settings in every job.

    The job is planned by the module's own :meth:`ASSFTSceneLogic.planJob` from what the controller passes (the
    panel's query rounds, the adapt method, "Train anyway"); only the server's store and its ``--query-json`` /
    ``--finetune-json`` settings are added here, the controller's keys deciding over the server's.
    """

    def __init__(self, logic: ASSFTSceneLogic, config: ServeConfig):
        self._logic = logic
        self._config = config

    def __getattr__(self, name):
        return getattr(self._logic, name)

    def _settings(self, query=None, finetune=None, sfr=None, storeDir=None) -> dict:
        return {
            "query": {**self._config.query, **(query or {})},
            "finetune": {**self._config.finetune, **(finetune or {})},
            "sfr": sfr,
            "storeDir": storeDir or self._config.store_dir,
        }

    def prepareJob(self, kind: str, workDir, model, budget: int, volumeNodes=None, **settings):
        return self.planJob(kind, workDir, model, budget, volumeNodes=volumeNodes, **settings).writeFiles()

    def planJob(self, kind: str, workDir, model, budget: int, volumeNodes=None, **settings):
        return self._logic.planJob(kind, workDir, model, budget, volumeNodes=volumeNodes, **self._settings(**settings))


class AnnotatorSession:
    """One annotator's round on a scene.

    Args:
        scene, app_logic: the scene trame-slicer renders and its application logic (Volumes logic registered).
        config: :class:`ServeConfig`.
        runner_factory: ``runner_factory(onEvent, onFinished)`` -> a job runner (see ``JobController``); the web app
            passes one whose callbacks arrive on its event loop.
        call_in_main_thread: ``JobController``'s ``callInMainThread`` (the web app: onto its event loop, so a job's
            volumes are written off the loop); None writes them before the worker starts, in the calling thread.
    """

    def __init__(
        self,
        scene,
        app_logic,
        config: ServeConfig,
        runner_factory: Callable,
        call_in_main_thread: Optional[Callable] = None,
    ):
        self.scene = scene
        self.config = config
        self.logic = ASSFTSceneLogic(scene, app_logic)
        self.controller = JobController(
            _JobSettings(self.logic, config),
            runner_factory,
            environment=workerEnvironment,
            callInMainThread=call_in_main_thread,
        )
        self.parameters = WebParameters(
            workDirectory=config.work_folder,
            budget=int(config.budget),
            queryRounds=queryRoundsValue(config.query.get("rounds", DEFAULT_QUERY_ROUNDS)),
        )
        self.set_model(config.model)
        self.controller.setParameterNode(self.parameters)
        self.messages: List[str] = []

    # ------------------------------------------------------------------ model
    def set_model(self, model: str) -> None:
        """``"default"``, a card JSON or a store folder; checked now (a bad choice raises ``AssftError``)."""
        text = str(model or "").strip()
        if not text or text == DEFAULT_MODEL:
            self.parameters.modelSource, self.parameters.modelCardPath = ModelSource.Default, Path("")
            return
        from ASSFTActive.store import resolve_card_path

        self.parameters.modelSource = ModelSource.CardFile
        self.parameters.modelCardPath = resolve_card_path(text)

    def model_description(self) -> str:
        return self.controller.modelDescription()

    def card(self):
        return self.logic.modelCard(self.controller.modelReference())

    # ------------------------------------------------------------------ pool
    def load_pool(self) -> List[str]:
        """Load every volume of the data folder, and the labels of the labels folder; returns the messages about
        files that were skipped (also kept in :attr:`messages`)."""
        messages = []
        data = Path(self.config.data_dir)
        if not data.is_dir():
            raise ASSFTModuleError(f"{data}: data folder not found. Pass an existing folder to --data.")
        volumes_logic = self.logic.volumesLogic
        for path in sorted(p for p in data.iterdir() if p.is_file()):
            if path.name.startswith("."):
                if path.name.lower().endswith(SUPPORTED_SUFFIXES):  # '..nii.gz' must not vanish without a word
                    messages.append(
                        f"Skipped {path.name}: a hidden file (its name starts with '.'); rename it to use it."
                    )
                continue
            if not path.name.lower().endswith(SUPPORTED_SUFFIXES):
                messages.append(f"Skipped {path.name}: not a NIfTI, NRRD or MetaImage volume.")
                continue
            try:
                node = loadVolumeFile(volumes_logic, str(path))
            except (OSError, ValueError) as error:
                messages.append(f"Skipped {path.name}: {error}")
                continue
            dims = node.GetImageData().GetDimensions() if node.GetImageData() is not None else (0, 0, 0)
            if min(dims) < 2:
                self.scene.RemoveNode(node)
                messages.append(f"Skipped {path.name}: not a 3D volume (size {tuple(dims)}).")
        messages += self._load_labels()
        self.messages = messages
        return messages

    def _load_labels(self) -> List[str]:
        folder = self.config.labels_folder
        if not folder.is_dir():
            return []
        messages = []
        files = {case_id(p): p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(SUPPORTED_SUFFIXES)}
        card = self.card()
        for node in self.logic.poolVolumeNodes():
            path = files.get(node.GetName())
            if path is None:
                continue
            if path.is_symlink():
                messages.append(
                    f"Label file {path.name} not used: it is a symbolic link (Save labels never writes "
                    "through links). Replace it with the file it points to."
                )
                continue
            try:  # a partial label (255 outside the annotated slices / regions) marks those done again
                self.logic.loadSavedLabels(node, path, card)
            except ASSFTModuleError as error:
                messages.append(f"Label file {path.name} not used: {error}")
        return messages

    def volume_names(self) -> List[str]:
        return [node.GetName() for node in self.logic.poolVolumeNodes()]

    def volume_node(self, name: str):
        for node in self.logic.poolVolumeNodes():
            if node.GetName() == name:
                return node
        raise ASSFTModuleError(f"Volume '{name}' is not loaded.")

    # ------------------------------------------------------------------ jobs
    def set_adapt_method(self, method) -> None:
        """How Adapt Model adapts: ``assft``, ``sfr`` or ``sfr_plus`` (an :class:`AdaptMethodChoice` value).

        Raises:
            ASSFTModuleError: an unknown method.
        """
        try:
            self.parameters.adaptMethod = AdaptMethodChoice(method)
        except ValueError as error:
            raise ASSFTModuleError(
                f"Unknown adapt method {method!r}; choose one of {[m.value for m in AdaptMethodChoice]}."
            ) from error

    def set_query_rounds(self, rounds) -> int:
        """Rounds of the multi-round query (the Slicer panel's Query rounds): every later Rank and the re-rank after
        Adapt Model write them into ``job.json``'s ``query.rounds``. Returns the value set.

        Raises:
            ASSFTModuleError: not a whole number >= 1 (the value in use is kept).
        """
        self.parameters.queryRounds = queryRoundsValue(rounds)
        return self.parameters.queryRounds

    def set_annotation_unit(self, unit) -> str:
        """What Rank proposes and Annotate steps through: ``volume``, ``slice`` or ``region`` (the Slicer panel's
        annotation unit; job.json's ``query.units``). Returns the value set.

        Raises:
            ASSFTModuleError: an unknown unit (the one in use is kept).
        """
        try:
            self.parameters.annotationUnit = AnnotationUnitChoice(unit)
        except ValueError as error:
            raise ASSFTModuleError(
                f"Unknown annotation unit {unit!r}; choose one of {[u.value for u in AnnotationUnitChoice]}."
            ) from error
        return self.parameters.annotationUnit.value

    def start_job(self, kind: str, allow_implausible_labels: bool = False):
        """Start a ``rank`` job, or Adapt Model with ``kind`` ``adapt`` (an ``adapt`` or ``sfr`` job, by the adapt
        method); the controller refuses a second one while one runs.

        Args:
            allow_implausible_labels: for this job only, the label checks warn instead of refusing (the page's
                "Train anyway" after a refusal; ``JobController.startJob``'s ``trainAnyway``).
        """
        return self.controller.startJob(kind, trainAnyway=bool(allow_implausible_labels))

    def cancel(self) -> None:
        self.controller.cancel()

    def is_running(self) -> bool:
        return self.controller.isRunning()

    # ------------------------------------------------------------------ ranking
    def ranking_rows(self) -> List[dict]:
        """The ranking table as plain rows for the page (volume, DKD, ASD, score, rank, state, why it was proposed,
        place in the probably-wrong list, out-of-distribution reason)."""
        table = self.parameters.rankingTable
        if table is None:
            return []
        rows = []
        for row in range(table.GetNumberOfRows()):
            case, node_id = ranking.rankedCaseFromTable(table, row)
            node = self.scene.GetNodeByID(node_id) if node_id else None
            rows.append(
                {
                    "row": row,
                    "volume": node.GetName() if node is not None else case.caseId,
                    "case": case.caseId,
                    "dkd": round(case.dkd, 4),
                    "asd": round(case.asd, 4),
                    "score": round(case.score, 4),
                    "rank": case.rank,
                    "state": CaseState.of(case.labeled, case.pseudoLabeled, case.selected),
                    "why": case.reason,
                    "wrong": case.wrongRank,
                    "ood": case.ood,
                }
            )
        return rows

    def restore_ranking(self):
        """Show again the last successful ranking of the work folder on the volumes it ranked, when they were loaded
        from the same files, unchanged (after ``assft serve`` is stopped and started again on the same data
        folder; :meth:`ASSFTSceneLogic.restoreLatestRanking`). Returns the ``LoadedResult`` or None when there is
        nothing to show again.

        Raises:
            ASSFTModuleError: the ranking's files or its model card cannot be read.
        """
        restored = self.logic.restoreLatestRanking(self.config.work_folder, self.parameters.rankingTable)
        if restored is None:
            return None
        job_dir, loaded = restored
        self.parameters.rankingTable = loaded.tableNode
        self.parameters.lastJobDirectory = str(job_dir)
        return loaded

    def probably_wrong_evidence(self) -> str:
        """How well the "probably wrong" order predicted the model's error, and on which split (from the ranking)."""
        table = self.parameters.rankingTable
        return (table.GetAttribute("ASSFT.ProbablyWrongEvidence") or "") if table is not None else ""

    def show_row(self, row: int, threshold: float = DEFAULT_THRESHOLD, opacity: float = DEFAULT_OPACITY) -> CaseView:
        """Look at a ranked volume: volume, entropy overlay and regions (the Slicer module's ``showCase``)."""
        table = self.parameters.rankingTable
        if table is None:
            raise ASSFTModuleError("Rank the volumes first.")
        return self.logic.showCase(table, int(row), threshold, opacity)

    def refresh_labeled_states(self) -> int:
        table = self.parameters.rankingTable
        return 0 if table is None else self.logic.refreshLabeledStates(table, self.card())

    # ------------------------------------------------------------------ labels
    def annotate(self, volume_node, prefill: bool = False):
        """The volume's class segmentation (one segment per model class), optionally pre-filled with the model's
        prediction when the last job wrote one and nothing is painted yet."""
        prediction = None
        if prefill:
            case = self.logic.caseForVolume(self.parameters.rankingTable, volume_node)
            prediction = str(case.prediction) if case is not None and case.prediction is not None else None
            if prediction is None:
                raise ASSFTModuleError("There is no prediction for this volume yet; rank the volumes first.")
        return self.logic.annotationSegmentation(volume_node, self.card(), prediction)

    def voxel_counts(self, volume_node, segmentation_node=None) -> Dict[str, int]:
        """Labeled voxels per class of the volume's segmentation (empty when it has none)."""
        try:
            return dict(self.logic.classLabelmap(volume_node, self.card(), segmentation_node).voxelCounts)
        except ASSFTModuleError:
            return {}

    def next_proposal(self, volume_node) -> str:
        """Centre the views on the volume's next proposed slice / region not yet done (the logic's
        ``jumpToNextProposal``); returns the line to show.

        Raises:
            ASSFTModuleError: the volume has no proposed slices or regions (rank by slice or region first).
        """
        if not self.logic.proposals(volume_node):
            raise ASSFTModuleError(
                f"Volume '{volume_node.GetName()}' has no proposed slices or regions; choose the "
                "unit slice or region, then Rank Volumes."
            )
        if self.logic.jumpToNextProposal(volume_node) is None:
            return f"Every proposed unit of {volume_node.GetName()} is done: {unitProposals.progressLine(volume_node)}."
        return unitProposals.progressLine(volume_node)

    def mark_done(self, volume_node) -> str:
        """Mark the proposed slice / region the views are on done (its painting counts as labels, background
        included); returns the line to show."""
        self.logic.markProposalDone(volume_node)
        return unitProposals.progressLine(volume_node)

    def save_labels(self, volume_node, segmentation_node=None) -> SavedLabel:
        """Write the volume's class label map to ``<labels>/<volume name>.nii.gz`` (the old file kept as backup);
        with proposed slices / regions, 255 (not annotated) outside the ones marked done.

        Raises:
            ASSFTModuleError: the volume has no segmentation, it holds no class voxels, or it has proposed slices /
                regions and none is marked done.
        """
        conversion = self.logic.savedLabels(volume_node, self.card(), segmentation_node)
        if conversion is None:
            raise ASSFTModuleError(unitProposals.notLabelledReason(volume_node))
        if not conversion.isLabeled and not unitProposals.doneUnits(volume_node):
            raise ASSFTModuleError(f"Volume '{volume_node.GetName()}' has no labeled voxels yet; paint first.")
        saved = save_label_file(
            Volume(array=conversion.labels, affine=conversion.affine), self.config.labels_folder, volume_node.GetName()
        )
        self.refresh_labeled_states()
        return saved
