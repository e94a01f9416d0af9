"""MONAI bundles as a model source: the card read from configs/inference.json and configs/metadata.json without
running the bundle's code, the weights from models/model.pt, and rank / check-card / adapt on the bundle folder.

The configs are written here in the structure of the MONAI model zoo's ``spleen_ct_segmentation`` bundle
(``imports``, ``$`` expressions for paths and the device, ``network_def`` -> ``network``, a ``Compose`` of
preprocessing transforms, ``SlidingWindowInferer``, post-processing, ``CheckpointLoader`` handler, evaluator) and its
``metadata.json`` (``network_data_format.outputs.pred.channel_def``). ``models/model.pt`` is the state dict of a
randomly initialised network, as the model zoo's bundles store it.
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
from ASSFTActive.models import load_model
from ASSFTActive.store import ModelStore, resolve_card, resolve_card_path

pytestmark = pytest.mark.usefixtures("one_thread")

SPLEEN_INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 4,
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "meta_key_postfix": "meta_dict",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "resample": False,
                "squeeze_end_dims": True,
            },
        ],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
        },
        {"_target_": "StatsHandler", "iteration_log": False},
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": True,
    },
    "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
    "run": ["$@evaluator.run()"],
}

SPLEEN_METADATA = {
    "version": "0.5.9",
    "monai_version": "1.3.0",
    "name": "Spleen CT segmentation",
    "task": "Decathlon spleen segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of the spleen from CT image",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "hounsfield",
                "modality": "CT",
                "num_channels": 1,
                "spatial_shape": [96, 96, 96],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "image",
                "format": "segmentation",
                "num_channels": 2,
                "spatial_shape": [96, 96, 96],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {"0": "background", "1": "spleen"},
            }
        },
    },
}


def small_bundle_configs():
    """The spleen bundle's structure around a network and patch small enough for CI, three classes, MRI-like
    z-scoring (as MONAI's brats bundle) and the synthetic volumes' spacing (``write_dataset``: 1 x 1 x 1.5 mm)."""
    inference = copy.deepcopy(SPLEEN_INFERENCE)
    inference["network_def"].update(
        {
            "out_channels": "@num_classes",
            "channels": [4, 8, 16],
            "strides": [2, 2],
            "num_res_units": 1,
            "norm": "instance",
        }
    )
    inference["num_classes"] = 3
    transforms = inference["preprocessing"]["transforms"]
    transforms[3]["pixdim"] = [1.0, 1.0, 1.5]
    transforms[4] = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}
    inference["inferer"]["roi_size"] = [24, 24, 16]
    metadata = copy.deepcopy(SPLEEN_METADATA)
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "a", "2": "b"}
    return inference, metadata


def write_bundle(folder: Path, inference=SPLEEN_INFERENCE, metadata=SPLEEN_METADATA, seed: int = 0) -> Path:
    """A bundle folder with a random network's state dict built by MONAI from ``network_def`` (ConfigParser)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    torch.manual_seed(seed)
    network = reference_network(folder)
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


def reference_network(folder: Path) -> torch.nn.Module:
    """``network_def`` instantiated by MONAI's own ConfigParser (safe here: the test wrote the config)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def spleen(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    inference, metadata = small_bundle_configs()
    return write_bundle(tmp_path_factory.mktemp("bundles") / "small_bundle", inference, metadata)


def test_spleen_bundle_resolves_to_a_card_with_its_network_preprocessing_and_classes(spleen):
    card = resolve_card(spleen)
    assert resolve_card_path(spleen) == (spleen / "models" / "model.pt").resolve()
    assert card.architecture == "monai:UNet"
    assert dict(card.arguments) == {k: v for k, v in SPLEEN_INFERENCE["network_def"].items() if k != "_target_"}
    assert card.class_names == ("background", "spleen")
    assert card.preprocessing == {"profile": "ct_window", "a_min": -57.0, "a_max": 164.0}
    assert card.spacing == (1.5, 1.5, 2.0) and card.orientation == "RAS" and card.patch_size == (96, 96, 96)
    assert card.provenance["source"] == "monai_bundle" and card.provenance["version"] == "0.5.9"
    assert resolve_card(card.path) == card


def test_bundle_weights_load_exactly_into_the_network_configparser_builds(spleen):
    model = load_model(resolve_card(spleen))
    reference = reference_network(spleen)
    saved = torch.load(str(spleen / "models" / "model.pt"), weights_only=True)
    assert model.report.missing == () and model.report.unexpected == ()
    assert list(model.network.state_dict()) == list(reference.state_dict())
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_references_to_literals_resolve_and_code_is_refused(tmp_path, small):
    card = resolve_card(small)
    assert card.arguments["out_channels"] == 3 and card.class_names == ("background", "a", "b")
    inference, metadata = small_bundle_configs()
    inference["network_def"]["channels"] = "$[4, 8, 16]"
    with pytest.raises(ModelError, match="does not run code from a bundle"):
        resolve_card(write_bundle_files(tmp_path / "expr", inference, metadata))
    inference, metadata = small_bundle_configs()
    inference["network_def"]["_target_"] = "os.system"
    with pytest.raises(ModelError, match="not a MONAI network name"):
        resolve_card(write_bundle_files(tmp_path / "target", inference, metadata))


def write_bundle_files(folder: Path, inference, metadata, weights=None) -> Path:
    """Configs and a weights file without building the network (for configs MONAI would refuse or run)."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.save(weights if weights is not None else {"x": torch.zeros(1)}, folder / "models" / "model.pt")
    return folder


def test_preprocessing_the_card_cannot_express_is_refused_by_name(tmp_path):
    inference, metadata = small_bundle_configs()
    inference["preprocessing"]["transforms"].insert(
        4, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 10}
    )
    with pytest.raises(ModelError, match=r"CropForegroundd\(source_key='image', margin=10\)"):
        resolve_card(write_bundle_files(tmp_path / "crop", inference, metadata))


