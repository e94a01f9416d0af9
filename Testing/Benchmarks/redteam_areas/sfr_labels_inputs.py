"""The catalogue's rows of 2.2 (``assft sfr`` and worker jobs of kind ``sfr``), 2.4 (label checks), 2.5 (input formats
and hostile headers) and 3 (foreign data) that ``redteam_rerun.PROBES`` does not re-run.

Each probe is rebuilt from its row of ``../shared/research/redteam.md`` (the red team's scripts are gone): the SFR
jobs are ``sfr`` jobs on 001/004 labelled and 007 unlabelled with the embedded tiny SAM prior, two SAM and two
re-training steps, the guard off and one setting changed; the CLI rows are ``assft sfr`` with a hostile prior folder
or option. Refusals must come before any training; the one full SFR run (``job_sfr_ok``) is two steps of each stage.
:func:`prepare` builds the inputs the rows name and :class:`~Testing.Benchmarks.redteam_rerun.World` does not.

Rows held in the catalogue but judged stricter here (the issue's "clear error, nothing silent"):
``job_adapt_with_sam_prior`` also runs an adapt job with a valid SAM prior and no ``sfr`` block, which the worker
ran as a plain adapt job without a word (now refused by ``JobSpec``); ``cli_prior_card_list``,
``cli_prior_sam_config_str``, ``cli_prior_classes_2`` and ``job_sfr_sam_prior_is_3d_card`` require the message to say
what is wrong with the card and to name it (before: "list indices must be integers", "unknown SamConfig fields
['b', 'g', 'i']", a weights error naming no file, "No such file ... sam-card.json" for a 3D model card's folder).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, List, Tuple

from Testing.Benchmarks.redteam_rerun import (
    CASES,
    FIXTURES,
    HIPPO,
    REPO,
    SFR_SHORT,
    TINY_SAM,
    Probe,
    World,
    _events,
    _fixture_pool,
    _itk_geometry,
    _line_with,
    _rows,
    accepted,
    adapt,
    label_refused,
    p_geometry,
    refused,
    sfr_argv,
    steps,
    worker_refused,
)

T = "Testing/Python/"
Verdict = Tuple[bool, str]


# -- inputs --------------------------------------------------------------------------------------------------------
def prepare(world: World) -> None:
    """Build this module's inputs under ``world.root``: labels (2.4, 2.2), SAM priors (2.2), re-written and
    hostile-header images (2.5), foreign pairs (3)."""
    _labels(world)
    _priors(world)
    _inputs(world)
    _foreign(world)


def _labels(w: World) -> None:
    import nibabel as nib
    import numpy as np

    def save(name: str, arr, case: str = "hippocampus_001") -> None:
        like = nib.load(str(w.p("base", "labels", f"{case}.nii.gz")))
        folder = w.p("lab", name)
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(arr.astype(np.uint8), like.affine, like.header), str(folder / f"{case}.nii.gz"))

    lab = np.asarray(nib.load(str(w.p("base", "labels", "hippocampus_001.nii.gz"))).dataobj).astype(np.uint8)
    save("shiftjk10", np.roll(lab, (0, 10, 10), axis=(0, 1, 2)))
    one = np.zeros_like(lab)
    for value in (1, 2):
        where = np.argwhere(lab == value)
        one[tuple(where[len(where) // 2])] = value
    save("one_voxel_each", one)
    save("binary01", (lab > 0).astype(np.uint8))
    for case in CASES[:2]:
        save("zero2", _zeros_like_case(w, case), case=case)
    imgs4 = w.p("p2d", "imgs4")
    imgs4.mkdir(parents=True)
    for case in CASES + ("hippocampus_011",):
        shutil.copy(HIPPO / "imagesTr" / f"{case}.nii.gz", imgs4)


def _zeros_like_case(w: World, case: str):
    import nibabel as nib
    import numpy as np

    return np.zeros(nib.load(str(w.p("base", "labels", f"{case}.nii.gz"))).shape, np.uint8)


def _priors(w: World) -> None:
    """The hostile SAM prior folders of rows 30-39 (``priors/<name>``, next to ``World._priors``' ones)."""
    import torch
    from safetensors.torch import load_file

    sam = json.loads((TINY_SAM / "sam-card.json").read_text())
    sam.pop("provenance", None)

    def folder(name: str, card=None, weights: bool = True) -> Path:
        path = w.p("priors", name)
        path.mkdir(parents=True)
        if weights:
            shutil.copy(TINY_SAM / "weights.safetensors", path)
        if card is not None:
            (path / "sam-card.json").write_text(card if isinstance(card, str) else json.dumps(card))
        return path

    folder(
        "classes_2",
        dict(sam, class_names=["background", "hippocampus"], sam_config=dict(sam["sam_config"], num_mask_tokens=2)),
    )
    folder("weights_outside", dict(sam, weights="../../base/images/hippocampus_001.nii.gz"))
    pickle = folder("weights_pickle", dict(sam, weights="w.safetensors"), weights=False)
    torch.save(load_file(str(TINY_SAM / "weights.safetensors")), str(pickle / "w.safetensors"))
    folder("weights_missing", sam, weights=False)
    folder("card_not_json", "{bad json")
    folder("card_list", json.dumps([sam]))
    folder("sam_config_str", dict(sam, sam_config="big"))
    link = folder("weights_symlink_out", sam, weights=False)
    outside = w.p("p2b_outside")
    outside.mkdir()
    shutil.copy(TINY_SAM / "weights.safetensors", outside)
    os.symlink(outside / "weights.safetensors", link / "weights.safetensors")
    small = {"retrain": {"batch_size": 1, "patch_size": [32, 32, 32]}}
    w.p("p2b", "nanpoly.json").write_text(json.dumps(dict(small, sam={"poly_power": float("nan")})))


def _inputs(w: World) -> None:
    """hippocampus_001 re-written by SimpleITK as NRRD / MetaImage, a qform-sform disagreement, 256 GB headers."""
    import gzip

    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    src = w.p("base", "images", "hippocampus_001.nii.gz")
    folder = w.p("p2e")
    folder.mkdir(exist_ok=True)
    image = sitk.ReadImage(str(src))
    for name in ("fmt_nrrd.nrrd", "fmt_mha.mha", "fmt_mhd.mhd", "fmt_nhdr.nhdr"):
        sitk.WriteImage(image, str(folder / name))
    nii = nib.load(str(src))
    moved = nii.affine.copy()
    moved[0, 3] += 20.0  # the sform 20 mm to the side of the qform
    qs = nib.Nifti1Image(np.asarray(nii.dataobj, np.float32), None)
    qs.set_qform(nii.affine, code=1)
    qs.set_sform(moved, code=2)
    nib.save(qs, str(w.p("bad", "qs_disagree.nii.gz")))
    big = nib.Nifti1Header()
    big.set_data_shape((4096, 4096, 4096))  # float32: 256 GiB
    big.set_data_dtype(np.float32)
    big.set_qform(np.eye(4), code=1)
    big["vox_offset"] = 352
    block = big.binaryblock + b"\0" * 4 + b"\1" * 1024
    (folder / "hugedims_256GB.nii").write_bytes(block)
    (folder / "hugedims_256GB.nii.gz").write_bytes(gzip.compress(block))


def _foreign(w: World) -> None:
    """fr/imgs1 + fr/labs1: three foreign volumes with their own masks as 0/1; fr/tsfull: the CT with its whole
    41-class TotalSegmentator segmentation."""
    import SimpleITK as sitk

    imgs, labs = w.p("fr", "imgs1"), w.p("fr", "labs1")
    imgs.mkdir(parents=True)
    labs.mkdir(parents=True)
    pairs = [
        (FIXTURES / "monai-anatomical" / "anatomical.nii", FIXTURES / "monai-anatomical" / "anatomical_label.nii.gz"),
        (FIXTURES / "pyradiomics" / "brain1_image.nrrd", FIXTURES / "pyradiomics" / "brain1_label.nrrd"),
        (FIXTURES / "pyradiomics" / "breast1_image.nrrd", FIXTURES / "pyradiomics" / "breast1_label.nrrd"),
    ]
    for image, label in pairs:
        shutil.copy(image, imgs)
        mask = sitk.ReadImage(str(label)) > 0
        sitk.WriteImage(sitk.Cast(mask, sitk.sitkUInt8), str(labs / image.name))
    for sub, source in (("images", "example_ct_sm.nii.gz"), ("labels", "example_seg.nii.gz")):
        w.p("fr", "tsfull", sub).mkdir(parents=True)
        shutil.copy(FIXTURES / "totalsegmentator-ct" / source, w.p("fr", "tsfull", sub, "example_ct_sm.nii.gz"))


# -- 2.2 worker jobs -----------------------------------------------------------------------------------------------
def _sfr_settings() -> dict:
    return {
        "sam": {"iterations": 2},
        "retrain": {"iterations": 2, "batch_size": 1, "patch_size": [32, 32, 32]},
        "validation": {"guard": False},
        "checkpoint_every": 1,
    }


def _job(w: World, name: str, change: Callable[[dict], None]) -> Path:
    """``sli/<name>/job.json``: an ``sfr`` job (001 and 004 labelled, 007 unlabelled, tiny prior), then ``change``."""
    data = {
        "kind": "sfr",
        "images": w.images(),
        "labels": {c: str(w.p("base", "labels", f"{c}.nii.gz")) for c in CASES[:2]},
        "store": str(w.p("sli", "st_" + name)),
        "sfr": _sfr_settings(),
        "sam_prior": str(TINY_SAM),
    }
    change(data)
    folder = w.p("sli", name)
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(data))
    return folder


