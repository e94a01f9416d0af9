"""The browser annotator (``assft serve``) in a real headless Chromium against the real server.

One round as a user does it: open the page, Rank Volumes on the shipped sample data with the embedded model, see
the ranking rows, toggle the entropy overlay, paint a stroke of each class with the mouse (the second class chosen in
the page's segment list) and see the segment voxel counts grow, Save labels and find the file on disk with the
painted voxels, Adapt Model (tiny training through the job spec, the product's label checks on: two strokes are
refused as a partial label, Train anyway adapts) and see progress reach done and the table re-ranked, in a second
tab opened while the job runs after the first tab was closed.
A second, shorter round: a region click moves the slice views, Annotate pre-filled with the prediction, and Cancel
during Adapt (the job ends cancelled, the model unchanged, the buttons usable again). Issue 26's items 1, 2 and 7: a
saved case's labels are not drawn over the next case shown (counted in the rendered views), the shown ranking's job
folder outlives three cancelled Adapts, and the bar only moves forward and ends in words. Screenshots go to
``$ASSFT_SCREENSHOT_DIR`` (the committed ones: ``Testing/Benchmarks/results/browser_ui/``), else a temporary folder.

Needs Debian's ``chromium`` (never a browser downloaded by Playwright), Playwright for Python, trame-slicer and Mesa
EGL for server-side rendering; skips with the reason when one is missing.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"
CHROMIUM = Path(os.environ.get("ASSFT_CHROMIUM", "/usr/bin/chromium"))
#: Where screenshots go: set ASSFT_SCREENSHOT_DIR=Testing/Benchmarks/results/browser_ui to refresh the committed
#: ones (README's picture is a copy of 05); by default a temporary folder, so a test run never edits the tree.
SHOTS = Path(os.environ.get("ASSFT_SCREENSHOT_DIR", tempfile.mkdtemp(prefix="assft-browser-shots-")))
CASES = ("hippocampus_011", "hippocampus_023", "hippocampus_026", "hippocampus_035")
#: The smallest real Adapt: two supervised and one semi-supervised step on 16^3 patches, guard off (one labelled
#: volume cannot be cross-validated); the label checks stay on (a stroke per class is refused as a partial label
#: until the page's Train anyway).
TINY_FINETUNE = {
    "train": {"iterations": 2, "batch_size": 1, "patch_size": [16, 16, 16], "augment": False},
    "semi_iterations": 1,
    "validation": {"guard": False},
}
#: An Adapt long enough to be cancelled while it trains.
LONG_FINETUNE = {
    "train": {"iterations": 5000, "batch_size": 1, "patch_size": [16, 16, 16], "augment": False},
    "semi_iterations": 1,
    "validation": {"guard": False},
}

pytestmark = pytest.mark.slow


def _missing() -> str:
    if not CHROMIUM.is_file():
        return f"Debian chromium not found at {CHROMIUM} (apt-get install chromium; or set ASSFT_CHROMIUM)"
    for module, what in (("playwright.sync_api", "playwright"), ("trame_slicer", "trame-slicer[standalone]==2.0.0")):
        try:
            __import__(module)
        except ImportError as exc:
            return f"{what} is not installed ({exc}); pip install -e '.[web]'"
    if ctypes.util.find_library("EGL") is None:
        return "Mesa EGL is missing (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri); no server-side rendering"
    return ""


_REASON = _missing()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from ASSFTActive.io import Volume, read_volume, write_volume  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_address(process: subprocess.Popen, log: Path, timeout: float = 180.0) -> str:
    """The page's address with this start's secret, as ``assft serve`` prints it (nothing else opens the page)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(r"http://127\.0\.0\.1:\d+/\?secret=[A-Za-z0-9_-]+", log.read_text())
        if found:
            return found.group(0)
        if process.poll() is not None:
            raise AssertionError(f"assft serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"assft serve printed no address within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def serve(tmp_path):
    """``serve(finetune, labels=(), keep_classes=None)``: ``assft serve`` on a copy of four sample volumes plus two
    files it must skip (and the sample's label files of the cases ``labels``, with only ``keep_classes`` kept when
    given), with ``finetune`` as the engine's fine-tuning settings; every server is stopped by its process id at the
    end."""
    processes = []

    def start(finetune: dict, labels=(), keep_classes=None) -> dict:
        data = tmp_path / "data"
        data.mkdir()
        for case in CASES:
            shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", data)
        for case in labels:
            (data / "labels").mkdir(exist_ok=True)
            shutil.copy(SAMPLE / "labels" / f"{case}.nii.gz", data / "labels")
            if keep_classes is not None:  # a half-labelled volume: the other classes erased
                path = data / "labels" / f"{case}.nii.gz"
                label = read_volume(path)
                write_volume(
                    Volume(
                        array=np.where(np.isin(label.array, keep_classes), label.array, 0).astype(np.uint8),
                        affine=label.affine,
                    ),
                    path,
                )
        (data / "notes.txt").write_text("not a volume\n")
        (data / "truncated.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
        port = _free_port()
        log = tmp_path / "server.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        command = [
            sys.executable,
            "-m",
            "ASSFTActive",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--budget",
            "2",
            "--finetune-json",
            json.dumps(finetune),
        ]
        with open(log, "w") as out:
            process = subprocess.Popen(
                command, cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        processes.append(process)
        url = _wait_address(process, log)
        assert url.startswith(f"http://127.0.0.1:{port}/?secret=")
        return {"url": url, "data": data, "log": log, "process": process}

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and any worker it started (its own session)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture()
def chromium():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def _labeled_voxels(page) -> int:
    """``N`` of "Labeled voxels: N (anterior a, posterior p) in <volume>"; 0 before Annotate ("none yet")."""
    text = page.inner_text("#voxel_counts").split(":", 1)[1].split("(", 1)[0].strip()
    return 0 if text.startswith("none yet") else int(text)


def _class_voxels(page) -> dict:
    text = page.inner_text("#voxel_counts")
    inside = text.split("(", 1)[1].split(")", 1)[0]
    return {name: int(count) for name, count in (part.rsplit(" ", 1) for part in inside.split(", ") if part)}


def _wait_until(condition, timeout: float, what) -> None:
    """Poll ``condition`` until true; ``what`` (text, or a function giving it) says what failed to happen."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what() if callable(what) else what}")
        time.sleep(0.3)


def _open(browser, url: str, height: int = 1000):
    page = browser.new_page(viewport={"width": 1600, "height": height})
    page.goto(url)
    expect(page.locator("#btn_rank")).to_be_visible(timeout=90_000)
    return page


def _rank(page) -> None:
    page.click("#btn_rank")
    expect(page.locator("#ranking_table tr.ranking-row")).to_have_count(len(CASES), timeout=180_000)
    expect(page.locator("#job_status")).to_contain_text("rank done", timeout=30_000)
    expect(page.locator("#region_list .region-item").first).to_be_visible(timeout=30_000)


def _select_segment(page, name: str) -> None:
    """Click the segment called ``name`` in the segment editor's list (its name is an input's value)."""
    script = """(name) => {
        const items = Array.from(document.querySelectorAll('.v-list-item'));
        const item = items.find(i => Array.from(i.querySelectorAll('input')).some(x => x.value === name));
        if (item) { item.click(); }
        return !!item; }"""
    assert page.evaluate(script, name), f"no segment called {name!r} in the page's segment list"
    active = """(name) => Array.from(document.querySelectorAll('.v-list-item.v-list-item--active input'))
        .some(x => x.value === name)"""
    _wait_until(lambda: page.evaluate(active, name), 15, f"segment {name!r} is the active one")


def _stroke(page, x0: float, y0: float, dx: float, dy: float, steps: int = 20) -> None:
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(steps):
        page.mouse.move(x0 + dx * step, y0 + dy * step)
        time.sleep(0.05)
    page.mouse.up()


def _slice_offsets(page) -> list:
    """The slice offset each slice view's slider shows, in page order (axial, coronal, sagittal)."""
    return page.evaluate(
        "() => Array.from(document.querySelectorAll('.slice-slider [role=slider]'))"
        ".map(e => parseFloat(e.getAttribute('aria-valuenow')))"
    )


def _row_of(page, volume: str):
    return page.locator("#ranking_table tr.ranking-row").filter(has_text=volume)


def _axial_view_centre(page) -> tuple:
    rects = page.evaluate(
        "() => Array.from(document.querySelectorAll('.v-main img')).map(e => {"
        "const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })"
    )
    assert rects, "the page shows no rendered slice views"
    x, y, w, h = max(rects, key=lambda r: r[2] * r[3])  # the axial view is the large one
    return x + w / 2, y + h / 2


def test_a_whole_round_rank_look_paint_save_adapt_in_headless_chromium(serve, chromium):
    import nibabel as nib

    served = serve(TINY_FINETUNE)
    data = served["data"]
    page = _open(chromium, served["url"])
    # the pool, and the two files that are not volumes reported and skipped
    expect(page.locator("#volume_list")).to_contain_text(", ".join(CASES))
    expect(page.locator("#skipped_messages")).to_contain_text("Skipped notes.txt")
    expect(page.locator("#skipped_messages")).to_contain_text("Skipped truncated.nii.gz")

    # Rank
    _rank(page)
    expect(page.locator("#ranking_caption")).to_contain_text("Ranked: ranking 1")
    states = page.locator("#ranking_table td.row-state").all_inner_texts()
    assert states.count("proposed") == 2, states
    first_scores = page.inner_text("#ranking_table")
    assert page.locator("#scores_plot circle").count() == len(CASES)
    time.sleep(2)
    _shot(page, "01_ranked_overlay_on.png")

    # Look: overlay off and on
    toggle = page.locator("#overlay_toggle")  # Vuetify puts the id on the switch's input
    expect(toggle).to_be_checked()
    toggle.click()
    expect(toggle).not_to_be_checked()
    time.sleep(2)
    _shot(page, "02_overlay_off.png")
    toggle.click()
    expect(toggle).to_be_checked()

    # Paint one stroke of each class with the mouse on the proposed volume; the second class is chosen in the
    # segment editor's list, as a user does
    volume = page.inner_text("#current_volume").split(":", 1)[1].strip()
    page.click("#btn_annotate")
    expect(page.locator("#voxel_counts")).to_contain_text("anterior 0", timeout=30_000)
    assert _labeled_voxels(page) == 0
    time.sleep(2)
    cx, cy = _axial_view_centre(page)
    _stroke(page, cx - 40, cy + 10, 4, 1)
    _wait_until(lambda: _class_voxels(page).get("anterior", 0) > 0, 30, "the anterior stroke is counted")
    _select_segment(page, "posterior")
    _stroke(page, cx - 40, cy - 70, 4, 1)
    _wait_until(lambda: _class_voxels(page).get("posterior", 0) > 0, 30, "the posterior stroke is counted")
    time.sleep(1)  # a last count after the stroke's final modification
    counts = _class_voxels(page)
    assert counts["anterior"] > 0 and counts["posterior"] > 0, counts
    assert _labeled_voxels(page) == counts["anterior"] + counts["posterior"]
    _shot(page, "03_painted.png")

    # Save labels: the file is next to the data and holds the painted voxels; a second save keeps a backup
    page.click("#btn_save")
    expect(page.locator("#saved_message")).to_contain_text("Saved", timeout=30_000)
    label_file = data / "labels" / f"{volume}.nii.gz"
    assert label_file.is_file()
    labels = np.asanyarray(nib.load(str(label_file)).dataobj)
    image = nib.load(str(data / f"{volume}.nii.gz"))
    assert labels.shape == image.shape
    assert int(np.count_nonzero(labels == 1)) == counts["anterior"]
    assert int(np.count_nonzero(labels == 2)) == counts["posterior"]
    page.click("#btn_save")
    expect(page.locator("#saved_message")).to_contain_text("previous file is kept", timeout=30_000)
    backups = list((data / "labels" / "backup").glob(f"{volume}.*.nii.gz"))
    assert len(backups) == 1

    # Adapt (label checks on): two strokes are a partial label, which the checks refuse with the page's choice
    # instead of command-line advice; Train anyway adapts. The buttons lock while it runs; a second tab opens on
    # the running job and the first tab closes, which must neither cancel nor disturb the job
    page.click("#btn_adapt")
    expect(page.locator("#job_status")).to_contain_text("adapt error", timeout=300_000)
    expect(page.locator("#error_text")).to_contain_text("the labels look wrong")
    page.click("#btn_train_anyway")
    expect(page.locator("#btn_adapt")).to_be_disabled(timeout=10_000)
    expect(page.locator("#btn_cancel")).to_be_enabled()
    expect(page.locator("#error_message")).to_have_count(0)
    _shot(page, "04_adapting.png")
    other = _open(chromium, served["url"], height=1400)  # tall enough for the chart under the table
    expect(other.locator("#job_status")).to_contain_text("adapt running", timeout=30_000)
    expect(other.locator("#btn_adapt")).to_be_disabled()
    expect(other.locator("#ranking_caption")).to_contain_text("Ranked: ranking 1")
    assert other.inner_text("#ranking_table") == page.inner_text("#ranking_table")
    page.close()
    expect(other.locator("#job_status")).to_contain_text(re.compile("adapt (done|error|cancelled)"), timeout=600_000)
    assert "adapt done" in other.inner_text("#job_status"), (
        other.inner_text("#job_status"),
        other.inner_text("#error_message") if other.locator("#error_message").count() else "",
    )
    expect(other.locator("#job_status")).to_contain_text("100%")
    expect(other.locator("#ranking_caption")).to_contain_text("Re-ranked with the adapted model: ranking 2")
    expect(other.locator("#model_description")).to_contain_text("adapted")
    expect(other.locator("#ranking_table tr.ranking-row")).to_have_count(len(CASES))
    assert other.inner_text("#ranking_table") != first_scores
    assert "labeled" in other.locator("#ranking_table td.row-state").all_inner_texts()
    assert list((data / ".assft" / "models").rglob("card.json")), "the adapted model is in the store"
    # the README picture: the painted volume again, with its overlay, in the re-ranked table and the chart
    _row_of(other, volume).click()
    expect(other.locator("#current_volume")).to_contain_text(volume, timeout=30_000)
    expect(other.locator("#scores_plot circle")).to_have_count(len(CASES) - 1)  # a labelled volume has no DKD
    time.sleep(3)
    _shot(other, "05_adapted_reranked.png")


def test_region_click_prefill_and_cancel_during_adapt_in_headless_chromium(serve, chromium):
    served = serve(LONG_FINETUNE)
    page = _open(chromium, served["url"])
    _rank(page)
    model_before = page.inner_text("#model_description")
    assert "adapted" not in model_before

    # a region click moves the slice views: each view's slider ends at the offset of the plane through the
    # region's centre that the server computed (Slicer's own slice-offset rule)
    before = _slice_offsets(page)
    assert len(before) == 3, before
    page.locator("#region_list .region-item").nth(1).click()
    _wait_until(
        lambda: page.evaluate("() => window.trame.state.get('slice_offsets')"),
        20,
        "the server reports the region's slice offsets",
    )
    expected = sorted(page.evaluate("() => Object.values(window.trame.state.get('slice_offsets'))"))
    assert len(expected) == 3, expected
    _wait_until(
        lambda: all(abs(a - e) <= 1.0 for a, e in zip(sorted(_slice_offsets(page)), expected)),
        20,
        lambda: f"the sliders show {expected} (offsets {before} -> {_slice_offsets(page)})",
    )
    assert max(abs(a - b) for a, b in zip(_slice_offsets(page), before)) > 1.0

    # Annotate pre-filled with the model's prediction: both classes have voxels before any painting
    page.locator("#prefill_toggle").check()
    page.click("#btn_annotate")
    _wait_until(lambda: _labeled_voxels(page) > 0, 30, "the prediction fills the segments")
    counts = _class_voxels(page)
    assert counts["anterior"] > 0 and counts["posterior"] > 0, counts
    _shot(page, "06_prefilled.png")

    # Adapt on the pre-filled labels, cancelled while it trains
    page.click("#btn_adapt")
    expect(page.locator("#btn_cancel")).to_be_enabled(timeout=10_000)
    expect(page.locator("#job_status")).to_contain_text("Adapt: train", timeout=240_000)  # the phase, in words
    page.click("#btn_cancel")
    expect(page.locator("#job_status")).to_contain_text("adapt cancelled", timeout=60_000)
    expect(page.locator("#job_status")).to_contain_text("The active model is unchanged")
    expect(page.locator("#btn_adapt")).to_be_enabled()
    expect(page.locator("#btn_rank")).to_be_enabled()
    expect(page.locator("#btn_cancel")).to_be_disabled()
    assert page.inner_text("#model_description") == model_before
    assert page.input_value("#model_field") == "default"
    assert not list((served["data"] / ".assft" / "models").rglob("card.json")), "a cancelled job stored a model"
    _shot(page, "07_cancelled.png")


def test_adapt_with_sfr_plus_chosen_on_the_page_starts_an_sfr_job_that_cancels(serve, chromium):
    served = serve(TINY_FINETUNE, labels=[CASES[0]])
    page = _open(chromium, served["url"])
    expect(page.locator("#adapt_method")).to_have_value("ASSFT")  # the select's input shows the label
    page.locator("#adapt_method").click(force=True)  # Vuetify's field wrapper takes the pointer events
    page.get_by_role("option", name="SFR+").click()
    expect(page.locator("#adapt_method")).to_have_value("SFR+")
    _wait_until(
        lambda: page.evaluate("() => window.trame.state.get('adapt_method')") == "sfr_plus",
        10,
        "the page's choice reaches the server",
    )

    page.click("#btn_adapt")  # SFR's default settings: thousands of SAM steps, so it is still running when cancelled
    expect(page.locator("#btn_cancel")).to_be_enabled(timeout=10_000)
    jobs = served["data"] / ".assft" / "jobs"
    _wait_until(lambda: list(jobs.glob("*-sfr/job.json")), 60, "the job's files are written (off the event loop)")
    (job,) = list(jobs.glob("*-sfr"))
    spec = json.loads((job / "job.json").read_text())
    assert spec["kind"] == "sfr" and spec["sfr"] == {"method": "sfr_plus"} and list(spec["labels"]) == [CASES[0]]
    expect(page.locator("#job_status")).to_contain_text("Sfr: sfr", timeout=240_000)  # a phase of the SFR run
    page.click("#btn_cancel")
    expect(page.locator("#job_status")).to_contain_text("sfr cancelled", timeout=60_000)
    expect(page.locator("#btn_adapt")).to_be_enabled()
    assert not list((served["data"] / ".assft" / "models").rglob("card.json")), "a cancelled job stored a model"


def test_query_rounds_typed_on_the_page_rank_the_first_rounds_share(serve, chromium):
    """The page's Query rounds field: a value below 1 is refused on the page, 2 rounds of the budget 2 make Rank
    propose one volume (round 1 of 2), written into the job's query and said in the caption."""
    served = serve(TINY_FINETUNE)
    page = _open(chromium, served["url"])
    expect(page.locator("#query_rounds_field")).to_have_value("1")
    page.fill("#query_rounds_field", "0")
    expect(page.locator("#error_message")).to_contain_text("Query rounds must be a whole number of at least 1")
    page.fill("#query_rounds_field", "2")
    expect(page.locator("#error_message")).to_have_count(0)  # the report goes once the value is good
    _wait_until(
        lambda: page.evaluate("() => window.trame.state.get('query_rounds')") == 2,
        10,
        "the page's value reaches the server",
    )

    _rank(page)
    (job,) = list((served["data"] / ".assft" / "jobs").glob("*-rank"))
    assert json.loads((job / "job.json").read_text())["query"] == {"rounds": 2}
    expect(page.locator("#ranking_caption")).to_contain_text("Query round 1 of 2 (1 + 1 volumes): 1 volume proposed.")
    assert page.locator("#ranking_table td.row-state").all_inner_texts().count("proposed") == 1
    _shot(page, "08_query_rounds.png")


def _in_viewport(page, selector: str) -> bool:
    return page.evaluate(
        "(s) => { const r = document.querySelector(s).getBoundingClientRect(); "
        "return r.top >= 0 && r.left >= 0 && r.bottom <= window.innerHeight "
        "&& r.right <= window.innerWidth; }",
        selector,
    )


def _apply_model(page, text: str) -> None:
    """Type ``text`` into the Model field and press its check mark, as a user does."""
    page.fill("#model_field", text)
    _wait_until(
        lambda: page.evaluate("() => window.trame.state.get('model_text')") == text,
        10,
        "the typed model reaches the server",
    )
    page.locator(".v-field:has(#model_field) .v-field__append-inner .v-icon").click()


def test_a_small_screen_shows_the_round_s_buttons_next_step_and_legends_and_the_model_check_applies(serve, chromium):
    """1366x768: Rank, Adapt, Annotate and Save visible without scrolling, a next-step line that follows the round,
    legends for the table and the chart; the Model field's check refuses a missing card and applies a real one (the
    next Rank's job uses it); the page keeps its secret across a reload and says what to open without it."""
    served = serve(TINY_FINETUNE)
    page = chromium.new_page(viewport={"width": 1366, "height": 768})
    page.goto(served["url"])
    expect(page.locator("#btn_rank")).to_be_visible(timeout=90_000)
    for button in ("#btn_rank", "#btn_adapt", "#btn_annotate", "#btn_save"):
        assert _in_viewport(page, button), f"{button} is below the fold at 1366x768"
    expect(page.locator("#next_step")).to_contain_text("press Rank Volumes")

    _apply_model(page, "/nowhere/card.json")
    expect(page.locator("#error_message")).to_contain_text("/nowhere/card.json", timeout=30_000)
    card = str(REPO / "ASSFTActive" / "resources" / "models" / "hippocampus-unet" / "card.json")
    _apply_model(page, card)
    expect(page.locator("#job_status")).to_contain_text("Model set:", timeout=30_000)
    expect(page.locator("#error_message")).to_have_count(0)

    _rank(page)
    (job,) = list((served["data"] / ".assft" / "jobs").glob("*-rank"))
    assert json.loads((job / "job.json").read_text())["model"] == card  # the typed model, not the default
    expect(page.locator("#next_step")).to_contain_text("click an orange (proposed) row")
    expect(page.locator("#table_legend")).to_contain_text("proposed for labelling")
    expect(page.locator("#plot_legend")).to_contain_text("green labeled")
    assert page.locator("#ranking_table th").nth(2).get_attribute("title").startswith("Diversified knowledge")
    for button in ("#btn_rank", "#btn_adapt", "#btn_annotate", "#btn_save"):
        assert _in_viewport(page, button), f"{button} is below the fold at 1366x768 after ranking"
    time.sleep(2)
    _shot(page, "09_small_screen_next_step.png")

    page.reload()  # the address bar lost the secret (trame removes it); the tab kept it
    expect(page.locator("#ranking_table tr.ranking-row")).to_have_count(len(CASES), timeout=90_000)
    bare = chromium.new_page(viewport={"width": 1366, "height": 768})
    bare.goto(served["url"].split("?", 1)[0])
    expect(bare.locator("#assft_no_secret")).to_contain_text(
        "Open the address that assft serve printed", timeout=30_000
    )


def test_a_label_check_refusal_shows_the_workers_lines_and_train_anyway_adapts(serve, chromium):
    """A half-labelled volume (posterior erased): Adapt is refused by the label checks; the page shows the error
    without command-line advice, the worker's last lines, and Train anyway, which starts an Adapt that allows the
    labels (written into its job.json)."""
    served = serve(TINY_FINETUNE, labels=[CASES[0]], keep_classes=[1])
    page = _open(chromium, served["url"])
    page.click("#btn_adapt")
    expect(page.locator("#job_status")).to_contain_text("adapt error", timeout=300_000)
    error = page.locator("#error_text")  # the message; the worker's own lines follow it in #error_details
    expect(error).to_contain_text("the labels look wrong")
    expect(error).to_contain_text("Train anyway")
    assert "--allow-implausible-labels" not in error.inner_text()
    expect(page.locator("#error_details")).to_be_visible()
    assert len(page.inner_text("#error_details").splitlines()) >= 2, page.inner_text("#error_details")
    expect(page.locator("#train_anyway_box")).to_contain_text("the adapted model learns that mistake")
    expect(page.locator("#next_step")).to_contain_text("Train anyway")
    time.sleep(1)
    _shot(page, "10_label_refusal_train_anyway.png")

    refused = {job.name for job in (served["data"] / ".assft" / "jobs").glob("*-adapt")}
    page.click("#btn_train_anyway")

    def started() -> list:
        return [
            j
            for j in (served["data"] / ".assft" / "jobs").glob("*-adapt")
            if j.name not in refused and (j / "job.json").is_file()
        ]

    _wait_until(started, 60, "Train anyway starts another Adapt job")
    (job,) = started()
    assert json.loads((job / "job.json").read_text())["finetune"]["allow_implausible_labels"] is True
    expect(page.locator("#job_status")).to_contain_text(re.compile("adapt (done|error|cancelled)"), timeout=600_000)
    assert "adapt done" in page.inner_text("#job_status"), page.inner_text("#job_status")


def _coloured_pixels(page) -> int:
    """Pixels of the rendered views whose colour is far from grey (a segmentation; the overlay must be off)."""
    import io

    from PIL import Image

    rects = page.evaluate(
        "() => Array.from(document.querySelectorAll('.v-main img')).map(e => {"
        "const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })"
    )
    total = 0
    for x, y, w, h in rects:
        png = page.screenshot(clip={"x": x, "y": y, "width": w, "height": h})
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        total += int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 80).sum())
    return total


