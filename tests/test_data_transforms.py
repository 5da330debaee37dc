"""Tests for feclip.data.transforms: normalisation by hand, the mask policy against a block-max twin,
squash and crop geometry against open_clip, open_clip configs."""

from __future__ import annotations

import warnings
from fractions import Fraction
from math import ceil, floor
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from feclip.data.transforms import (
    AnomalyTransform,
    build_image_transform,
    resize_geometry,
    resize_mask,
    resize_masks,
    to_display,
    transforms_for_clip,
    unnormalize,
)


def _by_hand(pixels: np.ndarray, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD) -> torch.Tensor:
    """(x / 255 - mean) / std for an ``(H, W, 3)`` uint8 array, as ``(3, H, W)``."""
    x = torch.from_numpy(pixels.astype(np.float64)).permute(2, 0, 1) / 255.0
    return ((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).float()


def test_image_normalisation_matches_hand_computation_at_every_pixel() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = AnomalyTransform(image_size=5).image(Image.fromarray(pixels))  # same size: resize is the identity
    assert image.dtype == torch.float32 and image.shape == (3, 5, 5)
    torch.testing.assert_close(image, _by_hand(pixels), atol=1e-6, rtol=0)


def test_custom_mean_std_after_resize_of_uniform_image() -> None:
    pixels = np.full((10, 10, 3), (10, 128, 250), dtype=np.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    image = AnomalyTransform(image_size=4, mean=mean, std=std).image(Image.fromarray(pixels))
    assert image.shape == (3, 4, 4)
    expected = [(10 / 255 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (250 / 255 - 0.5) / 1.0]
    torch.testing.assert_close(image[:, 2, 1], torch.tensor(expected), atol=1e-6, rtol=0)


def test_resize_squashes_without_center_crop() -> None:
    # Left quarter red, rest blue, in a wide 8x32 image: a center crop would lose every red pixel.
    pixels = np.zeros((8, 32, 3), dtype=np.uint8)
    pixels[:, :8, 0] = 255
    pixels[:, 8:, 2] = 255
    image = to_display(build_image_transform(8)(Image.fromarray(pixels)))
    assert image.shape == (8, 8, 3)
    assert image[:, 0, 0].min() > 0.9 and image[:, 0, 2].max() < 0.1  # first column still red
    assert image[:, -1, 2].min() > 0.9 and image[:, -1, 0].max() < 0.1


def test_resize_mask_keeps_binary_values_and_position() -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0:4, 4:8] = 255  # top-right quarter
    small = resize_mask(mask, 4)
    expected = torch.zeros(4, 4)
    expected[0:2, 2:4] = 1
    assert small.dtype == torch.float32
    assert torch.equal(small, expected)
    big = resize_mask(mask > 0, (16, 16))
    assert set(big.unique().tolist()) == {0.0, 1.0}
    assert big[0:8, 8:16].min() == 1 and big.sum() == 64


def test_resize_mask_accepts_zero_one_masks_and_rectangular_sizes() -> None:
    mask = np.zeros((6, 9), dtype=np.uint8)
    mask[3:, :3] = 1  # 0/1 values, as in some VisA masks
    out = resize_mask(mask, (2, 3))
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_anomaly_transform_call_returns_aligned_pair() -> None:
    transform = AnomalyTransform(image_size=6)
    pixels = np.zeros((12, 12, 3), dtype=np.uint8)
    pixels[6:, 6:] = 255
    image, mask = transform(Image.fromarray(pixels), pixels[..., 0] > 0)
    assert torch.equal(mask[3:, 3:], torch.ones(3, 3)) and mask.sum() == 9
    bright = to_display(image)[..., 0] > 0.5
    assert np.array_equal(bright, mask.numpy() > 0)


def test_anomaly_transform_validates_options() -> None:
    with pytest.raises(ValueError, match="std must be positive"):
        AnomalyTransform(std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="interpolation"):
        AnomalyTransform(interpolation="nearest")
    with pytest.raises(ValueError, match="image_size"):
        AnomalyTransform(image_size=0)
    assert AnomalyTransform().size_hw == (224, 224)
    assert AnomalyTransform().mean == OPENAI_DATASET_MEAN


def test_unnormalize_and_to_display_invert_the_transform() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    image = AnomalyTransform(image_size=4, mean=mean, std=std).image(Image.fromarray(pixels))
    np.testing.assert_allclose(to_display(image, mean, std), pixels / 255.0, atol=1e-6)
    batch = unnormalize(torch.stack([image, image]), mean, std)
    assert batch.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(batch[1].permute(1, 2, 0).numpy(), pixels / 255.0, atol=1e-6)
    out_of_range = to_display(torch.full((3, 2, 2), 100.0))
    assert out_of_range.max() == 1.0
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        to_display(torch.zeros(1, 3, 2, 2))


def test_transforms_for_clip_reads_preprocess_cfg_and_legacy_attributes() -> None:
    cfg = {"size": 32, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "interpolation": "bilinear"}
    modern = SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=dict(cfg)))
    transform = transforms_for_clip(modern)
    assert transform == AnomalyTransform(32, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear")

    legacy = SimpleNamespace(visual=SimpleNamespace(image_size=(48, 40), image_mean=None, image_std=None))
    transform = transforms_for_clip(legacy)
    assert transform.size_hw == (48, 40) and transform.mean == OPENAI_DATASET_MEAN

    wrapper = SimpleNamespace(clip=modern)  # e.g. FEClip keeps its CLIP in .clip
    assert transforms_for_clip(wrapper).size_hw == (32, 32)
    with pytest.raises(ValueError, match="SimpleNamespace"):
        transforms_for_clip(SimpleNamespace(visual=SimpleNamespace()))


def test_transforms_for_clip_on_a_real_open_clip_model() -> None:
    vision = open_clip.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=40)
    text = open_clip.CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    assert transforms_for_clip(model).size_hw == (40, 40)
    open_clip.set_model_preprocess_cfg(model, {"size": 40, "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                               "interpolation": "bicubic"})
    transform = transforms_for_clip(model)
    assert transform.mean == (0.5, 0.5, 0.5) and transform.std == (0.5, 0.5, 0.5)
    pixels = np.full((8, 8, 3), 255, dtype=np.uint8)
    assert torch.allclose(transform.image(Image.fromarray(pixels)), torch.ones(3, 40, 40))


# ---- the one mask policy: block maximum when shrinking, nearest when growing
def _source_pixels(index: int, source: int, target: int) -> list[int]:
    """Input pixels behind output pixel ``index`` along one axis, by the documented rule, in exact fractions."""
    if target < source:  # the output pixel's footprint [i n / m, (i + 1) n / m), rounded outwards
        return list(range(floor(Fraction(index * source, target)), ceil(Fraction((index + 1) * source, target))))
    return [floor(Fraction(2 * index + 1, 2) * source / target)]  # the pixel under the output pixel's centre


def block_max_reference(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Slow twin of ``resize_masks``: any anomalous pixel in the output pixel's 2-D block, pixel by pixel."""
    binary = mask > 0.5
    out = np.zeros((height, width), dtype=bool)
    for i in range(height):
        for j in range(width):
            rows, cols = _source_pixels(i, mask.shape[0], height), _source_pixels(j, mask.shape[1], width)
            out[i, j] = binary[np.ix_(rows, cols)].any()
    return out


@pytest.mark.parametrize(
    ("source", "target"),
    [((10, 10), (3, 3)), ((17, 13), (5, 7)), ((9, 31), (4, 6)), ((5, 6), (12, 9)), ((7, 20), (11, 6)),
     ((12, 8), (12, 3)), ((6, 6), (6, 6))],
)
def test_resize_masks_matches_the_block_max_twin(source: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(source) * 100 + sum(target))
    masks = rng.random((3, *source)) < 0.08  # sparse: a wrong window shows up as a lost or extra pixel
    resized = resize_masks(torch.from_numpy(masks), target)
    assert resized.dtype == torch.bool and resized.shape == (3, *target)
    for mask, out in zip(masks, resized):
        assert np.array_equal(out.numpy(), block_max_reference(mask.astype(np.float64), *target))
    assert torch.equal(resize_masks(torch.from_numpy(masks[0]), target), resized[0])  # one (h, w) mask


def test_a_one_pixel_scratch_survives_1024_to_336() -> None:
    for column in (0, 1, 2, 500, 1023):  # wherever it lies relative to the 3.05-pixel blocks
        mask = np.zeros((1024, 1024), dtype=np.uint8)
        mask[100:900, column] = 255
        small = resize_mask(mask, 336)
        assert small[35:265].amin(dim=0).max() == 1  # one full column of the output still holds it
        assert small.sum(dim=1).max() <= 2  # max-pooling widens by at most the overlap of two windows
    diagonal = np.eye(1024, dtype=bool)
    assert resize_mask(diagonal, 336).diagonal().min() == 1


def test_every_tiny_defect_survives_the_training_resize() -> None:
    # Issue 9: with NEAREST, most one-to-two-pixel defects vanished at 1024 -> 336.
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = np.zeros((1024, 1024), dtype=bool)
        top, left = rng.integers(0, 1022, size=2)
        height, width = rng.integers(1, 3, size=2)
        mask[top : top + height, left : left + width] = True
        assert resize_mask(mask, 336).sum() >= 1


def test_crop_geometry_by_hand() -> None:
    assert resize_geometry((1000, 1500), 336, "crop") == ((336, 504), (0, 84))
    assert resize_geometry((1500, 1000), 336, "crop") == ((504, 336), (84, 0))
    assert resize_geometry((7, 10), 4, "crop") == ((4, 5), (0, 0))  # int(40 / 7) = 5; round(0.5) = 0
    assert resize_geometry((7, 13), 4, "crop") == ((4, 7), (0, 2))  # round(1.5) = 2
    assert resize_geometry((10, 10), (4, 8), "crop") == ((8, 8), (2, 0))  # non-square target: cover it
    assert resize_geometry((1000, 1500), 336, "squash") == ((336, 336), (0, 0))


@pytest.mark.parametrize("source_hw", [(37, 53), (53, 37), (20, 20), (9, 31), (16, 15)])
@pytest.mark.parametrize("resize_mode", ["squash", "crop"])
def test_image_transform_equals_open_clips_squash_and_shortest(source_hw: tuple[int, int], resize_mode: str) -> None:
    pixels = np.random.default_rng(sum(source_hw)).integers(0, 256, (*source_hw, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    ours = AnomalyTransform(16, mean, std, resize_mode=resize_mode).image(image)
    theirs = open_clip.image_transform(16, is_train=False, mean=mean, std=std,
                                       resize_mode="squash" if resize_mode == "squash" else "shortest")(image)
    assert ours.shape == (3, 16, 16)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_the_mask_follows_the_image_through_the_crop() -> None:
    # A 24 x 48 image: "crop" scales by 1/3 to 8 x 16 and cuts columns 4..11.
    pixels = np.zeros((24, 48, 3), dtype=np.uint8)
    pixels[6:9, 18:21] = 255  # a 3 x 3 defect -> resized pixel (2, 6) -> cropped pixel (2, 2)
    pixels[12:15, 0:3] = 255  # a defect at the left border: cut away by the crop, kept by squash
    mask = pixels[..., 0] > 0
    image, cropped = AnomalyTransform(8, resize_mode="crop")(Image.fromarray(pixels), mask)
    expected = torch.zeros(8, 8)
    expected[2, 2] = 1
    assert torch.equal(cropped, expected)
    assert np.array_equal(to_display(image)[..., 0] > 0.5, cropped.numpy() > 0)  # same pixels in the image
    squashed = AnomalyTransform(8)(Image.fromarray(pixels), mask)[1]
    assert squashed[4, 0] == 1 and squashed.sum() == 2  # squash keeps the border defect


def test_resize_mode_is_validated_everywhere() -> None:
    for build in (lambda: AnomalyTransform(resize_mode="shortest"),
                  lambda: build_image_transform(8, resize_mode="pad"),
                  lambda: transforms_for_clip(SimpleNamespace(), resize_mode="Crop"),
                  lambda: resize_geometry((4, 4), 2, "longest")):
        with pytest.raises(ValueError, match=r"resize_mode must be one of \('squash', 'crop'\)"):
            build()
    cfg = {"size": 32, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "interpolation": "bicubic"}
    model = SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=cfg))
    assert transforms_for_clip(model).resize_mode == "squash"
    assert transforms_for_clip(model, resize_mode="crop") == AnomalyTransform(32, cfg["mean"], cfg["std"], resize_mode="crop")


def test_read_only_masks_resize_without_a_warning() -> None:
    """Masks read from memory-mapped or frozen arrays are copied, not shared (torch warns on those)."""
    mask = np.zeros((8, 12), dtype=bool)
    mask[3, 5] = True
    as_uint8 = mask.astype(np.uint8)
    for frozen in (mask, as_uint8):
        frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = resize_mask(mask, (4, 6))
        again = resize_mask(as_uint8, (4, 6))
        batch = resize_masks(mask, (4, 6))
    expected = torch.zeros(4, 6)
    expected[1, 2] = 1  # the block max of the 2x2 block holding pixel (3, 5)
    assert torch.equal(one, expected) and torch.equal(again, expected) and torch.equal(batch, expected.bool())
