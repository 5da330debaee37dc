"""The zero-shot protocol, checked: nothing of the target data set may shape the model.

FE-CLIP is trained on an *auxiliary* data set and evaluated on a *target* it never saw. A
validation set that picks ``best.safetensors`` is part of training, so it must come from the
auxiliary side too: a held-out part of the training set (:meth:`feclip.data.AnomalyDataset.holdout`)
or another auxiliary data set. These checks run wherever two of the three sets are known:

* :func:`check_training_data` when a run starts (training, validation and, if named, the target);
* :func:`check_evaluation` when a checkpoint is evaluated (its recorded run against the data set).

Data sets are compared by category name and, for training against validation, by image file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ProtocolError", "data_record", "check_training_data", "check_evaluation"]


class ProtocolError(ValueError):
    """A training or evaluation set-up that would let the target data set leak into a zero-shot result."""


class _Dataset(Protocol):
    categories: Sequence[str]
    samples: Sequence[Any]


def data_record(spec: str | None, dataset: _Dataset | None, **facts: Any) -> dict[str, Any] | None:
    """What a run records about one data set: its spec, categories and size (``None`` for no data set).

    Args:
        spec: The ``KIND:PATH`` it was built from (``None`` for a part of another data set).
        dataset: The data set (anything with ``categories`` and ``samples``).
        **facts: More JSON values to record (e.g. ``holdout_fraction``).
    """
    if dataset is None:
        return None
    return {"spec": spec, "categories": sorted(dataset.categories), "images": len(dataset.samples), **facts}


def _shared(first: Sequence[str], second: Sequence[str]) -> list[str]:
    return sorted(set(first) & set(second))


def check_training_data(train: _Dataset, val: _Dataset | None = None, target: _Dataset | None = None) -> None:
    """Refuse a validation set that is training data, and any overlap with the named target.

    Args:
        train: The training set (the auxiliary data set's test split).
        val: The validation set, if any.
        target: The data set the run will be evaluated on, if known.

    Raises:
        ProtocolError: Naming what overlaps.
    """
    if val is not None:
        shared_images = {Path(s.image_path) for s in train.samples} & {Path(s.image_path) for s in val.samples}
        if shared_images:
            raise ProtocolError(f"the validation set shares {len(shared_images)} images with the training set "
                                "(e.g. the same data set given twice): hold part of the training set out instead "
                                "(--val-fraction)")
    if target is None:
        return
    for name, data in (("training", train), ("validation", val)):
        shared = _shared(data.categories, target.categories) if data is not None else []
        if shared:
            raise ProtocolError(f"the {name} set shares categories {shared} with the target: a zero-shot run must "
                                "never see the target's categories; validate on the auxiliary side (--val-fraction)")


def check_evaluation(extra: dict[str, Any], dataset: _Dataset) -> list[str]:
    """Check a checkpoint's recorded run against the data set it is about to be evaluated on.

    Args:
        extra: The checkpoint's ``extra`` metadata (:func:`feclip.checkpoint.read_metadata`), with
            ``run`` as :func:`feclip.train.train` stores it and ``chosen_by`` for a ``best`` checkpoint.
        dataset: The evaluation data set.

    Returns:
        Warnings (one sentence each): the data shares categories with the training set, so the
        result is not zero-shot.

    Raises:
        ProtocolError: The checkpoint was *chosen* on a validation set that shares categories with
            this data set: its score here would be selected on the test data.
    """
    run = extra.get("run") or {}
    val, train = run.get("val") or {}, run.get("train") or {}
    shared = _shared(val.get("categories", []), dataset.categories)
    if extra.get("chosen_by") and shared:
        raise ProtocolError(f"this checkpoint was chosen by {extra['chosen_by']} on a validation set that shares "
                            f"categories {shared} with the evaluation data: evaluate last.safetensors instead, or "
                            "train again validating on the auxiliary side (--val-fraction)")
    shared = _shared(train.get("categories", []), dataset.categories)
    return [f"the model was trained on categories {shared} of this data set: the result is not zero-shot"] if shared else []
