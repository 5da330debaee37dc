"""FFE, LFS and their fusion, against brute-force per-window scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import scipy.special
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from feclip.adapters import (
    LFS_STATISTICS,
    FrequencyAdapter,
    FrequencyFeatureExtraction,
    LocalFrequencyStatistics,
    local_frequency_statistic,
    local_frequency_statistic_reference,
    statistic_filters,
    window_merge,
    window_partition,
)


def _hartley_1d(x: np.ndarray, axis: int) -> np.ndarray:
    """Orthonormal Hartley transform along one axis, from numpy's FFT: ``(Re - Im) / sqrt(n)``."""
    spectrum = np.fft.fft(x, axis=axis)
    return (spectrum.real - spectrum.imag) / math.sqrt(x.shape[axis])


def _transform_2d(window: np.ndarray, basis: str) -> np.ndarray:
    """2-D coefficients of a window over its first two axes: scipy DCT-II, or separable Hartley."""
    if basis == "dct":
        return scipy.fft.dctn(window, norm="ortho", axes=(0, 1))
    return _hartley_1d(_hartley_1d(window, 0), 1)


def _inverse_2d(coefficients: np.ndarray, basis: str) -> np.ndarray:
    if basis == "dct":
        return scipy.fft.idctn(coefficients, norm="ortho", axes=(0, 1))
    return _hartley_1d(_hartley_1d(coefficients, 0), 1)  # the orthonormal Hartley transform is its own inverse


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


# --- window partition ---------------------------------------------------------------------------


def test_window_partition_content_by_hand() -> None:
    grid = torch.arange(16.0).reshape(1, 4, 4, 1)  # rows [0..3], [4..7], [8..11], [12..15]
    windows = window_partition(grid, 2)
    assert windows.shape == (1, 2, 2, 4, 1)
    assert windows[0, 0, 0, :, 0].tolist() == [0, 1, 4, 5]
    assert windows[0, 0, 1, :, 0].tolist() == [2, 3, 6, 7]
    assert windows[0, 1, 0, :, 0].tolist() == [8, 9, 12, 13]
    assert windows[0, 1, 1, :, 0].tolist() == [10, 11, 14, 15]


def test_window_partition_replicate_pads_by_hand() -> None:
    grid = torch.arange(9.0).reshape(1, 3, 3, 1)  # padded to [[0,1,2,2],[3,4,5,5],[6,7,8,8],[6,7,8,8]]
    windows = window_partition(grid, 2)
    assert windows.shape == (1, 2, 2, 4, 1)
    assert windows[0, 0, 0, :, 0].tolist() == [0, 1, 3, 4]
    assert windows[0, 0, 1, :, 0].tolist() == [2, 2, 5, 5]
    assert windows[0, 1, 0, :, 0].tolist() == [6, 7, 6, 7]
    assert windows[0, 1, 1, :, 0].tolist() == [8, 8, 8, 8]


def test_window_partition_keeps_channels_together() -> None:
    grid = torch.randn(2, 4, 6, 5)
    windows = window_partition(grid, 2)
    # Window (1, 2) of image 1, element (row 1, col 0) is grid[1, 2 + 1, 4 + 0, :].
    torch.testing.assert_close(windows[1, 1, 2, 2], grid[1, 3, 4])


@pytest.mark.parametrize(("height", "width", "window"), [(6, 6, 3), (7, 5, 3), (12, 12, 5), (7, 5, 8), (4, 4, 1)])
def test_window_merge_inverts_window_partition(height: int, width: int, window: int) -> None:
    grid = torch.randn(2, height, width, 3)
    windows = window_partition(grid, window)
    assert windows.shape == (2, math.ceil(height / window), math.ceil(width / window), window * window, 3)
    assert torch.equal(window_merge(windows, height, width), grid)


# --- local frequency statistics -----------------------------------------------------------------


def _brute_force_statistic(tokens: np.ndarray, window: int, statistic: str, basis: str) -> np.ndarray:
    """One python loop per position and channel; same-size replicate padding ``((Q-1)//2, Q//2)``."""
    batch, height, width, channels = tokens.shape
    before, after = (window - 1) // 2, window // 2
    padded = np.pad(tokens, ((0, 0), (before, after), (before, after), (0, 0)), mode="edge")
    reducers = {"mean": lambda c: c.mean(), "abs": lambda c: np.abs(c).mean(), "power": lambda c: (c**2).mean()}
    reduce = reducers[statistic]
    out = np.empty_like(tokens)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    patch = padded[b, y : y + window, x : x + window, c]
                    out[b, y, x, c] = reduce(_transform_2d(patch, basis))
    return out


