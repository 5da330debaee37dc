"""Tests for feclip.data.folder, and for image loading in feclip.data.base that any user image goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feclip.data import FolderDataset, ImageReadError, build_dataset, load_mask, load_rgb
from feclip.data.base import UNKNOWN_LABEL


def _rgb(path: Path, colour: tuple[int, int, int] = (90, 160, 230), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
    return path


def _mask(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size, size), np.uint8)
    values[: size // 2] = 255  # top half
    Image.fromarray(values).save(path)
    return path


def make_folders(root: Path) -> Path:
    _rgb(root / "good" / "a.png")
    _rgb(root / "good" / "b.jpg")
    _rgb(root / "abnormal" / "dent.png")
    _rgb(root / "abnormal" / "scuff.png")
    _rgb(root / "abnormal" / "unmasked.png")
    _mask(root / "masks" / "dent.png")
    _mask(root / "masks" / "scuff_mask.png")
    (root / "good" / "notes.txt").write_text("not an image")
    return root


# ---- loading and mode conversion (feclip/data/base.py)
def test_grayscale_palette_and_rgba_convert_to_the_expected_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((2, 2), 100, np.uint8), mode="L").save(tmp_path / "gray.png")
    assert np.asarray(load_rgb(tmp_path / "gray.png")).tolist() == [[[100, 100, 100]] * 2] * 2

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[...] = (10, 20, 30, 0)  # fully transparent: the colour is kept, the alpha dropped
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.asarray(load_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]

    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    converted = np.asarray(load_rgb(tmp_path / "palette.png"))
    assert converted[0, 0].tolist() == [255, 0, 0] and converted[0, 1].tolist() == [0, 0, 255]


def test_sixteen_bit_images_are_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    values = np.array([[0, 25700], [32896, 65535]], np.uint16)  # = 0, 100, 128, 255 in 8 bits
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    converted = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert converted[..., 0].tolist() == [[0, 100], [128, 255]]
    assert (converted[..., 0] == converted[..., 2]).all()
    # Older Pillow opens 16-bit PNG as 32-bit mode "I": scaled the same way.
    Image.fromarray(values.astype(np.int32), mode="I").save(tmp_path / "deep_i.tif")
    assert np.asarray(load_rgb(tmp_path / "deep_i.tif"))[..., 1].tolist() == [[0, 100], [128, 255]]


def test_corrupt_and_truncated_files_raise_image_read_error_naming_them(tmp_path: Path) -> None:
    (tmp_path / "garbage.png").write_bytes(b"\x00" * 64)
    with pytest.raises(ImageReadError, match="garbage.png"):
        load_rgb(tmp_path / "garbage.png")
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # compresses badly: a long file
    Image.fromarray(noisy).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        load_rgb(tmp_path / "truncated.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        load_rgb(tmp_path / "absent.png")


def test_load_mask_counts_any_nonzero_pixel(tmp_path: Path) -> None:
    rgb_mask = np.zeros((2, 2, 3), np.uint8)
    rgb_mask[0, 1] = (0, 0, 7)
    Image.fromarray(rgb_mask).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").tolist() == [[False, True], [False, False]]
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), mode="P").save(tmp_path / "palette.png")
    assert load_mask(tmp_path / "palette.png").tolist() == [[False, True], [True, False]]


# ---- FolderDataset
def test_labels_masks_by_stem_and_missing_masks(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    dataset = FolderDataset(root / "good", root / "abnormal", root / "masks", category="widget", image_size=4)
    assert [p.image_path.name for p in dataset.samples] == ["a.png", "b.jpg", "dent.png", "scuff.png", "unmasked.png"]
    assert dataset.labels.tolist() == [0, 0, 1, 1, 1]
    top_half = torch.zeros(4, 4)
    top_half[:2] = 1
    for index in (2, 3):  # <stem>.png and <stem>_mask.png are both found
        item = dataset[index]
        assert item["has_mask"] and torch.equal(item["mask"], top_half)
        assert (item["category"], item["defect_type"]) == ("widget", "anomaly")
    unmasked = dataset[4]
    assert not unmasked["has_mask"] and unmasked["mask"].sum() == 0 and unmasked["label"] == 1
    normal = dataset[0]
    assert normal["has_mask"] and normal["defect_type"] == "good"


def test_image_dir_alone_gives_unlabelled_items(tmp_path: Path) -> None:
    _rgb(tmp_path / "incoming" / "x.png")
    dataset = FolderDataset(image_dir=tmp_path / "incoming", image_size=4)
    item = dataset[0]
    assert item["label"] == UNKNOWN_LABEL == -1
    assert (item["defect_type"], item["has_mask"], item["category"]) == ("unknown", False, "custom")


def test_argument_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        FolderDataset()
    with pytest.raises(FileNotFoundError, match="normal folder not found: .*nope"):
        FolderDataset(normal_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images in abnormal folder"):
        FolderDataset(abnormal_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="mask_dir is only used with abnormal_dir"):
        FolderDataset(normal_dir=tmp_path, mask_dir=tmp_path)


def test_build_dataset_folder_spec_with_subfolders_or_plain_images(tmp_path: Path) -> None:
    root = make_folders(tmp_path / "parts")
    labelled = build_dataset(f"folder:{root}", image_size=4)
    assert labelled.labels.tolist() == [0, 0, 1, 1, 1] and labelled.categories == ["parts"]
    assert [s.has_mask for s in labelled.samples] == [True, True, True, True, False]
    plain = build_dataset(f"folder:{root / 'abnormal'}", image_size=4)
    assert set(plain.labels.tolist()) == {-1} and len(plain) == 3
    with pytest.raises(ValueError, match="categories do not apply"):
        build_dataset(f"folder:{root}", categories="x")


def test_limit_per_category_spreads_evenly_over_each_category(tmp_path) -> None:
    from feclip.data.base import AnomalyDataset, Sample
    from feclip.data.transforms import AnomalyTransform

    samples = [Sample(tmp_path / f"{c}{i}.png", int(i >= 3), c, "good" if i < 3 else "cut") for c in "ab" for i in range(7)]
    dataset = AnomalyDataset(samples, AnomalyTransform(8))
    limited = dataset.limit_per_category(3)
    # linspace(0, 6, 3) -> positions 0, 3, 6 of each category: one normal, two anomalous
    assert [s.image_path.name for s in limited.samples] == ["a0.png", "a3.png", "a6.png", "b0.png", "b3.png", "b6.png"]
    assert len(dataset.limit_per_category(None)) == 14 and len(dataset.limit_per_category(100)) == 14
    with pytest.raises(ValueError, match="max_items"):
        dataset.limit_per_category(0)


def test_resize_mode_reaches_the_transform(tmp_path: Path) -> None:
    root = make_folders(tmp_path)
    dataset = build_dataset(f"folder:{root}", image_size=4, resize_mode="crop")
    assert dataset.transform.resize_mode == "crop" and "resize_mode='crop'" in repr(dataset)
    assert FolderDataset(image_dir=root / "good", resize_mode="crop").transform.resize_mode == "crop"
