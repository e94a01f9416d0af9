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
