"""SFR stage 2 and SFR+: SAM fine-tuned on stitched real hippocampus volumes (the shipped sample), padding ignored,
cancel, determinism, 3D pseudo-labels of a pool, SFR+'s selection and second fine-tuning, the embedded prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ASSFTActive.errors import CancelledError, InputError
from ASSFTActive.io import read_label, read_volume
from ASSFTActive.sfr.finetune import (
    CanvasSampler,
    SfrFinetuneConfig,
    bezier_curve,
    finetune_sam,
    poly_factor,
    prepare_cases,
)
from ASSFTActive.sfr.inputs import SamInput, SfrCase
from ASSFTActive.sfr.loss import stitched_dice_ce
from ASSFTActive.sfr.plus import SfrPlusConfig, sfr_plus_finetune
from ASSFTActive.sfr.prior import CARD_FILE, PRIOR_DIR, load_sam_prior, save_sam_prior
from ASSFTActive.sfr.pseudo import sfr_pseudo_labels
from ASSFTActive.sfr.sam import LoRAQKV, SamConfig, build_sam
from ASSFTActive.sfr.stitching import IGNORE_INDEX

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample" / "pool"
CASES = ("hippocampus_011", "hippocampus_023", "hippocampus_026", "hippocampus_035", "hippocampus_036")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sample_cases():
    cases = []
    for c in CASES:
        image = read_volume(SAMPLE / "images" / f"{c}.nii.gz")
        cases.append(SfrCase(c, image, read_label(SAMPLE / "labels" / f"{c}.nii.gz", image, 3)))
    return cases


def _tiny_sam(seed: int = 0, image_size: int = 64):
    return build_sam(SamConfig.tiny(num_mask_tokens=3, image_size=image_size), seed=seed)


def test_config_round_trips_and_refuses_bad_settings():
    config = SfrFinetuneConfig.tiny()
    assert SfrFinetuneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SfrFinetuneConfig().to_dict()["iterations"] == 6000 and SfrFinetuneConfig().lora_rank == 4
    for bad in (
        {"iterations": 0},
        {"learning_rate": 0.0},
        {"warmup_iterations": 10, "iterations": 10},
        {"bezier_probability": 1.5},
        {"lora_rank": -1},
        {"betas": (0.9, 1.0)},
    ):
        with pytest.raises(InputError):
            SfrFinetuneConfig(**bad)
    with pytest.raises(InputError, match="unknown"):
        SfrFinetuneConfig.from_dict({"iteration": 5})
    assert SamInput.from_dict(SamInput(spacing=(1, 1, 2)).to_dict()) == SamInput(spacing=(1.0, 1.0, 2.0))


def test_poly_schedule_warms_up_linearly_then_decays_to_zero():
    config = SfrFinetuneConfig(iterations=100, warmup_iterations=10)
    assert poly_factor(0, config) == pytest.approx(0.1) and poly_factor(9, config) == pytest.approx(1.0)
    assert poly_factor(10, config) == pytest.approx(0.9**0.9)
    assert poly_factor(50, config) == pytest.approx(0.5**0.9) and poly_factor(100, config) == 0.0
    factors = [poly_factor(s, config) for s in range(10, 100)]
    assert all(a > b for a, b in zip(factors, factors[1:]))


def test_bezier_curve_is_monotone_from_zero_to_one():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = bezier_curve(rng)
        assert x[0] == pytest.approx(0.0) and y[-1] == pytest.approx(1.0)
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)


def test_canvas_batches_carry_the_ignore_label_exactly_on_padding_through_rot_flip(sample_cases):
    stitched = prepare_cases(sample_cases[:2], canvas=128)
    config = SfrFinetuneConfig(iterations=10, rot_flip=True, bezier_probability=1.0, seed=4)
    sampler = CanvasSampler(stitched, config, np.random.default_rng(0))
    images, labels = sampler.sample(6)
    assert images.shape == (6, 1, 128, 128) and labels.shape == (6, 128, 128) and labels.dtype == torch.int64
    voxels = {c.layout.depth * c.layout.placed_shape[0] * c.layout.placed_shape[1] for c in stitched}
    for image, label in zip(images, labels):
        assert int((label != IGNORE_INDEX).sum()) in voxels  # every placed voxel keeps its label, nothing else
        assert torch.all(image[0][label == IGNORE_INDEX] == 0)  # image padding is 0 where labels are ignored
        assert set(torch.unique(label).tolist()) <= {0, 1, 2, IGNORE_INDEX}


def test_padding_pixels_take_no_part_in_the_fine_tuning_loss(sample_cases):
    stitched = prepare_cases(sample_cases[:1], canvas=128)
    _, labels = CanvasSampler(stitched, SfrFinetuneConfig(iterations=2), np.random.default_rng(1)).sample(2)
    logits = torch.randn(2, 3, 128, 128, requires_grad=True)
    stitched_dice_ce(logits, labels).backward()
    ignored = (labels == IGNORE_INDEX)[:, None].expand_as(logits)
    assert ignored.any() and torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)


def test_fine_tuning_on_stitched_hippocampus_lowers_the_loss_and_leaves_the_input_model_alone(sample_cases):
    model = _tiny_sam()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = []
    result = finetune_sam(
        model, sample_cases[:3], SfrFinetuneConfig.tiny(iterations=30), progress=events.append, device=CPU
    )
    losses = np.array(result.losses)
    assert len(losses) == 30 and losses[-8:].mean() < 0.8 * losses[:8].mean()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert isinstance(result.model.image_encoder.blocks[0].attn.qkv, LoRAQKV) and not result.model.training
    encoder_trainable = 2 * 2 * 4 * 32 * 2  # blocks x (q, v) x rank x dim x (A, B)
    decoder = sum(p.numel() for m in (model.prompt_encoder, model.mask_decoder) for p in m.parameters())
    assert result.trainable_parameters == encoder_trainable + decoder
    assert events[0].event == "phase" and [e.step for e in events[1:]] == list(range(1, 31))
    assert all("loss" in e.metrics for e in events[1:])


def test_fine_tuning_is_deterministic_for_a_seed(sample_cases):
    runs = [
        finetune_sam(_tiny_sam(), sample_cases[:2], SfrFinetuneConfig.tiny(iterations=4, seed=7), device=CPU)
        for _ in range(2)
    ]
    assert runs[0].losses == runs[1].losses
    a, b = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(sample_cases, tmp_path):
    config = SfrFinetuneConfig.tiny(iterations=6, seed=3)
    saved = []

    def save(step, state):
        path = tmp_path / f"step{step}.pt"
        torch.save(state, path)
        saved.append(path)

    whole = finetune_sam(_tiny_sam(), sample_cases[:2], config, device=CPU, checkpoint=save, checkpoint_every=3)
    assert [p.name for p in saved] == ["step3.pt", "step6.pt"]
    state = torch.load(saved[0], map_location="cpu", weights_only=True)
    resumed = finetune_sam(_tiny_sam(), sample_cases[:2], config, device=CPU, resume=state)
    assert resumed.losses == whole.losses
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_progress_callback_cancels_fine_tuning_at_the_step_it_raises(sample_cases):
    seen = []

    def cancel_at_three(event):
        seen.append(event.step)
        if event.event == "progress" and event.step == 3:
            raise CancelledError("cancelled")

    with pytest.raises(CancelledError):
        finetune_sam(
            _tiny_sam(), sample_cases[:1], SfrFinetuneConfig.tiny(iterations=50), progress=cancel_at_three, device=CPU
        )
    assert seen[-1] == 3 and len(seen) == 4  # the phase event, then steps 1..3


def test_fine_tuning_refuses_a_canvas_or_classes_the_sam_cannot_take(sample_cases):
    with pytest.raises(InputError, match="canvas"):
        finetune_sam(_tiny_sam(), sample_cases[:1], SfrFinetuneConfig(iterations=2, canvas=128), device=CPU)
    two_outputs = build_sam(SamConfig.tiny(num_mask_tokens=2, image_size=64), seed=0)
    with pytest.raises(InputError, match="outputs"):
        finetune_sam(two_outputs, sample_cases[:1], SfrFinetuneConfig(iterations=2), device=CPU)


def test_pseudo_labels_lie_on_each_volume_grid_with_a_confidence(sample_cases):
    model = _tiny_sam().eval()
    images = [c.image for c in sample_cases[:2]]
    labels = sfr_pseudo_labels(model, images, case_ids=["a", "b"])
    for image, pseudo, name in zip(images, labels, ["a", "b"]):
        assert pseudo.case_id == name and pseudo.label.shape == image.shape
        np.testing.assert_array_equal(pseudo.label.affine, image.affine)
        assert pseudo.max_prob.shape == image.shape and 0.0 <= pseudo.confidence <= 1.0
        assert set(np.unique(pseudo.label.array)) <= {0, 1, 2}
        assert pseudo.voxel_mask(0.0).all() and not pseudo.voxel_mask(1.0).any() or pseudo.max_prob.max() == 1.0


def test_sfr_plus_keeps_the_most_confident_share_and_fine_tunes_again_on_them(sample_cases):
    labelled, pool = sample_cases[:2], [c.image for c in sample_cases[2:]]
    phases = []
    result = sfr_plus_finetune(
        _tiny_sam(),
        labelled,
        pool,
        SfrFinetuneConfig.tiny(iterations=3),
        SfrPlusConfig(kappa=0.5, voxel_threshold=0.5),
        pool_ids=list(CASES[2:]),
        progress=lambda e: phases.append(e.message) if e.phase == "sfr_plus" else None,
        device=CPU,
    )
    confidences = {p.case_id: p.confidence for p in result.first_pseudo}
    assert len(result.selected) == 2  # ceil(0.5 * 3)
    assert min(confidences[c] for c in result.selected) >= max(
        confidences[c] for c in CASES[2:] if c not in result.selected
    )
    assert result.second.case_ids == tuple(CASES[:2]) + tuple(c for c in CASES[2:] if c in result.selected)
    assert [p.case_id for p in result.pseudo_labels] == list(CASES[2:])
    assert len(phases) == 4 and result.model is result.second.model


def test_sfr_plus_refuses_an_empty_pool_and_bad_kappa(sample_cases):
    with pytest.raises(InputError, match="pool"):
        sfr_plus_finetune(_tiny_sam(), sample_cases[:1], [], SfrFinetuneConfig.tiny(iterations=1))
    with pytest.raises(InputError):
        SfrPlusConfig(kappa=0.0)


def test_a_saved_prior_loads_strictly_and_says_it_is_not_meta_sam(tmp_path):
    model = _tiny_sam(seed=5)
    card = save_sam_prior(model, tmp_path, SamInput(), ["background", "a", "b"], {"seed": 5})
    data = json.loads(card.read_text())
    assert card.name == CARD_FILE and "NOT Meta's" in data["not_meta_sam"]
    prior = load_sam_prior(tmp_path)
    a, b = model.state_dict(), prior.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and prior.class_names == ("background", "a", "b")
    data["weights"] = "../outside.safetensors"
    card.write_text(json.dumps(data))
    with pytest.raises(Exception, match="outside"):
        load_sam_prior(tmp_path)


def test_the_embedded_prior_was_trained_on_the_source_split_only_and_segments_a_volume(sample_cases):
    if not (PRIOR_DIR / CARD_FILE).is_file():
        pytest.skip(f"the embedded SAM prior is not built ({PRIOR_DIR}); run scripts/train_sfr_prior.py")
    prior = load_sam_prior()
    provenance = prior.card["provenance"]
    assert "NOT Meta's" in prior.card["not_meta_sam"] and "source_test_mean_dice" in provenance
    assert (PRIOR_DIR / "weights.safetensors").stat().st_size < 8 * 2**20
    (pseudo,) = sfr_pseudo_labels(prior.model, [sample_cases[0].image], prior.sam_input)
    assert pseudo.label.shape == sample_cases[0].image.shape


def test_the_embedded_prior_used_source_split_cases_only_and_no_reserved_case():
    if not (PRIOR_DIR / CARD_FILE).is_file():
        pytest.skip(f"the embedded SAM prior is not built ({PRIOR_DIR}); run scripts/train_sfr_prior.py")
    from conftest import HIPPOCAMPUS, require

    from Testing.Benchmarks.harness.splits import read_reserved, split_cases

    images = require(HIPPOCAMPUS / "imagesTr")
    provenance = load_sam_prior().card["provenance"]
    names = [p.name.split(".")[0] for p in images.glob("*.nii.gz")]
    split = split_cases(names, read_reserved(HIPPOCAMPUS / "reserved.txt"))
    used = set(provenance["train_cases"]) | set(provenance["source_test_cases"])
    assert used and used <= set(split.source)
    assert not used & set(read_reserved(HIPPOCAMPUS / "reserved.txt"))
