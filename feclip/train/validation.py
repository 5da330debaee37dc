"""Validation during training: the macro metrics of the held-out auxiliary data, and which epoch is best."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import Dataset

from feclip.metrics import METRIC_COLUMNS
from feclip.train.config import TrainConfig
from feclip.train.precision import autocast

__all__ = ["validate", "validation_due", "validation_score"]


def validation_due(config: TrainConfig, epoch: int, has_validation_set: bool) -> bool:
    """Whether epoch ``epoch`` (1-based) ends with a validation: every ``val_every`` epochs and after the last."""
    return has_validation_set and (epoch % config.val_every == 0 or epoch == config.epochs)


def validate(
    model: Any, dataset: Dataset, config: TrainConfig, device: torch.device, amp: torch.dtype | None,
    progress: bool = False,
) -> dict[str, float]:
    """``val_<metric>`` for every macro metric of :func:`feclip.evaluate.evaluate`, and the map smoothing used.

    The model is left in training mode; ``progress`` shows evaluate's progress bar (a validation on a CPU
    takes a good part of an epoch).
    """
    from feclip.evaluate import evaluate

    with autocast(device, amp):
        table = evaluate(model, dataset, batch_size=config.val_batch_size or config.batch_size,
                         num_workers=config.num_workers, device=device, progress=progress)
    model.train()
    # The macro metrics, and the map smoothing they were measured with (evaluate's default).
    columns = [c for c in table.columns if c in METRIC_COLUMNS or c == "map_sigma"]
    return {f"val_{column}": float(table.loc["macro", column]) for column in columns}


def validation_score(row: dict[str, Any], config: TrainConfig) -> float:
    """The epoch's ``val_<best_metric>``, or NaN when the epoch was not validated."""
    return row.get(f"val_{config.best_metric}", math.nan)
