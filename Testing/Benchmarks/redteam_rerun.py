"""Re-run the whole red-team catalogue against the current tree.

The catalogue is ``../shared/research/redteam.md`` (2026-12-05, 300 probes, 49 failing): the rows here
(:data:`PROBES`, the failing ones first re-run) and the rest in one module per group of areas under
``Testing/Benchmarks/redteam_areas/`` (:func:`catalogue`), 307 probes in all with the 7 added. Each probe is rebuilt
from its row there (same inputs where the row names them: MSD hippocampus 001/004/007 and the shared fixtures),
run as a subprocess (``python -m ASSFTActive ...`` or the worker) inside a temporary folder this script creates and
removes, and judged by the row's "expected" column: a refusal is exit 2 with one ``error:`` line and no traceback; a
worker refusal is exit 1 with an ``error`` event and no ``unexpected`` event; nothing is written outside the job or
data folder. The browser-server rows (2.1) run against one ``python -m ASSFTWeb`` (what ``assft serve`` starts) on
127.0.0.1, spoken to with aiohttp in wslink's frames; nothing else is contacted. The long side-by-side timing runs
(two Adapts at once, 35-40 min) are not repeated.

Usage: ``python Testing/Benchmarks/redteam_rerun.py [--only NAME,...] [--md OUT.md] [--json OUT.json]``. Needs
``../shared/data`` (hippocampus and fixtures); exits 0 with a note when it is absent. Every subprocess runs with one
thread under ``nice``; a whole run took 14 minutes on the 2-core machine beside a one-thread benchmark
(``results/redteam_rerun.{md,json}``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
HIPPO = DATA / "hippocampus"
FIXTURES = DATA / "fixtures"
TINY_SAM = REPO / "ASSFTActive" / "resources" / "models" / "sfr-sam-tiny"
CASES = ("hippocampus_001", "hippocampus_004", "hippocampus_007")
#: ``assft adapt`` options of the catalogue's small runs: one 32^3 patch a batch.
PATCH32 = ["--batch-size", "1", "--patch-size", "32", "32", "32"]


def steps(n: int) -> List[str]:
    """``assft adapt`` options of a run of ``n`` supervised and ``n`` semi-supervised steps on :data:`PATCH32`."""
    return ["--iterations", str(n), "--semi-iterations", str(n), *PATCH32]


FAST_ADAPT = [*steps(3), "--pseudo", "none", "--quiet"]
#: ``assft sfr`` options of the catalogue's short runs: 2 SAM fine-tuning and 2 re-training steps, no guard.
SFR_SHORT = ["--sam-iterations", "2", "--iterations", "2", "--no-guard"]


def sfr_argv(store: str, *options: str) -> List[str]:
    """``assft sfr`` on the base images and ``lab/real2`` into ``store`` (relative to the world), then ``options``."""
    return ["sfr", "--images", "base/images", "--labels", "lab/real2", "--store", store, *options]


@dataclass
class Run:
    rc: Optional[int]
    out: str
    err: str
    seconds: float
    peak_mb: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.text

    def last_error(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        hits = [line for line in lines if line.startswith("error:") or " error: " in line]
        if hits:
            return hits[-1][:220]
        if lines:
            return lines[-1][:220]
        out = self.out.strip().splitlines()
        return out[-1][:220] if out else ""


@dataclass
class Probe:
    area: str
    name: str
    item: str
    before: str  # the catalogue's verdict: "FAIL" or "hold"
    test: str  # the test that covers it now
    run: Callable[[World], Tuple[bool, str]]


class World:
    """The scratch folder with the probes' inputs, built once."""

    def __init__(self, root: Path):
        self.root = root
        self.env = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            OMP_NUM_THREADS="1",
            ASSFT_NUM_THREADS="1",
            PYTHONWARNINGS="ignore",
            HOME=str(root / "home"),
            NO_PROXY="*",
            no_proxy="*",
        )
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            self.env.pop(key, None)
        (root / "home").mkdir()
        self.immutable: List[Path] = []
        self.cleanup: List[Callable[[], None]] = []

    def p(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    # -- running ------------------------------------------------------------------------------------------------
    def cmd(
        self,
        args: List[str],
        timeout: float = 240,
        env: Optional[dict] = None,
        prefix: Optional[list] = None,
        module: str = "ASSFTActive",
    ) -> Run:
        argv = list(prefix or []) + ["nice", "-n", "19", sys.executable, "-m", module] + [str(a) for a in args]
        return self.popen(argv, timeout, env)

    def popen(self, argv: List[str], timeout: float, env: Optional[dict] = None) -> Run:
        """Run ``argv`` in the scratch folder; its own peak RSS comes from ``wait4`` (not the children's maximum)."""
        start = time.monotonic()
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                argv, cwd=self.root, env=env or self.env, stdout=out, stderr=err, start_new_session=True, text=True
            )
            rc: Optional[int] = None
            peak = 0.0
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    rc = os.waitstatus_to_exitcode(status)
                    peak = usage.ru_maxrss / 1024.0
                    proc.returncode = rc
                    break
                if time.monotonic() - start > timeout:
                    os.killpg(proc.pid, signal.SIGKILL)
                    os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    break
                time.sleep(0.05)
            out.seek(0)
            err.seek(0)
            return Run(rc, out.read(), err.read(), time.monotonic() - start, peak)

    def worker(self, job: Path, timeout: float = 120) -> Run:
        return self.cmd([str(job)], timeout=timeout, module="ASSFTActive.worker")

    # -- inputs ---------------------------------------------------------------------------------------------------
    def build(self) -> None:
        import nibabel as nib
        import numpy as np

        base = self.p("base")
        for sub in ("images", "labels"):
            (base / sub).mkdir(parents=True)
        for case in CASES:
            shutil.copy(HIPPO / "imagesTr" / f"{case}.nii.gz", base / "images")
            shutil.copy(HIPPO / "labelsTr" / f"{case}.nii.gz", base / "labels")
        img = nib.load(str(base / "labels" / "hippocampus_001.nii.gz"))
        lab = np.asarray(img.dataobj).astype(np.uint8)

        def save(name: str, arr, case: str = "hippocampus_001", like=img) -> None:
            folder = self.p("lab", name)
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr.astype(np.uint8), like.affine, like.header), str(folder / f"{case}.nii.gz"))

        swap = np.where(lab == 1, 2, np.where(lab == 2, 1, lab))
        save("swapped", swap)
        for name, shifts in (
            ("shift2", (2, 0, 0)),
            ("shift4", (4, 0, 0)),
            ("shiftjk4", (0, 4, 4)),
            ("shift6", (6, 0, 0)),
            ("shiftjk6", (0, 6, 6)),
            ("shift10", (10, 0, 0)),
        ):
            save(name, np.roll(lab, shifts, axis=(0, 1, 2)))
        thin = np.zeros_like(lab)
        ks = np.nonzero(lab)[2]
        both = [k for k in range(lab.shape[2]) if (lab[:, :, k] == 1).any() and (lab[:, :, k] == 2).any()]
        mid = min(both, key=lambda k: abs(k - (ks.min() + ks.max()) / 2))
        thin[:, :, mid] = lab[:, :, mid]
        save("thin_slice", thin)
        from scipy import ndimage

        outline = np.zeros_like(lab)
        for c in (1, 2):
            mask = lab == c
            outline[mask & ~ndimage.binary_erosion(mask)] = c
        save("outline", outline)
        dil = lab.copy()
        for c in (1, 2):
            grown = ndimage.binary_dilation(lab == c, iterations=3) & (dil == 0)
            dil[grown] = c
        save("dilated3", dil)
        filled = np.ones_like(lab)
        filled[lab.shape[0] // 2 :] = 2
        save("filled", filled)
        save("only_anterior", np.where(lab == 2, 0, lab))
        save("zero", np.zeros_like(lab))
        save("val3", np.where(lab == 2, 3, lab))
        save("orphan", lab)
        save("orphan", lab, case="hippocampus_999")
        for case in ("hippocampus_001", "hippocampus_004"):
            self.p("lab", "real2").mkdir(parents=True, exist_ok=True)
            shutil.copy(base / "labels" / f"{case}.nii.gz", self.p("lab", "real2"))
        for case in CASES:
            one = nib.load(str(base / "labels" / f"{case}.nii.gz"))
            arr = np.asarray(one.dataobj).astype(np.uint8)
            save("swapped3", np.where(arr == 1, 2, np.where(arr == 2, 1, arr)), case=case, like=one)
        self._bad_files(np)
        self._cards()
        self._priors()

    def _bad_files(self, np) -> None:
        import nibabel as nib

        src = self.p("base", "images", "hippocampus_001.nii.gz")
        pool = self.p("pool_corrupt")
        pool.mkdir()
        shutil.copy(src, pool)
        raw = bytearray(src.read_bytes())
        for offset in range(len(raw) // 2, len(raw) // 2 + 16):
            raw[offset] ^= 0xFF
        (pool / "zz_corrupt.nii.gz").write_bytes(bytes(raw))
        image = nib.load(str(src))
        bad = self.p("bad")
        bad.mkdir()
        nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), str(bad / "one.nii.gz"))
        voxels = np.asarray(image.dataobj, np.float32)

        def raw_nii(hdr, path: Path) -> None:  # header bytes as set, without nibabel's affine rewrite
            hdr["vox_offset"] = 352
            hdr.set_data_dtype(np.float32)
            path.write_bytes(hdr.binaryblock + b"\0" * (int(hdr["vox_offset"]) - 348) + voxels.tobytes(order="F"))

        sing = nib.Nifti1Image(voxels, image.affine).header
        sing.set_qform(None, code=0)
        sing["sform_code"] = 2
        sing["srow_x"] = [0, 0, 0, 0]
        raw_nii(sing, bad / "singular.nii")
        # oblique: a 20-degree rotation in both qform and sform (ITK and nibabel agree)
        angle = np.deg2rad(20)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        nib.save(
            nib.Nifti1Image(np.asarray(image.dataobj, np.float32), rot @ image.affine), str(bad / "oblique.nii.gz")
        )
        # sheared: sform with a 0.5 shear, qform unsheared
        sheared = nib.Nifti1Image(np.asarray(image.dataobj, np.float32), image.affine)
        shear = image.affine.copy()
        shear[0, 1] += 0.5
        sheared.set_qform(image.affine, code=1)
        sheared.set_sform(shear, code=2)
        nib.save(sheared, str(bad / "sheared.nii.gz"))
        # negative pixdim: qform only, pixdim[1] = -1 written into the header
        neg = nib.Nifti1Image(np.asarray(image.dataobj, np.float32), None)
        neg.set_qform(image.affine, code=1)
        neg.set_sform(None, code=0)
        hdr = neg.header
        pix = hdr["pixdim"].copy()
        pix[1] = -abs(pix[1])
        hdr["pixdim"] = pix
        raw_nii(hdr, bad / "neg_pixdim.nii")
        # a 1 KB .nii.gz whose header declares 1024 x 1024 x 512 float32 (2 GiB)
        big = nib.Nifti1Header()
        big.set_data_shape((1024, 1024, 512))
        big.set_data_dtype(np.float32)
        big.set_qform(np.eye(4), code=1)
        big["vox_offset"] = 352
        (bad / "hugedims_2GB.nii.gz").write_bytes(gzip.compress(big.binaryblock + b"\0" * 4 + b"\1" * 1024))
        # a gzip bomb: the same header with all 2 GiB present (zeros but one block), ~2 MB compressed
        with gzip.open(bad / "bomb_2GiB.nii.gz", "wb", compresslevel=1) as handle:
            handle.write(big.binaryblock + b"\0" * 4)
            chunk = bytes(64 << 20)
            for i in range(32):
                handle.write(chunk if i != 16 else np.full(16 << 20, 7.0, np.float32).tobytes())

    def _cards(self) -> None:
        card = json.loads((REPO / "ASSFTActive/resources/models/hippocampus-unet/card.json").read_text())
        weights = REPO / "ASSFTActive/resources/models/hippocampus-unet/weights.safetensors"

        def write(name: str, **changes) -> None:
            folder = self.p("cards", name)
            folder.mkdir(parents=True)
            data = dict(card, **changes)
            data.pop("provenance", None)
            shutil.copy(weights, folder / "weights.safetensors")
            (folder / "card.json").write_text(json.dumps(data, indent=1))

        write(
            "default_pretrained_effnet",
            architecture="monai:EfficientNetBN",
            arguments={"model_name": "efficientnet-b0", "spatial_dims": 3, "in_channels": 1, "num_classes": 3},
        )
        write(
            "default_pretrained_resnetfeatures",
            architecture="monai:ResNetFeatures",
            arguments={"model_name": "resnet10", "spatial_dims": 3, "in_channels": 1},
        )
        write("default_pretrained_mil", architecture="monai:MILModel", arguments={"num_classes": 3})
        write("huge_channels", arguments=dict(card["arguments"], channels=[4096, 8192, 16384, 32768]))
        write("kernel_zero", arguments=dict(card["arguments"], kernel_size=0))
        write("arch_os", architecture="monai:os")

    def _priors(self) -> None:
        sam = json.loads((TINY_SAM / "sam-card.json").read_text())
        sam.pop("provenance", None)

        def write(name: str, class_names=None, **config) -> None:
            folder = self.p("priors", name)
            folder.mkdir(parents=True)
            shutil.copy(TINY_SAM / "weights.safetensors", folder)
            data = dict(sam, sam_config=dict(sam["sam_config"], **config))
            if class_names:
                data["class_names"] = class_names
            (folder / "sam-card.json").write_text(json.dumps(data))

        write("patch_zero", patch_size=0)
        write("depth_huge", depth=100000)
        write("embed_huge", embed_dim=2**20)
        write("image_neg", image_size=-256)
        write("classes_renamed", class_names=["background", "posterior", "anterior"])
        folder = self.p("priors", "weights_abs")
        folder.mkdir()
        (folder / "sam-card.json").write_text(json.dumps(dict(sam, weights="/etc/passwd")))
        self.p("p2b").mkdir()
        small = {"retrain": {"batch_size": 1, "patch_size": [32, 32, 32]}}
        self.p("p2b", "small.json").write_text(json.dumps(small))
        self.p("p2b", "nan.json").write_text(json.dumps(dict(small, sam={"learning_rate": float("nan")})))

    def job(self, name: str, data: dict, plain_files: bool = True) -> Path:
        folder = self.p("p7", name)
        folder.mkdir(parents=True)
        (folder / "job.json").write_text(json.dumps(data))
        return folder

    def images(self, cases=CASES) -> dict:
        return {c: str(self.p("base", "images", f"{c}.nii.gz")) for c in cases}


