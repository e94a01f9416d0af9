"""Catalogue areas 1.3 (model cards), 1.7 (activation and tampering) and 1.8 (foreign-smoke rough edges): the rows
that ``redteam_rerun.PROBES`` does not re-run.

Inputs, rebuilt from the rows (the red team's ``make_cards.py`` and ``probe9.sh`` are gone):

* ``cs_cards/<case>/card.json``: the embedded default card with the row's change, beside a copy of its weights (or
  the row's weights file: pickles that would create ``cs_pwned/<case>`` if unpickled, a checkpoint without its
  encoder tensors). Each is run as the row's command, ``prlimit --as=6000000000 assft overlay --image
  base/images/hippocampus_001.nii.gz --model cs_cards/<case>/card.json``, with a ``$HOME`` of its own that must stay
  empty.
* ``cs9/<variant>/base``: one store made by a tiny ``assft adapt --name base --no-guard`` (v1, active) plus a copy
  of v1 as v2, built on first use and copied per variant: v2 with one weights byte flipped, v2 without its manifest,
  v2's card pointing at ``../v1/`` with a recomputed manifest, v1's weights partly set to 30.0 (the manifest left as
  it was), and the same without v1's manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from Testing.Benchmarks.redteam_rerun import FAST_ADAPT, REPO, Probe, Run, World, _line_with, accepted, refused
from Testing.Benchmarks.redteam_rerun import worker_refused as _worker_refused

DEFAULT = REPO / "ASSFTActive" / "resources" / "models" / "hippocampus-unet"
IMAGE = "base/images/hippocampus_001.nii.gz"
T = "Testing/Python/"
ABSENT = object()


# -- inputs ----------------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling it calls ``open(marker, "w")``: the file appears only if a loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _changed(data: dict, changes: dict) -> dict:
    """``data`` with ``changes`` applied in place: a value set, or its key removed where the value is ``ABSENT``."""
    for key, value in changes.items():
        if value is ABSENT:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def _card_data(**changes) -> dict:
    data = json.loads((DEFAULT / "card.json").read_text())
    data.pop("provenance", None)
    return _changed(data, changes)


def _arguments(**changes) -> dict:
    return _changed(dict(_card_data()["arguments"]), changes)


#: case -> changes of the embedded default card (``ABSENT`` removes a field)
CARD_CHANGES = {
    "weights_missing": {"weights": "nope.safetensors"},
    "wrong_channels": {"arguments": _arguments(channels=[32, 64, 128, 256])},
    "encoder_missing": {},
    "pickle_pt": {"weights": "evil.pt"},
    "pickle_legacy": {"weights": "evil.pth"},
    "pickle_plain": {"weights": "evil.pkl"},
    "pickle_extra": {"weights": "evil2.pt"},
    "pickle_as_safetensors": {"weights": "evil.safetensors"},
    "arch_Something": {"architecture": "monai:Something"},
    "arch_import": {"architecture": "monai:__import__"},
    "arch_ossystem": {"architecture": "monai:os.system"},
    "arch_unet_init": {"architecture": "monai:networks.nets.UNet.__init__"},
    "arch_dotdot": {"architecture": ".."},
    "arch_monai_dotdot": {"architecture": "monai:.."},
    "arch_builtins": {"architecture": "monai:__builtins__"},
    "arch_lower_unet": {"architecture": "monai:unet"},
    "arch_class": {"architecture": "monai:__class__"},
    "arch_class_fit": {"architecture": "monai:__class__", "arguments": {"name": "pwned"}},
    "arch_drop_connect": {"architecture": "monai:drop_connect"},
    "arch_BlockArgs": {"architecture": "monai:BlockArgs"},
    "arch_medicalnet": {"architecture": "monai:get_pretrained_resnet_medicalnet"},
    "arch_medicalnet_fit": {
        "architecture": "monai:get_pretrained_resnet_medicalnet",
        "arguments": {"resnet_depth": 10, "device": "cpu", "datasets23": True},
    },
    "arch_resnet10_pretrained": {
        "architecture": "monai:resnet10",
        "arguments": {"spatial_dims": 3, "n_input_channels": 1, "num_classes": 3, "pretrained": True},
    },
    "strides_short": {"arguments": _arguments(strides=[2, 2])},
    "weights_etc_passwd_rel": {"weights": "../../etc/passwd"},
    "weights_etc_passwd_deep": {"weights": "../../../../../../../../etc/passwd"},
    "weights_etc_shadow_abs": {"weights": "/etc/shadow"},
    "weights_other_model_abs": {"weights": str(DEFAULT / "weights.safetensors")},
    "pretrained_etc_passwd": {"pretrained": "/etc/passwd"},
    "invalid_json": None,  # the text is written as is (below)
    "json_array": None,
    "missing_keys": {"encoder_stages": ABSENT, "patch_size": ABSENT},
    "type_arguments_list": {"arguments": [1, 2]},
    "type_class_names_5": {"class_names": 5},
    "type_encoder_null": {"encoder_stages": None},
    "type_patch_strings": {"patch_size": ["a", "b", "c"]},
    "type_preproc_string": {"preprocessing": "zscore"},
    "patch_100000": {"patch_size": [100000, 100000, 100000]},
    "spacing_zero": {"spacing": [0.0, 0.0, 0.0]},
    "spacing_negative": {"spacing": [-1.0, 1.0, 1.0]},
    "spacing_string": {"spacing": "1mm"},
    "spacing_nan": {"spacing": [math.nan, 1, 1]},
    "ct_window_no_amin": {"preprocessing": {"profile": "ct_window", "a_max": 100}},
    "ct_window_equal": {"preprocessing": {"profile": "ct_window", "a_min": 5, "a_max": 5}},
    "class_names_5": {"class_names": ["background", "anterior", "posterior", "tail", "head"]},
    "class_names_5_no_outch": {
        "class_names": ["background", "anterior", "posterior", "tail", "head"],
        "arguments": _arguments(out_channels=ABSENT),
    },
    "stage_typo": {"encoder_stages": ["model.O"]},
    "outch_string": {"arguments": _arguments(out_channels="3")},
    "zero_channels": {"arguments": _arguments(channels=[0, 0, 0, 0])},
}
RAW_TEXT = {"invalid_json": "{'name': 'single quotes'}", "json_array": "[1, 2]"}


def _write_cards(w: World) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(DEFAULT / "weights.safetensors"))
    w.p("cs_pwned").mkdir()
    shared = w.p("cs_cards", "default.safetensors")  # one copy, hard-linked into each card's folder
    shared.parent.mkdir()
    shutil.copy(DEFAULT / "weights.safetensors", shared)
    for case, changes in CARD_CHANGES.items():
        folder = w.p("cs_cards", case)
        folder.mkdir()
        os.link(shared, folder / "weights.safetensors")
        if changes is None:
            (folder / "card.json").write_text(RAW_TEXT[case])
            continue
        (folder / "card.json").write_text(json.dumps(_card_data(**changes), indent=1))
    payload = {"model": _Payload(w.p("cs_pwned", "pickle"))}
    torch.save(dict(payload, marker=_Payload(w.p("cs_pwned", "pickle_pt"))), w.p("cs_cards", "pickle_pt", "evil.pt"))
    torch.save(
        {"model": _Payload(w.p("cs_pwned", "pickle_legacy"))},
        w.p("cs_cards", "pickle_legacy", "evil.pth"),
        _use_new_zipfile_serialization=False,
    )
    w.p("cs_cards", "pickle_plain", "evil.pkl").write_bytes(pickle.dumps(_Payload(w.p("cs_pwned", "pickle_plain"))))
    torch.save(
        dict(state, extra=_Payload(w.p("cs_pwned", "pickle_extra"))), w.p("cs_cards", "pickle_extra", "evil2.pt")
    )
    w.p("cs_cards", "pickle_as_safetensors", "evil.safetensors").write_bytes(
        pickle.dumps(_Payload(w.p("cs_pwned", "pickle_as_safetensors")))
    )
    encoder = _card_data()["encoder_stages"][0] + "."
    w.p("cs_cards", "encoder_missing", "weights.safetensors").unlink()  # a file of its own, not the shared copy
    save_file(
        {k: v for k, v in state.items() if not k.startswith(encoder)},
        str(w.p("cs_cards", "encoder_missing", "weights.safetensors")),
    )


def prepare(w: World) -> None:
    """The cards (a second); the store is built on first use (:func:`_store`), since it takes an Adapt."""
    _write_cards(w)


# -- the store -------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_manifest(version: Path) -> None:
    manifest = json.loads((version / "version.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"bytes": (version / name).stat().st_size, "sha256": _sha256(version / name)}
    (version / "version.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _tamper_weights(path: Path) -> None:
    """100 000 weights of the largest tensor set to 30.0, written as a valid safetensors file."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    key = max(tensors, key=lambda k: tensors[k].size)
    tensors[key] = tensors[key].copy()
    tensors[key].reshape(-1)[:100000] = 30.0
    save_file(tensors, str(path))


