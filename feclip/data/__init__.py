"""Datasets for zero-shot anomaly detection.

Every dataset is a torch ``Dataset`` of :class:`AnomalyItem` dicts (``image``, ``mask``,
``label``, ``category``, ``defect_type``, ``path``, ``has_mask``) transformed for one
backbone by an :class:`AnomalyTransform` (see :func:`transforms_for_clip`), built from a
``KIND:PATH`` spec by :func:`build_dataset` (:func:`parse_spec` reads the spec).

The zero-shot protocol of FE-CLIP (and AnomalyCLIP, AdaCLIP before it): the adapters are
trained on an *auxiliary* dataset's **test** split, the only one with anomalies and pixel masks
to supervise the segmentation loss, and evaluated on a *target* dataset whose images, categories
and defects were never seen. The run profiles (:mod:`feclip.profiles`) name the pairs and
:mod:`feclip.protocol` checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from feclip._lazy import lazy_exports

if TYPE_CHECKING:  # the lazily imported names, for type checkers and IDEs
    from feclip.data.base import AnomalyDataset
    from feclip.data.folder import FolderDataset

# The readers import torch; the spec parser, the data-set registry and `feclip download` do not
# need it, so the names below are imported on first use (PEP 562) and `feclip download --help`
# stays fast.
_LAZY = {
    "feclip.data.base": ("IMAGE_EXTENSIONS", "UNKNOWN_LABEL", "AnomalyDataset", "AnomalyItem", "EmptyMaskWarning",
                         "ImageReadError", "MaskSizeError", "Sample", "load_mask", "load_rgb"),
    "feclip.data.folder": ("FolderDataset",),
    "feclip.data.mvtec": ("MVTEC_CATEGORIES", "MVTecAD"),
    "feclip.data.synthetic": ("DEFECT_TYPES", "FAMILIES", "OBJECT_CATEGORIES", "TEXTURE_CATEGORIES",
                              "SyntheticDataset", "generate_benchmark", "generate_synthetic_dataset", "render_sample"),
    "feclip.data.transforms": ("AnomalyTransform", "to_display", "transforms_for_clip", "unnormalize"),
    "feclip.data.visa": ("VISA_CATEGORIES", "VisA"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "DATASET_KINDS", "DEFECT_TYPES", "FAMILIES", "IMAGE_EXTENSIONS", "MVTEC_CATEGORIES",
    "OBJECT_CATEGORIES", "TEXTURE_CATEGORIES", "UNKNOWN_LABEL", "VISA_CATEGORIES",
    "AnomalyDataset", "AnomalyItem", "AnomalyTransform", "EmptyMaskWarning", "FolderDataset", "ImageReadError",
    "MVTecAD", "MaskSizeError",
    "Sample", "SyntheticDataset", "VisA",
    "build_dataset", "generate_benchmark", "generate_synthetic_dataset", "load_mask", "load_rgb",
    "parse_spec", "render_sample", "to_display", "transforms_for_clip", "unnormalize",
]

DATASET_KINDS = ("mvtec", "visa", "folder", "synth")

def parse_spec(spec: str) -> tuple[str, Path]:
    """``"KIND:PATH"`` as ``(kind, path)``, the one reader of a dataset spec.

    Args:
        spec: A dataset spec such as ``"mvtec:data/mvtec"`` (``~`` is expanded).

    Returns:
        The kind, lower-cased (one of :data:`DATASET_KINDS`), and the path.

    Raises:
        ValueError: No kind, or an unknown one; the message lists the valid kinds.
    """
    kind, separator, raw_path = spec.partition(":")
    kind = kind.strip().lower()
    if not separator or kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r} in {spec!r}; valid kinds: {list(DATASET_KINDS)} "
                         "(write kind:PATH, e.g. mvtec:data/mvtec)")
    return kind, Path(raw_path).expanduser()


def _folder_dataset(path: Path, **kwargs) -> FolderDataset:
    """``folder:PATH``: ``good/`` or ``normal/``, ``abnormal/``, ``masks/``; else PATH is unlabelled images."""
    from feclip.data.folder import FolderDataset

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
    from feclip.data.mvtec import MVTecAD
    from feclip.data.synthetic import FAMILIES, SyntheticDataset
    from feclip.data.visa import VisA

    kind, path = parse_spec(spec)
    raw_path = spec.partition(":")[2]
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
