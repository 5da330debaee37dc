"""The ``assemblies`` family: several parts laid out on a carrier that fills the frame, like VisA's PCBs and capsules.

Neither the toy CLIP's pretraining nor FE-CLIP's training ever sees this family: it measures how
well what was learnt on textures and single objects carries to a kind of image seen by neither.
A slot of the layout can hold a part that is ``"missing"`` (an empty pad, cavity or socket) or
``"misplaced"`` (knocked off its seat: shifted and turned). As in :mod:`.objects`, every renderer
draws the same random numbers whatever the variant.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._draw import Array, Scene, box_distance, grid, inside, jitter_colour, lighting, noise, over, rotate, shade

__all__ = ["ASSEMBLY_CATEGORIES", "ASSEMBLY_VARIANTS", "render_assembly"]


def _seat(rng: np.random.Generator, u: Array, v: Array, misplaced: bool, scale: float) -> tuple[Array, Array]:
    """Coordinates of a part in its seat, or turned and shifted off it when ``misplaced``."""
    turn, shift = rng.choice([-1, 1]) * rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.45, 2) * rng.choice([-1, 1], 2) * scale
    return rotate(v, u, shift[0], shift[1], turn) if misplaced else (u, v)


def _circuit(rng: np.random.Generator, n: int, y: Array, x: Array, variant: str | None) -> Array:
    board = shade(jitter_colour(rng, [(0.10, 0.38, 0.20), (0.10, 0.22, 0.42), (0.12, 0.12, 0.13)], 0.03),
                  1 + 0.05 * noise(rng, n, 2.0))
    copper = jitter_colour(rng, [(0.80, 0.60, 0.30), (0.85, 0.85, 0.82)], 0.03)
    for _ in range(5):  # traces: one bend each, axis-aligned like routed copper
        (y0, x0), (y1, x1) = rng.uniform(0.05, 0.95, (2, 2)) * n
        corner = (y0, x1) if rng.random() < 0.5 else (y1, x0)
        for (ya, xa), (yb, xb) in (((y0, x0), corner), (corner, (y1, x1))):
            segment = box_distance(x - (xa + xb) / 2, y - (ya + yb) / 2, abs(xb - xa) / 2 + 0.6, abs(yb - ya) / 2 + 0.6)
            board = over(board, copper * 0.8, inside(segment))
    slots, target = rng.permutation(9)[:5], int(rng.integers(5))
    bodies = [(0.12, 0.12, 0.13), (0.82, 0.74, 0.58), (0.25, 0.40, 0.70)]
    for index, slot in enumerate(slots):
        cy, cx = (np.array([slot // 3, slot % 3]) + 0.5 + rng.uniform(-0.1, 0.1, 2)) * n / 3
        u, v = rotate(y, x, cy, cx, rng.choice([0.0, np.pi / 2]))
        half_length, half_width = rng.uniform(0.08, 0.12) * n, rng.uniform(0.04, 0.06) * n
        body_colour = np.asarray(bodies[rng.integers(len(bodies))])
        for side in (-1, 1):  # solder pads at both ends
            board = over(board, np.array([0.78, 0.78, 0.80]), inside(box_distance(u - side * half_length, v, 0.03 * n, half_width)))
        bu, bv = _seat(rng, u, v, variant == "misplaced" and index == target, half_width)
        if variant == "missing" and index == target:
            continue
        body = inside(box_distance(bu, bv, half_length * 0.85, half_width * 0.9))
        ridge = 0.85 + 0.25 * np.clip(1 - np.abs(bv) / half_width, 0, 1)
        board = over(board, shade(body_colour, ridge), body)
    return board


def _blister(rng: np.random.Generator, n: int, y: Array, x: Array, variant: str | None) -> Array:
    foil = shade(jitter_colour(rng, [(0.82, 0.83, 0.86), (0.85, 0.78, 0.55)], 0.02), 0.85 + 0.08 * noise(rng, n, 1.2))
    pill_colour = jitter_colour(rng, [(0.92, 0.90, 0.86), (0.85, 0.35, 0.30), (0.35, 0.50, 0.85)], 0.03)
    target, rows, cols = int(rng.integers(6)), 2, 3
    image = foil
    for index in range(rows * cols):
        cy = (index // cols + 0.5) / rows * n + rng.uniform(-0.02, 0.02) * n
        cx = (index % cols + 0.5) / cols * n + rng.uniform(-0.02, 0.02) * n
        u, v = rotate(y, x, cy, cx, np.pi / 2 + rng.uniform(-0.05, 0.05))
        cavity = np.hypot(u / 0.17, v / 0.12) / n  # an oval dome, long axis across the pack
        image = over(image, image * 0.75 + 0.2, inside((cavity - 1) * 0.12 * n))
        image = over(image, np.array([0.97, 0.97, 0.98]), np.exp(-(((cavity - 0.93) / 0.05) ** 2)) * 0.6)  # rim glint
        pu, pv = _seat(rng, u, v, variant == "misplaced" and index == target, 0.1 * n)
        if variant == "missing" and index == target:
            continue
        pill = inside(np.hypot(np.maximum(np.abs(pu) - 0.06 * n, 0), pv) - 0.06 * n)
        value = 0.8 + 0.25 * np.sqrt(np.clip(1 - (pv / (0.06 * n)) ** 2, 0, 1))
        image = over(image, shade(pill_colour, value), pill)
    return image


def _keypad(rng: np.random.Generator, n: int, y: Array, x: Array, variant: str | None) -> Array:
    base = shade(jitter_colour(rng, [(0.18, 0.18, 0.20), (0.30, 0.32, 0.36)], 0.02), 1 + 0.04 * noise(rng, n, 1.5))
    key_colour = jitter_colour(rng, [(0.85, 0.85, 0.83), (0.70, 0.72, 0.76), (0.35, 0.35, 0.38)], 0.03)
    target, keys = int(rng.integers(9)), 3
    image = base
    for index in range(keys * keys):
        cy, cx = (np.array([index // keys, index % keys]) + 0.5) * n / keys + rng.uniform(-0.01, 0.01, 2) * n
        u, v = rotate(y, x, cy, cx, 0.0)
        socket = inside(box_distance(u, v, 0.13 * n, 0.13 * n))
        image = over(image, image * 0.5, socket)
        image = over(image, np.array([0.75, 0.62, 0.35]), inside(np.hypot(u, v) - 0.05 * n))  # the contact pad
        ku, kv = _seat(rng, u, v, variant == "misplaced" and index == target, 0.06 * n)
        if variant == "missing" and index == target:
            continue
        key = inside(box_distance(ku, kv, 0.12 * n, 0.12 * n))
        bevel = np.clip(np.minimum(0.12 * n - np.abs(ku), 0.12 * n - np.abs(kv)) / (0.025 * n), 0, 1)
        symbol = inside(box_distance(ku, kv, (0.02 + 0.015 * (index % 3)) * n, (0.012 + 0.01 * (index // 3)) * n))
        face = shade(key_colour, 0.7 + 0.3 * bevel) * (1 - 0.6 * symbol[..., None])
        image = over(image, face, key)
    return image


_LAYOUTS: dict[str, Callable[..., Array]] = {"circuit": _circuit, "blister": _blister, "keypad": _keypad}
ASSEMBLY_CATEGORIES: tuple[str, ...] = tuple(_LAYOUTS)
ASSEMBLY_VARIANTS: dict[str, tuple[str, ...]] = {category: ("missing", "misplaced") for category in _LAYOUTS}


def render_assembly(category: str, rng: np.random.Generator, n: int, variant: str | None = None) -> Scene:
    """A defect-free (or ``variant``) assembly of one category, lit, filling the frame.

    Args:
        category: One of :data:`ASSEMBLY_CATEGORIES`.
        rng: The random generator; the result depends only on its state and ``variant``.
        n: Side of the square image in pixels.
        variant: ``None``, ``"missing"`` or ``"misplaced"``.

    Returns:
        The :class:`Scene` (coverage is one everywhere; a tear reveals a dark under-layer).
    """
    y, x = grid(n)
    light = lighting(rng, n, y, x)
    image = _LAYOUTS[category](rng, n, y, x, variant)
    backing = image * rng.uniform(0.1, 0.3) * (1 + 0.25 * noise(rng, n, 1.0))[..., None]
    return Scene(np.clip(image * light[..., None], 0, 1), np.ones((n, n)), backing)
