"""Pixel histograms for streaming metrics: pixels counted per score bin, batch by batch, never stored.

:func:`feclip.metrics.histogram_metrics` turns such counts into the pixel metrics, exactly for
scores rounded to their bins.

* :func:`float16_histograms` bins float16 maps with one bin per float16 value, in increasing
  order: exact for such maps, whatever their range, in one pass without sorting.
* :func:`score_histograms` bins pixels of any precision over equal bins whose width is a power of
  two fitted to the scores' own range (so probabilities and unbounded maps such as logit margins
  are binned alike), and :func:`merge_score_histograms` pools such histograms exactly: every bin
  of a finer histogram lies inside one bin of a coarser one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from feclip.metrics import Connectivity, label_regions, region_histograms

__all__ = [
    "FLOAT16_BINS",
    "ScoreHistograms",
    "float16_bins",
    "float16_histograms",
    "merge_score_histograms",
    "score_histograms",
]

FLOAT16_BINS = 2**16  # one histogram bin per float16 bit pattern


def _float16_rank_of_bits() -> np.ndarray:
    """For each float16 bit pattern, the bin of its value among all float16 values, ascending."""
    bits = np.arange(FLOAT16_BINS, dtype=np.int64)
    # Sign and magnitude to order: negatives count down from 0x7FFF, positives up from 0x8000.
    rank = np.where(bits >= 0x8000, 0xFFFF - bits, bits + 0x8000)
    rank[0x8000] = 0x8000  # -0.0 is +0.0
    return rank


_FLOAT16_RANK = _float16_rank_of_bits()


def float16_bins(scores: np.ndarray) -> np.ndarray:
    """The bin of each score's float16 value among the 65536 float16 bit patterns, in increasing order of value.

    Equal values share a bin (``-0.0`` and ``+0.0`` too), larger values have larger bins, and
    values beyond float16's range become infinite, above every finite bin.

    Args:
        scores: Scores of any shape and floating dtype (rounded to float16 first).

    Returns:
        ``int64`` bins in ``[0, 65536)``, shaped like ``scores``.
    """
    with np.errstate(over="ignore"):  # overflowing to infinity is the documented rounding
        values = np.asarray(scores, dtype=np.float16)
    return _FLOAT16_RANK[values.view(np.uint16)]


def float16_histograms(
    anomaly_maps: np.ndarray, masks: np.ndarray, connectivity: Connectivity = 8
) -> tuple[np.ndarray, int]:
    """Exact pixel histograms of one batch of float16 maps, one bin per float16 value (:func:`float16_bins`).

    :func:`histogram_metrics` of the result is :func:`pixel_metrics` of the maps, without a sort:
    pixels are counted by bit pattern and the 65536 counts put in order of value afterwards.
    Histograms of several batches add up (regions never cross images).

    Args:
        anomaly_maps: Finite float16 pixel scores, shape ``(N, H, W)``.
        masks: Binary ground truth, shape ``(N, H, W)``.
        connectivity: Region connectivity of the region weights, ``8`` or ``4``.

    Returns:
        ``(counts, K)``: ``counts`` of shape ``(3, 65536)`` holds defect pixels, normal pixels and
        the sum over defect pixels of ``1 / size of the pixel's region`` per bin; ``K`` regions.
    """
    anomaly_maps, masks = np.asarray(anomaly_maps), np.asarray(masks).astype(bool, copy=False)
    if anomaly_maps.dtype != np.float16 or anomaly_maps.shape != masks.shape:
        raise ValueError(f"need float16 maps and masks of one shape, got {anomaly_maps.dtype} "
                         f"{anomaly_maps.shape} and {masks.shape}")
    bits = np.ascontiguousarray(anomaly_maps).view(np.uint16).ravel()
    regions, n_regions = label_regions(masks, connectivity) if masks.any() else (None, 0)
    # Count by bit pattern, then move each pattern's counts to the bin of its value.
    by_bits = region_histograms(bits, None if regions is None else regions.ravel(), FLOAT16_BINS)
    counts = np.stack([np.bincount(_FLOAT16_RANK, weights=row, minlength=FLOAT16_BINS) for row in by_bits])
    return counts, n_regions


@dataclass(frozen=True)
class ScoreHistograms:
    """Pixel counts over equal score bins of width ``2 ** exponent``.

    Bin ``i`` holds the scores ``s`` with ``floor(s / 2 ** exponent) == origin + i``: bins sit on
    a grid anchored at zero, so halving the resolution merges pairs of whole bins.

    Attributes:
        counts: ``(3, num_bins)`` float64: defect pixels, normal pixels, and the sum over defect
            pixels of ``1 / size of the pixel's region`` (the inputs of :func:`histogram_metrics`).
        exponent: Bin width ``2 ** exponent``.
        origin: Grid index of bin 0.
        n_regions: Number of defect regions behind ``counts[2]``.
    """

    counts: np.ndarray
    exponent: int
    origin: int
    n_regions: int

    def occupied(self) -> tuple[int, int]:
        """Grid indices of the lowest and highest non-empty bin."""
        nonzero = np.flatnonzero(self.counts[0] + self.counts[1])
        return self.origin + int(nonzero[0]), self.origin + int(nonzero[-1])


def _grid_index(values: np.ndarray | float, exponent: int) -> np.ndarray:
    """``floor(value / 2 ** exponent)``, exact: scaling by a power of two only moves the exponent."""
    return np.floor(np.ldexp(np.asarray(values, np.float64), -exponent)).astype(np.int64)


def _fitting_exponent(low: int, high: int, exponent: int, num_bins: int) -> int:
    """Smallest exponent from ``exponent`` on at which grid indices ``low..high`` (at ``exponent``) fit ``num_bins``."""
    while high - low >= num_bins:
        low, high, exponent = low >> 1, high >> 1, exponent + 1  # >> is floor division by 2 for negatives too
    return exponent


def score_histograms(scores: np.ndarray, regions: np.ndarray, n_regions: int, num_bins: int = 2**16) -> ScoreHistograms:
    """Histograms of one set of pixels on the finest power-of-two bins that hold all their scores.

    Args:
        scores: Finite pixel scores, shape ``(P,)``, any range.
        regions: Region label of every pixel, shape ``(P,)``, ``0`` for normal pixels.
        n_regions: Number of defect regions.
        num_bins: Number of bins, at least 2.

    Returns:
        The :class:`ScoreHistograms`; the bin width is below ``2 (max - min) / (num_bins - 1)``.
    """
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    scores = np.asarray(scores, np.float64)
    low, high = float(scores.min()), float(scores.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("score_histograms needs finite scores")
    # A first guess at the width, never so fine that grid indices leave int64 (2**62 from zero).
    span = high - low if high > low else 1.0
    exponent = max(math.ceil(math.log2(span / (num_bins - 1))) - 1, math.frexp(max(abs(low), abs(high), 1e-300))[1] - 62)
    exponent = _fitting_exponent(int(_grid_index(low, exponent)), int(_grid_index(high, exponent)), exponent, num_bins)
    origin = int(_grid_index(low, exponent))
    bins = _grid_index(scores, exponent) - origin
    defect = regions > 0
    weights = np.zeros(scores.size)
    weights[defect] = 1.0 / np.bincount(regions)[regions[defect]]
    counts = np.stack([
        np.bincount(bins[defect], minlength=num_bins),
        np.bincount(bins[~defect], minlength=num_bins),
        np.bincount(bins, weights=weights, minlength=num_bins),
    ]).astype(np.float64)
    return ScoreHistograms(counts, exponent, origin, n_regions)


def merge_score_histograms(histograms: Sequence[ScoreHistograms], num_bins: int = 2**16) -> ScoreHistograms:
    """Pool histograms of disjoint pixel sets on the finest common grid, exactly.

    The common bin width is the largest of the inputs', doubled until all occupied bins fit in
    ``num_bins``; each input bin falls whole into one output bin, so the result equals the
    histogram of all pixels binned at that width directly.
    """
    exponent = max(h.exponent for h in histograms)
    ranges = [tuple(index >> (exponent - h.exponent) for index in h.occupied()) for h in histograms]
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    final = _fitting_exponent(low, high, exponent, num_bins)
    origin = low >> (final - exponent)
    counts = np.zeros((3, num_bins))
    for h in histograms:
        target = ((h.origin + np.arange(h.counts.shape[1])) >> (final - h.exponent)) - origin
        occupied = (h.counts[0] + h.counts[1]) > 0
        for row in range(3):
            counts[row] += np.bincount(target[occupied], weights=h.counts[row][occupied], minlength=num_bins)
    return ScoreHistograms(counts, final, origin, sum(h.n_regions for h in histograms))
