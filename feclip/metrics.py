"""Image- and pixel-level anomaly detection metrics, exact and streaming.

All values are fractions in ``[0, 1]``. A metric that is undefined for the data
(only one class present, no defect region, no normal pixel) is ``NaN``, never an
error, so one odd category does not stop a benchmark.

* Image level: AUROC, AP and F1-max (the best F1 over all thresholds of the
  precision-recall curve), computed with scikit-learn.
* Pixel level: the same three plus AUPRO, the area under the per-region-overlap
  curve up to a false positive rate of 0.3, divided by 0.3 (MVTec AD's definition).
  Millions of pixels make scikit-learn's three sorts the bottleneck, so all four come
  from one sort (or, for float16 maps, none): counts per distinct score feed
  :func:`histogram_metrics`, which treats a bin like scikit-learn treats tied scores
  (the tests check both against scikit-learn and brute force).
  A defect region is a connected component of a ground-truth mask, 8-connected
  by default like MVTec AD's reference code (``scipy.ndimage.label`` with a
  ``3 x 3`` structure of ones); regions never connect across images.

:func:`histogram_metrics` gives the pixel metrics of score histograms, which is how
:class:`feclip.evaluate.AnomalyMetrics` pools pixels over categories without keeping them; the
histograms themselves are made in :mod:`feclip.metrics_histograms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

__all__ = [
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "METRIC_COLUMNS",
    "auroc",
    "average_precision",
    "f1_max",
    "image_metrics",
    "label_regions",
    "pro_curve",
    "aupro",
    "pixel_metrics",
    "histogram_metrics",
    "flatten_pixels",
    "pixel_metrics_of_regions",
    "region_histograms",
]

IMAGE_METRICS: tuple[str, ...] = ("image_auroc", "image_ap", "image_f1max")
PIXEL_METRICS: tuple[str, ...] = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
METRIC_COLUMNS: tuple[str, ...] = IMAGE_METRICS + PIXEL_METRICS
Connectivity = Literal[4, 8]
NAN = float("nan")


def _both_classes(labels: np.ndarray) -> bool:
    """Whether ``labels`` holds at least one positive and one negative."""
    positives = int(np.count_nonzero(labels))
    return 0 < positives < labels.size


def _ap_and_f1max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """AP and F1-max from one scikit-learn precision-recall curve (one sort instead of two)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    # Same step-wise sum as sklearn's average_precision_score: sum_n (R_n - R_{n-1}) P_n.
    ap = -float(np.sum(np.diff(recall) * precision[:-1]))
    return ap, _max_f1(precision, recall)


def _max_f1(precision: np.ndarray, recall: np.ndarray) -> float:
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn), ``NaN`` when only one class is present.

    Args:
        scores: Anomaly scores of any shape, e.g. ``(N,)`` or ``(N, H, W)``.
        labels: Ground truth of the same shape, ``1``/``True`` for anomalous.
    """
    scores, labels = np.ravel(scores).astype(np.float64), np.ravel(labels).astype(bool)
    return float(roc_auc_score(labels, scores)) if _both_classes(labels) else NAN


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision, i.e. area under the step-wise precision-recall curve; ``NaN`` for one class.

    Args:
        scores: Anomaly scores of any shape.
        labels: Ground truth of the same shape, ``1``/``True`` for anomalous.
    """
    scores, labels = np.ravel(scores).astype(np.float64), np.ravel(labels).astype(bool)
    return _ap_and_f1max(scores, labels)[0] if _both_classes(labels) else NAN


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 over all thresholds ``score >= t`` of the precision-recall curve; ``NaN`` for one class.

    Args:
        scores: Anomaly scores of any shape.
        labels: Ground truth of the same shape, ``1``/``True`` for anomalous.
    """
    scores, labels = np.ravel(scores).astype(np.float64), np.ravel(labels).astype(bool)
    return _ap_and_f1max(scores, labels)[1] if _both_classes(labels) else NAN


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``image_auroc``, ``image_ap`` and ``image_f1max`` of one set of images.

    Args:
        scores: Image anomaly scores, shape ``(N,)``.
        labels: Image labels, shape ``(N,)``, ``1`` for anomalous.
    """
    scores, labels = np.ravel(scores).astype(np.float64), np.ravel(labels).astype(bool)
    if not _both_classes(labels):
        return dict.fromkeys(IMAGE_METRICS, NAN)
    ap, best_f1 = _ap_and_f1max(scores, labels)
    return {"image_auroc": float(roc_auc_score(labels, scores)), "image_ap": ap, "image_f1max": best_f1}