def _pristine(w: World) -> Path:
    """``cs9/pristine``: model ``base`` with v1 (active, from a tiny Adapt) and v2 (a copy of v1); built once."""
    root = w.p("cs9", "pristine")
    if (root / "base" / "v2" / "version.json").is_file():
        return root
    if getattr(w, "cards_store_error", None):
        raise RuntimeError(w.cards_store_error)
    run = w.cmd(
        ["adapt", "--images", "base/images", "--labels", "lab/real2", "--store", str(root)]
        + ["--name", "base", "--no-guard"]
        + FAST_ADAPT
    )
    active = root / "base" / "active.json"
    if run.rc != 0 or not active.is_file() or json.loads(active.read_text()).get("version") != "v1":
        w.cards_store_error = f"could not build the store: exit {run.rc}: {run.last_error()}"
        raise RuntimeError(w.cards_store_error)
    shutil.copytree(root / "base" / "v1", root / "base" / "v2")
    return root


def _store(w: World, variant: str) -> Path:
    """A copy of the pristine store under ``cs9/<variant>``, changed as ``variant`` says; its ``base`` folder."""
    folder = w.p("cs9", variant)
    if folder.exists():
        return folder / "base"
    shutil.copytree(_pristine(w), folder)
    base = folder / "base"
    if variant == "flipped_v2":
        weights = base / "v2" / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif variant == "no_manifest_v2":
        (base / "v2" / "version.json").unlink()
    elif variant == "card_weights_v1":
        card = json.loads((base / "v2" / "card.json").read_text())
        card["weights"] = "../v1/weights.safetensors"
        (base / "v2" / "card.json").write_text(json.dumps(card, indent=2))
        _rewrite_manifest(base / "v2")
    elif variant == "tampered":
        _tamper_weights(base / "v1" / "weights.safetensors")
    elif variant == "tampered_no_manifest":
        _tamper_weights(base / "v1" / "weights.safetensors")
        (base / "v1" / "version.json").unlink()
    elif variant != "clean":
        raise ValueError(variant)
    return base


