"""TrainConfig: the reference implementation's recipe, its JSON form, and configs saved before today's fields."""

from __future__ import annotations

import json

import pytest

from feclip.train import TrainConfig


def test_defaults_are_the_reference_implementations_recipe() -> None:
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr, config.fc_patch_lr) == (9, 16, 5e-4, 5e-6)
    assert (config.w_cls, config.w_mask, config.supervise, config.tap_reduction, config.seed) == (1.0, 1.0, "per_tap", "mean", 0)
    assert (config.focal_gamma, config.focal_alpha, config.dice_smooth) == (2.0, 0.25, 1e-6)
    assert (config.betas, config.weight_decay, config.grad_clip_norm) == ((0.9, 0.999), 0.0, None)  # Adam's own
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="best_metric"):
        TrainConfig(best_metric="accuracy")
    with pytest.raises(ValueError, match="unknown training config keys: \\['lr_adapters'\\]"):
        TrainConfig.from_dict({"lr_adapters": 1.0})


def test_a_config_saved_before_the_loss_options_reads_as_what_it_trained() -> None:
    old = {key: value for key, value in TrainConfig().to_dict().items()
           if key not in ("supervise", "tap_reduction", "focal_alpha", "dice_smooth")}
    for legacy, supervise in (("per_tap", "per_tap"), ("mean", "tap_average")):
        config = TrainConfig.from_dict({**old, "loss_reduction": legacy})
        # Summed over taps, no focal alpha, Dice smoothing 1: the loss those runs were trained with.
        assert (config.supervise, config.tap_reduction, config.focal_alpha, config.dice_smooth) == (supervise, "sum", None, 1.0)
    assert TrainConfig(supervise="mean").supervise == "tap_average"
    with pytest.raises(ValueError, match="tap_reduction must be one of"):
        TrainConfig(tap_reduction="max")