def started(w: World, argv: List[str], stdout=subprocess.PIPE, own_session: bool = False) -> subprocess.Popen:
    """``argv`` started (not waited for) in the world's folder with its environment: stderr piped as text, stdout
    piped unless ``stdout`` says otherwise; ``own_session`` starts it in a session (process group) of its own."""
    return subprocess.Popen(
        argv, cwd=w.root, env=w.env, stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=own_session
    )


# -- judges --------------------------------------------------------------------------------------------------------
def refused(run: Run, *words: str) -> Tuple[bool, str]:
    """exit 2, an ``error:`` line, no traceback (and each of ``words`` in the message)."""
    msg = run.last_error()
    ok = run.rc == 2 and not run.traceback and "error" in msg and all(w.lower() in run.text.lower() for w in words)
    return ok, f"exit {run.rc} in {run.seconds:.0f} s: {msg}" + (" (traceback)" if run.traceback else "")


def worker_refused(run: Run, job: Path, *words: str) -> Tuple[bool, str]:
    events = _events(job) or [json.loads(line) for line in run.out.splitlines() if line.startswith("{")]
    last = events[-1] if events else {}
    unexpected = any("unexpected" in str(e.get("message", "")) for e in events)
    msg = str(last.get("message", run.last_error()))[:220]
    ok = (
        run.rc == 1 and last.get("event") == "error" and not unexpected and all(w.lower() in msg.lower() for w in words)
    )
    return ok, f"exit {run.rc} in {run.seconds:.0f} s: {last.get('event', '?')}: {msg}"


def _events(job: Path) -> list:
    path = job / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]


def adapt(w: World, labels: str, store: str, extra: Optional[list] = None, images: str = "base/images") -> Run:
    return w.cmd(["adapt", "--images", images, "--labels", labels, "--store", store] + (extra or FAST_ADAPT))


def label_refused(w: World, name: str, *words: str) -> Tuple[bool, str]:
    return refused(adapt(w, f"lab/{name}", f"p3/st_{name}"), *words)


def label_refused_or_warned(w: World, name: str) -> Tuple[bool, str]:
    """Refused (exit 2), or accepted with a warning that the label may be misregistered."""
    run = adapt(w, f"lab/{name}", f"p3/st_{name}")
    if run.rc == 0 and not run.traceback:
        warning = _line_with(run.text, "shifted by")
        return bool(warning), f"exit 0 in {run.seconds:.0f} s: " + (warning or "accepted without a warning")
    return refused(run, "shifted")


def shifted(name: str) -> Callable[[World], Tuple[bool, str]]:
    return lambda w: label_refused_or_warned(w, name)


def accepted(run: Run) -> Tuple[bool, str]:
    return run.rc == 0 and not run.traceback, f"exit {run.rc} in {run.seconds:.0f} s: {run.last_error()}"


