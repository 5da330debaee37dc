"""Captioned views of the synthetic world for contrastive pretraining: whole images and token windows.

A pretraining batch renders ``B`` scenes of the pretraining families, half of them with a
defect. A defective scene also enters the batch as its defect-free *twin* (the very same scene,
:attr:`feclip.data.synthetic.SyntheticSample.clean`), captioned with the same noun and template
in the normal state, so the pair differs in nothing but the state: the hardest negative there is,
and the one that teaches "damaged" versus "normal". From each image the batch cuts a few
*windows*: square groups of ``k x k`` patches of the ViT's token grid. A window view is encoded
as WinCLIP encodes one (the CLS token plus the window's patch tokens only,
:func:`feclip.vit.gather_window_tokens`), so the toy CLIP learns to tell, from a few patches,
whether they show a defect: what WinCLIP asks of a CLIP, and what puts local evidence into the
patch tokens that FE-CLIP's adapters read. By default every window of a defective image is
centred on its defect (:attr:`ViewMix.defect_window_fraction`) and is cut from the twin too; the
windows of defect-free images fall anywhere. A window's caption says what the window shows: one
that misses the defect is captioned as normal; one that grazes it (fewer than
:data:`MIN_DEFECT_PIXELS` defect pixels) is redrawn, so no caption is a guess.

Images are drawn from a random stream keyed by ``(seed, step)`` and disjoint from the one
:func:`feclip.data.synthetic.generate_synthetic_dataset` writes files from (that one is keyed by
category, split, defect type and index), so benchmark images are never pretraining images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from feclip.data.synthetic import FAMILIES, caption_pair, defect_types_for, render_sample
from feclip.toy_clip.options import ViewMix

__all__ = [
    "MIN_DEFECT_PIXELS", "ViewMix", "WindowView", "PretrainBatch", "step_rng", "render_batch", "window_indices", "group_windows",
]

# Fewest defect pixels (at 96 px) for a window to count as showing the defect.
MIN_DEFECT_PIXELS = 6
_STREAM = 0x70C11B  # first word of every pretraining key: no file of the written benchmark uses it




@dataclass(frozen=True)
class WindowView:
    """A ``size x size`` patch window at ``(row, col)`` (top-left, in patches) of image ``image``.

    ``state`` is what the window shows: ``"good"`` or the image's defect type.
    """

    image: int
    size: int
    row: int
    col: int
    state: str
    caption: str


@dataclass
class PretrainBatch:
    """Rendered images and their captioned views.

    Attributes:
        images: ``(B, S, S, 3)`` uint8.
        masks: ``(B, S, S)`` bool.
        categories: Category of each image.
        defect_types: ``"good"`` or the defect type of each image.
        captions: One caption per whole image.
        windows: The window views.
    """

    images: np.ndarray
    masks: np.ndarray
    categories: list[str]
    defect_types: list[str]
    captions: list[str]
    windows: list[WindowView]


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one pretraining step: the same ``(seed, step)`` always renders the same batch."""
    return np.random.default_rng([_STREAM, seed, step])


def _window(mask: np.ndarray, size: int, grid: int, patch: int, on_defect: bool,
            rng: np.random.Generator) -> tuple[int, int]:
    """Top-left ``(row, col)`` in patches of a ``size``-patch window, around a random defect pixel if ``on_defect``."""
    if on_defect and mask.any():
        y, x = np.argwhere(mask)[rng.integers(mask.sum())] // patch
        row, col = y - rng.integers(size), x - rng.integers(size)
    else:
        row, col = rng.integers(grid - size + 1), rng.integers(grid - size + 1)
    return int(np.clip(row, 0, grid - size)), int(np.clip(col, 0, grid - size))


def render_batch(
    rng: np.random.Generator,
    n_images: int,
    mix: ViewMix = ViewMix(),
    image_size: int = 96,
    patch_size: int = 8,
) -> PretrainBatch:
    """Render ``n_images`` captioned scenes, the defect-free twins of some, and their window views.

    Args:
        rng: The generator (see :func:`step_rng`).
        n_images: Scenes to render.
        mix: What the batch holds.
        image_size: Image side ``S`` in pixels.
        patch_size: The ViT's patch side in pixels (windows are counted in patches).

    Returns:
        The :class:`PretrainBatch`; twins follow the image they were rendered with.
    """
    categories = [c for family in mix.families for c in FAMILIES[family]]
    grid = image_size // patch_size
    min_pixels = max(1, round(MIN_DEFECT_PIXELS * (image_size / 96) ** 2))
    batch = PretrainBatch([], [], [], [], [], [])

    def add(image: np.ndarray, mask: np.ndarray, category: str, state: str, text: str) -> int:
        for values, value in zip((batch.images, batch.masks, batch.categories, batch.defect_types, batch.captions),
                                 (image, mask, category, state, text)):
            values.append(value)
        return len(batch.captions) - 1

    for _ in range(n_images):
        category = categories[rng.integers(len(categories))]
        types = defect_types_for(category)
        defect = types[rng.integers(len(types))] if rng.random() < mix.defect_fraction else "good"
        sample = render_sample(category, defect, rng, image_size)
        defective_text, normal_text = caption_pair(category, defect, rng, specific=mix.specific_caption)
        index = add(sample.image, sample.mask, category, defect, defective_text)
        twin = add(sample.clean, np.zeros_like(sample.mask), category, "good", normal_text) if (
            defect != "good" and rng.random() < mix.twin_fraction) else None
        for _ in range(mix.windows_per_image):
            size = int(mix.window_sizes[rng.integers(len(mix.window_sizes))])
            on_defect = defect != "good" and rng.random() < mix.defect_window_fraction
            for _attempt in range(8):
                row, col = _window(sample.mask, size, grid, patch_size, on_defect, rng)
                rows, cols = slice(row * patch_size, (row + size) * patch_size), slice(col * patch_size, (col + size) * patch_size)
                seen = int(sample.mask[rows, cols].sum())
                if seen == 0 or seen >= min_pixels:
                    break
            if 0 < seen < min_pixels:
                continue  # grazes the defect: no honest caption
            state = defect if seen else "good"
            defective_text, normal_text = caption_pair(category, state, rng, specific=mix.specific_caption)
            batch.windows.append(WindowView(index, size, row, col, state, defective_text))
            if twin is not None and seen:
                batch.windows.append(WindowView(twin, size, row, col, "good", normal_text))
    batch.images, batch.masks = np.stack(batch.images), np.stack(batch.masks)
    return batch


def window_indices(view: WindowView, grid: int) -> list[int]:
    """Row-major indices of a window's patches on a ``grid x grid`` token grid."""
    return [(view.row + r) * grid + view.col + c for r in range(view.size) for c in range(view.size)]


def group_windows(windows: Sequence[WindowView]) -> dict[int, list[int]]:
    """Positions of the windows in ``windows``, grouped by window size (each group is one transformer call)."""
    groups: dict[int, list[int]] = {}
    for position, view in enumerate(windows):
        groups.setdefault(view.size, []).append(position)
    return groups