def test_another_case_s_saved_labels_are_not_drawn_over_the_case_shown(serve, chromium):
    """Issue 26 item 1: case A annotated (pre-filled) and saved, then case B selected: the page shows B and its
    views have no more coloured pixels than B had before A was labelled (A's segmentation is hidden)."""
    served = serve(TINY_FINETUNE)
    page = _open(chromium, served["url"])
    _rank(page)
    case_a, case_b = (page.locator("#ranking_table tr.ranking-row").nth(i) for i in (0, 1))
    name_a, name_b = (next(c for c in CASES if c in row.inner_text()) for row in (case_a, case_b))
    page.locator("#overlay_toggle").click()
    expect(page.locator("#overlay_toggle")).not_to_be_checked()
    case_b.click()
    expect(page.locator("#current_volume")).to_contain_text(name_b, timeout=30_000)
    time.sleep(2)
    before = _coloured_pixels(page)

    case_a.click()
    expect(page.locator("#current_volume")).to_contain_text(name_a, timeout=30_000)
    page.locator("#prefill_toggle").check()
    page.click("#btn_annotate")
    _wait_until(lambda: _labeled_voxels(page) > 0, 30, "the prediction fills A's segments")
    page.click("#btn_save")
    expect(page.locator("#saved_message")).to_contain_text("Saved", timeout=30_000)
    time.sleep(2)
    shown_a = _coloured_pixels(page)
    assert shown_a > before + 100, (before, shown_a)  # A's labels are drawn while A is shown

    case_b.click()
    expect(page.locator("#current_volume")).to_contain_text(name_b, timeout=30_000)
    time.sleep(2)
    shown_b = _coloured_pixels(page)
    _shot(page, "11_other_case_labels_hidden.png")
    assert shown_b <= before + 20, (before, shown_a, shown_b)


