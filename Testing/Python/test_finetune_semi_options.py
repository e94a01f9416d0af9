"""Issue 25.5 in the trainer: bidirectional copy-paste (BCP) and a pseudo-labeller that is not the student, each
used only when chosen, on the tiny network and synthetic boxes of ``conftest.py``."""

from __future__ import annotations

import pytest
import torch
from conftest import box_cases, make_tiny_card

from ASSFTActive.finetune import training
from ASSFTActive.finetune.config import TrainConfig
from ASSFTActive.finetune.teachers import FrozenFlipTeacher, flips_of_axes
from ASSFTActive.finetune.training import PseudoLabelTerm, SemiParts, train_supervised
from ASSFTActive.models import build_network, load_card, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _spy(network):
    """``network`` recording the batch size of every call in ``network.batches``."""
    network.batches = []
    network.register_forward_pre_hook(lambda module, inputs: network.batches.append(inputs[0].shape[0]))
    return network


def test_with_bcp_the_student_learns_on_both_mixed_patches_whose_targets_follow_the_box(tmp_path, monkeypatch):
    card = load_card(make_tiny_card(tmp_path / "model"))
    student = _spy(build_network(card))
    teacher = build_network(card)
    mixes = []
    real = training.bidirectional_copy_paste

    def spy(*args, **kwargs):
        mixed = real(*args, **kwargs)
        mixes.append((args, mixed))
        return mixed

    monkeypatch.setattr(training, "bidirectional_copy_paste", spy)
    config = TrainConfig(iterations=2, batch_size=2, learning_rate=0.01)
    train_supervised(
        student,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), SemiParts(bcp=True, voxel_threshold=0.5), teacher)],
    )
    assert student.batches == [2, 4] * 2, "per step: the labelled patches, then 2 × 2 mixed patches"
    assert len(mixes) == 2
    (labelled, labels, _, pseudo, _, boxes, alpha), mixed = mixes[0]
    assert alpha == 0.5 and boxes.shape[0] == 2
    assert torch.equal(torch.where(boxes, labels, pseudo), mixed.targets[:2]), "labelled box into unlabelled"
    assert torch.equal(torch.where(boxes, pseudo, labels), mixed.targets[2:]), "unlabelled box into labelled"
    off = []
    monkeypatch.setattr(training, "bidirectional_copy_paste", lambda *a, **k: off.append(1))
    plain = _spy(build_network(card))
    train_supervised(
        plain,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), SemiParts(voxel_threshold=0.5), teacher)],
    )
    assert plain.batches == [2, 2] * 2 and not off, "off by default"


class _CountingTeacher(FrozenFlipTeacher):
    def __init__(self, network, flips):
        super().__init__(network, flips)
        self.calls, self.outputs = 0, []

    def probabilities(self, images):
        self.calls += 1
        probs = super().probabilities(images)
        self.outputs.append((images.clone(), probs))
        return probs


def test_the_frozen_flip_teacher_labels_the_patches_when_chosen_and_stays_frozen(tmp_path, monkeypatch):
    card = load_card(make_tiny_card(tmp_path / "model"))
    student = build_network(card)
    frozen_weights = {k: v.clone() for k, v in student.state_dict().items()}
    labeller = _CountingTeacher(student, flips_of_axes((0, 1, 2)))
    targets = []
    real_loss = training.dice_ce_loss
    monkeypatch.setattr(
        training,
        "dice_ce_loss",
        lambda logits, target, mask=None: (targets.append(target.clone()), real_loss(logits, target, mask))[1],
    )
    config = TrainConfig(iterations=3, batch_size=1, learning_rate=0.05)
    train_supervised(
        student,
        card,
        box_cases(2),
        config,
        device=torch.device("cpu"),
        terms=[PseudoLabelTerm(box_cases(2, first_seed=10), SemiParts(), labeller=labeller)],
    )
    assert labeller.calls == 3
    pseudo_targets = targets[1::2]
    reference = build_network(card)
    reference.load_state_dict(frozen_weights)
    reference.eval()
    for (images, probs), target in zip(labeller.outputs, pseudo_targets):
        with torch.no_grad():
            expected = (
                sum(
                    torch.flip(torch.softmax(reference(torch.flip(images, d) if d else images), 1), d)
                    if d
                    else torch.softmax(reference(images), 1)
                    for d in flips_of_axes((0, 1, 2))
                )
                / 4
            )
        assert torch.allclose(probs, expected, atol=1e-5), "the mean of the frozen model's flipped predictions"
        assert torch.equal(target, probs.argmax(dim=1)), "the student's pseudo targets are the teacher's labels"
    assert any(
        not torch.equal(v, frozen_weights[k]) for k, v in student.state_dict().items() if v.dtype.is_floating_point
    ), "the student trained while the teacher stayed as it started"


def test_adapt_model_uses_bcp_and_the_frozen_flip_teacher_only_when_chosen(tmp_path, monkeypatch):
    import json

    from conftest import FAST_FINETUNE, write_dataset

    from ASSFTActive.finetune import recipe
    from ASSFTActive.finetune.adapt import adapt_model
    from ASSFTActive.finetune.config import FinetuneConfig

    card = make_tiny_card(tmp_path / "base")
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=2)
    terms_seen = []
    real = recipe.train_supervised

    def spy(network, card_, labeled, config, **kwargs):
        terms_seen.append([t for t in kwargs.get("terms", ()) if isinstance(t, PseudoLabelTerm)])
        return real(network, card_, labeled, config, **kwargs)

    monkeypatch.setattr(recipe, "train_supervised", spy)

    def adapt(pseudo):
        data = json.loads(json.dumps(FAST_FINETUNE))
        data.update(pseudo=pseudo, validation={"guard": False, "hd95": False}, allow_implausible_labels=True)
        terms_seen.clear()
        adapt_model(
            images, labels, store=tmp_path / f"store{len(pseudo)}", model=card, config=FinetuneConfig.from_dict(data)
        )
        return [t for stage in terms_seen for t in stage]

    default = adapt({})
    assert default and all(t.labeller is None and t.teacher is not None and not t.semi.bcp for t in default)
    chosen = adapt({"teacher": "source_flip", "bcp": True, "flip_axes": [0, 2]})
    assert chosen and all(t.teacher is None and isinstance(t.labeller, FrozenFlipTeacher) for t in chosen)
    assert all(t.semi.bcp and t.semi.bcp_pseudo_weight == 0.5 for t in chosen)
    assert chosen[0].labeller.flips == ((), (2,), (4,))
    start = load_model(load_card(card)).network.state_dict()
    frozen = chosen[0].labeller.network.state_dict()
    assert all(torch.equal(v.cpu(), start[k]) for k, v in frozen.items()), "the model the run began from"
