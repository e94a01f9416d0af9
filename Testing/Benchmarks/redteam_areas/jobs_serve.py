"""Catalogue areas 1.4 (cancel and kill), 1.5 (worker job folder), 2.1 (``assft serve``) and 2.3 (model store under
kill -9 and concurrency): the rows that ``redteam_rerun.PROBES`` and ``browser_probes()`` do not re-run.

Inputs, rebuilt from the rows (the red team's ``make_jobs7.py``, ``wkill.py``, ``killer.py``, ``race2c.py``,
``share_wd.sh`` and ``wsprobe*.py`` are gone); everything lies under ``js/`` in the run's scratch folder:

* ``js/p7/<row>/job.json``: the row's job (rank jobs on 001/004/007, adapt jobs of 3 + 3 steps), run as
  ``python -m ASSFTActive.worker js/p7/<row>``; ``js/p7_outside`` is the folder a traversal would reach and must
  stay empty.
* 1.4: worker adapt jobs of 20 + 20 steps (``checkpoint_every`` 5, guard off) and an SFR job (SAM 3 steps,
  re-training 20), signalled when ``events.jsonl`` shows the row's step or phase; ``assft adapt`` and ``assft rank``
  signalled at their first checkpoint / first progress line.
* 2.3: ``assft adapt ... --work-dir`` (10 + 10 steps, ``checkpoint_every`` 5, ``--no-guard``) killed at the row's
  moment by a small launcher that runs the CLI in-process and sends the signal to itself exactly there: after a
  checkpoint of a given stage and step is written, or after the store's ``.pending-*`` folder, the weights' temporary
  file, ``version.json`` or the renamed ``v<k>`` folder appears (Python audit events ``os.mkdir``, ``open``,
  ``os.rename``). The red team polled from outside; the moments are the same, only hit every time. After each kill
  the store is checked like ``check_store.py`` did (hidden entries, ``active.json``, ``verify_version(load=True)`` of
  every ``v*``), then the same command runs again. The kills are chained on one work dir (each rerun is the next
  row's killed run), so two trainings cover the eight kill moments.
* 2.1: one ``python -m ASSFTWeb`` of its own (not the one of ``browser_probes()``) on 001/004 plus the row's odd file
  names, driven over the websocket like the page: buttons are the ``trigger__N`` names read from the served
  template by their element ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from Testing.Benchmarks.redteam_rerun import (
    CASES,
    FAST_ADAPT,
    REPO,
    TINY_SAM,
    Probe,
    Run,
    Served,
    World,
    _events,
    refused,
    served_once,
    started,
    steps,
    worker_refused,
)

T = "Testing/Python/"
DEFAULT = REPO / "ASSFTActive" / "resources" / "models" / "hippocampus-unet"
Result = Tuple[bool, str]

#: Fine-tuning settings of a 1.5 adapt job (3 + 3 steps).
JOB_FINETUNE = {
    "train": {"iterations": 3, "batch_size": 1, "patch_size": [32, 32, 32]},
    "semi_iterations": 3,
    "pseudo": {"mode": "none"},
    "validation": {"guard": False},
}
#: Fine-tuning settings of a 1.4 worker kill job (20 + 20 steps, a checkpoint every 5).
KILL_FINETUNE = {
    "train": {"iterations": 20, "batch_size": 1, "patch_size": [32, 32, 32]},
    "semi_iterations": 20,
    "validation": {"guard": False},
    "checkpoint_every": 5,
}
#: ``assft adapt`` options of the 2.3 kill runs (10 + 10 steps; the config file sets ``checkpoint_every`` 5).
KILL_ADAPT = [*steps(10), "--no-guard", "--quiet"]


def _root(w: World, *parts: str) -> Path:
    return w.p("js", *parts)


def _outside_files(w: World) -> List[str]:
    outside = _root(w, "p7_outside")
    return sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) if outside.exists() else []


def prepare(w: World) -> None:
    """The folders every row writes around: ``js/p7_outside`` (must stay empty) and a pool of dot-named volumes."""
    _root(w, "p7_outside").mkdir(parents=True)
    dots = _root(w, "dots")
    dots.mkdir()
    shutil.copy(w.p("base", "images", "hippocampus_001.nii.gz"), dots / "..nii.gz")
    shutil.copy(w.p("base", "images", "hippocampus_004.nii.gz"), dots / "...nii.gz")


# -- 1.5 worker job folder --------------------------------------------------------------------------------------------
def _job_folder(w: World, name: str) -> Path:
    folder = _root(w, "p7", name)
    folder.mkdir(parents=True)
    return folder


def _labels(w: World, cases=CASES[:2]) -> Dict[str, str]:
    return {c: str(w.p("base", "labels", f"{c}.nii.gz")) for c in cases}


def _write(w: World, name: str, job) -> Path:
    """``js/p7/<name>/job.json``: ``job`` as JSON, or as it is when it is a string (text that is not JSON)."""
    folder = _job_folder(w, name)
    (folder / "job.json").write_text(job if isinstance(job, str) else json.dumps(job))
    return folder


def _worker(w: World, job: Path, timeout: float = 180, env: Optional[dict] = None) -> Run:
    return w.cmd([str(job)], timeout=timeout, module="ASSFTActive.worker", env=env)


def job_refused(name: str, make: Callable[[World], object], *words: str, prepare_job=None):
    """A job the worker must refuse: exit 1, an ``error`` event naming ``words``, no ``unexpected`` event, nothing
    in ``js/p7_outside``."""

    def probe(w: World) -> Result:
        job = _write(w, name, make(w))
        if prepare_job is not None:
            prepare_job(w, job)
        run = _worker(w, job)
        ok, text = worker_refused(run, job, *words)
        outside = _outside_files(w)
        if run.traceback:
            ok, text = False, text + " (traceback on stderr)"
        if outside:
            ok, text = False, text + f"; written outside: {outside[:3]}"
        return ok, text

    return probe


def _rank(w: World, **changes) -> dict:
    return dict({"kind": "rank", "images": w.images(), "budget": 1}, **changes)


def _adapt(w: World, store_name: str, **changes) -> dict:
    job = {
        "kind": "adapt",
        "images": w.images(),
        "labels": _labels(w),
        "store": str(_root(w, "p7_store", store_name)),
        "finetune": JOB_FINETUNE,
    }
    return dict(job, **changes)


def _symlink_deep(w: World, job: Path) -> None:
    (job / "checkpoints").mkdir()
    os.symlink(_root(w, "p7_outside"), job / "checkpoints" / "x")


def _symlink_jobjson(w: World, job: Path) -> None:
    real = _root(w, "p7_jobjson_target.json")
    real.write_text((job / "job.json").read_text())
    (job / "job.json").unlink()
    os.symlink(real, job / "job.json")


class _Payload:
    """Unpickling it creates the folder ``marker``: the folder appears only if a loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_card(w: World) -> Path:
    """``js/cards/pickle_pt``: the default card whose weights are ``evil.pt``, a ``torch.save`` pickle that would
    create ``js/pwned`` when unpickled."""
    import torch

    folder = _root(w, "cards", "pickle_pt")
    folder.mkdir(parents=True)
    card = json.loads((DEFAULT / "card.json").read_text())
    card.pop("provenance", None)
    card["weights"] = "evil.pt"
    (folder / "card.json").write_text(json.dumps(card, indent=1))
    torch.save({"state_dict": _Payload(_root(w, "pwned"))}, str(folder / "evil.pt"))
    return folder / "card.json"


