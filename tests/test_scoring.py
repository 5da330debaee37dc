"""Anomaly probability (a two-way softmax of cosine similarities over a temperature) and the logit margin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feclip.scoring import anomaly_logit_margin, anomaly_probability, logit_margin_bound


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
    embeddings, text = torch.randn(shape, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    rows = embeddings.reshape(-1, 6)
    cosine = (rows / rows.norm(dim=1, keepdim=True)) @ (text / text.norm(dim=1, keepdim=True)).T  # (N, 2)
    expected = torch.sigmoid((cosine[:, 1] - cosine[:, 0]) / 0.07).reshape(shape[:-1])
    for function, want in ((anomaly_probability, expected), (anomaly_logit_margin, torch.logit(expected))):
        actual = function(embeddings, text)
        assert actual.shape == shape[:-1]
        torch.testing.assert_close(actual.double(), want, atol=1e-4, rtol=1e-5)


def test_logit_margin_by_hand() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unit after normalising: e1 and e2
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0], [1.0, 3.0]])
    # cos with (normal, anomalous): (1, 0), (0, 1), (s, s), (1, 3)/sqrt(10); margin = (cos_a - cos_n) / tau
    tau = 0.5
    expected = torch.tensor([-2.0, 2.0, 0.0, 2 / math.sqrt(10) / tau])
    torch.testing.assert_close(anomaly_logit_margin(embeddings, text, tau), expected)
    # The softmax probability is the logistic function of the margin.
    torch.testing.assert_close(anomaly_probability(embeddings, text, tau), torch.sigmoid(expected))


def test_logit_margin_bound_is_attained_and_never_exceeded() -> None:
    text = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])  # unit vectors, |t_a - t_n| = sqrt(0.16 + 0.64)
    bound = logit_margin_bound(text, 0.07)
    assert bound == pytest.approx(math.sqrt(0.8) / 0.07, rel=1e-7)  # 0.6 and 0.8 in float32
    along = (text[1] - text[0])[None]  # the direction that attains it
    assert anomaly_logit_margin(along, text).item() == pytest.approx(bound, rel=1e-6)
    assert anomaly_logit_margin(-along, text).item() == pytest.approx(-bound, rel=1e-6)
    margins = anomaly_logit_margin(torch.randn(10_000, 3), text)
    assert margins.abs().max().item() <= bound * (1 + 1e-6)
    assert logit_margin_bound(text * 5, 0.07) == pytest.approx(bound, rel=1e-7)  # scale of the text is irrelevant
