"""What every feclip dataset shares: image/mask loading, the item type and the Dataset itself.

A dataset is a list of :class:`Sample` records (paths and labels, checked when the dataset
is built) plus an :class:`~feclip.data.transforms.AnomalyTransform`. Loading happens in
``__getitem__``, and so do the checks that need the files' contents, each naming the file:

* a file that cannot be decoded raises :class:`ImageReadError`;
* a ground-truth mask whose size differs from its image's raises :class:`MaskSizeError`
  naming both files and both sizes (stretching it would silently change the pixel metrics);
* an anomalous image whose mask is all zeros gets an :class:`EmptyMaskWarning` (once per file
  and process): its pixel metrics then count no defect in it;
* an image larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``,
  about 89 M pixels; Pillow refuses twice that) raises :class:`ImageReadError` saying so. To
  allow larger images, set the environment variable ``FECLIP_MAX_IMAGE_PIXELS`` to a pixel
  count, or to ``none`` for no limit (it sets ``PIL.Image.MAX_IMAGE_PIXELS`` before each file
  is opened; Python code may also set that attribute directly).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from feclip.data.transforms import AnomalyTransform, ImageSize

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnomalyDataset",
    "AnomalyItem",
    "EmptyMaskWarning",
    "ImageReadError",
    "MAX_IMAGE_PIXELS_ENV",
    "MaskSizeError",
    "Sample",
    "list_images",
    "load_mask",
    "load_rgb",
    "resolve_transform",
    "to_rgb",
    "UNKNOWN_LABEL",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Label of an image whose normal/anomalous status is not known (prediction on a plain folder).
UNKNOWN_LABEL = -1


# Environment variable that raises (or, with "none", lifts) Pillow's decompression-bomb limit.
MAX_IMAGE_PIXELS_ENV = "FECLIP_MAX_IMAGE_PIXELS"


class ImageReadError(OSError):
    """An image or mask file exists but cannot be decoded (or is over the decompression-bomb limit)."""


class MaskSizeError(ValueError):
    """A ground-truth mask does not have the size of its image."""


class EmptyMaskWarning(UserWarning):
    """An anomalous image's mask file marks no pixel as anomalous."""


# Masks already warned about in this process: one warning per file, not one per epoch.
_WARNED_EMPTY_MASKS: set[Path] = set()


class AnomalyItem(TypedDict):
    """One dataset item; torch's default collate batches it (tensors stacked, the rest listed).

    Keys:
        image: Normalised image ``(3, S, S)`` float32.
        mask: Ground-truth mask ``(S, S)`` float32 in ``{0, 1}`` (all zeros for normal images).
        label: 0 normal, 1 anomalous, -1 unknown.
        category: Object/texture category, e.g. ``"bottle"``.
        defect_type: ``"good"`` for normal images, else the defect name.
        path: Path of the image file.
        has_mask: Whether ``mask`` is ground truth (pixel metrics skip items where it is not).
    """

    image: Tensor
    mask: Tensor
    label: int
    category: str
    defect_type: str
    path: str
    has_mask: bool


@dataclass(frozen=True)
class Sample:
    """Where one item lives on disk and what it is.

    ``has_mask`` is True for normal images (their mask is known to be empty) and for anomalous
    images with a mask file; False for anomalous images without one and for unlabelled images.
    """

    image_path: Path
    label: int
    category: str
    defect_type: str
    mask_path: Path | None = None
    has_mask: bool = True


