"""TrainConfig: the reference implementation's recipe, its JSON form, and configs saved before today's fields."""

from __future__ import annotations

import json
import math

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


@pytest.mark.parametrize(("field", "value"), [("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("fc_patch_lr", math.inf),
                                              ("fc_patch_lr", 0)])
def test_a_learning_rate_that_is_not_positive_and_finite_is_refused_naming_it(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"the learning rate {field} must be a positive finite number, got"):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_dict({**TrainConfig().to_dict(), field: value})  # a run.json edited by hand, too


def test_other_settings_out_of_range_are_refused_naming_them() -> None:
    for changes, name in (({"weight_decay": -0.1}, "weight_decay"), ({"grad_clip_norm": 0.0}, "grad_clip_norm"),
                          ({"grad_clip_norm": math.nan}, "grad_clip_norm"), ({"num_workers": -1}, "num_workers"),
                          ({"epochs": 0}, "epochs")):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**changes)
    assert TrainConfig(amp="fp16").amp == "fp16" and TrainConfig(grad_clip_norm=None).grad_clip_norm is None


def test_the_worker_default_is_the_machines_cores_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from feclip.train.config import MAX_DEFAULT_WORKERS, default_num_workers

    for cores, expected in ((2, 2), (1, 1), (5, 5), (64, MAX_DEFAULT_WORKERS)):  # Colab: 2 vCPUs -> 2 workers
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert default_num_workers() == expected and TrainConfig().num_workers == expected
    assert MAX_DEFAULT_WORKERS == 8  # 8 x ~36 images/s per worker (benchmarks/RESULTS.md) > an H100's 237
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows: every core counts
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert default_num_workers() == 3