# -- probes --------------------------------------------------------------------------------------------------------
def p_orphan_eval(w: World):
    run = w.cmd(
        [
            "evaluate",
            "--images",
            "base/images/hippocampus_001.nii.gz",
            "--labels",
            "lab/orphan",
            "--out",
            "p3/ev_orphan",
            "--no-hd95",
        ]
    )
    ok = run.rc == 0 and "hippocampus_999" in run.text and not run.traceback
    return ok, f"exit {run.rc}: " + ("warns: " + _line_with(run.text, "hippocampus_999") if ok else run.last_error())


def p_orphan_adapt(w: World):
    run = adapt(w, "lab/orphan", "p3/st_orphan")
    ok = run.rc in (0, 2) and "hippocampus_999" in run.text and not run.traceback
    return ok, f"exit {run.rc}: " + ("names it: " + _line_with(run.text, "hippocampus_999") if ok else run.last_error())


def _line_with(text: str, word: str) -> str:
    return next((line.strip() for line in text.splitlines() if word in line), "")[:200]


def p_card(name: str, *words: str, command: str = "check-card"):
    def probe(w: World):
        home_dir = w.p("home_" + name)
        home_dir.mkdir()
        env = dict(w.env, HOME=str(home_dir))
        if command == "check-card":
            run = w.cmd(["check-card", f"cards/{name}/card.json"], env=env)
        else:
            run = w.cmd(
                [
                    "overlay",
                    "--image",
                    "base/images/hippocampus_001.nii.gz",
                    "--model",
                    f"cards/{name}/card.json",
                    "--out",
                    f"p4/out_{name}",
                ],
                env=env,
            )
        ok, text = refused(run, *words)
        fetched = [
            str(p.relative_to(home_dir))
            for p in home_dir.rglob("*")
            if re.search("torch|hub|huggingface|checkpoints", str(p.relative_to(home_dir)))
        ]
        if fetched:
            ok, text = False, text + f"; wrote under $HOME: {fetched[:3]}"
        if "Downloading" in run.text:
            ok, text = False, text + "; tried to download"
        return ok, text

    return probe


def p_worker_effnet(w: World):
    job = w.job(
        "model_effnet_card",
        {
            "kind": "rank",
            "images": w.images(),
            "budget": 1,
            "model": str(w.p("cards", "default_pretrained_effnet", "card.json")),
        },
    )
    home_dir = w.p("home_worker_effnet")
    home_dir.mkdir()
    run = w.cmd([str(job)], module="ASSFTActive.worker", env=dict(w.env, HOME=str(home_dir)))
    ok, text = worker_refused(run, job)
    home = [str(p.relative_to(home_dir)) for p in home_dir.rglob("*")]
    return ok and not home, text + (f"; wrote under $HOME: {home[:3]}" if home else "; nothing under $HOME")


def p_symlink_after_start(w: World):
    job = w.job("plain_rank_race", {"kind": "rank", "images": w.images(), "budget": 1})
    outside = w.p("p7_outside")
    outside.mkdir()
    argv = ["nice", "-n", "19", sys.executable, "-m", "ASSFTActive.worker", str(job)]
    proc = started(w, argv, own_session=True)
    planted = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (job / "events.jsonl").exists() and (job / "events.jsonl").stat().st_size > 0:
            for sub in ("overlays", "predictions"):
                try:
                    os.symlink(outside, job / sub)
                    planted.append(sub)
                except FileExistsError:
                    pass
            break
        time.sleep(0.02)
    try:
        proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    written = sorted(p.name for p in outside.iterdir())
    events = _events(job)
    last = events[-1] if events else {}
    ok = bool(planted) and not written
    return ok, (
        f"links planted ({', '.join(planted) or 'none'}); exit {proc.returncode}, "
        f"{last.get('event')}: {str(last.get('message', ''))[:150]}; {len(written)} files outside"
    )


def p_predictions_ro(w: World):
    """An unwritable --predictions folder: read-only for a user, immutable (chattr +i) when run as root."""
    ro = w.p("p8", "ro", "pred")
    ro.mkdir(parents=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode != 0:
            return False, "could not make the folder unwritable (chattr +i failed)"
        w.immutable.append(ro)
    else:
        ro.chmod(0o555)
    run = w.cmd(
        [
            "adapt",
            "--images",
            "base/images",
            "--labels",
            "lab/real2",
            "--store",
            "p8/newstore3",
            "--predictions",
            "p8/ro/pred",
            *steps(2),
            "--pseudo",
            "none",
            "--no-guard",
            "--quiet",
        ]
    )
    ok, text = refused(run, "pred")
    stored = list(w.p("p8").glob("newstore3/*/v*"))
    return ok and not stored, text + ("; a version was stored" if stored else "; nothing stored")


def p_models_tampered(w: World):
    run = adapt(
        w,
        "lab/real2",
        "p9/store",
        [
            "--name",
            "base",
            *steps(2),
            "--pseudo",
            "none",
            "--no-guard",
            "--quiet",
        ],
    )
    if run.rc != 0:
        return False, f"could not build the store: exit {run.rc}: {run.last_error()}"
    from safetensors.numpy import load_file, save_file

    weights = w.p("p9", "store", "base", "v1", "weights.safetensors")
    tensors = load_file(str(weights))
    key = max(tensors, key=lambda k: tensors[k].size)
    tensors[key] = tensors[key].copy()
    tensors[key].reshape(-1)[:100000] = 30.0
    save_file(tensors, str(weights))
    listing = w.cmd(["models", "--store", "p9/store"])
    ok = listing.rc == 0 and "CHANGED" in listing.out
    return ok, f"exit {listing.rc}: " + (_line_with(listing.out, "CHANGED") or listing.out.strip()[:200])


def p_tampered_overlay(w: World):
    if not w.p("p9", "store", "base", "v1").exists():
        return False, "store not built (models_list_tampered failed first)"
    return refused(
        w.cmd(
            ["overlay", "--image", "base/images/hippocampus_001.nii.gz", "--model", "p9/store/base", "--out", "p9/ov1"]
        ),
        "manifest",
    )


def p_overlay_opt(*opts: str):
    def probe(w: World):
        return refused(
            w.cmd(
                [
                    "overlay",
                    "--image",
                    "base/images/hippocampus_001.nii.gz",
                    *opts,
                    "--out",
                    "p6/o" + "_".join(o.strip("-") for o in opts),
                ]
            )
        )

    return probe


def p_rerank(w: World):
    pool = w.p("p6", "rr")
    pool.mkdir(parents=True)
    for case in ("hippocampus_001", "hippocampus_004"):
        shutil.copy(w.p("base", "images", f"{case}.nii.gz"), pool)
    first = w.cmd(["rank", "--images", "p6/rr", "--budget", "1", "--out", "p6/rr_out", "--quiet"])
    (pool / "hippocampus_004.nii.gz").unlink()
    second = w.cmd(["rank", "--images", "p6/rr", "--budget", "1", "--out", "p6/rr_out", "--quiet"])
    stale = sorted(p.name for p in w.p("p6", "rr_out").rglob("*hippocampus_004*"))
    ok = first.rc == 0 and second.rc == 0 and not stale
    return ok, f"exit {first.rc}, {second.rc}; files of the removed volume left: {stale or 'none'}"


def p_output_modes(w: World):
    """Every file ``assft rank`` wrote has the mode of a plain file under the caller's umask (022 here)."""
    out = w.p("p6", "rr_out")
    if not (out / "ranking.json").exists():
        return False, "no ranking (rerank_smaller_pool failed first)"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in sorted(out.rglob("*")) if p.is_file()}
    odd = {name: mode for name, mode in modes.items() if mode != oct(0o644)}
    return not odd, (
        f"{len(modes)} files, ranking.json {modes.get('ranking.json')}, ranking.csv "
        f"{modes.get('ranking.csv')}" + (f"; other modes: {odd}" if odd else "; all 0o644")
    )


THREADS_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
from ASSFTActive.threads import size_thread_pools
size_thread_pools()
print(torch.get_num_threads(), torch.get_num_interop_threads())
"""


def p_threads_affinity(w: World):
    """Torch's pools follow the process's CPU affinity (``taskset -c 0``: one core), not the machine's cores."""
    env = {k: v for k, v in w.env.items() if k not in ("OMP_NUM_THREADS", "ASSFT_NUM_THREADS")}
    pinned = w.popen(["taskset", "-c", "0", sys.executable, "-c", THREADS_CHILD, str(REPO)], 120, env)
    chosen = w.popen([sys.executable, "-c", THREADS_CHILD, str(REPO)], 120, dict(env, ASSFT_NUM_THREADS="3"))
    ok = pinned.out.split() == ["1", "1"] and chosen.out.split() == ["3", "3"]
    return ok, (
        f"taskset -c 0: intra/inter-op threads {pinned.out.strip() or pinned.last_error()}; "
        f"ASSFT_NUM_THREADS=3: {chosen.out.strip() or chosen.last_error()} (machine: {os.cpu_count()} cores; "
        "the side-by-side timing, 35-40 min, not repeated)"
    )


