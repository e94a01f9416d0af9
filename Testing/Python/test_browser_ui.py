"""The browser annotator (``assft serve``) in a real headless Chromium against the real server.

One round as a user does it: open the page, Rank Volumes on the shipped sample data with the embedded model, see
the ranking rows, toggle the entropy overlay, paint a stroke with the mouse and see the segment's voxel count grow,
Save labels and find the file on disk with the painted voxels, Adapt Model (tiny training through the job spec) and
see progress reach done and the table re-ranked; a second tab sees the same state. Screenshots go to
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
import urllib.request
from pathlib import Path

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
#: volume cannot be cross-validated); one painted stroke holds one class only, which the label check would refuse.
TINY_FINETUNE = {"train": {"iterations": 2, "batch_size": 1, "patch_size": [16, 16, 16], "augment": False},
                 "semi_iterations": 1, "validation": {"guard": False}, "allow_implausible_labels": True}

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"assft serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"assft serve did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def served(tmp_path):
    """``assft serve`` on a copy of four sample volumes plus two files it must skip; stopped by its process id."""
    data = tmp_path / "data"
    data.mkdir()
    for case in CASES:
        shutil.copy(SAMPLE / "images" / f"{case}.nii.gz", data)
    (data / "notes.txt").write_text("not a volume\n")
    (data / "truncated.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    port = _free_port()
    log = tmp_path / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "ASSFTActive", "serve", "--data", str(data), "--port", str(port),
               "--budget", "2", "--finetune-json", json.dumps(TINY_FINETUNE)]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", process, log)
        yield {"url": f"http://127.0.0.1:{port}/", "data": data, "log": log, "process": process}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the server and any worker it started (its own session)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def _labeled_voxels(page) -> int:
    text = page.inner_text("#voxel_counts")  # "Labeled voxels: N (anterior a, posterior p)"
    return int(text.split(":", 1)[1].split("(", 1)[0].strip())


def _axial_view_centre(page) -> tuple:
    rects = page.evaluate("() => Array.from(document.querySelectorAll('.v-main img')).map(e => {"
                          "const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })")
    assert rects, "the page shows no rendered slice views"
    x, y, w, h = max(rects, key=lambda r: r[2] * r[3])  # the axial view is the large one
    return x + w / 2, y + h / 2


def test_a_whole_round_rank_look_paint_save_adapt_in_headless_chromium(served):
    import nibabel as nib

    data = served["data"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(served["url"])
            expect(page.locator("#btn_rank")).to_be_visible(timeout=90_000)
            # the pool, and the two files that are not volumes reported and skipped
            expect(page.locator("#volume_list")).to_contain_text(", ".join(CASES))
            expect(page.locator("#skipped_messages")).to_contain_text("Skipped notes.txt")
            expect(page.locator("#skipped_messages")).to_contain_text("Skipped truncated.nii.gz")

            # Rank
            page.click("#btn_rank")
            expect(page.locator("#ranking_table tr.ranking-row")).to_have_count(len(CASES), timeout=180_000)
            expect(page.locator("#job_status")).to_contain_text("rank done", timeout=30_000)
            expect(page.locator("#ranking_caption")).to_contain_text("Ranked: round 1")
            states = page.locator("#ranking_table td.row-state").all_inner_texts()
            assert states.count("proposed") == 2, states
            first_scores = page.inner_text("#ranking_table")
            expect(page.locator("#region_list .region-item").first).to_be_visible(timeout=30_000)
            assert page.locator("#scores_plot circle").count() == len(CASES)
            time.sleep(2)
            _shot(page, "01_ranked_overlay_on.png")

            # Look: overlay off and on, a region click centres the views
            toggle = page.locator("#overlay_toggle")  # Vuetify puts the id on the switch's input
            expect(toggle).to_be_checked()
            toggle.click()
            expect(toggle).not_to_be_checked()
            time.sleep(2)
            _shot(page, "02_overlay_off.png")
            toggle.click()
            expect(toggle).to_be_checked()
            page.locator("#region_list .region-item").first.click()
            time.sleep(1)

            # Paint a stroke with the mouse on the proposed volume
            volume = page.inner_text("#current_volume").split(":", 1)[1].strip()
            page.click("#btn_annotate")
            expect(page.locator("#voxel_counts")).to_contain_text("anterior 0", timeout=30_000)
            assert _labeled_voxels(page) == 0
            time.sleep(2)
            cx, cy = _axial_view_centre(page)
            page.mouse.move(cx - 40, cy)
            page.mouse.down()
            for step in range(20):
                page.mouse.move(cx - 40 + 4 * step, cy + 2 * step)
                time.sleep(0.05)
            page.mouse.up()
            deadline = time.monotonic() + 30
            while _labeled_voxels(page) == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            painted = _labeled_voxels(page)
            assert painted > 0, page.inner_text("#voxel_counts")
            time.sleep(1)
            _shot(page, "03_painted.png")

            # Save labels: the file is next to the data and holds the painted voxels; a second save keeps a backup
            page.click("#btn_save")
            expect(page.locator("#saved_message")).to_contain_text("Saved", timeout=30_000)
            label_file = data / "labels" / f"{volume}.nii.gz"
            assert label_file.is_file()
            labels = np.asanyarray(nib.load(str(label_file)).dataobj)
            image = nib.load(str(data / f"{volume}.nii.gz"))
            assert labels.shape == image.shape
            assert int(np.count_nonzero(labels == 1)) == painted
            page.click("#btn_save")
            expect(page.locator("#saved_message")).to_contain_text("previous file is kept", timeout=30_000)
            backups = list((data / "labels" / "backup").glob(f"{volume}.*.nii.gz"))
            assert len(backups) == 1

            # Adapt: refused twice while running (the button is disabled), progress to done, table re-ranked
            page.click("#btn_adapt")
            expect(page.locator("#btn_adapt")).to_be_disabled(timeout=10_000)
            expect(page.locator("#btn_cancel")).to_be_enabled()
            _shot(page, "04_adapting.png")
            expect(page.locator("#job_status")).to_contain_text(re.compile("adapt (done|error|cancelled)"),
                                                                timeout=600_000)
            expect(page.locator("#job_status")).to_contain_text("adapt done")
            expect(page.locator("#job_status")).to_contain_text("100%")
            expect(page.locator("#ranking_caption")).to_contain_text("Re-ranked with the adapted model: round 2")
            expect(page.locator("#model_description")).to_contain_text("adapted")
            expect(page.locator("#ranking_table tr.ranking-row")).to_have_count(len(CASES))
            assert page.inner_text("#ranking_table") != first_scores
            assert "labeled" in page.locator("#ranking_table td.row-state").all_inner_texts()
            assert list((data / ".assft" / "models").rglob("card.json")), "the adapted model is in the store"
            time.sleep(2)
            _shot(page, "05_adapted_reranked.png")

            # a second tab sees the same round
            other = browser.new_page(viewport={"width": 1600, "height": 1000})
            other.goto(served["url"])
            expect(other.locator("#ranking_caption")).to_contain_text("round 2", timeout=90_000)
            assert other.inner_text("#ranking_table") == page.inner_text("#ranking_table")
        finally:
            browser.close()
