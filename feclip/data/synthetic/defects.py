"""Surface defects painted onto a rendered scene: the defect types every category of every family can have.

A defect is ``(shape, strength, target)``: the image becomes ``image * (1 - alpha) + target * alpha``
with ``alpha = shape * strength``, and the mask is ``shape >= 0.5``, so it covers the changed pixels
up to an anti-aliased edge. Local defects (scratch, hole, crack, stain, cut, contamination) are a
few pixels to a few percent of the image; large-area ones (colour, gloss) cover a quarter of the
surface or more, sometimes all of it, as a wrong dye lot or a missing coat would.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion

from ._draw import Array, Scene, grid, inside, noise, polyline_distance, rotate

__all__ = ["SURFACE_DEFECTS", "LARGE_AREA_DEFECTS", "surface_defect"]

SURFACE_DEFECTS: tuple[str, ...] = ("scratch", "hole", "crack", "stain", "cut", "contamination", "colour", "gloss")
LARGE_AREA_DEFECTS: tuple[str, ...] = ("colour", "gloss")


def _curve(rng: np.random.Generator, centre: Array, length: float) -> Array:
    direction = rng.uniform(0, 2 * np.pi)
    along = np.array([np.sin(direction), np.cos(direction)])
    bend = np.array([-along[1], along[0]]) * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(-0.5, 0.5, 12)[:, None]
    return centre + t * length * along + (1 - 4 * t**2) * bend


def _crack_path(rng: np.random.Generator, start: Array, step: float, steps: int) -> Array:
    heading, points = rng.uniform(0, 2 * np.pi), [start]
    for _ in range(steps):
        heading += rng.uniform(-0.6, 0.6)
        points.append(points[-1] + step * np.array([np.sin(heading), np.cos(heading)]))
    return np.array(points)


def _blob(rng: np.random.Generator, n: int, centre: Array, radius: float, roughness: float) -> Array:
    """An irregular region as a signed distance in pixels (negative inside), about ``radius`` across."""
    y, x = grid(n)
    u, v = rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
    return np.hypot(u, v * rng.uniform(0.6, 1.4)) - radius + roughness * radius * noise(rng, n, radius / 3)


def _centre(defect: str, scene: Scene, rng: np.random.Generator, n: int) -> Array:
    """Where a defect starts: on the material, away from the border (on an object's outline for a cut)."""
    margin = max(2, n // 8)
    allowed = binary_erosion(scene.coverage > 0.5, iterations=max(1, n // 48))
    allowed[:margin], allowed[-margin:], allowed[:, :margin], allowed[:, -margin:] = False, False, False, False
    if defect == "cut" and scene.coverage.min() < 0.5:  # a bite out of the object's outline
        allowed = (scene.coverage > 0.2) & (scene.coverage < 0.8)
    candidates = np.argwhere(allowed) if allowed.any() else np.argwhere(scene.coverage > 0.5)
    return candidates[rng.integers(len(candidates))] + 0.5


def surface_defect(defect: str, scene: Scene, rng: np.random.Generator, n: int) -> tuple[Array, float, Array]:
    """Draw one surface defect on ``scene``.

    Args:
        defect: One of :data:`SURFACE_DEFECTS`.
        scene: The defect-free scene.
        rng: The random generator.
        n: Image side in pixels.

    Returns:
        ``(shape (S, S) in [0, 1], strength, target (3,) or (S, S, 3))``.
    """
    y, x = grid(n)
    centre = _centre(defect, scene, rng, n)
    local = scene.image[int(centre[0]), int(centre[1])].mean()
    contrast = np.full(3, 0.08 if local > 0.5 else 0.95)  # the colour that stands out here
    is_object = scene.coverage.min() < 0.5
    if defect == "scratch":
        distance = polyline_distance(y, x, _curve(rng, centre, n * rng.uniform(0.2, 0.5)))
        # Dark on light, light on dark; where the surface itself is that dark (a mesh's holes), the other way.
        similar = np.abs(scene.image.mean(axis=-1, keepdims=True) - contrast) < 0.3
        return inside(distance - rng.uniform(0.5, 1.4)), rng.uniform(0.55, 1.0), np.where(similar, 1 - contrast, contrast)
    if defect == "crack":
        path = _crack_path(rng, centre, n * 0.03, int(rng.integers(6, 12)))
        branch = _crack_path(rng, path[len(path) // 2], n * 0.025, int(rng.integers(2, 5)))
        distance = np.minimum(polyline_distance(y, x, path), polyline_distance(y, x, branch))
        return inside(distance - rng.uniform(0.4, 1.0)), rng.uniform(0.75, 1.0), scene.image * 0.2
    if defect == "hole":
        u, v = rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
        distance = np.hypot(u, v * rng.uniform(0.7, 1.3)) - n * rng.uniform(0.03, 0.08)
        inner = scene.backdrop if is_object else scene.image * rng.uniform(0.1, 0.3)
        return inside(distance), 1.0, inner
    if defect == "stain":
        radius = n * rng.uniform(0.06, 0.15)
        u, v = rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
        field = 1 - np.hypot(u, v * rng.uniform(0.6, 1.4)) / radius + 0.3 * noise(rng, n, radius / 3)
        tints = [(0.70, 0.52, 0.32), (0.55, 0.62, 0.90), (1.30, 1.15, 0.65), (0.45, 0.45, 0.45)]
        target = np.clip(scene.image * np.asarray(tints[rng.integers(len(tints))]), 0, 1)
        return np.clip(field / 0.15 + 0.5, 0, 1), rng.uniform(0.45, 0.85), target
    if defect == "cut":
        if is_object:
            distance = np.hypot(y - centre[0], x - centre[1]) - n * rng.uniform(0.06, 0.11)
        else:  # a torn-out rectangular patch of the surface
            u, v = rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
            distance = np.maximum(np.abs(u) - n * rng.uniform(0.05, 0.12), np.abs(v) - n * rng.uniform(0.03, 0.07))
        return inside(distance), 1.0, scene.backdrop
    if defect == "contamination":  # a cluster of specks: dust, swarf, paint droplets
        count, spread = int(rng.integers(8, 20)), n * rng.uniform(0.04, 0.09)
        specks = centre + rng.normal(0, spread, (count, 2))
        radii = rng.uniform(0.6, 1.6, count) * max(1.0, n / 96)
        distance = np.min([np.hypot(y - sy, x - sx) - r for (sy, sx), r in zip(specks, radii)], axis=0)
        colours = [(0.10, 0.09, 0.08), (0.35, 0.22, 0.10), (0.92, 0.92, 0.90)]
        colour = np.asarray(colours[rng.integers(len(colours))]) if local > 0.35 else np.array([0.92, 0.92, 0.90])
        return inside(distance), rng.uniform(0.8, 1.0), colour
    if defect in LARGE_AREA_DEFECTS:
        whole = rng.random() < 0.2
        region = -np.ones((n, n)) if whole else _blob(rng, n, centre, n * rng.uniform(0.2, 0.35), 0.25)
        grey = scene.image.mean(axis=-1, keepdims=True)
        if defect == "colour":  # a wrong dye or coating: another hue at about the same brightness
            tints = np.array([(1.35, 0.75, 0.70), (0.70, 0.85, 1.40), (0.80, 1.30, 0.75), (1.25, 1.15, 0.55)])
            hue = scene.image[scene.coverage > 0.5].mean(axis=0)
            hue = hue / (hue.mean() + 1e-8)
            unlike = np.argsort(-np.abs(tints - hue).sum(axis=1))[:2]  # the two tints least like the part's own
            target = np.clip(grey * tints[unlike[rng.integers(2)]] * rng.uniform(0.9, 1.1), 0, 1)
            return inside(region), rng.uniform(0.7, 0.95), target
        # gloss: a polished or lacquered area: contrast flattened and a bright sheen on top
        sheen = rng.uniform(0.2, 0.35)
        target = np.clip(grey + (scene.image - grey) * rng.uniform(0.2, 0.4) + sheen * (1 - grey), 0, 1)
        return inside(region), rng.uniform(0.75, 1.0), target
    raise ValueError(f"unknown surface defect {defect!r}; valid: {SURFACE_DEFECTS}")
