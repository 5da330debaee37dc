"""Training losses against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from feclip.losses import FEClipLoss, LossParts, bce_loss, dice_loss, focal_loss

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


def _parts(scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> tuple[float, ...]:
    """bce, focal, dice of one tap, the map upsampled to the mask size."""
    upsampled = F.interpolate(maps[None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[0]
    return bce_loss(scores, labels).item(), focal_loss(upsampled, masks).item(), dice_loss(upsampled, masks).item()


def test_per_tap_loss_is_the_sum_over_taps() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    parts = [_parts(tap_scores[t], tap_maps[t], labels, masks) for t in range(3)]
    bce, focal, dice = (sum(p[i] for p in parts) for i in range(3))
    loss = FEClipLoss(w_cls=2.0, w_mask=0.5)(tap_scores, tap_maps, labels, masks)
    assert isinstance(loss, LossParts)
    assert loss.bce.item() == pytest.approx(bce, rel=1e-5)
    assert loss.focal.item() == pytest.approx(focal, rel=1e-5)
    assert loss.dice.item() == pytest.approx(dice, rel=1e-5)
    assert loss.total.item() == pytest.approx(2.0 * bce + 0.5 * (focal + dice), rel=1e-5)


def test_mean_loss_is_taken_on_the_tap_average() -> None:
    tap_scores, tap_maps, labels, masks = _example()
    bce, focal, dice = _parts(tap_scores.mean(0), tap_maps.mean(0), labels, masks)
    loss = FEClipLoss(reduction="mean")(tap_scores, tap_maps, labels, masks)
    assert loss.total.item() == pytest.approx(bce + focal + dice, rel=1e-5)
    per_tap = FEClipLoss()(tap_scores, tap_maps, labels, masks)
    assert per_tap.total.item() > loss.total.item()  # three taps' losses against one


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
    for reduction in ("per_tap", "mean"):
        loss = FEClipLoss(reduction=reduction)(tap_scores, tap_maps, labels, masks)
        assert 0 <= loss.total.item() < 1e-4
    wrong = FEClipLoss()(1 - tap_scores, 1 - tap_maps, labels, masks)
    assert wrong.total.item() > 10


def test_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction must be 'per_tap' or 'mean', got 'sum'"):
        FEClipLoss(reduction="sum")


def test_bce_matches_torch_and_needs_no_autocast_unsafe_op() -> None:
    # F.binary_cross_entropy refuses to run under CUDA autocast; bce_loss is written out and must agree with it.
    scores, labels = torch.tensor([0.1, 0.8, 0.5, 0.999]), torch.tensor([0, 1, 1, 0])
    expected = torch.nn.functional.binary_cross_entropy(scores, labels.float())
    torch.testing.assert_close(bce_loss(scores, labels), expected, rtol=1e-6, atol=1e-7)
