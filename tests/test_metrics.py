"""Metrics against scikit-learn, scipy and plainly written brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from metric_helpers import brute_force_aupro, brute_force_f1_max, random_masks

from feclip.metrics import (
    PIXEL_METRICS,
    aupro,
    auroc,
    average_precision,
    f1_max,
    flatten_pixels,
    histogram_metrics,
    image_metrics,
    label_regions,
    pixel_metrics,
    pixel_metrics_of_regions,
    pro_curve,
)


def test_image_metrics_agree_with_sklearn_and_brute_force() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.random(200) + 0.5 * labels, 2)  # rounding makes ties
    expected_f1 = brute_force_f1_max(scores, labels)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(expected_f1, abs=1e-12)
    assert image_metrics(scores, labels) == pytest.approx(
        {
            "image_auroc": roc_auc_score(labels, scores),
            "image_ap": average_precision_score(labels, scores),
            "image_f1max": expected_f1,
        }
    )


def test_hand_computed_image_metrics() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    # Pairs (pos, neg) ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4) -> 3 of 4.
    assert auroc(scores, labels) == pytest.approx(0.75)
    # Thresholds 0.8 -> P=1, R=0.5; 0.4 -> P=0.5; 0.35 -> P=2/3, R=1: AP = 0.5 * 1 + 0.5 * 2/3.
    assert average_precision(scores, labels) == pytest.approx(0.5 + 1 / 3)
    assert f1_max(scores, labels) == pytest.approx(0.8)  # at 0.35: P=2/3, R=1


def test_single_class_gives_nan() -> None:
    scores = np.array([0.2, 0.5, 0.9])
    for labels in (np.zeros(3), np.ones(3)):
        assert all(math.isnan(v) for v in image_metrics(scores, labels).values())
        assert math.isnan(auroc(scores, labels)) and math.isnan(f1_max(scores, labels))
    maps = np.random.default_rng(1).random((2, 5, 5))
    assert all(math.isnan(v) for v in pixel_metrics(maps, np.zeros((2, 5, 5))).values())
    assert math.isnan(aupro(maps, np.ones((2, 5, 5))))


@pytest.mark.parametrize("decimals", [2, None])  # with and without tied scores
def test_aupro_matches_brute_force(decimals: int | None) -> None:
    rng = np.random.default_rng(2)
    masks = random_masks(rng, 5, 12)
    maps = rng.random(masks.shape) + 0.6 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)
    expected = brute_force_aupro(maps, masks)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-9)
    assert aupro(maps, masks, fpr_limit=0.05) == pytest.approx(brute_force_aupro(maps, masks, 0.05), abs=1e-9)
    assert 0.0 < expected < 1.0


def test_pro_curve_ends_at_one_and_connectivity_counts_diagonals() -> None:
    rng = np.random.default_rng(3)
    masks = random_masks(rng, 4, 10)
    fpr, pro = pro_curve(rng.random(masks.shape), masks)
    assert (fpr[0], pro[0]) == (0.0, 0.0) and fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    diagonal = np.array([[[1, 0], [0, 1]]], bool)
    assert label_regions(diagonal, 8)[1] == 1 and label_regions(diagonal, 4)[1] == 2
    stacked = np.ones((2, 3, 3), bool)  # identical masks on two images stay two regions
    assert label_regions(stacked)[1] == 2


def test_perfect_and_inverted_maps() -> None:
    masks = random_masks(np.random.default_rng(4), 4, 10)
    perfect = pixel_metrics(masks.astype(np.float32), masks)
    assert perfect == pytest.approx(dict.fromkeys(PIXEL_METRICS, 1.0))
    inverted = pixel_metrics(1.0 - masks.astype(np.float32), masks)
    assert inverted["pixel_auroc"] == 0.0 and inverted["pixel_aupro"] == 0.0


def test_pixel_metrics_agree_with_sklearn_and_accept_batches_of_different_sizes() -> None:
    rng = np.random.default_rng(5)
    masks_a, masks_b = random_masks(rng, 3, 12), random_masks(rng, 2, 9)
    maps_a, maps_b = rng.random(masks_a.shape) + masks_a, rng.random(masks_b.shape) + 0.3 * masks_b
    result = pixel_metrics([maps_a, maps_b], [masks_a, masks_b])
    scores = np.concatenate([maps_a.ravel(), maps_b.ravel()])
    labels = np.concatenate([masks_a.ravel(), masks_b.ravel()])
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1_max(scores, labels), abs=1e-12)
    # AUPRO numbers regions across batches and pools them.
    expected = brute_force_aupro([*maps_a, *maps_b], [*masks_a, *masks_b])
    assert result["pixel_aupro"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="same shapes"):
        pixel_metrics(maps_a, masks_b)


def test_histogram_metrics_agree_with_sklearn_and_exact_aupro() -> None:
    rng = np.random.default_rng(6)
    masks = random_masks(rng, 6, 16)
    maps = np.clip(rng.normal(0.3, 0.15, masks.shape) + 0.25 * masks, 0, 1)
    num_bins = 2**16
    bins = np.minimum((maps.ravel() * num_bins).astype(int), num_bins - 1)
    regions, n_regions = label_regions(masks)
    regions = regions.ravel()
    defect = regions > 0
    weights = np.zeros(regions.size)
    weights[defect] = 1.0 / np.bincount(regions)[regions[defect]]
    result = histogram_metrics(
        np.bincount(bins[defect], minlength=num_bins),
        np.bincount(bins[~defect], minlength=num_bins),
        np.bincount(bins, weights=weights, minlength=num_bins),
        n_regions,
    )
    exact = pixel_metrics(maps, masks)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-3)
    assert result == pytest.approx(exact, abs=1e-3)


def test_histogram_metrics_are_exact_on_binned_scores() -> None:
    rng = np.random.default_rng(7)
    bins = rng.integers(0, 50, 400)
    labels = rng.random(400) < 0.3
    positives = np.bincount(bins[labels], minlength=50)
    negatives = np.bincount(bins[~labels], minlength=50)
    result = histogram_metrics(positives, negatives)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(labels, bins), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(labels, bins), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1_max(bins, labels), abs=1e-12)
    assert math.isnan(result["pixel_aupro"])  # no region weights given
    assert all(math.isnan(v) for v in histogram_metrics(positives * 0, negatives).values())


def test_pixel_metrics_of_regions_is_pixel_metrics_of_flattened_pixels() -> None:
    rng = np.random.default_rng(11)
    masks = random_masks(rng, 3, 10)
    maps = rng.random(masks.shape) + 0.5 * masks
    assert pixel_metrics_of_regions(*flatten_pixels(maps, masks)) == pixel_metrics(maps, masks)