def p_pickle_card(w: World) -> Result:
    card = _pickle_card(w)
    ok, text = job_refused("model_pickle_card", lambda w: _rank(w, model=str(card)), "weights-only")(w)
    if _root(w, "pwned").exists():
        ok, text = False, text + "; the pickle RAN (js/pwned created)"
    return ok, text


def p_plain_rank_emptyhome(w: World) -> Result:
    home = _root(w, "home_empty")
    home.mkdir()
    job = _write(w, "plain_rank", _rank(w))
    run = _worker(w, job, env=dict(w.env, HOME=str(home)))
    events = _events(job)
    last = events[-1] if events else {}
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    ok = run.rc == 0 and last.get("event") == "done" and not written and not run.traceback
    return ok, f"exit {run.rc}: {last.get('event')}: {str(last.get('message', ''))[:150]}; under $HOME: " + (
        f"{written[:3]}" if written else "nothing"
    )


def _tree_outside(folder: Path, inside: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if inside not in (p, *p.parents))


def p_dot_case_ids(w: World) -> Result:
    dots = _root(w, "dots")
    images = {".": str(dots / "..nii.gz"), "..": str(dots / "...nii.gz")}
    job = _write(w, "dot_case_ids", {"kind": "rank", "images": images, "budget": 1})
    before = _tree_outside(_root(w), job)
    run = _worker(w, job)
    new = sorted(set(_tree_outside(_root(w), job)) - set(before))
    events = _events(job)
    last = events[-1] if events else {}
    outputs = sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.parent.name in ("predictions", "overlays"))
    ok = run.rc == 0 and last.get("event") == "done" and not new and outputs
    return ok, f"exit {run.rc}: {last.get('event')}; outputs in the job folder: {outputs[:4]}; outside: " + (
        f"{new[:3]}" if new else "nothing"
    )


def p_relative_store(w: World) -> Result:
    job = _write(w, "relative_store", _adapt(w, "unused", store="store"))
    before = sorted(p.name for p in w.root.iterdir())
    run = _worker(w, job, timeout=300)
    after = sorted(p.name for p in w.root.iterdir())
    events = _events(job)
    last = events[-1] if events else {}
    versions = sorted(p.name for p in (job / "store").glob("*/v*"))
    ok = run.rc == 0 and last.get("event") == "done" and versions and after == before and not run.traceback
    return ok, (
        f"exit {run.rc}: {last.get('event')}: {str(last.get('message', ''))[:150]}; versions in the job folder's "
        f"store: {versions or 'none'}; new in the cwd: {sorted(set(after) - set(before)) or 'nothing'}"
    )


def _traversal_name(name: str):
    def probe(w: World) -> Result:
        ok, text = job_refused(f"name_{name.strip('./') or 'dotdot'}", lambda w: _adapt(w, "t", name=name), "name")(w)
        stored = sorted(str(p) for p in _root(w, "p7_store").rglob("v*"))
        return ok and not stored, text + (f"; stored: {stored[:2]}" if stored else "")

    return probe


