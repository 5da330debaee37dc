"""A user's own images: folders of normal and/or anomalous images, optional masks.

Labels come from which folder an image is in:

* ``normal_dir``: label 0, ``defect_type="good"``, empty mask (``has_mask=True``);
* ``abnormal_dir``: label 1, ``defect_type="anomaly"``; its mask is looked up in ``mask_dir``
  by file stem (``<stem>_mask.*`` or ``<stem>.*``, :func:`feclip.data.mvtec.find_mask`). Without a mask the item has
  ``has_mask=False`` and downstream pixel metrics skip it;
* ``image_dir``: images of unknown status for prediction only: label ``-1``,
  ``defect_type="unknown"``, ``has_mask=False``. Image metrics need labels 0/1, so keep
  such a dataset out of evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from feclip.data.base import UNKNOWN_LABEL, AnomalyDataset, Sample, list_images, resolve_transform
from feclip.data.mvtec import find_mask
from feclip.data.transforms import AnomalyTransform, ImageSize

__all__ = ["FolderDataset"]


def _images_in(directory: str | Path, role: str) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{role} folder not found: {directory}")
    images = list_images(directory)
    if not images:
        raise FileNotFoundError(f"no images in {role} folder {directory}")
    return images


class FolderDataset(AnomalyDataset):
    """Images from plain folders as a torch ``Dataset`` of :class:`AnomalyItem` dicts.

    Args:
        normal_dir: Folder of normal images.
        abnormal_dir: Folder of anomalous images.
        mask_dir: Folder of masks for the anomalous images, matched by stem.
        image_dir: Folder of unlabelled images (label -1), for prediction only.
        category: Category name given to every item.
        image_size: Backbone input size ``S`` (default 224); or pass ``transform``.
        mean: Backbone normalisation mean (default OpenAI's).
        std: Backbone normalisation std (default OpenAI's).
        transform: A ready :class:`AnomalyTransform`.
        resize_mode: ``"squash"`` (default) or ``"crop"`` when no ``transform`` is given; see
            :mod:`feclip.data.transforms`.

    Example:
        >>> FolderDataset(normal_dir="ok", abnormal_dir="ng", mask_dir="ng_masks", image_size=240)
    """

    def __init__(
        self,
        normal_dir: str | Path | None = None,
        abnormal_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        category: str = "custom",
        image_size: ImageSize | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        transform: AnomalyTransform | None = None,
        resize_mode: str | None = None,
    ) -> None:
        if normal_dir is None and abnormal_dir is None and image_dir is None:
            raise ValueError("FolderDataset needs at least one of normal_dir, abnormal_dir, image_dir")
        if mask_dir is not None and abnormal_dir is None:
            raise ValueError("mask_dir is only used with abnormal_dir")
        if mask_dir is not None and not Path(mask_dir).is_dir():
            raise FileNotFoundError(f"mask folder not found: {mask_dir}")
        samples: list[Sample] = []
        if normal_dir is not None:
            samples += [Sample(p, 0, category, "good") for p in _images_in(normal_dir, "normal")]
        if abnormal_dir is not None:
            for path in _images_in(abnormal_dir, "abnormal"):
                mask = find_mask(Path(mask_dir), path) if mask_dir is not None else None
                samples.append(Sample(path, 1, category, "anomaly", mask, has_mask=mask is not None))
        if image_dir is not None:
            samples += [Sample(p, UNKNOWN_LABEL, category, "unknown", None, has_mask=False)
                        for p in _images_in(image_dir, "image")]
        super().__init__(samples, resolve_transform(transform, image_size, mean, std, resize_mode))
        self.category = category