def _active(base: Path) -> Optional[str]:
    return json.loads((base / "active.json").read_text()).get("version")


# -- judges ----------------------------------------------------------------------------------------------------------
def _home(w: World, name: str) -> Tuple[dict, Path]:
    home = w.p("cs_home", name)
    home.mkdir(parents=True)
    return dict(w.env, HOME=str(home)), home


def _outside(home: Path, ok: bool, text: str) -> Tuple[bool, str]:
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    if written:
        return False, text + f"; wrote under $HOME: {written[:3]}"
    return ok, text


def card_probe(case: str, *words: str) -> Callable[[World], Tuple[bool, str]]:
    """The row's overlay with ``cs_cards/<case>``: refused (with ``words``), no output, nothing under ``$HOME``, no
    pickled code run."""

    def probe(w: World) -> Tuple[bool, str]:
        env, home = _home(w, case)
        out = w.p("cs4", f"out_{case}")
        run = w.cmd(
            ["overlay", "--image", IMAGE, "--model", f"cs_cards/{case}/card.json", "--out", str(out)],
            env=env,
            prefix=["prlimit", "--as=6000000000"],
        )
        ok, text = refused(run, *words)
        if "Downloading" in run.text:
            ok, text = False, text + "; tried to download"
        pwned = sorted(p.name for p in w.p("cs_pwned").iterdir())
        if pwned:
            ok, text = False, text + f"; PICKLED CODE RAN: {pwned}"
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        if written:
            ok, text = False, text + f"; wrote {written[:3]}"
        return _outside(home, ok, text)

    return probe