def list_images(directory: Path) -> list[Path]:
    """Image files (by extension, case-insensitive) directly inside ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _apply_pixel_limit_from_environment() -> None:
    """Set ``PIL.Image.MAX_IMAGE_PIXELS`` from :data:`MAX_IMAGE_PIXELS_ENV` when that is set."""
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not value:
        return
    if value.lower() == "none":
        Image.MAX_IMAGE_PIXELS = None
        return
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive number of pixels or 'none', got {value!r}")
    Image.MAX_IMAGE_PIXELS = limit


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    _apply_pixel_limit_from_environment()
    try:
        image = Image.open(path)
        image.load()  # decode now so a truncated file fails here, not later in a transform
    except Image.DecompressionBombError as err:
        raise ImageReadError(
            f"image {path} is over Pillow's decompression-bomb limit ({err}); if you trust the file, allow it "
            f"by setting the environment variable {MAX_IMAGE_PIXELS_ENV} to a larger pixel count or to 'none' "
            "(in Python, PIL.Image.MAX_IMAGE_PIXELS)"
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err
    return image


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit / 32-bit integer or float single-channel image to 8 bits.

    PIL's ``convert("RGB")`` clips such values at 255, turning most 16-bit images white.
    ``I;16*`` modes are scaled by 255/65535; mode ``I`` (how older Pillow opens 16-bit PNG)
    the same when its values exceed 255, and mode ``F`` by 255 when its values lie in ``[0, 1]``.
    """
    values = np.asarray(image).astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif image.mode == "F" and peak <= 1.0:
        scale = 255.0
    elif peak <= 255.0:
        scale = 1.0
    elif peak <= 65535.0:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / peak
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without clipping high bit depths.

    Grayscale is replicated to 3 channels, palettes are looked up, alpha is dropped (as in
    open_clip's own preprocessing), 16-bit values are scaled to 8 bits.
    """
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_high_bit_depth_to_uint8(image), mode="L").convert("RGB")
    if image.mode in ("P", "PA"):
        # Palette images may carry transparency; through RGBA avoids PIL's warning.
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Load an image file as 8-bit RGB; raises :class:`ImageReadError` naming the file."""
    path = Path(path)
    image = _open(path)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as err:
        raise ImageReadError(f"cannot convert image {path} (mode {image.mode}) to RGB: {err}") from err


def load_mask(path: str | Path) -> np.ndarray:
    """Load a mask file as a boolean ``(h, w)`` array: any non-zero pixel is anomalous.

    Works for 0/255 and 0/1 masks, palette masks (index > 0), 16-bit and RGB(A) masks
    (a pixel counts when any colour channel is non-zero; alpha is ignored).
    """
    values = np.asarray(_open(Path(path)))
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)
    return values > 0


SPLITS = ("train", "test")


