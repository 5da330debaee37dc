"""Training losses against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from feclip.losses import FEClipLoss, LossParts, bce_loss, dice_loss, focal_loss
from feclip.train import TrainConfig, build_loss

# One 2x2 image: probabilities and mask.
PROBS = torch.tensor([[[0.9, 0.2], [0.6, 0.5]]])
MASK = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
# p_t is p on anomalous pixels and 1 - p on normal ones.
P_T = [0.9, 0.8, 0.4, 0.5]


def test_bce_by_hand() -> None:
    scores, labels = torch.tensor([0.8, 0.3, 0.6]), torch.tensor([1, 0, 1])
    expected = -(math.log(0.8) + math.log(1 - 0.3) + math.log(0.6)) / 3  # = 0.36020...
    assert bce_loss(scores, labels).item() == pytest.approx(expected, rel=1e-6)


def test_bce_clamps_certain_mistakes() -> None:
    loss = bce_loss(torch.tensor([0.0, 1.0]), torch.tensor([1, 0]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(-math.log(1e-6), rel=1e-3)


def test_focal_by_hand() -> None:
    # -(1 - p_t)^2 log p_t: 0.01 * 0.10536 + 0.04 * 0.22314 + 0.36 * 0.91629 + 0.25 * 0.69315, over 4 pixels
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in P_T) / 4
    assert expected == pytest.approx(0.128283, abs=1e-6)
    assert focal_loss(PROBS, MASK).item() == pytest.approx(expected, rel=1e-6)


def test_focal_alpha_and_gamma() -> None:
    alphas = [0.25, 0.75, 0.75, 0.25]  # alpha on anomalous pixels, 1 - alpha on normal ones
    expected = sum(-a * (1 - p) * math.log(p) for a, p in zip(alphas, P_T)) / 4
    assert focal_loss(PROBS, MASK, gamma=1.0, alpha=0.25).item() == pytest.approx(expected, rel=1e-6)
    # gamma = 0 is plain binary cross-entropy.
    bce = F.binary_cross_entropy(PROBS, MASK).item()
    assert focal_loss(PROBS, MASK, gamma=0.0).item() == pytest.approx(bce, rel=1e-6)


def test_dice_by_hand() -> None:
    # sum(p m) = 0.9 + 0.5 = 1.4, sum(p) = 2.2, sum(m) = 2: 1 - (2.8 + 1) / (2.2 + 2 + 1) = 1 - 3.8 / 5.2
    assert dice_loss(PROBS, MASK).item() == pytest.approx(1 - 3.8 / 5.2, rel=1e-6)
    # A normal image (empty mask) predicted all-zero scores (0 + 1) / (0 + 0 + 1) = 1, a zero loss.
    probs = torch.cat([PROBS, torch.zeros(1, 2, 2)])
    masks = torch.cat([MASK, torch.zeros(1, 2, 2)])
    assert dice_loss(probs, masks).item() == pytest.approx((1 - 3.8 / 5.2) / 2, rel=1e-6)
    assert dice_loss(PROBS, MASK, smooth=0.0).item() == pytest.approx(1 - 2.8 / 4.2, rel=1e-6)


def _example(taps: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    tap_scores = torch.rand(taps, 2, generator=generator)
    tap_maps = torch.rand(taps, 2, 4, 4, generator=generator)
    labels = torch.tensor([0, 1])
    masks = torch.zeros(2, 8, 8)
    masks[1, 2:6, 3:7] = 1
    return tap_scores, tap_maps, labels, masks


def _parts(
    scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
    gamma: float = 2.0, alpha: float | None = 0.25, smooth: float = 1e-6,
) -> tuple[float, ...]:
    """bce, focal, dice of one tap, the map upsampled to the mask size."""
    upsampled = F.interpolate(maps[None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (bce_loss(scores, labels).item(), focal_loss(upsampled, masks, gamma, alpha).item(),
            dice_loss(upsampled, masks, smooth).item())


@pytest.mark.parametrize("tap_reduction", ["mean", "sum"])
def test_per_tap_losses_combine_over_taps(tap_reduction: str) -> None:
    tap_scores, tap_maps, labels, masks = _example()
    parts = [_parts(tap_scores[t], tap_maps[t], labels, masks) for t in range(3)]
    bce, focal, dice = (sum(p[i] for p in parts) / (3 if tap_reduction == "mean" else 1) for i in range(3))
    loss = FEClipLoss(w_cls=2.0, w_mask=0.5, tap_reduction=tap_reduction)(tap_scores, tap_maps, labels, masks)
    assert isinstance(loss, LossParts)
    assert loss.bce.item() == pytest.approx(bce, rel=1e-5)
    assert loss.focal.item() == pytest.approx(focal, rel=1e-5)
    assert loss.dice.item() == pytest.approx(dice, rel=1e-5)
    assert loss.total.item() == pytest.approx(2.0 * bce + 0.5 * (focal + dice), rel=1e-5)


def test_tap_average_supervision_is_one_loss_on_the_averaged_predictions() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    bce, focal, dice = _parts(tap_scores.mean(0), tap_maps.mean(0), labels, masks)
    for tap_reduction in ("mean", "sum"):  # one "tap": nothing to combine
        loss = FEClipLoss(supervise="tap_average", tap_reduction=tap_reduction)(tap_scores, tap_maps, labels, masks)
        assert loss.total.item() == pytest.approx(bce + focal + dice, rel=1e-5)
    legacy = FEClipLoss(supervise="mean")  # the old spelling of "tap_average"
    assert legacy.supervise == "tap_average"


def test_loss_options_reach_the_pixel_terms() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    options = {"gamma": 0.5, "alpha": 0.6, "smooth": 0.3}
    parts = [_parts(tap_scores[t], tap_maps[t], labels, masks, **options) for t in range(3)]
    focal, dice = (sum(p[i] for p in parts) / 3 for i in (1, 2))
    loss = FEClipLoss(gamma=0.5, focal_alpha=0.6, dice_smooth=0.3)(tap_scores, tap_maps, labels, masks)
    assert loss.focal.item() == pytest.approx(focal, rel=1e-5)
    assert loss.dice.item() == pytest.approx(dice, rel=1e-5)
    no_alpha = FEClipLoss(focal_alpha=None)(tap_scores, tap_maps, labels, masks)
    plain = sum(_parts(tap_scores[t], tap_maps[t], labels, masks, alpha=None)[1] for t in range(3)) / 3
    assert no_alpha.focal.item() == pytest.approx(plain, rel=1e-5)


def test_pixel_terms_only_on_images_with_a_real_mask() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    has_mask = torch.tensor([False, True])
    loss = FEClipLoss()(tap_scores, tap_maps, labels, masks, has_mask=has_mask)
    full_bce = FEClipLoss()(tap_scores, tap_maps, labels, masks).bce
    only_second = FEClipLoss()(tap_scores[:, 1:], tap_maps[:, 1:], labels[1:], masks[1:])
    assert loss.bce.item() == pytest.approx(full_bce.item(), rel=1e-6)  # the image term sees every image
    assert loss.focal.item() == pytest.approx(only_second.focal.item(), rel=1e-6)
    assert loss.dice.item() == pytest.approx(only_second.dice.item(), rel=1e-6)
    none = FEClipLoss()(tap_scores, tap_maps, labels, masks, has_mask=torch.tensor([False, False]))
    assert none.focal.item() == 0 and none.dice.item() == 0 and none.total.item() == pytest.approx(full_bce.item())


# The done-criterion of issue 9: TrainConfig()'s loss on a fixed batch, written out in float64.
# Two taps, two images, maps on a 2x2 grid upsampled to 4x4 masks.
_TAP_SCORES = [[0.3, 0.8], [0.6, 0.7]]  # (T, B)
_TAP_MAPS = [  # (T, B, 2, 2)
    [[[0.2, 0.4], [0.1, 0.3]], [[0.7, 0.2], [0.5, 0.9]]],
    [[[0.1, 0.6], [0.2, 0.2]], [[0.8, 0.3], [0.4, 0.6]]],
]
_LABELS = [0, 1]
_MASK_1 = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]  # image 0 is normal: empty mask


def _hand_loss() -> float:
    # Bilinear 2 -> 4 with half-pixel centres: output pixel i samples (i + 0.5) / 2 - 0.5, clamped to [0, 1].
    upsample = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    masks = np.array([np.zeros((4, 4)), np.array(_MASK_1, dtype=float)])
    alpha, gamma, smooth = 0.25, 2.0, 1e-6
    bce, focal, dice = [], [], []
    for scores, maps in zip(np.array(_TAP_SCORES), np.array(_TAP_MAPS)):
        y = np.array(_LABELS, dtype=float)
        bce.append(np.mean(-(y * np.log(scores) + (1 - y) * np.log(1 - scores))))
        pixel_focal, image_dice = [], []
        for grid, mask in zip(maps, masks):
            p = upsample @ grid @ upsample.T  # (4, 4)
            p_t = np.where(mask == 1, p, 1 - p)
            weight = np.where(mask == 1, alpha, 1 - alpha)  # 0.25 on anomalous pixels, 0.75 on normal ones
            pixel_focal.append(-weight * (1 - p_t) ** gamma * np.log(p_t))
            image_dice.append(1 - (2 * (p * mask).sum() + smooth) / (p.sum() + mask.sum() + smooth))
        focal.append(np.mean(pixel_focal))  # mean over all pixels of the batch
        dice.append(np.mean(image_dice))  # mean over images
    # Mean over the two taps, weights w_cls = w_mask = 1.
    return float(np.mean(bce) + np.mean(focal) + np.mean(dice))


def test_train_config_defaults_give_the_hand_computed_loss() -> None:
    expected = _hand_loss()
    assert expected == pytest.approx(1.292981, abs=5e-7)  # pinned, so that a change to the hand formula shows too
    loss = build_loss(TrainConfig())
    masks = torch.stack([torch.zeros(4, 4), torch.tensor(_MASK_1, dtype=torch.float32)])
    parts = loss(torch.tensor(_TAP_SCORES), torch.tensor(_TAP_MAPS), torch.tensor(_LABELS), masks)
    assert parts.total.item() == pytest.approx(expected, rel=1e-6)


def test_gradients_reach_the_predictions_but_not_the_logged_parts() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    tap_scores.requires_grad_(True)
    tap_maps.requires_grad_(True)
    loss = FEClipLoss()(tap_scores, tap_maps, labels, masks)
    loss.total.backward()
    assert tap_scores.grad.abs().sum() > 0 and tap_maps.grad.abs().sum() > 0
    assert not (loss.bce.requires_grad or loss.focal.requires_grad or loss.dice.requires_grad)


def test_a_perfect_prediction_costs_almost_nothing() -> None:
    _, _, labels, masks = _example()
    tap_scores = labels.float().expand(3, 2)
    tap_maps = masks.expand(3, 2, 8, 8)  # at the mask resolution, so upsampling is exact
    for supervise in ("per_tap", "tap_average"):
        loss = FEClipLoss(supervise=supervise)(tap_scores, tap_maps, labels, masks)
        assert 0 <= loss.total.item() < 1e-4
    wrong = FEClipLoss()(1 - tap_scores, 1 - tap_maps, labels, masks)
    assert wrong.total.item() > 10


def test_bad_options() -> None:
    with pytest.raises(ValueError, match=r"supervise must be one of \('per_tap', 'tap_average'\), got 'sum'"):
        FEClipLoss(supervise="sum")
    with pytest.raises(ValueError, match=r"tap_reduction must be one of \('mean', 'sum'\), got 'max'"):
        FEClipLoss(tap_reduction="max")
    with pytest.raises(ValueError, match="focal_alpha must be in"):
        FEClipLoss(focal_alpha=1.5)


def test_bce_matches_torch_and_needs_no_autocast_unsafe_op() -> None:
    # F.binary_cross_entropy refuses to run under CUDA autocast; bce_loss is written out and must agree with it.
    scores, labels = torch.tensor([0.1, 0.8, 0.5, 0.999]), torch.tensor([0, 1, 1, 0])
    expected = torch.nn.functional.binary_cross_entropy(scores, labels.float())
    torch.testing.assert_close(bce_loss(scores, labels), expected, rtol=1e-6, atol=1e-7)
