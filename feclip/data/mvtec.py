"""MVTec AD and datasets in its layout (MPDD, BTAD, feclip's synthetic benchmark).

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/<name>.png
    <root>/<category>/ground_truth/<defect>/<name>_mask.png

BTAD names its normal folders ``ok`` and its masks ``<name>.png``; both are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from feclip.data.base import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    Sample,
    check_root_and_split,
    list_images,
    resolve_transform,
)
from feclip.data.transforms import AnomalyTransform, ImageSize

__all__ = ["MVTEC_CATEGORIES", "MVTEC_OBJECTS", "MVTEC_TEXTURES", "MVTecAD", "find_categories", "find_mask"]

MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)
MVTEC_CATEGORIES = tuple(sorted(MVTEC_TEXTURES + MVTEC_OBJECTS))

# Names of the folders holding normal images: MVTec/MPDD use "good", BTAD uses "ok".
NORMAL_DIR_NAMES = ("good", "ok")


def find_categories(root: Path) -> list[str]:
    """Sorted names of the folders under ``root`` that hold a ``train/`` or ``test/`` folder."""
    return sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())


def find_mask(ground_truth_dir: Path, image_path: Path) -> Path | None:
    """The mask of ``image_path`` in ``ground_truth_dir``, the one mask finder of every reader.

    ``<stem>_mask.*`` (MVTec's name) first, then ``<stem>.*`` (BTAD's, and a folder of masks named
    after their images): the explicit name wins, so a mask folder that also holds the images
    never returns the image itself. Extensions: ``.png`` first, then every image extension.
    """
    for name in (f"{image_path.stem}_mask", image_path.stem):
        for extension in (".png",) + IMAGE_EXTENSIONS:
            candidate = ground_truth_dir / f"{name}{extension}"
            if candidate.is_file():
                return candidate
    return None


def _select_categories(root: Path, categories: str | Sequence[str] | None) -> list[str]:
    found = find_categories(root)
    if not found:
        raise FileNotFoundError(f"no category folders with train/ or test/ inside {root}")
    if categories is None:
        return found
    wanted = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in wanted if c not in found]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r} in {root}; found: {found}")
    return wanted


def _category_samples(category_dir: Path, split: str) -> list[Sample]:
    category = category_dir.name
    split_dir = category_dir / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"missing split folder {split_dir}")
    samples: list[Sample] = []
    # Normal images first, then defect types alphabetically: a stable, readable order.
    defect_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir()),
                         key=lambda p: (p.name not in NORMAL_DIR_NAMES, p.name))
    for defect_dir in defect_dirs:
        is_normal = defect_dir.name in NORMAL_DIR_NAMES
        if split == "train" and not is_normal:
            continue  # the train split is normal-only by definition
        for image_path in list_images(defect_dir):
            if is_normal:
                samples.append(Sample(image_path, 0, category, "good"))
                continue
            mask_path = find_mask(category_dir / "ground_truth" / defect_dir.name, image_path)
            if mask_path is None:
                expected = category_dir / "ground_truth" / defect_dir.name / f"{image_path.stem}_mask.png"
                raise FileNotFoundError(f"no mask for anomalous image {image_path}; expected {expected}")
            samples.append(Sample(image_path, 1, category, defect_dir.name, mask_path))
    if not samples:
        raise FileNotFoundError(f"no images found under {split_dir}")
    return samples


class MVTecAD(AnomalyDataset):
    """MVTec AD (or any dataset in its layout) as a torch ``Dataset`` of :class:`AnomalyItem` dicts.

    Every anomalous test image must have a mask; a missing one raises ``FileNotFoundError``
    naming it when the dataset is built. Normal images get an all-zero mask with ``has_mask=True``.

    Args:
        root: Folder holding one folder per category.
        split: ``"test"`` (normal and anomalous) or ``"train"`` (normal only).
        categories: A category name, a list of them, or None for every category found.
        image_size: Backbone input size ``S`` (default 224); or pass ``transform``.
        mean: Backbone normalisation mean (default OpenAI's).
        std: Backbone normalisation std (default OpenAI's).
        transform: A ready :class:`AnomalyTransform`, e.g. from ``transforms_for_clip(model)``.
        resize_mode: ``"squash"`` (default) or ``"crop"`` when no ``transform`` is given; see
            :mod:`feclip.data.transforms`.

    Example:
        >>> dataset = MVTecAD("data/mvtec", categories=["bottle"], transform=transforms_for_clip(clip))
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        categories: str | Sequence[str] | None = None,
        image_size: ImageSize | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: AnomalyTransform | None = None,
        resize_mode: str | None = None,
    ) -> None:
        root = check_root_and_split(root, split)
        samples = [s for c in _select_categories(root, categories) for s in _category_samples(root / c, split)]
        super().__init__(samples, resolve_transform(transform, image_size, mean, std, resize_mode))
        self.root = root
        self.split = split