def p_threads_bad_env(w: World):
    run = w.cmd(
        ["overlay", "--image", "base/images/hippocampus_001.nii.gz", "--out", "p6/threads"],
        env=dict(w.env, ASSFT_NUM_THREADS="many"),
    )
    return refused(run, "ASSFT_NUM_THREADS")


def sfr_job(name: str, sam: Optional[dict] = None, retrain: Optional[dict] = None, *words: str, timeout: float = 90):
    def probe(w: World):
        settings = {
            "sam": dict({"iterations": 2}, **(sam or {})),
            "retrain": dict({"iterations": 2, "batch_size": 1, "patch_size": [32, 32, 32]}, **(retrain or {})),
            "checkpoint_every": 1,
        }
        labels = {c: str(w.p("base", "labels", f"{c}.nii.gz")) for c in CASES[:2]}
        job = w.job(
            name,
            {
                "kind": "sfr",
                "images": w.images(),
                "labels": labels,
                "store": str(w.p("p7", "st_" + name)),
                "sfr": settings,
                "sam_prior": str(TINY_SAM),
            },
        )
        run = w.worker(job, timeout=timeout)
        if run.rc is None:
            return False, f"still running after {timeout:.0f} s (stopped)"
        return worker_refused(run, job, *words)

    return probe


def sfr_cli(prior: str, *words: str, config: str = "p2b/small.json"):
    def probe(w: World):
        return refused(
            w.cmd(
                sfr_argv(
                    f"p2b/st_{prior or 'x'}",
                    *(["--sam", f"priors/{prior}"] if prior else []),
                    *SFR_SHORT,
                    "--config",
                    config,
                    "--quiet",
                ),
                timeout=150,
            ),
            *words,
        )

    return probe


LOCK_CHILD = r"""
import os, random, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from ASSFTActive.locks import folder_lock
from ASSFTActive.errors import InputError
folder, n = Path(sys.argv[1]), int(sys.argv[2])
overlap = busy = other = got = 0
for i in range(n):
    try:
        with folder_lock(folder, "--work-dir"):
            got += 1
            try:
                fd = os.open(str(folder.parent / "marker"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                overlap += 1
                continue
            os.close(fd)
            time.sleep(0.0005)
            os.unlink(str(folder.parent / "marker"))
    except InputError:
        busy += 1
    except Exception as error:
        other += 1
    time.sleep(random.random() * 0.002)  # releases and attempts interleave (the race window is the release)
print(got, overlap, busy, other)
"""


def p_lock_churn(w: World):
    folder = w.p("p2c", "locked", "wd")
    folder.parent.mkdir(parents=True)
    procs = [started(w, [sys.executable, "-c", LOCK_CHILD, str(folder), "2000", str(REPO)]) for _ in range(3)]
    totals = [0, 0, 0, 0]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        fields = out.split()
        if len(fields) != 4:
            return False, f"child failed: {err.strip()[-200:]}"
        totals = [a + int(b) for a, b in zip(totals, fields)]
    got, overlap, busy, other = totals
    return overlap == 0 and other == 0, (
        f"3 x 2000 attempts: {got} acquisitions, {overlap} overlapping another "
        f"holder, {busy} refused as busy, {other} other errors"
    )


def p_hugedims(w: World):
    run = w.cmd(
        ["overlay", "--image", "bad/hugedims_2GB.nii.gz", "--out", "p2e/ov_huge"], prefix=["prlimit", "--as=6000000000"]
    )
    ok, text = refused(run)
    return ok and run.peak_mb < 1200, text + f"; peak RSS {run.peak_mb:.0f} MB"


def p_bomb(w: World):
    run = w.cmd(
        ["overlay", "--image", "bad/bomb_2GiB.nii.gz", "--out", "p2e/ov_bomb"], prefix=["prlimit", "--as=8000000000"]
    )
    ok, text = refused(run, "ASSFT_MAX_IMAGE_MB")
    return ok and run.seconds < 60, text


READ_CHILD = r"""
import resource, sys
sys.path.insert(0, sys.argv[2])
from ASSFTActive.io import read_volume
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[3] == "read":
    volume = read_volume(sys.argv[1])
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def p_read_bomb(w: World):
    """A 256 MiB gzip bomb under the limit: reading it peaks at most 1.2x its voxels above the imports' RSS."""
    import numpy as np

    path = w.p("bad", "bomb_256MiB.nii.gz")
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((512, 512, 256))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(hdr.binaryblock + b"\0" * 4)
        for i in range(16):
            handle.write(np.full(4 << 20, float(i), np.float32).tobytes())
    peaks = []
    for mode in ("imports", "read"):
        run = w.popen(["nice", "-n", "19", sys.executable, "-c", READ_CHILD, str(path), str(REPO), mode], 120)
        if run.rc != 0:
            return False, f"exit {run.rc}: {run.last_error()}"
        peaks.append(run.peak_mb)
    ratio = (peaks[1] - peaks[0]) / 256.0
    return ratio <= 1.2, (
        f"read {path.stat().st_size / 1e6:.1f} MB decompressing to 256 MiB: peak RSS "
        f"{peaks[1]:.0f} MB, {ratio:.2f}x the voxels above the imports ({peaks[0]:.0f} MB)"
    )


def _itk_geometry(path: Path):
    import numpy as np
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    origin = np.array(reader.GetOrigin())
    spacing = np.array(reader.GetSpacing())
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    return np.array([origin + direction @ (spacing * np.array(c)) for c in corners])


def p_geometry(name: str):
    def probe(w: World):
        image = w.p("bad", name)
        run = w.cmd(["overlay", "--image", f"bad/{name}", "--out", f"p2e/ov_{name}"])
        if run.rc == 2 and not run.traceback:
            return True, f"refused: {run.last_error()}"
        if run.rc != 0:
            return False, f"exit {run.rc}: {run.last_error()}"
        stem = name.split(".")[0]
        overlay = next(w.p("p2e", f"ov_{name}").glob(f"{stem}*entropy*"))
        import numpy as np

        gap = float(np.abs(_itk_geometry(image) - _itk_geometry(overlay)).max())
        return gap < 0.01, f"exit 0; overlay read by ITK lies {gap:.3g} mm from the image read by ITK (corners)"

    return probe


def p_ts_labels(w: World):
    import nibabel as nib
    import numpy as np

    ts = FIXTURES / "totalsegmentator-ct"
    for sub in ("images", "labels"):
        w.p("fr", "ts", sub).mkdir(parents=True)
    shutil.copy(ts / "example_ct_sm.nii.gz", w.p("fr", "ts", "images"))
    seg = nib.load(str(ts / "example_seg.nii.gz"))
    arr = np.asarray(seg.dataobj)
    kept = np.where(np.isin(arr, (1, 2)), arr, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(kept, seg.affine), str(w.p("fr", "ts", "labels", "example_ct_sm.nii.gz")))
    return refused(adapt(w, "fr/ts/labels", "fr/st_ts", images="fr/ts/images"))


def _fixture_pool(w: World) -> Path:
    pool = w.p("fr", "pool")
    if not pool.exists():
        pool.mkdir(parents=True)
        shutil.copy(FIXTURES / "monai-anatomical" / "anatomical.nii", pool)
        for name in ("brain1_image", "breast1_image", "prostate_phantom_subvolume"):
            shutil.copy(FIXTURES / "pyradiomics" / f"{name}.nrrd", pool)
        shutil.copy(FIXTURES / "totalsegmentator-ct" / "example_ct_sm.nii.gz", pool)
    return pool


def p_fixture_domain(w: World):
    _fixture_pool(w)
    run = w.cmd(["rank", "--images", "fr/pool", "--budget", "2", "--out", "fr/out_rank", "--quiet"], timeout=300)
    if run.rc != 0:
        return False, f"exit {run.rc}: {run.last_error()}"
    ranking = json.loads(w.p("fr", "out_rank", "ranking.json").read_text())
    text = json.dumps(ranking)
    rows = _rows(ranking)
    flagged = sorted(r.get("case_id", "?") for r in rows if r.get("ood"))
    proposed = sorted(r.get("case_id", "?") for r in rows if r.get("selected"))
    foreign = {"prostate_phantom_subvolume", "example_ct_sm"}
    ok = foreign <= set(flagged) and not (foreign & set(proposed))
    return ok, f"exit 0; flagged out-of-distribution: {flagged or 'none'}; proposed: {proposed or 'none'}" + (
        "" if rows else f" (rows not found in {text[:80]})"
    )


def _rows(ranking) -> list:
    if isinstance(ranking, list):
        return ranking
    for key in ("cases", "ranking", "rows", "volumes"):
        if isinstance(ranking.get(key), list):
            return ranking[key]
    return []


