"""Tests for feclip.data.mvtec and build_dataset's spec parsing, on tiny fake MVTec trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.data import DataLoader

from feclip.data import (
    DATASET_KINDS,
    AnomalyTransform,
    ImageReadError,
    MVTecAD,
    build_dataset,
    parse_spec,
)
from feclip.data.mvtec import MVTEC_CATEGORIES, find_mask

COLOUR = (200, 100, 50)


def _image(path: Path, size: int = 8, colour: tuple[int, int, int] = COLOUR) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).save(path)


def _mask(path: Path, size: int = 8) -> None:
    """A 0/255 mask whose anomalous region is the bottom-left quarter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size, size), dtype=np.uint8)
    values[size // 2:, : size // 2] = 255
    Image.fromarray(values).save(path)


def make_mvtec(root: Path, categories: tuple[str, ...] = ("bottle", "carpet")) -> Path:
    for category in categories:
        base = root / category
        for i in range(2):
            _image(base / "train" / "good" / f"{i:03d}.png")
        _image(base / "test" / "good" / "000.png")
        for defect in ("broken", "crack"):
            _image(base / "test" / defect / "000.png", colour=(10, 20, 30))
            _mask(base / "ground_truth" / defect / "000_mask.png")
    return root


def test_mvtec_categories_constant_lists_the_15_categories() -> None:
    assert len(MVTEC_CATEGORIES) == 15 and len(set(MVTEC_CATEGORIES)) == 15
    assert {"bottle", "carpet", "metal_nut", "zipper"} <= set(MVTEC_CATEGORIES)


def test_test_split_labels_defects_and_masks(tmp_path: Path) -> None:
    dataset = MVTecAD(make_mvtec(tmp_path), split="test", image_size=4)
    assert len(dataset) == 6 and dataset.categories == ["bottle", "carpet"]
    assert dataset.labels.tolist() == [0, 1, 1, 0, 1, 1]
    good, broken = dataset[0], dataset[1]
    assert (good["defect_type"], good["label"], good["has_mask"]) == ("good", 0, True)
    assert torch.equal(good["mask"], torch.zeros(4, 4))
    assert (broken["defect_type"], broken["category"], broken["label"]) == ("broken", "bottle", 1)
    assert broken["path"] == str(tmp_path / "bottle" / "test" / "broken" / "000.png")
    expected = torch.zeros(4, 4)
    expected[2:, :2] = 1  # bottom-left quarter, exactly, after the NEAREST resize
    assert torch.equal(broken["mask"], expected)


def test_image_is_normalised_with_the_given_mean_and_std(tmp_path: Path) -> None:
    dataset = MVTecAD(make_mvtec(tmp_path), categories="bottle", image_size=4)
    image = dataset[0]["image"]
    assert image.shape == (3, 4, 4) and image.dtype == torch.float32
    by_hand = [(c / 255 - m) / s for c, m, s in zip(COLOUR, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)]
    torch.testing.assert_close(image[:, 1, 3], torch.tensor(by_hand), atol=1e-6, rtol=0)
    custom = MVTecAD(tmp_path, categories="bottle", transform=AnomalyTransform(4, (0.0,) * 3, (1.0,) * 3))
    torch.testing.assert_close(custom[0]["image"][:, 0, 0], torch.tensor(COLOUR) / 255.0)


def test_train_split_is_normal_only(tmp_path: Path) -> None:
    dataset = MVTecAD(make_mvtec(tmp_path), split="train", categories=["carpet"], image_size=4)
    assert len(dataset) == 2 and set(dataset.labels.tolist()) == {0}
    assert {s.defect_type for s in dataset.samples} == {"good"}


def test_default_collate_batches_items(tmp_path: Path) -> None:
    batch = next(iter(DataLoader(MVTecAD(make_mvtec(tmp_path), image_size=4), batch_size=3)))
    assert batch["image"].shape == (3, 3, 4, 4) and batch["mask"].shape == (3, 4, 4)
    assert batch["label"].tolist() == [0, 1, 1]
    assert batch["defect_type"] == ["good", "broken", "crack"]
    assert batch["has_mask"].tolist() == [True, True, True]


def test_unknown_category_names_it_and_lists_those_found(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    with pytest.raises(ValueError, match=r"'cable'.*\['bottle', 'carpet'\]"):
        MVTecAD(tmp_path, categories=["bottle", "cable"])


def test_missing_mask_fails_when_built_and_names_the_file(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    (tmp_path / "carpet" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"carpet/test/crack/000\.png"):
        MVTecAD(tmp_path)


def test_corrupt_image_raises_image_read_error_naming_it(tmp_path: Path) -> None:
    make_mvtec(tmp_path, ("bottle",))
    broken = tmp_path / "bottle" / "test" / "good" / "000.png"
    broken.write_bytes(b"not a png at all")
    dataset = MVTecAD(tmp_path, image_size=4)
    with pytest.raises(ImageReadError, match=str(broken)):
        dataset[0]


def test_btad_style_ok_folders_and_plain_mask_names(tmp_path: Path) -> None:
    base = tmp_path / "01"
    _image(base / "train" / "ok" / "0000.bmp")
    _image(base / "test" / "ok" / "0001.bmp")
    _image(base / "test" / "ko" / "0002.bmp")
    _mask(base / "ground_truth" / "ko" / "0002.png")
    dataset = MVTecAD(tmp_path, image_size=8)
    assert [(s.label, s.defect_type) for s in dataset.samples] == [(0, "good"), (1, "ko")]
    assert dataset[1]["mask"].sum() == 16
    assert find_mask(base / "ground_truth" / "ko", Path("0002.bmp")) == base / "ground_truth" / "ko" / "0002.png"


def test_bad_root_split_and_transform_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MVTecAD(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no category folders"):
        MVTecAD(tmp_path)
    make_mvtec(tmp_path)
    with pytest.raises(ValueError, match="split"):
        MVTecAD(tmp_path, split="val")
    with pytest.raises(ValueError, match="either transform"):
        MVTecAD(tmp_path, image_size=4, transform=AnomalyTransform(4))


def test_subset_and_repr(tmp_path: Path) -> None:
    dataset = MVTecAD(make_mvtec(tmp_path), image_size=4)
    carpet = dataset.subset("carpet")
    assert len(carpet) == 3 and carpet.categories == ["carpet"]
    assert "anomalous': 4" in repr(dataset)
    with pytest.raises(ValueError, match="'grid'"):
        dataset.subset("grid")


# ---- build_dataset (feclip/data/__init__.py) and the zero-shot protocol
def test_build_dataset_parses_mvtec_spec(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    dataset = build_dataset(f"mvtec:{tmp_path}", split="train", categories="bottle", image_size=4)
    assert isinstance(dataset, MVTecAD) and len(dataset) == 2 and dataset[0]["image"].shape == (3, 4, 4)


def test_build_dataset_errors_name_kind_and_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'imagenet'.*'mvtec', 'visa', 'folder', 'synth'"):
        build_dataset(f"imagenet:{tmp_path}")
    with pytest.raises(ValueError, match="valid kinds"):
        build_dataset(str(tmp_path))  # no kind at all
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        build_dataset(f"mvtec:{tmp_path / 'missing_dir'}")
    assert DATASET_KINDS == ("mvtec", "visa", "folder", "synth")


def test_parse_spec_reads_kind_and_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_spec("MVTec:data/mvtec") == ("mvtec", Path("data/mvtec"))
    assert parse_spec("synth:~/bench/objects") == ("synth", tmp_path / "bench" / "objects")
    assert parse_spec("folder:C:/photos") == ("folder", Path("C:/photos"))  # only the first colon separates
    with pytest.raises(ValueError, match=r"unknown dataset kind 'btad' in 'btad:x'; valid kinds"):
        parse_spec("btad:x")


def test_one_mask_finder_prefers_the_explicit_mask_name(tmp_path: Path) -> None:
    """A folder holding both <stem>.png and <stem>_mask.png (e.g. masks beside their images) gives the _mask file."""
    from feclip.data import FolderDataset

    for name in ("dent.png", "dent_mask.png", "crack.bmp"):
        _mask(tmp_path / "abnormal" / name)
    assert find_mask(tmp_path / "abnormal", Path("dent.png")) == tmp_path / "abnormal" / "dent_mask.png"
    assert find_mask(tmp_path / "abnormal", Path("crack.png")) == tmp_path / "abnormal" / "crack.bmp"
    assert find_mask(tmp_path / "abnormal", Path("scuff.png")) is None
    folder = FolderDataset(abnormal_dir=tmp_path / "abnormal", mask_dir=tmp_path / "abnormal", image_size=4)
    masks = {sample.image_path.name: sample.mask_path for sample in folder.samples}
    assert masks["dent.png"] == tmp_path / "abnormal" / "dent_mask.png"  # never the image itself


def test_resize_mode_reaches_the_transform_and_the_repr(tmp_path: Path) -> None:
    make_mvtec(tmp_path)
    dataset = build_dataset(f"mvtec:{tmp_path}", categories="bottle", image_size=4, resize_mode="crop")
    assert dataset.transform == AnomalyTransform(4, resize_mode="crop")
    assert "resize_mode='crop'" in repr(dataset)
    assert MVTecAD(tmp_path, image_size=4).transform.resize_mode == "squash"
    with pytest.raises(ValueError, match="resize_mode must be one of"):
        MVTecAD(tmp_path, resize_mode="shortest")
