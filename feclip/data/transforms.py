"""Image and mask transforms that keep a ground-truth mask aligned with its image.

Every backbone has its own input size ``S`` and normalisation (mean, std). An image is
resized *directly* to ``S x S`` ("squash", open_clip's ``resize_mode="squash"``), never
resized-then-center-cropped as in CLIP's default preprocessing: a center crop would cut
off defects near the border and the mask would have to be cropped identically. Squashing
changes the aspect ratio slightly for non-square images (MVTec and VisA are nearly
square), which costs far less than losing border pixels of the ground truth.

Masks are resized with NEAREST so that they stay binary, then thresholded at ``> 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import Tensor

__all__ = [
    "AnomalyTransform",
    "build_image_transform",
    "resize_mask",
    "to_display",
    "transforms_for_clip",
    "unnormalize",
]

ImageSize = int | tuple[int, int]


def _size_hw(image_size: ImageSize | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a ``(height, width)`` pair (open_clip's order)."""
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return height, width


def build_image_transform(
    image_size: ImageSize,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], Tensor]:
    """Build the RGB PIL image -> normalised tensor transform (open_clip's eval transform, no crop).

    Args:
        image_size: Output size ``S`` or ``(H, W)``.
        mean: Per-channel mean of the backbone, 3 values in ``[0, 1]`` units.
        std: Per-channel std of the backbone, 3 values.
        interpolation: ``"bicubic"`` (CLIP's) or ``"bilinear"``.

    Returns:
        A callable mapping an RGB ``PIL.Image`` to a float32 tensor ``(3, H, W)`` equal to
        ``(resized / 255 - mean) / std``.
    """
    return open_clip.image_transform(
        _size_hw(image_size),
        is_train=False,
        mean=tuple(mean),
        std=tuple(std),
        resize_mode="squash",
        interpolation=interpolation,
    )


def resize_mask(mask: np.ndarray, image_size: ImageSize) -> Tensor:
    """Resize a binary mask with NEAREST and return it as float ``{0, 1}``.

    Args:
        mask: Boolean or integer mask of shape ``(h, w)``; any value ``> 0`` is anomalous.
        image_size: Output size ``S`` or ``(H, W)``.

    Returns:
        Float32 tensor of shape ``(H, W)`` with values exactly 0 or 1.
    """
    height, width = _size_hw(image_size)
    binary = (np.asarray(mask) > 0).astype(np.uint8) * 255
    resized = Image.fromarray(binary, mode="L").resize((width, height), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(resized) > 0).astype(np.float32))


@dataclass(frozen=True)
class AnomalyTransform:
    """The paired image/mask transform every feclip dataset applies.

    Attributes:
        image_size: Backbone input size ``S`` or ``(H, W)`` (stored as ``S`` when square).
        mean: Backbone normalisation mean (3 values).
        std: Backbone normalisation std (3 values).
        interpolation: Image interpolation, ``"bicubic"`` or ``"bilinear"``; masks always use NEAREST.
    """

    image_size: ImageSize = 224
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        height, width = _size_hw(self.image_size)
        # One spelling per size, so that AnomalyTransform(32) == AnomalyTransform((32, 32)).
        object.__setattr__(self, "image_size", height if height == width else (height, width))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "_image_transform", build_image_transform(
            self.image_size, self.mean, self.std, self.interpolation))

    @property
    def size_hw(self) -> tuple[int, int]:
        """Output ``(height, width)``."""
        return _size_hw(self.image_size)

    def image(self, image: Image.Image) -> Tensor:
        """Resize and normalise an RGB image to a ``(3, H, W)`` float32 tensor."""
        return self._image_transform(image)  # type: ignore[attr-defined]

    def mask(self, mask: np.ndarray) -> Tensor:
        """Resize a ``(h, w)`` mask to a ``(H, W)`` float tensor in ``{0, 1}``."""
        return resize_mask(mask, self.image_size)

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.image(image), self.mask(mask)


def transforms_for_clip(clip_model: Any) -> AnomalyTransform:
    """Read input size, mean, std and interpolation from an open_clip model.

    Uses ``open_clip.get_model_preprocess_cfg`` (``model.visual.preprocess_cfg``, or the legacy
    ``visual.image_size`` / ``image_mean`` / ``image_std`` attributes). A wrapper that keeps its
    CLIP in a ``.clip`` attribute (like ``FEClip``) is accepted too.

    Args:
        clip_model: An open_clip ``CLIP`` model (or an object with ``.clip``).

    Returns:
        The matching :class:`AnomalyTransform`; missing mean/std default to OpenAI's.
    """
    model = clip_model
    if not hasattr(model, "visual") and hasattr(model, "clip"):
        model = model.clip
    try:
        cfg = open_clip.get_model_preprocess_cfg(model)
    except AttributeError as err:
        raise ValueError(
            f"{type(clip_model).__name__} has no open_clip preprocess config "
            "(expected .visual.preprocess_cfg or .visual.image_size)"
        ) from err
    interpolation = cfg.get("interpolation") or "bicubic"
    return AnomalyTransform(
        image_size=_size_hw(cfg["size"]),
        mean=tuple(cfg.get("mean") or OPENAI_DATASET_MEAN),
        std=tuple(cfg.get("std") or OPENAI_DATASET_STD),
        # open_clip also knows "random" (training only); eval uses bicubic then.
        interpolation=interpolation if interpolation in ("bicubic", "bilinear") else "bicubic",
    )


def unnormalize(
    images: Tensor,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> Tensor:
    """Undo the normalisation: ``images * std + mean``.

    Args:
        images: Normalised images ``(3, H, W)`` or ``(B, 3, H, W)``.
        mean: The mean used to normalise.
        std: The std used to normalise.

    Returns:
        Images in ``[0, 1]`` units (not clamped), same shape as ``images``.
    """
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return images * std_t + mean_t


def to_display(
    image: Tensor,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> np.ndarray:
    """Turn one normalised image into an array ``plt.imshow`` shows as the original.

    Args:
        image: Normalised image ``(3, H, W)``.
        mean: The mean used to normalise.
        std: The std used to normalise.

    Returns:
        Float array ``(H, W, 3)`` clamped to ``[0, 1]``.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"to_display expects one image of shape (3, H, W), got {tuple(image.shape)}")
    return unnormalize(image.detach().cpu().float(), mean, std).clamp(0, 1).permute(1, 2, 0).numpy()
