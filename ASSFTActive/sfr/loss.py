"""SFR's fine-tuning loss on stitched canvases: ``0.5 * (CE + Dice)``, blind to the padding label.

Cross-entropy ignores :data:`~ASSFTActive.sfr.stitching.IGNORE_INDEX` pixels (``ignore_index``), and the Dice term
is MONAI's :class:`~monai.losses.MaskedDiceLoss` with those pixels masked out, so blank cells and cell margins never
pull the prediction toward any class.

References:
    Li et al., SFR, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.2 (``0.5 * (CE(ignore 255) + Dice)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss

from .stitching import IGNORE_INDEX

__all__ = ["stitched_dice_ce"]


def stitched_dice_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    ce_weight: float = 0.5,
    dice_weight: float = 0.5,
) -> torch.Tensor:
    """``ce_weight * CE + dice_weight * Dice`` over the pixels whose label is not ``ignore_index``.

    Args:
        logits: ``[B, C, H, W]`` class logits (background is class 0).
        target: ``[B, H, W]`` integer labels in ``0..C-1`` or ``ignore_index``.

    Returns:
        a scalar; 0 (with a gradient) when every pixel is ignored.
    """
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits [B, C, H, W] and target [B, H, W], got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    target = target.long()
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    bad = target[valid]
    if int(bad.min()) < 0 or int(bad.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1} or be {ignore_index}")
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    clean = torch.where(valid, target, torch.zeros_like(target))
    dice = MaskedDiceLoss(to_onehot_y=True, softmax=True)(logits, clean[:, None], mask=valid[:, None].float())
    return ce_weight * ce + dice_weight * dice
