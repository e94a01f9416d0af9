"""SAM written here: Meta's ViT-B checkpoint layout loads strictly, tiny forward passes, LoRA on q/v."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ASSFTActive.errors import ModelError
from ASSFTActive.sfr.sam import (
    Block,
    LoRAQKV,
    Sam,
    SamConfig,
    adapt_state_dict,
    apply_lora,
    build_sam,
    load_sam_weights,
    lora_state_dict,
    merge_lora,
)

LAYOUT = json.loads((Path(__file__).with_name("sfr_sam_vit_b_layout.json")).read_text())


@pytest.fixture(scope="module")
def vit_b() -> Sam:
    torch.manual_seed(0)
    return Sam(SamConfig.vit_b())


@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised checkpoint in the layout of sam_vit_b_01ec64.pth (plain state dict, torch.save)."""
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) for k, shape in LAYOUT["tensors"].items()}
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    return path


def test_vit_b_has_exactly_the_tensor_names_and_shapes_of_the_official_checkpoint(vit_b):
    state = vit_b.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == LAYOUT["tensors"]
    assert sum(p.numel() for p in vit_b.parameters()) == LAYOUT["total_parameters"] == 93_735_472
    assert sorted(n for n, _ in vit_b.named_buffers() if n in state) == LAYOUT["buffers"]
    assert "pixel_mean" not in state and "pixel_std" not in state  # non-persistent, as in Meta's code


def test_official_layout_checkpoint_loads_every_tensor_strictly_with_weights_only(vit_b, official_checkpoint):
    state = torch.load(official_checkpoint, map_location="cpu", weights_only=True)
    vit_b.load_state_dict(state, strict=True)
    report = load_sam_weights(vit_b, official_checkpoint)
    assert report.loaded == len(LAYOUT["tensors"]) == 314 and report.adapted == () and report.lora_kept == 0
    loaded = vit_b.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_official_checkpoint_loads_into_a_lora_wrapped_vit_b_keeping_the_lora_tensors(official_checkpoint):
    torch.manual_seed(0)
    model = Sam(SamConfig.vit_b())
    names = apply_lora(model, rank=4)
    assert len(names) == 12 * 4
    report = load_sam_weights(model, official_checkpoint)
    assert report.loaded == 314 and report.lora_kept == 48
    state = torch.load(official_checkpoint, map_location="cpu", weights_only=True)
    key = "image_encoder.blocks.3.attn.qkv.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    assert not model.image_encoder.blocks[3].attn.qkv.weight.requires_grad
    assert all(
        torch.count_nonzero(model.state_dict()[n.replace("lora_a", "lora_b") + ".weight"]) == 0
        for n in (k.rsplit(".", 1)[0] for k in names if ".lora_a_" in k)
    )


def test_a_checkpoint_of_another_layout_is_refused_naming_the_offending_tensors(tmp_path):
    model = build_sam(SamConfig.tiny(), seed=0)
    state = model.state_dict()
    wrong = dict(state)
    wrong["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 32)
    del wrong["image_encoder.neck.0.weight"]
    wrong["image_encoder.extra"] = torch.zeros(1)
    with pytest.raises(ModelError, match=r"mask_tokens.weight \(5, 32\).*") as info:
        load_sam_weights(model, wrong)
    message = str(info.value)
    assert "1 missing: image_encoder.neck.0.weight" in message and "1 unexpected: image_encoder.extra" in message
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    assert load_sam_weights(model, tmp_path / "wrapped.pth").loaded == len(state)


def test_a_pickled_object_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump(SamConfig.tiny(), f, protocol=2)
    with pytest.raises(ModelError, match="cannot read SAM weights"):
        load_sam_weights(build_sam(SamConfig.tiny(), seed=0), path)


def test_tiny_sam_maps_canvases_to_one_logit_map_per_class():
    config = SamConfig.tiny(num_mask_tokens=3, image_size=64)
    model = build_sam(config, seed=0).eval()
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        low = model.forward_low_res(grey)
        full = model(grey)
        rgb = model(grey.expand(-1, 3, -1, -1))
        single = model(grey[1:])
    assert low.shape == (2, 3, 32, 32) and full.shape == (2, 3, 64, 64)
    assert torch.allclose(full, rgb) and torch.allclose(full[1:], single, atol=1e-5)
    with pytest.raises(ValueError, match="expected canvases"):
        model(torch.zeros(1, 1, 32, 32))


def test_windowed_blocks_pad_the_token_grid_and_one_window_equals_global_attention():
    torch.manual_seed(0)
    config = SamConfig.tiny(image_size=72)  # 9 x 9 tokens, windows of 4: padded to 12 x 12
    model = build_sam(config, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 72, 72)).shape == (1, 4, 72, 72)
    windowed, global_ = Block(16, 2, 4.0, window_size=6, input_size=(6, 6)), Block(16, 2, 4.0, 0, (6, 6))
    global_.load_state_dict(windowed.state_dict())
    for p in (global_.attn.rel_pos_h, global_.attn.rel_pos_w):
        torch.nn.init.normal_(p)
    windowed.load_state_dict(global_.state_dict())
    x = torch.randn(2, 6, 6, 16)
    assert torch.allclose(windowed(x), global_(x), atol=1e-6)