def _nothing_stored(w: World, store: Path) -> str:
    versions = sorted(str(p.relative_to(w.root)) for p in store.glob("*/v*")) if store.exists() else []
    return f"; stored {versions}" if versions else ""


def job(name: str, change: Callable[[dict], None], *words: str, timeout: float = 120):
    """A worker refusal: exit 1, an ``error`` event naming ``words``, no ``unexpected`` event, nothing stored."""

    def probe(w: World) -> Verdict:
        folder = _job(w, name, change)
        run = w.worker(folder, timeout=timeout)
        if run.rc is None or run.rc == -9:
            return False, f"still running after {timeout:.0f} s (stopped)"
        ok, text = worker_refused(run, folder, *words)
        stored = _nothing_stored(w, w.p("sli", "st_" + name))
        return ok and not stored, text + stored

    return probe


def sam(**changes) -> Callable[[dict], None]:
    return lambda data: data["sfr"]["sam"].update(changes)


def sfr(**changes) -> Callable[[dict], None]:
    return lambda data: data["sfr"].update(changes)


def key(**changes) -> Callable[[dict], None]:
    return lambda data: data.update(changes)


def p_adapt_with_sam_prior(w: World) -> Verdict:
    """``adapt`` jobs carrying SFR inputs: the row's job (a SAM prior and an ``sfr`` block with a bogus method), and
    the same with only a valid SAM prior, which an adapt job would otherwise run without: both refused."""
    verdicts = []
    for name, sfr_block in (("adapt_with_sam_prior", {"method": "bogus"}), ("adapt_with_sam_prior_only", {})):
        verdicts.append(job(name, lambda d, b=sfr_block: d.update(kind="adapt", sfr=b), "sfr")(w))
    return all(ok for ok, _ in verdicts), "; ".join(
        f"{n}: {t}" for n, (_, t) in zip(("bogus method", "prior only"), verdicts)
    )


