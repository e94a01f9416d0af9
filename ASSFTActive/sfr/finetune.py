"""SFR stage 2: fine-tune SAM on the stitched canvases of labelled volumes (and, for SFR+, selected pseudo-labels).

Each labelled volume is brought into SAM's input space (:class:`SamInput`: orientation, spacing, intensity profile,
the axis slices are cut along), its slices are stitched on one canvas (:mod:`.stitching`), and SAM learns the
stitched label with ``0.5 * (CE + Dice)`` blind to the padding label (:func:`.loss.stitched_dice_ce`). Every
iteration draws ``batch_size`` volumes; the augmentation is SFR's: a per-slice monotone Bezier intensity curve
before stitching and a random rot90/flip of the whole canvas. AdamW with a poly learning-rate decay (optionally after
a linear warm-up); LoRA of rank ``lora_rank`` on the image encoder's q/v with the rest of the encoder frozen, the
prompt encoder and mask decoder trained; ``lora_rank = 0`` trains every parameter (how the embedded prior is
pre-trained from scratch).

The model given is never modified: a copy is trained and returned. Progress goes through
:mod:`ASSFTActive.progress` (a ``phase`` event, then one ``progress`` event per iteration with the loss); a callback
cancels by raising :class:`~ASSFTActive.errors.CancelledError`, which propagates, and the copy is discarded.
Deterministic for a seed on the CPU (numpy generator for sampling and augmentation, a forked torch RNG for LoRA).

Two documented departures from SFR's released code (method-spec §2.1): the Bezier curve is applied to each slice's
intensities rescaled to ``[0, 1]`` by the slice's own min/max (the code applies it to z-scored values and clips
everything outside ``[0, 1]``), and the canvas rot/flip draws one of the 8 square symmetries uniformly, identity
included (the code's ``RandomRotFlip`` always flips, so the model never sees the canvas as inference shows it).

References:
    Li et al., SFR, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.1 (Bezier curve, rot/flip), §2.2
    (AdamW 1e-3, wd 0.1, poly 0.9, 6,000 iterations, batch 2, LoRA rank 4 on q/v, seed 1337). Zhou et al., Models
    Genesis (the Bezier intensity curve).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..inference import label_to_model_space, to_model_space
from ..progress import ProgressCallback, emit
from .config import SfrFinetuneConfig
from .inputs import SamInput, SfrCase
from .loss import stitched_dice_ce
from .pseudo import volume_layout
from .sam import LoRAQKV, Sam, apply_lora
from .stitching import IGNORE_INDEX, StitchLayout, stitch, stitch_labels

__all__ = [
    "SfrFinetuneConfig",
    "SfrFinetuneResult",
    "StitchedCase",
    "bezier_curve",
    "finetune_sam",
    "poly_factor",
    "prepare_cases",
    "CanvasSampler",
]

PHASE = "sfr_finetune"


@dataclass(frozen=True)
class StitchedCase:
    """A volume in SAM's input space, ready to stitch.

    Attributes:
        slices: float32 ``[D, H, W]`` (the model-space array with the slice axis first).
        labels: int64 ``[D, H, W]`` class indices; :data:`~.stitching.IGNORE_INDEX` where a voxel must not count
            (an unconfident pseudo-labelled voxel).
        layout: where the slices lie on the canvas.
    """

    case_id: str
    slices: torch.Tensor
    labels: torch.Tensor
    layout: StitchLayout


def prepare_cases(cases: Sequence[SfrCase], canvas: int, sam_input: Optional[SamInput] = None) -> List[StitchedCase]:
    """Bring labelled (or pseudo-labelled) volumes into SAM's input space and plan their layouts.

    A case's ``voxel_mask`` (bool ``[I, J, K]`` on the image grid), when given, marks the voxels that count; the
    others get the ignore label, so SFR+ can fine-tune on the confident voxels of a pseudo-label only.
    """
    sam_input = sam_input if sam_input is not None else SamInput()
    prepared = []
    for case in cases:
        image, space = to_model_space(case.image, sam_input)
        label = label_to_model_space(np.asarray(case.label.array), space).astype(np.int64)
        if case.voxel_mask is not None:
            keep = label_to_model_space(np.asarray(case.voxel_mask, dtype=np.uint8), space).astype(bool)
            label = np.where(keep, label, IGNORE_INDEX)
        axis = sam_input.slice_axis
        slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image[0].numpy(), axis, 0)))
        labels = torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, axis, 0)))
        layout = volume_layout(image.shape[1:], canvas, axis, sam_input.resize)
        prepared.append(StitchedCase(case.case_id, slices, labels, layout))
    return prepared


def bezier_curve(rng: np.random.Generator, samples: int = 1000) -> Tuple[np.ndarray, np.ndarray]:
    """A random monotone cubic Bezier curve on ``[0, 1]``: control points (0, 0), two random points, (1, 1), both
    coordinates sorted (method-spec §2.1). Returns ``(x, y)`` increasing samples for ``np.interp``."""
    inner = np.sort(rng.random((2, 2)), axis=0)  # sorted x and y of the two random points
    points = np.array([[0.0, 0.0], inner[0], inner[1], [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, samples)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    curve = basis @ points
    return np.sort(curve[:, 0]), np.sort(curve[:, 1])


def _bezier_slices(slices: torch.Tensor, probability: float, rng: np.random.Generator) -> torch.Tensor:
    """Each slice ``[H, W]`` of ``[D, H, W]`` gets its own random curve with ``probability``, on its intensities
    rescaled to ``[0, 1]`` by the slice's min/max (and mapped back)."""
    chosen = rng.random(slices.shape[0]) < probability
    if not chosen.any():
        return slices
    out = slices.clone().numpy()
    for k in np.nonzero(chosen)[0]:
        plane = out[k]
        lo, hi = float(plane.min()), float(plane.max())
        if hi - lo < 1e-6:
            continue
        xs, ys = bezier_curve(rng)
        out[k] = np.interp((plane - lo) / (hi - lo), xs, ys).astype(np.float32) * (hi - lo) + lo
    return torch.from_numpy(out)