def test_the_shown_ranking_survives_three_cancelled_adapts_and_an_unviewed_row_opens(serve, chromium):
    """Issue 26 item 2: Rank, then three Adapts cancelled (the controller keeps 3 job folders): the ranking's
    folder is kept and a row not viewed yet opens with its overlay (no "file not found")."""
    served = serve(LONG_FINETUNE, labels=[CASES[0]])
    jobs = served["data"] / ".assft" / "jobs"
    page = _open(chromium, served["url"])
    _rank(page)
    (ranking,) = list(jobs.glob("*-rank"))
    shown = page.inner_text("#current_volume")
    for cancelled in range(1, 4):
        page.click("#btn_adapt")
        _wait_until(lambda n=cancelled: len(list(jobs.glob("*-adapt*/job.json"))) == n, 60, "the Adapt job is written")
        expect(page.locator("#job_status")).to_contain_text("Adapt:", timeout=120_000)
        page.click("#btn_cancel")
        expect(page.locator("#job_status")).to_contain_text("adapt cancelled", timeout=60_000)
    assert ranking.is_dir(), sorted(p.name for p in jobs.iterdir())
    name = next(c for c in CASES[1:] if c not in shown)  # not viewed yet, and not the labelled CASES[0]
    _row_of(page, name).click()
    expect(page.locator("#current_volume")).to_contain_text(name, timeout=30_000)
    expect(page.locator("#error_message")).to_have_count(0)
    assert page.locator("#region_list .region-item").count() > 0  # the regions read from the ranking's folder