@pytest.mark.parametrize("statistic", LFS_STATISTICS)
@pytest.mark.parametrize("basis", ["dct", "dft"])
@pytest.mark.parametrize("window", [2, 3])
def test_reference_statistic_matches_a_python_loop(statistic: str, basis: str, window: int) -> None:
    tokens = torch.randn(1, 4, 5, 2, dtype=torch.float64)
    expected = _brute_force_statistic(tokens.numpy(), window, statistic, basis)
    actual = local_frequency_statistic_reference(tokens, window, statistic, basis)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("statistic", LFS_STATISTICS)
@pytest.mark.parametrize("basis", ["dct", "dft"])
@pytest.mark.parametrize("window", [2, 3, 5])
@pytest.mark.parametrize("grid", [(7, 7), (5, 9)])
def test_fast_statistic_equals_the_reference(statistic: str, basis: str, window: int, grid: tuple[int, int]) -> None:
    tokens = torch.randn(2, *grid, 3)
    expected = local_frequency_statistic_reference(tokens, window, statistic, basis)
    torch.testing.assert_close(local_frequency_statistic(tokens, window, statistic, basis), expected, atol=1e-5, rtol=0)
    filters = statistic_filters(window, statistic, 3, basis)
    torch.testing.assert_close(
        local_frequency_statistic(tokens, window, statistic, basis, filters=filters), expected, atol=1e-5, rtol=0
    )


def test_unknown_statistic_is_rejected() -> None:
    tokens = torch.randn(1, 4, 4, 2)
    for call in (
        lambda: local_frequency_statistic(tokens, 3, "median"),
        lambda: local_frequency_statistic_reference(tokens, 3, "median"),
        lambda: statistic_filters(3, "median", 2),
        lambda: LocalFrequencyStatistics(2, 3, "median"),
    ):
        with pytest.raises(ValueError, match="unknown LFS statistic 'median'"):
            call()


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


@pytest.mark.parametrize("statistic", ["mean", "power"])
def test_linear_statistics_never_build_the_coefficient_tensor(statistic: str) -> None:
    batch, height, width, channels, window = 2, 12, 12, 16, 5
    module = LocalFrequencyStatistics(channels, window, statistic)
    if statistic == "mean":
        # One fixed filter per channel, not one per coefficient.
        assert module.filters.shape == (channels, 1, window, window)
        assert module.filters.numel() == channels * window * window
    tokens = torch.randn(batch, height, width, channels)
    recorder = _LargestTensor()
    with recorder:
        local_frequency_statistic(tokens, window, statistic, filters=module.filters)
    padded = batch * (height + window - 1) * (width + window - 1) * channels
    coefficients = batch * height * width * channels * window * window
    assert recorder.largest <= padded < coefficients
    # The reference does materialise the coefficients, so the recorder can see them.
    with recorder:
        local_frequency_statistic_reference(tokens, window, statistic)
    assert recorder.largest >= coefficients


# --- FFE -----------------------------------------------------------------------------------------


def _brute_force_ffe(module: FrequencyFeatureExtraction, tokens: np.ndarray, basis: str) -> np.ndarray:
    """Pad, then per window: 2-D transform of every channel, Linear + GELU on the channels, inverse transform."""
    window = module.window
    weight = module.mlp[0].weight.detach().double().numpy()
    bias = module.mlp[0].bias.detach().double().numpy()
    batch, height, width, channels = tokens.shape
    pad_h, pad_w = -height % window, -width % window
    padded = np.pad(tokens, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    out = np.empty_like(padded)
    for b in range(batch):
        for top in range(0, height + pad_h, window):
            for left in range(0, width + pad_w, window):
                patch = padded[b, top : top + window, left : left + window]  # (P, P, D)
                coefficients = _transform_2d(patch, basis)
                mixed = _gelu(coefficients @ weight.T + bias)
                out[b, top : top + window, left : left + window] = _inverse_2d(mixed, basis)
    return out[:, :height, :width]


@pytest.mark.parametrize("basis", ["dct", "dft"])
@pytest.mark.parametrize(("grid", "window"), [((6, 6), 3), ((7, 5), 3), ((5, 5), 2)])
def test_ffe_equals_a_per_window_brute_force(basis: str, grid: tuple[int, int], window: int) -> None:
    module = FrequencyFeatureExtraction(4, window, basis).double()
    tokens = torch.randn(2, *grid, 4, dtype=torch.float64)
    expected = _brute_force_ffe(module, tokens.numpy(), basis)
    with torch.no_grad():
        actual = module(tokens)
    # The fixed bases are stored as float32 buffers, so even a float64 run carries ~1e-8 of rounding.
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-6)


