"""Turning embeddings into anomaly scores: cosine similarity with two text embeddings, over a temperature.

Two readings of the same two logits ``l_k = cos(z, t_k) / tau``:

* :func:`anomaly_probability`, ``softmax(l)[anomalous]``, in ``[0, 1]``: what FE-CLIP trains on and
  reports as its image score (the paper's Eq. 1 and 3);
* :func:`anomaly_logit_margin`, ``l_anomalous - l_normal``, unbounded in principle and within
  ``+-||t_anomalous - t_normal|| / tau`` (:func:`logit_margin_bound`): the map the reference
  implementation found to give a better AUPRO (its experiment 4). The probability is the logistic
  function of the margin, so per pixel the two rank the same; they differ once maps are averaged
  over taps and interpolated, which are not invariant to the logistic squashing.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["anomaly_probability", "anomaly_logit_margin", "logit_margin_bound"]


def _logits(embeddings: Tensor, text_features: Tensor, temperature: float) -> Tensor:
    """``cos(z, t) / tau`` of shape ``(..., 2)``."""
    return F.normalize(embeddings.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T / temperature


def anomaly_probability(embeddings: Tensor, text_features: Tensor, temperature: float = 0.07) -> Tensor:
    """Probability of the anomalous state: ``softmax(cos(z, t) / tau)[..., 1]``.

    Args:
        embeddings: Image or patch embeddings of shape ``(..., E)``; need not be normalised.
        text_features: Normal and anomalous text embeddings of shape ``(2, E)``.
        temperature: Softmax temperature ``tau`` (CLIP's learned value is about 0.01).

    Returns:
        Probabilities of shape ``(...)``, in ``[0, 1]``.
    """
    return _logits(embeddings, text_features, temperature).softmax(dim=-1)[..., 1]


def anomaly_logit_margin(embeddings: Tensor, text_features: Tensor, temperature: float = 0.07) -> Tensor:
    """Logit margin of the anomalous state: ``(cos(z, t_anomalous) - cos(z, t_normal)) / tau``.

    ``sigmoid(margin)`` is :func:`anomaly_probability`.

    Args:
        embeddings: Image or patch embeddings of shape ``(..., E)``; need not be normalised.
        text_features: Normal and anomalous text embeddings of shape ``(2, E)``.
        temperature: Softmax temperature ``tau``.

    Returns:
        Margins of shape ``(...)``, within ``+-`` :func:`logit_margin_bound`.
    """
    logits = _logits(embeddings, text_features, temperature)
    return logits[..., 1] - logits[..., 0]


def logit_margin_bound(text_features: Tensor, temperature: float = 0.07) -> float:
    """The largest possible ``|anomaly_logit_margin|``: ``||t_anomalous - t_normal|| / tau`` (unit-norm ``t``).

    By Cauchy-Schwarz ``|z . (t_a - t_n)| <= ||t_a - t_n||`` for a unit ``z``, with equality for
    ``z`` along ``t_a - t_n``; so this is the exact range of the margin, and of any average or
    interpolation of margins.

    Args:
        text_features: Normal and anomalous text embeddings of shape ``(2, E)``.
        temperature: Softmax temperature ``tau``.

    Returns:
        The bound, a positive float (0 only for identical text embeddings).
    """
    unit = F.normalize(text_features.double(), dim=-1)
    return float((unit[1] - unit[0]).norm()) / temperature
