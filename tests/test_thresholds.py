"""F1-optimal thresholds against a brute-force count of TP, FP and FN."""

from __future__ import annotations

import numpy as np
import pytest

from feclip.thresholds import Threshold, f1_threshold, f1_threshold_reference


def test_a_hand_computed_threshold() -> None:
    # Scores 0.1..0.6; anomalous: 0.4, 0.6 and 0.2. At 0.4: TP 2, FP 1 (0.5), FN 1 -> F1 = 4 / 6.
    # At 0.2: TP 3, FP 2 (0.3, 0.5), FN 0 -> F1 = 6 / 8 = 0.75, the best.
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 1, 0, 1, 0, 1])
    threshold = f1_threshold(scores, labels)
    assert threshold.value == 0.2 and threshold.f1 == pytest.approx(0.75, abs=1e-12)
    assert f1_threshold_reference(scores, labels) == Threshold(0.2, 0.75)


@pytest.mark.parametrize("seed", range(6))
def test_the_threshold_is_the_brute_force_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    fast, slow = f1_threshold(scores, labels), f1_threshold_reference(scores, labels)
    assert fast.value == slow.value and fast.f1 == pytest.approx(slow.f1, abs=1e-12)


def test_one_class_is_refused() -> None:
    with pytest.raises(ValueError, match="needs normal and anomalous examples; these have only normal ones"):
        f1_threshold(np.arange(3.0), np.zeros(3))
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        f1_threshold(np.arange(3.0), np.ones(2))


def test_of_equally_good_thresholds_the_lowest_is_chosen() -> None:
    # At 0.4: TP 1, FN 1 -> F1 2/3. At 0.1: TP 2, FP 2 -> F1 4/6 = 2/3 as well.
    scores, labels = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 0, 1])
    threshold = f1_threshold(scores, labels)
    assert threshold.value == 0.1 and threshold.f1 == pytest.approx(2 / 3, abs=1e-12)
    assert f1_threshold_reference(scores, labels).value == 0.1