def test_attention_without_relative_positions_is_plain_scaled_dot_product_attention():
    block = Block(16, 2, 4.0, window_size=0, input_size=(5, 5))
    x = torch.randn(1, 5, 5, 16)
    attn = block.attn
    qkv = attn.qkv(x).reshape(1, 25, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).permute(0, 2, 1, 3).reshape(1, 5, 5, 16)
    assert torch.allclose(attn(x), attn.proj(expected), atol=1e-5)


def test_lora_starts_as_identity_and_trains_only_low_rank_q_v_and_the_decoder():
    model = build_sam(SamConfig.tiny(num_mask_tokens=3), seed=0).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    names = apply_lora(model, rank=2)
    assert all(isinstance(b.attn.qkv, LoRAQKV) for b in model.image_encoder.blocks)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("image_encoder.")} == set(names)
    assert any(n.startswith("mask_decoder.") for n in trainable) and any(
        n.startswith("prompt_encoder.") for n in trainable
    )
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randint(0, 3, (2, 64, 64))
    for _ in range(3):
        optimiser.zero_grad()
        F.cross_entropy(model(x), target).backward()
        optimiser.step()
    after = model.state_dict()
    for key, value in base.items():
        if key.startswith("image_encoder."):
            assert torch.equal(after[key], value), key
    assert any(torch.count_nonzero(v) for k, v in lora_state_dict(model).items() if ".lora_b_" in k)
    qkv = model.image_encoder.blocks[0].attn.qkv
    delta = qkv.delta_weight()
    assert torch.count_nonzero(delta[qkv.dim : 2 * qkv.dim]) == 0 and torch.count_nonzero(delta[: qkv.dim]) > 0


def test_merged_lora_weights_load_strictly_into_a_plain_sam_and_give_the_same_output():
    model = build_sam(SamConfig.tiny(), seed=0).eval()
    apply_lora(model, rank=2, alpha=4.0)
    for block in model.image_encoder.blocks:
        torch.nn.init.normal_(block.attn.qkv.lora_b_q.weight, std=0.1)
        torch.nn.init.normal_(block.attn.qkv.lora_b_v.weight, std=0.1)
    plain = build_sam(SamConfig.tiny(), seed=1).eval()
    plain.load_state_dict(merge_lora(model), strict=True)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)
    wrapped_again = build_sam(SamConfig.tiny(), seed=2).eval()
    apply_lora(wrapped_again, rank=2, alpha=4.0)
    wrapped_again.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model)


def test_official_layout_adapts_to_class_tokens_and_a_smaller_canvas():
    source = build_sam(SamConfig.tiny(num_mask_tokens=4, image_size=64), seed=0)
    config = SamConfig.tiny(num_mask_tokens=6, image_size=32)
    target = build_sam(config, seed=1)
    with pytest.raises(ModelError, match="adapt=True"):
        load_sam_weights(target, source.state_dict())
    report = load_sam_weights(target, source.state_dict(), adapt=True)
    assert any("mask_tokens" in line for line in report.adapted) and any("pos_embed" in line for line in report.adapted)
    got, ref = target.state_dict(), source.state_dict()
    assert torch.equal(got["mask_decoder.mask_tokens.weight"][:4], ref["mask_decoder.mask_tokens.weight"])
    assert torch.equal(
        got["mask_decoder.output_hypernetworks_mlps.5.layers.0.weight"],
        ref["mask_decoder.output_hypernetworks_mlps.1.layers.0.weight"],
    )
    assert got["image_encoder.blocks.1.attn.rel_pos_h"].shape == (7, 16)  # global block: 2 * 4 - 1
    assert torch.equal(got["image_encoder.blocks.0.attn.rel_pos_h"], ref["image_encoder.blocks.0.attn.rel_pos_h"])
    state, notes = adapt_state_dict(ref, SamConfig.tiny())
    assert notes == [] and all(torch.equal(state[k], ref[k]) for k in ref)
    with torch.no_grad():
        assert target(torch.randn(1, 1, 32, 32)).shape == (1, 6, 32, 32)


def test_config_round_trips_and_rejects_inconsistent_sizes():
    for config in (SamConfig.vit_b(), SamConfig.tiny(num_mask_tokens=3)):
        assert SamConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SamConfig.vit_b().embedding_size == 64 and SamConfig.vit_b().global_attn_indexes == (2, 5, 8, 11)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SamConfig(image_size=1000)
    with pytest.raises(ValueError, match="unknown SamConfig fields"):
        SamConfig.from_dict({"embed": 3})
