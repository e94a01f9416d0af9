"""nnU-Net v2 result folders as a model source: the card read from plans.json / dataset.json, the checkpoint read
weights-only in nnU-Net's real layout, nnU-Net's axis order and normalisation, and rank / overlay / check-card /
adapt on the folder as a user types them.

The folder is written here as nnU-Net v2 (2.2 and later) writes it: ``plans.json`` with ``configurations`` ->
``3d_fullres`` -> ``architecture`` (``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``),
``foreground_intensity_properties_per_channel``, ``transpose_forward``; ``dataset.json`` with ``channel_names``,
``labels``, ``numTraining``, ``file_ending``; ``fold_0/checkpoint_final.pth`` with the keys of
``nnUNetTrainer.save_checkpoint`` (``network_weights``, ``optimizer_state``, ``grad_scaler_state``, ``logging``,
``_best_ema``, ``current_epoch``, ``init_args``, ``trainer_name``, ``inference_allowed_mirroring_axes``), holding the
numpy scalars and ``torch.device`` a real one holds. The network is a randomly initialised ``PlainConvUNet`` of
``dynamic-network-architectures`` (the package nnU-Net builds it with), small enough for CI.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import overlay_evaluate_and_rerank, tiny_adapt_args, write_dataset

from ASSFTActive.cli import main
from ASSFTActive.errors import ModelError
from ASSFTActive.inference.preprocess import nnunet_intensity_transform, nonzero_box, to_model_space
from ASSFTActive.io import Volume, read_volume
from ASSFTActive.models import load_model
from ASSFTActive.sources import nnunet
from ASSFTActive.store import ModelStore, resolve_card, resolve_card_path

pytest.importorskip(
    "dynamic_network_architectures.architectures.unet",
    reason="dynamic-network-architectures is not installed (requirements.txt pins it)",
)
from nnunet_layout import (  # noqa: E402
    ARCH_KWARGS,
    DATASET,
    PLANS,
    nnunet_network,
    write_nnunet_folder,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_nnunet_folder(tmp_path_factory.mktemp("nnunet"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    write_dataset(root, count=4, labeled=2)
    return root


def test_folder_resolves_to_a_card_with_the_plans_geometry_normalisation_and_classes(folder):
    card = resolve_card(folder)
    assert resolve_card_path(folder) == (folder / "fold_0" / "checkpoint_final.pth").resolve()
    assert card.architecture == "nnunet:PlainConvUNet" and card.weights_format == "nnunet_checkpoint"
    assert card.class_names == ("background", "Anterior", "Posterior")
    # nnU-Net's [z, y, x] becomes ASSFT's [i, j, k]; nnU-Net never reorients
    assert card.patch_size == (20, 16, 12) and card.spacing == (1.0, 1.0, 1.5) and card.orientation is None
    assert card.preprocessing == {
        "profile": "nnunet",
        "scheme": "CTNormalization",
        "use_mask_for_norm": False,
        "mean": 400.0,
        "std": 100.0,
        "percentile_00_5": 280.0,
        "percentile_99_5": 520.0,
    }
    assert card.encoder_stages == ("encoder.stages.0", "encoder.stages.1", "encoder.stages.2")
    assert card.provenance["configuration"] == "3d_fullres" and card.provenance["fold"] == "fold_0"
    assert resolve_card(folder / "fold_0") == card  # a fold folder means the same checkpoint
    assert resolve_card(card.path) == card  # the reference a job or a store version keeps resolves again


def test_checkpoint_weights_load_exactly_into_the_network_nnunet_builds(folder):
    model = load_model(resolve_card(folder))
    saved = nnunet.read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert model.report.missing == () and model.report.unexpected == ()
    assert model.report.loaded == len(saved) == len(model.network.state_dict())
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_checkpoint_extras_need_the_numpy_allow_list_and_nothing_more(folder):
    path = folder / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="numpy"):  # plain weights_only refuses the training log's numpy scalars
        torch.load(str(path), map_location="cpu", weights_only=True)
    checkpoint = nnunet.read_checkpoint(path)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and nnunet.mirroring_axes(checkpoint) == (0, 1, 2)
    assert float(checkpoint["_best_ema"]) == pytest.approx(0.41)


class _RunsCode:
    """An object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("payload", ["whole-model", "code"])
