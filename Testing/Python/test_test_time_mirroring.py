"""Test-time mirroring (the card's ``test_time_mirroring``): each window's logits are the mean over every flip
combination of the card's axes, as nnU-Net's default predictor computes them; cards without it predict with one pass;
the nnU-Net source takes the axes from the checkpoint and maps nnU-Net's network axes to ASSFT's model-space axes.

The references here are written out independently: the flip combinations listed by hand, and nnU-Net's
``_internal_maybe_mirror_and_predict`` recomputed on the bare ``PlainConvUNet`` in nnU-Net's own axis order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ASSFTActive.cards import RESOURCES, ModelCard, load_card
from ASSFTActive.errors import ModelError
from ASSFTActive.inference import Predictor
from ASSFTActive.inference.predictor import mirrored_logits
from ASSFTActive.io import Volume
from ASSFTActive.models import LoadedModel, LoadReport, load_model
from ASSFTActive.sources import nnunet
from ASSFTActive.store import resolve_card

pytestmark = pytest.mark.usefixtures("one_thread")


class _Skewed(nn.Module):
    """A network that is not flip-equivariant along any axis: an asymmetric kernel plus a position-dependent ramp.
    Encoder stage ``conv``; input ``[B, 1, I, J, K]``, logits ``[B, 2, I, J, K]``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        ramp = (
            torch.linspace(0.0, 1.0, x.shape[2])[:, None, None]
            + torch.linspace(0.0, 2.0, x.shape[3])[:, None]
            + torch.linspace(0.0, 3.0, x.shape[4])
        )
        return self.head(torch.relu(self.conv(x))) + ramp


def _model(mirror) -> LoadedModel:
    card = ModelCard(
        name="skewed",
        architecture="test",
        arguments={},
        weights="none.pt",
        class_names=("background", "fg"),
        encoder_stages=("conv",),
        patch_size=(8, 8, 8),
        preprocessing={"profile": "zscore_nonzero"},
        orientation=None,
        test_time_mirroring=mirror,
    )
    return LoadedModel(card=card, network=_Skewed().eval(), report=LoadReport(loaded=0, missing=(), unexpected=()))


def test_mirrored_window_forward_is_the_mean_of_the_flipped_passes():
    model = _model((0, 2))
    window = torch.randn(2, 1, 8, 8, 8)
    net = model.network
    with torch.no_grad():
        expected = (
            net(window) + net(window.flip(2)).flip(2) + net(window.flip(4)).flip(4) + net(window.flip(2, 4)).flip(2, 4)
        ) / 4
        ours = Predictor(model, device=torch.device("cpu"))._window_logits(window)
        plain = net(window)
    assert ours.shape == (2, 2, 8, 8, 8)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(ours, plain, atol=1e-3)  # the network is not flip-equivariant: mirroring matters


def test_all_three_axes_average_eight_passes():
    net = _Skewed().eval()
    window = torch.randn(1, 1, 6, 7, 8)
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.no_grad():
        expected = sum(net(window.flip(f)).flip(f) if f else net(window) for f in flips) / 8
        assert torch.allclose(mirrored_logits(net, window, (0, 1, 2)), expected, atol=1e-6)


class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _volume() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.normal(5.0, 1.0, (12, 10, 9)).astype(np.float32), np.eye(4))


def test_a_card_without_mirroring_predicts_with_one_pass_per_window():
    plain = _model(None)
    window = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(Predictor(plain, device=torch.device("cpu"))._window_logits(window), plain.network(window))
    counted = dataclasses.replace(plain, network=_Counting(plain.network))
    counted_card = dataclasses.replace(counted.card, encoder_stages=("inner.conv",))
    counted = dataclasses.replace(counted, card=counted_card)
    Predictor(counted, device=torch.device("cpu")).predict(_volume())
    windows = counted.network.calls
    mirrored = dataclasses.replace(
        counted, card=dataclasses.replace(counted_card, test_time_mirroring=(0, 1, 2)), network=_Counting(plain.network)
    )
    Predictor(mirrored, device=torch.device("cpu")).predict(_volume())
    assert windows >= 1 and mirrored.network.calls == 8 * windows  # ranking cost: 2 ** len(axes) passes per window


def test_encoder_features_come_from_the_unflipped_pass_only():
    volume = _volume()
    plain = Predictor(_model(None), device=torch.device("cpu")).predict(volume)
    mirrored = Predictor(_model((0, 1, 2)), device=torch.device("cpu")).predict(volume)
    assert len(mirrored.features) == 1 and mirrored.features[0].shape == (4,)
    np.testing.assert_array_equal(mirrored.features[0], plain.features[0])
    assert not np.array_equal(mirrored.maps.entropy, plain.maps.entropy)  # but the prediction did change


# --------------------------------------------------------------------------------------------- the nnU-Net source

pytest.importorskip(
    "dynamic_network_architectures", reason="dynamic-network-architectures is not installed (requirements.txt pins it)"
)
import nnunet_layout as nnunet_tests  # noqa: E402


