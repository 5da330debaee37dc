"""Metrics against scikit-learn, scipy and plainly written brute-force references."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from feclip.metrics import (
    PIXEL_METRICS,
    ScoreHistograms,
    aupro,
    auroc,
    average_precision,
    f1_max,
    flatten_pixels,
    float16_bins,
    float16_histograms,
    histogram_metrics,
    image_metrics,
    label_regions,
    merge_score_histograms,
    pixel_metrics,
    pixel_metrics_of_regions,
    pro_curve,
    score_histograms,
)


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


def _direct_histogram(scores: np.ndarray, regions: np.ndarray, exponent: int, origin: int, num_bins: int) -> np.ndarray:
    """Slow twin: every pixel's bin from floor(score / 2**exponent), counted one pixel at a time."""
    counts = np.zeros((3, num_bins))
    sizes = np.bincount(regions)
    for score, region in zip(scores.tolist(), regions.tolist()):
        index = math.floor(score / 2.0**exponent) - origin
        counts[0 if region else 1, index] += 1
        counts[2, index] += 1 / sizes[region] if region else 0.0
    return counts


def _fits(scores: np.ndarray, exponent: int, num_bins: int) -> bool:
    grid = np.floor(scores / 2.0**exponent)
    return grid.max() - grid.min() < num_bins


def test_score_histograms_use_the_finest_power_of_two_grid_that_holds_the_scores() -> None:
    rng = np.random.default_rng(8)
    masks = random_masks(rng, 3, 10)
    for maps, num_bins in ((rng.random(masks.shape), 64), (rng.normal(0, 8, masks.shape), 100),
                           (rng.random(masks.shape) * 1e-3 - 5e-4, 7), (np.full(masks.shape, 3.25), 16)):
        scores, regions, n_regions = flatten_pixels(maps, masks)
        histograms = score_histograms(scores, regions, n_regions, num_bins)
        assert histograms.counts.shape == (3, num_bins) and histograms.n_regions == n_regions
        expected = _direct_histogram(scores, regions, histograms.exponent, histograms.origin, num_bins)
        np.testing.assert_allclose(histograms.counts, expected, rtol=0, atol=1e-9)
        assert _fits(scores, histograms.exponent, num_bins)
        if scores.max() > scores.min():  # one step finer would not hold them
            assert not _fits(scores, histograms.exponent - 1, num_bins)


def test_merged_histograms_equal_binning_all_pixels_at_the_merged_width() -> None:
    rng = np.random.default_rng(9)
    parts = []
    for offset, scale in ((0.0, 1.0), (-20.0, 40.0), (0.4, 0.01)):  # probabilities, margins, a narrow band
        masks = random_masks(rng, 2, 12)
        parts.append(flatten_pixels(offset + scale * rng.random(masks.shape), masks))
    for num_bins in (2**16, 50):
        merged = merge_score_histograms([score_histograms(*part, num_bins) for part in parts], num_bins)
        scores = np.concatenate([part[0] for part in parts])
        offsets = np.cumsum([0] + [part[2] for part in parts[:-1]])  # number regions across the parts
        regions = np.concatenate([np.where(part[1] > 0, part[1] + off, 0) for part, off in zip(parts, offsets)])
        expected = _direct_histogram(scores, regions, merged.exponent, merged.origin, num_bins)
        np.testing.assert_allclose(merged.counts, expected, rtol=0, atol=1e-9)
        assert merged.n_regions == sum(part[2] for part in parts)
        assert _fits(scores, merged.exponent, num_bins) and not _fits(scores, merged.exponent - 1, num_bins)
        assert isinstance(merged, ScoreHistograms)


def test_pooled_logit_margins_agree_with_sklearn() -> None:
    # Maps that are not probabilities (logit margins in [-20, 20]): the bins follow the data's range.
    rng = np.random.default_rng(10)
    masks = random_masks(rng, 8, 24)
    maps = np.clip(rng.normal(-4.0, 6.0, masks.shape) + 9.0 * masks, -20, 20)
    halves = [flatten_pixels(maps[:4], masks[:4]), flatten_pixels(maps[4:], masks[4:])]
    merged = merge_score_histograms([score_histograms(*half) for half in halves])
    result = histogram_metrics(*merged.counts, merged.n_regions)
    binned = np.floor(maps / 2.0**merged.exponent).ravel()  # the scores as the bins see them
    assert merged.exponent == -10  # 40 units over 2**16 bins: 2**-10 wide
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), binned), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), binned), abs=1e-12)
    assert result["pixel_f1max"] == pytest.approx(brute_force_f1_max(binned, masks.ravel()), abs=1e-12)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert result == pytest.approx(pixel_metrics(maps, masks), abs=1e-4)


def test_pixel_metrics_of_regions_is_pixel_metrics_of_flattened_pixels() -> None:
    rng = np.random.default_rng(11)
    masks = random_masks(rng, 3, 10)
    maps = rng.random(masks.shape) + 0.5 * masks
    assert pixel_metrics_of_regions(*flatten_pixels(maps, masks)) == pixel_metrics(maps, masks)


def test_float16_bins_order_every_float16_value() -> None:
    values = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    values = values[~np.isnan(values)]
    bins = float16_bins(values)
    order = np.argsort(values.astype(np.float64), kind="stable")
    sorted_values, sorted_bins = values[order].astype(np.float64), bins[order]
    assert np.all(np.diff(sorted_bins) >= 0)  # monotone in the value
    same_value = sorted_values[1:] == sorted_values[:-1]
    assert np.array_equal(np.diff(sorted_bins) == 0, same_value)  # equal bins exactly for equal values (only 0.0, -0.0)
    assert same_value.sum() == 1
    assert float16_bins(np.float32(1e6)) == float16_bins(np.float16(np.inf)) > float16_bins(np.float16(65504))


def test_float16_histograms_give_exactly_the_metrics_of_the_float16_maps() -> None:
    rng = np.random.default_rng(12)
    batches = [random_masks(rng, 4, 20), random_masks(rng, 3, 20), np.zeros((2, 20, 20), bool)]
    maps = [(rng.normal(-3.0, 7.0, m.shape) + 6.0 * m).astype(np.float16) for m in batches]  # margins, with ties
    maps[0][0, :5] = -0.0
    maps[1][0, :5] = 0.0
    results = [float16_histograms(m, k) for m, k in zip(maps, batches)]
    counts, n_regions = sum(r[0] for r in results), sum(r[1] for r in results)
    assert n_regions == label_regions(np.concatenate(batches[:2]))[1] and results[2][1] == 0
    exact = pixel_metrics([m.astype(np.float32) for m in maps], batches)
    assert histogram_metrics(*counts, n_regions) == pytest.approx(exact, abs=1e-12)
    all_masks = np.concatenate([k.ravel() for k in batches])
    assert counts[0].sum() == all_masks.sum() and counts[1].sum() == (~all_masks).sum()
    assert counts[2].sum() == pytest.approx(n_regions)  # each region's weights sum to one
    with pytest.raises(ValueError, match="float16"):
        float16_histograms(maps[0].astype(np.float32), batches[0])
