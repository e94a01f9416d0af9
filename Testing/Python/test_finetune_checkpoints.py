"""Resumable state of an adaptation run: typed records that come back as they were written, refused when foreign."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ASSFTActive.errors import JobError, ModelError
from ASSFTActive.finetune.checkpoints import Checkpoints, FoldScores, PseudoLabels, TrainingCheckpoint
from ASSFTActive.finetune.pseudo import PseudoDecision


def test_a_training_checkpoint_comes_back_as_written(tmp_path):
    writer = Checkpoints(tmp_path / "work", "run-a", "card-a", writer=True)
    weights = {"layer.weight": torch.arange(6.0).reshape(2, 3)}
    writer.save(TrainingCheckpoint(stage=1, step=4, network=weights, optimizer={"scheduler": {"last_epoch": 4}}))
    loaded = Checkpoints(tmp_path / "work", "run-a", "card-a", writer=False).load()
    assert (loaded.stage, loaded.step, loaded.optimizer) == (1, 4, {"scheduler": {"last_epoch": 4}})
    assert torch.equal(loaded.network["layer.weight"], weights["layer.weight"])


def test_a_checkpoint_of_another_card_or_another_run_is_refused(tmp_path):
    Checkpoints(tmp_path, "run-a", "card-a", writer=True).save(TrainingCheckpoint(0, 2, {}))
    with pytest.raises(ModelError, match="another model card"):
        Checkpoints(tmp_path, "run-a", "card-b", writer=False).load()
    with pytest.raises(JobError, match="changed since this checkpoint"):
        Checkpoints(tmp_path, "run-b", "card-a", writer=False).load()


def test_fold_scores_keep_not_scored_classes_as_nan(tmp_path):
    checkpoints = Checkpoints(tmp_path, "run", "card", writer=True)
    checkpoints.save_fold(0, FoldScores(("b",), {"b": {0: (0.5, math.nan), 25: (0.75, 1.0)}}))
    fold = checkpoints.load_fold(0)
    assert fold.held_out == ("b",) and fold.scores["b"][25] == (0.75, 1.0)
    assert fold.scores["b"][0][0] == 0.5 and math.isnan(fold.scores["b"][0][1])
    assert checkpoints.load_fold(1) is None


def test_pseudo_labels_of_a_round_keep_their_maps_and_masks_and_clear_removes_everything(tmp_path):
    checkpoints = Checkpoints(tmp_path / "work", "run", "card", writer=True)
    decisions = (PseudoDecision("u1", 0.9, 0.1, 1.0, True, 1), PseudoDecision("u2", 0.2, 0.8, -1.0, False, 2))
    label = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    checkpoints.save_pseudo(1, PseudoLabels(decisions, labels={"u1": label}, masks={"u1": label > 3}))
    again = checkpoints.load_pseudo(1)
    assert again.decisions == decisions and np.array_equal(again.labels["u1"], label)
    assert np.array_equal(again.masks["u1"], label > 3) and checkpoints.load_pseudo(2) is None
    checkpoints.save(TrainingCheckpoint(1, 0, {}))
    checkpoints.clear()
    assert not (tmp_path / "work").exists()
