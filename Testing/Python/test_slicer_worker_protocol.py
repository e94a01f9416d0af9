"""The module's side of the worker protocol: event lines, commands, environment, device probe, stopping a tree.

These parts need no slicer-core (they are plain Python in ASSFTModuleLib), so they run everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import slicer_scene
from ASSFTModuleLib import enginePath, jobProcess, requirements  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.modelCard import modelReference, readModelCard  # noqa: E402
from ASSFTModuleLib.records import OutputLine  # noqa: E402

from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD  # noqa: E402
from ASSFTActive.jobs import read_events  # noqa: E402
from ASSFTActive.progress import Event  # noqa: E402


def test_event_lines_split_across_chunks_become_events():
    buffer = jobProcess.EventLineBuffer()
    line1 = json.dumps(
        {
            "event": "progress",
            "phase": "train",
            "step": 3,
            "total": 12,
            "message": "epoch",
            "metrics": {"loss": 0.41},
            "time": 1.5,
        }
    )
    line2 = json.dumps({"event": "done", "phase": "adapt", "message": "finished"})

    first = buffer.feed(line1[:10])
    second = buffer.feed(line1[10:] + "\nTraceback (most recent call last):\n\n" + line2)
    last = buffer.flush()

    assert first == []
    assert second == [Event.from_json(line1), OutputLine("Traceback (most recent call last):")]
    progress = second[0]
    assert (progress.phase, progress.step, progress.total, progress.metrics) == ("train", 3, 12, {"loss": 0.41})
    assert jobProcess.eventFraction(progress) == pytest.approx(0.25)
    assert last == [Event.from_json(line2)] and jobProcess.eventFraction(last[0]) is None
    assert buffer.flush() == []


def test_unknown_or_malformed_json_lines_are_plain_output_lines():
    assert jobProcess.parseEventLine('{"event": "banana"}') == OutputLine('{"event": "banana"}')
    assert jobProcess.parseEventLine("[1, 2]") == OutputLine("[1, 2]")
    badStep = '{"event": "progress", "step": "x"}'
    assert jobProcess.parseEventLine(badStep) == OutputLine(badStep)
    assert jobProcess.parseEventLine("   ") is None


def test_event_text_is_plain():
    event = jobProcess.parseEventLine(
        json.dumps(
            {"event": "metric", "phase": "validate", "step": 2, "total": 5, "metrics": {"dice": 0.81234, "epoch": 2}}
        )
    )
    warning = jobProcess.parseEventLine(json.dumps({"event": "warning", "message": "few labels"}))

    assert jobProcess.formatEvent(event) == "[validate] 2/5 dice=0.8123, epoch=2"
    assert jobProcess.formatEvent(warning) == "[warning] WARNING: few labels"
    assert jobProcess.formatEvent(OutputLine("raw <text>")) == "raw <text>"
    assert "<" not in jobProcess.formatEvent(event)


def test_read_events_from_a_job_folder(tmp_path):
    (tmp_path / "events.jsonl").write_text(
        json.dumps({"event": "phase", "phase": "rank"}) + "\n\n" + json.dumps({"event": "done"}) + "\n[1, 2]\n"
    )
    assert [e.event for e in read_events(tmp_path)] == ["phase", "done"]
    assert read_events(tmp_path / "missing") == []


def test_worker_command_and_environment_put_the_engine_first(tmp_path):
    command = jobProcess.workerCommand(tmp_path, python="/opt/Slicer/bin/PythonSlicer")
    environment = jobProcess.workerEnvironment({"PYTHONPATH": "/elsewhere"}, useGpu=False)

    assert command == ["/opt/Slicer/bin/PythonSlicer", "-m", "ASSFTActive.worker", str(tmp_path.resolve())]
    assert environment["PYTHONPATH"].split(os.pathsep) == [str(slicer_scene.REPO_ROOT), "/elsewhere"]
    assert environment["PYTHONUNBUFFERED"] == "1" and environment["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in jobProcess.workerEnvironment({})
    assert jobProcess.pythonExecutable()  # PythonSlicer inside Slicer, this interpreter here


def test_engine_root_and_default_card_location():
    assert enginePath.engineRoot() == slicer_scene.REPO_ROOT
    # the engine imported is the one shipped beside the module, with its embedded default card
    assert EMBEDDED_DEFAULT_CARD == (
        slicer_scene.REPO_ROOT / "ASSFTActive" / "resources" / "models" / "hippocampus-unet" / "card.json"
    )
    assert enginePath.requirementsPath() == slicer_scene.REPO_ROOT / "Resources" / "requirements.txt"


def test_device_probe_reports_cpu_or_gpu_from_a_child_process():
    output = subprocess.run(
        jobProcess.deviceProbeCommand(sys.executable), capture_output=True, text=True, timeout=120, check=True
    ).stdout

    info = jobProcess.parseDeviceProbe(output)

    assert info.kind in ("CPU", "GPU")
    assert info.torchVersion
    assert jobProcess.parseDeviceProbe("noise\n").kind == "unknown"
    assert jobProcess.parseDeviceProbe('{"kind": "unknown", "message": "torch is not installed"}').describe() == (
        "unknown (torch is not installed)"
    )


def test_terminating_a_process_tree_stops_children_too(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(tmp_path / "child.pid")!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    pidFile = tmp_path / "child.pid"
    deadline = time.monotonic() + 20
    while not (pidFile.exists() and pidFile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    childPid = int(pidFile.read_text())
    assert childPid in jobProcess.descendantPids(parent.pid)

    killed = jobProcess.terminateProcessTree(parent.pid, timeout=5.0)
    parent.wait(timeout=5)

    assert killed == []  # SIGTERM was enough
    deadline = time.monotonic() + 5
    while jobProcess.isRunning(childPid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jobProcess.isRunning(childPid)


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout(tmp_path):
    if sys.platform == "win32":
        pytest.skip("SIGTERM handlers do not exist on Windows")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"

    killed = jobProcess.terminateProcessTree(process.pid, timeout=0.5)

    assert killed == [process.pid]
    assert process.wait(timeout=5) != 0


def test_missing_requirements_are_found_from_metadata(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\npytest>=1.0  # inline\npytest>=999\nno-such-package-assft\n\n")

    lines = requirements.readRequirements(path)

    assert lines == ["pytest>=1.0", "pytest>=999", "no-such-package-assft"]
    assert requirements.missingRequirements(lines) == ["pytest>=999", "no-such-package-assft"]
    # importable without distribution metadata (how Slicer bundles SimpleITK): not reinstalled
    (tmp_path / "bundled_pkg_assft").mkdir()
    (tmp_path / "bundled_pkg_assft" / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp_path))
    try:
        assert requirements.missingRequirements(["bundled-pkg-assft>=1"]) == []
    finally:
        sys.path.remove(str(tmp_path))
    assert requirements.splitTorch(["torch>=2.4", "monai>=1.5"]) == (["torch>=2.4"], ["monai>=1.5"])


def test_what_slicer_ships_is_never_installed_and_is_pinned_during_installs(tmp_path):
    """numpy and SimpleITK come with Slicer (Slicer's own SimpleITK build, pre-release version strings): even a
    requirement they do not satisfy is not reported missing, never reaches pip, and their versions are pinned."""
    import importlib.metadata

    assert requirements.missingRequirements(["numpy>=999", "SimpleITK>=999", "monai>=999"]) == ["monai>=999"]
    constraints = requirements.shippedConstraints()
    assert f"numpy=={importlib.metadata.version('numpy')}" in constraints
    arguments = requirements.pipInstallArguments(
        ["numpy>=2", "monai>=1.5", "simpleitk", "psutil>=5.9"], tmp_path / "c.txt"
    )
    assert arguments == ["-c", str(tmp_path / "c.txt"), "monai>=1.5", "psutil>=5.9"]
    assert requirements.missingShipped() == []
    shipped = requirements.readRequirements(enginePath.requirementsPath())
    assert "torch" in [requirements.requirementName(r) for r in shipped]


def test_model_card_is_read_with_the_engines_checks(tmp_path):
    card = readModelCard(slicer_scene.writeModelCard(tmp_path / "m"))
    assert card.class_names == ("background", "anterior", "posterior") and card.name == "test-unet"
    assert readModelCard("default").path == readModelCard("").path == EMBEDDED_DEFAULT_CARD
    assert modelReference("") == "default" and modelReference("default") == "default"
    assert modelReference(tmp_path / "m" / "card.json") == str((tmp_path / "m" / "card.json").resolve())

    with pytest.raises(ASSFTModuleError, match="no model card there"):
        readModelCard(tmp_path / "missing.json")
    full = json.loads((tmp_path / "m" / "card.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(full, class_names=["background"])))
    with pytest.raises(ASSFTModuleError, match="background plus at least one class"):
        readModelCard(bad)
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps(dict(full, class_names=["background", "a", "a"])))
    with pytest.raises(ASSFTModuleError, match="duplicates"):
        readModelCard(dup)
    partial = tmp_path / "partial.json"  # what the worker would refuse, the panel refuses too
    partial.write_text(json.dumps({"name": "x", "class_names": ["background", "a"]}))
    with pytest.raises(ASSFTModuleError, match="missing required field"):
        readModelCard(partial)