def p_rank_corrupt(w: World):
    return refused(
        w.cmd(["rank", "--images", "pool_corrupt", "--budget", "1", "--out", "p12/out_corrupt", "--quiet"]), "corrupt"
    )


def p_overlay_bad(name: str, *words: str):
    def probe(w: World):
        return refused(w.cmd(["overlay", "--image", f"bad/{name}", "--out", f"p12/ov_{name}"]), *words)

    return probe


def p_eval(name: str, *words: str):
    def probe(w: World):
        return refused(
            w.cmd(
                [
                    "evaluate",
                    "--images",
                    "base/images/hippocampus_001.nii.gz",
                    "--labels",
                    f"lab/{name}",
                    "--out",
                    f"p3/ev_{name}",
                    "--no-hd95",
                ]
            ),
            *words,
        )

    return probe


def p_label_ok(name: str):
    def probe(w: World):
        return accepted(adapt(w, f"lab/{name}", f"p3/st_{name}"))

    return probe


def p_swapped3_nopool(w: World):
    return refused(
        adapt(
            w,
            "lab/swapped3",
            "p2d/st_sw2",
            [
                "--learning-rate",
                "0.001",
                *steps(10),
                "--pseudo",
                "none",
            ],
            images="base/images",
        ),
        "swap",
    )


def p_job_symlinks(w: World):
    job = w.job("symlinks", {"kind": "rank", "images": w.images(), "budget": 1})
    os.symlink(w.root, job / "predictions")
    return worker_refused(w.worker(job), job, "link")


class Served:
    """``python -m ASSFTWeb`` (what ``assft serve`` starts) on two of the base volumes, on 127.0.0.1 with a port
    the system chooses; its printed address gives the host and this start's secret.

    ``root``: the folder of its ``data/`` and ``server.log`` (default ``p2a`` of the world); ``extra``: more files of
    the data folder, ``(base case, file name)`` copies of base images."""

    def __init__(self, w: World, root: Optional[Path] = None, extra: Sequence[Tuple[str, str]] = ()):
        root = root or w.p("p2a")
        self.data = root / "data"
        self.data.mkdir(parents=True)
        for case in CASES[:2]:
            shutil.copy(w.p("base", "images", f"{case}.nii.gz"), self.data)
        for case, name in extra:
            shutil.copy(w.p("base", "images", f"{case}.nii.gz"), self.data / name)
        self.log = root / "server.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["nice", "-n", "19", sys.executable, "-m", "ASSFTWeb", "--data", str(self.data), "--port", "0"],
                cwd=w.root,
                env=w.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 240
        found = None
        while found is None and time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/\?secret=([A-Za-z0-9_-]+)", self.log.read_text())
            time.sleep(0.3)
        if found is None:
            self.stop()
            raise RuntimeError(f"the server printed no address: {self.log.read_text()[-300:]}")
        self.port, self.secret = int(found.group(1)), found.group(2)
        self.host = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def get(self, path: str, host: Optional[str] = None) -> Tuple[int, str]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://{self.host}{path}", headers={"Host": host or self.host})
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, response.read(2000).decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read(2000).decode("utf-8", "replace")

    def session(self, work, origin: Optional[str] = "own", host: Optional[str] = None):
        """Run ``work(client)`` on a WebSocket to ``/ws`` (wslink msgpack frames), as a page of ``origin``."""
        import asyncio

        import aiohttp

        headers = {"Host": host or self.host}
        if origin is not None:
            headers["Origin"] = f"http://{self.host}" if origin == "own" else origin

        async def run():
            async with aiohttp.ClientSession() as client_session:
                async with client_session.ws_connect(f"http://{self.host}/ws", headers=headers) as ws:
                    return await work(WsClient(ws))

        return asyncio.run(run())

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return float("nan")


class WsClient:
    """The least of trame's client: wslink messages packed with msgpack, in wslink's chunks."""

    def __init__(self, ws):
        from wslink import chunking

        self.ws = ws
        self.chunking = chunking
        self.unchunker = chunking.UnChunker()
        self.unchunker.set_max_message_size(64 << 20)  # the server's answers (the page state) exceed the default
        self.count = 0

    async def call(self, method: str, args=(), rpc_id: Optional[str] = None, timeout: float = 30) -> dict:
        import asyncio

        import aiohttp
        import msgpack

        self.count += 1
        rpc_id = rpc_id or f"rpc:c0:{self.count}"
        packed = msgpack.packb({"wslink": "1.0", "id": rpc_id, "method": method, "args": list(args), "kwargs": {}})
        for chunk in self.chunking.generate_chunks(packed, 4096):
            await self.ws.send_bytes(chunk)
        while True:
            frame = await asyncio.wait_for(self.ws.receive(), timeout)
            if frame.type != aiohttp.WSMsgType.BINARY:
                return {"closed": str(frame.type)}
            message = self.unchunker.process_chunk(frame.data)
            if message is not None and message.get("id") == rpc_id:
                return message

    async def hello(self, secret: str) -> dict:
        return await self.call("wslink.hello", [{"secret": secret}], rpc_id="system:c0:0")


def _handshake_status(served: Served, origin: str, host: Optional[str] = None) -> str:
    import aiohttp

    async def work(client):
        return await client.hello(served.secret)

    try:
        answer = served.session(work, origin=origin, host=host)
        return "accepted: " + ("session" if "result" in answer else str(answer)[:80])
    except aiohttp.WSServerHandshakeError as error:
        return f"handshake refused {error.status}"


def b_authentication(w: World, served: Served):
    async def work(client):
        public = await client.hello("wslink-secret")
        state = await client.call("trame.state.get")
        printed = await client.hello(served.secret)
        return public, state, printed

    public, state, printed = served.session(work)
    ok = "error" in public and "result" not in state and "result" in printed
    return ok, (
        f"'wslink-secret': {'refused' if 'error' in public else 'ACCEPTED'}; state without it: "
        f"{'refused' if 'result' not in state else 'SERVED'}; the printed secret: "
        f"{'accepted' if 'result' in printed else 'refused'}"
    )


def b_origin(w: World, served: Served):
    status = _handshake_status(served, "http://evil.example")
    return status.startswith("handshake refused 403"), f"Origin http://evil.example: {status}"


def b_host(w: World, served: Served):
    page = served.get("/", host=f"evil.example:{served.port}")[0]
    index = served.get("/index.html", host=f"evil.example:{served.port}")[0]
    ws = _handshake_status(served, f"http://evil.example:{served.port}", host=f"evil.example:{served.port}")
    own = served.get("/index.html")[0]
    ok = page == 403 and index == 403 and ws.startswith("handshake refused 403") and own == 200
    return ok, f"Host evil.example: GET / {page}, /index.html {index}, websocket {ws}; own Host: {own}"


def b_static_traversal(w: World, served: Served):
    answers = {
        path: served.get(path)
        for path in (
            "/../../../../etc/passwd",
            "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
            "//etc/passwd",
        )
    }
    leaked = [p for p, (_, body) in answers.items() if "root:" in body]
    return not leaked and all(code >= 400 for code, _ in answers.values()), (
        "; ".join(f"{p} {code}" for p, (code, _) in answers.items()) + (f"; LEAKED {leaked}" if leaked else "")
    )


def b_bad_state(w: World, served: Served):
    async def work(client):
        await client.hello(served.secret)
        states = {}
        for key, value in (("budget", -5), ("budget", 10**12), ("overlay_opacity", "abc")):
            await client.call("trame.state.update", [[{"key": key, "value": value}]])
            states[f"{key}={value}"] = (await client.call("trame.state.get")).get("result", {}).get("state", {})
        select = await client.call("trame.trigger", ["select_row", [0], {}])
        odd = await client.call("trame.trigger", ["select_row", [0], {"not_an_argument": 1}])
        return states, select, odd

    states, select, odd = served.session(work)
    neg, huge, opacity = (states["budget=-5"], states[f"budget={10**12}"], states["overlay_opacity=abc"])
    ok = (
        neg.get("budget") != 1
        and "-5" in str(neg.get("error"))
        and huge.get("budget") != 10**12
        and opacity.get("overlay_opacity") != "abc"
        and "error" not in select
        and "Traceback" not in repr(odd)
        and ".py" not in repr(odd)
    )
    return ok, (
        f"budget -5 -> {neg.get('budget')} ({str(neg.get('error'))[:70]}); 10**12 -> {huge.get('budget')}; "
        f"opacity 'abc' -> {opacity.get('overlay_opacity')}; a later select_row: "
        f"{'ok' if 'error' not in select else 'ERROR'}; a failing call answers "
        f"{str(odd.get('error', {}).get('message', odd))[:60]!r}"
    )


