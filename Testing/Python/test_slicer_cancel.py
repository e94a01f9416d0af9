"""Cancel stops the whole process tree, with real processes on this machine.

Inside Slicer the worker runs under ``PythonSlicer``, CTK's launcher: a parent that starts the real Python as its
own child (sharing its stdout) and waits for it. These tests start the same shape: a launcher-like Python parent
that starts a worker-like Python child (or the real worker) and waits; the job is cancelled through the runner
the module uses (:class:`JobRunCore`, driven here by :class:`SubprocessJobRunner`; the Qt runner drives the
same core), and the child must be gone, and the job reported ``cancelled``, not an error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import slicer_scene  # noqa: F401  (puts the module folder on sys.path)
from ASSFTModuleLib import jobProcess  # noqa: E402
from ASSFTModuleLib.jobController import CANCELLED, jobOutcome  # noqa: E402
from ASSFTModuleLib.jobProcess import SubprocessJobRunner  # noqa: E402

from ASSFTActive.progress import Event  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the launcher-like parent relies on POSIX signals")

LAUNCHER = """
import subprocess, sys
# like CTK's launcher (PythonSlicer): the real interpreter is a child sharing our stdout; we wait and pass its code
child = subprocess.Popen([sys.executable] + sys.argv[1:])
open({pidFile!r}, "w").write(str(child.pid))
sys.exit(child.wait())
"""

WORKER_LIKE = """
import json, signal, sys, time
from pathlib import Path
jobDir = Path(sys.argv[1])
ignoreTerm = sys.argv[2] == "ignore"
state = {{"cancel": False}}
def onTerm(signum, frame):
    state["cancel"] = True
signal.signal(signal.SIGTERM, signal.SIG_IGN if ignoreTerm else onTerm)
(jobDir / "ready").write_text("1")  # the handler is in place: a SIGTERM from now on is handled
def emit(**event):
    print(json.dumps(event), flush=True)
emit(event="phase", phase="start", message="worker-like job")
for step in range(6000):
    if state["cancel"]:
        time.sleep(0.5)  # cleaning up, as the real worker does before its last event
        (jobDir / "result.json").write_text(json.dumps({{"status": "cancelled", "message": "cancelled"}}))
        emit(event="error", phase="cancelled", message="cancelled")
        sys.exit(130)
    emit(event="progress", phase="rank", step=step, total=6000)
    time.sleep(0.05)
"""


def writeLauncher(folder: Path) -> Path:
    """An executable launcher-like parent: ``launcher ARGS`` runs ``python ARGS`` as its child and waits."""
    path = folder / "launcher"
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(LAUNCHER.format(pidFile=str(folder / "child.pid"))))
    path.chmod(0o755)
    return path


def waitFor(condition, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


class Recorder:
    """Collects a runner's events and its one end; remembers whether the child was alive at the end."""

    def __init__(self, childPidFile: Path):
        self.items = []
        self.ends = []
        self.childAliveAtEnd = None
        self.childPidFile = childPidFile
        self.started = threading.Event()

    def onEvent(self, item):
        self.items.append(item)
        if isinstance(item, Event) and item.event == "progress":
            self.started.set()

    def onFinished(self, exitCode, cancelled, errorText):
        self.childAliveAtEnd = jobProcess.isRunning(int(self.childPidFile.read_text()))
        self.ends.append((exitCode, cancelled, errorText))

    def events(self):
        return [item for item in self.items if isinstance(item, Event)]


def startLauncherWithWorkerLike(tmp_path, mode="handle", cancelTimeout=10.0):
    launcher = writeLauncher(tmp_path)
    script = tmp_path / "workerlike.py"
    script.write_text(textwrap.dedent(WORKER_LIKE.format()))
    recorder = Recorder(tmp_path / "child.pid")
    runner = SubprocessJobRunner(recorder.onEvent, recorder.onFinished, cancelTimeout=cancelTimeout)
    runner.start([str(launcher), str(script), str(tmp_path), mode], dict(os.environ), str(tmp_path))
    assert recorder.started.wait(60), "the worker-like child printed no progress"
    return runner, recorder, int((tmp_path / "child.pid").read_text())


def test_cancel_waits_for_the_worker_under_the_launcher_and_ends_cancelled(tmp_path):
    runner, recorder, childPid = startLauncherWithWorkerLike(tmp_path)

    started = time.monotonic()
    runner.cancel()
    assert runner.wait(30)

    assert recorder.ends == [(130, True, "")] and recorder.childAliveAtEnd is False
    assert not jobProcess.isRunning(childPid)
    assert time.monotonic() - started < 10, "the polite stop should not have needed the kill timeout"
    last = recorder.events()[-1]
    assert (last.event, last.message) == ("error", "cancelled"), "the launcher's pipe was cut before the last event"
    assert jobOutcome(tmp_path, *recorder.ends[0])[0] == CANCELLED


