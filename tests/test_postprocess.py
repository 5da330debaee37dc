"""Tests for feclip.postprocess: the torch Gaussian against scipy.ndimage.gaussian_filter in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from feclip.postprocess import gaussian_kernel1d, reflect_indices, smooth_anomaly_maps


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0, 2.7])
@pytest.mark.parametrize("shape", [(3, 24, 31), (2, 5, 9)])  # (2, 5, 9): the kernel is wider than the map
def test_matches_scipy_gaussian_filter_reflect_in_float64(sigma: float, shape: tuple[int, int, int]) -> None:
    maps = np.random.default_rng(int(sigma * 10) + shape[1]).random(shape)
    smoothed = smooth_anomaly_maps(torch.from_numpy(maps), sigma)
    assert smoothed.dtype == torch.float64 and smoothed.shape == shape
    for ours, single in zip(smoothed.numpy(), maps):
        expected = ndimage.gaussian_filter(single, sigma, mode="reflect", truncate=4.0)  # scipy's defaults
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-13)
        np.testing.assert_allclose(ours, ndimage.gaussian_filter(single, sigma), rtol=0, atol=1e-13)


def test_other_truncation_and_float32() -> None:
    maps = np.random.default_rng(1).random((2, 40, 33))
    ours = smooth_anomaly_maps(torch.from_numpy(maps), 3.0, truncate=2.0).numpy()
    for out, single in zip(ours, maps):
        np.testing.assert_allclose(out, ndimage.gaussian_filter(single, 3.0, truncate=2.0), rtol=0, atol=1e-13)
    single = smooth_anomaly_maps(torch.from_numpy(maps).float(), 4.0)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single[0].numpy(), ndimage.gaussian_filter(maps[0], 4.0), rtol=0, atol=1e-6)


def test_kernel_and_reflect_padding_by_hand() -> None:
    kernel = gaussian_kernel1d(1.0, truncate=1.0)  # radius int(1.5) = 1: weights 1, e^-0.5, normalised
    side = np.exp(-0.5) / (1 + 2 * np.exp(-0.5))
    torch.testing.assert_close(kernel, torch.tensor([side, 1 - 2 * side, side], dtype=torch.float64))
    assert gaussian_kernel1d(4.0).numel() == 33  # radius int(16.5) = 16
    # scipy's "reflect" is numpy's "symmetric" padding (the edge pixel repeated), also past a whole period.
    assert reflect_indices(3, 4).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]
    for length, radius in ((5, 2), (3, 7), (1, 3)):
        assert reflect_indices(length, radius).tolist() == np.pad(np.arange(length), radius, mode="symmetric").tolist()


def test_sigma_zero_is_the_identity_and_a_constant_map_stays_constant() -> None:
    maps = torch.rand(2, 7, 8)
    assert smooth_anomaly_maps(maps, 0) is maps
    constant = torch.full((1, 9, 6), 0.25, dtype=torch.float64)
    torch.testing.assert_close(smooth_anomaly_maps(constant, 4.0), constant, rtol=0, atol=1e-15)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"map sigma must be a finite number >= 0 \(0 = no smoothing\), got -1"):
        smooth_anomaly_maps(torch.rand(1, 4, 4), -1)
    with pytest.raises(ValueError, match="map sigma"):
        smooth_anomaly_maps(torch.rand(1, 4, 4), float("nan"))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        smooth_anomaly_maps(torch.rand(4, 4), 1.0)
    with pytest.raises(ValueError, match="floating point"):
        smooth_anomaly_maps(torch.ones(1, 4, 4, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="truncate"):
        smooth_anomaly_maps(torch.rand(1, 4, 4), 1.0, truncate=0)