def test_a_pickled_whole_model_is_refused(tmp_path):
    inference, metadata = small_bundle_configs()
    folder = write_bundle(tmp_path / "pickled", inference, metadata)
    torch.save(reference_network(folder), folder / "models" / "model.pt")
    with pytest.raises(ModelError, match="never unpickles model objects"):
        load_model(resolve_card(folder))


def test_check_card_rank_and_adapt_run_on_the_bundle(small, tmp_path, capsys):
    assert main(["check-card", str(small), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "monai:UNet" in out and "0 missing, 0 unexpected" in out and "zscore_nonzero" in out and "keep_zeros" in out
    assert "MONAI bundle" in out and "the card is usable" in out
    write_dataset(tmp_path / "pool", count=4, labeled=2)
    images, labels = tmp_path / "pool" / "images", tmp_path / "pool" / "labels"
    ranked = tmp_path / "ranked"
    assert (
        main(
            [
                "rank",
                "--images",
                str(images),
                "--model",
                str(small),
                "--budget",
                "1",
                "--out",
                str(ranked),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    cases = json.loads((ranked / "ranking.json").read_text())["cases"]
    assert len(cases) == 4 and sum(c["selected"] for c in cases) == 1
    assert all(np.isfinite(c["dkd"]) for c in cases)
    store = tmp_path / "store"
    assert main(tiny_adapt_args(images, labels, small, store, iterations=4, semi_iterations=2)) == 0
    adapted = resolve_card(store / "site")
    assert ModelStore(store).active("site").version == "v1"
    assert adapted.architecture == "monai:UNet" and adapted.pretrained_card() == resolve_card(small)
    overlay_evaluate_and_rerank(small, images, labels, tmp_path / "source")
    overlay_evaluate_and_rerank(store / "site", images, labels, tmp_path / "adapted")


def test_bundle_preprocessing_equals_monais_own_transforms_on_a_volume(small, tmp_path):
    """ASSFT's model-space input for the bundle's card against the bundle's Compose run by MONAI, on a volume stored
    left-right flipped (Orientationd flips it) with zero voxels (NormalizeIntensityd nonzero leaves them at 0)."""
    from monai.bundle import ConfigParser

    from ASSFTActive.inference.preprocess import to_model_space
    from ASSFTActive.io import Volume, write_volume

    rng = np.random.default_rng(1)
    image = rng.normal(200.0, 50.0, (24, 24, 20)).astype(np.float32)
    image[:3] = 0.0
    image[10:12, 10:12, 10:12] = 0.0
    path = write_volume(Volume(image, np.diag([-1.0, 1.0, 1.5, 1.0])), tmp_path / "flipped.nii.gz")
    parser = ConfigParser()
    parser.read_config(str(small / "configs" / "inference.json"))
    theirs = parser.get_parsed_content("preprocessing")({"image": str(path)})["image"][0].numpy()
    from ASSFTActive.io import read_volume

    ours, space = to_model_space(read_volume(path), resolve_card(small))
    assert ours.shape[1:] == theirs.shape
    print(f"bundle preprocessing: max |ASSFT - MONAI| = {np.abs(ours[0].numpy() - theirs).max():.2e}")
    assert np.abs(ours[0].numpy() - theirs).max() < 1e-4


def test_a_bundle_of_the_shipped_unet_scores_the_dice_monais_own_pipeline_scores(hippocampus_dir, tmp_path):
    """The embedded hippocampus UNet written as a MONAI bundle: ASSFT's Dice on source-test volumes through the
    bundle folder equals the Dice of the bundle's own preprocessing, network and SlidingWindowInferer run by MONAI
    (issue 28: difference at most 0.01)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
    from safetensors.torch import load_file

    from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD, load_card
    from ASSFTActive.evaluate import LabelledCase, dice_per_class, evaluate_cases

    default = load_card(EMBEDDED_DEFAULT_CARD)
    inference = copy.deepcopy(SPLEEN_INFERENCE)
    inference["network_def"] = {"_target_": "UNet", **default.arguments}
    transforms = inference["preprocessing"]["transforms"]
    transforms[3]["pixdim"] = list(default.spacing)
    transforms[4] = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}
    inference["inferer"].update({"roi_size": list(default.patch_size), "sw_batch_size": 1, "mode": "gaussian"})
    metadata = copy.deepcopy(SPLEEN_METADATA)
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = dict(enumerate(default.class_names))
    folder = write_bundle_files(
        tmp_path / "hippocampus_bundle", inference, metadata, weights=load_file(str(default.weights_path))
    )
    cases = default.provenance["source_test_cases"][:8]
    images = [hippocampus_dir / "imagesTr" / f"{c}.nii.gz" for c in cases]
    labels = [hippocampus_dir / "labelsTr" / f"{c}.nii.gz" for c in cases]

    ours = evaluate_cases(
        load_model(resolve_card(folder)),
        [LabelledCase(c, i, lab) for c, i, lab in zip(cases, images, labels)],
        hd95=False,
        device=torch.device("cpu"),
    )
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(str(folder / "models" / "model.pt"), weights_only=True))
    network.eval()
    label_transform = Compose(
        [
            LoadImaged("label"),
            EnsureChannelFirstd("label"),
            Orientationd("label", "RAS"),
            Spacingd("label", list(default.spacing), mode="nearest"),
        ]
    )
    theirs = []
    with torch.no_grad():
        for image, label in zip(images, labels):
            x = preprocessing({"image": str(image)})["image"][None]
            prediction = inferer(x, network).argmax(1)[0].numpy()
            truth = label_transform({"label": str(label)})["label"][0].numpy().astype(np.int64)
            theirs.append(dice_per_class(prediction, truth, default.num_classes))
    ours_mean = float(np.mean([np.mean(case.dice) for case in ours.cases]))
    theirs_mean = float(np.mean([np.mean(d) for d in theirs]))
    print(
        f"mean Dice over {len(cases)} source-test volumes: ASSFT through the bundle {ours_mean:.6f}, "
        f"MONAI's own bundle pipeline {theirs_mean:.6f}"
    )
    assert ours_mean > 0.5
    assert abs(ours_mean - theirs_mean) <= 0.01


def test_an_incomplete_bundle_says_what_is_missing(tmp_path, small):
    import shutil

    yaml_bundle = tmp_path / "yaml"
    shutil.copytree(small, yaml_bundle)
    (yaml_bundle / "configs" / "inference.json").rename(yaml_bundle / "configs" / "inference.yaml")
    with pytest.raises(ModelError, match="YAML"):
        resolve_card(yaml_bundle)
    scripted = tmp_path / "scripted"
    shutil.copytree(small, scripted)
    (scripted / "models" / "model.pt").rename(scripted / "models" / "model.ts")
    with pytest.raises(ModelError, match="TorchScript model.ts is code"):
        resolve_card(scripted)