def test_a_worker_ignoring_the_polite_stop_is_killed_after_the_timeout_and_the_job_ends_cancelled(tmp_path):
    runner, recorder, childPid = startLauncherWithWorkerLike(tmp_path, mode="ignore", cancelTimeout=1.0)

    runner.cancel()
    assert runner.wait(30)

    assert len(recorder.ends) == 1 and recorder.ends[0][1] is True and recorder.ends[0][2] == ""
    assert recorder.childAliveAtEnd is False and not jobProcess.isRunning(childPid)
    assert childPid in runner.core.stopper.killed
    assert jobOutcome(tmp_path, *recorder.ends[0])[0] == CANCELLED  # no result.json: the Cancel decides


def test_the_worker_is_killed_even_when_the_launcher_died_first(tmp_path):
    """The launcher ends (here: killed) while its child ignores SIGTERM: the remembered child is still killed."""
    launcher = writeLauncher(tmp_path)
    script = tmp_path / "workerlike.py"
    script.write_text(textwrap.dedent(WORKER_LIKE.format()))
    process = subprocess.Popen([str(launcher), str(script), str(tmp_path), "ignore"], stdout=subprocess.DEVNULL)
    assert waitFor(lambda: (tmp_path / "child.pid").is_file() and (tmp_path / "child.pid").read_text(), 30)
    childPid = int((tmp_path / "child.pid").read_text())
    assert waitFor(lambda: childPid in jobProcess.descendantPids(process.pid), 10)
    assert waitFor((tmp_path / "ready").is_file, 30)  # else a SIGTERM could come before the child ignores it

    stopper = jobProcess.ProcessTreeStopper(process.pid, timeout=1.0)
    stopper.start()
    os.kill(process.pid, signal.SIGKILL)  # the launcher is gone; its child is re-parented and keeps running
    process.wait(timeout=10)
    assert jobProcess.isRunning(childPid)

    assert waitFor(stopper.poll, 15)
    assert not jobProcess.isRunning(childPid) and childPid in stopper.killed


def test_descendants_are_found_without_psutil_or_command_line_tools(tmp_path, monkeypatch):
    launcher = writeLauncher(tmp_path)
    process = subprocess.Popen([str(launcher), "-c", "import time; time.sleep(60)"])
    try:
        assert waitFor(lambda: (tmp_path / "child.pid").is_file() and (tmp_path / "child.pid").read_text(), 30)
        childPid = int((tmp_path / "child.pid").read_text())
        monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
        monkeypatch.setenv("PATH", "")  # no pgrep, no ps
        assert jobProcess.descendantPids(process.pid) == [childPid]
    finally:
        monkeypatch.undo()
        jobProcess.terminateProcessTree(process.pid, timeout=5.0)
        process.wait(timeout=10)


@pytest.mark.slow
def test_cancelling_the_real_worker_under_a_launcher_leaves_no_process_and_ends_cancelled(tmp_path):
    """The real ``python -m ASSFTActive.worker`` on a rank job, started through a launcher-like parent."""
    from ASSFTActive.io import Volume, write_volume
    from ASSFTActive.jobs import JobSpec, read_job_result, write_job

    images = {}
    for n in range(12):
        path = tmp_path / "images" / f"case{n:02d}.nii.gz"
        write_volume(
            Volume(slicer_scene.syntheticImage((48, 48, 40), seed=n).astype("float32"), slicer_scene.rotatedAffine()),
            path,
        )
        images[path.name[: -len(".nii.gz")]] = str(path)
    jobDir = tmp_path / "job"
    jobDir.mkdir()
    write_job(jobDir, JobSpec(kind="rank", images=images, model="default", budget=2))
    launcher = writeLauncher(tmp_path)
    recorder = Recorder(tmp_path / "child.pid")
    runner = SubprocessJobRunner(recorder.onEvent, recorder.onFinished, cancelTimeout=20.0)
    environment = jobProcess.workerEnvironment()
    environment.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runner.start(jobProcess.workerCommand(jobDir, python=str(launcher)), environment, str(jobDir))
    assert waitFor(lambda: any(e.event == "phase" for e in recorder.events()), 120), recorder.items[-5:]
    childPid = int((tmp_path / "child.pid").read_text())

    runner.cancel()
    assert runner.wait(60)

    assert recorder.childAliveAtEnd is False and not jobProcess.isRunning(childPid)
    assert recorder.ends[0][1] is True and recorder.ends[0][2] == ""
    assert read_job_result(jobDir).status == "cancelled"
    assert json.loads((jobDir / "events.jsonl").read_text().splitlines()[-1])["message"] == "cancelled"
    assert jobOutcome(jobDir, *recorder.ends[0])[0] == CANCELLED
