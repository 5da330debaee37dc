"""Datasets for zero-shot anomaly detection, and the zero-shot protocol itself.

Every dataset is a torch ``Dataset`` of :class:`AnomalyItem` dicts (``image``, ``mask``,
``label``, ``category``, ``defect_type``, ``path``, ``has_mask``) transformed for one
backbone by an :class:`AnomalyTransform` (see :func:`transforms_for_clip`).

The zero-shot protocol of FE-CLIP (and AnomalyCLIP, AdaCLIP before it): the adapters are
trained on an *auxiliary* dataset and evaluated on a *target* dataset whose images, categories
and defects were never seen. Training uses the auxiliary dataset's **test** split, because only
it has anomalies and pixel masks to supervise the segmentation loss; the train splits (normal
images only) are not used at all. :data:`AUXILIARY_DATASET` names the pairs of the paper
(VisA -> MVTec AD and MVTec AD -> VisA) and their offline stand-in on the synthetic benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from feclip.data.base import (
    IMAGE_EXTENSIONS,
    UNKNOWN_LABEL,
    AnomalyDataset,
    AnomalyItem,
    EmptyMaskWarning,
    ImageReadError,
    MaskSizeError,
    Sample,
    load_mask,
    load_rgb,
)
from feclip.data.folder import FolderDataset
from feclip.data.mvtec import MVTEC_CATEGORIES, MVTecAD
from feclip.data.synthetic import (
    DEFECT_TYPES,
    FAMILIES,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
    SyntheticDataset,
    generate_benchmark,
    generate_synthetic_dataset,
    render_sample,
)
from feclip.data.transforms import AnomalyTransform, to_display, transforms_for_clip, unnormalize
from feclip.data.visa import VISA_CATEGORIES, VisA

__all__ = [
    "AUXILIARY_DATASET", "DATASET_KINDS", "DEFECT_TYPES", "FAMILIES", "IMAGE_EXTENSIONS", "MVTEC_CATEGORIES",
    "OBJECT_CATEGORIES", "TEXTURE_CATEGORIES", "UNKNOWN_LABEL", "VISA_CATEGORIES",
    "AnomalyDataset", "AnomalyItem", "AnomalyTransform", "EmptyMaskWarning", "FolderDataset", "ImageReadError",
    "MVTecAD", "MaskSizeError",
    "Sample", "SyntheticDataset", "VisA", "ZeroShotSplit",
    "build_dataset", "generate_benchmark", "generate_synthetic_dataset", "load_mask", "load_rgb",
    "render_sample", "to_display", "training_split_for_zero_shot", "transforms_for_clip", "unnormalize",
]

DATASET_KINDS = ("mvtec", "visa", "folder", "synth")

# Target dataset -> the dataset FE-CLIP is trained on before being evaluated on the target.
AUXILIARY_DATASET: dict[str, str] = {
    "mvtec": "visa",
    "visa": "mvtec",
    "synth_objects": "synth_textures",
    "synth_textures": "synth_objects",
}


class ZeroShotSplit(NamedTuple):
    """Which data trains and which evaluates in one zero-shot experiment."""

    train_dataset: str
    train_split: str
    eval_dataset: str
    eval_split: str


def training_split_for_zero_shot(target: str) -> ZeroShotSplit:
    """Name the training data for a zero-shot evaluation on ``target``.

    FE-CLIP trains its frequency adapters on the auxiliary dataset's **test** split (the only
    split with anomalies and masks) and is then evaluated on the target's test split, which it
    never sees during training. Example: ``training_split_for_zero_shot("mvtec")`` ->
    ``ZeroShotSplit("visa", "test", "mvtec", "test")``.

    Args:
        target: A key of :data:`AUXILIARY_DATASET`.

    Returns:
        The :class:`ZeroShotSplit` of the experiment.
    """
    if target not in AUXILIARY_DATASET:
        raise ValueError(f"no auxiliary dataset known for {target!r}; known targets: {list(AUXILIARY_DATASET)}")
    return ZeroShotSplit(AUXILIARY_DATASET[target], "test", target, "test")


def _folder_dataset(path: Path, **kwargs) -> FolderDataset:
    """``folder:PATH``: ``good/`` or ``normal/``, ``abnormal/``, ``masks/``; else PATH is unlabelled images."""
    normal = next((path / name for name in ("good", "normal") if (path / name).is_dir()), None)
    abnormal = path / "abnormal" if (path / "abnormal").is_dir() else None
    masks = path / "masks" if (path / "masks").is_dir() and abnormal is not None else None
    if normal is None and abnormal is None:
        return FolderDataset(image_dir=path, category=path.name, **kwargs)
    return FolderDataset(normal_dir=normal, abnormal_dir=abnormal, mask_dir=masks, category=path.name, **kwargs)


def build_dataset(
    spec: str,
    split: str = "test",
    categories: str | Sequence[str] | None = None,
    **transform_kwargs,
) -> AnomalyDataset:
    """Build a dataset from a ``"kind:PATH"`` string (the command line's dataset option).

    Kinds:
        * ``mvtec:PATH``: :class:`MVTecAD` (also MPDD, BTAD).
        * ``visa:PATH``: :class:`VisA` (released layout with ``split_csv/1cls.csv``).
        * ``synth:PATH``: one family root written by :func:`generate_synthetic_dataset`
          (e.g. ``<benchmark>/objects``), read as MVTec layout.
        * ``folder:PATH``: :class:`FolderDataset`. PATH holds ``good/`` (or ``normal/``) and/or
          ``abnormal/`` with optional ``masks/`` (by stem); if it holds neither, the images
          directly in PATH are read unlabelled (label -1) for prediction. ``split`` and
          ``categories`` do not apply; the category is the folder's name.

    Args:
        spec: ``"kind:PATH"``.
        split: ``"test"`` or ``"train"``.
        categories: Categories to keep (None: all).
        **transform_kwargs: ``image_size``, ``mean``, ``std`` and ``resize_mode`` (``"squash"`` or
            ``"crop"``), or a ready ``transform``.

    Returns:
        The dataset.
    """
    kind, separator, raw_path = spec.partition(":")
    kind = kind.strip().lower()
    if not separator or kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; valid kinds: {list(DATASET_KINDS)} "
                         "(write kind:PATH, e.g. mvtec:data/mvtec)")
    path = Path(raw_path).expanduser()
    if not raw_path or not path.exists():
        hint = " (create it with feclip.data.generate_benchmark)" if kind == "synth" else ""
        raise FileNotFoundError(f"dataset path not found: {raw_path!r}{hint}")
    if kind == "visa":
        return VisA(path, split=split, categories=categories, **transform_kwargs)
    if kind == "folder":
        if categories is not None:
            raise ValueError("categories do not apply to folder: datasets")
        return _folder_dataset(path, **transform_kwargs)
    families_here = [family for family in FAMILIES if (path / family).is_dir()]
    if kind == "synth" and len(families_here) >= 2:
        raise ValueError(f"{path} is a benchmark root; point at one family: "
                         + " or ".join(f"synth:{path / family}" for family in families_here))
    if kind == "synth":
        return SyntheticDataset(path, split=split, categories=categories, **transform_kwargs)
    return MVTecAD(path, split=split, categories=categories, **transform_kwargs)
