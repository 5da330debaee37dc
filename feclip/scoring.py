"""Turning embeddings into anomaly probabilities: cosine similarity with two text embeddings and a softmax."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["anomaly_probability"]


def anomaly_probability(embeddings: Tensor, text_features: Tensor, temperature: float = 0.07) -> Tensor:
    """Probability of the anomalous state: ``softmax(cos(z, t) / tau)[..., 1]``.

    Args:
        embeddings: Image or patch embeddings of shape ``(..., E)``; need not be normalised.
        text_features: Normal and anomalous text embeddings of shape ``(2, E)``.
        temperature: Softmax temperature ``tau`` (CLIP's learned value is about 0.01).

    Returns:
        Probabilities of shape ``(...)``, in ``[0, 1]``.
    """
    logits = F.normalize(embeddings.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    return (logits / temperature).softmax(dim=-1)[..., 1]