def label_regions(masks: np.ndarray, connectivity: Connectivity = 8) -> tuple[np.ndarray, int]:
    """Number the connected defect regions of every mask; regions never cross images.

    Args:
        masks: Binary masks of shape ``(N, H, W)`` or ``(H, W)``.
        connectivity: ``8`` (MVTec AD's reference, diagonal neighbours connect) or ``4``.

    Returns:
        Integer labels of the masks' shape (``0`` = normal pixel, ``1..K`` = regions) and ``K``.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    masks = np.asarray(masks).astype(bool)
    if masks.ndim not in (2, 3):
        raise ValueError(f"masks must have shape (H, W) or (N, H, W), got {masks.shape}")
    structure = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    if masks.ndim == 3:  # a 3-D structure whose only non-zero plane is the middle one keeps images apart
        structure = np.stack([np.zeros_like(structure), structure, np.zeros_like(structure)])
    regions, n_regions = ndimage.label(masks, structure=structure)
    return regions, int(n_regions)


MapBatches = np.ndarray | Sequence[np.ndarray]


def _batches(arrays: MapBatches) -> list[np.ndarray]:
    """One ``(N, H, W)`` array, or a list of them whose ``H, W`` may differ, as a list."""
    return [np.asarray(arrays)] if isinstance(arrays, np.ndarray) else [np.asarray(a) for a in arrays]


def flatten_pixels(
    anomaly_maps: MapBatches, masks: MapBatches, connectivity: Connectivity = 8
) -> tuple[np.ndarray, np.ndarray, int]:
    """Flat scores, flat region labels (numbered across batches, 0 = normal) and the region count.

    Args:
        anomaly_maps: Pixel scores of shape ``(N, H, W)``, or a list of such arrays.
        masks: Binary ground truth shaped like ``anomaly_maps``.
        connectivity: Region connectivity, ``8`` or ``4``.

    Returns:
        ``(scores (P,), regions (P,), K)``: scores widened to at least float32, region labels
        ``0`` (normal) or ``1..K``, and the number ``K`` of defect regions.
    """
    map_batches, mask_batches = _batches(anomaly_maps), _batches(masks)
    if len(map_batches) != len(mask_batches) or any(m.shape != k.shape for m, k in zip(map_batches, mask_batches)):
        shapes = [m.shape for m in map_batches], [k.shape for k in mask_batches]
        raise ValueError(f"anomaly_maps and masks must have the same shapes, got {shapes[0]} and {shapes[1]}")
    scores = np.concatenate([m.ravel() for m in map_batches])
    # float16 maps are widened (exactly) because scikit-learn wants at least 32 bits.
    scores = scores.astype(np.promote_types(scores.dtype, np.float32) if scores.dtype.kind == "f" else np.float64)
    labelled, offset = [], 0
    for batch in mask_batches:
        regions, n_regions = label_regions(batch, connectivity)
        labelled.append(np.where(regions > 0, regions + offset, 0).ravel())
        offset += n_regions
    return scores, np.concatenate(labelled), offset


def _pro_curve_from_regions(scores: np.ndarray, regions: np.ndarray, n_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact FPR/PRO curve from flat scores and flat region labels, one sort for all thresholds.

    Every defect pixel of region ``k`` raises PRO by ``1 / (K |R_k|)`` once the threshold drops
    to its score, every normal pixel raises FPR by ``1 / N_normal``; cumulative sums over the
    descending scores give the curve, read at the last pixel of every distinct score.
    """
    order = np.argsort(-scores)  # no stable sort needed: ties are merged below whatever their order
    sorted_scores, sorted_regions = scores[order], regions[order]
    del order
    region_sizes = np.bincount(regions, minlength=n_regions + 1)
    normal = sorted_regions == 0
    false_positives = np.cumsum(normal)
    pro_weights = np.where(normal, 0.0, 1.0 / np.maximum(region_sizes[sorted_regions], 1))
    overlap = np.cumsum(pro_weights) / n_regions
    last_of_threshold = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    fpr = false_positives[last_of_threshold] / false_positives[-1]
    pro = np.minimum(overlap[last_of_threshold], 1.0)  # cumsum rounding must not exceed 1
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def _normalised_partial_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under ``pro(fpr)`` on ``[0, fpr_limit]``, interpolating at the limit, over ``fpr_limit``.

    ``fpr`` must be non-decreasing and start at 0.
    """
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size and x[-1] < fpr_limit:
        x0, y0, x1, y1 = x[-1], y[-1], fpr[inside], pro[inside]
        x = np.append(x, fpr_limit)
        y = np.append(y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2 / fpr_limit)  # trapezoid rule


def pro_curve(
    anomaly_maps: MapBatches, masks: MapBatches, *, connectivity: Connectivity = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap curve over all distinct thresholds, starting at ``(0, 0)``.

    For a threshold ``t``, PRO is the mean over all defect regions of the fraction of the
    region's pixels with ``score >= t``; FPR is the fraction of normal pixels (of all images)
    with ``score >= t``.

    Args:
        anomaly_maps: Pixel scores of shape ``(N, H, W)``, or a list of such arrays whose
            ``H, W`` may differ.
        masks: Binary ground truth shaped like ``anomaly_maps``.
        connectivity: Region connectivity, ``8`` or ``4``.

    Returns:
        ``(fpr, pro)``, each of shape ``(T + 1,)`` for ``T`` distinct scores, FPR non-decreasing.

    Raises:
        ValueError: If the masks have no defect pixel or no normal pixel.
    """
    scores, regions, n_regions = flatten_pixels(anomaly_maps, masks, connectivity)
    if n_regions == 0 or np.all(regions):
        raise ValueError("a PRO curve needs both defect and normal pixels in the masks")
    return _pro_curve_from_regions(scores, regions, n_regions)