def _progress_until(page, until: str, timeout: float = 300.0, more: int = 0) -> list:
    """The bar's value (``progress``) sampled every 0.1 s until ``#job_status`` says ``until``, then ``more`` times."""
    values, end = [], time.monotonic() + timeout
    while True:
        said = until in page.inner_text("#job_status")
        values.append(page.evaluate("() => window.trame.state.get('progress')"))
        more -= said
        if said and more < 0:
            return values
        assert time.monotonic() < end, f"no {until!r} within {timeout} s: {page.inner_text('#job_status')}"
        time.sleep(0.1)


def test_one_progress_bar_per_job_only_moves_forward_and_ends_in_words(serve, chromium):
    """Issue 26 item 7: sampled through a whole Rank and a cancelled Adapt, the bar never goes back; Rank ends on a
    full green bar that says done, the cancelled Adapt on a grey, not full bar that says cancelled."""
    served = serve(LONG_FINETUNE, labels=[CASES[0]])
    page = _open(chromium, served["url"])
    page.click("#btn_rank")
    ranked = _progress_until(page, "rank done")
    assert ranked == sorted(ranked) and len(set(ranked)) >= 3, ranked
    assert ranked[-1] == 100 and page.evaluate("() => window.trame.state.get('progress_colour')") == "green"

    page.click("#btn_adapt")
    _wait_until(lambda: page.evaluate("() => window.trame.state.get('progress')") < 100, 30, "the new job's bar")
    adapted = _progress_until(page, "Adapt: train", more=20)
    page.click("#btn_cancel")
    adapted += _progress_until(page, "adapt cancelled", timeout=60)
    assert adapted == sorted(adapted), adapted
    assert adapted[-1] < 100 and page.evaluate("() => window.trame.state.get('progress_colour')") == "grey"
    _shot(page, "12_cancelled_progress.png")


