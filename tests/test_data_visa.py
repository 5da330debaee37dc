"""Tests for feclip.data.visa on a tiny fake VisA tree in its released layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from feclip.data import VisA, build_dataset
from feclip.data.visa import VISA_CATEGORIES, read_visa_split_csv

HEADER = "object,split,label,image,mask\n"


def _write(path: Path, values: np.ndarray, extension_format: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path, format=extension_format)
    return path.as_posix()


def make_visa(root: Path) -> Path:
    """Two categories; pcb1's mask stores the anomaly as 255, candle's as 1 (both occur in VisA)."""
    rows = []
    for category, mask_value in (("candle", 1), ("pcb1", 255)):
        data = root / category / "Data"
        for i, split in enumerate(("train", "test")):
            _write(data / "Images" / "Normal" / f"{i:04d}.JPG", np.full((8, 8, 3), 120, np.uint8), "JPEG")
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,\n")
        _write(data / "Images" / "Anomaly" / "000.JPG", np.full((8, 8, 3), 30, np.uint8), "JPEG")
        mask = np.zeros((8, 8), np.uint8)
        mask[:4, 4:] = mask_value  # top-right quarter
        _write(data / "Masks" / "Anomaly" / "000.png", mask)
        rows.append(f"{category},test,anomaly,{category}/Data/Images/Anomaly/000.JPG,"
                    f"{category}/Data/Masks/Anomaly/000.png\n")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text(HEADER + "".join(rows))
    return root


def test_visa_categories_constant_lists_the_12_categories() -> None:
    assert len(VISA_CATEGORIES) == 12 and {"candle", "pcb4", "pipe_fryum", "macaroni2"} <= set(VISA_CATEGORIES)


def test_test_split_items_and_both_mask_encodings(tmp_path: Path) -> None:
    dataset = VisA(make_visa(tmp_path), split="test", image_size=4)
    assert len(dataset) == 4 and dataset.categories == ["candle", "pcb1"]
    assert dataset.labels.tolist() == [0, 1, 0, 1]
    expected = torch.zeros(4, 4)
    expected[:2, 2:] = 1
    for index in (1, 3):  # candle (0/1 mask) and pcb1 (0/255 mask) give the same mask
        item = dataset[index]
        assert (item["label"], item["defect_type"], item["has_mask"]) == (1, "anomaly", True)
        assert torch.equal(item["mask"], expected)
    normal = dataset[0]
    assert (normal["defect_type"], normal["has_mask"]) == ("good", True) and normal["mask"].sum() == 0
    assert normal["path"] == str(tmp_path / "candle" / "Data" / "Images" / "Normal" / "0001.JPG")
    assert normal["image"].shape == (3, 4, 4)


def test_train_split_and_category_selection(tmp_path: Path) -> None:
    make_visa(tmp_path)
    train = VisA(tmp_path, split="train", image_size=4)
    assert len(train) == 2 and set(train.labels.tolist()) == {0}
    pcb = VisA(tmp_path, categories="pcb1", image_size=4)
    assert pcb.categories == ["pcb1"] and len(pcb) == 2
    with pytest.raises(ValueError, match=r"'fryum'.*\['candle', 'pcb1'\]"):
        VisA(tmp_path, categories=["fryum"])


def test_missing_mask_of_anomalous_image_fails_when_built(tmp_path: Path) -> None:
    make_visa(tmp_path)
    (tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"pcb1/Data/Images/Anomaly/000\.JPG.*line 7"):
        VisA(tmp_path)
    VisA(tmp_path, split="train")  # rows of the other split are not checked


def test_csv_problems_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"split_csv/1cls\.csv"):
        VisA(tmp_path)
    make_visa(tmp_path)
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\ncandle,test,x.JPG\n")
    with pytest.raises(ValueError, match=r"1cls\.csv lacks columns \['label', 'mask'\]"):
        VisA(tmp_path)
    csv_path.write_text(HEADER + "candle,test,broken,candle/Data/Images/Anomaly/000.JPG,\n")
    with pytest.raises(ValueError, match="line 2: label 'broken'"):
        VisA(tmp_path)
    csv_path.write_text(HEADER + "candle,test,normal,candle/Data/Images/Normal/9999.JPG,\n")
    with pytest.raises(FileNotFoundError, match="9999.JPG"):
        VisA(tmp_path)


def test_read_visa_split_csv_keeps_csv_order_and_paths(tmp_path: Path) -> None:
    make_visa(tmp_path)
    samples = read_visa_split_csv(tmp_path, tmp_path / "split_csv" / "1cls.csv")
    assert len(samples) == 6
    assert samples[2].mask_path == tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert samples[0].mask_path is None and samples[0].label == 0


def test_build_dataset_parses_visa_spec(tmp_path: Path) -> None:
    make_visa(tmp_path)
    dataset = build_dataset(f"visa:{tmp_path}", split="test", categories=["candle"], image_size=4)
    assert isinstance(dataset, VisA) and dataset.labels.tolist() == [0, 1]


def test_resize_mode_reaches_the_transform(tmp_path: Path) -> None:
    make_visa(tmp_path)
    assert VisA(tmp_path, image_size=4, resize_mode="crop").transform.resize_mode == "crop"
    assert build_dataset(f"visa:{tmp_path}", image_size=4, resize_mode="crop").transform.resize_mode == "crop"
    with pytest.raises(ValueError, match="either transform"):
        VisA(tmp_path, transform=VisA(tmp_path).transform, resize_mode="crop")
