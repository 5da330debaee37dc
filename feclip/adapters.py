"""FE-CLIP's two frequency adapters, FFE and LFS, and their fusion with the CLIP tokens.

Both adapters take the patch-token grid of one ViT block, shape ``(B, H, W, D)``,
and return a grid of the same shape:

* **FFE** (frequency-aware feature extraction) cuts the grid into non-overlapping
  ``P x P`` windows, takes the 2-D DCT of every window and channel, applies
  ``Linear(D, D) + GELU`` to the coefficients and transforms back.
* **LFS** (local frequency statistics) slides a ``Q x Q`` window over the grid,
  summarises the window's DCT coefficients by one statistic per channel, and
  mixes neighbours with ``Conv2d(D, D, 3) + GELU``.

The maths lives in the pure functions below; the modules only hold weights and
fixed bases (as non-persistent buffers, built once).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.dct import dct2, dct2_flat_basis, dct_mean_filter, frequency_basis

__all__ = [
    "LFS_STATISTICS",
    "LfsStatistic",
    "window_partition",
    "window_merge",
    "coefficient_filters",
    "statistic_filters",
    "local_frequency_statistic",
    "local_frequency_statistic_reference",
    "FrequencyFeatureExtraction",
    "LocalFrequencyStatistics",
    "FrequencyAdapter",
]

LfsStatistic = Literal["mean", "abs", "power"]
LFS_STATISTICS: tuple[str, ...] = ("mean", "abs", "power")


def window_partition(tokens: Tensor, window: int) -> Tensor:
    """Cut a token grid into non-overlapping square windows.

    A grid that ``window`` does not divide is replicate-padded at the bottom and
    right first; :func:`window_merge` crops the padding away again.

    Args:
        tokens: Token grid of shape ``(B, H, W, D)``.
        window: Window side ``P``.

    Returns:
        Windows of shape ``(B, ceil(H/P), ceil(W/P), P * P, D)``, each window flattened row-major.
    """
    batch, height, width, channels = tokens.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        tokens = F.pad(tokens.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode="replicate").permute(0, 2, 3, 1)
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    windows = tokens.reshape(batch, rows, window, cols, window, channels).transpose(2, 3)
    return windows.reshape(batch, rows, cols, window * window, channels)


def window_merge(windows: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: Windows of shape ``(B, rows, cols, P * P, D)``.
        height: Grid height ``H`` before padding.
        width: Grid width ``W`` before padding.

    Returns:
        Token grid of shape ``(B, H, W, D)``.
    """
    batch, rows, cols, area, channels = windows.shape
    window = round(area**0.5)
    grid = windows.reshape(batch, rows, cols, window, window, channels).transpose(2, 3)
    grid = grid.reshape(batch, rows * window, cols * window, channels)
    return grid[:, :height, :width]


def _same_padding(window: int) -> tuple[int, int, int, int]:
    """``F.pad`` widths (left, right, top, bottom) that keep the grid size for a stride-1 window."""
    before, after = (window - 1) // 2, window // 2
    return before, after, before, after