def _cmd(w: World, name: str, args: List[str], timeout: float = 240) -> Tuple[Run, Path]:
    env, home = _home(w, name)
    return w.cmd(args, env=env, timeout=timeout), home


def activate_probe(name: str, variant: str, model: str, version: str, *words: str):
    """``assft models activate``: refused (with ``words``) and the active version still v1."""

    def probe(w: World) -> Tuple[bool, str]:
        base = _store(w, variant)
        run, home = _cmd(w, name, ["models", "activate", "--store", str(base.parent), model, version])
        ok, text = refused(run, *words)
        now = _active(base)
        if now != "v1":
            ok, text = False, text + f"; the active version is now {now}"
        return _outside(home, ok, text)

    return probe


def model_probe(name: str, command: str, variant: str, model_path: str, *words: str):
    """``assft <command>`` with ``--model cs9/<variant>/<model_path>``: refused with ``words``, no output written."""

    def probe(w: World) -> Tuple[bool, str]:
        base = _store(w, variant)
        model = str(base / model_path) if model_path else str(base)
        out = w.p("cs9", f"out_{name}")
        if command == "evaluate":
            args = ["evaluate", "--images", "base/images", "--labels", "lab/real2", "--model", model]
            args += ["--out", str(out), "--no-hd95"]
        elif command == "rank":
            args = ["rank", "--images", "base/images", "--model", model, "--budget", "1", "--out", str(out), "--quiet"]
        elif command == "adapt":
            args = ["adapt", "--images", "base/images", "--labels", "lab/real2", "--model", model]
            args += ["--store", str(out), "--no-guard"] + FAST_ADAPT
        else:
            raise ValueError(command)
        run, home = _cmd(w, name, args)
        ok, text = refused(run, *words)
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        if written:
            ok, text = False, text + f"; wrote {written[:3]}"
        return _outside(home, ok, text)

    return probe


def p_worker_rank_tampered(w: World) -> Tuple[bool, str]:
    base = _store(w, "tampered")
    job = w.job("cs_rank_tampered", {"kind": "rank", "images": w.images(), "budget": 1, "model": str(base)})
    env, home = _home(w, "worker_rank_tampered_active")
    run = w.cmd([str(job)], module="ASSFTActive.worker", env=env, timeout=120)
    ok, text = _worker_refused(run, job, "manifest")
    written = sorted(p.name for p in job.iterdir() if p.name.startswith(("ranking", "overlays", "predictions")))
    if written:
        ok, text = False, text + f"; wrote {written[:3]} in the job folder"
    return _outside(home, ok, text)


def p_no_manifest_cardjson(w: World) -> Tuple[bool, str]:
    """A store version's card, its weights tampered and its manifest removed: the catalogue held it as designed
    ("a folder without a manifest is a plain card") while noting that it ran silently; now it must be refused or
    warned about."""
    base = _store(w, "tampered_no_manifest")
    out = w.p("cs9", "out_ev_no_manifest_card")
    run, home = _cmd(
        w,
        "evaluate_tampered_no_manifest_cardjson",
        ["evaluate", "--images", "base/images", "--labels", "lab/real2", "--model", str(base / "v1" / "card.json")]
        + ["--out", str(out), "--no-hd95"],
    )
    if run.rc == 0 and not run.traceback:
        warning = _line_with(run.text, "manifest")
        return _outside(home, bool(warning), "exit 0: " + (warning or "evaluated without a word about the manifest"))
    return _outside(home, *refused(run, "manifest"))


