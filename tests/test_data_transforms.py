"""Tests for feclip.data.transforms: normalisation by hand, NEAREST masks, squash resize, open_clip configs."""

from __future__ import annotations

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
    resize_mask,
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


def test_resize_mask_nearest_keeps_binary_values_and_position() -> None:
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
