"""feclip.data.layouts: a synthetic family written in VisA's and BTAD's released layouts.

Each written set is opened with our readers (directly, and after the download module's own
preparation of an archive holding it) and compared item by item with its MVTec-layout source:
counts, labels, masks and pixels.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feclip.data import MVTecAD, VisA, build_dataset, generate_synthetic_dataset
from feclip.data.base import load_mask, load_rgb
from feclip.data.download import dataset_spec, download
from feclip.data.layouts import write_btad_layout, write_visa_layout
from feclip.data.sources import check_layout, get_source

CATEGORIES = ("nut", "pill")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two object categories in MVTec layout: 2 train images, 2 normal and 1 per defect type in test."""
    root = tmp_path_factory.mktemp("family") / "objects"
    return generate_synthetic_dataset(root, family="objects", categories=list(CATEGORIES), image_size=32,
                                      n_train_good=2, n_test_good=2, n_test_defect_per_type=1, seed=3)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path), dtype=np.int16)


def _assert_same_items(source: list, written: list, *, max_pixel_error: float) -> None:
    """Same order, categories, labels and masks; pixels within ``max_pixel_error`` on average."""
    assert len(written) == len(source)
    for original, copy in zip(source, written):
        assert (copy.category, copy.label) == (original.category, original.label), copy.image_path
        if original.label == 1:
            assert np.array_equal(load_mask(copy.mask_path), load_mask(original.mask_path)), copy.mask_path
        else:
            assert copy.mask_path is None
        error = np.abs(_pixels(copy.image_path) - _pixels(original.image_path)).mean()
        assert error <= max_pixel_error, (copy.image_path, error)


def test_visa_layout_is_read_back_item_by_item(family: Path, tmp_path: Path) -> None:
    out = write_visa_layout(family, tmp_path / "visa")
    check_layout(out, "visa")
    for split in ("train", "test"):
        source = MVTecAD(family, split).samples
        written = VisA(out, split).samples
        # JPEG, as VisA's images are: close to the PNG source, not equal.
        _assert_same_items(source, written, max_pixel_error=6.0)
    test = VisA(out, "test")
    assert test.categories == list(CATEGORIES)
    n_defect_types = {c: len(list((family / c / "test").iterdir())) - 1 for c in CATEGORIES}
    assert [int((test.labels[[s.category == c for s in test.samples]] == 1).sum()) for c in CATEGORIES] == \
        [n_defect_types[c] for c in CATEGORIES]


def test_visa_layout_files_are_the_released_ones(family: Path, tmp_path: Path) -> None:
    out = write_visa_layout(family, tmp_path / "visa")
    with (out / "split_csv" / "1cls.csv").open(newline="") as handle:
        assert handle.readline() == "object,split,label,image,mask\n"
        rows = list(csv.DictReader(handle, fieldnames=["object", "split", "label", "image", "mask"]))
    first_anomaly = next(row for row in rows if row["label"] == "anomaly")
    assert first_anomaly["image"] == "nut/Data/Images/Anomaly/000.JPG"
    assert first_anomaly["mask"] == "nut/Data/Masks/Anomaly/000.png"
    assert rows[0] == {"object": "nut", "split": "train", "label": "normal",
                       "image": "nut/Data/Images/Normal/0000.JPG", "mask": ""}
    assert {row["split"] for row in rows if row["label"] == "anomaly"} == {"test"}
    # normal images of both splits share one folder and one numbering
    normal = [row["image"] for row in rows if row["object"] == "nut" and row["label"] == "normal"]
    assert normal == [f"nut/Data/Images/Normal/{i:04d}.JPG" for i in range(4)]
    with Image.open(out / first_anomaly["image"]) as image:
        assert image.format == "JPEG"
    mask = np.asarray(Image.open(out / first_anomaly["mask"]))
    assert set(np.unique(mask).tolist()) == {0, 1}  # VisA stores 1 on the defect


def test_visa_layout_goes_through_the_download_preparation(family: Path, tmp_path: Path) -> None:
    written = write_visa_layout(family, tmp_path / "written")
    archive = tmp_path / "VisA_20220922.tar"
    with tarfile.open(archive, "w") as tar:  # category folders and split_csv/ at the top, as released
        for child in sorted(written.iterdir()):
            tar.add(child, arcname=child.name)
    root = tmp_path / "data"
    download(replace(get_source("visa"), sha256=None), root, from_archive=archive, progress=False)
    prepared = build_dataset(dataset_spec("visa", root), split="test")
    _assert_same_items(MVTecAD(family, "test").samples, prepared.samples, max_pixel_error=6.0)
    assert float(prepared[len(prepared) - 1]["mask"].max()) == 1.0


@pytest.mark.parametrize("image_format", ["bmp", "png"])
def test_btad_layout_is_read_back_item_by_item(family: Path, tmp_path: Path, image_format: str) -> None:
    out = write_btad_layout(family, tmp_path / "btad", image_format=image_format)
    for split in ("train", "test"):
        # lossless: every pixel is the source's
        _assert_same_items(MVTecAD(family, split).samples, MVTecAD(out, split).samples, max_pixel_error=0.0)
    category = out / "nut"
    assert sorted(p.name for p in (category / "test").iterdir()) == ["ko", "ok"]
    assert sorted(p.name for p in (category / "train").iterdir()) == ["ok"]
    assert {p.suffix for p in (category / "test" / "ko").iterdir()} == {f".{image_format}"}
    images = sorted(p.stem for p in (category / "test" / "ko").iterdir())
    assert sorted(p.name for p in (category / "ground_truth" / "ko").iterdir()) == [f"{s}.png" for s in images]
    assert MVTecAD(out, "test")[len(MVTecAD(out, "test")) - 1]["defect_type"] == "ko"


def test_btad_layout_goes_through_the_download_preparation(family: Path, tmp_path: Path) -> None:
    written = write_btad_layout(family, tmp_path / "written")
    archive = tmp_path / "btad.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:  # as released: BTech_Dataset_transformed/<product>/...
        for path in sorted(written.rglob("*")):
            if path.is_file():
                zip_file.write(path, f"BTech_Dataset_transformed/{path.relative_to(written).as_posix()}")
    root = tmp_path / "data"
    download(replace(get_source("btad"), sha256=None), root, from_archive=archive, progress=False)
    prepared = build_dataset(dataset_spec("btad", root), split="test")
    _assert_same_items(MVTecAD(family, "test").samples, prepared.samples, max_pixel_error=0.0)


def test_bad_input_and_occupied_output_are_named(family: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="occupied"):
        write_visa_layout(family, occupied)
    with pytest.raises(FileExistsError, match="occupied"):
        write_btad_layout(family, occupied)
    assert (occupied / "keep.txt").read_text() == "user data"
    with pytest.raises(FileNotFoundError, match="not a data set in MVTec layout"):
        write_btad_layout(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ValueError, match="image_format"):
        write_btad_layout(family, tmp_path / "out", image_format="jpg")
    assert not (tmp_path / "out").exists()
    # an empty folder is a fine target, and nothing is left beside it
    (tmp_path / "empty").mkdir()
    write_btad_layout(family, tmp_path / "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "occupied"]


def test_a_failed_write_leaves_nothing(family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feclip.data import layouts

    calls = []

    def failing_load(path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return load_rgb(path)

    monkeypatch.setattr(layouts, "load_rgb", failing_load)
    with pytest.raises(OSError, match="disk full"):
        write_visa_layout(family, tmp_path / "visa")
    assert list(tmp_path.iterdir()) == []
