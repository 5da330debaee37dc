"""FE-CLIP's training objective: image BCE plus pixel focal and Dice losses.

``L = w_cls * L_bce(score, label) + w_mask * (L_focal(map, mask) + L_dice(map, mask))``

Two independent choices say how the taps enter it:

* ``supervise``: **what** is compared with the labels. ``"per_tap"`` (default): every tap's score and
  map, so each tapped block is supervised on its own; ``"tap_average"``: only the tap-averaged score and
  map (one loss, as if there were one tap).
* ``tap_reduction``: **how** the per-tap losses combine. ``"mean"`` (default): ``1/N sum_n``, what the
  reference implementation's training step computes and what its notes cite as the paper's Eq. 4 and 5
  (``L_cls = 1/N sum_n BCE(S_a,n, S_gt)``, ``L_mask = 1/N sum_n (Focal + Dice)(Up(M_a,n), M_gt)``);
  ``"sum"``: ``sum_n``, N times larger, what this library did before. Irrelevant with ``"tap_average"``.

The pixel terms follow the reference implementation: focal loss with ``alpha = 0.25`` on anomalous
pixels and ``0.75`` on normal ones, ``gamma = 2``; Dice with smoothing ``1e-6``.
All inputs are probabilities of the anomalous class in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SUPERVISE",
    "TAP_REDUCTIONS",
    "check_tap_options",
    "bce_loss",
    "focal_loss",
    "dice_loss",
    "LossParts",
    "FEClipLoss",
]

_EPS = 1e-6
Supervise = Literal["per_tap", "tap_average"]
TapReduction = Literal["mean", "sum"]
SUPERVISE: tuple[str, ...] = ("per_tap", "tap_average")
TAP_REDUCTIONS: tuple[str, ...] = ("mean", "sum")
# Before ``supervise`` had its name, ``reduction="mean"`` meant supervising the tap average.
_LEGACY_SUPERVISE = {"mean": "tap_average"}


def check_tap_options(supervise: str, tap_reduction: str) -> tuple[Supervise, TapReduction]:
    """``(supervise, tap_reduction)`` checked, with the old spelling ``supervise="mean"`` read as ``"tap_average"``.

    Raises:
        ValueError: An unknown value, naming the option.
    """
    supervise = _LEGACY_SUPERVISE.get(supervise, supervise)
    if supervise not in SUPERVISE:
        raise ValueError(f"supervise must be one of {SUPERVISE}, got {supervise!r}")
    if tap_reduction not in TAP_REDUCTIONS:
        raise ValueError(f"tap_reduction must be one of {TAP_REDUCTIONS}, got {tap_reduction!r}")
    return supervise, tap_reduction  # type: ignore[return-value]


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

    ``1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s)`` per image. A large ``s`` (1) keeps a normal
    image (empty mask) with a near-zero map near zero loss; a tiny one (the reference's ``1e-6``)
    only avoids 0/0, so on a normal image the loss stays near 1 unless the map is zero.

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
    """The total loss and its parts (detached parts, for logging), each already combined over taps."""

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
        supervise: ``"per_tap"`` (every tap's score and map) or ``"tap_average"`` (only the tap average).
            The old spelling ``"mean"`` is read as ``"tap_average"``.
        tap_reduction: ``"mean"`` (``1/N`` times the sum over taps, the reference's) or ``"sum"``.
        gamma: Focal exponent.
        focal_alpha: Focal weight of anomalous pixels (normal ones get ``1 - focal_alpha``); ``None``: no weighting.
        dice_smooth: Dice smoothing ``s``.
    """

    def __init__(
        self,
        w_cls: float = 1.0,
        w_mask: float = 1.0,
        supervise: Supervise = "per_tap",
        tap_reduction: TapReduction = "mean",
        gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
        dice_smooth: float = 1e-6,
    ) -> None:
        super().__init__()
        supervise, tap_reduction = check_tap_options(supervise, tap_reduction)
        if focal_alpha is not None and not 0 <= focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1] or None, got {focal_alpha}")
        self.w_cls, self.w_mask, self.gamma = w_cls, w_mask, gamma
        self.supervise, self.tap_reduction = supervise, tap_reduction
        self.focal_alpha, self.dice_smooth = focal_alpha, dice_smooth

    def _over_taps(self, per_tap: Tensor) -> Tensor:
        return per_tap.mean() if self.tap_reduction == "mean" else per_tap.sum()

    def forward(
        self, tap_scores: Tensor, tap_maps: Tensor, labels: Tensor, masks: Tensor, has_mask: Tensor | None = None
    ) -> LossParts:
        """Args:
            tap_scores: Image probabilities per tap, shape ``(T, B)``.
            tap_maps: Token-grid probabilities per tap, shape ``(T, B, h, w)``.
            labels: Image labels, shape ``(B,)``.
            masks: Pixel masks, shape ``(B, H, W)``.
            has_mask: Per image, shape ``(B,)``, whether its mask is ground truth; the pixel terms use only
                those images (all of them when ``None``), and are zero when there is none.

        Returns:
            :class:`LossParts`.
        """
        if self.supervise == "tap_average":
            tap_scores, tap_maps = tap_scores.mean(dim=0, keepdim=True), tap_maps.mean(dim=0, keepdim=True)
        bce = self._over_taps(torch.stack([bce_loss(score, labels) for score in tap_scores]))
        if has_mask is not None:
            keep = torch.as_tensor(has_mask, device=tap_maps.device).bool()
            tap_maps, masks = tap_maps[:, keep], masks[keep]
        if masks.shape[0] == 0:
            focal = dice = bce.new_zeros(())
        else:
            maps = F.interpolate(tap_maps.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)  # (T, B, H, W)
            focal = self._over_taps(torch.stack([focal_loss(m, masks, self.gamma, self.focal_alpha) for m in maps]))
            dice = self._over_taps(torch.stack([dice_loss(m, masks, self.dice_smooth) for m in maps]))
        total = self.w_cls * bce + self.w_mask * (focal + dice)
        return LossParts(total=total, bce=bce.detach(), focal=focal.detach(), dice=dice.detach())
