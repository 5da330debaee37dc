"""Decision thresholds: the score above which an image (or a pixel) is called anomalous.

A detector gives scores, a production line needs a yes/no. With labelled examples (a folder of
normal and anomalous images, masks for the pixels), :func:`f1_threshold` picks the threshold that
maximises F1 on them, the same F1 the ``*_f1max`` metrics report (:mod:`feclip.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

__all__ = ["Threshold", "f1_threshold", "f1_threshold_reference"]


@dataclass(frozen=True)
class Threshold:
    """A score threshold and the F1 it reached on the examples it was chosen on.

    Attributes:
        value: Scores ``>= value`` are anomalous.
        f1: F1 of that decision on the examples.
    """

    value: float
    f1: float


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> Threshold:
    """The threshold with the highest F1 over labelled scores (ties: the lowest such threshold).

    Every distinct score is a candidate (scikit-learn's precision-recall curve gives them all at once);
    a score is anomalous when ``score >= threshold``.

    Args:
        scores: Anomaly scores, any shape (flattened).
        labels: Matching labels, 1 anomalous and 0 normal.

    Raises:
        ValueError: The labels lack one of the two classes (no threshold can be chosen), or sizes differ.
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if labels.all() or not labels.any():
        raise ValueError("choosing a threshold by F1 needs normal and anomalous examples; these have only "
                         + ("anomalous" if labels.any() else "normal") + " ones")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the curve's last point has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    best = np.flatnonzero(f1 == f1.max())
    return Threshold(float(thresholds[best].min()), float(f1.max()))


def f1_threshold_reference(scores: np.ndarray, labels: np.ndarray) -> Threshold:
    """:func:`f1_threshold` by brute force: count TP, FP, FN at every distinct score (slow; for tests)."""
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    best = Threshold(float("nan"), -1.0)
    for candidate in np.unique(scores):
        flagged = scores >= candidate
        tp, fp, fn = int((flagged & labels).sum()), int((flagged & ~labels).sum()), int((~flagged & labels).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best.f1:
            best = Threshold(float(candidate), f1)
    return best
