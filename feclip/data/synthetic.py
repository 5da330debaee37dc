"""A small synthetic defect benchmark in MVTec layout, generated deterministically from a seed.

Two families with disjoint categories:

* ``textures``: procedural surfaces (:data:`TEXTURE_CATEGORIES`: weave, wood grain, brushed
  metal, carpet, tiles) with random phase, orientation, colour and lighting;
* ``objects``: simple parts on a background (:data:`OBJECT_CATEGORIES`: hex nut, two-colour
  pill, screw, ring) with random position, rotation, scale, colour and lighting.

Every category gets the five defect types of :data:`DEFECT_TYPES`: ``scratch`` (thin bright or
dark curve), ``hole`` (dark pit, or see-through on objects), ``crack`` (jagged branching dark
line), ``stain`` (blotchy colour change) and ``cut`` (a missing piece: a bite out of an object's
outline, a torn-out patch of a texture). Sizes, positions and contrasts vary. A defect is drawn
as ``image * (1 - alpha) + target * alpha`` with ``alpha = shape * strength``; the mask is
``shape >= 0.5``, so it covers the changed pixels up to an anti-aliased edge.

Zero-shot protocol offline: FE-CLIP trains on one dataset and is evaluated on another it has
never seen (VisA -> MVTec in the paper). Training on one family here and evaluating on the
other (textures -> objects, or the reverse) is the stand-in for that when the real datasets
cannot be downloaded; :func:`generate_benchmark` writes both families.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_erosion, gaussian_filter, map_coordinates
from scipy.ndimage import shift as shift_image

__all__ = [
    "DEFECT_TYPES", "FAMILIES", "OBJECT_CATEGORIES", "TEXTURE_CATEGORIES",
    "SyntheticSample", "generate_benchmark", "generate_synthetic_dataset", "render_sample",
]

TEXTURE_CATEGORIES = ("weave", "grain", "brushed_metal", "carpet", "tiles")
OBJECT_CATEGORIES = ("nut", "pill", "screw", "ring")
FAMILIES: dict[str, tuple[str, ...]] = {"textures": TEXTURE_CATEGORIES, "objects": OBJECT_CATEGORIES}
DEFECT_TYPES = ("scratch", "hole", "crack", "stain", "cut")
Array = np.ndarray


@dataclass
class SyntheticSample:
    """One rendered image: ``clean`` and ``image`` are ``(S, S, 3)`` uint8, ``mask`` ``(S, S)`` bool.

    ``clean`` is the same image without the defect (identical for ``"good"``), handy to show
    exactly what a defect changed.
    """

    clean: Array
    image: Array
    mask: Array


@dataclass
class _Scene:
    image: Array      # (S, S, 3) float in [0, 1]
    coverage: Array   # (S, S) float: how much of each pixel is material (ones for textures)
    backdrop: Array   # (S, S, 3): what a hole or a missing piece reveals


# ---------------------------------------------------------------- drawing helpers
def _grid(n: int) -> tuple[Array, Array]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    return y, x


def _rotate(y: Array, x: Array, cy: float, cx: float, angle: float) -> tuple[Array, Array]:
    """Coordinates ``(u, v)`` along and across a direction at ``angle``, centred at ``(cy, cx)``."""
    c, s = np.cos(angle), np.sin(angle)
    return c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)


def _inside(signed_distance: Array) -> Array:
    """Anti-aliased inside-ness of a shape given its signed distance in pixels."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _noise(rng: np.random.Generator, n: int, sigma: float | tuple[float, float]) -> Array:
    field = gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _streaks(rng: np.random.Generator, n: int, u: Array, v: Array, sigma_across: float, sigma_along: float) -> Array:
    """Noise stretched along ``u`` (brushing, wood fibres), sampled in rotated coordinates."""
    field = _noise(rng, n, (sigma_across, sigma_along))
    return map_coordinates(field, [v % n, u % n], order=1, mode="grid-wrap")