def _paint_proposed_slice(page, done: Sequence[int] = ()) -> str:
    """Next proposed slice, one anterior stroke through the axial view's centre (the views are centred on the
    slice), Mark done; returns the unit line after Next. ``done``: the slices of this volume already marked done,
    which Next never shows again (a loaded machine may still be drawing the last Mark done's line when Next is
    clicked, so the line is read once it names a slice not done yet)."""
    shown = page.inner_text("#unit_message")
    page.click("#btn_next_unit")

    def moved_on() -> bool:
        line = page.inner_text("#unit_message")
        now = re.search(r"now: slice (\d+)", line)
        return line != shown and now is not None and int(now.group(1)) not in done

    _wait_until(moved_on, 30, "Next proposed slice answers")
    line = page.inner_text("#unit_message")
    assert "now: slice" in line, line
    time.sleep(2)
    before = _class_voxels(page).get("anterior", 0)
    cx, cy = _axial_view_centre(page)
    _stroke(page, cx - 30, cy, 3, 0)
    _wait_until(lambda: _class_voxels(page).get("anterior", 0) > before, 30, "the stroke is counted")
    time.sleep(1)
    page.click("#btn_mark_done")
    expect(page.locator("#unit_message")).to_contain_text("done; now:", timeout=30_000)
    return line