def coefficient_filters(
    window: int, basis: str = "dct", *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """The ``Q * Q`` fixed filters whose correlation with a window gives its 2-D coefficients.

    Filter ``(k, l)`` is ``outer(C[k], C[l])`` for the 1-D basis ``C``.

    Args:
        window: Window side ``Q``.
        basis: ``"dct"`` or ``"hartley"``.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        Filters of shape ``(Q * Q, Q, Q)``, ordered row-major by ``(k, l)``.
    """
    matrix = frequency_basis(basis, window, dtype=torch.float64)
    filters = torch.einsum("ki,lj->klij", matrix, matrix).reshape(window * window, window, window)
    return filters.to(dtype=dtype, device=device)


def statistic_filters(
    window: int,
    statistic: LfsStatistic,
    channels: int,
    basis: str = "dct",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Depthwise convolution weights that :func:`local_frequency_statistic` needs.

    Args:
        window: Window side ``Q``.
        statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        channels: Token width ``D``.
        basis: ``"dct"`` or ``"hartley"``.
        dtype: Floating dtype of the result.
        device: Device of the result.

    Returns:
        ``(D, 1, Q, Q)`` for ``"mean"`` (one fixed filter per channel), ``(D * Q * Q, 1, Q, Q)``
        for ``"abs"`` (every coefficient's filter per channel), and an empty tensor for
        ``"power"``, which needs none.
    """
    if statistic not in LFS_STATISTICS:
        raise ValueError(f"unknown LFS statistic {statistic!r}; choose one of {LFS_STATISTICS}")
    if statistic == "mean":
        mean_filter = dct_mean_filter(window, basis=basis, dtype=dtype, device=device)  # the mean of those filters
        return mean_filter.expand(channels, 1, window, window).contiguous()
    if statistic == "abs":
        filters = coefficient_filters(window, basis, dtype=dtype, device=device)  # (Q*Q, Q, Q)
        return filters.unsqueeze(1).repeat(channels, 1, 1, 1)
    return torch.empty(0, dtype=dtype, device=device)


def local_frequency_statistic(
    tokens: Tensor,
    window: int,
    statistic: LfsStatistic = "mean",
    basis: str = "dct",
    *,
    filters: Tensor | None = None,
) -> Tensor:
    """Sliding-window statistic of 2-D frequency coefficients, computed without unfolding.

    Every ``Q x Q`` neighbourhood (stride 1, replicate padding) of every channel is
    transformed and summarised, without unfolding the windows:

    * ``"mean"``: the signed mean is linear in the window, so it is one fixed
      depthwise filter (:func:`feclip.dct.dct_mean_filter`). Worth knowing: the
      column sums of the DCT basis concentrate on the first sample, so for ``Q = 3`` the
      filter is nearly an impulse at the window's top-left corner (weight 0.318 there,
      at most 0.052 elsewhere): the signed mean is close to a scaled, shifted copy of the
      tokens. ``"abs"`` and ``"power"`` summarise the window's spectrum for real.
    * ``"power"``: the transform is orthonormal, so by Parseval the mean squared
      coefficient equals the mean squared value: a box filter of ``x**2``.
    * ``"abs"``: the mean absolute coefficient is not linear, so the ``Q * Q`` coefficients
      are computed, by one grouped convolution with fixed filters (no unfold copies).
      Only this statistic holds ``Q * Q`` values per token.

    Args:
        tokens: Token grid of shape ``(B, H, W, D)``.
        window: Window side ``Q``.
        statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        basis: ``"dct"`` (FE-CLIP) or ``"hartley"`` (real Hartley form of the DFT, for ablations).
        filters: Precomputed :func:`statistic_filters` (modules keep them as a buffer).

    Returns:
        Statistic grid of shape ``(B, H, W, D)``.
    """
    channels = tokens.shape[-1]
    if filters is None:
        filters = statistic_filters(window, statistic, channels, basis, dtype=tokens.dtype, device=tokens.device)
    planar = F.pad(tokens.permute(0, 3, 1, 2), _same_padding(window), mode="replicate")  # (B, D, H+Q-1, W+Q-1)
    if statistic == "power":
        out = F.avg_pool2d(planar.square(), window, stride=1)
    elif statistic == "mean":
        out = F.conv2d(planar, filters.to(tokens.dtype), groups=channels)
    elif statistic == "abs":
        coefficients = F.conv2d(planar, filters.to(tokens.dtype), groups=channels)  # (B, D*Q*Q, H, W)
        out = coefficients.abs().unflatten(1, (channels, window * window)).mean(dim=2)
    else:
        raise ValueError(f"unknown LFS statistic {statistic!r}; choose one of {LFS_STATISTICS}")
    return out.permute(0, 2, 3, 1)


def local_frequency_statistic_reference(
    tokens: Tensor, window: int, statistic: LfsStatistic = "mean", basis: str = "dct"
) -> Tensor:
    """Direct unfold-and-transform version of :func:`local_frequency_statistic`, for tests and benchmarks.

    Materialises every window's coefficients, shape ``(B, D, H * W, Q, Q)``.

    Args:
        tokens: Token grid of shape ``(B, H, W, D)``.
        window: Window side ``Q``.
        statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        basis: ``"dct"`` or ``"hartley"``.

    Returns:
        Statistic grid of shape ``(B, H, W, D)``.
    """
    batch, height, width, channels = tokens.shape
    planar = F.pad(tokens.permute(0, 3, 1, 2), _same_padding(window), mode="replicate")
    patches = F.unfold(planar, window).reshape(batch, channels, window, window, height * width)
    patches = patches.permute(0, 1, 4, 2, 3)  # (B, D, H*W, Q, Q)
    if basis == "dct":
        coefficients = dct2(patches)
    else:
        matrix = frequency_basis(basis, window, dtype=tokens.dtype, device=tokens.device)
        coefficients = matrix @ patches @ matrix.T
    reducers = {"mean": lambda c: c, "abs": torch.abs, "power": torch.square}
    if statistic not in reducers:
        raise ValueError(f"unknown LFS statistic {statistic!r}; choose one of {LFS_STATISTICS}")
    out = reducers[statistic](coefficients).mean(dim=(-2, -1))  # (B, D, H*W)
    return out.reshape(batch, channels, height, width).permute(0, 2, 3, 1)


class FrequencyFeatureExtraction(nn.Module):
    """FFE: ``Linear + GELU`` on the 2-D DCT coefficients of non-overlapping ``P x P`` windows.

    Args:
        width: Token width ``D``.
        window: Window side ``P``.
        basis: ``"dct"`` (FE-CLIP) or ``"hartley"`` (ablation).
    """

    def __init__(self, width: int, window: int = 3, basis: str = "dct") -> None:
        super().__init__()
        self.window = window
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU())
        self.register_buffer("transform", dct2_flat_basis(window, basis=basis), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Args: tokens ``(B, H, W, D)``. Returns: ``(B, H, W, D)``."""
        height, width = tokens.shape[1:3]
        windows = window_partition(tokens, self.window)  # (B, rows, cols, P*P, D)
        transform = self.transform.to(tokens.dtype)
        coefficients = transform @ windows  # (B, rows, cols, P*P, D)
        return window_merge(transform.T @ self.mlp(coefficients), height, width)


class LocalFrequencyStatistics(nn.Module):
    """LFS: a sliding ``Q x Q`` frequency statistic followed by ``Conv2d(D, D, 3) + GELU``.

    Args:
        width: Token width ``D``.
        window: Window side ``Q``.
        statistic: ``"mean"`` (signed mean, the paper's reading), ``"abs"`` or ``"power"``.
        basis: ``"dct"`` (FE-CLIP) or ``"hartley"`` (ablation).
    """

    def __init__(self, width: int, window: int = 3, statistic: LfsStatistic = "mean", basis: str = "dct") -> None:
        super().__init__()
        if statistic not in LFS_STATISTICS:
            raise ValueError(f"unknown LFS statistic {statistic!r}; choose one of {LFS_STATISTICS}")
        self.window, self.statistic, self.basis = window, statistic, basis
        # Channels-last weights match the (B, H, W, D) token layout the statistic arrives in, so the
        # convolution runs without copying its D x D x 3 x 3 weight on every call (benchmarks/RESULTS.md).
        self.conv = nn.Conv2d(width, width, kernel_size=3, padding=1).to(memory_format=torch.channels_last)
        self.act = nn.GELU()
        self.register_buffer("filters", statistic_filters(window, statistic, width, basis), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """Args: tokens ``(B, H, W, D)``. Returns: ``(B, H, W, D)``."""
        statistic = local_frequency_statistic(tokens, self.window, self.statistic, self.basis, filters=self.filters)
        planar = statistic.permute(0, 3, 1, 2)  # (B, D, H, W), channels-last in memory
        return self.act(self.conv(planar)).permute(0, 2, 3, 1)


class FrequencyAdapter(nn.Module):
    """FFE and LFS at one tapped block, fused with the block's own tokens.

    ``out = lambda_fuse * (ffe(x) + lfs(x)) + (1 - lambda_fuse) * x``. Either branch can
    be switched off for ablations; with ``lambda_fuse = 0`` the adapter is the identity.

    Args:
        width: Token width ``D``.
        ffe_window: FFE window side ``P``.
        lfs_window: LFS window side ``Q``.
        lfs_statistic: LFS statistic, see :class:`LocalFrequencyStatistics`.
        lambda_fuse: Fusion weight of the adapter branch.
        basis: ``"dct"`` or ``"hartley"``.
        use_ffe: Whether the FFE branch is used.
        use_lfs: Whether the LFS branch is used.
    """

    def __init__(
        self,
        width: int,
        ffe_window: int = 3,
        lfs_window: int = 3,
        lfs_statistic: LfsStatistic = "mean",
        lambda_fuse: float = 0.1,
        basis: str = "dct",
        use_ffe: bool = True,
        use_lfs: bool = True,
    ) -> None:
        super().__init__()
        if not (use_ffe or use_lfs):
            raise ValueError("at least one of use_ffe and use_lfs must be True")
        self.lambda_fuse = lambda_fuse
        self.ffe = FrequencyFeatureExtraction(width, ffe_window, basis) if use_ffe else None
        self.lfs = LocalFrequencyStatistics(width, lfs_window, lfs_statistic, basis) if use_lfs else None

    def forward(self, tokens: Tensor) -> Tensor:
        """Args: tokens ``(B, H, W, D)``. Returns: fused tokens ``(B, H, W, D)``."""
        if self.lambda_fuse == 0:
            return tokens
        branches = [branch(tokens) for branch in (self.ffe, self.lfs) if branch is not None]
        return self.lambda_fuse * sum(branches) + (1 - self.lambda_fuse) * tokens
