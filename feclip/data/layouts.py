"""Write a data set held in MVTec layout (our synthetic families) in VisA's and BTAD's released layouts.

The reproduction (:mod:`feclip.reproduce`) runs the paper's protocol on whatever is under the data
root, read by the same readers and prepared by the same code as the real data sets. Offline, the
smoke profile stands in for them with the synthetic benchmark written in each set's own layout,
so every reader and preparation step runs as it would on the real files:

* VisA as released (``VisA_20220922.tar``; read by :class:`~feclip.data.VisA`)::

      <root>/<category>/Data/Images/Normal/0000.JPG      normal images, train and test
      <root>/<category>/Data/Images/Anomaly/000.JPG      anomalous images
      <root>/<category>/Data/Masks/Anomaly/000.png       their masks, 1 on the defect
      <root>/split_csv/1cls.csv                          object,split,label,image,mask

  Images become JPEG, as VisA's are; the CSV's ``split`` keeps each image's MVTec split, its
  ``label`` is ``normal``/``anomaly`` and ``mask`` is empty for normal images. Defect types are
  lost, as VisA's 1-class split has none.

* BTAD as released (``btad.zip``'s ``BTech_Dataset_transformed/``; read by
  :class:`~feclip.data.MVTecAD`)::

      <root>/<category>/train/ok/0000.bmp
      <root>/<category>/test/ok/0000.bmp
      <root>/<category>/test/ko/0000.bmp
      <root>/<category>/ground_truth/ko/0000.png         the mask of test/ko/0000.bmp, 0/255

  Images are lossless (BMP as in BTAD's products 01 and 03, or PNG as in 02); every defect type
  becomes ``ko``.

Both writers keep the source's order (category, normal before anomalous, file names sorted), so the
``i``-th item of the written set read back by our readers is the ``i``-th of the source. Output is
written to a staging folder beside ``out_root`` and renamed into place: a crash leaves no half set.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from feclip.data.base import Sample, load_mask, load_rgb
from feclip.data.mvtec import MVTecAD, find_categories

__all__ = ["BTAD_IMAGE_FORMATS", "VISA_JPEG_QUALITY", "write_btad_layout", "write_visa_layout"]

VISA_JPEG_QUALITY = 95
BTAD_IMAGE_FORMATS = ("bmp", "png")
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")


def _samples_by_split(mvtec_root: Path) -> dict[str, list[Sample]]:
    """``{"train": [...], "test": [...]}`` of an MVTec-layout root; a category without train images has none."""
    if not mvtec_root.is_dir() or not find_categories(mvtec_root):
        raise FileNotFoundError(f"{mvtec_root} is not a data set in MVTec layout (no <category>/train/ or "
                                "<category>/test/ folders)")
    samples: dict[str, list[Sample]] = {"train": [], "test": []}
    for category in find_categories(mvtec_root):
        samples["test"] += MVTecAD(mvtec_root, "test", categories=category).samples
        try:
            samples["train"] += MVTecAD(mvtec_root, "train", categories=category).samples
        except FileNotFoundError:  # no train/ folder, or an empty one: the train split is optional
            pass
    return samples


def _write_atomically(out_root: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(staging)`` in a new folder beside ``out_root``, then rename it to ``out_root``."""
    if out_root.exists() and (not out_root.is_dir() or any(out_root.iterdir())):
        raise FileExistsError(f"{out_root} exists and is not an empty folder; write the layout to a new folder")
    out_root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.staging-", dir=out_root.parent))
    try:
        write(staging)
        if out_root.exists():
            out_root.rmdir()  # empty, checked above
        staging.rename(out_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_root


def write_visa_layout(mvtec_root: str | Path, out_root: str | Path) -> Path:
    """Write an MVTec-layout data set as VisA is released, ``split_csv/1cls.csv`` included.

    Args:
        mvtec_root: Root of the source (``<category>/{train,test,ground_truth}``), e.g. a synthetic
            family written by :func:`feclip.data.generate_synthetic_dataset`.
        out_root: New (or empty) folder to create; read it with ``build_dataset("visa:<out_root>")``.

    Returns:
        ``out_root`` as a ``Path``.

    Raises:
        FileNotFoundError: ``mvtec_root`` holds no MVTec-layout category.
        FileExistsError: ``out_root`` exists and is not empty.
    """
    samples = _samples_by_split(Path(mvtec_root))

    def write(staging: Path) -> None:
        rows: list[dict[str, str]] = []
        counters: dict[tuple[str, int], int] = {}
        for split in ("train", "test"):
            for sample in samples[split]:
                index = counters.get((sample.category, sample.label), 0)
                counters[(sample.category, sample.label)] = index + 1
                folder = "Anomaly" if sample.label == 1 else "Normal"
                # VisA numbers normal images with four digits and anomalous ones with three.
                stem = f"{index:03d}" if sample.label == 1 else f"{index:04d}"
                image = f"{sample.category}/Data/Images/{folder}/{stem}.JPG"
                (staging / image).parent.mkdir(parents=True, exist_ok=True)
                load_rgb(sample.image_path).save(staging / image, format="JPEG", quality=VISA_JPEG_QUALITY)
                mask = ""
                if sample.label == 1:
                    mask = f"{sample.category}/Data/Masks/Anomaly/{stem}.png"
                    (staging / mask).parent.mkdir(parents=True, exist_ok=True)
                    # VisA's masks hold 1 on the defect, not 255.
                    Image.fromarray(load_mask(sample.mask_path).astype(np.uint8)).save(staging / mask)
                rows.append({"object": sample.category, "split": split,
                             "label": "anomaly" if sample.label == 1 else "normal", "image": image, "mask": mask})
        (staging / "split_csv").mkdir()
        with (staging / "split_csv" / "1cls.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=_VISA_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    return _write_atomically(Path(out_root), write)


def write_btad_layout(mvtec_root: str | Path, out_root: str | Path, *, image_format: str = "bmp") -> Path:
    """Write an MVTec-layout data set as BTAD is released (``ok``/``ko`` folders, masks named as their image).

    Args:
        mvtec_root: Root of the source (``<category>/{train,test,ground_truth}``).
        out_root: New (or empty) folder to create; read it with ``build_dataset("mvtec:<out_root>")``.
        image_format: ``"bmp"`` (BTAD's products 01 and 03) or ``"png"`` (product 02); masks are PNG.

    Returns:
        ``out_root`` as a ``Path``.

    Raises:
        ValueError: An unknown ``image_format``.
        FileNotFoundError: ``mvtec_root`` holds no MVTec-layout category.
        FileExistsError: ``out_root`` exists and is not empty.
    """
    if image_format not in BTAD_IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {BTAD_IMAGE_FORMATS}, got {image_format!r}")
    samples = _samples_by_split(Path(mvtec_root))

    def write(staging: Path) -> None:
        counters: dict[tuple[str, str, int], int] = {}
        for split in ("train", "test"):
            for sample in samples[split]:
                key = (sample.category, split, sample.label)
                index = counters.get(key, 0)
                counters[key] = index + 1
                state = "ko" if sample.label == 1 else "ok"
                image = staging / sample.category / split / state / f"{index:04d}.{image_format}"
                image.parent.mkdir(parents=True, exist_ok=True)
                load_rgb(sample.image_path).save(image)
                if sample.label == 1:
                    mask = staging / sample.category / "ground_truth" / "ko" / f"{index:04d}.png"
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(load_mask(sample.mask_path).astype(np.uint8) * 255).save(mask)

    return _write_atomically(Path(out_root), write)