def check_root_and_split(root: str | Path, split: str) -> Path:
    """The dataset root as a ``Path``, after checking it exists and ``split`` is ``"train"`` or ``"test"``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return root


def resolve_transform(
    transform: AnomalyTransform | None,
    image_size: ImageSize | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    resize_mode: str | None = None,
) -> AnomalyTransform:
    """Return ``transform``, or build one from ``image_size``/``mean``/``std``/``resize_mode``.

    The defaults of a built transform are 224 px, OpenAI's mean and std, and ``"squash"``.
    """
    if transform is not None:
        if image_size is not None or mean is not None or std is not None or resize_mode is not None:
            raise ValueError("pass either transform or image_size/mean/std/resize_mode, not both")
        return transform
    kwargs: dict = {}
    if resize_mode is not None:
        kwargs["resize_mode"] = resize_mode
    if image_size is not None:
        kwargs["image_size"] = image_size
    if mean is not None:
        kwargs["mean"] = tuple(mean)
    if std is not None:
        kwargs["std"] = tuple(std)
    return AnomalyTransform(**kwargs)


def _check_mask(mask: np.ndarray, image: Image.Image, sample: Sample) -> None:
    """Refuse a mask of the wrong size; warn once about an anomalous image with an empty mask."""
    if mask.shape != (image.height, image.width):
        raise MaskSizeError(
            f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image "
            f"{sample.image_path} is {image.width}x{image.height}; a stretched mask would change the pixel metrics"
        )
    if sample.label == 1 and sample.mask_path not in _WARNED_EMPTY_MASKS and not mask.any():
        _WARNED_EMPTY_MASKS.add(sample.mask_path)
        warnings.warn(
            f"mask {sample.mask_path} of anomalous image {sample.image_path} marks no anomalous pixel",
            EmptyMaskWarning,
            stacklevel=3,
        )


def _held_out_count(size: int, fraction: float) -> int:
    """Items of a stratum of ``size`` to hold out: ``fraction`` of it rounded half up, at least one per part."""
    if size < 2:
        return 0
    return min(max(int(np.floor(size * fraction + 0.5)), 1), size - 1)


class AnomalyDataset(Dataset):
    """A list of :class:`Sample` records turned into :class:`AnomalyItem` dicts.

    Args:
        samples: The items, in order.
        transform: The paired image/mask transform.
    """

    def __init__(self, samples: Sequence[Sample], transform: AnomalyTransform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> AnomalyItem:
        sample = self.samples[index]
        image = load_rgb(sample.image_path)
        if sample.mask_path is not None:
            mask = load_mask(sample.mask_path)
            _check_mask(mask, image, sample)
        else:
            mask = np.zeros((image.height, image.width), dtype=bool)
        return AnomalyItem(
            image=self.transform.image(image),
            mask=self.transform.mask(mask),
            label=sample.label,
            category=sample.category,
            defect_type=sample.defect_type,
            path=str(sample.image_path),
            has_mask=sample.has_mask,
        )

    @property
    def categories(self) -> list[str]:
        """Categories present, in order of first appearance."""
        return list(dict.fromkeys(s.category for s in self.samples))

    @property
    def labels(self) -> np.ndarray:
        """Labels of all items, ``(N,)`` int, without loading any image."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def subset(self, category: str) -> "AnomalyDataset":
        """An :class:`AnomalyDataset` with only the items of one category (per-category evaluation)."""
        if category not in self.categories:
            raise ValueError(f"unknown category {category!r}; this dataset has {self.categories}")
        return AnomalyDataset([s for s in self.samples if s.category == category], self.transform)

    def limit_per_category(self, max_items: int | None) -> "AnomalyDataset":
        """At most ``max_items`` items per category, spread evenly over each category's items.

        Items of a category are in dataset order (normal first, then the defect types), so an
        even spread keeps normal and anomalous items alike. ``None`` keeps everything.
        """
        if max_items is None:
            return AnomalyDataset(self.samples, self.transform)
        if max_items < 1:
            raise ValueError(f"max_items must be positive or None, got {max_items}")
        by_category: dict[str, list[Sample]] = {}
        for sample in self.samples:
            by_category.setdefault(sample.category, []).append(sample)
        kept = []
        for samples in by_category.values():
            picks = np.linspace(0, len(samples) - 1, min(max_items, len(samples))).round().astype(int)
            kept += [samples[i] for i in picks]
        return AnomalyDataset(kept, self.transform)

    def holdout(self, fraction: float, seed: int) -> tuple["AnomalyDataset", "AnomalyDataset"]:
        """Split off a seeded, stratified ``fraction`` of the items, e.g. to validate on auxiliary data.

        Each stratum (one category and one label) gives ``round(fraction * n)`` of its ``n`` items
        (halves rounded up) to the held-out part, chosen at random with ``seed``, but at least one
        item to each part when it has two or more; a stratum of one item stays in the first
        part. If that leaves the held-out part empty while the dataset has two or more items, one
        random item is held out. Both parts keep the dataset's order and transform.

        Args:
            fraction: Share of each stratum to hold out, in ``(0, 1)``.
            seed: Seed of the random choice; the same seed (and dataset) gives the same split.

        Returns:
            ``(kept, held_out)``: two :class:`AnomalyDataset` whose samples partition this one's.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"holdout fraction must be a number in (0, 1), got {fraction!r}")
        strata: dict[tuple[str, int], list[int]] = {}
        for index, sample in enumerate(self.samples):
            strata.setdefault((sample.category, sample.label), []).append(index)
        rng = np.random.default_rng(seed)
        held_out: set[int] = set()
        for members in strata.values():  # first-appearance order: deterministic for a given dataset
            count = _held_out_count(len(members), fraction)
            held_out.update(int(i) for i in rng.choice(members, size=count, replace=False))
        if not held_out and len(self.samples) >= 2:
            held_out.add(int(rng.integers(len(self.samples))))
        kept = [s for i, s in enumerate(self.samples) if i not in held_out]
        return (AnomalyDataset(kept, self.transform),
                AnomalyDataset([s for i, s in enumerate(self.samples) if i in held_out], self.transform))

    def __repr__(self) -> str:
        counts = Counter("anomalous" if s.label == 1 else "normal" if s.label == 0 else "unknown"
                         for s in self.samples)
        return (f"{type(self).__name__}({len(self)} images, categories={self.categories}, "
                f"{dict(counts)}, size={self.transform.size_hw}, resize_mode={self.transform.resize_mode!r})")