def _rot_flip(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    image, label = torch.rot90(image, k, (-2, -1)), torch.rot90(label, k, (-2, -1))
    if flip:
        image, label = torch.flip(image, (-1,)), torch.flip(label, (-1,))
    return image.contiguous(), label.contiguous()


class CanvasSampler:
    """Draws batches of stitched canvases ``[B, 1, S, S]`` and labels ``[B, S, S]`` (int64) with augmentation."""

    def __init__(self, cases: Sequence[StitchedCase], config: SfrFinetuneConfig, rng: np.random.Generator):
        if not cases:
            raise InputError("SFR fine-tuning needs at least one labelled volume")
        self.cases, self.config, self.rng = list(cases), config, rng

    def sample(self, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for _ in range(count):
            case = self.cases[int(self.rng.integers(len(self.cases)))]
            slices = case.slices
            if self.config.bezier_probability > 0:
                slices = _bezier_slices(slices, self.config.bezier_probability, self.rng)
            image = stitch(slices, case.layout)
            label = stitch_labels(case.labels, case.layout)
            if self.config.rot_flip:
                image, label = _rot_flip(image, label, self.rng)
            images.append(image)
            labels.append(label)
        return torch.stack(images)[:, None], torch.stack(labels)


def poly_factor(step: int, config: SfrFinetuneConfig) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then ``(1 - t / T) ** poly_power`` (SFR's poly decay)."""
    if step < config.warmup_iterations:
        return (step + 1) / config.warmup_iterations
    return max(0.0, 1.0 - step / config.iterations) ** config.poly_power


@dataclass(frozen=True)
class SfrFinetuneResult:
    """A fine-tuned SAM and how it was made.

    Attributes:
        model: the trained copy, in eval mode (LoRA wrappers kept when ``lora_rank > 0``).
        losses: the loss of every iteration.
        seconds: wall-clock training time.
        trainable_parameters: number of parameters the optimiser updated.
        case_ids: the volumes trained on.
    """

    model: Sam
    losses: Tuple[float, ...]
    seconds: float
    trainable_parameters: int
    case_ids: Tuple[str, ...]
    config: SfrFinetuneConfig


def _rng_state(state: Mapping[str, Any]) -> Dict[str, Any]:
    """A numpy generator state read back from a checkpoint (``torch.load`` may give tensors for its integers)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return int(value) if isinstance(value, torch.Tensor) else value

    return plain(state)


def _trainable(model: Sam, config: SfrFinetuneConfig) -> List[nn.Parameter]:
    if config.lora_rank == 0:
        for param in model.parameters():
            param.requires_grad_(True)
        return list(model.parameters())
    wrapped = isinstance(model.image_encoder.blocks[0].attn.qkv, LoRAQKV)
    if not wrapped:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            apply_lora(model, rank=config.lora_rank, alpha=config.lora_alpha)
    for name, param in model.image_encoder.named_parameters():
        param.requires_grad_(".lora_" in name)
    for module in (model.prompt_encoder, model.mask_decoder):
        for param in module.parameters():
            param.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def finetune_sam(
    model: Sam,
    cases: Sequence[SfrCase],
    config: SfrFinetuneConfig = SfrFinetuneConfig(),
    sam_input: Optional[SamInput] = None,
    progress: Optional[ProgressCallback] = None,
    device: Optional[torch.device] = None,
    *,
    checkpoint: Optional[Callable[[int, Dict[str, Any]], None]] = None,
    checkpoint_every: int = 0,
    resume: Optional[Mapping[str, Any]] = None,
) -> SfrFinetuneResult:
    """Fine-tune a copy of ``model`` on the stitched canvases of ``cases`` (SFR stage 2).

    Args:
        model: a :class:`~.sam.Sam` whose ``num_mask_tokens`` is the number of classes (background first). Not
            modified.
        cases: labelled volumes (``label`` on the image's grid, class indices); pseudo-labelled ones may carry a
            ``voxel_mask`` of the voxels that count.
        config: the recipe; ``config.canvas`` must equal the model's ``image_size`` when given.
        sam_input: how volumes are brought into SAM's input space (:class:`~.inputs.SamInput` defaults).
        progress: receives a ``phase`` event and one ``progress`` event per iteration (metrics ``loss``, ``lr``);
            raising :class:`~ASSFTActive.errors.CancelledError` in it cancels.
        device: where to train; CUDA when present, else the CPU.
        checkpoint: called as ``checkpoint(step, state)`` every ``checkpoint_every`` steps; ``state`` holds
            ``step``, ``model`` (the trained copy's state dict, LoRA tensors included), ``optimizer``,
            ``scheduler``, ``rng`` (the sampler's generator state) and ``losses``. It loads with
            ``torch.load(weights_only=True)`` once saved with ``torch.save``; writing it is the caller's business.
        resume: such a ``state``: training continues at its step and ends exactly as an uninterrupted run (same
            ``model``, ``cases``, ``config``).

    Returns:
        :class:`SfrFinetuneResult` with the trained copy (``losses`` of every step, resumed ones included).

    Raises:
        InputError: no cases, a canvas size the model does not take, a label class the model has no output for,
            or slices that do not fit the canvas.
    """
    side = int(model.config.image_size)
    if config.canvas is not None and int(config.canvas) != side:
        raise InputError(
            f"canvas {config.canvas} differs from the SAM's image_size {side}; a SAM takes canvases "
            "of its own image size (build or adapt the SAM for this canvas)"
        )
    if not cases:
        raise InputError("SFR fine-tuning needs at least one labelled volume")
    stitched = prepare_cases(cases, side, sam_input)
    n_classes = int(model.config.num_mask_tokens)
    for case in stitched:
        valid = case.labels[case.labels != IGNORE_INDEX]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= n_classes):
            raise InputError(
                f"label of {case.case_id} has classes up to {int(valid.max())} but the SAM has "
                f"{n_classes} outputs (num_mask_tokens = number of classes, background included)"
            )
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    net = copy.deepcopy(model).to(device)
    params = _trainable(net, config)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: poly_factor(step, config))
    rng = np.random.default_rng(config.seed)
    sampler = CanvasSampler(stitched, config, rng)
    use_amp = bool(config.amp and device.type == "cuda")
    n_trainable = sum(p.numel() for p in params)
    losses: List[float] = []
    first = 0
    if resume is not None:
        first = int(resume["step"])
        if not 0 <= first <= config.iterations:
            raise InputError(f"cannot resume at step {first} of {config.iterations}")
        net.load_state_dict(resume["model"], strict=True)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        rng.bit_generator.state = _rng_state(resume["rng"])
        losses = [float(v) for v in resume["losses"]]
    emit(
        progress,
        "phase",
        phase=PHASE,
        step=first,
        total=config.iterations,
        message=f"fine-tuning SAM on {len(stitched)} stitched volume(s), {n_trainable} trainable parameters"
        + (f", resumed at step {first}" if first else ""),
    )
    start = time.time()
    net.train()
    for step in range(first, config.iterations):
        images, labels = sampler.sample(config.batch_size)
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = net(images)
        loss = stitched_dice_ce(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InputError(f"SFR fine-tuning diverged at step {step + 1} (loss {value}); lower the learning rate")
        losses.append(value)
        emit(
            progress,
            "progress",
            phase=PHASE,
            step=step + 1,
            total=config.iterations,
            message=f"SAM step {step + 1}/{config.iterations} loss {value:.4f}",
            metrics={"loss": value, "lr": float(lr)},
        )
        if checkpoint is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
            checkpoint(
                step + 1,
                {
                    "step": step + 1,
                    "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng.bit_generator.state,
                    "losses": list(losses),
                },
            )
    net.eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return SfrFinetuneResult(
        model=net,
        losses=tuple(losses),
        seconds=time.time() - start,
        trainable_parameters=n_trainable,
        case_ids=tuple(c.case_id for c in stitched),
        config=config,
    )