def p_overlay_store_folder(w: World) -> Tuple[bool, str]:
    base = _store(w, "clean")
    out = w.p("cs6", "ov_store")
    run, home = _cmd(w, "overlay_store_folder_model", ["overlay", "--image", IMAGE, "--model", str(base), "--out", out])
    ok, text = accepted(run)
    files = sorted(p.name for p in out.glob("*")) if out.exists() else []
    ok = ok and any("entropy" in f for f in files)
    return _outside(home, ok, text + f"; wrote {files}")


def rank_probe(name: str, images: str, budget: str, expect_ok: bool, *words: str):
    def probe(w: World) -> Tuple[bool, str]:
        out = w.p("cs6", name)
        args = ["rank", "--images", images, "--budget", budget, "--out", str(out)] + (["--quiet"] if expect_ok else [])
        run, home = _cmd(w, name, args, timeout=300)
        if not expect_ok:
            return _outside(home, *refused(run, *words))
        ok, text = accepted(run)
        if ok:
            ranking = json.loads((out / "ranking.json").read_text())
            rows = (
                ranking
                if isinstance(ranking, list)
                else next(
                    (ranking[k] for k in ("cases", "ranking", "rows", "volumes") if isinstance(ranking.get(k), list)),
                    [],
                )
            )
            chosen = sum(bool(r.get("selected")) for r in rows)
            ok = len(rows) == 3 and chosen == 3
            text += f"; {len(rows)} volumes ranked, {chosen} proposed"
            if int(budget) > len(rows):  # nothing silent: a budget beyond the pool is said
                warned = "is more than the" in run.err
                ok = ok and warned
                text += ", the budget beyond the pool " + ("said" if warned else "NOT said")
        return _outside(home, ok, text)

    return probe


# -- the rows --------------------------------------------------------------------------------------------------------
_CARDS_TEST = T + "test_cli_bad_inputs.py::test_a_bad_model_card_is_refused_by_rank_and_check_card"
_FIELDS_TEST = T + "test_models.py::test_implausible_or_mistyped_card_fields_are_refused"
_ARCH_TEST = T + "test_models.py::test_card_architectures_are_limited_to_network_classes_of_monai"
_OUTSIDE_TEST = T + "test_models.py::test_card_weights_outside_the_card_folder_are_refused_unless_allowed"
_PICKLE_TEST = T + "test_models.py::test_pickled_model_object_is_never_unpickled"
_ERRORS_TEST = T + "test_models.py::test_card_errors_name_the_problem"

