"""Adaptation refuses labels that would train a model on nothing or on another structure, unless allowed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST_FINETUNE, make_tiny_card, write_dataset

from ASSFTActive.errors import InputError
from ASSFTActive.finetune.adapt import adapt_model
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.finetune.label_checks import find_label_issues, require_plausible_labels
from ASSFTActive.io import read_volume, write_volume
from ASSFTActive.store import ModelStore

CLASSES = ("background", "anterior", "posterior")


def _label(*classes: int) -> np.ndarray:
    array = np.zeros((6, 6, 6), np.uint8)
    for index, value in enumerate(classes):
        array[index, :2, :2] = value
    return array


def test_plausible_labels_raise_nothing():
    assert find_label_issues({"a": _label(1), "b": _label(1, 2)}, CLASSES) == []


def test_an_all_background_label_is_named():
    issues = find_label_issues({"a": _label(1, 2), "empty_one": _label()}, CLASSES)
    assert [(i.kind, i.cases) for i in issues] == [("no_foreground", ("empty_one",))]


def test_a_class_no_labelled_volume_contains_is_named_with_the_cases():
    issues = find_label_issues({"a": _label(1), "b": _label(1)}, CLASSES)
    assert [(i.kind, i.class_name, i.cases) for i in issues] == [("class_never_labelled", "posterior", ("a", "b"))]
    assert "a, b" in issues[0].message


def test_implausible_labels_are_refused_unless_allowed_then_warned():
    labels = {"spinal_cord_mask": _label(1)}
    with pytest.raises(InputError, match="posterior.*--allow-implausible-labels"):
        require_plausible_labels(labels, CLASSES, allow=False)
    warnings = []
    assert len(require_plausible_labels(labels, CLASSES, allow=True, warn=warnings.append)) == 1
    assert warnings and "allowed" in warnings[0]


def test_adapt_refuses_all_background_labels_before_training_and_leaves_the_store_alone(tmp_path):
    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=3, labeled=2)
    for case in list(labels):
        label = read_volume(labels[case])
        labels[case] = write_volume(label.with_array(np.zeros_like(label.array)), tmp_path / "empty" / f"{case}.nii.gz")
    events = []
    with pytest.raises(InputError, match="only background: case_000, case_001"):
        adapt_model(images, labels, store=tmp_path / "store", model=card, name="site",
                    config=FinetuneConfig.from_dict(FAST_FINETUNE), progress=events.append)
    assert ModelStore(tmp_path / "store").versions("site") == []
    assert not any(e.phase == "train" for e in events)


def test_the_cli_flag_allows_implausible_labels():
    from ASSFTActive.cli import build_parser
    from ASSFTActive.cli.adapt import build_config

    parser = build_parser()
    base = ["adapt", "--images", "i", "--labels", "l", "--store", "s"]
    assert build_config(parser.parse_args(base)).allow_implausible_labels is False
    assert build_config(parser.parse_args(base + ["--allow-implausible-labels"])).allow_implausible_labels is True
