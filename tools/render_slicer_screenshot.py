"""Render ``Screenshots/slicer-module.png``: the ASSFT module's scene after a ranking of the shipped sample, drawn by
Slicer's own slice views (slicer-core MRML displayable managers, rendered offscreen through VTK: EGL without a
display), for the ExtensionsIndex and the README. Desktop Slicer cannot run here, so the module's Qt panel is not
in the picture; its ranking table is drawn beside the views from the module's table node.

What is shown is what the module does, through its own MRML logic (``ASSFTModuleLib.logic.ASSFTSceneLogic``): the
sample pool loaded with Slicer's reader, a real ``rank`` job run by the engine's worker
(``python -m ASSFTActive.worker``), its result loaded into the scene, the top proposed volume shown
(``showCase``: the volume, its entropy overlay and its high-entropy regions) and Annotate with pre-fill (the
model's prediction as the class segmentation to correct), the slice views centred on the first region.

Usage::

    python tools/render_slicer_screenshot.py [--output Screenshots/slicer-module.png] [--volumes 12]

Needs the web extra (trame-slicer, slicer-core, pillow) and the engine's requirements; takes about half a minute on
two CPU cores (the ranking).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool" / "images"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
#: Pixels of the axial view (the coronal and sagittal views are half as wide and high, stacked beside it).
VIEW_SIZE = 600
PANEL_WIDTH = 520
ZOOM = 1.6
#: Row colours of the panel's table, as the module's (proposed rows stand out).
STATE_COLOURS = {"proposed": (255, 236, 179), "labeled": (200, 230, 201), "pseudo-labeled": (225, 236, 250)}

for path in (str(REPO), str(REPO / "ASSFTModule")):
    if path not in sys.path:
        sys.path.insert(0, path)


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    try:
        return ImageFont.truetype(FONT_BOLD if bold else FONT, size)
    except OSError:  # no DejaVu on this machine: PIL's own font
        return ImageFont.load_default()


def rank_sample(logic, work: Path, volumes: int):
    """Load ``volumes`` volumes of the sample with Slicer's reader, rank them with the worker, load the result."""
    from ASSFTModuleLib.geometry import loadVolumeFile

    data = work / "data"
    data.mkdir(parents=True)
    for path in sorted(SAMPLE.glob("*.nii.gz"))[:volumes]:
        shutil.copy(path, data)
        loadVolumeFile(logic.volumesLogic, str(data / path.name))
    spec = logic.prepareJob("rank", work / "assft", "default", budget=2)
    done = subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", str(spec.jobDir)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(
            f"the rank job failed (exit code {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return logic.loadJobResult(spec.jobDir, "default")


def capture(view, size: int):
    """The view rendered offscreen (its window ``size`` x ``size`` pixels), as a PIL image."""
    import vtk
    from PIL import Image
    from vtk.util import numpy_support

    window = view.render_window()
    view.render()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    return Image.fromarray(pixels.copy())


def draw_panel(rows, shown: str, model: str, height: int, segments=()):
    """The module panel's ranking table and what the views show, drawn from the ranking table's rows;
    ``segments``: ``(name, (r, g, b) in [0, 1])`` of the shown segmentation, for the legend."""
    from PIL import Image, ImageDraw

    panel = Image.new("RGB", (PANEL_WIDTH, height), (245, 245, 245))
    draw = ImageDraw.Draw(panel)
    y = 14
    draw.text((16, y), "ASSFT: Rank Volumes", font=_font(20, bold=True), fill=(20, 20, 20))
    y += 34
    draw.text((16, y), f"Model: {model}", font=_font(13), fill=(60, 60, 60))
    y += 26
    columns = (("Volume", 16), ("DKD", 190), ("ASD", 255), ("Score", 320), ("Rank", 385), ("State", 430))
    for name, x in columns:
        draw.text((x, y), name, font=_font(13, bold=True), fill=(20, 20, 20))
    y += 22
    for row in rows:
        colour = STATE_COLOURS.get(row["state"])
        if row["volume"] == shown:
            colour = (179, 212, 252)
        if colour:
            draw.rectangle((10, y - 2, PANEL_WIDTH - 10, y + 18), fill=colour)
        values = (
            row["volume"],
            _number(row["dkd"]),
            _number(row["asd"]),
            _number(row["score"]),
            str(row["rank"]) if row["rank"] > 0 else "-",
            row["state"],
        )
        for (_, x), text in zip(columns, values):
            draw.text((x, y), text, font=_font(13), fill=(20, 20, 20))
        y += 22
    y += 12
    for line in (
        f"Shown: {shown}, the top proposed volume,",
        "with its entropy overlay (where the model is unsure)",
        "and the model's prediction to correct (Annotate",
        "with pre-fill); views centred on its first",
        "high-entropy region.",
    ):
        draw.text((16, y), line, font=_font(13), fill=(40, 40, 40))
        y += 19
    y += 10
    for name, colour in segments:
        draw.rectangle((16, y + 2, 30, y + 14), fill=tuple(int(255 * c) for c in colour), outline=(60, 60, 60))
        draw.text((38, y), f"{name} (the model's prediction, to correct)", font=_font(13), fill=(40, 40, 40))
        y += 20
    draw.text((16, y), "Heat colours: voxel-wise entropy above 0.2 (overlay, 50 %)", font=_font(13), fill=(40, 40, 40))
    draw.text((16, y + 20), "R1: the first high-entropy region", font=_font(13), fill=(40, 40, 40))
    return panel


