"""Slow, obviously correct references shared by the metric tests (tests/test_metrics*.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def brute_force_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        true_pos = np.sum(predicted & labels)
        false_pos = np.sum(predicted & ~labels)
        false_neg = np.sum(~predicted & labels)
        if true_pos:
            best = max(best, 2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return best


def brute_force_aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """MVTec AD's definition, one threshold at a time; images ``(H, W)`` may differ in size.

    Regions are labelled image by image with 8-connectivity.
    """
    regions = []  # (image index, boolean region mask)
    for i, image_mask in enumerate(masks):
        labelled, count = ndimage.label(image_mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, count + 1)]
    normal_scores = np.concatenate([m[~k] for m, k in zip(maps, masks)])
    all_scores = np.concatenate([m.ravel() for m in maps])
    points = [(0.0, 0.0)]
    for threshold in np.sort(np.unique(all_scores))[::-1]:
        fpr = np.mean(normal_scores >= threshold)
        pro = np.mean([np.mean(maps[i][region] >= threshold) for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def random_masks(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Blobs of several regions per image, some touching only diagonally."""
    masks = np.zeros((n, size, size), bool)
    for image in masks:
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 3, size=2)
            height, width = rng.integers(1, 4, size=2)
            image[top : top + height, left : left + width] = True
    masks[0] = False  # one fully normal image
    masks[1, 0, 0] = masks[1, 1, 1] = True  # a diagonal pair: one region with 8-connectivity, two with 4
    masks[1, 0, 1] = masks[1, 1, 0] = False
    return masks