def p_job_ok(w: World) -> Verdict:
    """The whole SFR job, two SAM and two re-training steps, guard off: exit 0, v1 stored and active, a ranking,
    nothing written under ``$HOME`` (an empty folder of its own)."""
    folder = _job(w, "sfr_ok", lambda data: None)
    home = w.p("home_sfr_ok")
    home.mkdir()
    run = w.cmd([str(folder)], timeout=600, module="ASSFTActive.worker", env=dict(w.env, HOME=str(home)))
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    events = _events(folder)
    unexpected = [e for e in events if "unexpected" in str(e.get("message", ""))]
    result_path = folder / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    store = w.p("sli", "st_sfr_ok")
    versions = sorted(p.name for p in store.glob("*/v*"))
    ok = (
        run.rc == 0
        and not run.traceback
        and not unexpected
        and result.get("status") == "done"
        and versions == ["v1"]
        and bool(result.get("activated"))
        and bool(result.get("ranking"))
        and not written
    )
    return ok, (
        f"exit {run.rc} in {run.seconds:.0f} s: result {result.get('status', 'missing')}, versions {versions}, "
        f"activated {result.get('activated')}, ranking {'written' if result.get('ranking') else 'missing'}"
        + (f"; unexpected: {unexpected[-1].get('message', '')[:100]}" if unexpected else "")
        + (f"; wrote under $HOME: {written[:3]}" if written else "; nothing under $HOME")
    )


