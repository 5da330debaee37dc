"""Image and mask transforms that keep a ground-truth mask aligned with its image.

Every backbone has its own input size ``S`` and normalisation (mean, std). Two ways to bring
an image to ``S x S`` are offered (``resize_mode``):

* ``"squash"`` (feclip's default, open_clip's ``resize_mode="squash"``): resize directly to
  ``S x S``. Nothing is cut off, so defects at the border stay in the picture and in the
  ground truth; a non-square image changes its aspect ratio (MVTec AD is square, VisA's
  images are about 4:3 or wider).
* ``"crop"`` (CLIP's own preprocessing, and the FE-CLIP reference implementation's
  ``configure_pre_processor``: ``Resize(S)`` then ``CenterCrop(S)``): resize the *shorter*
  side to ``S`` keeping the aspect ratio, then cut the central ``S x S``. Shapes keep their
  proportions, but on a non-square image the two ends of the longer side are lost, defects
  there included (a 3:2 image loses a third of its width).

The mask always follows its image through the same geometry (:func:`resize_geometry`): the
same resized size and the same crop box. Masks are resized by :func:`resize_masks`, the one
mask policy of feclip, used for training items and for evaluation alike: max-pooling along
an axis that shrinks (a defect thinner than the new pixel survives as one pixel instead of
vanishing), nearest neighbour along an axis that grows, then a binary result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import open_clip
import torch
import torchvision.transforms.functional as TF
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch import Tensor

__all__ = [
    "RESIZE_MODES",
    "AnomalyTransform",
    "build_image_transform",
    "check_resize_mode",
    "resize_geometry",
    "resize_mask",
    "resize_masks",
    "to_display",
    "transforms_for_clip",
    "unnormalize",
]

ImageSize = int | tuple[int, int]
ResizeMode = Literal["squash", "crop"]
RESIZE_MODES: tuple[str, ...] = ("squash", "crop")
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _size_hw(image_size: ImageSize | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int or a ``(height, width)`` pair (open_clip's order)."""
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return height, width


def check_resize_mode(resize_mode: str) -> str:
    """Return ``resize_mode`` if it is one of :data:`RESIZE_MODES`, else raise one clear ``ValueError``."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    return resize_mode


def resize_geometry(
    source_hw: tuple[int, int], target_hw: ImageSize, resize_mode: str = "squash"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where an image of ``source_hw`` goes: its resized size and the top-left corner of the crop.

    ``"squash"`` resizes to the target and crops nothing. ``"crop"`` scales so that the image
    just covers the target: the side with the larger scale factor gets its target length
    exactly, the other ``int(target * other / side)`` (at least its target), as torchvision's
    ``Resize(S)`` computes it; the crop box is centred with torchvision's ``CenterCrop``
    rounding, ``int(round((resized - target) / 2))``. For square targets this is exactly
    CLIP's (and open_clip's ``"shortest"``) ``Resize(S)`` + ``CenterCrop(S)``.

    Args:
        source_hw: ``(height, width)`` of the image (or mask) before resizing.
        target_hw: Output size ``S`` or ``(H, W)``.
        resize_mode: ``"squash"`` or ``"crop"``.

    Returns:
        ``((resized_height, resized_width), (top, left))``; the output is
        ``resized[top:top + H, left:left + W]``.
    """
    check_resize_mode(resize_mode)
    height, width = _size_hw(target_hw)
    source_height, source_width = _size_hw(source_hw)
    if resize_mode == "squash":
        return (height, width), (0, 0)
    if height * source_width >= width * source_height:  # the height needs the larger scale factor
        resized = (height, max(width, int(height * source_width / source_height)))
    else:
        resized = (max(height, int(width * source_height / source_width)), width)
    top, left = (int(round((r - t) / 2.0)) for r, t in zip(resized, (height, width)))
    return resized, (top, left)


