"""The ``objects`` family: one part on a plain backdrop, like MVTec AD's metal nut, pill, screw, transistor, cable.

Loose parts (nut, pill, screw, ring) lie at any rotation; mounted parts (transistor, cable cross-section)
always face the camera the same way, so a part out of place is a defect. Each renderer takes a
``variant``: ``None`` (as made), ``"missing"`` (a part left out) or ``"misplaced"`` (a part out of
place). Every renderer draws the same random numbers whatever the variant, so one generator state
rendered with and without a variant gives the same object with and without that fault.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.ndimage import shift as shift_image

from ._draw import Array, Scene, box_distance, grid, inside, jitter_colour, lighting, noise, over, rotate, shade

__all__ = ["OBJECT_CATEGORIES", "OBJECT_VARIANTS", "render_object"]

Part = tuple[Array, Array]  # colour (S, S, 3), coverage (S, S)


def _nut(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    apothem, bore = 0.30 * s, 0.15 * s
    hexagon = np.maximum.reduce([np.abs(u), np.abs(0.5 * u + 0.866 * v), np.abs(0.5 * u - 0.866 * v)]) - apothem
    r = np.hypot(u, v)
    coverage = inside(hexagon) * inside(bore - r)
    chamfer = r > 0.9 * apothem
    value = np.where(chamfer, 0.62 + 0.25 * light, 0.60 + 0.06 * light)
    value = np.where(r < bore + 0.06 * s, 0.38 - 0.15 * light + 0.05 * np.sin(2 * np.pi * r / 1.8), value)
    return shade(jitter_colour(rng, [(0.95, 0.96, 1.0), (1.0, 0.9, 0.7)], 0.03), value), coverage


def _pill(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    half_length, radius = 0.22 * s, 0.14 * s
    coverage = inside(np.hypot(np.maximum(np.abs(u) - half_length, 0), v) - radius)
    across = np.clip(v / radius, -1, 1)
    value = 0.62 + 0.38 * np.sqrt(1 - across**2) + 0.22 * np.exp(-(((across + 0.45) / 0.18) ** 2))
    pairs = [((0.80, 0.20, 0.18), (0.93, 0.91, 0.87)), ((0.25, 0.40, 0.80), (0.95, 0.80, 0.30)),
             ((0.30, 0.65, 0.40), (0.93, 0.91, 0.87))]
    first, second = (np.asarray(c) for c in pairs[rng.integers(len(pairs))])
    seam = np.clip(u + 0.5, 0, 1)[..., None]
    colour = first * (1 - seam) + second * seam
    return colour * np.clip(value, 0, 1.1)[..., None] * 0.92, coverage


def _screw(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    half_length, half_width, head = 0.32 * s, 0.06 * s, 0.12 * s
    width = half_width * np.clip((half_length - u) / (0.25 * half_length), 0.2, 1.0)  # pointed tip
    shaft = np.maximum(np.abs(u) - half_length, np.abs(v) - width)
    head_distance = np.hypot(u + half_length, v)
    outline = shaft if variant == "missing" else np.minimum(shaft, head_distance - head)  # missing: no head
    coverage = inside(outline)
    threads = 0.5 + 0.22 * np.sin(2 * np.pi * (u + 0.35 * v) / (0.045 * s))
    cylinder = np.sqrt(np.clip(1 - (v / half_width) ** 2, 0, 1))
    value = np.where(u > -half_length + head, threads * (0.55 + 0.5 * cylinder), 0.8 - 0.25 * head_distance / head)
    slot = (np.abs(v) < 0.018 * s) & (head_distance < 0.8 * head)
    value = np.where(slot, 0.15, value) + 0.12 * light
    return shade(jitter_colour(rng, [(0.92, 0.93, 0.97), (0.95, 0.80, 0.50)], 0.03), value), coverage


def _ring(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    radius, half_thickness = 0.28 * s, 0.08 * s
    r = np.hypot(u, v)
    coverage = inside(np.abs(r - radius) - half_thickness)
    gap_angle, gap_width = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 1.0)
    if variant == "missing":  # a segment broken out of the ring
        off = np.abs((np.arctan2(v, u) - gap_angle + np.pi) % (2 * np.pi) - np.pi)
        coverage = coverage * inside((gap_width / 2 - off) * radius)
    across = np.clip((r - radius) / half_thickness, -1, 1)
    value = 0.45 + 0.45 * np.sqrt(1 - across**2) + 0.25 * across * light
    palette = [(0.85, 0.66, 0.32), (0.76, 0.45, 0.30), (0.30, 0.30, 0.32)]
    return shade(jitter_colour(rng, palette, 0.04), value), coverage


def _transistor(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    leads_colour = jitter_colour(rng, [(0.85, 0.85, 0.82), (0.90, 0.78, 0.50)], 0.03)
    body_colour = jitter_colour(rng, [(0.16, 0.16, 0.17), (0.22, 0.20, 0.19)], 0.02)
    missing_lead = int(rng.integers(3))
    tilt, shift = rng.choice([-1, 1]) * rng.uniform(0.25, 0.5), rng.uniform(-0.06, 0.06, 2) * s
    colour, coverage = np.zeros(u.shape + (3,)), np.zeros(u.shape)
    for lead in range(3):
        if variant == "missing" and lead == missing_lead:
            continue
        strip = inside(box_distance(u - (lead - 1) * 0.13 * s, v - 0.2 * s, 0.025 * s, 0.2 * s))
        value = 0.75 + 0.2 * np.cos(np.pi * (u - (lead - 1) * 0.13 * s) / (0.05 * s))
        colour, coverage = over(colour, shade(leads_colour, value), strip), np.maximum(coverage, strip)
    if variant == "misplaced":  # the body knocked off its seat: turned and shifted on its leads
        u, v = rotate(v, u, shift[0], shift[1], tilt)
    body_v = v + 0.09 * s
    body = inside(box_distance(u, body_v, 0.2 * s, 0.13 * s))
    tab_hole = inside(np.hypot(u, body_v + 0.2 * s) - 0.045 * s)
    tab = inside(box_distance(u, body_v + 0.2 * s, 0.17 * s, 0.08 * s)) * (1 - tab_hole)
    edge = np.clip(1 - np.minimum(0.2 * s - np.abs(u), 0.13 * s - np.abs(body_v)) / (0.03 * s), 0, 1)
    colour = over(colour, shade(np.array([0.80, 0.80, 0.82]), 0.8 + 0.15 * light), tab)
    colour = over(colour, shade(body_colour, 1 + 0.8 * edge + 0.15 * light), body)
    return colour, np.maximum.reduce([coverage, body, tab])


def _cable(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array, variant: str | None) -> Part:
    wire_colours = [np.array([0.35, 0.62, 0.25]), np.array([0.20, 0.35, 0.75]), np.array([0.50, 0.30, 0.16])]
    first, second = rng.choice(3, size=2, replace=False)
    if variant == "misplaced":  # two wires in each other's places
        wire_colours[first], wire_colours[second] = wire_colours[second], wire_colours[first]
    sheath_colour = jitter_colour(rng, [(0.15, 0.15, 0.16), (0.55, 0.55, 0.56)], 0.03)
    strands = noise(rng, u.shape[0], 0.6)
    r = np.hypot(u, v)
    outer = inside(r - 0.42 * s)
    filler = shade(np.array([0.80, 0.80, 0.78]), 0.85 + 0.05 * strands)  # what lies between the wires
    colour = over(shade(sheath_colour, 0.9 + 0.15 * light), filler, inside(r - 0.36 * s))
    for wire in range(3):
        angle = -np.pi / 2 + wire * 2 * np.pi / 3  # fixed places, clockwise from the top
        wy, wx = 0.17 * s * np.sin(angle), 0.17 * s * np.cos(angle)
        d = np.hypot(u - wx, v - wy)
        if variant == "missing" and wire == first:
            colour = over(colour, shade(np.array([0.55, 0.55, 0.52]), 0.7 + 0.1 * strands), inside(d - 0.13 * s))
            continue
        colour = over(colour, shade(wire_colours[wire], 0.9 + 0.1 * light), inside(d - 0.13 * s))
        colour = over(colour, shade(np.array([0.85, 0.55, 0.30]), 0.85 + 0.15 * strands), inside(d - 0.075 * s))
    return colour, outer


_PARTS: dict[str, Callable[..., Part]] = {
    "nut": _nut, "pill": _pill, "screw": _screw, "ring": _ring, "transistor": _transistor, "cable": _cable,
}
_MOUNTED = ("transistor", "cable")  # always seen from the same side, the same way up
OBJECT_CATEGORIES: tuple[str, ...] = tuple(_PARTS)
# Which faults of a part's own structure each category can have (besides the shared surface defects).
OBJECT_VARIANTS: dict[str, tuple[str, ...]] = {
    "screw": ("missing",), "ring": ("missing",), "transistor": ("missing", "misplaced"), "cable": ("missing", "misplaced"),
}


def render_object(category: str, rng: np.random.Generator, n: int, variant: str | None = None) -> Scene:
    """A part of one object category on its backdrop, lit, with a soft shadow.

    Args:
        category: One of :data:`OBJECT_CATEGORIES`.
        rng: The random generator; the result depends only on its state and ``variant``.
        n: Side of the square image in pixels.
        variant: ``None``, or one of the category's :data:`OBJECT_VARIANTS`.

    Returns:
        The :class:`Scene`; ``coverage`` is the part's silhouette.
    """
    y, x = grid(n)
    light_gain = lighting(rng, n, y, x)
    backdrop_colour = jitter_colour(rng, [(0.20, 0.22, 0.25), (0.72, 0.72, 0.70), (0.20, 0.32, 0.25)], 0.03)
    backdrop = shade(backdrop_colour, 1 + 0.03 * noise(rng, n, 1.5))
    mounted = category in _MOUNTED
    cy, cx = n / 2 + rng.uniform(-0.06, 0.06, 2) * n * (0.4 if mounted else 1.0)
    angle = rng.uniform(-0.08, 0.08) if mounted else rng.uniform(0, 2 * np.pi)
    u, v = rotate(y, x, cy, cx, angle)
    light_direction = rng.uniform(0, 2 * np.pi)
    light = np.cos(np.arctan2(y - cy, x - cx) - light_direction)
    colour, coverage = _PARTS[category](rng, n * rng.uniform(0.92, 1.08), u, v, light, variant)
    shadow = 0.4 * gaussian_filter(shift_image(coverage, (n / 40, n / 40), order=1), n / 40)
    backdrop = backdrop * (1 - shadow[..., None])
    image = over(backdrop, np.clip(colour, 0, 1), coverage)
    return Scene(np.clip(image * light_gain[..., None], 0, 1), coverage, np.clip(backdrop * light_gain[..., None], 0, 1))