def test_a_pickled_model_or_object_is_refused_without_running_it(tmp_path, payload):
    folder = write_nnunet_folder(tmp_path)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    marker = tmp_path / "ran"
    if payload == "whole-model":
        torch.save(nnunet_network(), checkpoint)
    else:
        torch.save({"network_weights": nnunet_network().state_dict(), "trainer": _RunsCode(str(marker))}, checkpoint)
    with pytest.raises(ModelError, match="never unpickles model objects"):
        load_model(resolve_card(folder))
    assert not marker.exists()


def test_network_sees_its_input_in_nnunets_axis_order(tmp_path):
    plans = copy.deepcopy(PLANS)
    plans["transpose_forward"], plans["transpose_backward"] = [1, 0, 2], [1, 0, 2]
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.5, 1.0]  # nnU-Net stores it transposed
    folder = write_nnunet_folder(tmp_path, plans=plans)
    card = resolve_card(folder)
    # network axes: transpose_forward of SimpleITK's [k, j, i] = [j, k, i]
    assert card.arguments["axes"] == [1, 2, 0]
    assert card.patch_size == (20, 12, 16) and card.spacing == (1.0, 1.0, 1.5)
    model = load_model(card)
    reference = nnunet_network()
    reference.load_state_dict(model.network.state_dict())
    reference.decoder.deep_supervision = False
    reference.eval()
    x = torch.randn(1, 1, 20, 12, 16)  # [i, j, k]
    with torch.no_grad():
        ours = model.network(x)
        theirs = reference(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
    assert ours.shape == (1, 3, 20, 12, 16)
    assert torch.allclose(ours, theirs, atol=1e-6)


def reference_normalisation(image: np.ndarray, preprocessing) -> tuple:
    """nnU-Net v2's normalisation of one channel as its ``DefaultPreprocessor`` runs it: crop to the bounding box of
    the non-zero voxels (``crop_to_nonzero``; the mask is the non-zero voxels with holes filled), then
    ``ZScoreNormalization.run`` / ``CTNormalization.run`` (``nnunetv2/preprocessing/normalization/
    default_normalization_schemes.py``) on the crop, in float32.

    Returns:
        ``(box, normalised crop)``.
    """
    from scipy.ndimage import binary_fill_holes

    box = nonzero_box(image)
    crop = np.array(image[box], dtype=np.float32)
    scheme = preprocessing["scheme"]
    if scheme == "CTNormalization":
        np.clip(crop, preprocessing["percentile_00_5"], preprocessing["percentile_99_5"], out=crop)
        crop -= preprocessing["mean"]
        crop /= max(preprocessing["std"], 1e-8)
    elif scheme == "ZScoreNormalization":
        if preprocessing.get("use_mask_for_norm", False):
            mask = binary_fill_holes(crop != 0)  # seg >= 0 after crop_to_nonzero
            mean, std = crop[mask].mean(), crop[mask].std()
            crop[mask] = (crop[mask] - mean) / max(std, 1e-8)
        else:
            mean, std = crop.mean(), crop.std()
            crop -= mean
            crop /= max(std, 1e-8)
    return box, crop


def _volume_with_empty_border(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((24, 24, 20), dtype=np.float32)
    image[3:21, 2:22, 4:17] = rng.normal(350.0, 90.0, (18, 20, 13))
    image[8:12, 8:12, 8:12] = 0.0  # a hole of zeros inside the body
    return image


@pytest.mark.parametrize(
    "scheme, use_mask", [("CTNormalization", False), ("ZScoreNormalization", False), ("ZScoreNormalization", True)]
)
def test_normalisation_equals_nnunets_formulas(scheme, use_mask):
    image = _volume_with_empty_border()
    preprocessing = {
        "profile": "nnunet",
        "scheme": scheme,
        "use_mask_for_norm": use_mask,
        "mean": 400.0,
        "std": 100.0,
        "percentile_00_5": 280.0,
        "percentile_99_5": 520.0,
    }
    box, expected = reference_normalisation(image, preprocessing)
    ours = nnunet_intensity_transform(image, preprocessing)(image).numpy()[box]
    if use_mask:  # nnU-Net z-scores zeros inside its hole-filled mask; ASSFT keeps every zero at zero
        hole = image[box] == 0
        assert np.abs(ours - expected)[~hole].max() < 1e-4
        assert hole.sum() == 64 and np.all(ours[hole] == 0)
    else:
        assert np.abs(ours - expected).max() < 1e-4


def test_model_space_input_is_nnunets_preprocessed_crop(folder):
    card = resolve_card(folder)
    image = _volume_with_empty_border()
    volume = Volume(image, np.diag([1.0, 1.0, 1.5, 1.0]))
    tensor, space = to_model_space(volume, card)
    assert space.model_shape == image.shape  # the plans' spacing: no resampling
    box, expected = reference_normalisation(image, card.preprocessing)
    assert np.abs(tensor[0].numpy()[box] - expected).max() < 1e-4


def test_unsupported_folders_are_refused_naming_the_reason(tmp_path):
    dataset = {**DATASET, "labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}
    with pytest.raises(ModelError, match="region-based"):
        resolve_card(write_nnunet_folder(tmp_path / "a", dataset=dataset))
    with pytest.raises(ModelError, match="single-channel"):
        resolve_card(write_nnunet_folder(tmp_path / "b", dataset={**DATASET, "channel_names": {"0": "T1", "1": "T2"}}))
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"] = {**ARCH_KWARGS, "nonlin": "os.system"}
    with pytest.raises(ModelError, match="not an operator ASSFT builds"):
        load_model(resolve_card(write_nnunet_folder(tmp_path / "c", plans=plans)))
    empty = tmp_path / "d" / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    empty.mkdir(parents=True)
    (empty / "plans.json").write_text(json.dumps(PLANS))
    (empty / "dataset.json").write_text(json.dumps(DATASET))
    with pytest.raises(ModelError, match="no fold_<k>/checkpoint_final.pth"):
        resolve_card(empty)


def test_check_card_reports_the_source_and_runs_a_forward_pass(folder, capsys):
    assert main(["check-card", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "nnunet:PlainConvUNet" in out and "background, Anterior, Posterior" in out
    assert "0 missing, 0 unexpected" in out
    assert "CTNormalization" in out and "spacing" in out
    assert "forward pass: [20, 16, 12] patch -> output [1, 3, 20, 16, 12]" in out
    assert "the card is usable" in out


def test_rank_and_overlay_run_on_the_folder(folder, pool, tmp_path, capsys):
    out = tmp_path / "ranked"
    assert (
        main(
            [
                "rank",
                "--images",
                str(pool / "images"),
                "--model",
                str(folder),
                "--budget",
                "1",
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ranking = json.loads((out / "ranking.json").read_text())
    assert len(ranking["cases"]) == 4 and sum(c["selected"] for c in ranking["cases"]) == 1
    image = read_volume(pool / "images" / "case_000.nii.gz")
    assert read_volume(out / "overlays" / "case_000_entropy.nii.gz").shape == image.shape
    overlay = tmp_path / "overlay"
    assert (
        main(
            [
                "overlay",
                "--image",
                str(pool / "images" / "case_001.nii.gz"),
                "--model",
                str(folder),
                "--out",
                str(overlay),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert any(p.name.endswith(".nii.gz") for p in overlay.iterdir())


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_adapt_on_the_folder_writes_a_store_version_that_ranks_again(folder, pool, tmp_path):
    store = tmp_path / "store"
    assert main(tiny_adapt_args(pool / "images", pool / "labels", folder, store, iterations=4, semi_iterations=2)) == 0
    version = ModelStore(store).active("site")
    assert version is not None and version.version == "v1"
    adapted = resolve_card(store / "site")
    assert adapted.architecture == "nnunet:PlainConvUNet" and adapted.preprocessing["profile"] == "nnunet"
    assert adapted.pretrained_card() == resolve_card(folder)
    assert adapted.test_time_mirroring == (0, 1, 2)  # the stored card keeps the source's test-time mirroring
    overlay_evaluate_and_rerank(folder, pool / "images", pool / "labels", tmp_path / "source")
    overlay_evaluate_and_rerank(store / "site", pool / "images", pool / "labels", tmp_path / "adapted")
    import jsonschema

    from ASSFTActive.cards import RESOURCES

    schema = json.loads((RESOURCES / "model-card.schema.json").read_text())
    jsonschema.validate(json.loads(adapted.path.read_text()), schema)
    before = load_model(resolve_card(folder)).network.state_dict()
    after = load_model(adapted).network.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    out = tmp_path / "reranked"
    assert (
        main(
            [
                "rank",
                "--images",
                str(pool / "images"),
                "--model",
                str(store / "site"),
                "--budget",
                "1",
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert len(json.loads((out / "ranking.json").read_text())["cases"]) == 4


def test_an_adapted_version_is_written_back_in_nnunets_layout(folder, pool, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(tiny_adapt_args(pool / "images", pool / "labels", folder, store, iterations=2, semi_iterations=1)) == 0
    out = tmp_path / "nnUNet_results" / "Dataset004_Hippocampus_site"
    assert main(["export-nnunet", str(store / "site"), "--out", str(out)]) == 0
    exported = out / folder.name
    assert sorted(p.name for p in exported.iterdir()) == ["dataset.json", "fold_0", "plans.json"]
    assert (exported / "plans.json").read_bytes() == (folder / "plans.json").read_bytes()
    adapted = load_model(resolve_card(store / "site")).network.state_dict()
    # what nnUNetPredictor.initialize_from_trained_model_folder reads: trainer, configuration, mirroring, a strict
    # load; read weights-only (the export holds tensors, numbers and numpy scalars only, so nnU-Net's full unpickling
    # of it finds the same)
    checkpoint = nnunet.read_checkpoint(exported / "fold_0" / "checkpoint_final.pth")
    original = nnunet.read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and checkpoint["init_args"]["configuration"] == "3d_fullres"
    assert checkpoint["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert set(checkpoint["network_weights"]) == set(original["network_weights"])
    network = nnunet_network()
    network.load_state_dict(checkpoint["network_weights"], strict=True)
    for key, value in network.state_dict().items():
        assert torch.equal(value, adapted[key]), key
    assert resolve_card(exported).class_names == ("background", "Anterior", "Posterior")  # and ASSFT reads it again
    assert main(["export-nnunet", str(store / "site"), "--out", str(out)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("scheme", ["CTNormalization", "ZScoreNormalization"])
def test_prediction_equals_nnunets_own_predictor(tmp_path, scheme):
    """nnU-Net's own ``nnUNetPredictor`` (its default test-time mirroring over the checkpoint's axes, which ASSFT
    applies too) and ASSFT on the same volume from the same folder: the same preprocessed input, the same logits up
    to nnU-Net's float16 accumulation of windows, the same label map. One window covers the volume, so the two
    tilings cannot differ. Skipped where nnunetv2 is not installed (it is not a dependency; installed beside the
    project it ran here: nnunetv2 2.6.4)."""
    predict = pytest.importorskip(
        "nnunetv2.inference.predict_from_raw_data", reason="nnunetv2 is not installed (only this cross-check needs it)"
    )
    from ASSFTActive.inference import Predictor
    from ASSFTActive.inference.predictor import mirrored_logits

    plans = copy.deepcopy(PLANS)
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = [scheme]
    folder = write_nnunet_folder(tmp_path, plans=plans)
    rng = np.random.default_rng(5)
    zyx = rng.normal(380.0, 120.0, (12, 16, 20)).astype(np.float32)  # nnU-Net's [z, y, x] = the plans' patch
    properties = {"spacing": [1.5, 1.0, 1.0]}
    predictor = predict.nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=True,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    segmentation, _ = predictor.predict_single_npy_array(zyx[None], dict(properties), None, None, True)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    their_input, _, _ = preprocessor.run_case_npy(
        zyx[None].copy(),
        None,
        dict(properties),
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
    )
    their_logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(their_input)).float()

    volume = Volume(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.diag([1.0, 1.0, 1.5, 1.0]))
    model = load_model(resolve_card(folder))
    our_input, _ = to_model_space(volume, model.card)
    with torch.no_grad():
        our_logits = mirrored_logits(model.network, our_input[None], model.card.test_time_mirroring)[0]
        our_logits = our_logits.permute(0, 3, 2, 1)
    ours = Predictor(model, device=torch.device("cpu")).predict(volume)
    input_difference = float(np.abs(our_input[0].numpy().transpose(2, 1, 0) - their_input[0]).max())
    logit_difference = float((our_logits - their_logits).abs().max())
    scale = float(their_logits.abs().max())
    print(
        f"{scheme}: input max|diff| {input_difference:.1e}; logits max|diff| {logit_difference:.2e} for "
        f"max|logit| {scale:.0f} (float16 step there: {scale * 2**-10:.2e}); label maps equal: "
        f"{np.array_equal(ours.label.transpose(2, 1, 0), segmentation)}"
    )
    assert input_difference < 1e-5
    assert logit_difference <= scale * 2**-10 + 1e-3  # nnU-Net sums the windows' logits in float16
    assert np.array_equal(ours.label.transpose(2, 1, 0), segmentation)


def test_a_background_rank_job_takes_the_folder_as_its_model(folder, pool, tmp_path):
    """The job protocol (the Slicer panel and the browser start jobs this way): ``job.json``'s ``model`` is the
    nnU-Net folder, the worker process resolves it with the same resolver."""
    import subprocess
    import sys

    from conftest import worker_env

    from ASSFTActive.jobs import EXIT_DONE, JobSpec, write_job

    job = tmp_path / "job"
    images = {p.name[: -len(".nii.gz")]: str(p) for p in sorted((pool / "images").glob("*.nii.gz"))}
    write_job(job, JobSpec(kind="rank", images=images, labels={}, model=str(folder), budget=1))
    done = subprocess.run(
        [sys.executable, "-m", "ASSFTActive.worker", str(job)],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == EXIT_DONE, done.stderr[-2000:]
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "done" and result["model_card"] == str(folder / "fold_0" / "checkpoint_final.pth")
    assert len(result["metrics"]["selected"]) == 1


def test_plans_written_before_nnunet_2_2_build_the_same_network(tmp_path):
    """nnU-Net 2.0/2.1 plans have no "architecture" but UNet_class_name, UNet_base_num_features,
    unet_max_num_features, conv_kernel_sizes, pool_op_kernel_sizes and n_conv_per_stage_encoder/decoder."""
    plans = copy.deepcopy(PLANS)
    config = plans["configurations"]["3d_fullres"]
    del config["architecture"]
    config.update(
        {
            "UNet_class_name": "PlainConvUNet",
            "UNet_base_num_features": 4,
            "unet_max_num_features": 16,
            "conv_kernel_sizes": ARCH_KWARGS["kernel_sizes"],
            "pool_op_kernel_sizes": ARCH_KWARGS["strides"],
            "n_conv_per_stage_encoder": [2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2],
        }
    )
    folder = write_nnunet_folder(tmp_path, plans=plans)
    model = load_model(resolve_card(folder))
    saved = nnunet.read_checkpoint(folder / "fold_0" / "checkpoint_final.pth")["network_weights"]
    assert model.report.missing == () and model.report.unexpected == ()
    assert all(torch.equal(v, saved[k]) for k, v in model.network.state_dict().items())


@pytest.mark.slow  # a whole job (or several processes) end to end; keeps the fast tier under 3 min
def test_the_guard_decides_about_an_adapted_nnunet_model_as_about_any_other(folder, tmp_path, capsys):
    """Adapt with the guard on (cross-validation over the labelled volumes): the random-weight network gains nothing,
    so the version is stored with the reason and the source stays the model in use."""
    write_dataset(tmp_path / "pool", count=5, labeled=3)
    store = tmp_path / "store"
    assert (
        main(
            tiny_adapt_args(
                tmp_path / "pool" / "images",
                tmp_path / "pool" / "labels",
                folder,
                store,
                iterations=6,
                semi_iterations=2,
                guard=True,
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "model site v1 was stored but NOT activated" in out and "cross-validated mean Dice" in out
    versions = ModelStore(store).versions("site")
    assert ModelStore(store).active("site") is None and [v.version for v in versions] == ["v1"]
