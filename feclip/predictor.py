"""The one small interface every anomaly detector in feclip speaks.

FE-CLIP, the CLIP zero-shot baseline and WinCLIP all take a batch of normalised
images and return an :class:`AnomalyPrediction`; :func:`feclip.evaluate.evaluate`
and the command line need nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["AnomalyPrediction", "AnomalyPredictor"]


@dataclass
class AnomalyPrediction:
    """Image scores and pixel maps for one batch.

    Attributes:
        pred_score: Image-level anomaly scores in ``[0, 1]``, shape ``(B,)``.
        anomaly_map: Pixel-level anomaly maps at the input resolution, shape ``(B, H, W)``.
    """

    pred_score: Tensor
    anomaly_map: Tensor


@runtime_checkable
class AnomalyPredictor(Protocol):
    """Anything callable as ``predictor(images) -> AnomalyPrediction``.

    ``images`` has shape ``(B, 3, H, W)`` and is normalised with the backbone's own mean and std.
    """

    def __call__(self, images: Tensor) -> AnomalyPrediction: ...
