"""The activation record says what the guard cannot see: cross-validation scores against the same labels, so it
cannot detect labels of the wrong meaning; the label checks before training can, unless they only warned
(issue 29.6)."""

from __future__ import annotations

from types import SimpleNamespace

from ASSFTActive.finetune.adapt import decide_activation
from ASSFTActive.finetune.config import FinetuneConfig, ValidationConfig
from ASSFTActive.models import EMBEDDED_DEFAULT_CARD, load_card


def _run(**settings):
    return SimpleNamespace(
        card=load_card(EMBEDDED_DEFAULT_CARD),
        config=FinetuneConfig(validation=ValidationConfig(guard=False), **settings),
    )


def test_the_record_says_cross_validation_cannot_detect_mislabelling_and_what_checked_instead():
    decision = decide_activation(_run(), [], None, 10)
    note = decision.to_dict()["label_meaning"]
    assert "cannot detect labels of the wrong meaning" in note
    assert "passed the label checks" in note and "hippocampus" in note


def test_the_record_says_when_the_label_checks_only_warned():
    note = decide_activation(_run(allow_implausible_labels=True), [], None, 10).label_meaning
    assert "only warned" in note and "neither the checks nor the guard vouch" in note
    assert "partial labels declared" in decide_activation(_run(partial_labels=True), [], None, 10).label_meaning