#: (case, words the refusal names, covering test)
CARD_ROWS = [
    ("weights_missing", ("not found",), T + "test_models.py"),
    (
        "wrong_channels",
        ("does not match",),
        T + "test_models.py::test_checkpoint_of_another_size_is_refused_with_the_offending_tensor",
    ),
    (
        "encoder_missing",
        ("encoder",),
        T + "test_models.py::test_naively_prefixed_checkpoint_is_refused_because_the_encoder_did_not_load",
    ),
    ("pickle_pt", ("unpickle",), _PICKLE_TEST),
    ("pickle_legacy", ("unpickle",), _PICKLE_TEST),
    ("pickle_plain", ("unpickle",), _PICKLE_TEST),
    ("pickle_extra", ("unpickle",), _PICKLE_TEST),
    ("pickle_as_safetensors", ("safetensors",), _PICKLE_TEST),
    ("arch_Something", ("Something",), _ARCH_TEST),
    ("arch_import", ("__import__",), _ARCH_TEST),
    ("arch_ossystem", ("os.system",), _ARCH_TEST),
    ("arch_unet_init", ("__init__",), _ARCH_TEST),
    ("arch_dotdot", ("unknown",), _ERRORS_TEST),
    ("arch_monai_dotdot", ("monai:..",), _ARCH_TEST),
    ("arch_builtins", ("__builtins__",), _ARCH_TEST),
    ("arch_lower_unet", ("monai:unet",), _ARCH_TEST),
    ("arch_class", ("__class__",), _ARCH_TEST),
    ("arch_class_fit", ("__class__",), _ARCH_TEST),
    ("arch_drop_connect", ("drop_connect",), _ARCH_TEST),
    ("arch_BlockArgs", ("BlockArgs",), _ARCH_TEST),
    ("arch_medicalnet", ("get_pretrained_resnet_medicalnet",), _ARCH_TEST),
    ("arch_medicalnet_fit", ("get_pretrained_resnet_medicalnet",), _ARCH_TEST),
    (
        "arch_resnet10_pretrained",
        ("pretrained",),
        T + "test_models.py::test_card_arguments_that_would_download_weights_are_refused",
    ),
    (
        "strides_short",
        ("strides",),
        T + "test_models.py::test_card_arguments_that_cannot_build_a_network_are_card_errors_not_tracebacks",
    ),
    ("weights_etc_passwd_rel", ("outside",), _OUTSIDE_TEST),
    ("weights_etc_passwd_deep", ("outside",), _OUTSIDE_TEST),
    ("weights_etc_shadow_abs", ("outside",), _OUTSIDE_TEST),
    ("weights_other_model_abs", ("outside",), _OUTSIDE_TEST),
    ("pretrained_etc_passwd", ("/etc/passwd",), T + "test_models.py"),
    ("invalid_json", ("JSON",), T + "test_models.py"),
    ("json_array", ("JSON object",), T + "test_models.py"),
    ("missing_keys", ("missing required",), _CARDS_TEST),
    ("type_arguments_list", ("'arguments' must be",), _FIELDS_TEST),
    ("type_class_names_5", ("'class_names' must be",), _FIELDS_TEST),
    ("type_encoder_null", ("'encoder_stages' must be",), _FIELDS_TEST),
    ("type_patch_strings", ("'patch_size' must be",), _FIELDS_TEST),
    ("type_preproc_string", ("'preprocessing' must be",), _FIELDS_TEST),
    ("patch_100000", ("patch_size must be",), _FIELDS_TEST),
    ("spacing_zero", ("spacing must be",), _FIELDS_TEST),
    ("spacing_negative", ("spacing must be",), _FIELDS_TEST),
    ("spacing_string", ("'spacing' must be",), _FIELDS_TEST),
    ("spacing_nan", ("'spacing' must be",), _CARDS_TEST),
    ("ct_window_no_amin", ("a_min < a_max",), _FIELDS_TEST),
    ("ct_window_equal", ("a_min < a_max",), _FIELDS_TEST),
    ("class_names_5", ("out_channels = 3",), T + "test_models.py::test_out_channels_must_match_the_class_names"),
    ("class_names_5_no_outch", ("out_channels",), T + "test_models.py::test_out_channels_must_match_the_class_names"),
    ("stage_typo", ("model.O",), _ERRORS_TEST),
    ("outch_string", ("out_channels",), T + "test_models.py::test_out_channels_must_match_the_class_names"),
    ("zero_channels", (), T + "test_models.py"),
]

_STORE_TEST = T + "test_cli_models.py::test_activating_what_does_not_exist_is_an_error_and_changes_nothing"
_TAMPER_TEST = T + "test_cli_bad_inputs.py::test_a_tampered_active_version_is_refused_through_the_store_folder"
_MANIFEST = "differs from the manifest"
_NO_MANIFEST_TEST = T + "test_store_version_without_manifest.py::"
_HOME_TEST = T + "test_library_caches.py::test_an_assft_command_leaves_the_home_folder_empty"