def b_allocation(w: World, served: Served):
    import asyncio
    import struct

    async def work(client):
        await client.hello(served.secret)
        before = served.rss_mb()
        await client.ws.send_bytes(struct.pack("<III", 7, 0, 256 * 1024**2) + b"x" * 16)
        try:
            frame = await asyncio.wait_for(client.ws.receive(), 30)
            kind = frame.type.name.lower()
        except asyncio.TimeoutError:
            kind = "no answer"
        await asyncio.sleep(0.5)
        return before, served.rss_mb(), kind

    before, after, kind = served.session(work)

    async def alive(client):
        return await client.hello(served.secret)

    still = "result" in served.session(alive)
    ok = after - before < 64 and still
    return ok, (
        f"28-byte frame claiming 256 MB: RSS {before:.0f} -> {after:.0f} MB, connection {kind}; "
        f"server {'still answers' if still else 'DEAD'}"
    )


def b_plain_get(w: World, served: Served):
    code, body = served.get("/ws")
    return 400 <= code < 500 and "Traceback" not in body, f"GET /ws: {code}"


def b_labels_link(w: World, served: Served):
    data = w.p("p2a", "linked")
    data.mkdir()
    shutil.copy(w.p("base", "images", "hippocampus_001.nii.gz"), data)
    outside = w.p("p2a", "outside")
    outside.mkdir()
    os.symlink(outside, data / "labels")
    run = w.cmd(["--data", str(data), "--port", "0"], timeout=120, module="ASSFTWeb")
    ok = run.rc not in (0, None) and not run.traceback and "link" in run.text.lower()
    return ok, f"exit {run.rc}: {run.last_error()}" + (" (traceback)" if run.traceback else "")