# -- 2.2 command line ----------------------------------------------------------------------------------------------
def cli(store: str, *args: str, words: Tuple[str, ...] = (), timeout: float = 150):
    """``assft sfr --images base/images --labels lab/real2 --store p2b/<store> ARGS``: refused, nothing stored."""

    def probe(w: World) -> Verdict:
        run = w.cmd(sfr_argv(f"p2b/{store}", *args), timeout=timeout)
        ok, text = refused(run, *words)
        stored = _nothing_stored(w, w.p("p2b", store))
        return ok and not stored, text + stored

    return probe


def prior(name: str, *words: str, config: str = "p2b/small.json"):
    common = [*SFR_SHORT, "--config", config, "--quiet"]
    return cli(f"st_{name}", "--sam", f"priors/{name}", *common, words=words)


# -- 2.4 labels ----------------------------------------------------------------------------------------------------
def p_one_voxel_each(w: World) -> Verdict:
    """Two foreground voxels: refused, or accepted with the warning that the label has far less foreground."""
    run = adapt(w, "lab/one_voxel_each", "p3/st_one_voxel_each")
    if run.rc == 0 and not run.traceback:
        warning = _line_with(run.text, "less foreground")
        return bool(warning), f"exit 0 in {run.seconds:.0f} s: " + (warning or "accepted without a warning")
    return refused(run)


def p_swapped3_guard(w: World) -> Verdict:
    """Three swapped labels with an unlabelled volume in the pool, guard on: refused, or stored but not active."""
    store = w.p("p2d", "st_sw1")
    run = adapt(
        w,
        "lab/swapped3",
        "p2d/st_sw1",
        [
            "--learning-rate",
            "0.001",
            *steps(10),
            "--pseudo",
            "none",
            "--quiet",
        ],
        images="p2d/imgs4",
    )
    if run.rc == 2:
        return refused(run)
    active = [p for p in store.glob("*/active*")] if store.exists() else []
    ok = run.rc == 0 and not run.traceback and "not activated" in run.text.lower()
    return ok, f"exit {run.rc} in {run.seconds:.0f} s: {run.last_error()} (active markers: {len(active)})"


# -- 2.5 inputs ----------------------------------------------------------------------------------------------------
def _entropy(folder: Path, stem: str):
    import SimpleITK as sitk

    path = next(p for p in folder.iterdir() if p.name.startswith(stem) and "entropy" in p.name)
    return path, sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def p_format(name: str):
    """An overlay of hippocampus_001 re-written as ``name``: exit 0, the entropy map equal to the NIfTI's voxel by
    voxel, and lying on the image when ITK reads both back."""

    def probe(w: World) -> Verdict:
        import numpy as np

        reference = w.p("p2e", "ov_reference")
        if not reference.exists():
            first = w.cmd(["overlay", "--image", "base/images/hippocampus_001.nii.gz", "--out", "p2e/ov_reference"])
            if first.rc != 0:
                return False, f"reference overlay failed: exit {first.rc}: {first.last_error()}"
        run = w.cmd(["overlay", "--image", f"p2e/{name}", "--out", f"p2e/ov_{name}"])
        if run.rc != 0 or run.traceback:
            return False, f"exit {run.rc}: {run.last_error()}"
        stem = name.split(".")[0]
        path, entropy = _entropy(w.p("p2e", f"ov_{name}"), stem)
        _, expected = _entropy(reference, "hippocampus_001")
        if entropy.shape != expected.shape:
            return False, f"exit 0; entropy map shape {entropy.shape} against the NIfTI's {expected.shape}"
        diff = float(np.abs(entropy.astype(np.float64) - expected).max())
        gap = float(np.abs(_itk_geometry(w.p("p2e", name)) - _itk_geometry(path)).max())
        return diff < 1e-4 and gap < 0.01, (
            f"exit 0 in {run.seconds:.0f} s; entropy map differs from the NIfTI's by at most {diff:.2g}; "
            f"read by ITK it lies {gap:.3g} mm from the image"
        )

    return probe


def p_hugedims256(name: str):
    def probe(w: World) -> Verdict:
        run = w.cmd(
            ["overlay", "--image", f"p2e/{name}", "--out", f"p2e/ov_{name.replace('.', '_')}"],
            prefix=["prlimit", "--as=6000000000"],
        )
        ok, text = refused(run)
        return ok and run.peak_mb < 1200, text + f"; peak RSS {run.peak_mb:.0f} MB"

    return probe


