"""Catalogue areas 1.1 (bad files, shapes and values), 1.2 (labels) and 1.6 (unwritable folders, a full disk).

Every row of those three sections that ``redteam_rerun.PROBES`` does not already run, rebuilt from the row: the
inputs the section's preamble describes are made by :func:`prepare` in the run's scratch folder (``p12/pool_<name>/``
holds ``zz_<name>`` next to the good ``hippocampus_001.nii.gz``; ``lab/<name>/`` a modified label of 001; ``p8/``
the read-only and read-write folders). Rows the red team ran as uid nobody run through ``setpriv`` as uid/gid 65534;
the full-disk rows write to a 3 MB tmpfs mounted at ``p8/tfs`` for the probe and unmounted at the end of the run.

A refusal holds only when it is exit 2 with exactly one ``error:`` line, no traceback and no file left in the output
folder; an input the catalogue expects to be used holds when the command exits 0 without a traceback. A pool entry
that is not an image file (a folder named ``*.nii.gz``, a link loop) must be refused or named in a warning: the
catalogue's "skipped without a word" is silence, which issue 29 rules out.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from Testing.Benchmarks.redteam_rerun import REPO, SFR_SHORT, Probe, Run, World, accepted, refused, sfr_argv

T = "Testing/Python/"
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
SMALL = ["--batch-size", "1", "--patch-size", "32", "32", "32", "--pseudo", "none", "--quiet"]
FAST = ["--iterations", "3", "--semi-iterations", "3"] + SMALL  # the 1.2 rows' settings
FAST2 = ["--iterations", "2", "--semi-iterations", "2"] + SMALL
Verdict = Tuple[bool, str]


# -- inputs ----------------------------------------------------------------------------------------------------------
def prepare(w: World) -> None:
    """The bad files of 1.1, the labels of 1.2 and the folders of 1.6 (a few MB, about a second)."""
    _bad_files(w)
    _labels(w)
    w.p("p3", "noimg").mkdir(parents=True, exist_ok=True)
    for sub in ("ro", "rw", "home_nobody"):
        w.p("p8", sub).mkdir(parents=True, exist_ok=True)
    _give_nobody(w.p("p8", "rw"), w.p("p8", "home_nobody"))
    w.p("p8", "cfg.json").write_text(json.dumps({"checkpoint_every": 1}))


def _give_nobody(*folders: Path) -> None:
    """Folders uid nobody writes in (only root can hand them over; as another user the nobody rows cannot run and
    say so)."""
    if os.geteuid() == 0:
        for folder in folders:
            os.chown(folder, NOBODY, NOBODY)


def _bad_files(w: World) -> None:
    import nibabel as nib
    import numpy as np

    good = w.p("base", "images", "hippocampus_001.nii.gz")
    image = nib.load(str(good))
    voxels = np.asarray(image.dataobj, np.float32)
    rng = np.random.default_rng(29)

    def pool(name: str, suffix: str = ".nii.gz") -> Path:
        folder = w.p("p12", f"pool_{name}")
        folder.mkdir(parents=True)
        shutil.copy(good, folder)
        return folder / f"zz_{name}{suffix}"

    def nifti(name: str, array, affine=None) -> None:
        nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine), str(pool(name)))

    raw = good.read_bytes()
    pool("truncated").write_bytes(raw[: len(raw) // 2])
    pool("text").write_text("this is not an image, it is a text file with an image's name\n")
    pool("randgz").write_bytes(gzip.compress(rng.bytes(4096)))
    pool("empty").write_bytes(b"")
    pool("dir").mkdir()
    loop = pool("loop")
    os.symlink(loop.name, loop)  # a link to itself: stat() fails with ELOOP
    nifti("d2", rng.random((64, 64), np.float32))
    nifti("d4", rng.random((20, 20, 20, 3), np.float32))
    nifti("one", np.ones((1, 1, 1), np.float32), np.eye(4))
    nifti("const5", np.full((20, 20, 20), 5.0, np.float32))
    nifti("zeros", np.zeros((20, 20, 20), np.float32))
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = voxels.copy()
        bad[10, 20, 10] = value
        nifti(name, bad)
    huge = voxels.astype(np.float64)
    huge[10, 20, 10] = 1.4e302
    nifti("f64huge", huge)
    # DT_BINARY (data code 1, one bit per voxel): a NIfTI type no reader supports
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(voxels.shape)
    hdr.set_qform(image.affine, code=1)
    hdr["datatype"], hdr["bitpix"], hdr["vox_offset"] = 1, 1, 352
    pool("dtbinary", ".nii").write_bytes(hdr.binaryblock + b"\0" * 4 + bytes(voxels.size // 8 + 1))
    span = voxels.max() - voxels.min()
    nifti("int16ext", np.round((voxels - voxels.min()) / span * 65535 - 32768).astype(np.int16))
    nifti("binary_u8", (voxels > np.median(voxels)).astype(np.uint8))
    noperm = pool("noperm")
    shutil.copy(good, noperm)
    noperm.chmod(0)
    nifti("big512x2", rng.random((512, 512, 2), np.float32), np.eye(4))
    w.p("p12", "nob").mkdir()
    _give_nobody(w.p("p12", "nob"))


def _labels(w: World) -> None:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(w.p("base", "labels", "hippocampus_001.nii.gz")))
    lab = np.asarray(img.dataobj).astype(np.uint8)
    first = tuple(int(i[0]) for i in np.nonzero(lab == 1))

    def save(name: str, array, affine=None, case: str = "hippocampus_001") -> None:
        folder = w.p("lab", name)
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, img.affine if affine is None else affine), str(folder / f"{case}.nii.gz"))

    save("float012", lab.astype(np.float32))
    frac = lab.astype(np.float32)
    frac[first] = 1.5
    save("frac15", frac)
    v255 = lab.copy()
    v255[first] = 255
    save("val255", v255)
    neg = lab.astype(np.int8)
    neg[first] = -1
    neg[tuple(i + 1 for i in first)] = -2
    save("neg", neg)
    save("shape36", np.pad(lab, ((0, 1), (0, 0), (0, 0))))
    for name, mm in (("aff5mm", 5.0), ("aff05mm", 0.5)):
        moved = img.affine.copy()
        moved[0, 3] += mm
        save(name, lab, moved)
    for case in ("hippocampus_001", "hippocampus_004"):
        like = nib.load(str(w.p("base", "labels", f"{case}.nii.gz")))
        save("zero2", np.zeros(like.shape, np.uint8), like.affine, case)


# -- judges ----------------------------------------------------------------------------------------------------------
def files_in(folder: Path) -> List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


def strict(run: Run, *words: str, out: Optional[Path] = None) -> Verdict:
    """:func:`refused`, with exactly one ``error:`` line and (given ``out``) no file left under it."""
    ok, text = refused(run, *words)
    errors = [line for line in run.err.splitlines() if line.startswith("error:")]
    if len(errors) != 1:
        ok, text = False, text + f"; {len(errors)} error lines"
    left = [p for p in files_in(out) if (out / p).is_file() and not p.endswith(".lock")] if out is not None else []
    if left:
        ok, text = False, text + f"; left in the output folder: {left[:4]}"
    return ok, text


def used(run: Run) -> Verdict:
    return accepted(run)


#: Run as uid nobody inside a private mount namespace in which the interpreter is reachable: when it lies under a
#: folder others cannot enter (e.g. a pyenv install inside a 0700 home folder), that folder is covered by an
#: empty tmpfs (0755) holding a bind mount of the one subfolder on the interpreter's path; nothing else changes and
#: the host's mounts are untouched.
NOBODY_SH = r"""set -e
if [ -n "$1" ]; then
  mount --bind "$2" /mnt
  mount -t tmpfs -o mode=0755,size=1m assft-nobody "$1"
  mkdir -p "$2"
  mount --bind /mnt "$2"