def _polyline_distance(y: Array, x: Array, points: Array) -> Array:
    distance = np.full(y.shape, np.inf)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((y - y0) * vy + (x - x0) * vx) / (vy * vy + vx * vx + 1e-12), 0.0, 1.0)
        distance = np.minimum(distance, np.hypot(y - y0 - t * vy, x - x0 - t * vx))
    return distance


def _jitter_colour(rng: np.random.Generator, palette: Sequence[Sequence[float]], amount: float = 0.06) -> Array:
    base = np.asarray(palette[rng.integers(len(palette))], dtype=np.float64)
    return np.clip(base + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _shade(colour: Array, value: Array) -> Array:
    return colour[None, None, :] * value[..., None]


# ---------------------------------------------------------------- textures
def _weave(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    period = n / rng.uniform(7.0, 10.0)
    u, v = _rotate(y, x, 0.0, 0.0, rng.uniform(-0.15, 0.15))
    u, v = u / period + rng.uniform(0, 2), v / period + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # which thread lies on top in this cell
    across, along = np.where(over, v % 1, u % 1), np.where(over, u, v)
    value = 0.45 + 0.55 * np.sin(np.pi * across) ** 0.7 + 0.05 * np.sin(2 * np.pi * 4 * along + 3 * across)
    warp = _jitter_colour(rng, [(0.80, 0.72, 0.56), (0.42, 0.52, 0.70), (0.62, 0.62, 0.60)])
    colour = np.where(over[..., None], warp, warp * 0.82)
    return colour * (value + 0.04 * _noise(rng, n, 0.7))[..., None]


def _grain(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    u, v = _rotate(y, x, n / 2, n / 2, rng.uniform(-0.3, 0.3))
    warp = _noise(rng, n, n / 10) * rng.uniform(0.8, 1.6)
    rings = (0.5 + 0.5 * np.sin(2 * np.pi * (v / (n / rng.uniform(5, 9)) + 0.35 * warp) + rng.uniform(0, 6.3))) ** 2
    fibres = _streaks(rng, n, u, v, 0.5, n / 6)
    light = _jitter_colour(rng, [(0.82, 0.64, 0.44), (0.74, 0.56, 0.36)])
    dark = light * rng.uniform(0.55, 0.7)
    t = np.clip(0.8 * rings + 0.08 * fibres, 0, 1)[..., None]
    return light * (1 - t) + dark * t


def _brushed_metal(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    u, v = _rotate(y, x, n / 2, n / 2, rng.uniform(-0.25, 0.25))
    streak = 0.7 * _streaks(rng, n, u, v, 0.5, n / 4) + 0.3 * _streaks(rng, n, u, v, 1.5, n / 8)
    highlight = 0.16 * np.exp(-(((u - rng.uniform(-0.3, 0.3) * n) / (0.35 * n)) ** 2))
    value = rng.uniform(0.52, 0.68) + 0.05 * streak + highlight
    return _shade(_jitter_colour(rng, [(0.96, 0.97, 1.0), (1.0, 0.97, 0.92)], 0.02), value)


def _carpet(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    period = n / rng.uniform(14, 20)
    wobble = 0.6 * _noise(rng, n, 3.0)
    tufts = np.sin(2 * np.pi * x / period + wobble + rng.uniform(0, 6.3)) * np.sin(
        2 * np.pi * y / period + wobble + rng.uniform(0, 6.3))
    value = 0.78 + 0.10 * tufts + 0.06 * _noise(rng, n, n / 10) + 0.09 * _noise(rng, n, 0.6)
    palette = [(0.62, 0.22, 0.18), (0.30, 0.40, 0.58), (0.40, 0.52, 0.34), (0.58, 0.56, 0.52)]
    return _shade(_jitter_colour(rng, palette), value)


def _tiles(rng: np.random.Generator, n: int, y: Array, x: Array) -> Array:
    period = n / rng.uniform(2.2, 3.2)
    u, v = _rotate(y, x, 0.0, 0.0, rng.uniform(-0.05, 0.05))
    u, v = u / period + rng.uniform(0, 1), v / period + rng.uniform(0, 1)
    fu, fv = u % 1, v % 1
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv)) * period  # px to the nearest tile edge
    grout = _inside(edge - period * rng.uniform(0.04, 0.07))
    tile_tone = rng.uniform(-0.05, 0.05, (16, 16))[np.floor(u).astype(int) % 16, np.floor(v).astype(int) % 16]
    bevel = lambda f: np.clip(1 - f * period / 3, 0, 1)  # noqa: E731 - light from the top-left
    value = 1 + tile_tone + 0.08 * (bevel(fu) + bevel(fv) - bevel(1 - fu) - bevel(1 - fv)) + 0.03 * _noise(rng, n, 0.8)
    tile = _shade(_jitter_colour(rng, [(0.86, 0.85, 0.82), (0.74, 0.44, 0.31), (0.36, 0.60, 0.62)]), value)
    return tile * (1 - grout[..., None]) + np.array([0.45, 0.43, 0.40]) * grout[..., None]


# ---------------------------------------------------------------- objects
def _nut(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array) -> tuple[Array, Array]:
    apothem, bore = 0.30 * s, 0.15 * s
    hexagon = np.maximum.reduce([np.abs(u), np.abs(0.5 * u + 0.866 * v), np.abs(0.5 * u - 0.866 * v)]) - apothem
    r = np.hypot(u, v)
    coverage = _inside(hexagon) * _inside(bore - r)
    chamfer = r > 0.9 * apothem
    value = np.where(chamfer, 0.62 + 0.25 * light, 0.60 + 0.06 * light)
    value = np.where(r < bore + 0.06 * s, 0.38 - 0.15 * light + 0.05 * np.sin(2 * np.pi * r / 1.8), value)
    return _shade(_jitter_colour(rng, [(0.95, 0.96, 1.0), (1.0, 0.9, 0.7)], 0.03), value), coverage


def _pill(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array) -> tuple[Array, Array]:
    half_length, radius = 0.22 * s, 0.14 * s
    coverage = _inside(np.hypot(np.maximum(np.abs(u) - half_length, 0), v) - radius)
    across = np.clip(v / radius, -1, 1)
    value = 0.62 + 0.38 * np.sqrt(1 - across**2) + 0.22 * np.exp(-(((across + 0.45) / 0.18) ** 2))
    pairs = [((0.80, 0.20, 0.18), (0.93, 0.91, 0.87)), ((0.25, 0.40, 0.80), (0.95, 0.80, 0.30)),
             ((0.30, 0.65, 0.40), (0.93, 0.91, 0.87))]
    first, second = (np.asarray(c) for c in pairs[rng.integers(len(pairs))])
    seam = np.clip(u + 0.5, 0, 1)[..., None]
    colour = first * (1 - seam) + second * seam
    return colour * np.clip(value, 0, 1.1)[..., None] * 0.92, coverage


def _screw(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array) -> tuple[Array, Array]:
    half_length, half_width, head = 0.32 * s, 0.06 * s, 0.12 * s
    width = half_width * np.clip((half_length - u) / (0.25 * half_length), 0.2, 1.0)  # pointed tip
    shaft = np.maximum(np.abs(u) - half_length, np.abs(v) - width)
    head_distance = np.hypot(u + half_length, v)
    coverage = _inside(np.minimum(shaft, head_distance - head))
    threads = 0.5 + 0.22 * np.sin(2 * np.pi * (u + 0.35 * v) / (0.045 * s))
    cylinder = np.sqrt(np.clip(1 - (v / half_width) ** 2, 0, 1))
    value = np.where(u > -half_length + head, threads * (0.55 + 0.5 * cylinder), 0.8 - 0.25 * head_distance / head)
    slot = (np.abs(v) < 0.018 * s) & (head_distance < 0.8 * head)
    value = np.where(slot, 0.15, value) + 0.12 * light
    return _shade(_jitter_colour(rng, [(0.92, 0.93, 0.97), (0.95, 0.80, 0.50)], 0.03), value), coverage


def _ring(rng: np.random.Generator, s: float, u: Array, v: Array, light: Array) -> tuple[Array, Array]:
    radius, half_thickness = 0.28 * s, 0.08 * s
    r = np.hypot(u, v)
    coverage = _inside(np.abs(r - radius) - half_thickness)
    across = np.clip((r - radius) / half_thickness, -1, 1)
    value = 0.45 + 0.45 * np.sqrt(1 - across**2) + 0.25 * across * light
    palette = [(0.85, 0.66, 0.32), (0.76, 0.45, 0.30), (0.30, 0.30, 0.32)]
    return _shade(_jitter_colour(rng, palette, 0.04), value), coverage


TEXTURES: dict[str, Callable[..., Array]] = {
    "weave": _weave, "grain": _grain, "brushed_metal": _brushed_metal, "carpet": _carpet, "tiles": _tiles,
}
OBJECTS: dict[str, Callable[..., tuple[Array, Array]]] = {"nut": _nut, "pill": _pill, "screw": _screw, "ring": _ring}


def _render_normal(category: str, rng: np.random.Generator, n: int) -> _Scene:
    y, x = _grid(n)
    # Lighting varies from image to image: overall gain plus a linear gradient.
    angle = rng.uniform(0, 2 * np.pi)
    gradient = (np.cos(angle) * (x - n / 2) + np.sin(angle) * (y - n / 2)) / n
    lighting = rng.uniform(0.9, 1.08) + rng.uniform(0, 0.12) * gradient
    if category in TEXTURES:
        image = TEXTURES[category](rng, n, y, x)
        # What a torn-out patch reveals: a darker, rougher under-layer.
        backing = image * rng.uniform(0.1, 0.4) * (1 + 0.25 * _noise(rng, n, 1.0))[..., None]
        return _Scene(np.clip(image * lighting[..., None], 0, 1), np.ones((n, n)), backing)
    backdrop_colour = _jitter_colour(rng, [(0.20, 0.22, 0.25), (0.72, 0.72, 0.70), (0.20, 0.32, 0.25)], 0.03)
    backdrop = _shade(backdrop_colour, 1 + 0.03 * _noise(rng, n, 1.5))
    cy, cx = n / 2 + rng.uniform(-0.06, 0.06, 2) * n
    u, v = _rotate(y, x, cy, cx, rng.uniform(0, 2 * np.pi))
    light_direction = rng.uniform(0, 2 * np.pi)
    light = np.cos(np.arctan2(y - cy, x - cx) - light_direction)
    colour, coverage = OBJECTS[category](rng, n * rng.uniform(0.92, 1.08), u, v, light)
    shadow = 0.4 * gaussian_filter(shift_image(coverage, (n / 40, n / 40), order=1), n / 40)
    backdrop = backdrop * (1 - shadow[..., None])
    image = backdrop * (1 - coverage[..., None]) + np.clip(colour, 0, 1) * coverage[..., None]
    return _Scene(np.clip(image * lighting[..., None], 0, 1), coverage, np.clip(backdrop * lighting[..., None], 0, 1))


# ---------------------------------------------------------------- defects
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


def _defect_shape(defect: str, scene: _Scene, rng: np.random.Generator, n: int) -> tuple[Array, float, Array]:
    """Return ``(shape in [0, 1], strength, target colours)`` of one defect."""
    y, x = _grid(n)
    margin = max(2, n // 8)
    allowed = binary_erosion(scene.coverage > 0.5, iterations=max(1, n // 48))
    allowed[:margin], allowed[-margin:], allowed[:, :margin], allowed[:, -margin:] = False, False, False, False
    if defect == "cut" and scene.coverage.min() < 0.5:  # a bite out of the object's outline
        allowed = (scene.coverage > 0.2) & (scene.coverage < 0.8)
    candidates = np.argwhere(allowed) if allowed.any() else np.argwhere(scene.coverage > 0.5)
    centre = candidates[rng.integers(len(candidates))] + 0.5
    local = scene.image[int(centre[0]), int(centre[1])].mean()
    contrast = np.full(3, 0.08 if local > 0.5 else 0.95)  # the colour that stands out here
    if defect == "scratch":
        distance = _polyline_distance(y, x, _curve(rng, centre, n * rng.uniform(0.2, 0.5)))
        return _inside(distance - rng.uniform(0.5, 1.4)), rng.uniform(0.55, 1.0), contrast
    if defect == "crack":
        path = _crack_path(rng, centre, n * 0.03, int(rng.integers(6, 12)))
        branch = _crack_path(rng, path[len(path) // 2], n * 0.025, int(rng.integers(2, 5)))
        distance = np.minimum(_polyline_distance(y, x, path), _polyline_distance(y, x, branch))
        return _inside(distance - rng.uniform(0.4, 1.0)), rng.uniform(0.75, 1.0), scene.image * 0.2
    if defect == "hole":
        radius = n * rng.uniform(0.03, 0.08)
        u, v = _rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
        distance = (np.hypot(u, v * rng.uniform(0.7, 1.3)) - radius)
        inner = scene.backdrop if scene.coverage.min() < 0.5 else scene.image * rng.uniform(0.1, 0.3)
        return _inside(distance), 1.0, inner
    if defect == "stain":
        radius = n * rng.uniform(0.06, 0.15)
        u, v = _rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
        field = 1 - np.hypot(u, v * rng.uniform(0.6, 1.4)) / radius + 0.3 * _noise(rng, n, radius / 3)
        tints = [(0.70, 0.52, 0.32), (0.55, 0.62, 0.90), (1.30, 1.15, 0.65), (0.45, 0.45, 0.45)]
        target = np.clip(scene.image * np.asarray(tints[rng.integers(len(tints))]), 0, 1)
        return np.clip(field / 0.15 + 0.5, 0, 1), rng.uniform(0.45, 0.85), target
    if defect == "cut":
        if scene.coverage.min() < 0.5:
            distance = np.hypot(y - centre[0], x - centre[1]) - n * rng.uniform(0.06, 0.11)
        else:  # a torn-out rectangular patch of the texture
            u, v = _rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
            distance = np.maximum(np.abs(u) - n * rng.uniform(0.05, 0.12), np.abs(v) - n * rng.uniform(0.03, 0.07))
        return _inside(distance), 1.0, scene.backdrop
    raise ValueError(f"unknown defect type {defect!r}; valid: {DEFECT_TYPES}")


def render_sample(category: str, defect_type: str, rng: np.random.Generator, image_size: int = 96) -> SyntheticSample:
    """Render one normal (``defect_type="good"``) or defective image of a synthetic category.

    Args:
        category: One of :data:`TEXTURE_CATEGORIES` or :data:`OBJECT_CATEGORIES`.
        defect_type: ``"good"`` or one of :data:`DEFECT_TYPES`.
        rng: The random generator; the result depends only on its state.
        image_size: Side ``S`` of the square image in pixels.

    Returns:
        The clean image, the (possibly) defective one and its mask (empty for ``"good"``).
    """
    if category not in TEXTURES and category not in OBJECTS:
        raise ValueError(f"unknown synthetic category {category!r}; valid: {TEXTURE_CATEGORIES + OBJECT_CATEGORIES}")
    if defect_type != "good" and defect_type not in DEFECT_TYPES:
        raise ValueError(f"unknown defect type {defect_type!r}; valid: {('good',) + DEFECT_TYPES}")
    scene = _render_normal(category, rng, image_size)
    image, mask = scene.image, np.zeros((image_size, image_size), dtype=bool)
    if defect_type != "good":
        for _ in range(20):  # redraw the rare defect that lands (almost) off the object
            shape, strength, target = _defect_shape(defect_type, scene, rng, image_size)
            shape = shape * scene.coverage  # a defect changes the part, never the backdrop around it
            mask = shape >= 0.5
            if mask.sum() >= max(4, image_size**2 // 1000):
                break
        alpha = (shape * strength)[..., None]
        image = scene.image * (1 - alpha) + target * alpha
    sensor_noise = rng.normal(0, 0.01, scene.image.shape)  # identical in both, so only the defect differs
    to_uint8 = lambda a: np.clip(np.rint((a + sensor_noise) * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return SyntheticSample(clean=to_uint8(scene.image), image=to_uint8(image), mask=mask)


# ---------------------------------------------------------------- writing datasets
def _image_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """One generator per file, so an image does not change when counts or other categories do."""
    key = [seed, *(zlib.crc32(s.encode()) for s in (category, split, defect)), index]
    return np.random.default_rng(key)


def generate_synthetic_dataset(
    out_dir: str | Path,
    *,
    family: str = "textures",
    categories: Sequence[str] | None = None,
    image_size: int = 96,
    n_train_good: int = 8,
    n_test_good: int = 8,
    n_test_defect_per_type: int = 3,
    defect_types: Sequence[str] = DEFECT_TYPES,
    seed: int = 0,
) -> Path:
    """Write one family as an MVTec-layout tree (readable by :class:`~feclip.data.mvtec.MVTecAD`).

    Writes ``<out_dir>/<category>/train/good/000.png``, ``test/good/``, ``test/<defect>/`` and
    ``ground_truth/<defect>/000_mask.png`` (0/255). An existing ``<out_dir>/<category>`` folder
    is replaced; nothing else is touched. The same arguments give byte-identical files.

    Args:
        out_dir: Root of the family (an MVTec root).
        family: ``"textures"`` or ``"objects"`` (see :data:`FAMILIES`).
        categories: Subset of the family's categories; None for all.
        image_size: Side of the square images in pixels (at least 32).
        n_train_good: Normal training images per category.
        n_test_good: Normal test images per category.
        n_test_defect_per_type: Defective test images per defect type and category.
        defect_types: Defect types to generate, from :data:`DEFECT_TYPES`.
        seed: Seed of everything.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {list(FAMILIES)}")
    chosen = list(FAMILIES[family] if categories is None else categories)
    unknown = [c for c in chosen if c not in FAMILIES[family]]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r} for family {family!r}; valid: {FAMILIES[family]}")
    bad_defects = [d for d in defect_types if d not in DEFECT_TYPES]
    if bad_defects:
        raise ValueError(f"unknown defect type {bad_defects[0]!r}; valid: {DEFECT_TYPES}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if min(n_train_good, n_test_good, n_test_defect_per_type) < 0:
        raise ValueError("image counts must be non-negative")
    out = Path(out_dir)
    jobs = [("train", "good", n_train_good), ("test", "good", n_test_good)]
    jobs += [("test", defect, n_test_defect_per_type) for defect in defect_types]
    for category in chosen:
        if (out / category).exists():
            shutil.rmtree(out / category)
        for split, defect, count in jobs:
            (out / category / split / defect).mkdir(parents=True, exist_ok=True)
            if defect != "good" and count:
                (out / category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                sample = render_sample(category, defect, _image_rng(seed, category, split, defect, index), image_size)
                # Fast zlib level: generation time matters more than a few hundred kB.
                image_path = out / category / split / defect / f"{index:03d}.png"
                Image.fromarray(sample.image).save(image_path, compress_level=1)
                if defect != "good":
                    mask_path = out / category / "ground_truth" / defect / f"{index:03d}_mask.png"
                    Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask_path, compress_level=1)
    return out


def generate_benchmark(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 96,
    n_train_good: int = 8,
    n_test_good: int = 8,
    n_test_defect_per_type: int = 3,
) -> dict[str, Path]:
    """Write both families under one root: ``<out_dir>/textures/<cat>/...``, ``<out_dir>/objects/<cat>/...``.

    Each family root is itself an MVTec root. Train FE-CLIP on the test split of one family and
    evaluate on the other: the offline stand-in for the paper's VisA -> MVTec protocol.

    Returns:
        ``{"textures": <out_dir>/textures, "objects": <out_dir>/objects}``.
    """
    counts = dict(image_size=image_size, n_train_good=n_train_good, n_test_good=n_test_good,
                  n_test_defect_per_type=n_test_defect_per_type, seed=seed)
    return {family: generate_synthetic_dataset(Path(out_dir) / family, family=family, **counts)
            for family in FAMILIES}