PROBES: List[Probe] = [
    Probe("1.3", f"overlay_{case}", "-", "hold", test, card_probe(case, *words)) for case, words, test in CARD_ROWS
] + [
    # 1.7 activation and tampering
    Probe("1.7", "activate_v9", "-", "hold", _STORE_TEST, activate_probe("activate_v9", "clean", "base", "v9", "v9")),
    Probe(
        "1.7",
        "activate_traversal",
        "-",
        "hold",
        _STORE_TEST,
        activate_probe("activate_traversal", "clean", "base", "../../etc", "not of the form"),
    ),
    Probe(
        "1.7",
        "activate_unknown_model",
        "-",
        "hold",
        _STORE_TEST,
        activate_probe("activate_unknown_model", "clean", "nomodel", "v1", "nomodel"),
    ),
    Probe(
        "1.7",
        "activate_flipped_byte",
        "-",
        "hold",
        T + "test_cli_models.py",
        activate_probe("activate_flipped_byte", "flipped_v2", "base", "v2", _MANIFEST),
    ),
    Probe(
        "1.7",
        "activate_no_manifest",
        "-",
        "hold",
        T + "test_cli_models.py",
        activate_probe("activate_no_manifest", "no_manifest_v2", "base", "v2", "v2"),
    ),
    Probe(
        "1.7",
        "activate_card_weights_v1",
        "-",
        "hold",
        T + "test_cli_models.py",
        activate_probe("activate_card_weights_v1", "card_weights_v1", "base", "v2", "version folder"),
    ),
    Probe(
        "1.7",
        "evaluate_tampered_active_storefolder",
        "-",
        "hold",
        _TAMPER_TEST,
        model_probe("evaluate_tampered_active_storefolder", "evaluate", "tampered", "", _MANIFEST),
    ),
    Probe(
        "1.7",
        "evaluate_tampered_active_versionfolder",
        "-",
        "hold",
        _TAMPER_TEST,
        model_probe("evaluate_tampered_active_versionfolder", "evaluate", "tampered", "v1", _MANIFEST),
    ),
    Probe(
        "1.7",
        "evaluate_tampered_active_cardjson",
        "-",
        "hold",
        _TAMPER_TEST,
        model_probe("evaluate_tampered_active_cardjson", "evaluate", "tampered", "v1/card.json", _MANIFEST),
    ),
    Probe(
        "1.7",
        "rank_tampered_active_storefolder",
        "-",
        "hold",
        _TAMPER_TEST,
        model_probe("rank_tampered_active_storefolder", "rank", "tampered", "", _MANIFEST),
    ),
    Probe(
        "1.7",
        "adapt_from_tampered_active",
        "-",
        "hold",
        _TAMPER_TEST,
        model_probe("adapt_from_tampered_active", "adapt", "tampered", "", _MANIFEST),
    ),
    Probe("1.7", "worker_rank_tampered_active", "-", "hold", T + "test_worker_trust.py", p_worker_rank_tampered),
    Probe(
        "1.7",
        "evaluate_tampered_no_manifest_storefolder",
        "-",
        "hold",
        _NO_MANIFEST_TEST + "test_the_store_folder_names_the_active_version_that_lost_its_manifest",
        model_probe(
            "evaluate_tampered_no_manifest_storefolder", "evaluate", "tampered_no_manifest", "", "version.json"
        ),
    ),
    Probe(
        "1.7",
        "evaluate_tampered_no_manifest_cardjson",
        "-",
        "hold*",
        _NO_MANIFEST_TEST + "test_a_version_without_its_manifest_is_refused_through_its_card_and_its_folder",
        p_no_manifest_cardjson,
    ),
    # 1.8 foreign-smoke rough edges
    Probe("1.8", "overlay_store_folder_model", "-", "hold", _HOME_TEST, p_overlay_store_folder),
    Probe(
        "1.8",
        "rank_budget_neg",
        "-",
        "hold",
        T + "test_cli_rank.py",
        rank_probe("rank_budget_neg", "base/images", "-1", False, "--budget"),
    ),
    Probe(
        "1.8",
        "rank_budget_20",
        "-",
        "hold",
        T + "test_cli_rank.py::test_a_budget_larger_than_the_pool_proposes_every_volume_and_says_so",
        rank_probe("rank_budget_20", "base/images", "20", True),
    ),
    Probe(
        "1.8",
        "rank_missing_folder",
        "-",
        "hold",
        T + "test_cli_rank.py",
        rank_probe("rank_missing_folder", "cs6/nothere", "1", False, "no NIfTI"),
    ),
]
