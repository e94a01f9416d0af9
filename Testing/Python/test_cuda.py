"""On a CUDA device: a training step, mixed-precision inference and the streamed sliding window.

Marked ``cuda``: they run where ``torch.cuda.is_available()`` and are skipped (saying so) everywhere else, so the
CPU-only CI passes without them and a GPU machine runs them with the rest (``pytest -m cuda`` alone).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import box_cases, make_tiny_card, synthetic_case

from ASSFTActive.finetune.config import TrainConfig
from ASSFTActive.finetune.training import train_supervised
from ASSFTActive.inference import InferenceConfig, Predictor
from ASSFTActive.inference.sliding import stream_sliding_window
from ASSFTActive.io import Volume
from ASSFTActive.models import build_network, load_card, load_model

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")


def test_a_training_step_on_cuda_updates_the_weights_on_the_device_with_finite_losses(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "card"))
    network = build_network(card)
    before = [p.detach().clone() for p in network.parameters()]
    losses = train_supervised(network, card, box_cases(2), TrainConfig(iterations=3, batch_size=2), device=CUDA)
    assert len(losses) == 3 and all(np.isfinite(losses))
    after = list(network.parameters())
    assert all(p.device.type == "cuda" for p in after)
    assert any(not torch.equal(b, a.detach().cpu()) for b, a in zip(before, after))


def test_mixed_precision_inference_on_cuda_labels_like_float32_on_the_cpu(tmp_path):
    card = load_card(make_tiny_card(tmp_path / "card"))
    image, _, affine = synthetic_case(3)
    volume = Volume(image, affine)
    on_gpu = Predictor(load_model(card), config=InferenceConfig(amp=True), device=CUDA).predict(volume)
    on_cpu = Predictor(load_model(card), config=InferenceConfig(amp=False), device=torch.device("cpu")).predict(volume)
    assert on_gpu.label.shape == on_cpu.label.shape
    assert float(np.mean(on_gpu.label == on_cpu.label)) > 0.99
    assert float(np.max(np.abs(on_gpu.max_prob.astype(np.float32) - on_cpu.max_prob.astype(np.float32)))) < 0.05


def test_the_streamed_sliding_window_on_cuda_equals_monai_on_cuda():
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, 3, padding=1).to(CUDA).eval()
    image = torch.randn(1, 40, 36, 30, device=CUDA)
    rows = []
    with torch.no_grad():
        stream_sliding_window(
            image,
            (16, 16, 16),
            network,
            lambda blended, first: rows.append(blended.clone()),
            overlap=0.5,
            mode="gaussian",
            sw_batch_size=2,
            device=CUDA,
        )
        reference = sliding_window_inference(image[None], (16, 16, 16), 2, network, overlap=0.5, mode="gaussian")[0]
    streamed = torch.cat(rows, dim=1)
    assert streamed.device.type == "cuda" and streamed.shape == reference.shape
    assert torch.allclose(streamed, reference, atol=1e-4)