def test_rank_by_slice_annotate_two_proposed_slices_save_and_adapt_in_headless_chromium(serve, chromium):
    """Issue 27 item 3: the page's Unit slice makes Rank propose slices; Next proposed slice centres the views on
    one, a stroke there and Mark done make it annotated; Save labels writes 255 (not annotated) outside the two
    done slices; Adapt Model trains on that partial label."""
    served = serve(TINY_FINETUNE)
    data = served["data"]
    page = _open(chromium, served["url"])
    page.click("#annotation_unit", force=True)  # the select's shown value lies over its input
    page.locator(".v-overlay-container .v-list-item").filter(has_text=re.compile(r"^\s*slice\s*$")).click()
    expect(page.locator("#unit_buttons")).to_be_visible(timeout=10_000)
    page.fill("#budget_field", "4")
    _wait_until(lambda: page.evaluate("() => window.trame.state.get('budget')") == 4, 10, "the budget reaches it")
    _rank(page)
    (job,) = list((data / ".assft" / "jobs").glob("*-rank"))
    assert json.loads((job / "job.json").read_text())["query"]["units"] == {"unit": "slice"}
    ranking = json.loads(next(job.rglob("ranking.json")).read_text())
    slices = {c["case_id"]: [s["index"] for s in c.get("proposed_slices") or []] for c in ranking["cases"]}
    assert sum(len(v) for v in slices.values()) == 4, slices

    done = {}
    while sum(len(v) for v in done.values()) < 2:
        proposed = [v for v in slices if slices[v] and v not in done]
        volume = page.inner_text("#current_volume").split(":", 1)[1].strip()
        if volume in done or not slices.get(volume):
            _row_of(page, proposed[0]).click()
            expect(page.locator("#current_volume")).to_contain_text(proposed[0], timeout=30_000)
            volume = proposed[0]
        page.click("#btn_annotate")
        expect(page.locator("#voxel_counts")).to_contain_text("anterior", timeout=30_000)
        expect(page.locator("#next_step")).to_contain_text("Mark done")
        done[volume] = []
        for _ in range(min(2, len(slices[volume]))):
            line = _paint_proposed_slice(page, done[volume])
            done[volume].append(int(re.search(r"now: slice (\d+)", line).group(1)))
            if sum(len(v) for v in done.values()) == 2:
                break
        page.click("#btn_save")
        expect(page.locator("#saved_message")).to_contain_text("Saved", timeout=30_000)
    _shot(page, "13_slices_annotated.png")

    for volume, indices in done.items():
        label = read_volume(data / "labels" / f"{volume}.nii.gz").array
        annotated = label != 255
        assert sorted(np.flatnonzero(annotated.all(axis=(0, 1))).tolist()) == sorted(indices)
        assert int(np.count_nonzero(annotated)) == len(indices) * label.shape[0] * label.shape[1]
        assert int(np.count_nonzero(label == 1)) > 0  # the strokes, inside the done slices

    page.click("#btn_adapt")
    expect(page.locator("#job_status")).to_contain_text(re.compile("adapt (done|error)"), timeout=600_000)
    if page.locator("#btn_train_anyway").count():  # two strokes in two slices may look implausible to the checks
        page.click("#btn_train_anyway")
        expect(page.locator("#job_status")).to_contain_text("adapt running", timeout=30_000)
        expect(page.locator("#job_status")).to_contain_text(re.compile("adapt (done|error)"), timeout=600_000)
    assert "adapt done" in page.inner_text("#job_status"), (
        page.inner_text("#job_status"),
        page.inner_text("#error_message") if page.locator("#error_message").count() else "",
    )
    adapt = sorted((data / ".assft" / "jobs").glob("*-adapt"))[-1]  # the one that ran (after a refusal: the second)
    assert sorted(json.loads((adapt / "job.json").read_text())["labels"]) == sorted(done)
