"""``assft sfr`` as a user types it, on the shipped sample with tiny iterations: a stored version, the guard's reason,
SFR's provenance; the settings record; the errors a user can act on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ASSFTActive.cli import main
from ASSFTActive.sfr.pipeline import SfrConfig, SfrMethod
from ASSFTActive.store import ModelStore

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample" / "pool"


def _labels(tmp_path: Path, cases) -> Path:
    folder = tmp_path / "labels"
    folder.mkdir()
    for case in cases:
        shutil.copy(SAMPLE / "labels" / f"{case}.nii.gz", folder / f"{case}.nii.gz")
    return folder


@pytest.mark.slow  # about 20 s on one CPU thread: three cross-validation folds of SAM + re-training, then the final run
def test_assft_sfr_on_the_sample_stores_a_version_with_the_guards_reason(tmp_path, capsys):
    labels = _labels(tmp_path, ["hippocampus_011", "hippocampus_023", "hippocampus_026"])
    store = tmp_path / "store"
    code = main(
        [
            "sfr",
            "--images",
            str(SAMPLE / "images"),
            "--labels",
            str(labels),
            "--store",
            str(store),
            "--sam-iterations",
            "3",
            "--iterations",
            "4",
            "--seed",
            "0",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "sfr: model hippocampus-unet-adapted v1" in out and "why: " in out
    versions = ModelStore(store).versions("hippocampus-unet-adapted")
    assert [v.version for v in versions] == ["v1"]
    provenance = json.loads((versions[0].path / "provenance.json").read_text())
    assert provenance["method"] == "sfr"
    assert provenance["activation"]["method"] == "cross_validation"
    assert provenance["activation"]["reason"] in out
    assert len(provenance["sam_pseudo_labels"]) == 9 and all(p["kept"] for p in provenance["sam_pseudo_labels"])
    assert "NOT Meta's Segment Anything" in provenance["sam_prior"]["not_meta_sam"]
    assert provenance["metrics"]["evaluated_on"] == "cross_validation"
    config = json.loads((versions[0].path / "config.json").read_text())
    assert SfrConfig.from_dict(config["sfr"]).retrain.iterations == 4
    active = ModelStore(store).active_version("hippocampus-unet-adapted")
    assert (active == "v1") == provenance["activation"]["activate"]


def test_assft_sfr_plus_without_the_guard_activates_on_a_confident_selection(tmp_path, capsys):
    labels = _labels(tmp_path, ["hippocampus_011"])
    store = tmp_path / "store"
    code = main(
        [
            "sfr",
            "--images",
            str(SAMPLE / "images"),
            "--labels",
            str(labels),
            "--store",
            str(store),
            "--method",
            "sfr_plus",
            "--sam-iterations",
            "2",
            "--iterations",
            "2",
            "--no-guard",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "sfr_plus: model hippocampus-unet-adapted v1 is now active" in out
    assert "the guard is off" in out
    version = ModelStore(store).versions("hippocampus-unet-adapted")[0]
    provenance = json.loads((version.path / "provenance.json").read_text())
    kept = [p for p in provenance["sam_pseudo_labels"] if p["kept"]]
    assert provenance["method"] == "sfr_plus" and len(kept) == 6  # ceil(0.5 * 11) most confident
    dropped = [p for p in provenance["sam_pseudo_labels"] if not p["kept"]]
    assert min(p["confidence"] for p in kept) >= max(p["confidence"] for p in dropped)


def test_sfr_needs_an_unlabelled_pool(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(SAMPLE / "images" / "hippocampus_011.nii.gz", images)
    labels = _labels(tmp_path, ["hippocampus_011"])
    code = main(
        [
            "sfr",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--store",
            str(tmp_path / "store"),
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    assert "unlabelled volumes" in capsys.readouterr().err
    assert not (tmp_path / "store" / "hippocampus-unet-adapted").exists()


def test_sfr_settings_round_trip_and_refuse_unknown_keys():
    config = SfrConfig(method="sfr_plus", plus_voxel_threshold=None)
    assert config.method is SfrMethod.SFR_PLUS
    assert SfrConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.finetune_config().train == config.retrain
    with pytest.raises(ValueError, match="unknown"):
        SfrConfig.from_dict({"iterations": 3})
    with pytest.raises(ValueError, match="method"):
        SfrConfig(method="sam")


def test_cancelling_during_sam_fine_tuning_leaves_the_store_unchanged(tmp_path):
    from ASSFTActive.errors import CancelledError
    from ASSFTActive.io import case_id, find_images, match_labels
    from ASSFTActive.sfr.finetune import SfrFinetuneConfig
    from ASSFTActive.sfr.pipeline import sfr_adapt

    labels = _labels(tmp_path, ["hippocampus_011"])
    images = find_images(str(SAMPLE / "images"))
    phases = []

    def progress(event):
        phases.append(event.phase)
        if event.event == "progress" and event.phase == "sfr_finetune":
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        sfr_adapt(
            {case_id(p): p for p in images},
            match_labels(images, str(labels)),
            store=tmp_path / "store",
            config=SfrConfig(sam=SfrFinetuneConfig.tiny(iterations=5)),
            progress=progress,
        )
    assert "commit" not in phases
    assert ModelStore(tmp_path / "store").versions("hippocampus-unet-adapted") == []
