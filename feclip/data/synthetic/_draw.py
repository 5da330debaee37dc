"""Drawing helpers shared by the synthetic families: coordinate grids, anti-aliased shapes, noise, colours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

Array = np.ndarray


@dataclass
class Scene:
    """A defect-free rendering before sensor noise.

    Attributes:
        image: ``(S, S, 3)`` float in ``[0, 1]``.
        coverage: ``(S, S)`` float: how much of each pixel is material (ones for surfaces that fill the frame).
        backdrop: ``(S, S, 3)``: what a hole or a missing piece reveals.
    """

    image: Array
    coverage: Array
    backdrop: Array


def grid(n: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates ``(y, x)``, each ``(n, n)``."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    return y, x


def rotate(y: Array, x: Array, cy: float, cx: float, angle: float) -> tuple[Array, Array]:
    """Coordinates ``(u, v)`` along and across a direction at ``angle``, centred at ``(cy, cx)``."""
    c, s = np.cos(angle), np.sin(angle)
    return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


def inside(signed_distance: Array) -> Array:
    """Anti-aliased inside-ness of a shape given its signed distance in pixels."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def box_distance(u: Array, v: Array, half_u: float, half_v: float) -> Array:
    """Signed distance (inside negative, Chebyshev-style) to an axis-aligned box in ``(u, v)``."""
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def noise(rng: np.random.Generator, n: int, sigma: float | tuple[float, float]) -> Array:
    """Smooth periodic noise with unit standard deviation; ``sigma`` in pixels sets its grain."""
    field = gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def streaks(rng: np.random.Generator, n: int, u: Array, v: Array, sigma_across: float, sigma_along: float) -> Array:
    """Noise stretched along ``u`` (brushing, wood fibres), sampled in rotated coordinates."""
    field = noise(rng, n, (sigma_across, sigma_along))
    return map_coordinates(field, [v % n, u % n], order=1, mode="grid-wrap")


def polyline_distance(y: Array, x: Array, points: Array) -> Array:
    """Distance in pixels from every pixel to a polyline ``(K, 2)`` of ``(y, x)`` points."""
    distance = np.full(y.shape, np.inf)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((y - y0) * vy + (x - x0) * vx) / (vy * vy + vx * vx + 1e-12), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(y - y0 - t * vy, x - x0 - t * vx))
    return distance


def jitter_colour(rng: np.random.Generator, palette: Sequence[Sequence[float]], amount: float = 0.06) -> Array:
    """One palette colour, picked at random and jittered per channel; shape ``(3,)``."""
    base = np.asarray(palette[rng.integers(len(palette))], dtype=np.float64)
    return np.clip(base + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def shade(colour: Array, value: Array) -> Array:
    """A colour ``(3,)`` times a brightness field ``(S, S)``: ``(S, S, 3)``."""
    return colour[None, None, :] * value[..., None]


def over(base: Array, colour: Array, alpha: Array) -> Array:
    """Paint ``colour`` (``(3,)`` or ``(S, S, 3)``) over ``base`` with coverage ``alpha`` ``(S, S)``."""
    return base * (1 - alpha[..., None]) + colour * alpha[..., None]


def lighting(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    """Image-to-image lighting: an overall gain plus a linear gradient, ``(S, S)``."""
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (x - n / 2) + np.sin(angle) * (y - n / 2)) / n
    return rng.uniform(0.9, 1.08) + rng.uniform(0, 0.12) * gradient


def copy_generator(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator in exactly ``rng``'s current state (to render the same scene twice)."""
    twin = np.random.Generator(type(rng.bit_generator)())
    twin.bit_generator.state = rng.bit_generator.state
    return twin