def _resize_mask_axis(masks: Tensor, length: int, dim: int) -> Tensor:
    """Resize boolean masks ``(B, h, w)`` along ``dim`` (-2 or -1): block maximum to shrink, nearest to grow."""
    source = masks.shape[dim]
    if length == source:
        return masks
    if length < source:
        # Window i covers [floor(i * n / m), ceil((i + 1) * n / m)), the output pixel's footprint rounded
        # outwards (adaptive_max_pool2d's windows), so every input pixel lies in at least one window.
        # OR of the windows' k-th pixels for every k (the last pixel repeated in shorter windows): a few
        # gathers of the output's size, about 10x faster on CPU than adaptive_max_pool2d on floats.
        steps = torch.arange(length, device=masks.device)
        starts, ends = steps * source // length, -(-(steps + 1) * source // length)
        resized = masks.index_select(dim, starts)
        for offset in range(1, int((ends - starts).max())):
            resized |= masks.index_select(dim, torch.minimum(starts + offset, ends - 1))
        return resized
    # Nearest by pixel centres, (i + 0.5) * n / m, in exact integer arithmetic (PIL's NEAREST rule).
    index = (2 * torch.arange(length, device=masks.device) + 1) * source // (2 * length)
    return masks.index_select(dim, index)


def _binary(masks: Tensor | np.ndarray) -> Tensor:
    """Masks as a boolean tensor (any value ``> 0.5`` is anomalous), sharing memory where it can."""
    if isinstance(masks, np.ndarray):
        masks = np.ascontiguousarray(masks)  # flipped views (negative strides) cannot be shared
        if not masks.flags.writeable:
            masks = masks.copy()  # nor can read-only arrays (torch warns)
    binary = torch.as_tensor(masks)
    # Comparing a boolean tensor would promote it to float: leave those as they are.
    return binary if binary.dtype == torch.bool else binary > 0.5


def resize_masks(masks: Tensor | np.ndarray, size: ImageSize) -> Tensor:
    """Resize binary masks to ``size``: the one mask-resizing policy of feclip (training and evaluation).

    A pixel is anomalous when its value is ``> 0.5`` (so boolean, 0/1, 0/255 and region-id masks
    all work). Each axis that shrinks is max-pooled over the windows of
    ``torch.nn.functional.adaptive_max_pool2d`` (output pixel ``i`` of ``m`` takes the maximum
    over input pixels ``floor(i n / m)`` to ``ceil((i + 1) n / m) - 1`` of ``n``), so a defect
    thinner than the new pixel survives as one pixel; each axis that grows takes the input
    pixel under the output pixel's centre, ``floor((i + 0.5) n / m)``. Both rules act per axis,
    so a mask that shrinks in one direction and grows in the other is handled too.

    Args:
        masks: Masks ``(B, h, w)`` or one mask ``(h, w)``, any numeric or boolean dtype.
        size: Output size ``S`` or ``(H, W)``.

    Returns:
        Boolean tensor ``(B, H, W)`` (or ``(H, W)`` for one mask), on the masks' device.
    """
    height, width = _size_hw(size)
    binary = _binary(masks)
    if binary.ndim not in (2, 3):
        raise ValueError(f"masks must have shape (H, W) or (B, H, W), got {tuple(binary.shape)}")
    batch = binary if binary.ndim == 3 else binary[None]
    resized = _resize_mask_axis(_resize_mask_axis(batch, height, -2), width, -1)
    return resized if binary.ndim == 3 else resized[0]


def resize_mask(mask: np.ndarray, image_size: ImageSize, resize_mode: str = "squash") -> Tensor:
    """Bring one mask to the model's input size by the image's geometry, as float ``{0, 1}``.

    Args:
        mask: Mask of shape ``(h, w)``, boolean or integer; any value ``> 0.5`` is anomalous.
        image_size: Output size ``S`` or ``(H, W)``.
        resize_mode: ``"squash"`` or ``"crop"``, the geometry of :func:`resize_geometry`.

    Returns:
        Float32 tensor of shape ``(H, W)`` with values exactly 0 or 1.
    """
    height, width = _size_hw(image_size)
    binary = _binary(np.asarray(mask))
    if binary.ndim != 2:
        raise ValueError(f"mask must have shape (h, w), got {tuple(binary.shape)}")
    resized_hw, (top, left) = resize_geometry(tuple(binary.shape), (height, width), resize_mode)
    resized = resize_masks(binary, resized_hw)
    return resized[top : top + height, left : left + width].to(torch.float32)


def _image_to_tensor(
    image: Image.Image,
    image_size: ImageSize,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
    resize_mode: str,
) -> Tensor:
    height, width = _size_hw(image_size)
    (resized_height, resized_width), (top, left) = resize_geometry((image.height, image.width), image_size, resize_mode)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if (resized_height, resized_width) != (image.height, image.width):
        image = image.resize((resized_width, resized_height), _RESAMPLING[interpolation])
    if (resized_height, resized_width) != (height, width):
        image = image.crop((left, top, left + width, top + height))
    return TF.normalize(TF.to_tensor(image), list(mean), list(std))


