"""The ``textures`` family: procedural surfaces that fill the frame, like MVTec AD's carpet, grid, leather, tile, wood.

Every surface takes a ``pitch`` factor that scales its pattern (weave period, ring spacing, tuft size...)
and leaves everything else drawn from the generator unchanged, so rendering the same generator state
with another pitch gives the same surface at another pitch: the ``pitch`` defect (a region woven,
cut or pressed at the wrong pitch) pastes one into the other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._draw import Array, Scene, grid, inside, jitter_colour, lighting, noise, rotate, shade, streaks

__all__ = ["TEXTURE_CATEGORIES", "render_texture"]


def _weave(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    period = n / rng.uniform(7.0, 10.0) * pitch
    u, v = rotate(y, x, 0.0, 0.0, rng.uniform(-0.15, 0.15))
    u, v = u / period + rng.uniform(0, 2), v / period + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # which thread lies on top in this cell
    across, along = np.where(over, v % 1, u % 1), np.where(over, u, v)
    value = 0.45 + 0.55 * np.sin(np.pi * across) ** 0.7 + 0.05 * np.sin(2 * np.pi * 4 * along + 3 * across)
    warp = jitter_colour(rng, [(0.80, 0.72, 0.56), (0.42, 0.52, 0.70), (0.62, 0.62, 0.60)])
    colour = np.where(over[..., None], warp, warp * 0.82)
    return colour * (value + 0.04 * noise(rng, n, 0.7))[..., None]


def _grain(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    u, v = rotate(y, x, n / 2, n / 2, rng.uniform(-0.3, 0.3))
    warp = noise(rng, n, n / 10) * rng.uniform(0.8, 1.6)
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * (v / (n / rng.uniform(5, 9) * pitch) + 0.35 * warp) + rng.uniform(0, 6.3))) ** 2
    fibres = streaks(rng, n, u, v, 0.5, n / 6)
    light = jitter_colour(rng, [(0.82, 0.64, 0.44), (0.74, 0.56, 0.36)])
    dark = light * rng.uniform(0.55, 0.7)
    t = np.clip(0.8 * rings + 0.08 * fibres, 0, 1)[..., None]
    return light * (1 - t) + dark * t


def _brushed_metal(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    u, v = rotate(y, x, n / 2, n / 2, rng.uniform(-0.25, 0.25))
    streak = 0.7 * streaks(rng, n, u, v, 0.5 * pitch, n / 4) + 0.3 * streaks(rng, n, u, v, 1.5 * pitch, n / 8)
    highlight = 0.16 * np.exp(-(((u - rng.uniform(-0.3, 0.3) * n) / (0.35 * n)) ** 2))
    # A coarser brushing is also a deeper one: the streaks' contrast grows with their width.
    value = rng.uniform(0.52, 0.68) + 0.05 * pitch**1.5 * streak + highlight
    return shade(jitter_colour(rng, [(0.96, 0.97, 1.0), (1.0, 0.97, 0.92)], 0.02), value)


def _carpet(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    period = n / rng.uniform(14, 20) * pitch
    wobble = 0.6 * noise(rng, n, 3.0)
    tufts = np.sin(2 * np.pi * x / period + wobble + rng.uniform(0, 6.3)) * np.sin(
        2 * np.pi * y / period + wobble + rng.uniform(0, 6.3))
    value = 0.78 + 0.10 * tufts + 0.06 * noise(rng, n, n / 10) + 0.09 * noise(rng, n, 0.6)
    palette = [(0.62, 0.22, 0.18), (0.30, 0.40, 0.58), (0.40, 0.52, 0.34), (0.58, 0.56, 0.52)]
    return shade(jitter_colour(rng, palette), value)


def _tiles(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    period = n / rng.uniform(2.2, 3.2) * pitch
    u, v = rotate(y, x, 0.0, 0.0, rng.uniform(-0.05, 0.05))
    u, v = u / period + rng.uniform(0, 1), v / period + rng.uniform(0, 1)
    fu, fv = u % 1, v % 1
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * period  # px to the nearest tile edge
    grout = inside(edge - period * rng.uniform(0.04, 0.07))
    tile_tone = rng.uniform(-0.05, 0.05, (16, 16))[np.floor(u).astype(int) % 16, np.floor(v).astype(int) % 16]
    bevel = lambda f: np.clip(1 - f * period / 3, 0, 1)  # noqa: E731 - light from the top-left
    value = 1 + tile_tone + 0.08 * (bevel(fu) + bevel(fv) - bevel(1 - fu) - bevel(1 - fv)) + 0.03 * noise(rng, n, 0.8)
    tile = shade(jitter_colour(rng, [(0.86, 0.85, 0.82), (0.74, 0.44, 0.31), (0.36, 0.60, 0.62)]), value)
    return tile * (1 - grout[..., None]) + np.array([0.45, 0.43, 0.40]) * grout[..., None]


def _leather(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    cell = n / rng.uniform(9, 13) * pitch
    pebbles = noise(rng, n, cell / 3)
    creases = np.exp(-(pebbles / 0.22) ** 2)  # thin dark lines where the field crosses zero
    bumps = np.abs(pebbles) ** 0.5
    value = 0.72 + 0.12 * bumps - 0.22 * creases + 0.04 * noise(rng, n, 0.7)
    palette = [(0.45, 0.28, 0.16), (0.20, 0.18, 0.17), (0.66, 0.50, 0.33), (0.45, 0.14, 0.16)]
    return shade(jitter_colour(rng, palette, 0.04), value)


def _mesh(rng: np.random.Generator, n: int, y: Array, x: Array, pitch: float) -> Array:
    period = n / rng.uniform(6.0, 8.5) * pitch
    u, v = rotate(y, x, 0.0, 0.0, rng.uniform(-0.08, 0.08))
    u, v = u / period + rng.uniform(0, 1), v / period + rng.uniform(0, 1)
    row = np.floor(v)
    fu, fv = (u + 0.5 * (row % 2)) % 1 - 0.5, v % 1 - 0.5  # staggered rows of round holes
    radius = rng.uniform(0.26, 0.34)
    r = np.hypot(fu, fv)
    hole = inside((r - radius) * period)
    rim = np.exp(-(((r - radius) * period - 0.8) / 0.8) ** 2)  # a bright chamfer around each hole
    metal = shade(jitter_colour(rng, [(0.80, 0.82, 0.86), (0.74, 0.70, 0.62)], 0.03),
                  0.78 + 0.18 * rim + 0.03 * noise(rng, n, (0.5, n / 6)))
    dark = np.array([0.08, 0.08, 0.09]) * (1 + 0.3 * noise(rng, n, 1.0))[..., None]
    return metal * (1 - hole[..., None]) + dark * hole[..., None]


_SURFACES: dict[str, Callable[..., Array]] = {
    "weave": _weave, "grain": _grain, "brushed_metal": _brushed_metal, "carpet": _carpet, "tiles": _tiles,
    "leather": _leather, "mesh": _mesh,
}
TEXTURE_CATEGORIES: tuple[str, ...] = tuple(_SURFACES)


def render_texture(category: str, rng: np.random.Generator, n: int, pitch: float = 1.0) -> Scene:
    """A defect-free surface of one texture category, lit, with the dark under-layer a tear reveals.

    Args:
        category: One of :data:`TEXTURE_CATEGORIES`.
        rng: The random generator; the result depends only on its state and ``pitch``.
        n: Side of the square image in pixels.
        pitch: Scale of the pattern (1: normal).

    Returns:
        The :class:`Scene` (coverage is one everywhere).
    """
    y, x = grid(n)
    light = lighting(rng, n, y, x)
    image = _SURFACES[category](rng, n, y, x, pitch)
    # What a torn-out patch reveals: a darker, rougher under-layer.
    backing = image * rng.uniform(0.1, 0.4) * (1 + 0.25 * noise(rng, n, 1.0))[..., None]
    return Scene(np.clip(image * light[..., None], 0, 1), np.ones((n, n)), backing)
