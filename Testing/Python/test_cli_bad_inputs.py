"""The bad-input catalogue: every input ASSFT must not trust ends with one `error:` line, exit code 2, and no file.

Each case is what a new user or an attacker hands to `assft`: corrupt or implausible volumes, hostile or mistyped
model cards, a tampered model store, an output that cannot be written, labels that teach nothing. The commands run
in-process through :func:`ASSFTActive.cli.main`, the one place that maps expected failures to the error contract.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ASSFTActive.cli import main
from ASSFTActive.models import EMBEDDED_DEFAULT_CARD

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample"
POOL = sorted((SAMPLE / "pool" / "images").glob("*.nii.gz"))


def _nifti(array, path: Path) -> None:
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([1.0, 1.0, 1.0, 1.0])), str(path))


def _flipped(path: Path) -> None:
    data = bytearray(POOL[0].read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _overflow(path: Path) -> None:
    array = np.random.default_rng(0).normal(size=(16, 16, 16))
    array[0, 0, 0] = 1e300
    _nifti(array, path)


def _sheared_without_qform(path: Path) -> None:
    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), None)
    shear = np.eye(4)
    shear[0, 1] = 0.5
    image.set_qform(None, code=0)
    image.set_sform(shear, code=1)
    nib.save(image, str(path))


def _declares_2gb(path: Path) -> None:
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4 + 1024)))


#: image file written next to two good pool volumes -> expected message
BAD_IMAGES = {
    "sheared_sform_without_qform": (_sheared_without_qform, "the way 3D Slicer (ITK) reads it"),
    "header_declares_2gb": (_declares_2gb, "more than the limit"),
    "corrupt_gzip_crc": (_flipped, "corrupt"),
    "one_voxel": (lambda p: _nifti(np.ones((1, 1, 1), np.float32), p), "ASSFT needs at least"),
    "constant": (lambda p: _nifti(np.full((16, 16, 16), 3.0, np.float32), p), "every voxel has the value"),
    "all_zero": (lambda p: _nifti(np.zeros((16, 16, 16), np.int16), p), "every voxel has the value 0"),
    "beyond_float32": (_overflow, "beyond the float32 range"),
}

ABSENT = object()

#: change of the embedded default card -> expected message
BAD_CARDS = {
    "negative_spacing": ({"spacing": [-1.0, 1.0, 1.0]}, "spacing must be"),
    "spacing_text": ({"spacing": "1mm"}, "'spacing' must be"),
    "window_a_min_eq_a_max": ({"preprocessing": {"profile": "ct_window", "a_min": 0, "a_max": 0}}, "a_min < a_max"),
    "window_without_a_min": ({"preprocessing": {"profile": "ct_window", "a_max": 100}}, "a_min < a_max"),
    "huge_patch": ({"patch_size": [100000, 64, 48]}, "patch_size must be"),
    "class_names_text": ({"class_names": "background"}, "'class_names' must be"),
    "too_many_classes": (
        {"class_names": ["background", "anterior", "posterior", "extra"]},
        "out_channels = 3 but class_names lists 4",
    ),
    "dunder_architecture": ({"architecture": "monai:__class__"}, "not a network class"),
    "function_architecture": ({"architecture": "monai:resnet10"}, "not a network class"),
    "weights_elsewhere": ({"weights": "../outside.safetensors"}, "outside the card's folder"),
    "missing_field": ({"encoder_stages": ABSENT}, "missing required field"),
}


def _run(capsys, *argv: str):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _files(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _assert_contract(code: int, err: str, message: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_a_bad_volume_in_the_pool_is_refused_by_rank(tmp_path, capsys, kind):
    write, message = BAD_IMAGES[kind]
    images = tmp_path / "images"
    images.mkdir()
    for path in POOL[:2]:
        shutil.copy(path, images / path.name)
    write(images / f"zz_{kind}.nii.gz")
    out = tmp_path / "out"
    code, err = _run(capsys, "rank", "--images", str(images), "--budget", "1", "--out", str(out), "--quiet")
    _assert_contract(code, err, message)
    assert f"zz_{kind}.nii.gz" in err and _files(out) == []


@pytest.mark.parametrize("kind", sorted(BAD_CARDS))
def test_a_bad_model_card_is_refused_by_rank_and_check_card(tmp_path, capsys, kind):
    changes, message = BAD_CARDS[kind]
    folder = tmp_path / "card"
    folder.mkdir()
    shutil.copy(EMBEDDED_DEFAULT_CARD.parent / "weights.safetensors", folder / "weights.safetensors")
    shutil.copy(EMBEDDED_DEFAULT_CARD.parent / "weights.safetensors", tmp_path / "outside.safetensors")
    data = json.loads(EMBEDDED_DEFAULT_CARD.read_text())
    for key, value in changes.items():
        if value is ABSENT:
            data.pop(key)
        else:
            data[key] = value
    (folder / "card.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    code, err = _run(
        capsys,
        "rank",
        "--images",
        str(POOL[0]),
        "--budget",
        "1",
        "--model",
        str(folder / "card.json"),
        "--out",
        str(out),
        "--quiet",
    )
    _assert_contract(code, err, message)
    assert _files(out) == []
    _assert_contract(*_run(capsys, "check-card", str(folder / "card.json")), message)


def test_a_tampered_active_version_is_refused_through_the_store_folder(tmp_path, capsys):
    from ASSFTActive.store import ModelStore

    store = ModelStore(tmp_path / "store")
    with store.begin("site") as pending:
        for name in ("card.json", "weights.safetensors"):
            shutil.copy(EMBEDDED_DEFAULT_CARD.parent / name, pending.path / name)
        pending.commit(load=False)
    store.activate("site", "v1", load=False)
    weights = tmp_path / "store" / "site" / "v1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    out = tmp_path / "out"
    for command in (
        ["rank", "--images", str(POOL[0]), "--budget", "1", "--out", str(out), "--quiet"],
        ["overlay", "--image", str(POOL[0]), "--out", str(out)],
        ["check-card", str(tmp_path / "store" / "site")],
    ):
        if command[0] != "check-card":
            command += ["--model", str(tmp_path / "store" / "site")]
        _assert_contract(*_run(capsys, *command), "differs from the manifest")
    assert _files(out) == []


def test_an_output_folder_that_is_a_file_is_an_error_line(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    code, err = _run(capsys, "rank", "--images", str(POOL[0]), "--budget", "1", "--out", str(out), "--quiet")
    _assert_contract(code, err, str(out))
    assert out.read_text() == "not a folder"


def test_all_background_labels_stop_adapt_and_leave_no_version(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for path in POOL[:3]:
        shutil.copy(path, images / path.name)
    for path in POOL[:2]:
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), str(labels / path.name))
    store = tmp_path / "store"
    code, err = _run(
        capsys,
        "adapt",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--store",
        str(store),
        "--quiet",
        "--iterations",
        "2",
    )
    _assert_contract(code, err, "contain only background")
    assert "--allow-implausible-labels" in err
    assert [p for p in _files(store) if "v1" in p.parts] == []


def test_a_second_adapt_on_the_same_work_dir_is_refused(tmp_path, capsys):
    from ASSFTActive.locks import folder_lock

    with folder_lock(tmp_path / "work", "--work-dir"):
        code, err = _run(
            capsys,
            "adapt",
            "--images",
            str(POOL[0]),
            "--labels",
            str(tmp_path),
            "--store",
            str(tmp_path / "store"),
            "--work-dir",
            str(tmp_path / "work"),
            "--quiet",
        )
    _assert_contract(code, err, "in use by another process")
    assert not (tmp_path / "store").exists()
