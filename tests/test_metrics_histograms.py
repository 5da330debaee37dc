"""Streaming pixel histograms: power-of-two grids against a one-pixel-at-a-time twin, exact merging, float16 bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from metric_helpers import brute_force_f1_max, random_masks
from sklearn.metrics import average_precision_score, roc_auc_score

from feclip.metrics import flatten_pixels, histogram_metrics, label_regions, pixel_metrics
from feclip.metrics_histograms import (
    ScoreHistograms,
    float16_bins,
    float16_histograms,
    merge_score_histograms,
    score_histograms,
)


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
