"""The one interface every anomaly detector in feclip speaks.

FE-CLIP, the CLIP zero-shot baseline, WinCLIP and the few-shot detectors all take a batch of
normalised images and return an :class:`AnomalyPrediction`; :func:`feclip.evaluate.evaluate`
and the command line need nothing more (:class:`AnomalyPredictor`, which an exported ONNX
graph speaks too).

The torch detectors share one more layer, :class:`Detector`: a forward pass in two named steps,

* ``embed(images)``: what the frozen backbone (and, for FE-CLIP, the adapters) extract from the
  images, a detector-specific feature object;
* ``predict(features, image_size)``: scores and maps from those features,

so that a caller can embed once and predict several ways (the few-shot detectors reuse their
zero-shot detector's features; training reads FE-CLIP's per-tap outputs from the same features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["AnomalyPrediction", "AnomalyPredictor", "Detector"]


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


class Detector(nn.Module):
    """Base of feclip's torch detectors: ``forward(images) = predict(embed(images), (H, W))``.

    Subclasses implement :meth:`embed` and :meth:`predict`; the forward pass is this one.
    """

    def embed(self, images: Tensor) -> Any:
        """Features of normalised images ``(B, 3, H, W)`` (a detector-specific object)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement embed")

    def predict(self, features: Any, image_size: tuple[int, int]) -> AnomalyPrediction:
        """Scores and maps from :meth:`embed`'s features; maps are upsampled to ``image_size`` ``(H, W)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def forward(self, images: Tensor) -> AnomalyPrediction:
        """Image scores ``(B,)`` and pixel maps ``(B, H, W)`` for normalised images ``(B, 3, H, W)``."""
        return self.predict(self.embed(images), (images.shape[-2], images.shape[-1]))
