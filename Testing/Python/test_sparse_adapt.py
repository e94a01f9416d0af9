"""Partial labels through Adapt and evaluation: only annotated voxels are trained on, checked and scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST_FINETUNE, make_tiny_card, write_dataset

from ASSFTActive.evaluate import LabelledCase, evaluate_cases
from ASSFTActive.finetune.adapt import adapt_model
from ASSFTActive.finetune.config import FinetuneConfig
from ASSFTActive.inference import Predictor
from ASSFTActive.io import read_volume
from ASSFTActive.models import load_card, load_model
from ASSFTActive.partial import annotated_slices_mask, write_partial_label

pytestmark = pytest.mark.usefixtures("one_thread")


def _partial_copy(label_path, folder, slices):
    """The label file with every voxel outside ``slices`` marked not annotated, in ``folder``."""
    label = read_volume(label_path)
    annotated = annotated_slices_mask(label.shape, slices)
    return write_partial_label(label.array, annotated, label, folder / label_path.name)


def test_a_partial_label_is_scored_on_its_annotated_voxels_only(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "model", seed=5))
    model = load_model(card, torch.device("cpu"))
    images, _ = write_dataset(tmp_path / "data", count=1, labeled=0)
    image = read_volume(images["case_000"])
    predicted = Predictor(model, device=torch.device("cpu")).predict(image).label
    annotated = annotated_slices_mask(image.shape, [{"axis": 2, "index": 9}])
    assert (predicted[annotated] > 0).any() and (predicted[~annotated] > 0).any()
    # the annotator agrees with the prediction on the one annotated slice; outside it the truth is unknown
    partial = write_partial_label(predicted, annotated, image, tmp_path / "partial.nii.gz")
    full = write_partial_label(
        np.where(annotated, predicted, 0), np.ones(image.shape, bool), image, tmp_path / "full.nii.gz"
    )
    report = evaluate_cases(
        model,
        [LabelledCase("partial", image, partial), LabelledCase("full", image, full)],
        hd95=False,
        device=torch.device("cpu"),
    )
    scored = {c.case_id: c for c in report.cases}
    present = [k - 1 for k in np.unique(predicted[annotated]) if k > 0]
    assert all(scored["partial"].dice[k] == pytest.approx(1.0) for k in present)
    assert any(scored["full"].dice[k] < 0.99 for k in present)  # read as full, the rest counts as missed


def test_adapt_trains_checks_and_cross_validates_on_annotated_slices(tmp_path, monkeypatch):
    from ASSFTActive.finetune import recipe

    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=3)
    folder = tmp_path / "partial"
    folder.mkdir()
    partial = {
        case: _partial_copy(path, folder, [{"axis": 2, "index": i} for i in (4, 8, 12)])
        for case, path in labels.items()
    }
    empty = read_volume(labels["case_002"])
    write_partial_label(empty.array, np.zeros(empty.shape, bool), empty, folder / "case_002.nii.gz")
    handed, configs = [], []
    real = recipe.train_supervised

    def spy(network, card_, labeled, config, **kwargs):
        handed.append(list(labeled))
        configs.append(config)
        return real(network, card_, labeled, config, **kwargs)

    monkeypatch.setattr(recipe, "train_supervised", spy)
    config = FinetuneConfig.from_dict(json.loads(json.dumps(FAST_FINETUNE)))
    warnings = []
    result = adapt_model(
        images,
        partial,
        store=tmp_path / "store",
        model=card,
        name="site",
        config=config,
        progress=lambda e: warnings.append(e.message) if e.event == "warning" else None,
    )
    assert result.version == "v1"
    # case_002 has no annotated voxel: not a labelled volume, skipped with a warning naming it
    assert any("case_002" in w and "not a labelled volume" in w for w in warnings)
    supervised = FAST_FINETUNE["train"]["iterations"]  # the supervised stage; a semi-supervised round fills the rest
    assert {c.case_id for stage in handed for c in stage} == {"case_000", "case_001"}
    cases = {c.case_id: c for stage, config in zip(handed, configs) if config.iterations == supervised for c in stage}
    assert set(cases) == {"case_000", "case_001"}
    for case in cases.values():
        mask = case.voxel_mask
        assert mask is not None and mask.sum() == 3 * mask.shape[0] * mask.shape[1]
        assert mask[:, :, 8].all() and not mask[:, :, 7].any()
        assert not case.label.array[~mask].any()  # the unknown voxels hold background, and are masked out
    # the guard's cross-validation starts from the current model scored on the annotated slices only
    base = load_model(load_card(card), torch.device("cpu"))
    expected = evaluate_cases(
        base,
        [LabelledCase(c, read_volume(images[c]), partial[c]) for c in sorted(cases)],
        hd95=False,
        device=torch.device("cpu"),
    )
    as_full = evaluate_cases(
        base,
        [LabelledCase(c, read_volume(images[c]), labels[c]) for c in sorted(cases)],
        hd95=False,
        device=torch.device("cpu"),
    )
    provenance = json.loads((result.version_dir / "provenance.json").read_text())
    folds = provenance["metrics"]["cross_validation"]["dice"]
    for case, full in zip(expected.cases, as_full.cases):
        assert folds[case.case_id][0] == pytest.approx(float(np.nanmean(case.dice)))
        assert folds[case.case_id][0] != pytest.approx(float(np.nanmean(full.dice)))