# -- 3 foreign -----------------------------------------------------------------------------------------------------
def p_rank_fixture_pool(w: World) -> Verdict:
    """The five foreign volumes ranked: exit 0, every volume a row of the ranking."""
    _fixture_pool(w)
    run = w.cmd(["rank", "--images", "fr/pool", "--budget", "2", "--out", "fr/out_pool", "--quiet"], timeout=300)
    ok, text = accepted(run)
    ranking = w.p("fr", "out_pool", "ranking.json")
    rows = len(_rows(json.loads(ranking.read_text()))) if ok and ranking.exists() else 0
    return ok and rows == 5, text + f"; {rows} volumes in ranking.json"


def _zero_label(w: World) -> Verdict:
    store = w.p("p2b", "st_zero")
    run = w.cmd(
        [
            "sfr",
            "--images",
            "base/images",
            "--labels",
            "lab/zero2",
            "--store",
            "p2b/st_zero",
            *CFG[:-1],
            "--config",
            "p2b/small.json",
            "--quiet",
        ]
    )
    ok, text = refused(run, "only background")
    stored = _nothing_stored(w, store)
    return ok and not stored, text + stored


def p_evaluate_ts_41(w: World) -> Verdict:
    run = w.cmd(
        [
            "evaluate",
            "--images",
            "fr/tsfull/images",
            "--labels",
            "fr/tsfull/labels",
            "--out",
            "fr/ev_ts",
            "--no-hd95",
        ]
    )
    return refused(run, "label values")


J = T + "test_job_settings_blocks.py"
PC = T + "test_sfr_prior_cards.py"
SC = T + "test_sfr_config.py"
CFG = (*SFR_SHORT, "--quiet")
HIPPO_CARD = str(REPO / "ASSFTActive" / "resources" / "models" / "hippocampus-unet")