@pytest.mark.parametrize(
    "transpose, nnunet_axes, expected",
    [
        ([0, 1, 2], (0, 1, 2), [0, 1, 2]),
        ([0, 1, 2], (0,), [2]),  # network axis 0 is SimpleITK's first axis, ASSFT's k
        ([1, 0, 2], (0,), [1]),  # network [j, k, i]: axis 0 is j
        ([1, 0, 2], (1, 2), [0, 2]),
        ([0, 1, 2], None, None),
    ],
)
def test_nnunet_checkpoint_axes_become_model_space_axes(tmp_path, transpose, nnunet_axes, expected):
    plans = copy.deepcopy(nnunet_tests.PLANS)
    plans["transpose_forward"], plans["transpose_backward"] = transpose, transpose
    folder = nnunet_tests.write_nnunet_folder(tmp_path, plans=plans, mirror_axes=nnunet_axes)
    card = resolve_card(folder)
    assert card.test_time_mirroring == (tuple(expected) if expected is not None else None)
    assert card.provenance["inference_allowed_mirroring_axes"] == (list(nnunet_axes) if nnunet_axes else None)
    assert "test-time mirroring" not in card.provenance["not_reproduced"]


def test_nnunet_mirrored_window_logits_equal_nnunets_mirroring_in_its_own_axis_order(tmp_path):
    """nnU-Net's mirroring recomputed on the bare network: permute the window into nnU-Net's axes, average
    ``flip(net(flip(x)))`` over the checkpoint's axes combinations (+2 for batch and channel), permute back."""
    import itertools

    plans = copy.deepcopy(nnunet_tests.PLANS)
    plans["transpose_forward"], plans["transpose_backward"] = [1, 0, 2], [1, 0, 2]
    folder = nnunet_tests.write_nnunet_folder(tmp_path, plans=plans, mirror_axes=(0, 2))
    model = load_model(resolve_card(folder))
    reference = nnunet_tests.nnunet_network()
    reference.load_state_dict(model.network.state_dict())
    reference.decoder.deep_supervision = False
    reference.eval()
    x = torch.randn(1, 1, 20, 12, 16)  # ASSFT [i, j, k]; nnU-Net's network sees [j, k, i]
    theirs_in = x.permute(0, 1, 3, 4, 2)
    mirror = [m + 2 for m in (0, 2)]
    combos = [c for n in range(len(mirror)) for c in itertools.combinations(mirror, n + 1)]
    with torch.no_grad():
        theirs = reference(theirs_in)
        for axes in combos:
            theirs = theirs + torch.flip(reference(torch.flip(theirs_in, axes)), axes)
        theirs = (theirs / (len(combos) + 1)).permute(0, 1, 4, 2, 3)
        ours = Predictor(model, device=torch.device("cpu"))._window_logits(x)
        plain = model.network(x)
    assert model.card.test_time_mirroring == (0, 1)  # network axes 0 (j) and 2 (i)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(plain, theirs, atol=1e-3)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_axes_are_read_without_torch_and_without_running_the_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "network_weights": {"w": torch.ones(2)},
            "trainer": _RunsCode(str(marker)),
            "_best_ema": np.float64(0.4),
            "inference_allowed_mirroring_axes": (1, 2),
        },
        path,
    )
    assert nnunet.checkpoint_mirroring_axes(path) == (1, 2)
    assert not marker.exists()
    torch.save({"network_weights": {"w": torch.ones(2)}, "inference_allowed_mirroring_axes": None}, path)
    assert nnunet.checkpoint_mirroring_axes(path) is None
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelError, match="checkpoint"):
        nnunet.checkpoint_mirroring_axes(path)


def test_check_card_says_mirroring_is_applied(tmp_path, capsys):
    from ASSFTActive.cli import main

    folder = nnunet_tests.write_nnunet_folder(tmp_path)
    assert main(["check-card", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "applied:      test-time mirroring over model axes [0, 1, 2] (nnU-Net axes (0, 1, 2); 8 passes" in out
    assert "not applied:  crop to the non-zero box" in out and "mirroring" not in out.split("not applied:")[1]


def test_card_field_is_validated_and_written_only_when_set(tmp_path):
    import jsonschema

    schema = json.loads((RESOURCES / "model-card.schema.json").read_text())
    card = _model((0, 2)).card
    data = card.to_dict()
    assert data["test_time_mirroring"] == [0, 2]
    jsonschema.validate(data, schema)
    assert "test_time_mirroring" not in _model(None).card.to_dict()  # other cards are written as before
    path = tmp_path / "card.json"
    path.write_text(json.dumps(data))
    assert load_card(path).test_time_mirroring == (0, 2)
    for bad in ([3], [0, 0], [], ["0"], [True]):
        path.write_text(json.dumps({**data, "test_time_mirroring": bad}))
        with pytest.raises(ModelError, match="test_time_mirroring"):
            load_card(path)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**data, "test_time_mirroring": bad}, schema)


@pytest.mark.parametrize("protocol", range(6))
def test_the_axes_are_parsed_from_the_opcodes_in_every_pickle_protocol_and_objects_are_refused(protocol):
    import pickle
    import pickletools

    key = "inference_allowed_mirroring_axes"

    def parse(value):
        data = pickle.dumps({"a": 1, key: value, "z": [1, 2]}, protocol=protocol)
        return nnunet._axes_after_key([(op.name, arg) for op, arg, _ in pickletools.genops(data)], key)

    for value in [(0, 1, 2), (1, 2), (2,), (), [0, 2], [], (300, 70000)]:
        assert parse(value) == tuple(value)
    assert parse(None) is None
    for bad in [("a",), ((1, 2),), 3.5, {1: 2}, _RunsCode("never")]:
        with pytest.raises(ValueError, match=key):
            parse(bad)
