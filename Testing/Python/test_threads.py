"""Torch's thread pools follow the cores a process may use (its affinity mask), and ASSFT_NUM_THREADS overrides."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ASSFTActive.threads import THREADS_VARIABLE, thread_count

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", THREADS_VARIABLE, "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_the_count_is_the_affinity_cores_shared_by_the_local_ranks_unless_a_variable_says_otherwise():
    assert thread_count({}, cores=8) == 8
    assert thread_count({"LOCAL_WORLD_SIZE": "2"}, cores=8) == 4
    assert thread_count({"LOCAL_WORLD_SIZE": "16"}, cores=8) == 1
    assert thread_count({"OMP_NUM_THREADS": "3"}, cores=8) == 3
    assert thread_count({THREADS_VARIABLE: "5", "OMP_NUM_THREADS": "3"}, cores=8) == 5


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_malformed_thread_variable_is_refused_with_its_name(value):
    with pytest.raises(ValueError, match=THREADS_VARIABLE):
        thread_count({THREADS_VARIABLE: value}, cores=8)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None,
    reason="needs CPU affinity (Linux, taskset)",
)
def test_a_process_pinned_to_one_core_runs_one_torch_thread_per_pool():
    code = (
        "import torch\nfrom ASSFTActive.threads import size_thread_pools\n"
        "size_thread_pools()\nprint(torch.get_num_threads(), torch.get_num_interop_threads())\n"
    )
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["1", "1"]
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        env=_env(**{THREADS_VARIABLE: "3"}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["3", "3"]


def test_the_command_line_refuses_a_malformed_thread_variable_before_any_work(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ASSFTActive",
            "rank",
            "--images",
            str(tmp_path / "none"),
            "--budget",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        env=_env(**{THREADS_VARIABLE: "lots"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {THREADS_VARIABLE}='lots'")
    assert not (tmp_path / "out").exists()


def _spin_after(code: str, **env: str) -> str:
    """``GOMP_SPINCOUNT`` as a fresh interpreter sees it after ``code`` ("-" when unset), and whether torch loaded."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    environ.update(env)
    probe = f"{code}\nimport os, sys\nprint(os.environ.get('GOMP_SPINCOUNT', '-'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], env=environ, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-2] + " " + out.stdout.split()[-1]


def test_openmp_spinning_is_bounded_before_torch_loads_and_the_users_choice_is_kept():
    call = "from ASSFTActive.threads import bound_openmp_spinning\nbound_openmp_spinning()"
    assert _spin_after(call) == "10000 False"
    assert _spin_after(call, GOMP_SPINCOUNT="5") == "5 False"
    assert _spin_after(call, OMP_WAIT_POLICY="PASSIVE") == "- False"
    assert _spin_after("import torch\n" + call) == "- True"  # too late: libgomp read it when torch loaded


def test_the_command_line_and_the_worker_bound_openmp_spinning_before_importing_torch():
    command_line = "from ASSFTActive.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass"
    assert _spin_after(command_line).startswith("10000")
    worker = "from ASSFTActive import worker\ntry:\n    worker.main(['--help'])\nexcept SystemExit:\n    pass"
    assert _spin_after(worker).startswith("10000")
