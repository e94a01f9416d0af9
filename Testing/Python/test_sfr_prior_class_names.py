"""SFR refuses a SAM prior whose classes have the model's count but other names or another order (issue 29.8)."""

from __future__ import annotations

import json
import shutil

import pytest

from ASSFTActive.errors import ModelError
from ASSFTActive.models import EMBEDDED_DEFAULT_CARD, load_card
from ASSFTActive.sfr.pipeline import Sfr
from ASSFTActive.sfr.prior import PRIOR_DIR


def _prior_with(tmp_path, class_names):
    folder = tmp_path / "prior"
    shutil.copytree(PRIOR_DIR, folder)
    card = json.loads((folder / "sam-card.json").read_text())
    card["class_names"] = class_names
    (folder / "sam-card.json").write_text(json.dumps(card))
    return folder


def test_a_prior_with_swapped_class_names_is_refused(tmp_path):
    method = Sfr(sam_prior=_prior_with(tmp_path, ["background", "posterior", "anterior"]))
    said = "names its classes \\['posterior', 'anterior'\\].*\\['anterior', 'posterior'\\]"
    with pytest.raises(ModelError, match=said):
        method.load(load_card(EMBEDDED_DEFAULT_CARD), None)


def test_a_prior_with_the_models_class_names_loads(tmp_path):
    method = Sfr(sam_prior=_prior_with(tmp_path, ["background", "anterior", "posterior"]))
    method.load(load_card(EMBEDDED_DEFAULT_CARD), None)
    assert method.prior is not None and method.prior.class_names[1:] == ("anterior", "posterior")
