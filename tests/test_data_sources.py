"""Tests for feclip.data.sources: the registry's facts, and every preparer on a tree generated in
its data set's released layout, opened afterwards with our readers."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feclip.data import DATASET_KINDS, MVTecAD, build_dataset
from feclip.data.download import download
from feclip.data.sources import (
    SOURCES,
    LayoutError,
    binarize_mask,
    check_layout,
    get_source,
    prepare_dagm,
    prepare_image_folders,
    prepare_mvtec_layout,
)

IMAGE = np.full((32, 32, 3), 90, dtype=np.uint8)  # the size of DISK: readers refuse a mask of another size
YY, XX = np.mgrid[:32, :32]
DISK = (((YY - 15) ** 2 + (XX - 13) ** 2) < 60)  # not aligned to JPEG blocks: compression leaves noise


def _save(path: Path, values: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path, **options)
    return path


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --------------------------------------------------------------------------- registry


def test_direct_sources_pin_sha256_over_https():
    direct = [s for s in SOURCES.values() if s.direct]
    assert sorted(s.name for s in direct) == ["btad", "mvtec", "visa"]
    for source in direct:
        assert source.url.startswith("https://") and source.archive_name
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256), source.name
        assert "anomalib" in source.hash_source


def test_manual_sources_say_where_to_go():
    for source in SOURCES.values():
        assert source.reader in DATASET_KINDS and source.licence and source.paper_tables
        if not source.direct:
            assert source.sha256 is None and re.search(r"https://\S+", source.manual_steps), source.name
    assert len(SOURCES) == 10  # the paper's Tables 1-2: six industrial, four medical data sets
    assert "CC BY-NC-SA 4.0" in SOURCES["mvtec"].licence


def test_get_source_and_spec():
    assert get_source(" MVTec ").name == "mvtec"
    assert get_source("brainmri").spec(Path("/d")) == "folder:/d/brainmri"
    with pytest.raises(ValueError, match="known: mvtec, visa"):
        get_source("imagenet")


# --------------------------------------------------------------------------- masks and layouts


def test_binarize_mask_removes_jpeg_noise_and_scales_0_1_masks(tmp_path):
    jpeg = _save(tmp_path / "m.jpg", DISK.astype(np.uint8) * 255, quality=75)
    assert (_read(jpeg) > 0).sum() > DISK.sum()  # the noise a naive "non-zero" reading would count
    binarize_mask(jpeg, tmp_path / "out.png")
    assert np.array_equal(_read(tmp_path / "out.png"), DISK.astype(np.uint8) * 255)
    binarize_mask(_save(tmp_path / "one.png", DISK.astype(np.uint8)), tmp_path / "out1.png")
    assert np.array_equal(_read(tmp_path / "out1.png") > 0, DISK)


def test_check_layout_names_what_is_missing(tmp_path):
    with pytest.raises(LayoutError, match="<category>/test/"):
        check_layout(tmp_path, "mvtec")
    with pytest.raises(LayoutError, match="good/ or abnormal/"):
        check_layout(tmp_path, "folder")
    with pytest.raises(ValueError, match="reader kind"):
        check_layout(tmp_path, "coco")


def _mvtec_tree(root: Path, category: str, defect: str, mask_suffix: str = "_mask") -> None:
    _save(root / category / "train" / "good" / "000.png", IMAGE)
    _save(root / category / "test" / "good" / "000.png", IMAGE)
    _save(root / category / "test" / defect / "000.png", IMAGE)
    _save(root / category / "ground_truth" / defect / f"000{mask_suffix}.png", DISK.astype(np.uint8) * 255)


@pytest.mark.parametrize(("wrapper", "category", "defect"), [
    ("MPDD", "bracket_black", "hole"),  # MPDD's OneDrive folder as a zip
    ("DTD-Synthetic", "Blotchy_099", "bad"),  # DTD-Synthetic's Drive folder
    ("", "bottle", "broken_large"),  # MVTec AD: categories at the archive's top
])
def test_mvtec_layout_sets_are_moved_as_released(tmp_path, wrapper, category, defect):
    extracted = tmp_path / "extracted"
    _mvtec_tree(extracted / wrapper, category, defect)
    (extracted / "__MACOSX").mkdir()
    prepare_mvtec_layout(extracted, tmp_path / "out")
    dataset = MVTecAD(tmp_path / "out")
    assert dataset.categories == [category] and dataset.labels.tolist() == [0, 1]
    assert dataset[1]["defect_type"] == defect


def test_mvtec_layout_of_an_unrelated_archive_is_refused(tmp_path):
    _save(tmp_path / "extracted" / "photos" / "cat.png", IMAGE)
    with pytest.raises(LayoutError, match="right file"):
        prepare_mvtec_layout(tmp_path / "extracted", tmp_path / "out")


def test_dagm_becomes_mvtec_layout(tmp_path):
    """DAGM (Kaggle upload, as AnomalyCLIP uses it): ClassN/{Train,Test}/NNNN.PNG, Label/NNNN_label.PNG."""
    root = tmp_path / "extracted" / "DAGM_KaggleUpload"
    for class_name in ("Class1", "Class10"):
        for phase in ("Train", "Test"):
            _save(root / class_name / phase / "0001.PNG", IMAGE)
            _save(root / class_name / phase / "0002.PNG", IMAGE)
            _save(root / class_name / phase / "Label" / "0002_label.PNG", DISK.astype(np.uint8) * 255)
            (root / class_name / phase / "Label" / "Labels.txt").write_text("1\n2\t1\t0002.PNG\t0\t0002_label.PNG\n")
    prepare_dagm(tmp_path / "extracted", tmp_path / "dagm")
    test = MVTecAD(tmp_path / "dagm")
    assert test.categories == ["Class1", "Class10"]
    assert test.labels.tolist() == [0, 1, 0, 1]
    assert [Path(s.image_path).name for s in test.samples] == ["0001.PNG", "0002.PNG"] * 2
    mask = test.samples[1].mask_path
    assert mask.name == "0002_mask.png" and np.array_equal(_read(mask) > 0, DISK)
    train = MVTecAD(tmp_path / "dagm", split="train")
    assert train.labels.tolist() == [0, 0]  # the anomalous training image is left out
    assert not list((tmp_path / "dagm" / "Class1" / "train").glob("*/0002.PNG"))


@pytest.mark.parametrize("layout", ["brainmri", "br35h"])
def test_brain_sets_become_folder_layout(tmp_path, layout):
    extracted = tmp_path / "extracted"
    if layout == "brainmri":  # Kaggle's archive holds the pair twice: at the top and in brain_tumor_dataset/
        for parent in (extracted, extracted / "brain_tumor_dataset"):
            _save(parent / "yes" / "Y1.jpg", IMAGE)
            _save(parent / "yes" / "Y2.jpg", IMAGE)
            _save(parent / "no" / "1 no.jpeg", IMAGE)
    else:  # Br35H: yes/, no/ and the unlabelled pred/
        _save(extracted / "yes" / "y0.jpg", IMAGE)
        _save(extracted / "yes" / "y1.jpg", IMAGE)
        _save(extracted / "no" / "no0.jpg", IMAGE)
        _save(extracted / "pred" / "pred0.jpg", IMAGE)
    prepare_image_folders(extracted, tmp_path / layout)
    dataset = build_dataset(f"folder:{tmp_path / layout}")
    assert sorted(dataset.labels.tolist()) == [0, 1, 1]
    names = {Path(s.image_path).name: s.label for s in dataset.samples}
    assert all(label == (1 if name.lower().startswith("y") else 0) for name, label in names.items())
    assert not any(s.has_mask for s in dataset.samples if s.label == 1)


def _polyp_archive(path: Path) -> Path:
    """AnomalyCLIP's figshare 'Polyp DataSet.zip': several sets side by side, each images/ + masks/."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, count, mask_format in (("CVC-ClinicDB", 2, "PNG"), ("Kvasir", 3, "JPEG"), ("CVC-ColonDB", 1, "PNG")):
            for index in range(count):
                for folder, values, image_format in (("images", IMAGE, "PNG"), ("masks", DISK.astype(np.uint8) * 255,
                                                                                 mask_format)):
                    data = io.BytesIO()
                    Image.fromarray(values).save(data, format=image_format, quality=75)
                    suffix = "jpg" if image_format == "JPEG" else "png"
                    archive.writestr(f"Polyp DataSet/TestDataset/{name}/{folder}/{index}.{suffix}", data.getvalue())
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(("name", "count"), [("clinicdb", 2), ("kvasir", 3)])
def test_polyp_sets_pick_their_folder_and_binarize_masks(tmp_path, name, count):
    archive = _polyp_archive(tmp_path / "Polyp DataSet.zip")
    path = download(name, tmp_path / "data", from_archive=archive, progress=False)
    dataset = MVTecAD(path)
    assert dataset.categories == ["polyp"] and dataset.labels.tolist() == [1] * count
    for sample in dataset.samples:
        assert np.array_equal(_read(sample.mask_path) > 0, DISK)
    with pytest.raises(FileNotFoundError):
        MVTecAD(path, split="train")  # every polyp image is anomalous: there is no train split


def test_polyp_without_its_folder_lists_what_it_found(tmp_path):
    extracted = tmp_path / "extracted"
    for name in ("A", "B"):
        _save(extracted / name / "images" / "0.png", IMAGE)
        _save(extracted / name / "masks" / "0.png", DISK.astype(np.uint8))
    with pytest.raises(LayoutError, match=r"pairs found: A, B"):
        SOURCES["kvasir"].prepare(extracted, tmp_path / "out")
