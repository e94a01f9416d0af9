"""Model cards load safely; every encoder tensor arrives, or loading refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import RESERVED_LIST, require

from ASSFTActive.errors import ModelError
from ASSFTActive.models import (
    EMBEDDED_DEFAULT_CARD,
    ModelCard,
    build_network,
    embedded_cards,
    load_card,
    load_model,
    load_weights,
    read_state_dict,
    save_card,
    save_weights,
)
from ASSFTActive.store import resolve_card

SWIN_ARGS = {"in_channels": 1, "out_channels": 3, "feature_size": 48}
SWIN_STAGES = ["swinViT.layers1.0", "swinViT.layers2.0", "swinViT.layers3.0", "swinViT.layers4.0"]


def _swin_card(tmp_path: Path, weights: str, fmt: str = "swinvit_ssl", args=None) -> ModelCard:
    card = ModelCard.from_dict(
        {
            "name": "swin-ssl",
            "architecture": "SwinUNETR",
            "arguments": args or SWIN_ARGS,
            "weights": weights,
            "weights_format": fmt,
            "class_names": ["background", "a", "b"],
            "encoder_stages": SWIN_STAGES,
            "patch_size": [64, 64, 64],
            "preprocessing": {"profile": "ct_window", "a_min": -1000, "a_max": 1000},
        }
    )
    save_card(card, tmp_path / "card.json")
    return load_card(tmp_path / "card.json")


def _published_swinvit_layout(network) -> dict:
    """Encoder tensors of ``network`` renamed to the layout of the published model_swinvit.pt."""
    state = {}
    for key, value in network.state_dict().items():
        if key.startswith("swinViT."):
            name = key[len("swinViT.") :].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
            state["module." + name] = value.clone()
    state["module.rotation_head.weight"] = torch.zeros(4, 768)  # an SSL head the segmentation net does not have
    return {"state_dict": state, "epoch": 100}


@pytest.fixture(scope="module")
def swin_source():
    torch.manual_seed(1)
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(**SWIN_ARGS)


def test_swinvit_ssl_checkpoint_loads_every_encoder_tensor_including_mlp(tmp_path, swin_source):
    checkpoint = _published_swinvit_layout(swin_source)
    mlp_keys = [k for k in checkpoint["state_dict"] if ".mlp.fc" in k]
    assert len(mlp_keys) == 32 and len(checkpoint["state_dict"]) == 127
    torch.save(checkpoint, tmp_path / "model_swinvit.pt")
    card = _swin_card(tmp_path, "model_swinvit.pt")
    network = build_network(card)
    report = load_weights(network, card)
    assert report.loaded == 126
    assert report.unexpected == ("rotation_head.weight",)
    assert all(not k.startswith("swinViT.") for k in report.missing)  # only decoder/head left random
    source, loaded = swin_source.state_dict(), network.state_dict()
    for key in loaded:
        if key.startswith("swinViT."):
            assert torch.equal(loaded[key], source[key]), key


def test_naively_prefixed_checkpoint_is_refused_because_the_encoder_did_not_load(tmp_path, swin_source):
    # the common recipe "module." -> "swinViT." without the fc1/fc2 renaming, declared as a plain state dict
    published = _published_swinvit_layout(swin_source)["state_dict"]
    state = {k.replace("module.", "swinViT."): v for k, v in published.items()}
    torch.save(state, tmp_path / "naive.pt")
    card = _swin_card(tmp_path, "naive.pt", fmt="state_dict")
    with pytest.raises(ModelError, match=r"encoder did not load \(32 encoder tensors missing"):
        load_weights(build_network(card), card)


def test_checkpoint_of_another_size_is_refused_with_the_offending_tensor(tmp_path, swin_source):
    torch.save(_published_swinvit_layout(swin_source), tmp_path / "model_swinvit.pt")
    card = _swin_card(tmp_path, "model_swinvit.pt", args={**SWIN_ARGS, "feature_size": 24})
    with pytest.raises(ModelError, match="checkpoint does not match the card: swinViT"):
        load_weights(build_network(card), card)


def test_pickled_model_object_is_never_unpickled(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pt")  # a pickled module, not a state dict
    with pytest.raises(ModelError, match="never unpickles"):
        read_state_dict(tmp_path / "whole_model.pt")


def test_unknown_checkpoint_layout_is_reported(tmp_path):
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, tmp_path / "odd.pt")
    with pytest.raises(ModelError, match="unknown checkpoint layout"):
        read_state_dict(tmp_path / "odd.pt")


def test_generic_card_builds_any_monai_network_and_round_trips_safetensors(tmp_path):
    card = ModelCard.from_dict(
        {
            "name": "basic",
            "architecture": "monai:BasicUNet",
            "arguments": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 8, 16, 4]},
            "weights": "w.safetensors",
            "class_names": ["background", "organ"],
            "encoder_stages": ["conv_0", "down_1", "down_2", "down_3", "down_4"],
            "patch_size": [32, 32, 32],
            "preprocessing": {"profile": "zscore_nonzero"},
        }
    )
    source = build_network(card)
    save_weights(source, tmp_path / "w.safetensors")
    save_card(card, tmp_path / "card.json")
    model = load_model(load_card(tmp_path / "card.json"))
    assert model.report.missing == () and model.report.unexpected == ()
    for key, value in source.state_dict().items():
        assert torch.equal(model.network.state_dict()[key], value)


def test_card_errors_name_the_problem(tmp_path):
    base = json.loads(EMBEDDED_DEFAULT_CARD.read_text())
    for change, message in [
        ({"architecture": "NoSuchNet"}, "architecture 'NoSuchNet' unknown"),
        ({"encoder_stages": ["nope"]}, r"encoder_stages \['nope'\] are not modules"),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"preprocessing": {"profile": "magic"}}, "preprocessing profile 'magic' unknown"),
    ]:
        path = tmp_path / "card.json"
        path.write_text(json.dumps({**base, **change}))
        with pytest.raises(ModelError, match=message):
            build_network(load_card(path))
    with pytest.raises(ModelError, match="model card not found"):
        load_card(tmp_path / "missing.json")


def test_embedded_default_card_loads_with_its_shipped_weights_and_records_its_split():
    card = resolve_card("default")
    assert card in embedded_cards()
    model = load_model(card)
    assert model.report.missing == () and model.report.unexpected == ()
    provenance = card.provenance
    assert provenance["seed"] == 0 and provenance["source_test_mean_dice"] > 0.7
    assert not set(provenance["train_cases"]) & set(provenance["source_test_cases"])


def test_embedded_default_card_never_trained_or_tested_on_a_reserved_case():
    provenance = resolve_card("default").provenance
    reserved = set(require(RESERVED_LIST).read_text().split())
    assert reserved and not reserved & set(provenance["train_cases"] + provenance["source_test_cases"])


def test_shipped_cards_and_saved_cards_follow_the_published_schema(tmp_path):
    import jsonschema

    from ASSFTActive.models import RESOURCES

    schema = json.loads((RESOURCES / "model-card.schema.json").read_text())
    for card in embedded_cards():
        jsonschema.validate(json.loads(card.path.read_text()), schema)
        save_card(card, tmp_path / "copy.json")
        jsonschema.validate(json.loads((tmp_path / "copy.json").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**json.loads(EMBEDDED_DEFAULT_CARD.read_text()), "patch_size": [1, 2]}, schema)


def _default_card_data(**changes):
    data = json.loads(EMBEDDED_DEFAULT_CARD.read_text())
    data.update(changes)
    return data


def _card_beside_weights(tmp_path: Path, **changes) -> Path:
    """The embedded default card, changed, in a folder of its own with a copy of its weights."""
    folder = tmp_path / "card"
    folder.mkdir(exist_ok=True)
    (folder / "weights.safetensors").write_bytes((EMBEDDED_DEFAULT_CARD.parent / "weights.safetensors").read_bytes())
    (folder / "card.json").write_text(json.dumps(_default_card_data(**changes)))
    return folder / "card.json"


@pytest.mark.parametrize("architecture", ["monai:__class__", "monai:resnet10", "monai:__builtins__", "monai:os"])
def test_card_architectures_are_limited_to_network_classes_of_monai(architecture):
    card = ModelCard.from_dict(_default_card_data(architecture=architecture))
    with pytest.raises(ModelError, match="not a network class"):
        build_network(card)


@pytest.mark.parametrize(
    "architecture", ["monai:EfficientNetBN", "monai:ResNetFeatures", "monai:MILModel", "monai:DenseNet121"]
)
def test_networks_whose_constructors_may_download_are_refused_before_they_are_built(architecture, monkeypatch):
    """EfficientNetBN, ResNetFeatures and MILModel default to pretrained=True (a download into $HOME/.cache, or a
    ModuleNotFoundError traceback for torchvision / huggingface_hub); none is ever constructed."""
    from monai.networks import nets

    name = architecture.split(":")[1]
    monkeypatch.setattr(
        nets,
        name,
        type(name, (getattr(nets, name),), {"__init__": _never_called, "__module__": "monai.networks.nets.x"}),
    )
    card = ModelCard.from_dict(
        _default_card_data(architecture=architecture, arguments={"spatial_dims": 3, "in_channels": 1, "num_classes": 3})
    )
    with pytest.raises(ModelError, match="not one of the networks ASSFT builds"):
        build_network(card)


def _never_called(self, *args, **kwargs):
    raise AssertionError("the constructor of a refused network ran")


def test_every_allowed_network_exists_and_has_no_constructor_argument_that_fetches_weights():
    import inspect

    from monai.networks import nets

    from ASSFTActive.models import ALLOWED_MONAI_NETWORKS

    for name in ALLOWED_MONAI_NETWORKS:
        builder = getattr(nets, name)
        parameters = inspect.signature(builder).parameters
        fetching = [
            p for p in parameters if any(w in p.lower() for w in ("pretrain", "weights", "url", "download", "hub"))
        ]
        assert inspect.isclass(builder) and fetching == [], (name, fetching)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                "channels": [8, 16, 32],
                "strides": [2, 2],
                "kernel_size": 0,
            },
            "arguments do not fit",
        ),
        (
            {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": 3,
                "channels": [4096, 8192, 16384, 32768],
                "strides": [2, 2, 2],
            },
            "parameters",
        ),
    ],
)
def test_card_arguments_that_cannot_build_a_network_are_card_errors_not_tracebacks(arguments, message):
    card = ModelCard.from_dict(_default_card_data(arguments=arguments))
    with pytest.raises(ModelError, match=message):
        build_network(card)


def test_a_network_needing_a_missing_optional_package_is_a_card_error(monkeypatch):
    from monai.networks import nets
    from monai.utils import OptionalImportError

    def needs_einops(self, *args, **kwargs):
        raise OptionalImportError("required package `einops` is not installed")

    monkeypatch.setattr(
        nets,
        "UNETR",
        type("UNETR", (nets.UNETR,), {"__init__": needs_einops, "__module__": "monai.networks.nets.unetr"}),
    )
    card = ModelCard.from_dict(
        _default_card_data(architecture="monai:UNETR", arguments={"in_channels": 1, "out_channels": 3, "img_size": 32})
    )
    with pytest.raises(ModelError, match="needs an optional package that is not installed.*einops"):
        build_network(card)


def test_card_arguments_that_would_download_weights_are_refused():
    with pytest.raises(ModelError, match="fetch weights from the internet"):
        ModelCard.from_dict(
            _default_card_data(
                architecture="monai:DenseNet121",
                arguments={"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "pretrained": True},
            )
        )


def test_out_channels_must_match_the_class_names():
    names = ["background", "anterior", "posterior", "tail"]
    with pytest.raises(ModelError, match="out_channels = 3 but class_names lists 4"):
        ModelCard.from_dict(_default_card_data(class_names=names))
    card = ModelCard.from_dict(
        _default_card_data(
            architecture="BasicUNet", class_names=names[:3], arguments={"spatial_dims": 3, "in_channels": 1}
        )
    )
    with pytest.raises(ModelError, match="out_channels = 2 but class_names lists 3"):
        build_network(card)  # BasicUNet's default out_channels is 2


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"spacing": [-1.0, 1.0, 1.0]}, "spacing must be"),
        ({"spacing": [0, 1, 1]}, "spacing must be"),
        ({"spacing": "1mm"}, "'spacing' must be"),
        ({"patch_size": [100000, 64, 48]}, "patch_size must be"),
        ({"patch_size": [1, 1, 1]}, "patch_size must be"),
        ({"patch_size": "48"}, "'patch_size' must be"),
        ({"class_names": "background,a"}, "'class_names' must be"),
        ({"arguments": [1, 2]}, "'arguments' must be"),
        ({"name": 3}, "'name' must be"),
        ({"preprocessing": {"profile": "ct_window", "a_min": 5, "a_max": 5}}, "a_min < a_max"),
        ({"preprocessing": {"profile": "ct_window", "a_max": 5}}, "a_min < a_max"),
        ({"preprocessing": {"profile": "ct_window", "a_min": "low", "a_max": 5}}, "a_min < a_max"),
    ],
)
def test_implausible_or_mistyped_card_fields_are_refused(changes, message):
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(_default_card_data(**changes))


def test_card_weights_outside_the_card_folder_are_refused_unless_allowed(tmp_path, monkeypatch):
    from ASSFTActive.models import ALLOW_EXTERNAL_WEIGHTS_ENV, load_model

    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((EMBEDDED_DEFAULT_CARD.parent / "weights.safetensors").read_bytes())
    for weights in ("../elsewhere.safetensors", str(outside)):
        card = load_card(_card_beside_weights(tmp_path, weights=weights))
        with pytest.raises(ModelError, match="outside the card's folder"):
            load_model(card)
    (tmp_path / "card" / "link.safetensors").symlink_to(outside)
    with pytest.raises(ModelError, match="outside the card's folder"):
        load_model(load_card(_card_beside_weights(tmp_path, weights="link.safetensors")))
    monkeypatch.setenv(ALLOW_EXTERNAL_WEIGHTS_ENV, "1")
    assert load_model(load_card(_card_beside_weights(tmp_path, weights=str(outside)))).report.loaded > 0
