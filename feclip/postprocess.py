"""Post-processing of anomaly maps: the Gaussian smoothing of the field's evaluation code.

Most zero-shot anomaly-detection papers smooth each anomaly map with
``scipy.ndimage.gaussian_filter(map, sigma=4)`` before computing pixel metrics. This module does
the same filter in torch, batched and on the maps' own device and dtype: a separable Gaussian
with scipy's kernel (radius ``int(truncate * sigma + 0.5)``, weights ``exp(-x^2 / (2 sigma^2))``
normalised to sum 1) and scipy's default border mode ``"reflect"`` (the map continues as its
mirror image, the edge pixel repeated: ``c b a | a b c | c b a``). The result equals
``gaussian_filter(map, sigma, mode="reflect", truncate=truncate)`` up to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_kernel1d", "reflect_indices", "smooth_anomaly_maps"]


def gaussian_kernel1d(
    sigma: float, truncate: float = 4.0, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """scipy's 1-D Gaussian kernel: ``exp(-x^2 / (2 sigma^2))`` for ``|x| <= int(truncate sigma + 0.5)``, summing to 1.

    Args:
        sigma: Standard deviation in pixels, positive.
        truncate: Radius in standard deviations.
        dtype: Dtype of the kernel (computed in float64, then cast).
        device: Device of the kernel.

    Returns:
        Kernel of shape ``(2 r + 1,)``.
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * offsets**2 / sigma**2)
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def reflect_indices(length: int, radius: int, device: torch.device | str | None = None) -> Tensor:
    """Indices that pad an axis of ``length`` by ``radius`` on each side in scipy's ``"reflect"`` mode.

    The axis is extended as ``... c b a | a b c | c b a ...`` (period ``2 length``), so a
    radius larger than the axis works too.

    Returns:
        Long tensor of shape ``(length + 2 radius,)`` with values in ``[0, length)``.
    """
    positions = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(positions < length, positions, 2 * length - 1 - positions)


def _filter_axis(maps: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """Correlate ``(B, H, W)`` maps with a symmetric 1-D kernel along ``dim`` (-2 or -1), reflect-padded."""
    radius = kernel.numel() // 2
    padded = maps.index_select(dim, reflect_indices(maps.shape[dim], radius, maps.device))
    weight = kernel.view(1, 1, -1, 1) if dim == -2 else kernel.view(1, 1, 1, -1)
    return F.conv2d(padded[:, None], weight)[:, 0]


def smooth_anomaly_maps(anomaly_maps: Tensor, sigma: float, *, truncate: float = 4.0) -> Tensor:
    """Smooth anomaly maps with a Gaussian of standard deviation ``sigma`` pixels, as scipy would.

    Equals ``scipy.ndimage.gaussian_filter(map, sigma, mode="reflect", truncate=truncate)`` on
    every map: a separable filter (columns, then rows) in the maps' dtype and on their device.

    Args:
        anomaly_maps: Maps ``(B, H, W)``, floating point.
        sigma: Standard deviation in pixels; ``0`` returns ``anomaly_maps`` itself.
        truncate: Kernel radius in standard deviations (scipy's default 4.0).

    Returns:
        Smoothed maps ``(B, H, W)``, same dtype and device.
    """
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"map sigma must be a finite number >= 0 (0 = no smoothing), got {sigma!r}")
    if not math.isfinite(truncate) or truncate <= 0:
        raise ValueError(f"truncate must be a positive number, got {truncate!r}")
    if anomaly_maps.ndim != 3:
        raise ValueError(f"anomaly_maps must have shape (B, H, W), got {tuple(anomaly_maps.shape)}")
    if not anomaly_maps.is_floating_point():
        raise ValueError(f"anomaly_maps must be floating point, got {anomaly_maps.dtype}")
    if sigma == 0:
        return anomaly_maps
    kernel = gaussian_kernel1d(sigma, truncate, dtype=anomaly_maps.dtype, device=anomaly_maps.device)
    return _filter_axis(_filter_axis(anomaly_maps, kernel, -2), kernel, -1)