PROBES: List[Probe] = [
    # 2.2 worker jobs of kind sfr (rows 1-25, 48)
    Probe("2.2", "job_sfr_method_upper", "-", "hold", J, job("sfr_method_upper", sfr(method="SFR"), "method")),
    Probe("2.2", "job_sfr_method_list", "-", "hold", J, job("sfr_method_list", sfr(method=["sfr"]), "method")),
    Probe("2.2", "job_sfr_sam_iter_str", "-", "hold", J, job("sfr_sam_iter_str", sam(iterations="ten"), "iterations")),
    Probe("2.2", "job_sfr_sam_betas_str", "-", "hold", J, job("sfr_sam_betas_str", sam(betas=["a", 0.999]), "betas")),
    Probe("2.2", "job_sfr_sam_unknown_key", "-", "hold", J, job("sfr_sam_unknown_key", sam(bogus=1), "bogus")),
    Probe(
        "2.2",
        "job_sfr_retrain_iter_neg",
        "-",
        "hold",
        J,
        job("sfr_retrain_iter_neg", lambda d: d["sfr"]["retrain"].update(iterations=-1), "iterations"),
    ),
    Probe(
        "2.2",
        "job_sfr_plus_kappa_zero",
        "-",
        "hold",
        J,
        job("sfr_plus_kappa_zero", sfr(method="sfr_plus", plus={"kappa": 0}), "kappa"),
    ),
    Probe(
        "2.2",
        "job_sfr_voxel_thr_str",
        "-",
        "hold",
        J,
        job("sfr_voxel_thr_str", sfr(method="sfr_plus", plus={"voxel_threshold": "high"}), "voxel_threshold"),
    ),
    Probe(
        "2.2",
        "job_sfr_checkpoint_every_zero",
        "-",
        "hold",
        J,
        job("sfr_checkpoint_every_zero", sfr(checkpoint_every=0), "checkpoint_every"),
    ),
    Probe("2.2", "job_sfr_sfr_is_list", "-", "hold", J, job("sfr_sfr_is_list", key(sfr=[]), "sfr")),
    Probe(
        "2.2",
        "job_sfr_sam_prior_missing",
        "-",
        "hold",
        T + "test_sfr_job.py",
        job("sfr_sam_prior_missing", key(sam_prior="no_such_prior"), "sam-card.json"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_prior_file",
        "-",
        "hold",
        T + "test_sfr_job.py",
        job("sfr_sam_prior_file", lambda d: d.update(sam_prior=d["images"][CASES[0]]), "sam-card.json"),
    ),
    Probe(
        "2.2",
        "job_sfr_sam_prior_is_3d_card",
        "-",
        "hold",
        T + "test_sfr_job.py",
        job("sfr_sam_prior_is_3d_card", key(sam_prior=HIPPO_CARD), "3D model card"),
    ),
    Probe("2.2", "job_sfr_sam_prior_int", "-", "hold", J, job("sfr_sam_prior_int", key(sam_prior=5), "sam_prior")),
    Probe("2.2", "job_sfr_sam_canvas_str", "-", "hold", J, job("sfr_sam_canvas_str", sam(canvas="big"), "canvas")),
    Probe("2.2", "job_sfr_ok", "-", "hold", T + "test_sfr_job.py", p_job_ok),
    Probe(
        "2.2",
        "job_sfr_sam_lr_inf",
        "-",
        "hold",
        SC,
        job("sfr_sam_lr_inf", sam(learning_rate=float("inf")), "learning_rate"),
    ),
    Probe("2.2", "job_sfr_sam_canvas_huge", "-", "hold", SC, job("sfr_sam_canvas_huge", sam(canvas=100000), "canvas")),
    # 2.2 assft sfr with a hostile prior folder (rows 30, 32, 34-39)
    Probe(
        "2.2",
        "cli_prior_classes_2",
        "-",
        "hold",
        T + "test_sfr_prior_class_names.py",
        prior("classes_2", "priors/classes_2/sam-card.json", "do not fit"),
    ),
    Probe("2.2", "cli_prior_weights_outside", "-", "hold", PC, prior("weights_outside", "outside")),
    Probe("2.2", "cli_prior_weights_pickle", "-", "hold", PC, prior("weights_pickle", "weights")),
    Probe("2.2", "cli_prior_weights_missing", "-", "hold", PC, prior("weights_missing", "weights")),
    Probe("2.2", "cli_prior_card_not_json", "-", "hold", PC, prior("card_not_json", "sam-card.json")),
    Probe("2.2", "cli_prior_card_list", "-", "hold", PC, prior("card_list", "sam-card.json", "JSON object")),
    Probe(
        "2.2", "cli_prior_sam_config_str", "-", "hold", PC, prior("sam_config_str", "sam_config must be a JSON object")
    ),
    Probe("2.2", "cli_prior_weights_symlink_out", "-", "hold", PC, prior("weights_symlink_out", "outside")),
    # 2.2 assft sfr options (rows 40-43, 45-47)
    Probe(
        "2.2",
        "cli_sam_missing",
        "-",
        "hold",
        PC,
        cli("st_x", "--sam", "p2b/nonexistent", *CFG, words=("sam-card.json",)),
    ),
    Probe(
        "2.2",
        "cli_sam_iterations_neg",
        "-",
        "hold",
        SC,
        cli("st_x", "--sam-iterations", "-5", "--iterations", "2", "--no-guard", "--quiet", words=("iterations",)),
    ),
    Probe(
        "2.2",
        "cli_iterations_zero",
        "-",
        "hold",
        SC,
        cli("st_x", "--sam-iterations", "2", "--iterations", "0", "--no-guard", "--quiet", words=("iterations",)),
    ),
    Probe(
        "2.2",
        "cli_sam_iterations_str",
        "-",
        "hold",
        SC,
        cli("st_x", "--sam-iterations", "ten", "--quiet", words=("--sam-iterations",)),
    ),
    Probe(
        "2.2",
        "cli_zero_label",
        "-",
        "hold",
        T + "test_label_checks.py",
        lambda w: _zero_label(w),
    ),
    Probe(
        "2.2", "cli_method_bad", "-", "hold", SC, cli("st_x", "--method", "sfr_minus", "--quiet", words=("--method",))
    ),
    Probe(
        "2.2",
        "cli_config_sam_poly_nan",
        "-",
        "hold",
        SC,
        cli(
            "st_poly",
            "--sam-iterations",
            "3",
            "--iterations",
            "2",
            "--no-guard",
            "--config",
            "p2b/nanpoly.json",
            "--quiet",
            words=("poly_power",),
        ),
    ),
    Probe(
        "2.2",
        "job_adapt_with_sam_prior",
        "-",
        "hold",
        T + "test_sfr_job.py",
        p_adapt_with_sam_prior,
    ),
    # 2.4 label checks (rows 8, 10, 14, 16)
    Probe("2.4", "adapt_shiftjk10", "-", "hold", T + "test_label_meaning.py", lambda w: label_refused(w, "shiftjk10")),
    Probe("2.4", "adapt_one_voxel_each", "-", "hold", T + "test_label_checks.py", p_one_voxel_each),
    Probe(
        "2.4",
        "adapt_binary01",
        "-",
        "hold",
        T + "test_label_checks.py",
        lambda w: label_refused(w, "binary01", "posterior"),
    ),
    Probe("2.4", "adapt_swapped3_guard", "-", "hold", T + "test_guard_label_meaning.py", p_swapped3_guard),
    # 2.5 input formats and hostile headers (rows 1-4, 6, 8, 9)
    Probe("2.5", "overlay_fmt_nrrd", "-", "hold", T + "test_io.py", p_format("fmt_nrrd.nrrd")),
    Probe("2.5", "overlay_fmt_mha", "-", "hold", T + "test_io.py", p_format("fmt_mha.mha")),
    Probe("2.5", "overlay_fmt_mhd", "-", "hold", T + "test_io.py", p_format("fmt_mhd.mhd")),
    Probe("2.5", "overlay_fmt_nhdr", "-", "hold", T + "test_io.py", p_format("fmt_nhdr.nhdr")),
    Probe(
        "2.5", "overlay_qs_disagree", "-", "hold", T + "test_io_geometry_memory.py", p_geometry("qs_disagree.nii.gz")
    ),
    Probe(
        "2.5",
        "overlay_hugedims_256GB_nii_gz",
        "-",
        "hold",
        T + "test_io_geometry_memory.py",
        p_hugedims256("hugedims_256GB.nii.gz"),
    ),
    Probe(
        "2.5",
        "overlay_hugedims_256GB_nii",
        "-",
        "hold",
        T + "test_io_geometry_memory.py",
        p_hugedims256("hugedims_256GB.nii"),
    ),
    # 3 foreign data (rows 1, 3, 4)
    Probe(
        "3",
        "adapt_binary_other_structures",
        "-",
        "hold",
        T + "test_label_checks.py",
        lambda w: refused(adapt(w, "fr/labs1", "fr/st1", images="fr/imgs1"), "posterior"),
    ),
    Probe("3", "rank_fixture_pool", "-", "hold", T + "test_query_ood.py", p_rank_fixture_pool),
    Probe("3", "evaluate_ts_41class", "-", "hold", T + "test_cli_evaluate.py", p_evaluate_ts_41),
]

_WRONG_SHAPE = (
    "test_sfr_prior_cards.py::test_a_prior_card_of_the_wrong_shape_is_refused_naming_the_card_and_what_is_wrong"
)
_UNREADABLE = "test_sfr_prior_cards.py::test_a_prior_folder_that_cannot_be_read_safely_is_refused_naming_the_file"
#: The test of each probe that names one (``file::test``); the fixes of this module's findings first.
TESTS = {
    "job_adapt_with_sam_prior": "test_sfr_job.py::test_a_rank_or_adapt_job_given_a_sam_prior_or_sfr_settings_is_"
    "refused_not_run_without_them",
    "cli_prior_card_list": _WRONG_SHAPE,
    "cli_prior_sam_config_str": _WRONG_SHAPE,
    "cli_prior_classes_2": _WRONG_SHAPE,
    "job_sfr_sam_prior_is_3d_card": "test_sfr_prior_cards.py::test_a_3d_model_card_folder_given_as_the_sam_prior_is_"
    "named_as_such",
    "cli_prior_card_not_json": _UNREADABLE,
    "cli_prior_weights_missing": _UNREADABLE,
    "cli_prior_weights_pickle": _UNREADABLE,
    "cli_prior_weights_symlink_out": _UNREADABLE,
    "cli_sam_missing": _UNREADABLE,
    "job_sfr_sam_prior_missing": _UNREADABLE,
    "job_sfr_sam_prior_file": _UNREADABLE,
    "cli_prior_weights_outside": "test_sfr_finetune.py::test_a_saved_prior_loads_strictly_and_says_it_is_not_meta_sam",
}
for _probe in PROBES:
    if _probe.name in TESTS:
        _probe.test = T + TESTS[_probe.name]
