"""When validation runs and which score picks the best epoch."""

from __future__ import annotations

import math

from feclip.train import TrainConfig
from feclip.train.validation import validation_due, validation_score


def test_validation_runs_every_val_every_epochs_and_after_the_last() -> None:
    config = TrainConfig(epochs=7, val_every=3)
    assert [epoch for epoch in range(1, 8) if validation_due(config, epoch, True)] == [3, 6, 7]
    assert not any(validation_due(config, epoch, False) for epoch in range(1, 8))


def test_the_score_is_the_configured_metric_or_nan() -> None:
    config = TrainConfig(best_metric="pixel_aupro")
    assert validation_score({"val_pixel_aupro": 0.4, "val_image_auroc": 0.9}, config) == 0.4
    assert math.isnan(validation_score({"loss": 1.0}, config))
