"""The semi-supervised stage fills a partial label's unannotated voxels from the teacher (issue 27 item 2): annotated
voxels keep the annotator's class, unannotated ones take the teacher's confident class, unconfident ones stay out of
the loss; the supervised stage still trains on the annotated voxels only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FAST_FINETUNE, make_tiny_card, write_dataset

from ASSFTActive.finetune.checkpoints import Checkpoints
from ASSFTActive.io import read_volume
from ASSFTActive.partial import NOT_ANNOTATED, annotated_slices_mask, fill_from_teacher, write_partial_label

pytestmark = pytest.mark.usefixtures("one_thread")


def _maps():
    """A [2, 2, 3] volume: the annotator painted row i = 0 (classes 0, 1, 2 / 2, 0, 1); the teacher says class 1
    everywhere but is sure only on k = 0, 1."""
    labels = np.array([[[0, 1, 2], [2, 0, 1]], [[9, 9, 9], [9, 9, 9]]], dtype=np.uint8)  # 9: ignored (unannotated)
    annotated = np.zeros((2, 2, 3), bool)
    annotated[0] = True
    teacher = np.ones((2, 2, 3), np.uint8)
    confident = np.zeros((2, 2, 3), bool)
    confident[:, :, :2] = True
    return labels, annotated, teacher, confident


def test_annotated_voxels_keep_the_annotators_class_where_the_teacher_disagrees_and_is_sure():
    labels, annotated, teacher, confident = _maps()
    target, mask = fill_from_teacher(labels, annotated, teacher, np.ones_like(confident))
    np.testing.assert_array_equal(target[0], [[0, 1, 2], [2, 0, 1]])
    assert mask[0].all()


def test_unannotated_voxels_take_the_teachers_confident_class_and_unconfident_ones_stay_ignored():
    labels, annotated, teacher, confident = _maps()
    before = [a.copy() for a in (labels, annotated, teacher, confident)]
    target, mask = fill_from_teacher(labels, annotated, teacher, confident)
    assert target.dtype == np.uint8 and mask.dtype == bool and target.shape == mask.shape == (2, 2, 3)
    np.testing.assert_array_equal(target[1], np.ones((2, 3), np.uint8))
    np.testing.assert_array_equal(mask[1], [[True, True, False], [True, True, False]])
    assert int(mask.sum()) == 6 + 4
    for a, b in zip(before, (labels, annotated, teacher, confident)):
        np.testing.assert_array_equal(a, b)  # inputs untouched


def test_without_a_confidence_rule_every_unannotated_voxel_takes_the_teachers_class():
    labels, annotated, teacher, _ = _maps()
    target, mask = fill_from_teacher(labels, annotated, teacher, None)
    assert mask.all() and (target[1] == 1).all() and target[0, 0, 2] == 2


def test_fill_refuses_maps_of_different_shapes_and_classes_that_read_as_not_annotated():
    labels, annotated, teacher, confident = _maps()
    with pytest.raises(ValueError, match="one shape"):
        fill_from_teacher(labels, annotated, teacher[:, :, :2], confident)
    with pytest.raises(ValueError, match="teacher: classes"):
        fill_from_teacher(labels, annotated, np.full_like(teacher, NOT_ANNOTATED), confident)
    bad = labels.copy()
    bad[0, 0, 0] = NOT_ANNOTATED
    with pytest.raises(ValueError, match="labels: classes"):
        fill_from_teacher(bad, annotated, teacher, confident)


def test_a_rounds_filled_labels_are_kept_for_a_resume_and_cleared_with_the_checkpoints(tmp_path):
    labels, annotated, teacher, confident = _maps()
    checkpoints = Checkpoints(tmp_path / "work", "fingerprint", "signature", writer=True)
    assert checkpoints.load_filled(1) is None
    checkpoints.save_filled(1, {"case_a": fill_from_teacher(labels, annotated, teacher, confident)})
    back = checkpoints.load_filled(1)
    np.testing.assert_array_equal(back["case_a"][0], fill_from_teacher(labels, annotated, teacher, confident)[0])
    assert back["case_a"][1].dtype == bool and int(back["case_a"][1].sum()) == 10
    checkpoints.clear()
    assert checkpoints.load_filled(1) is None


def _adapt_on_slices(tmp_path, monkeypatch, pseudo):
    """A tiny Adapt on two volumes labelled on slices k = 4, 8 (one unlabelled); returns what the trainer was handed
    per stage (``"supervised"`` / ``"semi"``: the labelled cases) and the fills the recipe made."""
    from ASSFTActive.finetune import recipe
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig

    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=3, labeled=2)
    folder = tmp_path / "partial"
    partial = {}
    for case, path in labels.items():
        label = read_volume(path)
        annotated = annotated_slices_mask(label.shape, [{"axis": 2, "index": 4}, {"axis": 2, "index": 8}])
        partial[case] = write_partial_label(label.array, annotated, label, folder / path.name)
    handed = {"supervised": [], "semi": []}
    fills = []
    real_train, real_fill = recipe.train_supervised, recipe.fill_from_teacher

    def spy_train(network, card_, labeled, config, **kwargs):
        stage = "supervised" if config.iterations == FAST_FINETUNE["train"]["iterations"] else "semi"
        handed[stage].append({c.case_id: c for c in labeled})
        return real_train(network, card_, labeled, config, **kwargs)

    def spy_fill(labels_, annotated_, teacher_, confident_):
        out = real_fill(labels_, annotated_, teacher_, confident_)
        fills.append((annotated_.copy(), teacher_.copy(), None if confident_ is None else confident_.copy(), out))
        return out

    monkeypatch.setattr(recipe, "train_supervised", spy_train)
    monkeypatch.setattr(recipe, "fill_from_teacher", spy_fill)
    settings = json.loads(json.dumps(FAST_FINETUNE))
    settings.update(pseudo=pseudo, validation={"guard": False, "hd95": False}, allow_implausible_labels=True)
    result = adapt_model(
        images,
        partial,
        store=tmp_path / "store",
        model=card,
        name="site",
        config=FinetuneConfig.from_dict(settings),
    )
    assert result.version == "v1"
    return handed, fills, {c: read_volume(p).array for c, p in labels.items()}


def test_adapt_on_a_partial_label_fills_the_unannotated_voxels_from_the_teacher_in_the_semi_stage_only(
    tmp_path, monkeypatch
):
    handed, fills, truth = _adapt_on_slices(tmp_path, monkeypatch, {"voxel_threshold": 0.7, "class_keep_min": 0.5})
    assert len(handed["supervised"]) == 1 and len(handed["semi"]) == 1 and len(fills) == 2
    for first in handed["supervised"][0].values():  # the supervised stage: annotated voxels only, as before
        assert first.voxel_mask[:, :, [4, 8]].all() and not np.delete(first.voxel_mask, [4, 8], axis=2).any()
    for case, semi in handed["semi"][0].items():
        ((annotated, teacher, confident, (target, mask)),) = [
            f for f in fills if np.array_equal(f[3][0], semi.label.array)
        ]
        np.testing.assert_array_equal(semi.voxel_mask, mask)
        assert annotated[:, :, [4, 8]].all() and int(annotated.sum()) == 2 * 24 * 24
        # annotated voxels: the annotator's class, always in the loss
        np.testing.assert_array_equal(semi.label.array[annotated], truth[case][annotated])
        assert mask[annotated].all()
        # unannotated voxels: the teacher's class where it is confident, out of the loss elsewhere
        np.testing.assert_array_equal(mask[~annotated], confident[~annotated])
        np.testing.assert_array_equal(semi.label.array[~annotated & mask], teacher[~annotated & mask])
        assert 0 < int(mask[~annotated].sum()) < int((~annotated).sum())  # some taken, some left out


def test_with_pseudo_labelling_off_the_semi_stage_still_trains_on_the_annotated_voxels_only(tmp_path, monkeypatch):
    handed, fills, _ = _adapt_on_slices(tmp_path, monkeypatch, {"mode": "none"})
    assert fills == [] and handed["semi"]
    for case in handed["semi"][0].values():
        assert case.voxel_mask[:, :, [4, 8]].all() and not np.delete(case.voxel_mask, [4, 8], axis=2).any()
