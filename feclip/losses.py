"""FE-CLIP's training objective: image BCE plus pixel focal and Dice losses.

``L = w_cls * L_bce(score, label) + w_mask * (L_focal(map, mask) + L_dice(map, mask))``

applied either to the tap-averaged predictions or to every tap and summed over taps
(the paper's reading: each tapped block is supervised on its own).
All inputs are probabilities of the anomalous class in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["bce_loss", "focal_loss", "dice_loss", "LossParts", "FEClipLoss"]

_EPS = 1e-6


def bce_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of image anomaly probabilities.

    Args:
        scores: Probabilities of shape ``(B,)``.
        labels: Targets in ``{0, 1}`` of shape ``(B,)``.

    Returns:
        Scalar mean loss.
    """
    # Written out rather than F.binary_cross_entropy, which refuses to run under CUDA autocast;
    # the probabilities are float32 here, so this is the same computation in any precision context.
    p, y = scores.float().clamp(_EPS, 1 - _EPS), labels.float()
    return -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean()


def focal_loss(probabilities: Tensor, masks: Tensor, gamma: float = 2.0, alpha: float | None = None) -> Tensor:
    """Focal loss (Lin et al., 2017) of pixel anomaly probabilities.

    ``FL = -a_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` on anomalous pixels and ``1 - p``
    on normal ones; ``a_t = alpha`` / ``1 - alpha`` when ``alpha`` is given, else 1.

    Args:
        probabilities: Anomaly probabilities of shape ``(B, H, W)``.
        masks: Ground truth in ``{0, 1}`` of shape ``(B, H, W)``.
        gamma: Focusing exponent.
        alpha: Optional weight of the anomalous class.

    Returns:
        Scalar mean over pixels.
    """
    p = probabilities.float().clamp(_EPS, 1 - _EPS)
    target = masks.float()
    p_t = p * target + (1 - p) * (1 - target)
    loss = -((1 - p_t) ** gamma) * torch.log(p_t)
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def dice_loss(probabilities: Tensor, masks: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss per image, averaged over the batch.

    ``1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s)`` per image; the smoothing ``s`` keeps a
    normal image (empty mask) with a near-zero map near zero loss.

    Args:
        probabilities: Anomaly probabilities of shape ``(B, H, W)``.
        masks: Ground truth in ``{0, 1}`` of shape ``(B, H, W)``.
        smooth: Additive smoothing ``s``.

    Returns:
        Scalar loss.
    """
    p, m = probabilities.float().flatten(1), masks.float().flatten(1)
    dice = (2 * (p * m).sum(dim=1) + smooth) / (p.sum(dim=1) + m.sum(dim=1) + smooth)
    return (1 - dice).mean()


@dataclass
class LossParts:
    """The total loss and its parts (detached parts, for logging)."""

    total: Tensor
    bce: Tensor
    focal: Tensor
    dice: Tensor


class FEClipLoss(nn.Module):
    """``w_cls * BCE + w_mask * (focal + Dice)`` on FE-CLIP's outputs.

    Pixel losses compare the token-grid maps, upsampled bilinearly, with the masks.

    Args:
        w_cls: Weight of the image-level BCE.
        w_mask: Weight of the pixel-level focal + Dice.
        reduction: ``"per_tap"``: every tap's score and map is supervised and the losses are
            summed over taps (the paper's reading); ``"mean"``: only the tap average is.
        gamma: Focal exponent.
    """

    def __init__(
        self,
        w_cls: float = 1.0,
        w_mask: float = 1.0,
        reduction: Literal["per_tap", "mean"] = "per_tap",
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if reduction not in ("per_tap", "mean"):
            raise ValueError(f"reduction must be 'per_tap' or 'mean', got {reduction!r}")
        self.w_cls, self.w_mask, self.reduction, self.gamma = w_cls, w_mask, reduction, gamma

    def forward(self, tap_scores: Tensor, tap_maps: Tensor, labels: Tensor, masks: Tensor) -> LossParts:
        """Args:
            tap_scores: Image probabilities per tap, shape ``(T, B)``.
            tap_maps: Token-grid probabilities per tap, shape ``(T, B, h, w)``.
            labels: Image labels, shape ``(B,)``.
            masks: Pixel masks, shape ``(B, H, W)``.

        Returns:
            :class:`LossParts`.
        """
        if self.reduction == "mean":
            tap_scores, tap_maps = tap_scores.mean(dim=0, keepdim=True), tap_maps.mean(dim=0, keepdim=True)
        maps = F.interpolate(tap_maps.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)  # (T, B, H, W)
        bce = sum(bce_loss(score, labels) for score in tap_scores)
        focal = sum(focal_loss(m, masks, self.gamma) for m in maps)
        dice = sum(dice_loss(m, masks) for m in maps)
        total = self.w_cls * bce + self.w_mask * (focal + dice)
        return LossParts(total=total, bce=bce.detach(), focal=focal.detach(), dice=dice.detach())
