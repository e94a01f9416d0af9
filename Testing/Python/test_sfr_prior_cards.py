"""A SAM prior card is data from anywhere: sizes that cannot build a network are a clear card error (29.13)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

pytest.importorskip("torch")

from ASSFTActive.errors import ModelError  # noqa: E402
from ASSFTActive.sfr.prior import CARD_FILE, PRIOR_DIR, load_sam_prior  # noqa: E402


@pytest.mark.parametrize(
    "change, field",
    [
        ({"patch_size": 0}, "patch_size"),
        ({"image_size": -256}, "image_size"),
        ({"depth": 100000}, "depth"),
        ({"embed_dim": 2**20}, "embed_dim"),
        ({"mlp_ratio": math.nan}, "mlp_ratio"),
        ({"num_heads": True}, "num_heads"),
        ({"pixel_std": [0.0, 1.0, 1.0]}, "pixel_std"),
    ],
)
def test_a_prior_card_with_impossible_sizes_is_refused_naming_the_card_and_the_size(tmp_path, change, field):
    folder = tmp_path / "prior"
    shutil.copytree(PRIOR_DIR, folder)
    card = json.loads((folder / CARD_FILE).read_text())
    card["sam_config"].update(change)
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=f"{CARD_FILE}.*SamConfig.{field}"):
        load_sam_prior(folder)


def test_the_embedded_prior_still_loads():
    prior = load_sam_prior()
    assert prior.class_names and prior.model is not None


def _prior_folder(tmp_path, change):
    folder = tmp_path / "prior"
    shutil.copytree(PRIOR_DIR, folder)
    card = json.loads((folder / CARD_FILE).read_text())
    (folder / CARD_FILE).write_text(change(card))
    return folder


@pytest.mark.parametrize(
    "change, said",
    [
        (lambda card: json.dumps([card]), "the card must be a JSON object, got list"),
        (lambda card: json.dumps(dict(card, sam_config="big")), "sam_config must be a JSON object of SamConfig"),
        (
            lambda card: json.dumps(
                dict(
                    card,
                    class_names=["background", "hippocampus"],
                    sam_config=dict(card["sam_config"], num_mask_tokens=2),
                )
            ),
            "its weights weights.safetensors do not fit its sam_config: .*unexpected: mask_decoder",
        ),
    ],
    ids=["card-is-a-list", "sam-config-is-a-string", "two-classes-three-class-weights"],
)
def test_a_prior_card_of_the_wrong_shape_is_refused_naming_the_card_and_what_is_wrong(tmp_path, change, said):
    folder = _prior_folder(tmp_path, change)
    with pytest.raises(ModelError, match=f"{CARD_FILE}.*{said}"):
        load_sam_prior(folder)


def test_a_3d_model_card_folder_given_as_the_sam_prior_is_named_as_such():
    from ASSFTActive.cards import EMBEDDED_DEFAULT_CARD

    with pytest.raises(ModelError, match="holds card.json, a 3D model card, not a SAM prior"):
        load_sam_prior(EMBEDDED_DEFAULT_CARD.parent)


def _weights_as_pickle(folder):
    import torch
    from safetensors.torch import load

    weights = folder / "weights.safetensors"
    torch.save(load(weights.read_bytes()), str(weights))  # the same tensors, pickled (not memory-mapped: rewritten)


def _weights_linked_outside(folder):
    outside = folder.parent / "outside.safetensors"
    (folder / "weights.safetensors").rename(outside)
    (folder / "weights.safetensors").symlink_to(outside)


@pytest.mark.parametrize(
    "spoil, said",
    [
        (lambda folder: (folder / CARD_FILE).unlink(), f"cannot read the SAM prior card .*{CARD_FILE}"),
        (lambda folder: (folder / CARD_FILE).write_text("{bad json"), f"cannot read the SAM prior card .*{CARD_FILE}"),
        (
            lambda folder: (folder / "weights.safetensors").unlink(),
            "cannot read SAM prior weights .*weights.safetensors",
        ),
        (_weights_as_pickle, "cannot read SAM prior weights .*weights.safetensors"),
        (_weights_linked_outside, "weights 'weights.safetensors' lie outside the card's folder"),
    ],
    ids=["no-card", "card-not-json", "no-weights", "pickled-weights", "weights-linked-outside"],
)
def test_a_prior_folder_that_cannot_be_read_safely_is_refused_naming_the_file(tmp_path, spoil, said):
    folder = tmp_path / "prior"
    shutil.copytree(PRIOR_DIR, folder)
    spoil(folder)
    with pytest.raises(ModelError, match=said):
        load_sam_prior(folder)
