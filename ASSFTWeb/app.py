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
from typing import Callable, Optional

import slicer
from ASSFTModuleLib import overlay as overlay_logic
from ASSFTModuleLib.errors import ASSFTModuleError
from ASSFTModuleLib.jobRun import SubprocessJobRunner
from ASSFTModuleLib.jobs import describeQueryRound
from ASSFTModuleLib.parameters import AdaptMethod
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

from .plot import scores_svg
from .session import DEFAULT_OPACITY, DEFAULT_THRESHOLD, AnnotatorSession, ServeConfig

LAYOUT_ID = "ASSFT"
#: Brush diameter (mm) the Paint effect starts with on Annotate; the segment editor's slider changes it.
BRUSH_DIAMETER_MM = 4.0
LOG_LINES = 200


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class ASSFTWebApp(TrameApp):
    """The browser annotator on one scene (one round shared by every connected tab).

    Args:
        config: :class:`~ASSFTWeb.session.ServeConfig`.
        server: a trame server (a new one when None).
    """

    def __init__(self, config: ServeConfig, server=None):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.editor = self.slicer_app.segmentation_editor
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.axial_view(),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view(),
                                              ViewLayoutDefinition.sagittal_view()]),
        ]))
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.session = AnnotatorSession(self.slicer_app.scene, self.slicer_app.app_logic, config,
                                        self._runner_factory)
        self.case_view = None
        self.annotated_volume = None
        self.annotated_segmentation = None
        self._count_pending = False
        self._observed = set()
        self._rounds_error = ""  # the page's report of a bad Query rounds value, taken back once it is good
        self._init_state(config)
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
        return SubprocessJobRunner(lambda item: self._post(on_event, item),
                                   lambda *args: self._post(on_finished, *args))

    # ------------------------------------------------------------------ state
    def _init_state(self, config: ServeConfig) -> None:
        s = self.state
        s.trame__title = "ASSFT annotator"
        s.data_dir = str(config.data_dir)
        s.labels_dir = str(config.labels_folder)
        s.volumes = []
        s.skipped = []
        s.model_text = str(config.model)
        s.model_description = self.session.model_description()
        s.budget = int(config.budget)
        s.query_rounds = self.session.parameters.queryRounds
        s.adapt_methods = [{"title": m.label(), "value": m.value} for m in AdaptMethod]
        s.adapt_method = self.session.parameters.adaptMethod.value
        s.rows = []
        s.selected_row = -1
        s.ranking_round = 0
        s.ranking_caption = "Not ranked yet."
        s.plot_svg = ""
        s.overlay_visible = True
        s.overlay_opacity = DEFAULT_OPACITY
        s.regions = []
        s.slice_offsets = {}  # {slice view: offset} after the last region click (what each view's slider shows)
        s.current_volume = ""
        s.prefill = False
        s.voxel_counts = {}
        s.voxel_total = 0
        s.annotated_name = ""
        s.saved_message = ""
        s.job_running = False
        s.job_kind = ""
        s.progress = 0
        s.status = "Ready."
        s.error = ""
        s.log = []
        s.change("overlay_visible", "overlay_opacity")(self._on_overlay_changed)
        s.change("budget")(self._on_budget_changed)
        s.change("query_rounds")(self._on_query_rounds_changed)
        s.change("adapt_method")(self._on_adapt_method_changed)

    def _connect_controller(self) -> None:
        c = self.session.controller
        c.statusChanged.connect(self._on_status)
        c.progressChanged.connect(self._on_progress)
        c.runningChanged.connect(self._on_running)
        c.logLine.connect(self._on_log)
        c.failed.connect(self._on_failed)
        c.finished.connect(self._on_finished)

    def _on_status(self, text: str) -> None:
        self.state.status = text

    def _on_progress(self, fraction: float) -> None:
        self.state.progress = int(round(100 * float(fraction)))

    def _on_running(self, running: bool) -> None:
        self.state.job_running = bool(running)

    def _on_log(self, text: str) -> None:
        self.state.log = (list(self.state.log) + [text])[-LOG_LINES:]

    def _on_failed(self, message: str, details: str) -> None:
        self.state.error = message

    def _on_finished(self, outcome) -> None:
        self.state.job_running = False
        if outcome.status == "done":
            self.state.progress = 100
            self.state.ranking_round += 1
            model = self.session.model_description()
            self.state.model_description = model
            self.state.model_text = self.session.controller.modelReference()
            what = "Re-ranked with the adapted model" if outcome.kind in ADAPT_KINDS else "Ranked"
            caption = f"{what}: ranking {self.state.ranking_round}, model {model}."
            query_round = getattr(outcome.loaded, "queryRound", None)
            self.state.ranking_caption = caption + (f" {describeQueryRound(query_round)}"
                                                    if query_round is not None else "")
            self._refresh_rows()
            if self.state.rows:
                self.select_row(self.state.selected_row if self.state.selected_row >= 0 else 0)
        self.state.status = outcome.message or outcome.status
        self.state.job_kind = f"{outcome.kind} {outcome.status}"

    def _refresh_rows(self) -> None:
        rows = [{k: _finite(v) for k, v in row.items()} for row in self.session.ranking_rows()]
        self.state.rows = rows
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

    def _show_volume(self, node) -> None:
        self.slicer_app.display_manager.show_volume_in_slice_background(node)
        self.slicer_app.display_manager.reset_views()
        self.state.current_volume = node.GetName()

    def apply_model(self) -> None:
        try:
            self.session.set_model(self.state.model_text)
            self.state.model_description = self.session.model_description()
            self.state.error = ""
        except (ASSFTModuleError, AssftError, OSError) as error:
            self.state.error = str(error)

    def _on_budget_changed(self, budget, **_) -> None:
        try:
            self.session.parameters.budget = max(1, int(budget))
        except (TypeError, ValueError):
            self.state.error = f"The budget must be a whole number, got {budget!r}."

    def _on_query_rounds_changed(self, query_rounds, **_) -> None:
        """Checked as typed: a bad value is reported at once, and its report goes when the value is good again
        (Rank and Adapt check the field's value once more)."""
        try:
            self.session.set_query_rounds(query_rounds)
        except ASSFTModuleError as error:
            self.state.error = self._rounds_error = str(error)
            return
        if self._rounds_error and self.state.error == self._rounds_error:
            self.state.error = ""
        self._rounds_error = ""

    def _on_adapt_method_changed(self, adapt_method, **_) -> None:
        try:
            self.session.set_adapt_method(adapt_method)
        except ASSFTModuleError as error:
            self.state.error = str(error)

    # ------------------------------------------------------------------ jobs
    def start_job(self, kind: str) -> None:
        """Rank or Adapt; refused (with the reason on the page) while a job runs or when nothing can run."""
        self.state.error = ""
        try:
            self.session.set_query_rounds(self.state.query_rounds)  # what the field shows, never an older value
            spec = self.session.start_job(kind)
        except (ASSFTModuleError, AssftError, OSError) as error:
            self.state.error = str(error)
            return
        if spec is not None:
            self.state.job_running = True
            self.state.job_kind = f"{kind} running"
            self.state.progress = 0

    def rank(self) -> None:
        self.start_job("rank")

    def adapt(self) -> None:
        self.start_job("adapt")

    def cancel(self) -> None:
        self.session.cancel()

    # ------------------------------------------------------------------ look
    def select_row(self, row: int) -> None:
        row = int(row)
        try:
            view = self.session.show_row(row, DEFAULT_THRESHOLD, float(self.state.overlay_opacity))
        except (ASSFTModuleError, AssftError, OSError, IndexError) as error:
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

    def jump_to_region(self, index: int) -> None:
        if self.case_view is None or self.case_view.regionsNode is None:
            return
        self.state.slice_offsets = self.session.logic.jumpToRegion(self.case_view.regionsNode, int(index))

    def _on_overlay_changed(self, overlay_visible, overlay_opacity, **_) -> None:
        view = self.case_view
        if view is None or view.overlayNode is None:
            return
        if overlay_visible:
            overlay_logic.showOverlay(self.slicer_app.scene, view.volumeNode, view.overlayNode, DEFAULT_THRESHOLD,
                                      float(overlay_opacity))
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
            return
        counts = self.session.voxel_counts(volume, self.annotated_segmentation)
        self.state.voxel_counts = counts
        self.state.voxel_total = int(sum(counts.values()))

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
        self._refresh_rows()

    # ------------------------------------------------------------------ page
    def _build_ui(self) -> None:
        with ViewerLayout(self.server, title="ASSFT annotator") as self.layout:
            with self.layout.drawer:
                self.editor_ui = SegmentEditorUI()
                self.editor_logic.set_ui(self.editor_ui)
            names = self.layout.typed_state.name
            with self.layout.toolbar:
                with v3.VBtn(icon=True, size="small", variant="text", id="btn_editor",
                             click=f"{names.is_drawer_visible} = !{names.is_drawer_visible}; "
                                   f"{names.active_tool} = 'SegmentEditorUI'"):
                    v3.VIcon("mdi-brush")
            with self.layout.content:
                self.layout_manager.initialize_layout_grid(self.layout)
            with v3.VNavigationDrawer(location="right", permanent=True, width=460, id="assft_panel"):
                self._build_panel()

    def _build_panel(self) -> None:
        with html.Div(classes="pa-3", style="font-size: 13px;"):
            v3.VAlert(v_if=("error",), text=("error",), type="error", density="compact", closable=True,
                      id="error_message", classes="mb-2")
            html.Div("Volumes ({{ volumes.length }}) in {{ data_dir }}", classes="text-subtitle-2")
            html.Div("{{ volumes.join(', ') }}", id="volume_list", classes="text-caption mb-1")
            with html.Div(v_if=("skipped.length",), id="skipped_messages"):
                v3.VAlert(v_for="(m, i) in skipped", key="i", text=("m",), type="warning", density="compact",
                          classes="mb-1 text-caption")
            with v3.VRow(dense=True, classes="mt-1"):
                with v3.VCol(cols=6):
                    v3.VTextField(v_model=("model_text",), label="Model (default, card JSON or store folder)",
                                  density="compact", hide_details=True, id="model_field",
                                  append_inner_icon="mdi-check", click_append_inner=self.apply_model)
                with v3.VCol(cols=3):
                    v3.VTextField(v_model_number=("budget",), type="number", min=1, label="Budget",
                                  density="compact", hide_details=True, id="budget_field")
                with v3.VCol(cols=3):
                    v3.VTextField(v_model_number=("query_rounds",), type="number", min=1, label="Query rounds",
                                  density="compact", hide_details=True, id="query_rounds_field",
                                  title="Spread the budget over this many rounds: each Rank proposes the current "
                                        "round's share; label it, Adapt Model, and the re-ranking proposes the next "
                                        "round with the adapted model. 1: the whole budget at once.")
            html.Div("{{ model_description }}", classes="text-caption mb-2", id="model_description")
            v3.VSelect(v_model=("adapt_method",), items=("adapt_methods",), label="Adapt method",
                       density="compact", hide_details=True, id="adapt_method", classes="mb-2")
            with html.Div(classes="d-flex ga-2 mb-2"):
                v3.VBtn("Rank Volumes", click=self.rank, disabled=("job_running",), color="primary", size="small",
                        id="btn_rank")
                v3.VBtn("Adapt Model", click=self.adapt, disabled=("job_running",), color="secondary",
                        size="small", id="btn_adapt")
                v3.VBtn("Cancel", click=self.cancel, disabled=("!job_running",), color="error", size="small",
                        variant="outlined", id="btn_cancel")
            v3.VProgressLinear(model_value=("progress",), height=14, color="green", id="job_progress",
                               striped=("job_running",))
            html.Div("{{ progress }}% | {{ job_kind }} | {{ status }}", id="job_status",
                     classes="text-caption mb-2", style="word-break: break-all;")
            html.Div("{{ ranking_caption }}", id="ranking_caption", classes="text-subtitle-2")
            with html.Table(id="ranking_table", style="width: 100%; border-collapse: collapse;",
                            classes="text-caption mb-2"):
                with html.Tr():
                    for title in ("#", "Volume", "DKD", "ASD", "Score", "State"):
                        html.Th(title, style="text-align: left; border-bottom: 1px solid #666;")
                with html.Tr(v_for="r in rows", key="r.case", classes="ranking-row",
                             click="trigger('select_row', [r.row])",
                             style=("{cursor: 'pointer', background: r.row === selected_row ? '#37474f' : "
                                    "(r.state === 'proposed' ? '#3e2a00' : '')}",)):
                    html.Td("{{ r.rank || '-' }}")
                    html.Td("{{ r.volume }}")
                    html.Td("{{ r.dkd === null ? '-' : r.dkd.toFixed(3) }}")
                    html.Td("{{ r.asd === null ? '-' : r.asd.toFixed(3) }}")
                    html.Td("{{ r.score === null ? '-' : r.score.toFixed(3) }}")
                    html.Td("{{ r.state }}", classes="row-state")
            html.Div("Showing: {{ current_volume }}", classes="text-subtitle-2", id="current_volume")
            with html.Div(classes="d-flex align-center ga-2"):
                v3.VSwitch(v_model=("overlay_visible",), label="Entropy overlay", density="compact",
                           hide_details=True, color="orange", id="overlay_toggle")
                v3.VSlider(v_model=("overlay_opacity",), min=0, max=1, step=0.05, density="compact",
                           hide_details=True, label="Opacity", id="overlay_opacity")
            html.Div("High-entropy regions (click to centre the views)", v_if=("regions.length",),
                     classes="text-subtitle-2 mt-1")
            with html.Div(id="region_list"):
                html.Div("{{ reg.text }}", v_for="reg in regions", key="reg.index", classes="region-item text-caption",
                         style="cursor: pointer; text-decoration: underline;",
                         click="trigger('jump_to_region', [reg.index])")
            with html.Div(classes="d-flex align-center ga-2 mt-2"):
                v3.VBtn("Annotate", click=self.annotate, size="small", color="primary", id="btn_annotate")
                v3.VCheckbox(v_model=("prefill",), label="Pre-fill with the prediction", density="compact",
                             hide_details=True, id="prefill_toggle")
            html.Div("Labeled voxels: {{ voxel_total }} ({{ Object.entries(voxel_counts).map(([k, v]) => k + ' '"
                     " + v).join(', ') }}) in {{ annotated_name || 'no volume yet' }}", id="voxel_counts",
                     classes="text-caption")
            with html.Div(classes="d-flex align-center ga-2 mt-1"):
                v3.VBtn("Save labels", click=self.save_labels, size="small", color="success", id="btn_save")
                html.Span("to {{ labels_dir }}", classes="text-caption")
            html.Div("{{ saved_message }}", id="saved_message", classes="text-caption mb-2",
                     style="word-break: break-all;")
            html.Div("DKD against ASD (orange: proposed, blue: pseudo-labeled, grey: other)", v_if=("plot_svg",),
                     classes="text-subtitle-2")
            html.Div(v_html=("plot_svg",), id="scores_plot")
        self.server.trigger("select_row")(self.select_row)
        self.server.trigger("jump_to_region")(self.jump_to_region)


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Build the page and serve it until interrupted."""
    app = ASSFTWebApp(config)
    app.server.start(host=host, port=port, open_browser=False)