def _number(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "Screenshots" / "slicer-module.png")
    parser.add_argument("--volumes", type=int, default=12, help="sample volumes to rank (default: all 12)")
    args = parser.parse_args(argv)

    from ASSFTModuleLib import ranking
    from ASSFTModuleLib.logic import ASSFTSceneLogic
    from ASSFTModuleLib.records import CaseState
    from PIL import Image
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import ViewLayoutDefinition
    from trame_slicer.views.direct_view_factory import DirectViewFactory

    app = SlicerApp()
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = [
        app.view_manager.create_view(definition)
        for definition in (
            ViewLayoutDefinition.axial_view(),
            ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
        )
    ]
    sizes = (VIEW_SIZE, VIEW_SIZE // 2, VIEW_SIZE // 2)
    for view, size in zip(views, sizes):
        view.render_window().SetSize(size, size)
    logic = ASSFTSceneLogic(app.scene, app.app_logic)
    with tempfile.TemporaryDirectory(prefix="assft-screenshot-") as folder:
        loaded = rank_sample(logic, Path(folder), args.volumes)
        table = loaded.tableNode
        top = next(row for row in range(table.GetNumberOfRows()) if ranking.rankedCaseFromTable(table, row)[0].selected)
        shown = logic.showCase(table, top, 0.2, 0.5)
        card = logic.modelCard("default")
        segmentation = logic.annotationSegmentation(shown.volumeNode, card, str(shown.case.prediction))
        segmentation.GetDisplayNode().SetVisibility(True)
        segmentation.GetDisplayNode().SetOpacity2DFill(0.35)
        for view in views:
            view.fit_view_to_content()
        if shown.regionsNode is not None and shown.regions:
            logic.jumpToRegion(shown.regionsNode, 0)
        for view in views:
            view.zoom(ZOOM)
        images = [capture(view, size) for view, size in zip(views, sizes)]
        rows = []
        for row in range(table.GetNumberOfRows()):
            case, nodeId = ranking.rankedCaseFromTable(table, row)
            node = app.scene.GetNodeByID(nodeId) if nodeId else None
            rows.append(
                {
                    "volume": node.GetName() if node is not None else case.caseId,
                    "dkd": case.dkd,
                    "asd": case.asd,
                    "score": case.score,
                    "rank": case.rank,
                    "state": CaseState.of(case.labeled, case.pseudoLabeled, case.selected),
                }
            )
        name = shown.volumeNode.GetName()
        content = segmentation.GetSegmentation()
        segments = [
            (content.GetNthSegment(i).GetName(), content.GetNthSegment(i).GetColor())
            for i in range(content.GetNumberOfSegments())
        ]
        model = f"{card.name} ({', '.join(card.class_names[1:])})"
    height = max(VIEW_SIZE, 140 + 22 * len(rows) + 200)
    canvas = Image.new("RGB", (PANEL_WIDTH + VIEW_SIZE + VIEW_SIZE // 2, height), (0, 0, 0))
    canvas.paste(draw_panel(rows, name, model, height, segments), (0, 0))
    canvas.paste(images[0], (PANEL_WIDTH, 0))
    canvas.paste(images[1], (PANEL_WIDTH + VIEW_SIZE, 0))
    canvas.paste(images[2], (PANEL_WIDTH + VIEW_SIZE, VIEW_SIZE // 2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial.png")
    canvas.save(partial)
    partial.replace(args.output)
    print(f"wrote {args.output} ({canvas.size[0]}x{canvas.size[1]}): {name} of {len(rows)} ranked volumes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