# -- 1.4 cancel and kill --------------------------------------------------------------------------------------------
class _Signalled:
    """A process started in the scratch folder, signalled by ``watch(predicate, signal)``."""

    def __init__(self, w: World, argv: List[str], env: Optional[dict] = None):
        self.out = open(w.p("js", f"out_{time.monotonic_ns()}.txt"), "w+")
        self.proc = subprocess.Popen(
            argv, cwd=w.root, env=env or w.env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.signalled_at: Optional[float] = None

    def watch(self, fired: Callable[[], bool], sig: int, timeout: float = 240) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if fired():
                self.proc.send_signal(sig)
                self.signalled_at = time.monotonic()
                return True
            time.sleep(0.01)
        return False

    def wait(self, timeout: float = 240) -> Tuple[Optional[int], float, str]:
        """Exit code, seconds from the signal to the exit, the output."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        took = time.monotonic() - self.signalled_at if self.signalled_at else float("nan")
        self.out.seek(0)
        text = self.out.read()
        self.out.close()
        return self.proc.returncode, took, text


def _worker_argv(job: Path) -> List[str]:
    return ["nice", "-n", "19", sys.executable, "-m", "ASSFTActive.worker", str(job)]


def _event_seen(job: Path, test: Callable[[dict], bool]) -> Callable[[], bool]:
    def fired() -> bool:
        path = job / "events.jsonl"
        if not path.exists():
            return False
        for line in path.read_text().splitlines():
            try:
                if test(json.loads(line)):
                    return True
            except ValueError:
                pass  # a line being written
        return False

    return fired


def _train_step(step: int) -> Callable[[dict], bool]:
    return lambda e: e.get("phase") == "train" and e.get("event") == "progress" and int(e.get("step", 0)) >= step


def _kill_job(w: World, name: str, kind: str = "adapt") -> Path:
    data = {
        "kind": kind,
        "images": w.images(),
        "labels": _labels(w),
        "store": str(_root(w, "p5", "store_" + name)),
        "name": "base",
    }
    if kind == "adapt":
        data["finetune"] = KILL_FINETUNE
    else:
        data["sfr"] = {
            "sam": {"iterations": 3},
            "retrain": {"iterations": 20, "batch_size": 1, "patch_size": [32, 32, 32]},
            "checkpoint_every": 5,
            "validation": {"guard": False},
        }
        data["sam_prior"] = str(TINY_SAM)
    folder = _root(w, "p5", name)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(data))
    return folder


def _store_state(store: Path, name: str = "base") -> dict:
    """What ``check_store.py`` looked at: entries (hidden too), the active version, each ``v*`` verified."""
    from ASSFTActive.store import ModelStore, verify_version

    folder = store / name
    state = {"entries": sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [], "bad": []}
    state["hidden"] = [e for e in state["entries"] if e.startswith(".")]
    state["versions"] = [v.version for v in ModelStore(store).versions(name)] if folder.is_dir() else []
    state["active"] = ModelStore(store).active_version(name) if folder.is_dir() else None
    for version in sorted(folder.glob("v*")) if folder.is_dir() else []:
        try:
            verify_version(version, load=True)
        except Exception as error:  # noqa: BLE001 - recorded, judged by the row
            state["bad"].append(f"{version.name}: {type(error).__name__}: {error}"[:120])
    return state


def _last(job: Path) -> dict:
    events = _events(job)
    return events[-1] if events else {}


def _result(job: Path) -> dict:
    path = job / "result.json"
    return json.loads(path.read_text()) if path.exists() else {}


def p_worker_sigterm_step7(w: World) -> Result:
    job = _kill_job(w, "w_term")
    run = _Signalled(w, _worker_argv(job))
    sent = run.watch(_event_seen(job, _train_step(7)), signal.SIGTERM)
    rc, took, _ = run.wait()
    last, result = _last(job), _result(job)
    store = _store_state(_root(w, "p5", "store_w_term"))
    ok = (
        sent
        and rc == 130
        and took < 10
        and last.get("event") == "error"
        and last.get("message") == "cancelled"
        and result.get("status") == "cancelled"
        and not store["entries"]
    )
    return ok, (
        f"SIGTERM at train step 7: rc {rc} {took:.1f} s after it; last event {last.get('event')}: "
        f"{last.get('message')}; result.json {result.get('status')}; store entries: {store['entries'] or 'none'}"
    )


def _resumed(events: list) -> str:
    """The message of the first of ``events`` that speaks of resuming ('' if none does)."""
    return next((e.get("message", "") for e in events if "resum" in str(e.get("message", ""))), "")


_WORKER_KILL: dict = {}


def _worker_kill_rerun(w: World) -> dict:
    """``p5/w_kill``: SIGKILL at train step 27, then the worker again with SIGTERM once the ``commit`` phase shows
    (the rows worker_sigkill_step27_rerun and worker_sigterm_commit, on one training)."""
    if _WORKER_KILL:
        return _WORKER_KILL
    job = _kill_job(w, "w_kill")
    first = _Signalled(w, _worker_argv(job))
    sent = first.watch(_event_seen(job, _train_step(27)), signal.SIGKILL)
    rc1, _, _ = first.wait()
    store1 = _store_state(_root(w, "p5", "store_w_kill"))
    lines_before = len(_events(job))
    second = _Signalled(w, _worker_argv(job))
    commit = second.watch(
        lambda: any(e.get("phase") == "commit" for e in _events(job)[lines_before:]), signal.SIGTERM, timeout=300
    )
    rc2, _, _ = second.wait()
    events = _events(job)[lines_before:]
    resumed = _resumed(events)
    log = (job / "log.txt").read_text() if (job / "log.txt").exists() else ""
    _WORKER_KILL.update(
        sent=sent,
        rc1=rc1,
        store1=store1,
        commit=commit,
        rc2=rc2,
        last=events[-1] if events else {},
        resumed=resumed,
        note=next((line for line in log.splitlines() if "after the new version was committed" in line), ""),
        store2=_store_state(_root(w, "p5", "store_w_kill")),
    )
    return _WORKER_KILL


def p_worker_sigkill_rerun(w: World) -> Result:
    r = _worker_kill_rerun(w)
    ok = (
        r["sent"]
        and r["rc1"] == -9
        and not r["store1"]["versions"]
        and "step 25" in r["resumed"]
        and r["rc2"] == 0
        and r["last"].get("event") == "done"
        and r["store2"]["active"] == "v1"
        and not r["store2"]["bad"]
    )
    return ok, (
        f"SIGKILL at step 27: rc {r['rc1']}, store versions {r['store1']['versions'] or 'none'}; rerun: "
        f"'{r['resumed'][:80]}', rc {r['rc2']}, {r['last'].get('event')}, active {r['store2']['active']}"
    )


def p_worker_sigterm_commit(w: World) -> Result:
    r = _worker_kill_rerun(w)
    ok = r["commit"] and r["rc2"] == 0 and r["last"].get("event") == "done" and bool(r["note"])
    ok = ok and r["store2"]["active"] == "v1" and not r["store2"]["bad"]
    return ok, (
        f"SIGTERM at the commit phase (rerun of w_kill): rc {r['rc2']}, {r['last'].get('event')}, active "
        f"{r['store2']['active']}; log.txt: '{r['note'][20:110] or 'no note'}'"
    )


_SFR_KILL: dict = {}


def _sfr_kill(w: World) -> dict:
    """``p5/w_sfr_kill`` killed at re-training step 7; a copy with ``sam.iterations`` 3 -> 4 run on its checkpoints;
    then the original again."""
    if _SFR_KILL:
        return _SFR_KILL
    job = _kill_job(w, "w_sfr_kill", kind="sfr")
    first = _Signalled(w, _worker_argv(job))
    sent = first.watch(_event_seen(job, _train_step(7)), signal.SIGKILL, timeout=400)
    rc1, _, _ = first.wait()
    changed = _root(w, "p5", "w_sfr_changed")
    shutil.copytree(job, changed)
    for name in ("events.jsonl", "log.txt", "result.json"):
        (changed / name).unlink(missing_ok=True)
    data = json.loads((changed / "job.json").read_text())
    data["sfr"]["sam"]["iterations"] = 4
    (changed / "job.json").write_text(json.dumps(data))
    refusal = _worker(w, changed, timeout=300)
    lines_before = len(_events(job))
    rerun = _worker(w, job, timeout=400)
    events = _events(job)[lines_before:]
    _SFR_KILL.update(
        sent=sent,
        rc1=rc1,
        changed=changed,
        refusal=refusal,
        rerun=rerun,
        resumed=_resumed(events),
        sam_again=sorted(
            {e.get("phase") for e in events if e.get("event") == "progress" and "sfr_f" in str(e.get("phase"))}
        ),
        last=events[-1] if events else {},
        store=_store_state(_root(w, "p5", "store_w_sfr_kill")),
    )
    return _SFR_KILL


def p_sfr_sigkill_rerun(w: World) -> Result:
    r = _sfr_kill(w)
    ok = (
        r["sent"]
        and r["rc1"] == -9
        and r["rerun"].rc == 0
        and "step 5" in r["resumed"]
        and r["last"].get("event") == "done"
        and r["store"]["active"] == "v1"
        and not r["store"]["bad"]
        and not r["sam_again"]
    )
    return ok, (
        f"SIGKILL at re-training step 7: rc {r['rc1']}; rerun rc {r['rerun'].rc}: '{r['resumed'][:110]}', "
        f"{r['last'].get('event')}, active {r['store']['active']}; SAM fine-tuned again: {r['sam_again'] or 'no'}"
    )


def p_sfr_resume_changed(w: World) -> Result:
    r = _sfr_kill(w)
    ok, text = worker_refused(r["refusal"], r["changed"], "changed", "delete")
    return ok, "sam.iterations 3 -> 4 on the killed job's checkpoints: " + text


def _cli_argv(args: List[str]) -> List[str]:
    return ["nice", "-n", "19", sys.executable, "-m", "ASSFTActive"] + [str(a) for a in args]


def p_cli_adapt_sigterm(w: World) -> Result:
    wd = _root(w, "p2c", "wd_term")
    config = _checkpoint_config(w)
    args = ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", "js/p2c/store_term"]
    run = _Signalled(w, _cli_argv(args + KILL_ADAPT + ["--config", str(config), "--work-dir", str(wd)]))
    sent = run.watch(lambda: (wd / "checkpoint.pt").exists(), signal.SIGTERM)
    rc, took, out = run.wait()
    last = [line for line in out.splitlines() if line.strip()][-1:] or [""]
    kept = sorted(p.name for p in wd.iterdir()) if wd.exists() else []
    stored = sorted(p.name for p in _root(w, "p2c", "store_term").glob("*/v*"))
    ok = sent and rc == 130 and "cancelled" in last[0] and "Traceback" not in out and "checkpoint.pt" in kept
    ok = ok and not stored
    return ok, (
        f"SIGTERM at the first checkpoint: rc {rc} {took:.1f} s after it, last line '{last[0][:80]}'; work dir "
        f"keeps {kept}; versions stored: {stored or 'none'}"
    )


def p_cli_rank_sigterm(w: World) -> Result:
    out_dir = _root(w, "p5", "rank_term")
    run = _Signalled(w, _cli_argv(["rank", "--images", "base/images", "--budget", "1", "--out", str(out_dir)]))
    sent = run.watch(lambda: _progress_line(run), signal.SIGTERM)
    rc, took, out = run.wait()
    last = [line for line in re.split(r"[\r\n]", out) if line.strip()][-1:] or [""]
    left = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*")) if out_dir.exists() else None
    ok = sent and rc == 130 and took < 10 and "cancelled" in last[0] and "Traceback" not in out
    return ok, (
        f"SIGTERM at the first progress line: rc {rc} {took:.1f} s after it, last line '{last[0][:80]}'; --out "
        + ("not created" if left is None else f"holds {left[:4] or 'nothing'}")
    )


def _progress_line(run: _Signalled) -> bool:
    run.out.flush()
    with open(run.out.name) as handle:
        return bool(re.search(r"rank[^\n\r]*\b[1-9]/", handle.read()))


# -- 2.3 model store under kill -9 and concurrency ----------------------------------------------------------------
KILLER = r"""
import os, re, runpy, signal, sys
repo, when, signame = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, repo)
sig = getattr(signal, signame)
state = {"armed": None, "fired": False}
PENDING, VERSION = "/.pending-", r"/v\d+$"
WEIGHTS_TMP = r"/\.pending-[^/]*/\.weights\.safetensors\.[^/]*\.tmp"
MANIFEST = r"/\.pending-[^/]*/version\.json$"

