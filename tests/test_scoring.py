"""Anomaly probability: a two-way softmax of cosine similarities over a temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feclip.scoring import anomaly_probability


def test_matches_a_hand_softmax() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((3, 5, 8))
    text = rng.standard_normal((2, 8)) * 4  # not normalised on purpose
    tau = 0.07
    expected = np.empty((3, 5))
    for index in np.ndindex(3, 5):
        z = embeddings[index]
        cos = [z @ t / (np.linalg.norm(z) * np.linalg.norm(t)) for t in text]
        expected[index] = math.exp(cos[1] / tau) / (math.exp(cos[0] / tau) + math.exp(cos[1] / tau))
    actual = anomaly_probability(torch.from_numpy(embeddings), torch.from_numpy(text), tau)
    assert actual.shape == (3, 5) and actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5)


def test_small_example_by_hand() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    # cosines: (1, 0), (0, 1), (1/sqrt2, 1/sqrt2); with tau = 0.5: sigmoid((c1 - c0) / tau)
    expected = torch.tensor([1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-2.0)), 0.5])
    torch.testing.assert_close(anomaly_probability(embeddings, text, 0.5), expected)


def test_scale_invariance_and_temperature() -> None:
    embeddings, text = torch.randn(4, 6), torch.randn(2, 6)
    torch.testing.assert_close(anomaly_probability(embeddings * 7.5, text), anomaly_probability(embeddings, text))
    sharp, soft = anomaly_probability(embeddings, text, 0.01), anomaly_probability(embeddings, text, 1.0)
    assert ((sharp - 0.5).abs() >= (soft - 0.5).abs() - 1e-6).all()
    assert ((soft >= 0) & (soft <= 1)).all() and ((sharp >= 0) & (sharp <= 1)).all()
    assert anomaly_probability(text[1], text).item() > anomaly_probability(text[0], text).item()


@pytest.mark.parametrize("shape", [(6,), (2, 6), (2, 3, 4, 6)])
def test_any_leading_shape(shape: tuple[int, ...]) -> None:
    assert anomaly_probability(torch.randn(shape), torch.randn(2, 6)).shape == shape[:-1]