def aupro(
    anomaly_maps: MapBatches, masks: MapBatches, *, fpr_limit: float = 0.3, connectivity: Connectivity = 8
) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (so a perfect map gives 1).

    Args:
        anomaly_maps: Pixel scores of shape ``(N, H, W)``, or a list of such arrays.
        masks: Binary ground truth shaped like ``anomaly_maps``.
        fpr_limit: Upper FPR integration limit, in ``(0, 1]``.
        connectivity: Region connectivity, ``8`` or ``4``.

    Returns:
        AUPRO in ``[0, 1]``, ``NaN`` without defect or without normal pixels.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    scores, regions, n_regions = flatten_pixels(anomaly_maps, masks, connectivity)
    if n_regions == 0 or np.all(regions):
        return NAN
    return _normalised_partial_area(*_pro_curve_from_regions(scores, regions, n_regions), fpr_limit)


def pixel_metrics(
    anomaly_maps: MapBatches, masks: MapBatches, *, fpr_limit: float = 0.3, connectivity: Connectivity = 8
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` and ``pixel_aupro`` of one set of maps.

    Args:
        anomaly_maps: Pixel scores of shape ``(N, H, W)``, or a list of such arrays whose
            ``H, W`` may differ (e.g. batches stored at different sizes).
        masks: Binary ground truth shaped like ``anomaly_maps``.
        fpr_limit: FPR limit of AUPRO, in ``(0, 1]``.
        connectivity: Region connectivity of AUPRO, ``8`` or ``4``.

    Returns:
        The four metrics, all ``NaN`` unless the masks hold both defect and normal pixels.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return pixel_metrics_of_regions(*flatten_pixels(anomaly_maps, masks, connectivity), fpr_limit=fpr_limit)


def pixel_metrics_of_regions(
    scores: np.ndarray, regions: np.ndarray, n_regions: int, *, fpr_limit: float = 0.3
) -> dict[str, float]:
    """:func:`pixel_metrics` of pixels already flattened by :func:`flatten_pixels`.

    Args:
        scores: Pixel scores, shape ``(P,)``.
        regions: Region label of every pixel, shape ``(P,)``, ``0`` for normal pixels.
        n_regions: Number of defect regions ``K`` (labels ``1..K``).
        fpr_limit: FPR limit of AUPRO, in ``(0, 1]``.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if not _both_classes(regions > 0):
        return dict.fromkeys(PIXEL_METRICS, NAN)
    # One sort serves all four metrics: the distinct scores, ascending, are the histogram's bins.
    distinct, bins = np.unique(scores, return_inverse=True)
    return histogram_metrics(*region_histograms(bins.ravel(), regions, distinct.size), n_regions, fpr_limit=fpr_limit)


def region_histograms(bins: np.ndarray, regions: np.ndarray | None, num_bins: int) -> np.ndarray:
    """Defect pixels, normal pixels and summed ``1 / region size`` of the defect pixels per bin, ``(3, num_bins)``.

    ``regions`` (flat, 0 = normal) may be ``None`` when no pixel is a defect.
    """
    counts = np.zeros((3, num_bins))
    counts[1] = np.bincount(bins, minlength=num_bins)  # every pixel; the defect pixels are moved below
    defect = np.flatnonzero(regions) if regions is not None else np.empty(0, np.int64)
    if defect.size:
        defect_bins, defect_regions = bins[defect], regions[defect]
        counts[0] = np.bincount(defect_bins, minlength=num_bins)
        inverse_sizes = 1.0 / np.bincount(defect_regions)[defect_regions]
        counts[2] = np.bincount(defect_bins, weights=inverse_sizes, minlength=num_bins)
        counts[1] -= counts[0]
    return counts


def histogram_metrics(
    positive_counts: np.ndarray,
    negative_counts: np.ndarray,
    region_weights: np.ndarray | None = None,
    n_regions: int = 0,
    *,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Pixel metrics from score histograms, exact for scores rounded to their bins.

    Scores in one bin count as tied, like equal scores do for scikit-learn.

    Args:
        positive_counts: Defect pixels per score bin, ascending scores, shape ``(num_bins,)``.
        negative_counts: Normal pixels per bin, shape ``(num_bins,)``.
        region_weights: Per bin, the sum over defect pixels of ``1 / size of the pixel's region``,
            shape ``(num_bins,)``; summed over thresholds and divided by ``n_regions`` it is PRO.
        n_regions: Number of defect regions behind ``region_weights``.
        fpr_limit: FPR limit of AUPRO.

    Returns:
        ``pixel_auroc``, ``pixel_ap``, ``pixel_f1max`` and ``pixel_aupro`` (``NaN`` where undefined).
    """
    positives, negatives = np.asarray(positive_counts, np.float64), np.asarray(negative_counts, np.float64)
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return dict.fromkeys(PIXEL_METRICS, NAN)
    negatives_below = np.cumsum(negatives) - negatives
    roc = (np.dot(positives, negatives_below) + 0.5 * np.dot(positives, negatives)) / (n_pos * n_neg)
    # Thresholds from the highest bin down; empty bins are not thresholds.
    occupied = (positives + negatives)[::-1] > 0
    true_pos, false_pos = np.cumsum(positives[::-1])[occupied], np.cumsum(negatives[::-1])[occupied]
    precision, recall = true_pos / (true_pos + false_pos), true_pos / n_pos
    ap = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    result = {
        "pixel_auroc": float(roc),
        "pixel_ap": ap,
        "pixel_f1max": _max_f1(precision, recall),
        "pixel_aupro": NAN,
    }
    if region_weights is not None and n_regions > 0:
        pro = np.minimum(np.cumsum(np.asarray(region_weights, np.float64)[::-1])[occupied] / n_regions, 1.0)
        fpr = np.concatenate([[0.0], false_pos / n_neg])
        result["pixel_aupro"] = _normalised_partial_area(fpr, np.concatenate([[0.0], pro]), fpr_limit)
    return result