def build_image_transform(
    image_size: ImageSize,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "squash",
) -> Callable[[Image.Image], Tensor]:
    """Build the RGB PIL image -> normalised tensor transform (open_clip's eval transform).

    PIL resizes with the given interpolation (anti-aliased, as torchvision's ``Resize`` does
    for PIL images), then the crop box of :func:`resize_geometry` is cut: the result equals
    ``open_clip.image_transform(..., resize_mode="squash" | "shortest")`` for square sizes.

    Args:
        image_size: Output size ``S`` or ``(H, W)``.
        mean: Per-channel mean of the backbone, 3 values in ``[0, 1]`` units.
        std: Per-channel std of the backbone, 3 values.
        interpolation: ``"bicubic"`` (CLIP's) or ``"bilinear"``.
        resize_mode: ``"squash"`` (default) or ``"crop"``; see the module docstring.

    Returns:
        A callable mapping a ``PIL.Image`` to a float32 tensor ``(3, H, W)`` equal to
        ``(resized / 255 - mean) / std``.
    """
    _size_hw(image_size)
    check_resize_mode(resize_mode)
    if interpolation not in _RESAMPLING:
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    return partial(_image_to_tensor, image_size=image_size, mean=tuple(mean), std=tuple(std),
                   interpolation=interpolation, resize_mode=resize_mode)


@dataclass(frozen=True)
class AnomalyTransform:
    """The paired image/mask transform every feclip dataset applies.

    Attributes:
        image_size: Backbone input size ``S`` or ``(H, W)`` (stored as ``S`` when square).
        mean: Backbone normalisation mean (3 values).
        std: Backbone normalisation std (3 values).
        interpolation: Image interpolation, ``"bicubic"`` or ``"bilinear"``; masks follow :func:`resize_masks`.
        resize_mode: ``"squash"`` (default: keeps border defects) or ``"crop"`` (shorter side to
            ``S``, then the central ``S x S``); the mask always gets the image's geometry.
    """

    image_size: ImageSize = 224
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "squash"

    def __post_init__(self) -> None:
        height, width = _size_hw(self.image_size)
        # One spelling per size, so that AnomalyTransform(32) == AnomalyTransform((32, 32)).
        object.__setattr__(self, "image_size", height if height == width else (height, width))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values, got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {self.interpolation!r}")
        check_resize_mode(self.resize_mode)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def size_hw(self) -> tuple[int, int]:
        """Output ``(height, width)``."""
        return _size_hw(self.image_size)

    def image(self, image: Image.Image) -> Tensor:
        """Resize (and crop) and normalise an image to a ``(3, H, W)`` float32 tensor."""
        return _image_to_tensor(image, self.image_size, self.mean, self.std, self.interpolation, self.resize_mode)

    def mask(self, mask: np.ndarray) -> Tensor:
        """Bring a ``(h, w)`` mask of an ``h x w`` image to a ``(H, W)`` float tensor in ``{0, 1}``."""
        return resize_mask(mask, self.image_size, self.resize_mode)

    def __call__(self, image: Image.Image, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.image(image), self.mask(mask)


def transforms_for_clip(clip_model: Any, resize_mode: str = "squash") -> AnomalyTransform:
    """Read input size, mean, std and interpolation from an open_clip model.

    Uses ``open_clip.get_model_preprocess_cfg`` (``model.visual.preprocess_cfg``, or the legacy
    ``visual.image_size`` / ``image_mean`` / ``image_std`` attributes). A wrapper that keeps its
    CLIP in a ``.clip`` attribute (like ``FEClip``) is accepted too. The model's own
    ``resize_mode`` is not read: feclip squashes unless told ``resize_mode="crop"``.

    Args:
        clip_model: An open_clip ``CLIP`` model (or an object with ``.clip``).
        resize_mode: ``"squash"`` (default) or ``"crop"``; see the module docstring.

    Returns:
        The matching :class:`AnomalyTransform`; missing mean/std default to OpenAI's.
    """
    check_resize_mode(resize_mode)
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
        interpolation=interpolation if interpolation in _RESAMPLING else "bicubic",
        resize_mode=resize_mode,
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
