"""Tests for feclip.data.base: the stratified holdout, the checks made when an item is read, transform resolution."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feclip.data import EmptyMaskWarning, ImageReadError, MaskSizeError, load_rgb
from feclip.data.base import MAX_IMAGE_PIXELS_ENV, AnomalyDataset, Sample, resolve_transform
from feclip.data.transforms import AnomalyTransform


def _samples(counts: dict[tuple[str, int], int]) -> list[Sample]:
    """Fake samples (never loaded), ``counts[(category, label)]`` of each, categories interleaved by label."""
    return [Sample(Path(f"{category}_{label}_{i}.png"), label, category, "good" if label == 0 else "cut")
            for (category, label), count in counts.items() for i in range(count)]


def _strata(dataset: AnomalyDataset) -> Counter:
    return Counter((s.category, s.label) for s in dataset.samples)


# ---- holdout
def test_holdout_takes_the_rounded_fraction_of_every_stratum() -> None:
    counts = {("candle", 0): 10, ("candle", 1): 7, ("pcb1", 0): 20, ("pcb1", 1): 3, ("pcb1", -1): 2, ("fryum", 1): 1}
    dataset = AnomalyDataset(_samples(counts), AnomalyTransform(8))
    kept, held_out = dataset.holdout(0.25, seed=0)
    # round half up of 0.25 n, at least one per part for n >= 2: 10 -> 3 (2.5), 7 -> 2 (1.75),
    # 20 -> 5, 3 -> 1 (0.75), 2 -> 1 (0.5), 1 -> 0 (a single item stays for training).
    expected = {("candle", 0): 3, ("candle", 1): 2, ("pcb1", 0): 5, ("pcb1", 1): 1, ("pcb1", -1): 1}
    assert _strata(held_out) == Counter(expected)
    assert _strata(kept) == Counter(counts) - Counter(expected)
    assert set(kept.samples).isdisjoint(held_out.samples) and len(kept) + len(held_out) == len(dataset)
    order = {s: i for i, s in enumerate(dataset.samples)}  # both parts keep the dataset's order
    assert [order[s] for s in held_out.samples] == sorted(order[s] for s in held_out.samples)
    assert [order[s] for s in kept.samples] == sorted(order[s] for s in kept.samples)
    assert kept.transform is dataset.transform and held_out.transform is dataset.transform


def test_holdout_is_seeded_and_random_within_strata() -> None:
    dataset = AnomalyDataset(_samples({("a", 0): 40, ("a", 1): 40}), AnomalyTransform(8))
    first = dataset.holdout(0.3, seed=7)[1].samples
    assert dataset.holdout(0.3, seed=7)[1].samples == first  # deterministic
    other = dataset.holdout(0.3, seed=8)[1].samples
    assert other != first and len(other) == len(first) == 24
    held_indices = sorted(int(s.image_path.stem.rsplit("_", 1)[1]) for s in first if s.label == 0)
    assert held_indices != list(range(12)) and held_indices != list(range(28, 40))  # not just a head or tail


def test_holdout_keeps_both_parts_non_empty_when_possible() -> None:
    tiny = AnomalyDataset(_samples({("a", 0): 1, ("b", 1): 1}), AnomalyTransform(8))
    kept, held_out = tiny.holdout(0.1, seed=0)  # every stratum has one item: one is held out anyway
    assert len(kept) == 1 and len(held_out) == 1
    kept, held_out = AnomalyDataset(_samples({("a", 1): 2}), AnomalyTransform(8)).holdout(0.99, seed=0)
    assert len(kept) == 1 and len(held_out) == 1
    single = AnomalyDataset(_samples({("a", 1): 1}), AnomalyTransform(8))
    assert [len(part) for part in single.holdout(0.5, seed=0)] == [1, 0]


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), "0.2", True])
def test_holdout_rejects_fractions_outside_the_open_unit_interval(fraction) -> None:
    dataset = AnomalyDataset(_samples({("a", 0): 4}), AnomalyTransform(8))
    with pytest.raises(ValueError, match=r"holdout fraction must be a number in \(0, 1\)"):
        dataset.holdout(fraction, seed=0)


# ---- checks made when an item is read
def _write_image(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


def _write_mask(path: Path, height: int, width: int, anomalous: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((height, width), np.uint8)
    values[: height // 2] = 255 if anomalous else 0
    Image.fromarray(values).save(path)
    return path


def test_a_mask_of_another_size_is_an_error_naming_both_files_and_sizes(tmp_path: Path) -> None:
    image = _write_image(tmp_path / "img" / "scratch.png", 12, 16)
    mask = _write_mask(tmp_path / "gt" / "scratch_mask.png", 6, 8)
    dataset = AnomalyDataset([Sample(image, 1, "plate", "scratch", mask)], AnomalyTransform(4))
    with pytest.raises(MaskSizeError, match=rf"mask {mask} is 8x6 .*image {image} is 16x12"):
        dataset[0]
    _write_mask(mask, 12, 16)  # the right size: read as usual
    assert dataset[0]["mask"].sum() == 8


def test_an_empty_mask_of_an_anomalous_image_warns_once_naming_it(tmp_path: Path) -> None:
    image = _write_image(tmp_path / "dent.png", 8, 8)
    empty = _write_mask(tmp_path / "dent_mask.png", 8, 8, anomalous=False)
    normal_with_mask = Sample(image, 0, "plate", "good", empty)  # a normal image's empty mask is expected
    dataset = AnomalyDataset([Sample(image, 1, "plate", "dent", empty), normal_with_mask], AnomalyTransform(4))
    with pytest.warns(EmptyMaskWarning, match=rf"mask {empty} of anomalous image {image}"):
        dataset[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset[0]  # once per file: an epoch later it stays quiet
        dataset[1]


def test_an_image_over_the_decompression_bomb_limit_says_so_and_how_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _write_image(tmp_path / "huge.png", 30, 40)  # 1200 pixels, over twice the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    with pytest.raises(ImageReadError, match=rf"image {big} is over Pillow's decompression-bomb limit.*"
                                             rf"{MAX_IMAGE_PIXELS_ENV}.*PIL.Image.MAX_IMAGE_PIXELS"):
        load_rgb(big)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "5000")
    assert load_rgb(big).size == (40, 30) and Image.MAX_IMAGE_PIXELS == 5000
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "none")
    assert load_rgb(big).size == (40, 30) and Image.MAX_IMAGE_PIXELS is None
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=rf"{MAX_IMAGE_PIXELS_ENV} must be a positive number of pixels or 'none', got 'lots'"):
        load_rgb(big)


# ---- transform resolution and repr
def test_resolve_transform_builds_or_passes_through_and_refuses_both() -> None:
    assert resolve_transform(None, 8, None, None, "crop") == AnomalyTransform(8, resize_mode="crop")
    assert resolve_transform(None, None, None, None) == AnomalyTransform()
    ready = AnomalyTransform(8)
    assert resolve_transform(ready, None, None, None) is ready
    with pytest.raises(ValueError, match="either transform or image_size/mean/std/resize_mode"):
        resolve_transform(ready, None, None, None, "crop")
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        resolve_transform(None, 8, None, None, "shortest")


def test_repr_shows_size_and_resize_mode() -> None:
    dataset = AnomalyDataset(_samples({("a", 0): 2, ("a", 1): 1}), AnomalyTransform(8, resize_mode="crop"))
    assert repr(dataset) == ("AnomalyDataset(3 images, categories=['a'], {'normal': 2, 'anomalous': 1}, "
                             "size=(8, 8), resize_mode='crop')")


def test_items_in_crop_mode_crop_image_and_mask_alike(tmp_path: Path) -> None:
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :4] = 255  # the left quarter: outside the central 8 x 8
    image = tmp_path / "wide.png"
    Image.fromarray(pixels).save(image)
    mask = tmp_path / "wide_mask.png"
    Image.fromarray(pixels[..., 0]).save(mask)
    for mode, kept in (("crop", 0), ("squash", 8)):
        item = AnomalyDataset([Sample(image, 1, "a", "cut", mask)], AnomalyTransform(4, resize_mode=mode))[0]
        assert item["mask"].sum() == kept / 2  # squash: the left half column of the 4 x 4 output
        assert torch.equal(item["image"][0] > 0, item["mask"] > 0)
