"""Pseudo-labellers that are not the student: the frozen current model with flip test-time augmentation.

A Mean Teacher is an average of the student's own past weights, so it shares the student's mistakes (confirmation
bias). The frozen model the run started from (the current, active model) never sees the student's updates; averaging
its softmax over flipped copies of the patch (each flipped back) gives steadier and better-calibrated labels than one
pass.

MONAI's ``TestTimeAugmentation`` runs on whole volumes through a dictionary pipeline and inverts random transforms;
here a patch batch is already in model space and the flips are exact inverses of themselves, so a few lines do it.

References:
    Wang et al., "Aleatoric uncertainty estimation with test-time augmentation for medical image segmentation with
    convolutional neural networks", Neurocomputing 2019 (flip test-time augmentation);
    Tarvainen and Valpola, "Mean teachers are better role models", NeurIPS 2017 (the EMA teacher this replaces).
"""

from __future__ import annotations

import copy
from typing import Protocol, Sequence, Tuple

import torch
from torch import nn

__all__ = ["ALL_SINGLE_FLIPS", "FrozenFlipTeacher", "PatchLabeller", "flip_tta_probabilities", "flips_of_axes"]

#: No flip, then a flip along each spatial axis of ``[B, C, X, Y, Z]`` (4 passes).
ALL_SINGLE_FLIPS: Tuple[Tuple[int, ...], ...] = ((), (2,), (3,), (4,))


class PatchLabeller(Protocol):
    """Labels the student's pseudo-labelled patches during training (in place of the EMA teacher), see
    :class:`~ASSFTActive.finetune.training.PseudoLabelTerm`."""

    def to(self, device: torch.device) -> PatchLabeller:
        """Move to the compute device (called when training starts)."""

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` patches -> class probabilities ``[B, C, X, Y, Z]``."""


def flips_of_axes(axes: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    """The passes for patch axes ``axes`` (0, 1, 2 = X, Y, Z): the patch as it is, then one flip per axis, as
    dimensions of ``[B, C, X, Y, Z]``."""
    return ((),) + tuple((2 + int(a),) for a in axes)


@torch.no_grad()
def flip_tta_probabilities(
    network: nn.Module, images: torch.Tensor, flips: Sequence[Tuple[int, ...]] = ALL_SINGLE_FLIPS
) -> torch.Tensor:
    """``mean_f flip_f(softmax(network(flip_f(images))))``: class probabilities averaged over flipped passes.

    Args:
        network: maps ``[B, 1, X, Y, Z]`` to logits ``[B, C, X, Y, Z]`` (used as it is: put it in eval mode).
        images: ``[B, 1, X, Y, Z]``.
        flips: the tensor dimensions flipped in each pass (``()`` = the patch as it is).

    Returns:
        float32 probabilities ``[B, C, X, Y, Z]``.
    """
    if not flips:
        raise ValueError("flip test-time augmentation needs at least one pass")
    total = None
    for dims in flips:
        view = torch.flip(images, dims) if dims else images
        probs = torch.softmax(network(view).float(), dim=1)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    return total / len(flips)


class FrozenFlipTeacher:
    """The model the run started from, frozen, labelling patches with flip test-time augmentation.

    Args:
        network: the current (active) model; a deep copy is kept in eval mode with gradients off, so the student's
            training never changes it.
        flips: as in :func:`flip_tta_probabilities`.
    """

    def __init__(self, network: nn.Module, flips: Sequence[Tuple[int, ...]] = ALL_SINGLE_FLIPS):
        self.network = copy.deepcopy(getattr(network, "module", network)).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.flips = tuple(tuple(f) for f in flips)

    def to(self, device: torch.device) -> FrozenFlipTeacher:
        self.network.to(device)
        return self

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` -> averaged probabilities ``[B, C, X, Y, Z]``."""
        return flip_tta_probabilities(self.network, images, self.flips)