def fire():
    state["fired"] = True
    sys.stderr.write(f"killer: {signame} at {when}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), sig)

from ASSFTActive.finetune import checkpoints
load = checkpoints.Checkpoints.load
def loaded(self):  # where a rerun resumes: said on stderr
    checkpoint = load(self)
    if checkpoint is not None:
        sys.stderr.write(f"killer: resuming from stage {checkpoint.stage} step {checkpoint.step}\n")
    return checkpoint
checkpoints.Checkpoints.load = loaded
if when.startswith("ckpt:"):  # after the checkpoint of stage S, step K is written
    stage, step = (int(x) for x in when.split(":")[1:])
    save = checkpoints.Checkpoints.save
    def patched(self, checkpoint):
        save(self, checkpoint)
        if not state["fired"] and checkpoint.stage == stage and checkpoint.step == step:
            fire()
    checkpoints.Checkpoints.save = patched
else:  # at the first audit event after the path of the moment exists
    def hook(event, args):
        paths = [str(a) for a in args[:2]] if event in ("os.rename", "open", "os.mkdir") else []
        if state["fired"]:
            return
        armed = state["armed"]
        if armed is not None:
            if os.path.lexists(armed):
                fire()
            return
        if event == "os.mkdir" and when == "pending" and PENDING in paths[0]:
            state["armed"] = str(args[0])
        elif event == "open" and when == "weights_tmp" and re.search(WEIGHTS_TMP, paths[0]):
            state["armed"] = str(args[0])
        elif event == "os.rename" and when == "manifest" and re.search(MANIFEST, paths[1]):
            state["armed"] = str(args[1])
        elif event == "os.rename" and when == "renamed" and PENDING in paths[0] and re.search(VERSION, paths[1]):
            state["armed"] = str(args[1])
    sys.addaudithook(hook)
sys.argv = ["assft"] + sys.argv[4:]
runpy.run_module("ASSFTActive", run_name="__main__", alter_sys=True)
"""


def _checkpoint_config(w: World) -> Path:
    path = _root(w, "p2c", "cfg.json")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"checkpoint_every": 5}))
    return path


def _adapt_args(w: World, store: Path, wd: Optional[Path], extra: Optional[List[str]] = None) -> List[str]:
    args = ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", str(store), "--name", "base"]
    args += extra or KILL_ADAPT + ["--config", str(_checkpoint_config(w))]
    return args + (["--work-dir", str(wd)] if wd is not None else [])


def _killed(w: World, when: str, sig: str, args: List[str]) -> Run:
    """``assft <args>`` sending itself ``sig`` at ``when`` (``"-"``: not at all)."""
    argv = ["nice", "-n", "19", sys.executable, "-c", KILLER, str(REPO), when, sig] + [str(a) for a in args]
    return w.popen(argv, 300)


def _provenance(store: Path, version: Optional[str]) -> dict:
    path = store / "base" / str(version) / "provenance.json"
    return json.loads(path.read_text()) if version and path.exists() else {}


_CHAINS: Dict[str, dict] = {}


def _chain(w: World, name: str, moments: List[Tuple[str, str]]) -> dict:
    """One work dir, runs killed at ``moments`` in turn (each run resumes the last), then one run to the end;
    the store's state after each."""
    if name in _CHAINS:
        return _CHAINS[name]
    store, wd = _root(w, "p2c", "store_" + name), _root(w, "p2c", "wd_" + name)
    seed = w.cmd(_adapt_args(w, store, None, FAST_ADAPT + ["--no-guard"]))  # v1, active: what a kill must keep
    if seed.rc != 0:
        raise RuntimeError(f"could not seed the store: exit {seed.rc}: {seed.last_error()}")
    steps = []
    for when, sig in moments:
        before = _store_state(store)
        run = _killed(w, when, sig, _adapt_args(w, store, wd))
        after = _store_state(store)
        steps.append({"when": when, "sig": sig, "run": run, "before": before, "after": after})
    _CHAINS[name] = {"store": store, "wd": wd, "steps": steps}
    return _CHAINS[name]


def _step(chain: dict, when: str) -> Tuple[dict, dict]:
    """The run killed at ``when`` and the run after it."""
    steps = chain["steps"]
    index = next(i for i, s in enumerate(steps) if s["when"] == when)
    return steps[index], steps[index + 1]


def _consistent(state: dict) -> bool:
    return not state["bad"] and (state["active"] is None or state["active"] in state["versions"])


def _describe(state: dict) -> str:
    return f"active {state['active']}, versions {state['versions']}, hidden {state['hidden'] or 'none'}" + (
        f", BAD {state['bad'][:1]}" if state["bad"] else ""
    )


#: The step kills: stage 0 step 5, stage 1 step 5, then SIGINT while committing.
STEP_KILLS = [("ckpt:0:5", "SIGKILL"), ("ckpt:1:5", "SIGKILL"), ("pending", "SIGINT")]
#: The commit kills, each on the rerun of the one before, then SIGTERM while committing.
COMMIT_KILLS = [
    ("pending", "SIGKILL"),
    ("weights_tmp", "SIGKILL"),
    ("manifest", "SIGKILL"),
    ("renamed", "SIGKILL"),
    ("pending", "SIGTERM"),
]


def p_kill9_step(stage: int) -> Callable[[World], Result]:
    def probe(w: World) -> Result:
        chain = _chain(w, "steps", STEP_KILLS)
        killed, rerun = _step(chain, f"ckpt:{stage}:5")
        found = re.search(r"killer: resuming from stage (\d+) step (\d+)", rerun["run"].text)
        resumed = (int(found.group(1)), int(found.group(2))) if found else None
        if rerun["run"].rc == 0:  # the run that finished: its provenance says where it resumed too
            provenance = _provenance(chain["store"], rerun["after"]["active"]).get("resumed_from_step")
            resumed = resumed if provenance == 15 else (resumed, f"provenance {provenance}")
        ok = (
            killed["run"].rc == -9
            and killed["after"]["versions"] == killed["before"]["versions"]
            and killed["after"]["active"] == killed["before"]["active"]
            and _consistent(killed["after"])
            and resumed == (stage, 5)
        )
        return ok, (
            f"SIGKILL at checkpoint stage {stage} step 5: rc {killed['run'].rc}; {_describe(killed['after'])}; "
            f"next run resumed from (stage, step) {resumed} (rc {rerun['run'].rc})"
        )

    return probe


def p_kill9_commit(when: str) -> Callable[[World], Result]:
    def probe(w: World) -> Result:
        chain = _chain(w, "commit", COMMIT_KILLS)
        killed, rerun = _step(chain, when)
        after, next_after = killed["after"], rerun["after"]
        stale = [h for h in after["hidden"] if h.startswith(".pending-")]
        ok = killed["run"].rc == -9 and _consistent(after) and after["active"] == killed["before"]["active"]
        if when == "renamed":  # the renamed version is complete, visible, not active
            new = sorted(set(after["versions"]) - set(killed["before"]["versions"]))
            ok = ok and len(new) == 1
            seen = f"new {new} complete and verified, not active"
        else:
            ok = ok and after["versions"] == killed["before"]["versions"]
            seen = f"hidden pending left: {stale or 'none'}"
        cleaned = not (set(stale) & set(next_after["hidden"]))
        ok = ok and cleaned and _consistent(next_after)
        return ok, (
            f"SIGKILL at {when}: rc {killed['run'].rc}; {_describe(after)}; {seen}; next run rc "
            f"{rerun['run'].rc}: {_describe(next_after)}"
        )

    return probe


def p_term_int_commit(w: World) -> Result:
    parts, ok = [], True
    for chain_name, moments in (("commit", COMMIT_KILLS), ("steps", STEP_KILLS)):
        chain = _chain(w, chain_name, moments)
        for step in chain["steps"]:
            if step["when"] == "pending" and step["sig"] in ("SIGTERM", "SIGINT"):
                after, before = step["after"], step["before"]
                new = sorted(set(after["versions"]) - set(before["versions"]))
                left = sorted(p.name for p in chain["wd"].glob("*.pt")) if chain["wd"].exists() else []
                good = step["run"].rc == 0 and len(new) == 1 and after["active"] == new[0] and _consistent(after)
                ok = ok and good and not left
                parts.append(
                    f"{step['sig']} at .pending-*: rc {step['run'].rc}, new {new}, active {after['active']}, "
                    f"checkpoints left: {left or 'none'}"
                )
    return ok and len(parts) == 2, "; ".join(parts)


ACTIVATOR = r"""
import random, sys, time
sys.path.insert(0, sys.argv[1])
from ASSFTActive.store import ModelStore
store, until = ModelStore(sys.argv[2]), time.time() + float(sys.argv[3])
done = errors = 0
while time.time() < until:
    try:
        store.activate("base", random.choice(sys.argv[4:]), load=True)
        done += 1
    except Exception as error:
        errors += 1
        print("error:", error, file=sys.stderr)
    time.sleep(0.02)
print(done, errors)
"""


def p_concurrent_activate(w: World) -> Result:
    """A tiny adapt committing into a store while two processes activate v1/v2/v3 every 20 ms and this process
    re-reads ``active.json`` and checks the named version against its manifest."""
    import hashlib

    chain = _chain(w, "commit", COMMIT_KILLS)
    store = _root(w, "p2c", "store_race")
    shutil.copytree(chain["store"], store)
    versions = [v for v in _store_state(store)["versions"]][:3]
    if len(versions) < 3:
        return False, f"the store has only {versions}"
    seconds = 60
    activator = [sys.executable, "-c", ACTIVATOR, str(REPO), str(store), str(seconds)] + versions
    activators = [started(w, activator) for _ in range(2)]
    adapt = started(w, _cli_argv(_adapt_args(w, store, None, FAST_ADAPT)), subprocess.DEVNULL, own_session=True)
    reads = changes = bad = 0
    last, problems = None, []
    digests: Dict[Tuple[str, int], str] = {}
    while adapt.poll() is None or any(a.poll() is None for a in activators):
        try:
            name = json.loads((store / "base" / "active.json").read_text())["version"]
        except (OSError, ValueError, KeyError) as error:
            bad += 1
            problems.append(f"active.json unreadable: {error}")
            continue
        reads += 1
        changes += name != last
        last = name
        folder = store / "base" / name
        try:
            manifest = json.loads((folder / "version.json").read_text())
            for file, entry in manifest["files"].items():
                stat = (folder / file).stat()
                key = (f"{name}/{file}", stat.st_mtime_ns)
                if key not in digests:
                    digests[key] = hashlib.sha256((folder / file).read_bytes()).hexdigest()
                if stat.st_size != entry["bytes"] or digests[key] != entry["sha256"]:
                    raise ValueError(f"{name}/{file} differs from its manifest")
        except (OSError, ValueError, KeyError) as error:
            bad += 1
            problems.append(str(error))
        time.sleep(0.001)
    _, adapt_err = adapt.communicate()
    counts = [a.communicate()[0].split() for a in activators]
    done = sum(int(c[0]) for c in counts if len(c) == 2)
    errors = sum(int(c[1]) for c in counts if len(c) == 2)
    state = _store_state(store)
    ok = adapt.returncode == 0 and errors == 0 and bad == 0 and len(state["versions"]) == len(versions) + 1
    ok = ok and not state["bad"] and done > 0
    return ok, (
        f"adapt rc {adapt.returncode}; {done} activations, {errors} errors; watcher: {reads} reads, {changes} changes, "
        f"{bad} bad{(' (' + problems[0][:80] + ')') if problems else ''}; versions now {state['versions']}"
    )


def p_two_adapts_same_workdir(w: World) -> Result:
    store, wd = _root(w, "p2c", "store_wd2"), _root(w, "p2c", "wd2")
    first = _Signalled(w, _cli_argv(_adapt_args(w, store, wd, FAST_ADAPT)))
    locked = first.watch(lambda: any(wd.glob("*lock*")) or (wd / "checkpoint.pt").exists(), 0, timeout=120)
    second = w.cmd(_adapt_args(w, store, wd, FAST_ADAPT), timeout=240)
    rc1, _, out1 = first.wait()
    ok, text = refused(second, "in use")
    state = _store_state(store)
    ok = ok and locked and rc1 == 0 and state["active"] == "v1" and not state["bad"]
    return ok, f"second: {text}; first rc {rc1}, {_describe(state)}"


def p_two_adapts_same_store_name(w: World) -> Result:
    store = _root(w, "p2c", "store_twin")
    argv = _cli_argv(_adapt_args(w, store, None, FAST_ADAPT + ["--no-guard"]))
    runs = [started(w, argv, subprocess.DEVNULL, own_session=True) for _ in range(2)]
    codes = []
    for run in runs:
        _, err = run.communicate(timeout=300)
        codes.append(run.returncode)
    state = _store_state(store)
    ok = codes == [0, 0] and state["versions"] == ["v1", "v2"] and not state["bad"] and not state["hidden"]
    return ok, f"exit codes {codes}; {_describe(state)}"


# -- 2.1 assft serve ------------------------------------------------------------------------------------------------
#: The row's odd file names in the data folder (copies of 007): two dot names and one with backslashes.
ODD_NAMES = ("..nii.gz", "...nii.gz", "a\\..\\..\\b.nii.gz")


_SERVED: dict = {}


def _served(w: World) -> Served:
    """``python -m ASSFTWeb`` on ``js/p2a/data``: 001, 004 and the row's odd names (copies of 007), started once."""
    served = served_once(_SERVED, w, lambda w: Served(w, _root(w, "p2a"), [(CASES[2], name) for name in ODD_NAMES]))
    if isinstance(served, Exception):
        raise RuntimeError(f"server did not start: {served}")
    return served


def _state(answer: dict) -> dict:
    return answer.get("result", {}).get("state", {}) if isinstance(answer, dict) else {}


def _buttons(state: dict) -> Dict[str, str]:
    """``{element id: trigger name}`` of the served template's buttons and fields."""
    template = "".join(str(v) for k, v in state.items() if k.startswith("trame__template"))
    found = {}
    for tag in re.findall(r"<[^>]+>", template):
        ident = re.search(r'\bid="([^"]+)"', tag)
        trigger = re.search(r"trigger\('(trigger__\d+)'", tag)
        if ident and trigger:
            found[ident.group(1)] = trigger.group(1)
    return found


async def _until(client, test: Callable[[dict], bool], timeout: float = 240) -> dict:
    """The page state once ``test(state)`` holds (polled every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        state = _state(await client.call("trame.state.get"))
        if test(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


async def _press(client, buttons: Dict[str, str], ident: str) -> dict:
    return await client.call("trame.trigger", [buttons[ident], [], {}])


def b_case_names_and_state_paths(w: World) -> dict:
    """Rank, then (after the state's labels_dir/data_dir were set from the client) pre-filled Annotate and Save of
    the first row; what the page said and where files went."""
    if "paths" in _SERVED:
        return _SERVED["paths"]
    served = _served(w)
    outside = _root(w, "p2a", "outside")
    outside.mkdir()

    async def work(client):
        await client.hello(served.secret)
        first = _state(await client.call("trame.state.get"))
        buttons = _buttons(first)
        updates = {}
        for key, value in (("labels_dir", str(outside)), ("data_dir", "/etc")):
            await client.call("trame.state.update", [[{"key": key, "value": value}]])
            updates[key] = _state(await client.call("trame.state.get")).get(key)
        await client.call("trame.trigger", ["rank", [], {}])
        ranked = await _until(
            client, lambda s: not s.get("job_running") and s.get("job_outcome") not in ("", "running")
        )
        await client.call("trame.state.update", [[{"key": "prefill", "value": True}]])
        await client.call("trame.trigger", ["select_row", [0], {}])
        await _press(client, buttons, "btn_annotate")
        await _press(client, buttons, "btn_save")
        saved = _state(await client.call("trame.state.get"))
        return first, buttons, updates, ranked, saved

    first, buttons, updates, ranked, saved = served.session(work)
    labels = served.data / "labels"
    _SERVED["paths"] = {
        "volumes": first.get("volumes", []),
        "skipped": first.get("skipped", []),
        "buttons": buttons,
        "updates": updates,
        "outcome": ranked.get("job_outcome"),
        "rank_error": ranked.get("error", ""),
        "saved_message": saved.get("saved_message", ""),
        "save_error": saved.get("error", ""),
        "labels": sorted(p.name for p in labels.rglob("*")) if labels.exists() else [],
        "outside": sorted(p.name for p in outside.rglob("*")),
        "data_parent": sorted(p.name for p in served.data.parent.iterdir()),
    }
    return _SERVED["paths"]


def b_case_name_traversal(w: World) -> Result:
    r = b_case_names_and_state_paths(w)
    odd_listed = [v for v in r["volumes"] if "\\" in str(v) or str(v).startswith(".")]
    said = [m for m in r["skipped"] if any(n.split(".nii")[0] in m for n in ODD_NAMES)]
    unsaid = [
        n for n in ODD_NAMES if not any(n in m for m in r["skipped"]) and n.replace(".nii.gz", "") not in r["volumes"]
    ]
    ok = (
        r["outcome"] == "done"
        and bool(r["labels"])
        and not r["outside"]
        and r["data_parent"]
        == [
            "data",
            "outside",
            "server.log",
        ]
    )
    ok = ok and not unsaid
    return ok, (
        f"volumes {r['volumes']}; skipped messages: {[m[:50] for m in said] or 'none'}; not mentioned: "
        f"{unsaid or 'none'}; listed odd names: {odd_listed or 'none'}; rank {r['outcome']}; labels folder "
        f"{r['labels'][:3]}; beside the data folder: {r['data_parent']}"
    )


def b_state_paths(w: World) -> Result:
    r = b_case_names_and_state_paths(w)
    kept = r["updates"].get("labels_dir") != str(_root(w, "p2a", "outside")) and r["updates"].get("data_dir") != "/etc"
    ok = kept and r["outcome"] == "done" and bool(r["labels"]) and not r["outside"] and "labels" in r["saved_message"]
    return ok, (
        f"labels_dir/data_dir from the client: {'refused' if kept else 'TAKEN'}; rank {r['outcome']}; "
        f"{(r['saved_message'] or r['save_error'])[:110]}; outside folder: {r['outside'] or 'empty'}"
    )


def b_label_file_symlink(w: World) -> Result:
    """The Save button's function (``save_label_file``) with ``labels/hippocampus_001.nii.gz`` a link to an outside
    text file."""
    labels, outside = _root(w, "p2a", "labels_link"), _root(w, "p2a", "outside_link")
    labels.mkdir(parents=True)
    outside.mkdir()
    target = outside / "notes.txt"
    target.write_text("keep me\n")
    os.symlink(target, labels / "hippocampus_001.nii.gz")
    child = (
        "import sys\nsys.path.insert(0, sys.argv[1])\nfrom pathlib import Path\n"
        "from ASSFTActive.errors import OutputError\nfrom ASSFTActive.io import read_volume\n"
        "from ASSFTWeb.label_files import save_label_file\n"
        "try:\n    save_label_file(read_volume(sys.argv[2]), Path(sys.argv[3]), 'hippocampus_001')\n"
        "    print('saved')\nexcept OutputError as error:\n    print('refused:', error)\n"
    )
    run = w.popen(
        [sys.executable, "-c", child, str(REPO), str(w.p("base", "labels", "hippocampus_001.nii.gz")), str(labels)],
        120,
    )
    untouched = target.read_text() == "keep me\n" and sorted(p.name for p in outside.iterdir()) == ["notes.txt"]
    ok = run.rc == 0 and untouched and not run.traceback and run.out.strip() != ""
    return ok, f"save: {run.out.strip()[:140] or run.last_error()}; outside file " + (
        "unchanged" if untouched else "CHANGED"
    )


def b_malformed_frames(w: World) -> Result:
    import msgpack

    served = _served(w)
    outcomes = []
    frames = [
        ("text", "not wslink"),
        ("40 random bytes", os.urandom(40)),
        ("msgpack list", None),
        ("dict without method", None),
    ]
    for label, frame in frames:

        async def work(client, label=label, frame=frame):
            from wslink import chunking

            await client.hello(served.secret)
            if label == "msgpack list":
                payload = msgpack.packb([1, 2, 3])
            elif label == "dict without method":
                payload = msgpack.packb({"wslink": "1.0", "id": "rpc:c0:9", "args": []})
            else:
                payload = None
            if payload is not None:
                for chunk in chunking.generate_chunks(payload, 4096):
                    await client.ws.send_bytes(chunk)
            elif isinstance(frame, str):
                await client.ws.send_str(frame)
            else:
                await client.ws.send_bytes(frame)
            try:
                answer = await client.call("trame.state.get", timeout=5)
                return "answered" if "result" in answer else str(answer)[:40]
            except asyncio.TimeoutError:
                return "no answer"

        try:
            outcomes.append(f"{label}: {served.session(work)}")
        except Exception as error:  # noqa: BLE001 - a dropped connection is a fine outcome
            outcomes.append(f"{label}: closed ({type(error).__name__})")

    async def alive(client):
        return await client.hello(served.secret)

    still = "result" in served.session(alive)
    log = served.log.read_text()
    return still and served.proc.poll() is None, "; ".join(outcomes) + (
        f"; server {'still answers' if still else 'DEAD'}" + ("; traceback in its log" if "Traceback" in log else "")
    )


def b_model_field_remote(w: World) -> Result:
    """The Model field's check mark (``apply_model``) pressed from the client with paths that are no model: each is
    refused with a message and the model in use stays."""
    served = _served(w)
    card = _root(w, "p2a", "not_a_card.json")
    card.write_text('{"architecture": "monai:os.system", "arguments": {}}')

    async def work(client):
        await client.hello(served.secret)
        state = _state(await client.call("trame.state.get"))
        buttons = _buttons(state)
        if "model_field" not in buttons:
            return state, buttons, []
        answers = []
        for text in ("/etc/passwd", str(_root(w, "p2a", "missing", "card.json")), str(card)):
            await client.call("trame.state.update", [[{"key": "model_text", "value": text}]])
            await _press(client, buttons, "model_field")
            after = _state(await client.call("trame.state.get"))
            answers.append((text, after.get("error", ""), after.get("model_description", "")))
        await client.call("trame.state.update", [[{"key": "model_text", "value": "default"}]])
        await _press(client, buttons, "model_field")
        return state, buttons, answers

    state, buttons, answers = served.session(work)
    if "model_field" not in buttons:
        return False, "the Model field has no handler in the served template"
    before = state.get("model_description", "")
    ok = all(error and description == before for _, error, description in answers) and len(answers) == 3
    return ok, "; ".join(
        f"{Path(text).name}: {'refused' if error else 'ACCEPTED'} ({error[:50]})" for text, error, _ in answers
    ) + ("; model unchanged" if ok else "; model changed")


def b_second_job_refused(w: World) -> Result:
    """Two clients press Rank Volumes at the same moment: one job starts, the other press is refused with a message
    (the page's error is shared by every tab, so the refusal is read from the state once both presses are in)."""
    served = _served(w)
    b_case_names_and_state_paths(w)  # its rank has finished: the two clients below start from an idle server
    jobs_folder = served.data / ".assft" / "jobs"

    def jobs() -> List[str]:
        return sorted(p.name for p in jobs_folder.iterdir()) if jobs_folder.exists() else []

    before = jobs()

    async def one():
        import aiohttp

        from Testing.Benchmarks.redteam_rerun import WsClient

        headers = {"Host": served.host, "Origin": f"http://{served.host}"}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://{served.host}/ws", headers=headers) as ws:
                client = WsClient(ws)
                await client.hello(served.secret)
                await client.call("trame.trigger", ["rank", [], {}])
                return _state(await client.call("trame.state.get"))

    async def both():
        return await asyncio.gather(one(), one())

    states = asyncio.run(both())

    async def wait_idle(client):
        await client.hello(served.secret)
        return await _until(client, lambda s: not s.get("job_running"), timeout=240)

    final = served.session(wait_idle)
    started = sorted(set(jobs()) - set(before))
    refusal = next((s.get("error", "") for s in states if "already running" in s.get("error", "")), "")
    ok = len(started) == 1 and bool(refusal) and final.get("job_outcome") == "done"
    return ok, (
        f"two Rank presses at once: {len(started)} job started, the other press: "
        f"'{refusal[:70] or 'NO MESSAGE'}'; the job ended {final.get('job_outcome')}"
    )


# -- the rows -------------------------------------------------------------------------------------------------------
WP = T + "test_worker_protocol.py::"
_COMMIT_SIGNAL = WP + "test_a_signal_during_the_commit_lets_the_job_finish_with_the_new_version_and_says_so"
PROBES: List[Probe] = [
    # 1.4 cancel and kill
    Probe(
        "1.4",
        "worker_sigterm_step7",
        "-",
        "hold",
        WP + "test_a_signal_mid_training_stops_at_the_next_step_with_a_cancelled_result_and_the_store_untouched",
        p_worker_sigterm_step7,
    ),
    Probe(
        "1.4",
        "worker_sigkill_step27_rerun",
        "-",
        "hold",
        WP + "test_after_kill_9_a_new_run_of_the_job_resumes_from_the_last_checkpoint",
        p_worker_sigkill_rerun,
    ),
    Probe("1.4", "worker_sigterm_commit", "-", "hold", _COMMIT_SIGNAL, p_worker_sigterm_commit),
    Probe(
        "1.4",
        "sfr_worker_sigkill_rerun",
        "-",
        "hold",
        T + "test_sfr_resume.py::test_a_run_cancelled_after_its_sam_stage_resumes_without_redoing_it_or_its_folds",
        p_sfr_sigkill_rerun,
    ),
    Probe(
        "1.4",
        "sfr_resume_changed_settings",
        "-",
        "hold",
        T + "test_sfr_resume.py::test_the_state_of_a_run_with_other_settings_is_refused",
        p_sfr_resume_changed,
    ),
    Probe(
        "1.4",
        "cli_adapt_sigterm",
        "-",
        "hold",
        T + "test_cli_signals.py::test_sigterm_cancels_adapt_cleanly",
        p_cli_adapt_sigterm,
    ),
    Probe(
        "1.4",
        "cli_rank_sigterm",
        "-",
        "hold",
        T + "test_cli_signals.py::test_a_cancel_arriving_while_a_volume_is_read_ends_the_command_as_cancelled_not_as_a_"
        "corrupt_file",
        p_cli_rank_sigterm,
    ),
]

_INVALID = WP + "test_an_invalid_job_file_ends_with_an_error_event_naming_the_problem"
_LINKS = (
    T + "test_worker_trust.py::test_a_symlink_planted_in_the_job_folder_stops_the_job_and_nothing_is_written_through_it"
)
JOB_ROWS = [
    ("job_invalid_json", lambda w: '{kind: "rank"}', ("not a readable JSON",), None),
    ("job_array", lambda w: "[1, 2]", ("JSON object",), None),
    ("job_null", lambda w: "null", ("JSON object",), None),
    ("job_empty", lambda w: "", ("not a readable JSON",), None),
    ("job_kind_missing", lambda w: {"images": w.images(), "budget": 1}, ("kind",), None),
    ("job_kind_delete", lambda w: _rank(w, kind="delete_everything"), ("kind must be one of",), None),
    ("job_budget_neg", lambda w: _rank(w, budget=-1), ("budget",), None),
    ("job_budget_str", lambda w: _rank(w, budget="3"), ("budget",), None),
    ("job_images_empty", lambda w: _rank(w, images={}), ("images is empty",), None),
    ("job_images_nonstr", lambda w: _rank(w, images={"hippocampus_001": 5}), ("images must map",), None),
    (
        "job_stray_label",
        lambda w: _rank(w, labels={"hippocampus_999": str(w.p("base", "labels", "hippocampus_001.nii.gz"))}),
        ("hippocampus_999",),
        None,
    ),
    ("job_adapt_no_store", lambda w: dict(_adapt(w, "x"), store=""), ("store",), None),
    (
        "job_iterations_neg",
        lambda w: _adapt(w, "neg", finetune={"train": {"iterations": -5}}),
        ("iterations",),
        None,
    ),
    ("job_finetune_unknown", lambda w: _adapt(w, "unknown", finetune={"bogus": 1}), ("bogus",), None),
    (
        "job_top_unknown_out",
        lambda w: _rank(w, out=str(_root(w, "p7_outside")), predictions_dir=str(_root(w, "p7_outside"))),
        ("unknown key",),
        None,
    ),
    ("job_query_bad_strategy", lambda w: _rank(w, query={"strategy": "nope"}), ("strategy",), None),
    (
        "job_case_traversal",
        lambda w: _rank(w, images={"../../../p7_outside/evil": str(w.p("base", "images", "hippocampus_001.nii.gz"))}),
        ("case",),
        None,
    ),
    ("job_symlink_deep", lambda w: _rank(w), ("symbolic link",), _symlink_deep),
    ("job_symlink_jobjson", lambda w: _rank(w), ("symbolic link",), _symlink_jobjson),
]
PROBES += [
    Probe(
        "1.5",
        name,
        "-",
        "hold",
        _LINKS if prep is not None else _INVALID,
        job_refused(name[4:], make, *words, prepare_job=prep),
    )
    for name, make, words, prep in JOB_ROWS
]
PROBES += [
    Probe(
        "1.5",
        "job_name_traversal",
        "-",
        "hold",
        T + "test_store.py::test_model_names_must_be_plain_folder_names",
        _traversal_name("../../../p7_outside/evil"),
    ),
    Probe(
        "1.5",
        "job_name_dotdot",
        "-",
        "hold",
        T + "test_store.py::test_model_names_must_be_plain_folder_names",
        _traversal_name(".."),
    ),
    Probe("1.5", "job_model_pickle_card", "-", "hold", T + "test_models.py", p_pickle_card),
    Probe(
        "1.5",
        "job_plain_rank_emptyhome",
        "-",
        "hold",
        T + "test_worker_trust.py::test_a_rank_job_reads_a_relative_model_from_its_folder_and_leaves_home_alone",
        p_plain_rank_emptyhome,
    ),
    Probe("1.5", "job_dot_case_ids", "-", "hold", T + "test_confined_writes.py", p_dot_case_ids),
    Probe(
        "1.5",
        "job_relative_store",
        "-",
        "hold",
        T + "test_worker_trust.py::test_relative_paths_of_a_job_are_relative_to_the_job_folder",
        p_relative_store,
    ),
]

WS = T + "test_web_security.py"
PROBES += [
    Probe(
        "2.1",
        "case_name_traversal",
        "-",
        "hold",
        T + "test_web_session.py::test_a_hidden_volume_file_is_reported_not_dropped_without_a_word",
        b_case_name_traversal,
    ),
    Probe(
        "2.1",
        "label_file_symlink",
        "-",
        "hold",
        WS + "::test_a_save_refuses_a_label_file_that_is_a_link_and_leaves_its_target_alone",
        b_label_file_symlink,
    ),
    Probe(
        "2.1",
        "malformed_frames",
        "-",
        "hold",
        WS + "::test_malformed_frames_close_only_their_connection",
        b_malformed_frames,
    ),
    Probe(
        "2.1",
        "model_field_remote",
        "-",
        "hold",
        WS,  # the fix and its test wait in /tmp/team/requests.txt (ASSFTWeb/app.py is another's)
        b_model_field_remote,
    ),
    Probe(
        "2.1",
        "state_paths",
        "-",
        "hold",
        WS + "::test_the_state_guard_refuses_server_fields_and_bad_values_and_keeps_the_value_in_use",
        b_state_paths,
    ),
    Probe(
        "2.1",
        "second_job_refused",
        "-",
        "hold",
        T + "test_web_session.py::test_a_second_job_is_refused_while_one_runs",
        b_second_job_refused,
    ),
]

ST = T + "test_store.py"
PROBES += [
    Probe("2.3", "kill9_supervised_step5", "-", "hold", T + "test_finetune_checkpoints.py", p_kill9_step(0)),
    Probe("2.3", "kill9_semi_step5", "-", "hold", T + "test_finetune_checkpoints.py", p_kill9_step(1)),
    Probe("2.3", "kill9_pending_created", "-", "hold", ST, p_kill9_commit("pending")),
    Probe("2.3", "kill9_weights_tmp", "-", "hold", ST, p_kill9_commit("weights_tmp")),
    Probe("2.3", "kill9_manifest_written", "-", "hold", ST, p_kill9_commit("manifest")),
    Probe("2.3", "kill9_after_rename", "-", "hold", ST, p_kill9_commit("renamed")),
    Probe("2.3", "term_int_during_commit", "-", "hold", _COMMIT_SIGNAL, p_term_int_commit),
    Probe("2.3", "concurrent_activate_during_commit", "-", "hold", ST, p_concurrent_activate),
    Probe("2.3", "two_adapts_same_workdir", "-", "hold", T + "test_locks_and_events.py", p_two_adapts_same_workdir),
    Probe("2.3", "two_adapts_same_store_name", "-", "hold", ST, p_two_adapts_same_store_name),
]
