"""VisA (Visual Anomaly dataset, Zou et al. 2022) in its released layout.

Layout::

    <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<category>/Data/Masks/Anomaly/*.png
    <root>/split_csv/1cls.csv      columns: object,split,label,image,mask

The CSV is the source of truth: paths in it are relative to ``<root>``, ``split`` is
``train``/``test``, ``label`` is ``normal``/``anomaly`` and ``mask`` is empty for normal
images. VisA masks store the anomaly as 255 in some files and as 1 (or a region id) in
others; :func:`~feclip.data.base.load_mask` counts any non-zero pixel, so both work.
The 1-class CSV carries no defect names, so anomalous items have ``defect_type="anomaly"``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from feclip.data.base import AnomalyDataset, Sample, check_root_and_split, resolve_transform
from feclip.data.transforms import AnomalyTransform, ImageSize

__all__ = ["VISA_CATEGORIES", "VISA_SPLIT_CSV", "VisA", "read_visa_split_csv"]

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"
REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def read_visa_split_csv(root: Path, csv_path: Path, split: str | None = None) -> list[Sample]:
    """Parse VisA's split CSV into samples, checking that every referenced file exists.

    Args:
        root: VisA root; CSV paths are relative to it.
        csv_path: The split CSV.
        split: Keep only rows of this split (``"train"``/``"test"``); None keeps all.

    Returns:
        One :class:`Sample` per kept row, in CSV order, ``defect_type`` ``"good"``/``"anomaly"``.
    """
    if not csv_path.is_file():
        raise FileNotFoundError(f"VisA split file not found: {csv_path}")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path} lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")
        rows = list(reader)
    # Line numbers count the header as line 1, so errors point at the line an editor shows.
    return [_row_to_sample(root, csv_path, line, row) for line, row in enumerate(rows, start=2)
            if split is None or row["split"].strip().lower() == split]


def _row_to_sample(root: Path, csv_path: Path, line: int, row: dict[str, str]) -> Sample:
    label_name = row["label"].strip().lower()
    if label_name not in LABELS:
        raise ValueError(f"{csv_path} line {line}: label {row['label']!r} is not one of {list(LABELS)}")
    label = LABELS[label_name]
    image_path = root / row["image"].strip()
    if not image_path.is_file():
        raise FileNotFoundError(f"image listed in {csv_path} line {line} not found: {image_path}")
    mask_field = (row["mask"] or "").strip()
    mask_path = root / mask_field if mask_field else None
    if label == 1 and (mask_path is None or not mask_path.is_file()):
        raise FileNotFoundError(
            f"no mask for anomalous image {image_path} ({csv_path} line {line}); expected {mask_path}"
        )
    return Sample(
        image_path=image_path,
        label=label,
        category=row["object"].strip(),
        defect_type="anomaly" if label == 1 else "good",
        mask_path=mask_path if label == 1 else None,
    )


class VisA(AnomalyDataset):
    """VisA as a torch ``Dataset`` of :class:`AnomalyItem` dicts.

    Args:
        root: VisA root holding the category folders and ``split_csv/``.
        split: ``"test"`` or ``"train"`` as written in the CSV.
        categories: A category name, a list of them, or None for every category in the CSV.
        image_size: Backbone input size ``S`` (default 224); or pass ``transform``.
        mean: Backbone normalisation mean (default OpenAI's).
        std: Backbone normalisation std (default OpenAI's).
        transform: A ready :class:`AnomalyTransform`.
        resize_mode: ``"squash"`` (default) or ``"crop"`` when no ``transform`` is given; see
            :mod:`feclip.data.transforms`.
        split_csv: The split file; default ``<root>/split_csv/1cls.csv``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        categories: str | Sequence[str] | None = None,
        image_size: ImageSize | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: AnomalyTransform | None = None,
        resize_mode: str | None = None,
        split_csv: str | Path | None = None,
    ) -> None:
        root = check_root_and_split(root, split)
        csv_path = Path(split_csv) if split_csv is not None else root / VISA_SPLIT_CSV
        rows = read_visa_split_csv(root, csv_path, split)
        found = list(dict.fromkeys(s.category for s in rows))
        if categories is not None:
            wanted = [categories] if isinstance(categories, str) else list(categories)
            unknown = [c for c in wanted if c not in found]
            if unknown:
                raise ValueError(f"unknown category {unknown[0]!r} in {csv_path}; found: {sorted(found)}")
            rows = [s for s in rows if s.category in wanted]
        if not rows:
            raise FileNotFoundError(f"no {split} images listed in {csv_path}")
        super().__init__(rows, resolve_transform(transform, image_size, mean, std, resize_mode))
        self.root = root
        self.split = split