SAVE_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from ASSFTActive.errors import OutputError
from ASSFTActive.io import read_volume
from ASSFTWeb.label_files import save_label_file
label, labels, outside = read_volume(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
save_label_file(label, labels, "hippocampus_001")
(labels / "backup").symlink_to(outside, target_is_directory=True)
try:
    save_label_file(label, labels, "hippocampus_001")
    print("saved")
except OutputError as error:
    print("refused:", error)
"""


def b_backup_link(w: World, served: Served):
    """The Save button's function (``ASSFTWeb.label_files.save_label_file``) with ``labels/backup`` a link."""
    labels, outside = w.p("p2a", "labels_b"), w.p("p2a", "outside_b")
    outside.mkdir()
    run = w.popen(
        [
            "nice",
            "-n",
            "19",
            sys.executable,
            "-c",
            SAVE_CHILD,
            str(REPO),
            str(w.p("base", "labels", "hippocampus_001.nii.gz")),
            str(labels),
            str(outside),
        ],
        120,
    )
    moved = sorted(p.name for p in outside.iterdir())
    ok = run.rc == 0 and run.out.startswith("refused") and not moved
    return ok, f"second save: {run.out.strip()[:150] or run.last_error()}; files outside: {moved or 'none'}"


BROWSER = [
    ("default_bind", "-", "hold", lambda w, s: (True, f"printed http://{s.host}/?secret=... (127.0.0.1)")),
    ("authentication", "1", "FAIL", b_authentication),
    ("websocket_origin", "2", "FAIL", b_origin),
    ("host_header", "3", "FAIL", b_host),
    ("static_traversal", "-", "hold", b_static_traversal),
    ("label_backup_symlink", "4", "FAIL", b_backup_link),
    ("labels_folder_link_at_start", "4", "new", b_labels_link),
    ("bad_state_values", "5", "FAIL", b_bad_state),
    ("allocation_claim", "5", "FAIL", b_allocation),
    ("plain_get_ws", "5", "FAIL", b_plain_get),
]


def served_once(cache: dict, w: World, start: Callable[[World], Served]):
    """The server ``start(w)``, started at the first call with this ``cache`` and stopped when the run ends: the
    :class:`Served`, or the exception its start raised (each later call gets the same)."""
    if "served" not in cache:
        try:
            cache["served"] = start(w)
            w.cleanup.append(cache["served"].stop)
        except Exception as error:  # reported on the rows
            cache["served"] = error
    return cache["served"]


def browser_probes() -> List[Probe]:
    """The 2.1 rows, against one server start (``--only`` names them like the others)."""
    state: dict = {}

    def run(name, check):
        def probe(w: World):
            served = served_once(state, w, Served)
            if isinstance(served, Exception):
                return False, f"server did not start: {served}"
            return check(w, served)

        return probe

    return [
        Probe("2.1", name, item, before, T + "test_web_security.py", run(name, check))
        for name, item, before, check in BROWSER
    ]


T = "Testing/Python/"
PROBES = [
    # 1.1 bad files (holding sample)
    Probe("1.1", "rank_corrupt", "-", "hold", T + "test_cli_bad_inputs.py", p_rank_corrupt),
    Probe("1.1", "overlay_one", "-", "hold", T + "test_cli_bad_inputs.py", p_overlay_bad("one.nii.gz", "4 voxels")),
    # 1.2 labels
    Probe("1.2", "eval_orphan", "21", "FAIL", T + "test_cli_bad_inputs.py", p_orphan_eval),
    Probe("1.2", "adapt_orphan", "21", "FAIL", T + "test_cli_bad_inputs.py", p_orphan_adapt),
    Probe("1.2", "eval_val3", "-", "hold", T + "test_cli_evaluate.py", p_eval("val3", "classes of the model")),
    Probe("1.2", "adapt_zero", "-", "hold", T + "test_label_checks.py", lambda w: label_refused(w, "zero")),
    Probe("1.2", "eval_zero", "9", "hold*", T + "test_label_meaning.py", p_eval("zero")),
    # 1.3 cards
    Probe(
        "1.3",
        "check_default_pretrained_effnet",
        "11",
        "FAIL",
        T + "test_models.py",
        p_card("default_pretrained_effnet", "EfficientNetBN"),
    ),
    Probe(
        "1.3",
        "check_default_pretrained_resnetfeatures",
        "11",
        "FAIL",
        T + "test_models.py",
        p_card("default_pretrained_resnetfeatures", "ResNetFeatures"),
    ),
    Probe(
        "1.3",
        "check_default_pretrained_mil",
        "11",
        "FAIL",
        T + "test_models.py",
        p_card("default_pretrained_mil", "MILModel"),
    ),
    Probe(
        "1.3", "overlay_huge_channels", "11", "FAIL", T + "test_models.py", p_card("huge_channels", command="overlay")
    ),
    Probe("1.3", "overlay_kernel_zero", "11", "FAIL", T + "test_models.py", p_card("kernel_zero", command="overlay")),
    Probe("1.3", "overlay_arch_os", "-", "hold", T + "test_models.py", p_card("arch_os", command="overlay")),
    # 1.5 worker
    Probe("1.5", "job_model_effnet_card", "11", "FAIL", T + "test_models.py", p_worker_effnet),
    Probe("1.5", "job_symlink_planted_after_start", "12", "FAIL", T + "test_confined_writes.py", p_symlink_after_start),
    Probe("1.5", "job_symlinks", "-", "hold", T + "test_confined_writes.py", p_job_symlinks),
    # 1.6 unwritable
    Probe("1.6", "adapt_predictions_ro", "16", "FAIL", T + "test_outputs_checked_first.py", p_predictions_ro),
    # 1.7 store
    Probe("1.7", "models_list_tampered", "17", "FAIL", T + "test_cli_models.py", p_models_tampered),
    Probe("1.7", "overlay_tampered_active_storefolder", "-", "hold", T + "test_cli_models.py", p_tampered_overlay),
    # 1.8 smoke edges
    Probe(
        "1.8",
        "overlay_threshold_15",
        "21",
        "FAIL",
        T + "test_cli_argument_ranges.py",
        p_overlay_opt("--threshold", "1.5"),
    ),
    Probe(
        "1.8",
        "overlay_max_regions_0",
        "21",
        "FAIL",
        T + "test_cli_argument_ranges.py",
        p_overlay_opt("--max-regions", "0"),
    ),
    Probe(
        "1.8",
        "overlay_max_regions_neg",
        "21",
        "FAIL",
        T + "test_cli_argument_ranges.py",
        p_overlay_opt("--max-regions", "-1"),
    ),
    Probe("1.8", "rerank_smaller_pool", "21", "FAIL", T + "test_cli_rank.py", p_rerank),
    Probe("1.8", "ranking_file_modes", "18", "issue", T + "test_cli_rank.py", p_output_modes),
    Probe("1.8", "threads_affinity", "19", "new", T + "test_threads.py", p_threads_affinity),
    Probe("1.8", "threads_bad_env", "19", "new", T + "test_threads.py", p_threads_bad_env),
    # 2.2 sfr
    Probe(
        "2.2",
        "job_sfr_retrain_patch_huge",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_retrain_patch_huge", None, {"patch_size": [100000] * 3}, "patch"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_lr_nan",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_lr_nan", {"learning_rate": float("nan")}, None, "learning_rate"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_iter_float",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_iter_float", {"iterations": 2.5}, None, "iterations"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_iter_bool",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_iter_bool", {"iterations": True}, None, "iterations"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_batch_huge",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_batch_huge", {"batch_size": 100000}, None, "batch_size"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_lora_huge",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_lora_huge", {"lora_rank": 10**7}, None, "lora_rank"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_iter_neg",
        "-",
        "hold",
        T + "test_sfr_config.py",
        sfr_job("sfr_sam_iter_neg", {"iterations": -5}, None, "iterations"),
    ),
    Probe("2.2", "cli_prior_patch_zero", "13", "FAIL", T + "test_sfr_prior_cards.py", sfr_cli("patch_zero", "patch")),
    Probe("2.2", "cli_prior_depth_huge", "13", "FAIL", T + "test_sfr_prior_cards.py", sfr_cli("depth_huge", "depth")),
    Probe("2.2", "cli_prior_embed_huge", "13", "FAIL", T + "test_sfr_prior_cards.py", sfr_cli("embed_huge", "embed")),
    Probe("2.2", "cli_prior_image_neg", "13", "FAIL", T + "test_sfr_prior_cards.py", sfr_cli("image_neg", "image")),
    Probe(
        "2.2",
        "cli_prior_classes_renamed",
        "8",
        "FAIL",
        T + "test_sfr_prior_class_names.py",
        sfr_cli("classes_renamed", "class"),
    ),
    Probe(
        "2.2", "cli_prior_weights_abs", "-", "hold", T + "test_sfr_prior_cards.py", sfr_cli("weights_abs", "outside")
    ),
    Probe(
        "2.2",
        "cli_config_sam_lr_nan",
        "13",
        "FAIL",
        T + "test_sfr_config.py",
        sfr_cli("", "learning_rate", config="p2b/nan.json"),
    ),
    # 2.3 lock
    Probe("2.3", "workdir_lock_churn", "20", "FAIL", T + "test_locks_and_events.py", p_lock_churn),
    # 2.4 label checks
    Probe(
        "2.4", "adapt_swapped", "6", "FAIL", T + "test_label_meaning.py", lambda w: label_refused(w, "swapped", "swap")
    ),
    Probe("2.4", "eval_swapped", "9", "new", T + "test_label_meaning.py", p_eval("swapped", "swap")),
    Probe("2.4", "adapt_shift2", "-", "hold", T + "test_label_meaning.py", p_label_ok("shift2")),
    Probe("2.4", "adapt_shift4", "8", "FAIL", T + "test_label_shift_warning.py", shifted("shift4")),
    Probe("2.4", "adapt_shiftjk4", "8", "FAIL", T + "test_label_meaning.py", shifted("shiftjk4")),
    Probe("2.4", "adapt_shift6", "8", "FAIL", T + "test_label_meaning.py", shifted("shift6")),
    Probe("2.4", "adapt_shiftjk6", "8", "FAIL", T + "test_label_meaning.py", shifted("shiftjk6")),
    Probe("2.4", "adapt_shift10", "8", "FAIL", T + "test_label_meaning.py", shifted("shift10")),
    Probe("2.4", "adapt_thin_slice", "8", "FAIL", T + "test_label_checks.py", lambda w: label_refused(w, "thin_slice")),
    Probe("2.4", "adapt_outline", "8", "FAIL", T + "test_label_checks.py", lambda w: label_refused(w, "outline")),
    Probe("2.4", "adapt_swapped3_guard_nopool", "6", "FAIL", T + "test_guard_label_meaning.py", p_swapped3_nopool),
    Probe("2.4", "adapt_dilated3", "-", "hold", T + "test_label_checks.py", p_label_ok("dilated3")),
    Probe("2.4", "adapt_filled", "-", "hold", T + "test_label_checks.py", lambda w: label_refused(w, "filled")),
    Probe(
        "2.4",
        "adapt_only_anterior",
        "-",
        "hold",
        T + "test_label_checks.py",
        lambda w: label_refused(w, "only_anterior", "posterior"),
    ),
    # 2.5 inputs
    Probe("2.5", "overlay_hugedims_2GB_nii_gz", "14", "FAIL", T + "test_io_geometry_memory.py", p_hugedims),
    Probe("2.5", "overlay_bomb_2GiB", "15", "FAIL", T + "test_io_geometry_memory.py", p_bomb),
    Probe("2.5", "read_bomb_256MiB", "15", "new", T + "test_io_geometry_memory.py", p_read_bomb),
    Probe("2.5", "overlay_sheared", "10", "FAIL", T + "test_io_geometry_memory.py", p_geometry("sheared.nii.gz")),
    Probe("2.5", "overlay_neg_pixdim", "10", "FAIL", T + "test_io_geometry_memory.py", p_geometry("neg_pixdim.nii")),
    Probe("2.5", "overlay_oblique", "-", "hold", T + "test_io_geometry_memory.py", p_geometry("oblique.nii.gz")),
    Probe(
        "2.5", "overlay_singular", "-", "hold", T + "test_cli_bad_inputs.py", p_overlay_bad("singular.nii", "geometry")
    ),
    # 3 foreign
    Probe("3", "adapt_ts_spleen1_kidney2", "7", "FAIL", T + "test_label_meaning.py", p_ts_labels),
    Probe("3", "rank_fixture_domain", "21", "FAIL", T + "test_query_ood.py", p_fixture_domain),
] + browser_probes()


_REFUSED_DOWNLOADS = "test_models.py::test_networks_whose_constructors_may_download_are_refused_before_they_are_built"

#: The test that fails without the fix of each probe's finding (``file::test``), where one names it.
TESTS = {
    "eval_orphan": "test_cli_argument_ranges.py::test_evaluate_warns_about_a_label_without_an_image",
    "adapt_orphan": "test_cli_argument_ranges.py::test_adapt_warns_about_a_label_without_an_image",
    "eval_zero": "test_cli_evaluate.py::test_evaluate_refuses_labels_the_label_checks_refuse",
    "check_default_pretrained_effnet": _REFUSED_DOWNLOADS,
    "check_default_pretrained_resnetfeatures": _REFUSED_DOWNLOADS,
    "check_default_pretrained_mil": _REFUSED_DOWNLOADS,
    "job_model_effnet_card": _REFUSED_DOWNLOADS,
    "overlay_huge_channels": "test_models.py::test_card_arguments_that_cannot_build_a_network_are_card_errors_not_"
    "tracebacks",
    "overlay_kernel_zero": "test_models.py::test_card_arguments_that_cannot_build_a_network_are_card_errors_not_"
    "tracebacks",
    "job_symlink_planted_after_start": "test_confined_writes.py::"
    "test_a_link_planted_in_the_ranking_folder_mid_ranking_receives_nothing",
    "job_symlinks": "test_worker_trust.py::test_a_symlink_planted_in_the_job_folder_stops_the_job_and_nothing_is_"
    "written_through_it",
    "adapt_predictions_ro": "test_outputs_checked_first.py::test_adapt_with_a_predictions_folder_that_cannot_be_"
    "created_fails_before_training",
    "models_list_tampered": "test_cli_models.py::test_models_marks_a_version_whose_weights_were_changed_after_writing",
    "overlay_tampered_active_storefolder": "test_cli_bad_inputs.py::test_a_tampered_active_version_is_refused_"
    "through_the_store_folder",
    "overlay_threshold_15": "test_cli_argument_ranges.py::test_overlay_settings_outside_their_range_are_one_error_line",
    "overlay_max_regions_0": "test_cli_argument_ranges.py::test_overlay_settings_outside_their_range_are_one_error_"
    "line",
    "overlay_max_regions_neg": "test_cli_argument_ranges.py::test_overlay_settings_outside_their_range_are_one_"
    "error_line",
    "rerank_smaller_pool": "test_cli_argument_ranges.py::test_reranking_a_smaller_pool_removes_the_files_of_the_"
    "volumes_that_left",
    "ranking_file_modes": "test_confined_writes.py::test_confined_files_keep_the_usual_permissions",
    "cli_prior_classes_renamed": "test_sfr_prior_class_names.py::test_a_prior_with_swapped_class_names_is_refused",
    "workdir_lock_churn": "test_locks_and_events.py::test_the_lock_has_one_holder_at_a_time_while_three_processes_"
    "take_and_release_it",
    "adapt_swapped": "test_label_meaning.py::test_assft_adapt_refuses_swapped_labels_and_stores_nothing",
    "eval_swapped": "test_cli_evaluate.py::test_evaluate_refuses_labels_the_label_checks_refuse",
    "adapt_shift4": "test_label_shift_warning.py::test_a_shift_beyond_true_labels_but_below_the_refusal_limit_warns",
    "adapt_shiftjk4": "test_label_meaning.py::test_a_misregistered_label_is_refused_and_one_in_place_passes",
    "adapt_shift6": "test_label_meaning.py::test_a_misregistered_label_is_refused_and_one_in_place_passes",
    "adapt_shiftjk6": "test_label_meaning.py::test_a_misregistered_label_is_refused_and_one_in_place_passes",
    "adapt_shift10": "test_label_meaning.py::test_a_misregistered_label_is_refused_and_one_in_place_passes",
    "adapt_thin_slice": "test_label_meaning.py::test_partial_labels_are_refused_unless_declared",
    "adapt_outline": "test_label_meaning.py::test_partial_labels_are_refused_unless_declared",
    "adapt_swapped3_guard_nopool": "test_label_meaning.py::test_swapped_real_labels_are_refused_before_training",
    "overlay_hugedims_2GB_nii_gz": "test_io_geometry_memory.py::test_a_small_file_declaring_2_gb_is_refused_before_"
    "allocating",
    "overlay_bomb_2GiB": "test_io_geometry_memory.py::test_the_decompression_limit_is_configurable_and_named_in_the_"
    "error",
    "read_bomb_256MiB": "test_io_geometry_memory.py::test_reading_a_gzip_bomb_needs_at_most_1_2_times_its_"
    "decompressed_size",
    "overlay_sheared": "test_io_geometry_memory.py::test_an_overlay_of_a_disputed_header_lies_on_the_image_when_"
    "slicer_reads_it_back",
    "overlay_neg_pixdim": "test_io_geometry_memory.py::test_an_overlay_of_a_disputed_header_lies_on_the_image_when_"
    "slicer_reads_it_back",
    "adapt_ts_spleen1_kidney2": "test_label_meaning.py::test_a_spleen_and_kidney_label_given_as_hippocampus_is_"
    "refused_as_another_structure",
    "rank_fixture_domain": "test_query_ood.py::test_small_foreign_fixtures_are_flagged_for_the_hippocampus_model",
    "threads_affinity": "test_threads.py::test_a_process_pinned_to_one_core_runs_one_torch_thread_per_pool",
    "threads_bad_env": "test_threads.py::test_the_command_line_refuses_a_malformed_thread_variable_before_any_work",
    "authentication": "test_web_security.py::test_the_page_connects_only_with_the_printed_secret_never_the_public_"
    "default",
    "websocket_origin": "test_web_security.py::test_a_websocket_opened_by_another_sites_page_is_refused",
    "host_header": "test_web_security.py::test_a_foreign_host_name_is_refused_for_the_page_and_the_websocket",
    "label_backup_symlink": "test_web_security.py::test_a_save_never_moves_the_previous_label_through_a_backup_"
    "folder_that_is_a_link",
    "labels_folder_link_at_start": "test_web_security.py::test_the_server_refuses_to_start_on_a_labels_folder_that_"
    "is_a_link",
    "bad_state_values": "test_web_security.py::test_bad_field_values_from_a_browser_are_refused_with_a_message_and_"
    "never_used",
    "allocation_claim": "test_web_security.py::test_a_message_claiming_a_huge_size_is_refused_without_allocating_it",
    "plain_get_ws": "test_web_security.py::test_a_plain_get_on_the_websocket_path_answers_400_without_a_traceback",
}
for _probe in PROBES:
    if _probe.name in TESTS:
        _probe.test = T + TESTS[_probe.name]


#: The catalogue's other rows, one module per group of areas under ``Testing/Benchmarks/redteam_areas/``; each
#: defines ``PROBES`` (a list of :class:`Probe`) and may define ``prepare(world)`` for inputs of its own.
AREA_MODULES = ("bad_inputs", "cards_store", "jobs_serve", "sfr_labels_inputs")


def _area_modules() -> list:
    import importlib

    modules = []
    for name in AREA_MODULES:
        try:
            modules.append(importlib.import_module(f"Testing.Benchmarks.redteam_areas.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"Testing.Benchmarks.redteam_areas.{name}":
                raise
    return modules


def catalogue() -> List[Probe]:
    """Every probe, in the catalogue's area order: the rows above and the area modules' rows."""
    probes = list(PROBES)
    for module in _area_modules():
        probes.extend(module.PROBES)
    names = [p.name for p in probes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"probe names used twice: {repeated}")
    order = ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "2.1", "2.2", "2.3", "2.4", "2.5", "3")
    return sorted(probes, key=lambda p: order.index(p.area) if p.area in order else len(order))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated probe names")
    parser.add_argument("--md", type=Path, help="write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="write the records as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    parser.add_argument(
        "--render",
        type=Path,
        help="run nothing: re-render the table of a --json file of an earlier "
        "run with the probes' current item, verdict before and test",
    )
    args = parser.parse_args(argv)
    if args.render:
        known = {p.name: p for p in catalogue()}
        records = json.loads(args.render.read_text(encoding="utf-8"))
        for record in records:
            probe = known.get(record["probe"])
            if probe is not None:
                record.update(item=probe.item, before=probe.before, test=probe.test)
            record["observed"] = portable(record["observed"])
        table = render(records)
        print(table)
        if args.md:
            args.md.write_text(table, encoding="utf-8")
        if args.json:
            args.json.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        return 0
    if not (HIPPO / "imagesTr").is_dir() or not FIXTURES.is_dir():
        print(f"skipped: {DATA} (hippocampus and fixtures) is absent")
        return 0
    wanted = set(args.only.split(",")) if args.only else None
    probes = [p for p in catalogue() if wanted is None or p.name in wanted]
    root = Path(tempfile.mkdtemp(prefix="assft-redteam-"))
    records = []
    os.umask(0o022)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))  # a stopped run still removes its scratch folder
    world = World(root)
    tree = _tree()
    try:
        world.build()
        for module in _area_modules():
            if hasattr(module, "prepare"):
                module.prepare(world)
        for probe in probes:
            start = time.monotonic()
            try:
                ok, observed = probe.run(world)
            except Exception as error:  # a probe that cannot be built is reported, not hidden
                ok, observed = False, f"probe error: {type(error).__name__}: {error}"
            observed = portable(re.sub(re.escape(str(root)) + "/?", "", observed))
            record = {
                "area": probe.area,
                "probe": probe.name,
                "item": probe.item,
                "before": probe.before,
                "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "tree": tree,
                "now": "hold" if ok else "FAIL",
                "observed": observed,
                "test": probe.test,
                "seconds": round(time.monotonic() - start, 1),
            }
            records.append(record)
            print(json.dumps(record), flush=True)
    finally:
        for stop in world.cleanup:
            stop()
        for path in world.immutable:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        if args.keep:
            print(f"scratch kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    table = render(records)
    print(table)
    if args.md:
        args.md.write_text(table, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return 0


def _tree() -> str:
    """The commit the run tested, and how many tracked files differed from it (others' work in progress)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = len([line for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line])
    return f"`{head}`" + (f" with {changed} tracked files changed in the working tree" if changed else "")


def portable(observed: str) -> str:
    """An observation as the table shows it: one line, no ``|``, paths in this checkout relative to it (a result file
    names no machine's folders)."""
    return observed.replace(str(REPO) + "/", "").replace("|", "/").replace("\n", " ")


def render(records: list) -> str:
    held = sum(r["now"] == "hold" for r in records)
    failing = [r for r in records if r["before"] in ("FAIL", "issue")]
    fixed = sum(r["now"] == "hold" for r in failing)
    when = records[0].get("time", "") if records else ""
    lines = [
        "# Red-team catalogue re-run",
        "",
        f"Generated by `Testing/Benchmarks/redteam_rerun.py` on {when or 'an unrecorded date'} against "
        f"{records[0].get('tree', _tree()) if records else _tree()}; catalogue: "
        '`../shared/research/redteam.md` (2026-12-05). "before" is the catalogue\'s verdict (`new`: a '
        "probe added here; `issue`: a finding of issue 29 with no catalogue row; `hold*`: held there only by "
        "the documented scope of the time; the catalogue's `overlay_max_regions_0_neg` is two rows here). "
        "A refusal holds when it is exit 2 with one `error:` line and no traceback (a worker: exit 1 "
        "with an `error` event and no `unexpected` one); nothing may be written outside the job or data folder.",
        "",
        f"Failing before (catalogue or issue 29) and re-run: {len(failing)}, now holding: {fixed}. "
        f"All probes: {len(records)}, {held} hold, {len(records) - held} fail.",
        "",
        "| area | probe | issue 29 item | before | now | observed now | covered by |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        now = r["now"] if r["now"] == "hold" else "**FAIL**"
        lines.append(
            f"| {r['area']} | {r['probe']} | {r['item']} | {r['before']} | {now} | {r['observed']} | `{r['test']}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # one copy of this module: the area modules import it by its package name
    sys.path.insert(0, str(REPO))
    from Testing.Benchmarks import redteam_rerun

    sys.exit(redteam_rerun.main())