def test_lfs_is_conv_and_gelu_of_the_statistic() -> None:
    module = LocalFrequencyStatistics(4, 3, "abs").double()
    tokens = torch.randn(2, 5, 6, 4, dtype=torch.float64)
    statistic = torch.from_numpy(_brute_force_statistic(tokens.numpy(), 3, "abs", "dct"))
    expected = F.gelu(F.conv2d(statistic.permute(0, 3, 1, 2), module.conv.weight, module.conv.bias, padding=1))
    with torch.no_grad():
        torch.testing.assert_close(module(tokens), expected.permute(0, 2, 3, 1), atol=1e-6, rtol=0)  # float32 filters


def test_window_sizes_matter() -> None:
    tokens = torch.randn(1, 12, 12, 4)
    ffe_3 = FrequencyFeatureExtraction(4, 3)
    ffe_2 = FrequencyFeatureExtraction(4, 2)
    ffe_2.load_state_dict(ffe_3.state_dict())  # same Linear: only P differs
    lfs_3 = LocalFrequencyStatistics(4, 3)
    lfs_5 = LocalFrequencyStatistics(4, 5)
    lfs_5.load_state_dict(lfs_3.state_dict())  # same Conv2d: only Q differs
    with torch.no_grad():
        assert (ffe_3(tokens) - ffe_2(tokens)).abs().max() > 1e-3
        assert (lfs_3(tokens) - lfs_5(tokens)).abs().max() > 1e-3


# --- fusion --------------------------------------------------------------------------------------


def test_adapter_with_zero_lambda_is_the_identity() -> None:
    tokens = torch.randn(2, 6, 6, 4)
    adapter = FrequencyAdapter(4, lambda_fuse=0.0)
    assert torch.equal(adapter(tokens), tokens)


@pytest.mark.parametrize("lambda_fuse", [0.1, 0.5, 1.0])
def test_adapter_fuses_both_branches(lambda_fuse: float) -> None:
    tokens = torch.randn(2, 7, 5, 4)
    adapter = FrequencyAdapter(4, ffe_window=3, lfs_window=3, lambda_fuse=lambda_fuse)
    with torch.no_grad():
        expected = lambda_fuse * (adapter.ffe(tokens) + adapter.lfs(tokens)) + (1 - lambda_fuse) * tokens
        torch.testing.assert_close(adapter(tokens), expected)


def test_adapter_branch_switches() -> None:
    tokens = torch.randn(1, 6, 6, 4)
    both = FrequencyAdapter(4, lambda_fuse=0.3)
    only_ffe = FrequencyAdapter(4, lambda_fuse=0.3, use_lfs=False)
    only_lfs = FrequencyAdapter(4, lambda_fuse=0.3, use_ffe=False)
    assert only_ffe.lfs is None and only_lfs.ffe is None
    only_ffe.ffe.load_state_dict(both.ffe.state_dict())
    only_lfs.lfs.load_state_dict(both.lfs.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(only_ffe(tokens), 0.3 * both.ffe(tokens) + 0.7 * tokens)
        torch.testing.assert_close(only_lfs(tokens), 0.3 * both.lfs(tokens) + 0.7 * tokens)
        # The two single-branch adapters add up to the full one: 0.3 (f + l) + 0.7 x.
        torch.testing.assert_close(only_ffe(tokens) + only_lfs(tokens) - 0.7 * tokens, both(tokens))
    with pytest.raises(ValueError, match="use_ffe and use_lfs"):
        FrequencyAdapter(4, use_ffe=False, use_lfs=False)
