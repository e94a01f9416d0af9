"""CT-pool walkthrough (issue 26's goal): one annotator's round in the Slicer module's MRML logic on a 4-volume CT pool,
as code, with every call the panel makes on the GUI thread timed.

The pool is made from the only CT fixture, ``../shared/data/fixtures/totalsegmentator-ct/example_ct_sm.nii.gz``
(TotalSegmentator's example, Apache-2.0; the variants are written to a temporary folder, nothing is committed):

* ``ct_file``: the fixture as it is (122 x 101 x 30, 3 mm), loaded from its file (linkable into the job);
* ``ct_file_bright_noisy``: intensities x 1.1 + 40 HU and Gaussian noise (sigma 25 HU), loaded from a file;
* ``ct_dicom_512`` and ``ct_dicom_512_flipped``: resampled to 512 x 512 x N (0.715 mm in-plane, air around it), the
  second flipped left-right with other noise, made in the scene from arrays (as DICOM loads them: no file to link,
  so the job writes them, in the background, item 9 of issue 26).

The embedded default model is a hippocampus MRI model: every volume is out of distribution. The walkthrough checks that
the user is told so (the ranking's ``ood`` reason, the "Why" column, the status line and the next step) and that no
volume is silently proposed.

The round, driven through the module's :class:`~ASSFTModuleLib.jobController.JobController` and
:class:`~ASSFTModuleLib.logic.ASSFTSceneLogic` on a real slicer-core scene (``Testing/Python/slicer_scene.py``): load
the pool -> Rank Volumes (the real worker in a child process) -> click rows (overlay, regions) -> Annotate the top row
(pre-filled from the prediction) -> paint -> come back (labelled state, label checks) -> Adapt Model with a tiny
recipe (the refusal's "Train anyway" when the label checks refuse) -> result. The worker's callbacks are handed to a
stand-in GUI thread (the main thread's queue, as ``qt.QProcess`` delivers them in Slicer), and each call the widget
makes there is timed with ``time.perf_counter``.

Checks (each a finding when it fails): no other case's labels shown; the ranking survives a new logic on the same
scene and a new scene with the same volumes; every progress bar only moves forward and ends in words; every refusal
says what to do; no GUI-thread call over :data:`GUI_LIMIT_S`.

Each call is timed twice: wall time (``time.perf_counter``, the freeze the user sees on this machine, whose two cores
are shared) and the GUI thread's own CPU time (``time.thread_time``, what the call takes on an idle machine). After
each job the walkthrough waits :data:`THINK_S` before the first click, as a user reads the status line.

``--browser`` also takes the pool through ``assft serve`` in headless Chromium (Rank, a timed click on every row, the
caption, the next step and the rows checked) and saves ``results/walkthrough_ct_browser.png``.

Usage: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python Testing/Benchmarks/walkthrough_ct.py [--slices 75] [--browser]``
(about 6 minutes on one CPU thread, 8 with the browser). Writes ``results/walkthrough_ct.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(ROOT / "ASSFTModule"), str(ROOT / "Testing" / "Python")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import slicer_scene  # noqa: E402

slicer_scene.requireSlicer()  # outside pytest: raises when slicer-core is missing
from ASSFTModuleLib import geometry, guidance, ranking, segmentation  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.jobController import DONE, JobController  # noqa: E402
from ASSFTModuleLib.jobProcess import SubprocessJobRunner, workerEnvironment  # noqa: E402
from ASSFTModuleLib.logic import ASSFTSceneLogic  # noqa: E402
from ASSFTModuleLib.records import CaseState  # noqa: E402

from ASSFTActive.io import Volume, atomic_write_text, read_volume, write_volume  # noqa: E402

CT_FIXTURE = ROOT.parent / "shared" / "data" / "fixtures" / "totalsegmentator-ct" / "example_ct_sm.nii.gz"
#: The goal's limit for one call on the GUI thread.
GUI_LIMIT_S = 0.5
#: Seconds the user takes to read the status line after a job before clicking a row (the panel reads the
#: ranking's entropy maps ahead meanwhile).
THINK_S = 2.0
#: Adapt Model's tiny recipe (as ``assft serve --finetune-json`` would set it): a few steps on 16^3 patches.
TINY_FINETUNE = {
    "train": {"iterations": 2, "batch_size": 1, "patch_size": [16, 16, 16], "augment": False},
    "semi_iterations": 1,
    "validation": {"guard": False},
}
#: Words of a message that tells the user what to do (a refusal without one is a finding).
ACTION_WORDS = re.compile(
    r"\b(press|choose|click|wait|cancel|load|open|paint|annotate|pick|select|mark|tick|fix|try|save|run|harden)\b",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------------------- pool
def _resampled512(image: Volume, slices: int, flip: bool, seed: int) -> Volume:
    """The CT resampled to 512 x 512 x ``slices`` (square in-plane pixels covering the larger side, air around)."""
    from scipy.ndimage import zoom

    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    extent = np.array(image.array.shape) * spacing  # mm
    inPlane = float(max(extent[0], extent[1]) / 512.0)
    newSpacing = np.array([inPlane, inPlane, extent[2] / slices])
    factors = spacing / newSpacing
    resampled = zoom(image.array.astype(np.float32), factors, order=1, mode="nearest")
    out = np.full((512, 512, slices), -1024.0, np.float32)
    n = [min(a, b) for a, b in zip(resampled.shape, out.shape)]
    off = [(512 - n[0]) // 2, (512 - n[1]) // 2]
    out[off[0] : off[0] + n[0], off[1] : off[1] + n[1], : n[2]] = resampled[: n[0], : n[1], : n[2]]
    rng = np.random.default_rng(seed)
    out += rng.normal(0.0, 10.0, out.shape).astype(np.float32)
    if flip:
        out = out[::-1]
    affine = image.affine.copy()
    direction = image.affine[:3, :3] / spacing
    affine[:3, :3] = direction * newSpacing
    affine[:3, 3] = image.affine[:3, 3] - direction @ (np.array([off[0], off[1], 0.0]) * newSpacing)
    return Volume(np.clip(out, -1024, 3071).astype(np.int16), affine)


def buildPool(folder: Path, slices: int) -> Dict[str, object]:
    """``{"files": {name: path}, "arrays": {name: Volume}}`` of the 4-volume CT pool."""
    ct = read_volume(CT_FIXTURE)
    rng = np.random.default_rng(1)
    bright = ct.array.astype(np.float32) * 1.1 + 40.0 + rng.normal(0.0, 25.0, ct.array.shape)
    files = {
        "ct_file": write_volume(ct, folder / "ct_file.nii.gz"),
        "ct_file_bright_noisy": write_volume(
            Volume(np.clip(bright, -1024, 3071).astype(np.int16), ct.affine), folder / "ct_file_bright_noisy.nii.gz"
        ),
    }
    arrays = {
        "ct_dicom_512": _resampled512(ct, slices, flip=False, seed=2),
        "ct_dicom_512_flipped": _resampled512(ct, slices, flip=True, seed=3),
    }
    return {"files": files, "arrays": arrays}


def loadPool(env, pool) -> list:
    """Add the pool to a scene: files through the Volumes logic, arrays as DICOM gives them (no storage file)."""
    nodes = []
    for name, path in pool["files"].items():
        nodes.append(env.volumesLogic.AddArchetypeVolume(str(path), name, 0))
    for name, volume in pool["arrays"].items():
        nodes.append(geometry.addVolumeNode(env.scene, volume, name))
    return nodes


# ---------------------------------------------------------------------------------------------------------- GUI thread
class GuiThread:
    """The stand-in for Slicer's GUI thread: callables posted from any thread run here, one at a time, each timed.

    ``calls`` holds ``(step, label, wall seconds, this thread's CPU seconds)`` for every call made on it (posted or
    run with :meth:`call`). The wall time is the freeze the user sees on this machine; the CPU time is what the call
    would take on an idle one (this machine's 2 cores are shared with other work, so wall > CPU here).
    """

    def __init__(self, calls: List[tuple]):
        self._queue: queue.Queue = queue.Queue()
        self.calls = calls
        self.step = ""

    def post(
        self, call: Callable[[], None], label: str = "posted (worker start after writing; one prediction)"
    ) -> None:
        self._queue.put((label, call))

    def call(self, label: str, function: Callable, *args, **kwargs):
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            self.calls.append((self.step, label, time.perf_counter() - began, time.thread_time() - cpu))

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Run posted calls until ``until()`` is true; False on time-out."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                return False
            try:
                label, function = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            self.call(label, function)
        return True

    def idle(self) -> bool:
        """Nothing is waiting to run."""
        return self._queue.empty()

    def runnerFactory(self, onEvent, onFinished):
        """A subprocess runner whose callbacks arrive on this thread (as ``qt.QProcess``'s do in Slicer)."""
        return SubprocessJobRunner(
            lambda item: self.post(lambda: onEvent(item), "worker event"),
            lambda *ended: self.post(lambda: onFinished(*ended), "job finished (results loaded)"),
        )


class TinyRecipe:
    """The scene logic as the controller sees it, with Adapt Model's tiny recipe in every job (as ``assft serve
    --finetune-json`` adds its settings)."""

    def __init__(self, logic: ASSFTSceneLogic, finetune: dict):
        self._logic, self._finetune = logic, finetune

    def __getattr__(self, name):
        return getattr(self._logic, name)

    def planJob(self, kind, workDir, model, budget, volumeNodes=None, finetune=None, **settings):
        merged = {**self._finetune, **(finetune or {})}
        return self._logic.planJob(kind, workDir, model, budget, volumeNodes=volumeNodes, finetune=merged, **settings)


# ---------------------------------------------------------------------------------------------------------- checks
class Findings:
    def __init__(self):
        self.items: List[dict] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        print(("ok    " if ok else "FAIL  ") + name + (f": {detail}" if detail else ""), flush=True)
        return ok


def shownLabelOwners(scene, shownVolume) -> List[str]:
    """Names of visible segmentations that belong to a volume other than ``shownVolume`` (by the ASSFT volume
    attribute, else the reference geometry), or to no volume at all."""
    wrong = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
        display = node.GetDisplayNode()
        if display is None or not display.GetVisibility():
            continue
        owner = node.GetAttribute(segmentation.VOLUME_ATTRIBUTE) or node.GetNodeReferenceID(
            node.GetReferenceImageGeometryReferenceRole()
        )
        if owner != shownVolume.GetID():
            wrong.append(f"{node.GetName()} (owner {owner or 'none'})")
    return wrong


def tableRows(tableNode) -> List[dict]:
    rows = []
    for row in range(tableNode.GetNumberOfRows()):
        case, nodeId = ranking.rankedCaseFromTable(tableNode, row)
        rows.append(
            {
                "case": case.caseId,
                "rank": case.rank,
                "score": None if np.isnan(case.score) else round(float(case.score), 6),
                "state": CaseState.of(case.labeled, case.pseudoLabeled, case.selected),
                "why": case.reason,
                "ood": case.ood,
                "node": nodeId,
            }
        )
    return rows


class JobWatch:
    """What the panel shows of one job: every progress state, status line and failure."""

    def __init__(self, controller: JobController):
        self.states, self.status, self.failed, self.finished = [], [], [], []
        controller.progressStateChanged.connect(self.states.append)
        controller.statusChanged.connect(self.status.append)
        controller.failed.connect(lambda message, details: self.failed.append((message, details)))
        controller.finished.connect(self.finished.append)

    def reset(self):
        for items in (self.states, self.status, self.failed, self.finished):
            items.clear()


def checkProgress(findings: Findings, name: str, states) -> dict:
    fractions = [s.fraction for s in states]
    backwards = [(a, b) for a, b in zip(fractions, fractions[1:]) if b < a - 1e-12]
    final = states[-1] if states else None
    findings.check(
        f"{name}: the bar only moves forward", not backwards, f"{len(fractions)} updates, back: {backwards[:3]}"
    )
    words = final is not None and final.ended and bool(re.search(r"\b(done|failed|cancelled)\b", final.describe()))
    findings.check(f"{name}: the bar ends in words", words, final.describe() if final else "no state")
    return {
        "updates": len(fractions),
        "first": fractions[0] if fractions else None,
        "last": fractions[-1] if fractions else None,
        "final": final.describe() if final else "",
        "final_status": final.status if final else "",
    }


def refusal(findings: Findings, name: str, function: Callable) -> str:
    """Call ``function``, which should refuse; check the refusal says what to do."""
    try:
        function()
    except ASSFTModuleError as error:
        message = str(error)
        findings.check(f"refusal says what to do: {name}", bool(ACTION_WORDS.search(message)), message)
        return message
    findings.check(f"refusal says what to do: {name}", False, "no refusal")
    return ""


# ---------------------------------------------------------------------------------------------------------- the round
def restoreAsThePanel(gui: GuiThread, label: str, logic: ASSFTSceneLogic, workDirectory: Path):
    """``logic.restoreLatestRanking(workDirectory)`` as the panel's enter() does it: the table in one GUI call
    (timed as ``label``), then each prediction on a later GUI turn. Returns what the restore returned."""
    later = []
    restored = gui.call(label, logic.restoreLatestRanking, workDirectory, schedule=later.append)
    for show in later:
        gui.call("show one restored prediction (a later GUI turn)", show)
    return restored


def runJob(gui: GuiThread, controller: JobController, watch: JobWatch, kind: str, timeout: float, **kwargs) -> dict:
    watch.reset()
    began = time.perf_counter()
    spec = gui.call(f"{kind} button (startJob)", controller.startJob, kind, **kwargs)
    finished = gui.pump(lambda: bool(watch.finished), timeout)
    gui.pump(gui.idle, timeout)  # what the job's end posted for later turns (the predictions), timed too
    seconds = time.perf_counter() - began
    outcome = watch.finished[-1] if watch.finished else None
    return {"spec": spec, "outcome": outcome, "seconds": seconds, "timed_out": not finished}


def walkthrough(args, calls: List[tuple]) -> dict:
    """The round; the GUI thread's calls go into ``calls`` (kept when the round fails half-way)."""
    findings = Findings()
    record: dict = {"steps": {}, "checks": findings.items}
    work = Path(tempfile.mkdtemp(prefix="assft_walkthrough_"))
    gui = GuiThread(calls)
    environment = workerEnvironment()
    environment.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    gui.step = "load pool"
    began = time.perf_counter()
    pool = buildPool(work / "pool", args.slices)
    record["pool"] = {
        **{name: list(read_volume(path).array.shape) for name, path in pool["files"].items()},
        **{name: list(volume.array.shape) for name, volume in pool["arrays"].items()},
    }
    env = slicer_scene.SlicerScene()
    nodes = gui.call("load volumes (Slicer's loaders)", loadPool, env, pool)
    logic = ASSFTSceneLogic(env.scene, env.appLogic)
    controller = JobController(
        TinyRecipe(logic, TINY_FINETUNE),
        runnerFactory=gui.runnerFactory,
        environment=lambda: environment,
        python=sys.executable,
        callInMainThread=gui.post,
    )
    node = slicer_scene.parameterNode(work / "work", budget=2)
    controller.setParameterNode(node)
    watch = JobWatch(controller)
    card = gui.call("read the model card", logic.modelCard, controller.modelReference())
    record["steps"]["load pool"] = {"seconds": time.perf_counter() - began}

    # ------------------------------------------------------------ Rank
    gui.step = "rank"
    refusal(findings, "Annotate before ranking (no segmentation)", lambda: logic.classLabelmap(nodes[0], card))
    rank = runJob(gui, controller, watch, "rank", args.timeout)
    outcome = rank["outcome"]
    findings.check("rank: the job ends", outcome is not None and not rank["timed_out"], f"{rank['seconds']:.1f} s")
    if outcome is None:
        record["steps"]["rank"] = {"seconds": rank["seconds"], "timed_out": True}
        return record
    findings.check("rank: done", outcome.status == DONE, outcome.message)
    record["steps"]["rank"] = {
        "seconds": rank["seconds"],
        "status": outcome.status,
        "message": outcome.message,
        "progress": checkProgress(findings, "rank", watch.states),
        "status_lines": watch.status[-3:],
    }
    node.rankingTable = outcome.loaded.tableNode if outcome.loaded is not None else None
    table = node.rankingTable
    rows = tableRows(table)
    record["steps"]["rank"]["rows"] = rows
    nextStep = gui.call("next step line", guidance.nextStep, table)
    record["steps"]["rank"]["next_step"] = nextStep
    flagged = [row for row in rows if row["ood"]]
    proposed = [row for row in rows if row["state"] == CaseState.PROPOSED]
    findings.check(
        "OOD: every CT volume is flagged for the hippocampus MRI model",
        len(flagged) == len(rows),
        f"{len(flagged)} of {len(rows)}: " + "; ".join(f"{r['case']}: {r['ood']}" for r in rows),
    )
    findings.check(
        "OOD: no flagged volume is silently proposed",
        all(row["state"] != CaseState.PROPOSED or "flagged" in row["why"] for row in flagged),
        f"{len(proposed)} proposed",
    )
    findings.check(
        "OOD: the Why column says why each flagged volume is held back",
        all("out of distribution" in row["why"] or row["ood"] in row["why"] for row in flagged),
        "; ".join(row["why"] for row in flagged[:2]),
    )
    told = [text for text in (outcome.message, nextStep) if re.search(r"out of distribution", text, re.IGNORECASE)]
    findings.check(
        "OOD: the status line or the next step tells the user",
        bool(told),
        f"status: {outcome.message!r}; next step: {nextStep!r}",
    )

    # ------------------------------------------------------------ look at each row
    gui.step = "show overlay"
    time.sleep(THINK_S)  # the user reads the status line before the first click
    views = {}
    for row in range(table.GetNumberOfRows()):
        view = gui.call("row click (showCase)", logic.showCase, table, row, 0.3, 0.5)
        gui.call("row click (expert-label tick)", segmentation.expertLabelCandidates, env.scene, view.volumeNode, card)
        views[view.case.caseId] = view
        wrong = shownLabelOwners(env.scene, view.volumeNode)
        findings.check(f"show {view.case.caseId}: no other case's labels shown", not wrong, ", ".join(wrong))
        if view.regionsNode is not None and view.regions:
            gui.call("region click (jumpToRegion)", logic.jumpToRegion, view.regionsNode, 0)
        gui.call("overlay slider (updateOverlay)", logic.updateOverlay, view.volumeNode, 0.5, 0.6)

    # ------------------------------------------------------------ annotate the top row (none may be proposed)
    gui.step = "annotate"
    topCase = rows[0]["case"]
    target = env.scene.GetNodeByID(rows[0]["node"])
    gui.call("row click (showCase)", logic.showCase, table, 0, 0.3, 0.5)
    case = gui.call("Annotate (caseForVolume)", logic.caseForVolume, table, target)
    segmentationNode = gui.call(
        "Annotate (annotationSegmentation, pre-filled)",
        logic.annotationSegmentation,
        target,
        card,
        str(case.prediction) if case is not None and case.prediction else None,
    )
    wrong = shownLabelOwners(env.scene, target)
    findings.check(f"annotate {topCase}: no other case's labels shown", not wrong, ", ".join(wrong))
    # paint one class only first (a half-labelled volume), then both, in the Segment Editor's stead
    shape = geometry.volumeFromNode(target).shape
    labels = np.zeros(shape, np.uint8)
    c = [n // 2 for n in shape]
    size = [max(2, n // 10) for n in shape]
    labels[c[0] - size[0] : c[0], c[1] - size[1] : c[1] + size[1], c[2] - size[2] : c[2] + size[2]] = 1
    gui.step = "paint + save"

    def paint() -> None:  # what the Segment Editor leaves: ``labels`` as they are now in the segmentation
        gui.call(
            "paint (Segment Editor stand-in)",
            segmentation.fillSegmentationFromClassLabelmap,
            segmentationNode,
            Volume(labels, geometry.ijkToRasArray(target)),
            card,
        )

    paint()
    issues = gui.call("come back (labelIssues)", logic.labelIssues, target, card)
    findings.check("a half-labelled volume is flagged when saved", bool(issues), " ".join(issues))
    if issues:
        line = guidance.labelCheckLine(target.GetName(), issues)
        findings.check("the half-label flag says what to do", bool(ACTION_WORDS.search(line)), line)
    labels[c[0] : c[0] + size[0], c[1] - size[1] : c[1] + size[1], c[2] - size[2] : c[2] + size[2]] = 2
    paint()
    gui.call("come back (refreshLabeledStates)", logic.refreshLabeledStates, table, card)
    issues = gui.call("come back (labelIssues)", logic.labelIssues, target, card)
    rowsAfter = tableRows(table)
    state = next(row["state"] for row in rowsAfter if row["case"] == topCase)
    findings.check(f"{topCase} shows as labelled after painting", state == CaseState.LABELED, state)
    record["steps"]["annotate"] = {"case": topCase, "issues_after_both_classes": list(issues)}
    nextStep = gui.call("next step line", guidance.nextStep, table)
    record["steps"]["annotate"]["next_step"] = nextStep

    # ------------------------------------------------------------ the ranking survives a reload
    gui.step = "reload"
    shown = [(r["case"], r["rank"], r["score"]) for r in rowsAfter]
    logic2 = ASSFTSceneLogic(env.scene, env.appLogic)
    restored = restoreAsThePanel(gui, "restore the last ranking (same scene, new logic)", logic2, node.workDirectory)
    again = [(r["case"], r["rank"], r["score"]) for r in tableRows(restored[1].tableNode)] if restored else []
    findings.check(
        "ranking survives a new logic on the same scene",
        sorted(again) == sorted(shown),
        f"{len(again)} of {len(shown)} rows",
    )
    env.scene.RemoveNode(restored[1].tableNode) if restored else None
    env2 = slicer_scene.SlicerScene()
    nodes2 = loadPool(env2, pool)
    logic3 = ASSFTSceneLogic(env2.scene, env2.appLogic)
    restored2 = restoreAsThePanel(gui, "restore the last ranking (new scene, same volumes)", logic3, node.workDirectory)
    again2 = tableRows(restored2[1].tableNode) if restored2 else []
    attached = {r["case"]: env2.scene.GetNodeByID(r["node"]).GetName() for r in again2 if r["node"]}
    findings.check(
        "reload: results attach only to the volume they were computed on",
        all(case == name for case, name in attached.items()),
        json.dumps(attached),
    )
    findings.check(
        "reload: every volume of the pool gets its ranking back (incl. those loaded without a file)",
        len(attached) == len(nodes2),
        f"{len(attached)} of {len(nodes2)}: {sorted(attached)}",
    )
    record["steps"]["reload"] = {"same_scene_rows": len(again), "new_scene_attached": attached}
    del env2, nodes2, logic3

    # ------------------------------------------------------------ Adapt Model
    gui.step = "adapt"
    refusal(findings, "Rank while a job runs", lambda: (controller.startJob("rank"), controller.startJob("rank")))
    controller.cancel()
    gui.pump(lambda: not controller.isRunning(), args.timeout)
    watch.reset()
    adapt = runJob(gui, controller, watch, "adapt", args.timeout)
    outcome = adapt["outcome"]
    steps = {"seconds": adapt["seconds"]}
    if outcome is not None:
        steps.update(
            status=outcome.status,
            message=outcome.message,
            refused=outcome.labelsRefused,
            progress=checkProgress(findings, "adapt", watch.states),
        )
        if outcome.labelsRefused:
            findings.check("the label refusal offers Train anyway", "Train anyway" in outcome.message, outcome.message)
            adapt = runJob(gui, controller, watch, "adapt", args.timeout, trainAnyway=True)
            outcome = adapt["outcome"]
            steps["train_anyway"] = {"seconds": adapt["seconds"]}
            if outcome is not None:
                steps["train_anyway"].update(
                    status=outcome.status,
                    message=outcome.message,
                    progress=checkProgress(findings, "adapt (train anyway)", watch.states),
                )
    findings.check(
        "adapt: the job ends with a result in words",
        outcome is not None and bool(outcome.message),
        outcome.message if outcome else "no outcome",
    )
    if outcome is not None and outcome.status == DONE:
        findings.check(
            "adapt: the result says whether the adapted model is active",
            "now active" in outcome.message or "not activated" in outcome.message,
            outcome.message,
        )
    if outcome is not None and outcome.status != DONE:
        findings.check(
            "adapt: a failure shows the worker's last lines",
            bool(outcome.details) or bool(watch.failed),
            (outcome.details or "")[-300:],
        )
    record["steps"]["adapt"] = steps
    if outcome is not None and outcome.loaded is not None and outcome.loaded.tableNode is not None:
        table = outcome.loaded.tableNode
        time.sleep(THINK_S)  # the user reads the result before clicking a row
        for row in range(table.GetNumberOfRows()):
            view = gui.call("row click (showCase)", logic.showCase, table, row, 0.3, 0.5)
            wrong = shownLabelOwners(env.scene, view.volumeNode)
            findings.check(
                f"after adapt, show {view.case.caseId}: no other case's labels shown", not wrong, ", ".join(wrong)
            )
        record["steps"]["adapt"]["rows"] = tableRows(table)
        record["steps"]["adapt"]["next_step"] = guidance.nextStep(table)

    # ------------------------------------------------------------ refusals
    gui.step = "refusals"
    refusal(findings, "Mark done without a proposed slice", lambda: logic.markProposalDone(nodes[1]))
    if args.browser:
        record["browser"] = browserWalkthrough(args, pool, findings)
    record["work_folder"] = str(work) if args.keep else "(removed)"
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return record


# ---------------------------------------------------------------------------------------------------------- browser
def browserWalkthrough(args, pool, findings: Findings) -> dict:
    """The same pool through ``assft serve`` in headless Chromium (Debian's, driven by Playwright, as
    ``Testing/Python/test_browser_ui.py`` does): Rank, then a click on every row. Each click is timed from the click
    to the page showing that volume (the server's answer, what the user waits for)."""
    import signal
    import socket
    import subprocess

    chromium = Path(os.environ.get("ASSFT_CHROMIUM", "/usr/bin/chromium"))
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        return {"run": False, "why": f"playwright is not installed ({exc})"}
    if not chromium.is_file():
        return {"run": False, "why": f"no chromium at {chromium}"}
    data = Path(tempfile.mkdtemp(prefix="assft_walkthrough_web_"))
    for name, path in pool["files"].items():
        shutil.copy(path, data / f"{name}.nii.gz")
    for name, volume in pool["arrays"].items():  # the browser loads files: the 512 x 512 volumes as NIfTI
        write_volume(volume, data / f"{name}.nii.gz")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = data.parent / f"{data.name}.log"
    command = [sys.executable, "-m", "ASSFTActive", "serve", "--data", str(data), "--port", str(port)]
    command += ["--budget", "2", "--finetune-json", json.dumps(TINY_FINETUNE)]
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    record: dict = {"run": True, "clicks_s": {}}
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=str(ROOT), env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = ""
        deadline = time.monotonic() + 300
        while not url and time.monotonic() < deadline and server.poll() is None:
            found = re.search(r"http://127\.0\.0\.1:\d+/\?secret=[A-Za-z0-9_-]+", log.read_text())
            url = found.group(0) if found else ""
            time.sleep(0.5)
        if not url:
            findings.check("browser: the server starts", False, log.read_text()[-500:])
            return record
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                page.goto(url)
                expect(page.locator("#btn_rank")).to_be_visible(timeout=120_000)
                began = time.perf_counter()
                page.click("#btn_rank")
                rows = page.locator("#ranking_table tr.ranking-row")
                expect(rows).to_have_count(4, timeout=int(args.timeout * 1000))
                expect(page.locator("#job_status")).to_contain_text("rank done", timeout=60_000)
                record["rank_s"] = time.perf_counter() - began
                caption = page.inner_text("#ranking_caption")
                step = page.inner_text("#next_step")
                table = page.inner_text("#ranking_table")
                record.update(caption=caption, next_step=step, status=page.inner_text("#job_status"))
                findings.check(
                    "browser: the caption says the pool is out of distribution",
                    "out of distribution" in caption and "2 volumes proposed" not in caption,
                    caption,
                )
                findings.check(
                    "browser: the next step says it, with what to do",
                    "out of distribution" in step and "Annotate" in step,
                    step,
                )
                findings.check(
                    "browser: every row names its reason",
                    table.count("out of distribution") >= 4,
                    f"{table.count('out of distribution')} rows",
                )
                page.screenshot(path=str(args.out.parent / f"{args.out.name}_browser.png"))
                for name in list(pool["files"]) + list(pool["arrays"]):
                    began = time.perf_counter()
                    rows.filter(has_text=name).first.click()
                    expect(page.locator("#current_volume")).to_contain_text(name, timeout=60_000)
                    record["clicks_s"][name] = round(time.perf_counter() - began, 3)
                    counts = page.inner_text("#voxel_counts")
                    findings.check(f"browser: showing {name} shows no labels", "none yet" in counts, counts)
            finally:
                browser.close()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and a worker it may have started (its own session)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)
        log.unlink(missing_ok=True)
    return record


def summarise(record: dict, calls: List[tuple]) -> dict:
    longest = sorted(calls, key=lambda c: -c[2])

    def add(table: Dict[str, dict], key: str, wall: float, cpu: float) -> None:
        entry = table.setdefault(key, {"calls": 0, "max_s": 0.0, "max_cpu_s": 0.0, "total_s": 0.0})
        entry["calls"] += 1
        entry["max_s"] = round(max(entry["max_s"], wall), 4)
        entry["max_cpu_s"] = round(max(entry["max_cpu_s"], cpu), 4)
        entry["total_s"] = round(entry["total_s"] + wall, 4)

    byLabel: Dict[str, dict] = {}
    perStep: Dict[str, dict] = {}
    for step, label, wall, cpu in calls:
        add(byLabel, f"{step} | {label}", wall, cpu)
        add(perStep, step, wall, cpu)
    limited = [c for c in calls if not c[1].startswith(("load volumes", "paint"))]
    return {
        "per_step": perStep,
        "max_gui_call_s": longest[0][2] if longest else 0.0,
        "max_gui_call": f"{longest[0][0]} | {longest[0][1]}" if longest else "",
        "max_limited_call_s": max((c[2] for c in limited), default=0.0),
        "max_limited_call_cpu_s": max((c[3] for c in limited), default=0.0),
        "over_limit": [
            {"step": s, "call": label, "seconds": round(t, 3), "cpu_seconds": round(u, 3)}
            for s, label, t, u in longest
            if t > GUI_LIMIT_S and not label.startswith(("load volumes", "paint"))
        ],
        "calls": byLabel,
    }


def markdown(record: dict) -> str:
    gui = record["gui"]
    lines = [
        "# CT-pool walkthrough (issue 26)",
        "",
        f"Run {record['date']} on {record['machine']}; pool {json.dumps(record.get('pool', {}))}; "
        f"Adapt recipe {json.dumps(TINY_FINETUNE)}.",
        "",
        f"**Longest GUI-thread call of ASSFT code: {gui['max_limited_call_s']:.3f} s wall, "
        f"{gui['max_limited_call_cpu_s']:.3f} s CPU** (limit {GUI_LIMIT_S} s; Slicer's own loaders and the Segment "
        f"Editor stand-in are not ASSFT code; longest of all: {gui['max_gui_call_s']:.3f} s, {gui['max_gui_call']}). "
        "Wall: the freeze on this shared, loaded 2-core machine; CPU: the GUI thread's own CPU time, what the call "
        "takes on an idle machine.",
        "",
        "| step | wall s (a job: start to results shown) | GUI calls | longest call s (CPU s) | GUI total s |",
        "|---|---|---|---|---|",
    ]
    for name, entry in gui["per_step"].items():
        step = record["steps"].get(name, {})
        wall = f"{step['seconds']:.1f}" if isinstance(step, dict) and "seconds" in step else ""
        lines.append(
            f"| {name} | {wall} | {entry['calls']} | {entry['max_s']:.3f} ({entry['max_cpu_s']:.3f}) | "
            f"{entry['total_s']:.3f} |"
        )
    lines += ["", "| GUI-thread call (step, what) | calls | max s | max CPU s | total s |", "|---|---|---|---|---|"]
    for name, entry in sorted(gui["calls"].items(), key=lambda kv: -kv[1]["max_s"]):
        flag = " **> 0.5 s**" if entry["max_s"] > GUI_LIMIT_S else ""
        lines.append(
            f"| {name} | {entry['calls']} | {entry['max_s']:.3f}{flag} | {entry['max_cpu_s']:.3f} | "
            f"{entry['total_s']:.3f} |"
        )
    browser = record.get("browser") or {}
    if browser.get("run"):
        clicks = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in browser.get("clicks_s", {}).items())
        lines += [
            "",
            f"Browser (`assft serve`, headless Chromium, 1366 x 768): Rank {browser.get('rank_s', 0):.1f} s from the "
            f"click to the rows and 'rank done'; row clicks, from the click to the page showing the volume: {clicks}. "
            f"Caption: {browser.get('caption', '')!r}. Next step: {browser.get('next_step', '')!r}. Screenshot "
            f"`{Path(record.get('out', 'walkthrough_ct')).name}_browser.png`.",
        ]
    elif browser:
        lines += ["", f"Browser part not run: {browser.get('why', '')}."]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for item in record["checks"]:
        detail = item["detail"].replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {item['check']} | {'ok' if item['ok'] else '**FAIL**'} | {detail} |")
    failed = [c for c in record["checks"] if not c["ok"]]
    lines += ["", f"{len(record['checks']) - len(failed)} of {len(record['checks'])} checks pass.", ""]
    return "\n".join(lines)


def portable(text: str) -> str:
    """``text`` with the walkthrough's temporary folders (removed when it ends) written ``<scratch>``: the results
    name no machine's folders."""
    return re.sub(re.escape(tempfile.gettempdir()) + r"/assft_walkthrough_\w+", "<scratch>", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=75, help="slices of the two 512 x 512 volumes")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one job may take")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "walkthrough_ct")
    parser.add_argument("--keep", action="store_true", help="keep the temporary pool and work folder")
    parser.add_argument("--browser", action="store_true", help="also the pool through assft serve in Chromium")
    args = parser.parse_args(argv)
    if not CT_FIXTURE.is_file():
        raise SystemExit(f"error: the CT fixture {CT_FIXTURE} is missing; the walkthrough needs it.")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    began = time.perf_counter()
    gui_calls: List[tuple] = []
    record = {
        "out": args.out.name,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    try:
        result = walkthrough(args, gui_calls)
        record.update(result)
    finally:
        record["gui"] = summarise(record, gui_calls)
        record["total_s"] = time.perf_counter() - began
        record["gui"]["limit_s"] = GUI_LIMIT_S
        if "checks" in record:
            gui = record["gui"]
            slow = ", ".join(f"{c['step']} | {c['call']} {c['seconds']:.2f} s" for c in gui["over_limit"][:4])
            record["checks"].append(
                {
                    "check": f"no GUI-thread call of ASSFT code over {GUI_LIMIT_S} s (wall, this machine)",
                    "ok": not gui["over_limit"],
                    "detail": f"longest {gui['max_limited_call_s']:.3f} s; {slow}",
                }
            )
            record["checks"].append(
                {
                    "check": f"no GUI-thread call of ASSFT code over {GUI_LIMIT_S} s (CPU: an idle machine)",
                    "ok": gui["max_limited_call_cpu_s"] <= GUI_LIMIT_S,
                    "detail": f"longest {gui['max_limited_call_cpu_s']:.3f} s",
                }
            )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        jsonable = json.loads(portable(json.dumps(record, default=str)))
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(jsonable, indent=1) + "\n")
        if "checks" in record:
            atomic_write_text(args.out.with_suffix(".md"), markdown(jsonable))
    failed = [c for c in record.get("checks", []) if not c["ok"]]
    print(
        f"longest GUI-thread call {record['gui']['max_gui_call_s']:.3f} s ({record['gui']['max_gui_call']}); "
        f"{len(failed)} check(s) failed; {record['total_s']:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
