"""One synthetic image with its ground truth: the families, their defect types, and :func:`render_sample`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from ._draw import Array, Scene, copy_generator, grid, inside, noise, rotate
from .assemblies import ASSEMBLY_CATEGORIES, ASSEMBLY_VARIANTS, render_assembly
from .defects import SURFACE_DEFECTS, surface_defect
from .objects import OBJECT_CATEGORIES, OBJECT_VARIANTS, render_object
from .textures import TEXTURE_CATEGORIES, render_texture

__all__ = [
    "ASSEMBLY_CATEGORIES", "DEFECT_TYPES", "FAMILIES", "HELD_OUT_FAMILY", "OBJECT_CATEGORIES", "PRETRAINING_FAMILIES",
    "STRUCTURAL_DEFECTS", "TEXTURE_CATEGORIES", "SyntheticSample", "defect_types_for", "family_of", "render_sample",
]

FAMILIES: dict[str, tuple[str, ...]] = {
    "textures": TEXTURE_CATEGORIES, "objects": OBJECT_CATEGORIES, "assemblies": ASSEMBLY_CATEGORIES,
}
# The toy CLIP is pretrained on these; FE-CLIP trains on one of them and is evaluated on the other.
PRETRAINING_FAMILIES: tuple[str, ...] = ("textures", "objects")
# Seen by neither the toy CLIP's pretraining nor FE-CLIP's training: out-of-world generalisation.
HELD_OUT_FAMILY = "assemblies"
# Every category of every family can have these.
DEFECT_TYPES: tuple[str, ...] = SURFACE_DEFECTS
# Faults of a category's own structure, after the shared ones: a region at another pitch, a part missing or misplaced.
STRUCTURAL_DEFECTS: dict[str, tuple[str, ...]] = {
    **{category: ("pitch",) for category in TEXTURE_CATEGORIES},
    **{category: OBJECT_VARIANTS.get(category, ()) for category in OBJECT_CATEGORIES},
    **ASSEMBLY_VARIANTS,
}
_ALL_CATEGORIES = tuple(c for family in FAMILIES.values() for c in family)


@dataclass
class SyntheticSample:
    """One rendered image: ``clean`` and ``image`` are ``(S, S, 3)`` uint8, ``mask`` ``(S, S)`` bool.

    ``clean`` is the same image without the defect (identical for ``"good"``), handy to show
    exactly what a defect changed.
    """

    clean: Array
    image: Array
    mask: Array


def family_of(category: str) -> str:
    """The family a category belongs to (``ValueError`` naming the valid ones otherwise)."""
    for family, categories in FAMILIES.items():
        if category in categories:
            return family
    raise ValueError(f"unknown synthetic category {category!r}; valid: {_ALL_CATEGORIES}")


def defect_types_for(category: str) -> tuple[str, ...]:
    """The defect types of one category: :data:`DEFECT_TYPES` then its :data:`STRUCTURAL_DEFECTS`."""
    family_of(category)
    return DEFECT_TYPES + STRUCTURAL_DEFECTS[category]


def _render_scene(category: str, rng: np.random.Generator, n: int, variant: str | None = None, pitch: float = 1.0) -> Scene:
    family = family_of(category)
    if family == "textures":
        return render_texture(category, rng, n, pitch)
    if family == "objects":
        return render_object(category, rng, n, variant)
    return render_assembly(category, rng, n, variant)


def _pitch_region(rng: np.random.Generator, n: int) -> Array:
    """Where a surface was made at the wrong pitch: an irregular patch, or a band right across it."""
    y, x = grid(n)
    if rng.random() < 0.5:
        centre = rng.uniform(0.3, 0.7, 2) * n
        u, v = rotate(y, x, centre[0], centre[1], rng.uniform(0, np.pi))
        distance = np.hypot(u, v * rng.uniform(0.7, 1.3)) - n * rng.uniform(0.16, 0.26)
        return inside(distance + 0.1 * n * noise(rng, n, n / 12))
    u, v = rotate(y, x, *(rng.uniform(0.3, 0.7, 2) * n), rng.uniform(0, np.pi))
    return inside(np.abs(v) - n * rng.uniform(0.07, 0.13))


def _structural(category: str, defect: str, scene: Scene, twin: np.random.Generator, rng: np.random.Generator,
                n: int) -> tuple[Array, Array]:
    """``(image, mask)`` of a structural defect; ``twin`` is in the state ``scene`` was rendered from."""
    if defect == "pitch":
        factor = rng.uniform(0.4, 0.6) if rng.random() < 0.5 else rng.uniform(1.7, 2.4)
        region = _pitch_region(rng, n)
        other = _render_scene(category, twin, n, pitch=factor)
        return scene.image * (1 - region[..., None]) + other.image * region[..., None], region >= 0.5
    other = _render_scene(category, twin, n, variant=defect)
    # The mask is where the part is missing or misplaced: where the picture changed, shadow included.
    change = gaussian_filter(np.abs(other.image - scene.image).max(axis=-1), 0.7)
    return other.image, change > 0.06


def render_sample(category: str, defect_type: str, rng: np.random.Generator, image_size: int = 96) -> SyntheticSample:
    """Render one normal (``defect_type="good"``) or defective image of a synthetic category.

    Args:
        category: A category of one of the :data:`FAMILIES`.
        defect_type: ``"good"`` or one of :func:`defect_types_for` ``(category)``.
        rng: The random generator; the result depends only on its state.
        image_size: Side ``S`` of the square image in pixels.

    Returns:
        The clean image, the (possibly) defective one and its mask (empty for ``"good"``).
    """
    valid = ("good",) + defect_types_for(category)
    if defect_type not in valid:
        raise ValueError(f"unknown defect type {defect_type!r} for category {category!r}; valid: {valid}")
    n = image_size
    twin = copy_generator(rng)
    scene = _render_scene(category, rng, n)
    image, mask = scene.image, np.zeros((n, n), dtype=bool)
    if defect_type in STRUCTURAL_DEFECTS[category]:
        image, mask = _structural(category, defect_type, scene, twin, rng, n)
    elif defect_type != "good":
        for _ in range(20):  # redraw the rare defect that lands (almost) off the part
            shape, strength, target = surface_defect(defect_type, scene, rng, n)
            # A defect changes the part, never the backdrop around it; the mask keeps the part's
            # anti-aliased rim where a quarter or more of the pixel is material.
            material = np.where(scene.coverage >= 0.25, scene.coverage, 0.0)
            mask = shape * np.minimum(1, 2 * material) >= 0.5
            shape = shape * material
            if mask.sum() >= max(4, n**2 // 1000):
                break
        alpha = (shape * strength)[..., None]
        image = scene.image * (1 - alpha) + target * alpha
    sensor_noise = rng.normal(0, 0.01, scene.image.shape)  # identical in both, so only the defect differs
    to_uint8 = lambda a: np.clip(np.rint((a + sensor_noise) * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return SyntheticSample(clean=to_uint8(scene.image), image=to_uint8(image), mask=mask)