fi
shift 2
exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
"""


def nobody_prefix() -> List[str]:
    """The command prefix that runs what follows as uid/gid 65534 with the interpreter reachable."""
    real = Path(os.path.realpath(sys.executable))
    closed = next((d for d in reversed(real.parents) if not d.stat().st_mode & 0o001), None)
    if closed is None:
        return SETPRIV
    inner = closed / real.relative_to(closed).parts[0]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", NOBODY_SH, "sh", str(closed), str(inner)]


def nobody_env(w: World) -> dict:
    """The probe environment for uid nobody: the scratch root traversable (0711), a home it owns."""
    w.root.chmod(0o711)
    return dict(w.env, HOME=str(w.p("p8", "home_nobody")))


def as_nobody(w: World, args: List[str], timeout: float = 240) -> Run:
    if os.geteuid() != 0:
        raise RuntimeError("not run: switching to uid nobody (setpriv) needs root; run the re-run as root")
    return w.cmd(args, timeout=timeout, env=nobody_env(w), prefix=nobody_prefix())


# -- 1.1 bad files -----------------------------------------------------------------------------------------------------
def _bad_path(name: str) -> str:
    return f"p12/pool_{name}/zz_{name}" + (".nii" if name == "dtbinary" else ".nii.gz")


def rank_bad(name: str, *words: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        out = w.p("p12", f"out_{name}")
        run = w.cmd(["rank", "--images", f"p12/pool_{name}", "--budget", "1", "--out", out, "--quiet"])
        return strict(run, f"zz_{name}", *words, out=out)

    return probe


def overlay_bad(name: str, *words: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        out = w.p("p12", f"ov_{name}")
        return strict(w.cmd(["overlay", "--image", _bad_path(name), "--out", out]), f"zz_{name}", *words, out=out)

    return probe


def rank_not_a_file(name: str) -> Callable[[World], Verdict]:
    """A pool entry named like an image that is not a readable file: refused, or named in a warning."""

    def probe(w: World) -> Verdict:
        out = w.p("p12", f"out_{name}")
        run = w.cmd(["rank", "--images", f"p12/pool_{name}", "--budget", "1", "--out", out, "--quiet"])
        if run.rc == 0 and not run.traceback:
            warning = next((line for line in run.err.splitlines() if f"zz_{name}" in line), "")
            return bool(warning), "exit 0: " + (warning[:200] or "the entry was skipped without a word")
        return strict(run, f"zz_{name}", out=out)

    return probe


def rank_ok(name: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        out = w.p("p12", f"out_{name}")
        run = w.cmd(["rank", "--images", f"p12/pool_{name}", "--budget", "1", "--out", out, "--quiet"])
        ok, text = used(run)
        ranked = json.loads((out / "ranking.json").read_text()) if (out / "ranking.json").is_file() else None
        named = ranked is not None and f"zz_{name}" in json.dumps(ranked)
        return ok and named, text + ("; zz_ ranked" if named else "; zz_ not in ranking.json")

    return probe


def overlay_ok(name: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        out = w.p("p12", f"ov_{name}")
        ok, text = used(w.cmd(["overlay", "--image", _bad_path(name), "--out", out]))
        maps = [p for p in files_in(out) if "entropy" in p]
        return ok and bool(maps), text + f"; {len(maps)} entropy map(s)"

    return probe


def rank_noperm(w: World) -> Verdict:
    out = w.p("p12", "nob", "out")
    run = as_nobody(w, ["rank", "--images", "p12/pool_noperm", "--budget", "1", "--out", out, "--quiet"])
    return _noperm(run, out)


def overlay_noperm(w: World) -> Verdict:
    out = w.p("p12", "nob", "ov")
    return _noperm(as_nobody(w, ["overlay", "--image", _bad_path("noperm"), "--out", out]), out)


def _noperm(run: Run, out: Path) -> Verdict:
    """Refused as a permission problem (the catalogue's wording blamed corrupt compressed data)."""
    ok, text = strict(run, "zz_noperm", "permission denied", out=out)
    if "corrupt" in run.last_error().lower():
        ok, text = False, text + "; blames corruption for a permission error"
    return ok, text + ("; empty --out folder left" if out.is_dir() and not files_in(out) else "")


SWEEP_CHILD = r"""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from ASSFTActive.errors import InputError
from ASSFTActive.io import read_label, read_volume
kind, source, image_path, folder = sys.argv[2], Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
count = int(sys.argv[6])
raw = source.read_bytes()
image = read_volume(image_path)
truth = read_volume(source).array if kind == "image" else read_label(source, image, 3).array
refused = same = changed = other = 0
for n in range(count):
    data = bytearray(raw)
    start = (len(raw) - 16) * n // max(count - 1, 1)
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    path = folder / f"corrupt_{n:02d}.nii.gz"
    path.write_bytes(bytes(data))
    try:
        volume = read_volume(path) if kind == "image" else read_label(path, image, 3)
    except InputError:
        refused += 1
        continue
    except Exception as error:
        other += 1
        print(f"{n}: {type(error).__name__}: {error}"[:200], file=sys.stderr)
        continue
    if volume.array.shape == truth.shape and np.array_equal(volume.array, truth):
        same += 1
    else:
        changed += 1
print(refused, same, changed, other)
"""


def corrupt_sweep(kind: str, count: int) -> Callable[[World], Verdict]:
    """``count`` copies of the 001 image (or label), 16 bytes XOR-ed at evenly spaced offsets, read one by one."""

    def probe(w: World) -> Verdict:
        folder = w.p("p12", f"sweep_{kind}")
        folder.mkdir()
        source = w.p("base", "images" if kind == "image" else "labels", "hippocampus_001.nii.gz")
        image = w.p("base", "images", "hippocampus_001.nii.gz")
        argv = [sys.executable, "-c", SWEEP_CHILD, str(REPO), kind, str(source), str(image), str(folder), str(count)]
        run = w.popen(["nice", "-n", "19"] + argv, 240)
        fields = run.out.split()
        if run.rc != 0 or len(fields) != 4:
            return False, f"exit {run.rc}: {run.last_error()}"
        refused_n, same, changed, other = (int(f) for f in fields)
        ok = changed == 0 and other == 0
        return ok, (
            f"{refused_n} of {count} refused (InputError), {same} read with the original voxels, {changed} accepted "
            f"with other voxels, {other} other exceptions" + (f" ({run.last_error()})" if other else "")
        )

    return probe


# -- 1.2 labels --------------------------------------------------------------------------------------------------------
def evaluate(w: World, name: str, out: str, *extra: str) -> Run:
    args = ["evaluate", "--images", "base/images/hippocampus_001.nii.gz", "--labels", f"lab/{name}", "--out", out]
    return w.cmd(args + list(extra))


def eval_refused(name: str, *words: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        out = w.p("p3", f"ev_{name}")
        return strict(evaluate(w, name, str(out), "--no-hd95"), *words, out=out)

    return probe


def adapt_refused(name: str, *words: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        store = w.p("p3", f"st_{name}")
        run = w.cmd(["adapt", "--images", "base/images", "--labels", f"lab/{name}", "--store", store, *FAST])
        return strict(run, *words, out=store)

    return probe


def val255(command: str) -> Callable[[World], Verdict]:
    """A few voxels of value 255: the catalogue expected a refusal; since issue 27, 255 means "not annotated" (a
    partial label), so the row holds when the label is refused or the run says which file marks voxels not annotated.
    """

    def probe(w: World) -> Verdict:
        if command == "evaluate":
            out = w.p("p3", "ev_val255")
            run = evaluate(w, "val255", str(out), "--no-hd95", "--quiet")
        else:
            out = w.p("p3", "st_val255")
            run = w.cmd(["adapt", "--images", "base/images", "--labels", "lab/val255", "--store", out, *FAST])
        if run.rc == 2:
            return strict(run, "[255]", out=out)
        ok, text = used(run)
        line = next((line.strip() for line in run.out.splitlines() if "not annotated (255)" in line), "")
        ok = ok and "hippocampus_001" in line
        return ok, text.split(":")[0] + ": " + (line[:200] or "the 255 voxels were left out without a word")

    return probe


def eval_float012(w: World) -> Verdict:
    run = evaluate(w, "float012", "p3/ev_float012", "--no-hd95")
    ok, text = used(run)
    mean = next((line.strip() for line in run.text.splitlines() if "**mean**" in line), "")
    return ok and bool(mean), text + (f"; {mean}" if mean else "; no mean Dice printed")


def adapt_float012(w: World) -> Verdict:
    run = w.cmd(["adapt", "--images", "base/images", "--labels", "lab/float012", "--store", "p3/st_float012", *FAST])
    ok, text = used(run)
    stored = sorted(p.name for p in w.p("p3", "st_float012").glob("*/v*"))
    return ok and bool(stored), text + f"; versions stored: {stored or 'none'}"


def no_image(command: str) -> Callable[[World], Verdict]:
    def probe(w: World) -> Verdict:
        if command == "adapt":
            out = w.p("p3", "st_noimg")
            run = w.cmd(["adapt", "--images", "p3/noimg", "--labels", "base/labels", "--store", out, "--quiet"])
        else:
            out = w.p("p3", "ev_noimg")
            run = w.cmd(["evaluate", "--images", "p3/noimg", "--labels", "base/labels", "--out", out])
        return strict(run, "no NIfTI", out=out)

    return probe


def adapt_zero2_allow_guard(w: World) -> Verdict:
    """All-zero labels of 001 and 004 with ``--allow-implausible-labels`` and the guard: stored, never activated."""
    store = w.p("p3", "st_zero2")
    run = w.cmd(
        ["adapt", "--images", "base/images", "--labels", "lab/zero2", "--store", store, "--allow-implausible-labels"]
        + ["--learning-rate", "0.01"]
        + FAST,
        timeout=400,
    )
    warnings = [line for line in run.err.splitlines() if line.startswith("warning")]
    versions = sorted(str(p.relative_to(store)) for p in store.glob("*/v*"))
    active = sorted(str(p.relative_to(store)) for p in store.glob("*/active.json"))
    ok = run.rc == 0 and not run.traceback and bool(versions) and not active and "not activated" in run.text.lower()
    said = next((line.strip() for line in run.text.splitlines() if "activated" in line.lower()), run.last_error())
    return ok, (
        f"exit {run.rc} in {run.seconds:.0f} s; {len(warnings)} warning(s); stored {versions or 'nothing'}, "
        f"active: {active or 'none'}: {said[:160]}"
    )


def evaluate_absent_class(w: World) -> Verdict:
    version = w.p("p3", "st_zero2", "hippocampus-unet-adapted", "v1")
    if not version.is_dir():
        return False, "no version to evaluate (adapt_zero2_allow_guard stored none)"
    out = w.p("p3", "ev_absent")
    run = evaluate(w, "only_anterior", str(out), "--model", str(version))
    if run.rc == 2:  # refused: no label marks 'posterior', so no mean would mean what it says (label checks)
        return strict(run, "posterior", out=out)
    ok, text = used(run)
    line = next((line.strip() for line in run.text.splitlines() if "not scored" in line), "")
    return ok and bool(line), text + (f"; {line[:160]}" if line else "; the absent class was scored")


# -- 1.6 unwritable folders and a full disk ---------------------------------------------------------------------------
def _rw_store(w: World) -> Optional[str]:
    """``p8/rw/store/base`` with v1 and v2, built by uid nobody, v1 made active (so the row's ``activate ... v2`` has
    something to switch), then made read-only (``chmod -R a-w``). Returns why it could not be built."""
    store = w.p("p8", "rw", "store")
    if (store / "base" / "v2").is_dir():
        return None
    for _ in range(2):
        run = as_nobody(
            w,
            ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", "p8/rw/store", "--name", "base"]
            + ["--no-guard"]
            + FAST2,
        )
        if run.rc != 0:
            return f"could not build the store: exit {run.rc}: {run.last_error()}"
    run = as_nobody(w, ["models", "activate", "--store", "p8/rw/store", "base", "v1"])
    if run.rc != 0:
        return f"could not activate v1: {run.last_error()}"
    for path in [store, *store.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return None


def ro(args: List[str], out: str, *words: str, store: bool = False, timeout: float = 240) -> Callable[[World], Verdict]:
    """Run ``args`` as uid nobody; refused naming ``words``, nothing written under ``out`` (or the whole p8/ro)."""

    def probe(w: World) -> Verdict:
        if store:
            why = _rw_store(w)
            if why:
                return False, why
        before = files_in(w.p("p8", "rw", "store"))
        run = as_nobody(w, args, timeout)
        ok, text = strict(run, *words, out=w.p(out))
        after = files_in(w.p("p8", "rw", "store"))
        if after != before:
            ok, text = False, text + f"; the store changed: {sorted(set(after) ^ set(before))[:3]}"
        return ok, text

    return probe


def _tmpfs(w: World, name: str, free_bytes: int) -> Path:
    """A fresh 3 MB tmpfs at ``p8/tfs_<name>`` with ``free_bytes`` left free (the rest taken by a filler file)."""
    mount = w.p("p8", f"tfs_{name}")
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    w.cleanup.append(lambda: subprocess.run(["umount", str(mount)], capture_output=True))
    stat = os.statvfs(mount)
    fill = stat.f_bavail * stat.f_frsize - free_bytes
    with open(mount / "filler", "wb") as handle:
        handle.write(b"\1" * max(fill, 0))
    return mount


def _leftovers(folder: Path) -> List[str]:
    """Files a failed write left on the full disk (empty folders the command was asked to make, and the work-dir's
    lock file, which the next run takes over, are not counted)."""
    return [p for p in files_in(folder) if p != "filler" and (folder / p).is_file() and not p.endswith(".lock")]


def rank_out_full(w: World) -> Verdict:
    mount = _tmpfs(w, "rank", 30 * 1024)
    run = w.cmd(["rank", "--images", "base/images", "--budget", "1", "--out", mount / "out", "--quiet"])
    ok, text = strict(run, "No space left")
    left = _leftovers(mount)
    return ok and not left, text + (f"; left on the full disk: {left[:4]}" if left else "; nothing left behind")


def adapt_store_full(w: World) -> Verdict:
    mount = _tmpfs(w, "store", 1 << 20)
    run = w.cmd(
        ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", mount / "store", "--name", "base"]
        + FAST2
        + ["--no-guard", "--work-dir", "p8/wd_full"]
    )
    ok, text = strict(run, "No space left")
    left = _leftovers(mount)
    return ok and not left, text + (f"; left on the full disk: {left[:4]}" if left else "; nothing left behind")


def adapt_workdir_full(w: World) -> Verdict:
    mount = _tmpfs(w, "wd", 1 << 20)
    store = w.p("p8", "rw", "st_wdfull")
    run = w.cmd(
        ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", store, "--iterations", "6"]
        + ["--semi-iterations", "2", "--batch-size", "1", "--patch-size", "32", "32", "32", "--pseudo", "none"]
        + ["--no-guard", "--config", "p8/cfg.json", "--work-dir", mount / "wd", "--quiet"]
    )
    ok, text = strict(run, "No space left", out=store)
    left = _leftovers(mount)
    return ok and not left, text + (f"; left on the full disk: {left[:4]}" if left else "; nothing left behind")


ADAPT_RO = ["adapt", "--images", "base/images", "--labels", "lab/real2"]
RANK_RO = ["rank", "--images", "base/images", "--budget", "1"]
TAIL = ["--iterations", "2", "--semi-iterations", "2", "--no-guard", "--quiet"]

# -- the rows --------------------------------------------------------------------------------------------------------
BAD_FILES = [
    # name, words of the refusal (None: the catalogue expects the file to be used)
    ("truncated", ("corrupt or truncated",)),
    ("corrupt", None),  # rank_corrupt is in redteam_rerun.PROBES; overlay_corrupt below
    ("text", ("cannot read",)),
    ("randgz", ("not a NIfTI",)),
    ("empty", ("not a NIfTI",)),
    ("dir", ()),
    ("loop", ()),
    ("d2", ("2D",)),
    ("d4", ("4D",)),
    ("one", ("4 voxels",)),
    ("const5", ("every voxel has the value 5",)),
    ("zeros", ("every voxel has the value 0",)),
    ("nan", ("NaN or infinite",)),
    ("inf", ("NaN or infinite",)),
    ("f64huge", ("float32 range",)),
    ("dtbinary", ("cannot read",)),
]
C1 = T + "test_cli_bad_inputs.py"
IO = T + "test_io.py"
NF = T + "test_pool_entries_that_are_not_files.py"


def _bad_file_rows() -> List[Probe]:
    rows: List[Probe] = []
    for name, words in BAD_FILES:
        if name == "corrupt":
            rows.append(
                Probe(
                    "1.1",
                    "overlay_corrupt",
                    "-",
                    "hold",
                    C1,
                    lambda w: strict(
                        w.cmd(["overlay", "--image", "pool_corrupt/zz_corrupt.nii.gz", "--out", "p12/ov_corrupt"]),
                        "corrupt",
                        out=w.p("p12", "ov_corrupt"),
                    ),
                )
            )
            continue
        if name in ("dir", "loop"):
            rows.append(Probe("1.1", f"rank_{name}", "-", "hold", NF, rank_not_a_file(name)))
            rows.append(Probe("1.1", f"overlay_{name}", "-", "hold", NF, overlay_bad(name)))
            continue
        rows.append(Probe("1.1", f"rank_{name}", "-", "hold", C1, rank_bad(name, *words)))
        if name != "one":  # overlay_one is in redteam_rerun.PROBES
            rows.append(Probe("1.1", f"overlay_{name}", "-", "hold", C1, overlay_bad(name, *words)))
    for name in ("int16ext", "binary_u8"):
        rows.append(Probe("1.1", f"rank_{name}", "-", "hold", T + "test_cli_rank.py", rank_ok(name)))
        rows.append(Probe("1.1", f"overlay_{name}", "-", "hold", T + "test_inference_overlay.py", overlay_ok(name)))
    rows += [
        Probe("1.1", "rank_noperm_nobody", "-", "hold", NF, rank_noperm),
        Probe("1.1", "overlay_noperm_nobody", "-", "hold", NF, overlay_noperm),
        Probe("1.1", "corrupt_sweep_image", "-", "hold", IO, corrupt_sweep("image", 41)),
        Probe("1.1", "corrupt_sweep_label", "-", "hold", IO, corrupt_sweep("label", 13)),
        Probe("1.1", "rank_big512x2", "-", "hold", C1, rank_bad("big512x2", "4 voxels")),
    ]
    return rows


EV = T + "test_cli_evaluate.py"
PL = T + "test_partial_labels_are_named.py"
LC = T + "test_label_checks.py"
LABEL_ROWS = [
    Probe("1.2", "eval_float012", "-", "hold", EV, eval_float012),
    Probe("1.2", "adapt_float012", "-", "hold", T + "test_cli_adapt.py", adapt_float012),
    Probe("1.2", "eval_frac15", "-", "hold", EV, eval_refused("frac15", "whole numbers")),
    Probe("1.2", "adapt_frac15", "-", "hold", LC, adapt_refused("frac15", "whole numbers")),
    Probe("1.2", "adapt_val3", "-", "hold", LC, adapt_refused("val3", "classes of the model")),
    Probe("1.2", "eval_val255", "-", "hold", PL, val255("evaluate")),
    Probe("1.2", "adapt_val255", "-", "hold", PL, val255("adapt")),
    Probe("1.2", "eval_neg", "-", "hold", EV, eval_refused("neg", "[-2, -1]", "classes of the model")),
    Probe("1.2", "adapt_neg", "-", "hold", LC, adapt_refused("neg", "[-2, -1]", "classes of the model")),
    Probe("1.2", "eval_shape36", "-", "hold", EV, eval_refused("shape36", "shape")),
    Probe("1.2", "adapt_shape36", "-", "hold", LC, adapt_refused("shape36", "shape")),
    Probe("1.2", "eval_aff5mm", "-", "hold", EV, eval_refused("aff5mm", "geometry")),
    Probe("1.2", "adapt_aff5mm", "-", "hold", LC, adapt_refused("aff5mm", "geometry")),
    Probe("1.2", "eval_aff05mm", "-", "hold", EV, eval_refused("aff05mm", "geometry")),
    Probe("1.2", "adapt_aff05mm", "-", "hold", LC, adapt_refused("aff05mm", "geometry")),
    Probe("1.2", "adapt_no_image", "-", "hold", T + "test_cli_adapt.py", no_image("adapt")),
    Probe("1.2", "evaluate_no_image", "-", "hold", EV, no_image("evaluate")),
    Probe("1.2", "adapt_zero2_allow_guard", "-", "hold", T + "test_finetune_guard.py", adapt_zero2_allow_guard),
    Probe("1.2", "evaluate_absent_class", "-", "hold", T + "test_evaluate.py", evaluate_absent_class),
]

OW = T + "test_outputs_checked_first.py"
UNWRITABLE_ROWS = [
    Probe(
        "1.6",
        "adapt_store_ro",
        "-",
        "hold",
        OW,
        ro(ADAPT_RO + ["--store", "p8/ro/store"] + TAIL, "p8/ro", "not writable"),
    ),
    Probe(
        "1.6",
        "adapt_store_existing_ro",
        "-",
        "hold",
        OW,
        ro(ADAPT_RO + ["--store", "p8/rw/store", "--name", "base"] + TAIL, "p8/ro", "not writable", store=True),
    ),
    Probe(
        "1.6",
        "activate_store_ro",
        "-",
        "hold",
        T + "test_cli_models.py",
        ro(["models", "activate", "--store", "p8/rw/store", "base", "v2"], "p8/ro", "Permission denied", store=True),
    ),
    Probe(
        "1.6",
        "rank_out_new_in_ro",
        "-",
        "hold",
        OW,
        ro(RANK_RO + ["--out", "p8/ro/out", "--quiet"], "p8/ro", "Permission denied"),
    ),
    Probe(
        "1.6",
        "rank_out_existing_ro",
        "-",
        "hold",
        OW,
        ro(RANK_RO + ["--out", "p8/ro", "--quiet"], "p8/ro", "Permission denied"),
    ),
    Probe(
        "1.6",
        "overlay_out_ro",
        "-",
        "hold",
        OW,
        ro(
            ["overlay", "--image", "base/images/hippocampus_001.nii.gz", "--out", "p8/ro/ov"],
            "p8/ro",
            "Permission denied",
        ),
    ),
    Probe(
        "1.6",
        "evaluate_out_ro",
        "-",
        "hold",
        OW,
        ro(
            ["evaluate", "--images", "base/images", "--labels", "lab/real2", "--out", "p8/ro/ev", "--no-hd95"],
            "p8/ro",
            "Permission denied",
        ),
    ),
    Probe(
        "1.6",
        "adapt_workdir_ro",
        "-",
        "hold",
        T + "test_locks_and_events.py",
        ro(
            ADAPT_RO + ["--store", "p8/rw/newstore", "--work-dir", "p8/ro/wd"] + TAIL,
            "p8/rw/newstore",
            "work-dir",
            "Permission denied",
        ),
    ),
    Probe(
        "1.6",
        "sfr_workdir_ro",
        "-",
        "hold",
        T + "test_locks_and_events.py",
        ro(
            sfr_argv("p8/rw/newstore2", "--work-dir", "p8/ro/wd", *SFR_SHORT, "--quiet"),
            "p8/rw/newstore2",
            "work-dir",
            "Permission denied",
        ),
    ),
    Probe("1.6", "rank_out_full_30k", "-", "hold", OW, rank_out_full),
    Probe("1.6", "adapt_store_full", "-", "hold", OW, adapt_store_full),
    Probe("1.6", "adapt_workdir_full", "-", "hold", OW, adapt_workdir_full),
]

#: The test that covers each row where it is not the file named on the row above (looked up with grep).
COVERED_BY = {
    **{
        name: IO
        for name in (
            "rank_truncated overlay_truncated rank_text overlay_text rank_randgz overlay_randgz rank_empty "
            "overlay_empty rank_d2 overlay_d2 rank_d4 overlay_d4 rank_nan overlay_nan rank_inf overlay_inf "
            "rank_dtbinary overlay_dtbinary corrupt_sweep_image corrupt_sweep_label eval_float012 adapt_float012 "
            "eval_frac15 adapt_frac15 adapt_val3 eval_neg adapt_neg eval_shape36 adapt_shape36 eval_aff5mm "
            "adapt_aff5mm eval_aff05mm adapt_aff05mm adapt_no_image evaluate_no_image"
        ).split()
    },
    "adapt_zero2_allow_guard": T + "test_label_checks.py",
    "evaluate_absent_class": EV,
    **{
        name: T + "test_output_write_failures.py"
        for name in (
            "rank_out_new_in_ro rank_out_existing_ro overlay_out_ro evaluate_out_ro rank_out_full_30k "
            "adapt_store_full adapt_workdir_full"
        ).split()
    },
    "adapt_store_ro": T + "test_store.py",
    "adapt_store_existing_ro": T + "test_store.py",
    "activate_store_ro": T + "test_store.py",
}
PROBES: List[Probe] = _bad_file_rows() + LABEL_ROWS + UNWRITABLE_ROWS
for _probe in PROBES:
    _probe.test = COVERED_BY.get(_probe.name, _probe.test)
assert len(PROBES) == 39 + 19 + 12, len(PROBES)
