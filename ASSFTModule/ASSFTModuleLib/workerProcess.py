"""How to start the engine's worker (``python -m ASSFTActive.worker JOB_DIR``) and a device probe.

Used by the widget's QProcess runner (non-blocking) and by :func:`runWorker` (blocking; tests, scripts and the
module's self-test). Inside Slicer the interpreter is ``PythonSlicer``, as ``slicer.util`` does it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from .enginePath import pythonPathWithEngine
from .errors import JobFailedError
from .events import EventLineBuffer, WorkerOutput
from .jobs import logTail, readJobResult
from .processTree import terminateProcessTree
from .records import DeviceInfo, JobResult, OutputLine

WORKER_MODULE = "ASSFTActive.worker"
#: Non-event output lines kept for the error message of a worker that died without a result.
OUTPUT_TAIL_LINES = 20

#: Printed by the device probe; imports torch in the child only.
DEVICE_PROBE_CODE = (
    "import json\n"
    "try:\n"
    "    import torch\n"
    "except Exception as exc:\n"
    "    print(json.dumps({'kind': 'unknown', 'message': 'torch is not installed (%s)' % type(exc).__name__}))\n"
    "else:\n"
    "    gpu = torch.cuda.is_available()\n"
    "    mps = not gpu and getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available()\n"
    "    print(json.dumps({'kind': 'GPU' if gpu or mps else 'CPU', 'torch': torch.__version__,\n"
    "                      'name': torch.cuda.get_device_name(0) if gpu else ('Apple MPS' if mps else '')}))\n"
)


def pythonExecutable() -> str:
    """The interpreter for child processes: ``PythonSlicer`` inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def workerCommand(jobDir, python: Optional[str] = None) -> List[str]:
    """``[python, "-m", "ASSFTActive.worker", JOB_DIR]``."""
    return [python or pythonExecutable(), "-m", WORKER_MODULE, str(Path(jobDir).resolve())]


def workerEnvironment(base: Optional[Mapping[str, str]] = None, useGpu: Optional[bool] = None) -> Dict[str, str]:
    """Environment of the worker: the engine first on ``PYTHONPATH``, unbuffered output, the CPU fallback of
    Apple's MPS device.

    Args:
        base: starting environment (default ``os.environ``).
        useGpu: False hides the GPUs (``CUDA_VISIBLE_DEVICES=""``); None leaves the choice to the worker.
    """
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = pythonPathWithEngine(environment.get("PYTHONPATH"))
    environment["PYTHONUNBUFFERED"] = "1"
    environment.setdefault("PYTHONIOENCODING", "utf-8")
    environment.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")  # Apple MPS: operations it lacks run on the CPU
    if useGpu is False:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    return environment


def runWorker(jobDir, python: Optional[str] = None, onEvent: Optional[Callable[[WorkerOutput], None]] = None,
              timeout: Optional[float] = None, environment: Optional[Mapping[str, str]] = None) -> JobResult:
    """Run the worker on ``jobDir`` and wait for it (blocking); every output line goes to ``onEvent`` (an engine
    ``Event``, or an :class:`OutputLine` for other text).

    Raises:
        JobFailedError: non-zero exit, a time-out (the process tree is stopped), or no ``done`` result.
    """
    jobDir = Path(jobDir)
    command = workerCommand(jobDir, python)
    process = subprocess.Popen(
        command,
        cwd=str(jobDir),
        env=dict(environment) if environment is not None else workerEnvironment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    buffer = EventLineBuffer()
    outputTail: List[str] = []

    def handle(item: WorkerOutput) -> None:
        outputTail.append(item.text if isinstance(item, OutputLine) else "")
        del outputTail[:-OUTPUT_TAIL_LINES]
        if onEvent is not None:
            onEvent(item)

    timer = None
    timedOut = []
    if timeout is not None:
        import threading

        def stop():
            timedOut.append(True)
            terminateProcessTree(process.pid, timeout=5.0)

        timer = threading.Timer(timeout, stop)
        timer.start()
    try:
        for line in process.stdout:
            for item in buffer.feed(line):
                handle(item)
        for item in buffer.flush():
            handle(item)
        returnCode = process.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if process.poll() is None:
            terminateProcessTree(process.pid, timeout=5.0)
            process.wait()
    if timedOut:
        raise JobFailedError(f"Job {jobDir.name} was stopped after {timeout:.0f} s.", str(jobDir), logTail(jobDir))
    try:
        result = readJobResult(jobDir)
    except JobFailedError as error:
        if error.logTail:
            raise
        text = "\n".join(line for line in outputTail if line)
        raise JobFailedError(f"{error} Worker output (exit code {returnCode}):\n{text}", str(jobDir), text) from error
    if returnCode != 0:
        raise JobFailedError(f"Job {jobDir.name} exited with code {returnCode} although it wrote a result.",
                             str(jobDir), logTail(jobDir))
    return result


def deviceProbeCommand(python: Optional[str] = None) -> List[str]:
    """A command printing one JSON line: ``{"kind": "GPU"|"CPU"|"unknown", "name", "torch", "message"}``."""
    return [python or pythonExecutable(), "-c", DEVICE_PROBE_CODE]


def parseDeviceProbe(output: str) -> DeviceInfo:
    """The :class:`DeviceInfo` in the probe's output (its last JSON line)."""
    for line in reversed(output.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("kind") in ("GPU", "CPU", "unknown"):
            return DeviceInfo(kind=data["kind"], name=str(data.get("name") or ""),
                              torchVersion=str(data.get("torch") or ""), message=str(data.get("message") or ""))
    return DeviceInfo(kind="unknown", message="the device probe printed no result")
