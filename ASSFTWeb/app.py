"""The page of ``assft serve``: Slicer's slice views and segment editor (trame-slicer) plus the ASSFT panel.

Left: trame-slicer's segment editor (Paint, Erase, Draw, Scissors, Threshold, Islands, undo) on the class
segmentation of the volume being annotated. Centre: axial, coronal and sagittal views rendered server-side by VTK.
Right: the ASSFT panel (volumes, model, budget and query rounds, Rank Volumes, ranking table with its query round,
overlay, regions, Annotate, Save labels, Adapt Model with its method (ASSFT, SFR, SFR+), progress and Cancel, the
DKD-against-ASD chart).

All state lives on the server, so every browser tab shows the same round and a tab that closes mid-job changes
nothing: the job runs in its own worker process (``JobController``), whose callbacks are moved onto the server's
event loop before they touch the scene or the page.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import slicer
from ASSFTModuleLib import overlay as overlay_logic
from ASSFTModuleLib.errors import ASSFTModuleError
from ASSFTModuleLib.guidance import outOfDistributionNote
from ASSFTModuleLib.jobFolder import describeQueryRound
from ASSFTModuleLib.jobProcess import SubprocessJobRunner
from ASSFTModuleLib.parameters import AdaptMethodChoice, AnnotationUnitChoice, queryRoundsValue
from trame.app import TrameApp
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic.segmentation import SegmentEditorLogic
from trame_slicer.app.ui import SegmentEditorUI, ViewerLayout
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.segmentation import BrushDiameterMode, SegmentationEffectPaint
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from ASSFTActive.errors import AssftError
from ASSFTActive.jobs import ADAPT_KINDS

from . import fields
from .guidance import held_back_reasons, next_step
from .plot import LEGEND, scores_svg
from .security import AccessPolicy, install, is_loopback
from .session import DEFAULT_OPACITY, DEFAULT_THRESHOLD, AnnotatorSession, ServeConfig

LAYOUT_ID = "ASSFT"
#: Brush diameter (mm) the Paint effect starts with on Annotate; the segment editor's slider changes it.
BRUSH_DIAMETER_MM = 4.0
#: Worker lines kept on the server (not sent to the page: only a failed job's last lines are shown).
LOG_LINES = 200
#: Worker log lines shown under a failed job's error.
ERROR_LOG_LINES = 8
TRAIN_ANYWAY_WARNING = (
    "The label checks refused these labels (above). Train anyway uses them as they are: if a "
    "class is missing, swapped or misplaced, the adapted model learns that mistake."
)


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _round_line(plan, rows) -> str:
    """The ranking caption's query line (the round only when the budget is spread over several rounds), with the
    volumes actually proposed and those held back as out of distribution (``rows``: the table's rows)."""
    proposed = sum(1 for row in rows if row.get("state") == "proposed")
    held_back = held_back_reasons(rows)
    note = f" {outOfDistributionNote(held_back, len(rows), proposed, brief=True)}" if held_back else ""
    if plan is None:
        return note
    if plan.total_rounds > 1:
        return f" {describeQueryRound(plan, proposed=proposed)}{note}"
    count = "No volume" if proposed == 0 else f"{proposed} volume{'' if proposed == 1 else 's'}"
    return f" {count} proposed.{note}"


def _query_rounds(value) -> int:
    try:
        return queryRoundsValue(value)
    except ASSFTModuleError as error:
        raise fields.FieldError(str(error)) from error


class ASSFTWebApp(TrameApp):
    """The browser annotator on one scene (one round shared by every connected tab).

    Args:
        config: :class:`~ASSFTWeb.session.ServeConfig`.
        server: a trame server (a new one when None).
        policy: who may connect (:class:`~ASSFTWeb.security.AccessPolicy`); a new secret for loopback when None.
    """

    def __init__(self, config: ServeConfig, server=None, policy: Optional[AccessPolicy] = None):
        super().__init__(server)
        self.policy = policy or AccessPolicy.for_address("127.0.0.1")
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.editor = self.slicer_app.segmentation_editor
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(
            LAYOUT_ID,
            Layout(
                LayoutDirection.Horizontal,
                [
                    ViewLayoutDefinition.axial_view(),
                    Layout(
                        LayoutDirection.Vertical,
                        [ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.sagittal_view()],
                    ),
                ],
            ),
        )
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.session = AnnotatorSession(
            self.slicer_app.scene,
            self.slicer_app.app_logic,
            config,
            self._runner_factory,
            call_in_main_thread=self._post,
        )
        self.case_view = None
        self.annotated_volume = None
        self.annotated_segmentation = None
        self._count_pending = False
        self._observed = set()
        self._field_error = ""  # the page's report of refused field values, taken back once they are good
        self._log: deque = deque(maxlen=LOG_LINES)
        self._init_state(config)
        install(self.server, self.policy, self.guard, self._on_fields_refused)
        self._connect_controller()
        self._build_ui()
        self.layout_manager.set_layout(LAYOUT_ID)
        # the segment editor's effect pipelines were made before the views existed; clearing the scene rebuilds
        # them on the views (what trame-slicer's own loader does), else Paint fails on a view of None
        self.slicer_app.scene.Clear()
        self.server.controller.on_server_ready.add(self._on_server_ready)
        self._load_pool()

    # ------------------------------------------------------------------ threads -> event loop
    def _on_server_ready(self, **_):
        self._loop = asyncio.get_event_loop()

    def _post(self, callback: Callable, *args) -> None:
        """Run ``callback(*args)`` on the server's event loop and push the state changes to every browser."""

        def run():
            with self.state:
                callback(*args)

        if self._loop is None:
            run()
        else:
            self._loop.call_soon_threadsafe(run)

    def _runner_factory(self, on_event, on_finished):
        return SubprocessJobRunner(
            lambda item: self._post(on_event, item), lambda *args: self._post(on_finished, *args)
        )

    # ------------------------------------------------------------------ state
    def _init_state(self, config: ServeConfig) -> None:
        """The page's state, and the rules for what a browser may change in it (:class:`fields.StateGuard`): the
        fields the user edits are validated, every other ASSFT field is the server's."""
        initial = dict(
            trame__title="ASSFT annotator",
            data_dir=str(config.data_dir),
            labels_dir=str(config.labels_folder),
            volumes=[],
            skipped=[],
            model_text=str(config.model),
            model_description=self.session.model_description(),
            budget=int(config.budget),
            query_rounds=self.session.parameters.queryRounds,
            adapt_methods=[{"title": m.label(), "value": m.value} for m in AdaptMethodChoice],
            adapt_method=self.session.parameters.adaptMethod.value,
            annotation_units=[{"title": u.value, "value": u.value} for u in AnnotationUnitChoice],
            annotation_unit=self.session.parameters.annotationUnit.value,
            unit_message="",
            rows=[],
            wrong_rows=[],
            wrong_evidence="",
            selected_row=-1,
            ranking_round=0,
            ranking_caption="Not ranked yet.",
            plot_svg="",
            plot_legend=LEGEND,
            overlay_visible=True,
            overlay_opacity=DEFAULT_OPACITY,
            regions=[],
            slice_offsets={},
            current_volume="",
            prefill=False,
            voxel_counts={},
            voxel_total=0,
            annotated_name="",
            saved_message="",
            saved=False,
            job_running=False,
            job_kind="",
            job_outcome="",
            progress=0,
            progress_colour="green",
            status="Ready.",
            error="",
            error_details="",
            can_train_anyway=False,
            train_anyway_warning=TRAIN_ANYWAY_WARNING,
            next_step="",
        )
        editable = {
            "model_text": fields.text("Model"),
            "budget": fields.whole_number("Budget", 1, lambda: max(1, len(self.state.volumes))),
            "query_rounds": _query_rounds,
            "adapt_method": fields.choice("Adapt method", [m.value for m in AdaptMethodChoice]),
            "annotation_unit": fields.choice("Unit", [u.value for u in AnnotationUnitChoice]),
            "overlay_visible": fields.boolean("Entropy overlay"),
            "overlay_opacity": fields.number_in("Overlay opacity", 0.0, 1.0),
            "prefill": fields.boolean("Pre-fill with the prediction"),
        }
        self.guard = fields.StateGuard(editable, server_owned=set(initial) - set(editable))
        self.state.update(initial)
        self._update_next_step()
        s = self.state
        s.change("overlay_visible", "overlay_opacity")(self._on_overlay_changed)
        s.change("budget")(self._on_budget_changed)
        s.change("query_rounds")(self._on_query_rounds_changed)
        s.change("adapt_method")(self._on_adapt_method_changed)
        s.change("annotation_unit")(self._on_annotation_unit_changed)

    def _on_fields_refused(self, result: fields.GuardResult) -> None:
        """Report refused values of the page's fields; the report goes once every field is good again."""
        if result.refused:
            self.state.error = self._field_error = " ".join(result.refused.values())
        elif self._field_error and self.state.error == self._field_error:
            self.state.error = self._field_error = " ".join(self.guard.errors.values())

    def _update_next_step(self) -> None:
        s = self.state
        s.next_step = next_step(
            s.rows,
            bool(s.job_running),
            str(s.job_kind).split(" ")[0],
            failed=s.job_outcome == "error",
            annotated=s.annotated_name,
            painted_voxels=int(s.voxel_total),
            saved=bool(s.saved),
            can_train_anyway=bool(s.can_train_anyway),
            unit=str(s.annotation_unit),
        )

    def _connect_controller(self) -> None:
        c = self.session.controller
        c.statusChanged.connect(self._on_status)
        c.progressStateChanged.connect(self._on_progress_state)
        c.runningChanged.connect(self._on_running)
        c.logLine.connect(self._on_log)
        c.failed.connect(self._on_failed)
        c.finished.connect(self._on_finished)

    def _on_status(self, text: str) -> None:
        self.state.status = text

    def _on_progress_state(self, progress) -> None:
        """The whole job's progress (``ASSFTActive.progress.ProgressState``): a bar that only moves forward, in the
        state's colour (the status line says it in words: time left, then done / failed / cancelled)."""
        self.state.progress = int(100 * float(progress.fraction))
        self.state.progress_colour = progress.colour  # the line in words arrives as the status

    def _on_running(self, running: bool) -> None:
        self.state.job_running = bool(running)

    def _on_log(self, text: str) -> None:
        self._log.append(text)

    def _on_failed(self, message: str, details: str) -> None:
        """The error, and the worker's last lines under it (what it printed before it ended)."""
        self.state.error = message
        lines = [line for line in (details or "").splitlines() if line.strip()]
        if not lines:
            lines = [line for line in self._log if line.strip()]
        self.state.error_details = "\n".join(lines[-ERROR_LOG_LINES:])

    def _on_finished(self, outcome) -> None:
        self.state.job_running = False
        self.state.job_outcome = outcome.status
        self.state.can_train_anyway = bool(outcome.labelsRefused) and outcome.kind in ADAPT_KINDS
        if outcome.status == "done":
            self.state.ranking_round += 1
            model = self.session.model_description()
            self.state.model_description = model
            self.state.model_text = self.session.controller.modelReference()
            what = "Re-ranked with the adapted model" if outcome.kind in ADAPT_KINDS else "Ranked"
            caption = f"{what}: ranking {self.state.ranking_round}, model {model}."
            query_round = getattr(outcome.loaded, "queryRound", None)
            self._refresh_rows()
            self.state.ranking_caption = caption + _round_line(query_round, self.state.rows)
            if self.state.rows:
                self.select_row(self.state.selected_row if self.state.selected_row >= 0 else 0)
        if outcome.status == "error" and self.state.error:  # the message is in the red box, not twice
            self.state.status = f"{outcome.kind.capitalize()} failed: see the message above."
        else:
            self.state.status = outcome.message or outcome.status
        self.state.job_kind = f"{outcome.kind} {outcome.status}"
        self._update_next_step()

    def _refresh_rows(self) -> None:
        rows = [{k: _finite(v) for k, v in row.items()} for row in self.session.ranking_rows()]
        self.state.rows = rows
        self.state.wrong_rows = sorted((r for r in rows if r.get("wrong")), key=lambda r: r["wrong"])
        self.state.wrong_evidence = self.session.probably_wrong_evidence()
        plotted = [r for r in rows if r["dkd"] is not None and r["asd"] is not None]
        self.state.plot_svg = scores_svg(plotted) if plotted else ""

    # ------------------------------------------------------------------ pool and model
    def _load_pool(self) -> None:
        try:
            self.state.skipped = self.session.load_pool()
        except (ASSFTModuleError, AssftError, OSError) as error:
            self.state.error = str(error)
        self.state.volumes = self.session.volume_names()
        nodes = self.session.logic.poolVolumeNodes()
        if nodes:
            self._show_volume(nodes[0])
        self._restore_ranking()

    def _restore_ranking(self) -> None:
        """The last successful ranking of the work folder, shown again on the volumes it ranked (a restarted server
        on the same data; never on volumes loaded from other or changed files)."""
        try:
            loaded = self.session.restore_ranking()
        except (ASSFTModuleError, AssftError, OSError) as error:
            self.state.error = f"The last ranking could not be shown again: {error}"
            return
        if loaded is None:
            return
        self.state.ranking_round = 1
        job = Path(self.session.parameters.lastJobDirectory).name
        skipped = f" Not loaded now: {', '.join(loaded.skippedCases)}." if loaded.skippedCases else ""
        self._refresh_rows()
        self.state.ranking_caption = (
            f"Last ranking, shown again from job {job}." + _round_line(loaded.queryRound, self.state.rows) + skipped
        )
        if self.state.rows:
            self.select_row(0)
        self._update_next_step()

    def _show_volume(self, node) -> None:
        self.slicer_app.display_manager.show_volume_in_slice_background(node)
        self.slicer_app.display_manager.reset_views()
        self.state.current_volume = node.GetName()

    def apply_model(self) -> None:
        """The Model field's check: use the typed model (``default``, a card JSON or a store folder) from the next
        job on; a model that cannot be used is refused with the reason and the one in use stays."""
        if self.guard.errors.get("model_text"):
            self.state.error = self.guard.errors["model_text"]
            return
        parameters = self.session.parameters
        in_use = (parameters.modelSource, parameters.modelCardPath)
        try:
            self.session.set_model(self.state.model_text)
            self.session.card()  # read and checked as the worker reads it: a file that is no model card is refused
        except (ASSFTModuleError, AssftError, OSError) as error:
            parameters.modelSource, parameters.modelCardPath = in_use
            self.state.error = str(error)
            return
        self.state.model_description = self.session.model_description()
        self.state.error = ""
        self.state.status = f"Model set: {self.state.model_description}. Rank Volumes uses it."

    def _on_budget_changed(self, budget, **_) -> None:
        self.session.parameters.budget = int(budget)  # a whole number in range: the guard refused anything else

    def _on_query_rounds_changed(self, query_rounds, **_) -> None:
        self.session.set_query_rounds(query_rounds)

    def _on_adapt_method_changed(self, adapt_method, **_) -> None:
        self.session.set_adapt_method(adapt_method)

    def _on_annotation_unit_changed(self, annotation_unit, **_) -> None:
        self.session.set_annotation_unit(annotation_unit)
        self._update_next_step()

    # ------------------------------------------------------------------ jobs
    def start_job(self, kind: str, allow_implausible_labels: bool = False) -> None:
        """Rank or Adapt; refused (with the reason on the page) while a job runs, while a field of the page holds
        a refused value, or when nothing can run."""
        pending = self._restore_refused_fields()
        if pending:
            self.state.error = pending + " The fields show the values in use again; check them and press again."
            return
        self.state.error = ""
        self.state.error_details = ""
        self.state.can_train_anyway = False
        try:
            spec = self.session.start_job(kind, allow_implausible_labels=allow_implausible_labels)
        except (ASSFTModuleError, AssftError, OSError) as error:
            self.state.error = str(error)
            return
        if spec is not None:
            self.state.job_running = True
            self.state.job_kind = f"{kind} running"
            self.state.job_outcome = "running"
        self._update_next_step()

    def _restore_refused_fields(self):
        """The refusals still shown in the page's fields (None when there are none), and those fields pushed back to
        the values in use in every tab (a tab opened later never showed the refused value, so it could not fix
        it)."""
        pending = self.guard.pending()
        if pending:
            keys = list(self.guard.errors)
            self.guard.errors.clear()
            self.server.clear_state_client_cache(*keys)
            self.state.dirty(*keys)
        return pending

    def rank(self) -> None:
        self.start_job("rank")

    def adapt(self) -> None:
        self.start_job("adapt")

    def train_anyway(self) -> None:
        """Adapt Model once more with the label checks' refusals turned into warnings (what the page offers after a
        refusal instead of ``--allow-implausible-labels``)."""
        self.start_job("adapt", allow_implausible_labels=True)

    def cancel(self) -> None:
        self.session.cancel()

    # ------------------------------------------------------------------ look
    def select_row(self, row) -> None:
        try:
            row = fields.whole_number("The row", 0, max(len(self.state.rows) - 1, 0))(row)
            view = self.session.show_row(row, DEFAULT_THRESHOLD, float(self.state.overlay_opacity))
        except (fields.FieldError, ASSFTModuleError, AssftError, OSError, IndexError) as error:
            self.state.error = str(error)
            return
        self.case_view = view
        self.state.selected_row = row
        self.state.current_volume = view.volumeNode.GetName()
        self.state.regions = [{"index": i, "text": region.describe(i)} for i, region in enumerate(view.regions)]
        if not self.state.overlay_visible:
            overlay_logic.hideOverlay(self.slicer_app.scene)
        self.slicer_app.display_manager.reset_views()
        self._update_counts()

    def jump_to_region(self, index) -> None:
        if self.case_view is None or self.case_view.regionsNode is None:
            return
        try:
            index = fields.whole_number("The region", 0, max(len(self.state.regions) - 1, 0))(index)
        except fields.FieldError as error:
            self.state.error = str(error)
            return
        self.state.slice_offsets = self.session.logic.jumpToRegion(self.case_view.regionsNode, index)

    def _on_overlay_changed(self, overlay_visible, overlay_opacity, **_) -> None:
        view = self.case_view
        if view is None or view.overlayNode is None:
            return
        if overlay_visible:
            overlay_logic.showOverlay(
                self.slicer_app.scene, view.volumeNode, view.overlayNode, DEFAULT_THRESHOLD, float(overlay_opacity)
            )
        else:
            overlay_logic.hideOverlay(self.slicer_app.scene)

    # ------------------------------------------------------------------ annotate and save
    def _current_volume_node(self):
        if self.case_view is not None:
            return self.case_view.volumeNode
        if self.state.current_volume:
            return self.session.volume_node(self.state.current_volume)
        raise ASSFTModuleError("Choose a volume first (Rank Volumes, then click a row).")

    def annotate(self) -> None:
        """Open the segment editor on the volume's class segmentation, with Paint on the first class."""
        self.state.error = ""
        try:
            volume = self._current_volume_node()
            segmentation = self.session.annotate(volume, prefill=bool(self.state.prefill))
        except (ASSFTModuleError, AssftError, OSError, ValueError) as error:
            self.state.error = str(error)
            return
        self.annotated_volume, self.annotated_segmentation = volume, segmentation
        self.state.annotated_name = volume.GetName()
        self.state.saved_message, self.state.saved = "", False
        self.editor.set_active_segmentation(segmentation, volume)
        segment_ids = self.editor.get_segment_ids()
        if segment_ids:
            self.editor.set_active_segment_id(segment_ids[0])
        paint = self.editor.set_active_effect_type(SegmentationEffectPaint)
        if paint is not None:
            paint.set_brush_diameter(BRUSH_DIAMETER_MM, BrushDiameterMode.Absolute)
        if segmentation.GetID() not in self._observed:
            for event in (slicer.vtkSegmentation.SegmentModified, slicer.vtkSegmentation.RepresentationModified):
                segmentation.GetSegmentation().AddObserver(event, self._on_segment_modified)
            self._observed.add(segmentation.GetID())
        self.layout.typed_state.data.is_drawer_visible = True
        self.layout.typed_state.data.active_tool = SegmentEditorUI.__name__
        self._update_counts()

    def _on_segment_modified(self, *_):
        if self._count_pending:
            return
        self._count_pending = True
        if self._loop is None:
            self._update_counts_now()
        else:
            self._loop.call_later(0.3, self._update_counts_now)

    def _update_counts_now(self) -> None:
        with self.state:
            self._update_counts()

    def _update_counts(self) -> None:
        self._count_pending = False
        volume = self.annotated_volume
        if volume is None:
            self.state.voxel_counts, self.state.voxel_total = {}, 0
        else:
            counts = self.session.voxel_counts(volume, self.annotated_segmentation)
            total = int(sum(counts.values()))
            if total != self.state.voxel_total or counts != self.state.voxel_counts:
                self.state.saved = False
            self.state.voxel_counts = counts
            self.state.voxel_total = total
        self._update_next_step()

    def next_proposal(self) -> None:
        """Centre the views on the shown volume's next proposed slice / region not yet done."""
        self.state.error = ""
        try:
            self.state.unit_message = self.session.next_proposal(self.annotated_volume or self._current_volume_node())
        except (ASSFTModuleError, AssftError, ValueError) as error:
            self.state.error = str(error)

    def mark_done(self) -> None:
        """Mark the proposed slice / region the views are on done: its painting counts as labels."""
        self.state.error = ""
        try:
            self.state.unit_message = self.session.mark_done(self.annotated_volume or self._current_volume_node())
        except (ASSFTModuleError, AssftError, ValueError) as error:
            self.state.error = str(error)
            return
        self.state.saved = False
        self._update_next_step()

    def save_labels(self) -> None:
        self.state.error = ""
        try:
            volume = self.annotated_volume or self._current_volume_node()
            saved = self.session.save_labels(volume, self.annotated_segmentation)
        except (ASSFTModuleError, AssftError, OSError, ValueError) as error:
            self.state.error = str(error)
            return
        message = f"Saved {saved.path}"
        if saved.backup is not None:
            message += f"; the previous file is kept as {saved.backup}"
        self.state.saved_message = message
        self.state.saved = True
        self._refresh_rows()
        self._update_next_step()

    # ------------------------------------------------------------------ page
    def _build_ui(self) -> None:
        with ViewerLayout(self.server, title="ASSFT annotator") as self.layout:
            with self.layout.drawer:
                self.editor_ui = SegmentEditorUI()
                self.editor_logic.set_ui(self.editor_ui)
            names = self.layout.typed_state.name
            with self.layout.toolbar:
                with v3.VBtn(
                    icon=True,
                    size="small",
                    variant="text",
                    id="btn_editor",
                    click=f"{names.is_drawer_visible} = !{names.is_drawer_visible}; "
                    f"{names.active_tool} = 'SegmentEditorUI'",
                ):
                    v3.VIcon("mdi-brush")
            with self.layout.content:
                self.layout_manager.initialize_layout_grid(self.layout)
            with v3.VNavigationDrawer(location="right", permanent=True, width=460, id="assft_panel"):
                self._build_panel()

    def _build_panel(self) -> None:
        """The panel, in the order of the round: what went wrong, the job's settings and buttons, the next step,
        Annotate and Save (visible without scrolling at 1366x768), then the ranking with its legend, the overlay,
        the regions, the pool and the chart."""
        with html.Div(classes="pa-2", style="font-size: 13px;"):
            with v3.VAlert(
                v_if=("error",),
                type="error",
                density="compact",
                closable=True,
                id="error_message",
                classes="mb-2 text-caption",
                style="overflow-wrap: anywhere;",
            ):
                html.Div("{{ error }}", id="error_text")
                with html.Div(
                    v_if=("error_details",),
                    style="display: flex; flex-direction: column-reverse; "
                    "max-height: 160px; overflow-y: auto; margin-top: 4px;",
                ):  # scrolled to the last line
                    html.Pre(
                        "{{ error_details }}",
                        id="error_details",
                        style="white-space: pre-wrap; font-size: 11px; background: rgba(0,0,0,0.25); "
                        "padding: 4px; margin: 0;",
                    )
                with html.Div(v_if=("can_train_anyway",), id="train_anyway_box", classes="mt-1"):
                    html.Div("{{ train_anyway_warning }}", classes="mb-1")
                    v3.VBtn(
                        "Train anyway",
                        click=self.train_anyway,
                        disabled=("job_running",),
                        size="small",
                        color="warning",
                        variant="flat",
                        id="btn_train_anyway",
                    )
            with v3.VRow(dense=True):
                with v3.VCol(cols=12):
                    v3.VTextField(
                        v_model=("model_text",),
                        label="Model (default, card JSON or store folder)",
                        density="compact",
                        hide_details=True,
                        id="model_field",
                        append_inner_icon="mdi-check",
                        click_appendInner=self.apply_model,
                        keydown_enter=self.apply_model,
                        __events=[("keydown_enter", "keydown.enter")],
                        title="Type a model and press the check mark (or Enter) to use it",
                    )
            html.Div(
                "{{ model_description }}",
                classes="text-caption mb-1",
                id="model_description",
                style="overflow-wrap: anywhere;",
            )
            with v3.VRow(dense=True):
                with v3.VCol(cols=3):
                    v3.VTextField(
                        v_model_number=("budget",),
                        type="number",
                        min=1,
                        label="Budget",
                        density="compact",
                        hide_details=True,
                        id="budget_field",
                        title="How many volumes to propose for labelling",
                    )
                with v3.VCol(cols=3):
                    v3.VTextField(
                        v_model_number=("query_rounds",),
                        type="number",
                        min=1,
                        label="Rounds",
                        density="compact",
                        hide_details=True,
                        id="query_rounds_field",
                        title="Spread the budget over this many rounds: each Rank proposes the current "
                        "round's share; label it, Adapt Model, and the re-ranking proposes the next "
                        "round with the adapted model. 1: the whole budget at once.",
                    )
                with v3.VCol(cols=3):
                    v3.VSelect(
                        v_model=("annotation_unit",),
                        items=("annotation_units",),
                        label="Unit",
                        density="compact",
                        hide_details=True,
                        id="annotation_unit",
                        title="What Rank proposes and you annotate: whole volumes, slices or regions (the "
                        "budget then counts slices or regions)",
                    )
                with v3.VCol(cols=3):
                    v3.VSelect(
                        v_model=("adapt_method",),
                        items=("adapt_methods",),
                        label="Adapt method",
                        density="compact",
                        hide_details=True,
                        id="adapt_method",
                    )
            with html.Div(classes="d-flex ga-2 mt-2 mb-1"):
                v3.VBtn(
                    "Rank Volumes",
                    click="trigger('rank')",
                    disabled=("job_running",),
                    color="primary",
                    size="small",
                    id="btn_rank",
                )
                v3.VBtn(
                    "Adapt Model",
                    click="trigger('adapt')",
                    disabled=("job_running",),
                    color="secondary",
                    size="small",
                    id="btn_adapt",
                )
                v3.VBtn(
                    "Cancel",
                    click=self.cancel,
                    disabled=("!job_running",),
                    color="error",
                    size="small",
                    variant="outlined",
                    id="btn_cancel",
                )
            v3.VProgressLinear(
                model_value=("progress",),
                height=12,
                id="job_progress",
                striped=("job_running",),
                color=("progress_colour",),
            )
            html.Div(
                "{{ progress }}% | {{ job_kind }} | {{ status }}",
                id="job_status",
                classes="text-caption mb-1",
                style="overflow-wrap: anywhere;",
            )
            html.Div(
                "{{ next_step }}",
                id="next_step",
                classes="text-body-2 mb-2 pa-1",
                style="border-left: 3px solid #ff9800; background: rgba(255,152,0,0.08);",
            )
            with html.Div(classes="d-flex align-center ga-2"):
                v3.VBtn("Annotate", click=self.annotate, size="small", color="primary", id="btn_annotate")
                v3.VCheckbox(
                    v_model=("prefill",),
                    label="Pre-fill with the prediction",
                    density="compact",
                    hide_details=True,
                    id="prefill_toggle",
                )
                v3.VBtn(
                    "Save labels",
                    click=self.save_labels,
                    size="small",
                    color="success",
                    id="btn_save",
                    title=("'Writes the label file into ' + labels_dir",),
                )
            with html.Div(
                classes="d-flex align-center ga-2 mt-1", v_if=("annotation_unit !== 'volume'",), id="unit_buttons"
            ):
                v3.VBtn(
                    "{{ annotation_unit === 'region' ? 'Next proposed region' : 'Next proposed slice' }}",
                    click=self.next_proposal,
                    size="small",
                    color="primary",
                    variant="outlined",
                    id="btn_next_unit",
                )
                v3.VBtn(
                    "Mark done",
                    click=self.mark_done,
                    size="small",
                    color="success",
                    variant="outlined",
                    id="btn_mark_done",
                    title="Your painting in this slice or region counts as labels "
                    "(unpainted voxels in it as background); the rest stays unlabelled",
                )
                html.Span("{{ unit_message }}", id="unit_message", classes="text-caption")
            html.Div(
                "Labeled voxels: {{ annotated_name ? voxel_total + ' (' + Object.entries(voxel_counts).map("
                "([k, v]) => k + ' ' + v).join(', ') + ') in ' + annotated_name : 'none yet (Annotate opens the "
                "volume shown in the segment editor)' }}",
                id="voxel_counts",
                classes="text-caption",
            )
            html.Div(
                "{{ saved_message }}", id="saved_message", classes="text-caption mb-1", style="overflow-wrap: anywhere;"
            )
            html.Div("{{ ranking_caption }}", id="ranking_caption", classes="text-subtitle-2")
            with html.Table(
                id="ranking_table", style="width: 100%; border-collapse: collapse;", classes="text-caption"
            ):
                with html.Tr():
                    for title, tip in COLUMNS:
                        html.Th(
                            title,
                            title=tip,
                            style=CELL + " text-align: left; border-bottom: 1px solid #666; cursor: help;",
                        )
                with html.Tr(
                    v_for="r in rows",
                    key="r.case",
                    classes="ranking-row",
                    click="trigger('select_row', [r.row])",
                    style=(
                        "{cursor: 'pointer', background: r.row === selected_row ? '"
                        + ROW_SHOWN
                        + "' : (r.state === 'proposed' ? '"
                        + ROW_PROPOSED
                        + "' : '')}",
                    ),
                ):
                    html.Td("{{ r.rank || '-' }}", style=CELL)
                    html.Td("{{ r.volume }}", style=CELL)
                    html.Td("{{ r.dkd === null ? '-' : r.dkd.toFixed(3) }}", style=CELL)
                    html.Td("{{ r.asd === null ? '-' : r.asd.toFixed(3) }}", style=CELL)
                    html.Td("{{ r.score === null ? '-' : r.score.toFixed(3) }}", style=CELL)
                    html.Td("{{ r.state }}", classes="row-state", style=CELL)
                    html.Td("{{ r.why }}", classes="row-why", style=CELL + " font-size: 11px;")
            with html.Div(
                id="table_legend", classes="text-caption mb-2", v_if=("rows.length",), style="opacity: 0.85;"
            ):
                html.Span(
                    "",
                    style=f"display:inline-block;width:10px;height:10px;background:{ROW_PROPOSED};"
                    "border:1px solid #aaa;margin-right:3px;",
                )
                html.Span("proposed for labelling  ")
                html.Span(
                    "",
                    style=f"display:inline-block;width:10px;height:10px;background:{ROW_SHOWN};"
                    "border:1px solid #aaa;margin:0 3px 0 8px;",
                )
                html.Span("shown in the views. ")
                html.Span(TABLE_NOTE)
            with html.Details(id="probably_wrong", v_if=("wrong_rows.length",), classes="text-caption mb-2"):
                html.Summary(
                    "Where the model is probably wrong (check these predictions first)",
                    classes="text-subtitle-2",
                    style="cursor: pointer;",
                )
                html.Div(
                    "Ordered by class-balanced ASD. {{ wrong_evidence || 'No measured correlation.' }}",
                    id="wrong_evidence",
                    style="opacity: 0.85;",
                )
                with html.Ol(id="wrong_list", style="margin: 2px 0 0 18px;"):
                    html.Li(
                        "{{ r.volume }}{{ r.ood ? ' (' + r.ood + ')' : '' }}",
                        v_for="r in wrong_rows",
                        key="r.case",
                        classes="wrong-row",
                        click="trigger('select_row', [r.row])",
                        style="cursor: pointer;",
                    )
            html.Div("Showing: {{ current_volume }}", classes="text-subtitle-2", id="current_volume")
            with html.Div(classes="d-flex align-center ga-2"):
                v3.VSwitch(
                    v_model=("overlay_visible",),
                    label="Entropy overlay",
                    density="compact",
                    hide_details=True,
                    color="orange",
                    id="overlay_toggle",
                )
                v3.VSlider(
                    v_model=("overlay_opacity",),
                    min=0,
                    max=1,
                    step=0.05,
                    density="compact",
                    hide_details=True,
                    label="Opacity",
                    id="overlay_opacity",
                )
            html.Div(
                "High-entropy regions (click to centre the views)",
                v_if=("regions.length",),
                classes="text-subtitle-2 mt-1",
            )
            with html.Div(id="region_list"):
                html.Div(
                    "{{ reg.text }}",
                    v_for="reg in regions",
                    key="reg.index",
                    classes="region-item text-caption",
                    style="cursor: pointer; text-decoration: underline;",
                    click="trigger('jump_to_region', [reg.index])",
                )
            html.Div("DKD against ASD", v_if=("plot_svg",), classes="text-subtitle-2 mt-2")
            html.Div("{{ plot_legend }}", v_if=("plot_svg",), id="plot_legend", classes="text-caption")
            html.Div(v_html=("plot_svg",), id="scores_plot")
            html.Div("Volumes ({{ volumes.length }}) in {{ data_dir }}", classes="text-subtitle-2 mt-2")
            html.Div(
                "{{ volumes.join(', ') }}",
                id="volume_list",
                classes="text-caption mb-1",
                style="max-height: 60px; overflow-y: auto;",
            )
            with html.Div(v_if=("skipped.length",), id="skipped_messages"):
                v3.VAlert(
                    v_for="(m, i) in skipped",
                    key="i",
                    text=("m",),
                    type="warning",
                    density="compact",
                    classes="mb-1 text-caption",
                )
        self.server.trigger("select_row")(self.select_row)
        self.server.trigger("rank")(self.rank)
        self.server.trigger("adapt")(self.adapt)
        self.server.trigger("jump_to_region")(self.jump_to_region)


#: A ranking table cell: a gap after each column, text at the top of the row.
CELL = "padding: 1px 6px 1px 0; vertical-align: top;"
#: Row colours of the ranking table (also in its legend).
ROW_PROPOSED, ROW_SHOWN = "#5a3d00", "#37474f"
#: The ranking table's columns and what each means (a tooltip on the header).
COLUMNS = (
    ("#", "Rank: the order in which the query picked the volumes (1 first)."),
    ("Volume", "The volume's name (its file name without the extension)."),
    (
        "DKD",
        "Diversified knowledge divergence: how far the volume's features lie from what the pre-trained model "
        "knows and from the labelled volumes (higher: newer to the model).",
    ),
    (
        "ASD",
        "Anatomical segmentation difficulty: the prediction's entropy inside the predicted anatomy (higher: "
        "harder to segment).",
    ),
    (
        "Score",
        "The combined score when the volume was picked. Picks are greedy: each later pick is scored against "
        "the ones already picked, so the column need not fall with the rank.",
    ),
    (
        "State",
        "unlabeled, proposed (label it), labeled (a label file exists), pseudo-labeled (the model's own "
        "prediction is trusted for training).",
    ),
    ("Why", "Why the query proposed the volume (or held it back as out of distribution), in one line."),
)
TABLE_NOTE = (
    "DKD: newness to the model; ASD: difficulty; Score: value at the time of the pick (hover a column title for more)."
)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8080, allow_hosts=()) -> None:
    """Build the page and serve it until interrupted; prints the page's address with this start's secret."""
    policy = AccessPolicy.for_address(host, extra_hosts=allow_hosts)
    app = ASSFTWebApp(config, policy=policy)

    def announce(**_):
        print(
            f"\nASSFT annotator ready. Open this address in a browser (it holds this start's secret; keep it to "
            f"yourself):\n\n    {policy.url(app.server.port)}\n",
            flush=True,
        )
        if not is_loopback(host):
            print(
                f"Listening on {host}: anyone who can reach this address AND has the secret can drive the "
                "annotator, and the connection is not encrypted (plain http). On a remote GPU machine prefer "
                "--host 127.0.0.1 with an SSH tunnel (ssh -L 8080:127.0.0.1:8080 <machine>) and open the "
                "address above with the tunnel's port.",
                flush=True,
            )

    app.server.controller.on_server_ready.add(announce)
    app.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
