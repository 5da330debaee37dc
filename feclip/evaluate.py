"""Run an anomaly predictor over a test set and tabulate its metrics.

:func:`evaluate` feeds a torch ``Dataset`` of data-item dicts (``image``, ``mask``,
``label``, ``category``, ``has_mask``, ...) through any
:class:`~feclip.predictor.AnomalyPredictor` and returns one row per category plus
the ``"macro"`` (mean over categories, as FE-CLIP and most papers report) and
``"micro"`` (all images or pixels pooled) rows. Values are fractions in ``[0, 1]``;
:func:`format_percent` turns them into percentages for printing.

Like most zero-shot anomaly papers' evaluation code, :func:`evaluate` smooths every predicted
map with a Gaussian (``map_sigma``, default 4 pixels at the model's input resolution;
:func:`feclip.postprocess.smooth_anomaly_maps`) before the pixel metrics; the table records the
sigma it used. The FE-CLIP reference implementation measured a Gaussian of sigma 2 raising MVTec
AD's AUPRO from 83.7 % to 91.7 % while pixel AUROC went from 91.5 % to 91.6 %.

:class:`AnomalyMetrics` is the streaming accumulator behind it, usable on its own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from feclip.data.transforms import resize_masks
from feclip.metrics import (
    METRIC_COLUMNS,
    NAN,
    PIXEL_METRICS,
    Connectivity,
    flatten_pixels,
    histogram_metrics,
    image_metrics,
    pixel_metrics_of_regions,
)
from feclip.metrics_histograms import ScoreHistograms, float16_histograms, merge_score_histograms, score_histograms
from feclip.postprocess import smooth_anomaly_maps
from feclip.predictor import AnomalyPrediction, AnomalyPredictor

__all__ = ["DEFAULT_MAP_SIGMA", "resize_maps", "resize_masks", "AnomalyMetrics", "evaluate", "format_percent"]

# Gaussian smoothing of the maps before pixel metrics, in pixels: the field's evaluation convention.
DEFAULT_MAP_SIGMA = 4.0


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_maps(anomaly_maps: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinear resize (anti-aliased when shrinking) of maps ``(B, H, W)`` to ``(B, *size)``."""
    size = _size_pair(size)
    if tuple(anomaly_maps.shape[-2:]) == size:
        return anomaly_maps
    resized = F.interpolate(
        anomaly_maps[:, None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return resized[:, 0]


@dataclass
class _Category:
    """What :class:`AnomalyMetrics` keeps for one category."""

    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)  # map_dtype, (b, h, w); wider than float16 only
    masks: list[np.ndarray] = field(default_factory=list)  # bool, (b, h, w); wider than float16 only
    pixels_valid: bool = True
    n_items: int = 0
    float16_counts: np.ndarray | None = None  # (3, FLOAT16_BINS), float16 maps: exact and streaming
    n_regions: int = 0
    histograms: ScoreHistograms | None = None  # wider maps: power-of-two bins, set when finalised
    result: dict[str, float] | None = None


class AnomalyMetrics:
    """Per-category, macro and micro metrics accumulated batch by batch.

    Pixel maps are first resized to ``pixel_size`` if given (maps bilinearly, masks by
    :func:`~feclip.data.transforms.resize_masks`, the policy training uses too) and rounded to
    ``map_dtype``. Image scores are kept in full (a few bytes per image).

    * float16 maps (the default) are not kept: every batch is added to its category's three
      histograms with one bin per float16 value (:func:`~feclip.metrics.float16_histograms`,
      1.5 MB per category), which give the category's pixel metrics and, summed, the micro
      (pooled) pixel metrics, both exactly for the float16 scores, whatever their range
      (probabilities or unbounded maps such as logit margins), in time linear in the pixels.
      float16 keeps about 3 significant digits, so scores closer than ~0.05 % become ties.
    * Wider maps (``map_dtype=np.float32``: scores exactly as predicted) are kept per category
      with boolean masks (5 bytes per pixel) until the category is finalised, which sorts its
      pixels for exact metrics and bins them for the micro pool over equal bins a power of two
      wide, fitted to the category's score range (:func:`~feclip.metrics.score_histograms`);
      :meth:`compute` merges those exactly to a common width
      (:func:`~feclip.metrics.merge_score_histograms`), so micro pixel metrics are exact for the
      scores rounded down to bins below ``2 (max - min) / (num_bins - 1)`` wide.

    A category is finalised, and its maps freed, as soon as ``expected_counts`` says it is
    complete, otherwise at :meth:`compute`. Micro image metrics are exact. Categories whose anomalous images lack masks (``has_mask`` false)
    get ``NaN`` pixel metrics and are left out of the micro pixel pool; the macro row is the
    mean over the categories where a metric is defined.

    Args:
        pixel_size: Side (or ``(H, W)``) of the stored pixel maps; ``None`` keeps the masks' size.
        fpr_limit: FPR limit of AUPRO.
        connectivity: Region connectivity of AUPRO, ``8`` (MVTec AD) or ``4``.
        expected_counts: Number of test images per category, to free a category's maps early.
        num_bins: Histogram bins of the micro pixel metrics of maps wider than float16.
        map_dtype: Floating dtype the pixel maps are rounded to.
    """

    def __init__(
        self,
        pixel_size: int | Sequence[int] | None = None,
        *,
        fpr_limit: float = 0.3,
        connectivity: Connectivity = 8,
        expected_counts: Mapping[str, int] | None = None,
        num_bins: int = 2**16,
        map_dtype: npt.DTypeLike = np.float16,
    ) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {num_bins}")
        self.num_bins = num_bins
        self.pixel_size = None if pixel_size is None else _size_pair(pixel_size)
        self.fpr_limit, self.connectivity = fpr_limit, connectivity
        self.expected_counts = dict(expected_counts or {})
        self.map_dtype = np.dtype(map_dtype)
        if self.map_dtype.kind != "f":
            raise ValueError(f"map_dtype must be a floating dtype, got {self.map_dtype}")
        self.categories: dict[str, _Category] = {}

    def update(
        self,
        pred_score: torch.Tensor | np.ndarray,
        label: torch.Tensor | np.ndarray,
        anomaly_map: torch.Tensor | np.ndarray | None = None,
        mask: torch.Tensor | np.ndarray | None = None,
        has_mask: torch.Tensor | np.ndarray | Sequence[bool] | None = None,
        category: str | Sequence[str] | None = None,
    ) -> None:
        """Add one batch.

        Args:
            pred_score: Image scores, shape ``(B,)``.
            label: Image labels, shape ``(B,)``, ``1`` for anomalous.
            anomaly_map: Pixel scores, shape ``(B, H, W)``; resized bilinearly to the masks'
                size (or ``pixel_size``) when it differs. ``None`` skips pixel metrics.
            mask: Ground-truth masks, shape ``(B, H', W')``, values in ``{0, 1}``.
            has_mask: Per image, shape ``(B,)``, whether ``mask`` is real; a normal image without
                one counts as all-normal pixels. ``None`` means all masks are real.
            category: One category for the batch or one per image; ``None`` means ``"all"``.
        """
        scores = torch.as_tensor(pred_score).detach().float().cpu().reshape(-1).numpy()
        labels = torch.as_tensor(label).detach().cpu().reshape(-1).numpy().astype(np.int8)
        batch = scores.size
        if labels.size != batch or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"label must hold {batch} values in {{0, 1}} (no unlabelled -1), got {labels}")
        names = [category or "all"] * batch if category is None or isinstance(category, str) else list(category)
        if len(names) != batch:
            raise ValueError(f"got {len(names)} categories for a batch of {batch} images")
        if {"macro", "micro"} & set(names):
            raise ValueError("'macro' and 'micro' are reserved row names, not category names")
        maps = masks = None
        if anomaly_map is not None:
            if mask is None:
                raise ValueError("anomaly_map was given without mask")
            maps = torch.as_tensor(anomaly_map).detach().float().cpu()
            masks = torch.as_tensor(mask).detach().cpu()
            maps, masks = (x[:, 0] if x.ndim == 4 else x for x in (maps, masks))  # tolerate (B, 1, H, W)
            if maps.shape[0] != batch or masks.shape[0] != batch:
                raise ValueError(f"anomaly_map {tuple(maps.shape)} and mask {tuple(masks.shape)} need {batch} items")
        valid = np.ones(batch, bool) if has_mask is None else torch.as_tensor(has_mask).cpu().numpy().astype(bool)
        for name in dict.fromkeys(names):
            index = np.flatnonzero(np.asarray(names) == name)
            state = self.categories.setdefault(name, _Category())
            if state.result is not None:
                raise ValueError(
                    f"category {name!r} got more images after it was finalised with "
                    f"{state.n_items}; expected_counts says {self.expected_counts.get(name)}"
                )
            state.scores.append(scores[index])
            state.labels.append(labels[index])
            state.n_items += index.size
            if maps is None or not valid[index][labels[index] == 1].all():
                self._drop_pixels(state)  # pixel metrics need a mask for every anomalous image
            elif state.pixels_valid:
                selected = torch.as_tensor(index)
                self._add_pixels(state, maps[selected], masks[selected], valid[index])
            expected = self.expected_counts.get(name)
            if expected is not None and state.n_items > expected:
                raise ValueError(f"category {name!r} has more than the {expected} images in expected_counts")
            if expected is not None and state.n_items == expected:
                self.finalize_category(name)

    @staticmethod
    def _drop_pixels(state: _Category) -> None:
        state.pixels_valid, state.maps, state.masks = False, [], []
        state.float16_counts, state.n_regions, state.histograms = None, 0, None

    def _add_pixels(self, state: _Category, maps: torch.Tensor, masks: torch.Tensor, has_mask: np.ndarray) -> None:
        size = self.pixel_size or tuple(masks.shape[-2:])
        binary = resize_masks(masks, size).numpy()
        binary[~has_mask] = False  # a normal image without a mask file has no defect
        stored = resize_maps(maps, size).numpy().astype(self.map_dtype)
        if not np.isfinite(stored).all():
            raise ValueError(f"anomaly_map has NaN, infinite or {self.map_dtype}-overflowing values")
        if self.map_dtype == np.float16:
            counts, n_regions = float16_histograms(stored, binary, self.connectivity)
            state.float16_counts = counts if state.float16_counts is None else state.float16_counts + counts
            state.n_regions += n_regions
        else:
            state.maps.append(stored)
            state.masks.append(binary)

    def finalize_category(self, name: str) -> dict[str, float]:
        """Compute one category's metrics now and free its pixel maps."""
        state = self.categories[name]
        if state.result is None:
            result = image_metrics(np.concatenate(state.scores), np.concatenate(state.labels))
            result.update(dict.fromkeys(PIXEL_METRICS, NAN))
            if state.pixels_valid and state.float16_counts is not None:
                result.update(histogram_metrics(*state.float16_counts, state.n_regions, fpr_limit=self.fpr_limit))
            elif state.pixels_valid and state.maps:
                scores, regions, n_regions = flatten_pixels(state.maps, state.masks, self.connectivity)
                state.maps, state.masks = [], []  # flattened copies hold the pixels now
                result.update(pixel_metrics_of_regions(scores, regions, n_regions, fpr_limit=self.fpr_limit))
                state.histograms = score_histograms(scores, regions, n_regions, self.num_bins)
            state.result, state.maps, state.masks = result, [], []
        return dict(state.result)

    def compute(self) -> pd.DataFrame:
        """Finalise every category and tabulate.

        Returns:
            A DataFrame indexed by category, then ``"macro"`` and ``"micro"``, with the columns
            :data:`METRIC_COLUMNS` (fractions in ``[0, 1]``), ``n_images`` and ``n_anomalous``.
        """
        if not self.categories:
            raise ValueError("no batches were added; call update() first")
        rows = {name: self.finalize_category(name) for name in self.categories}
        table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS))
        labels = {name: np.concatenate(state.labels) for name, state in self.categories.items()}
        table["n_images"] = [labels[name].size for name in table.index]
        table["n_anomalous"] = [int(labels[name].sum()) for name in table.index]
        macro = table[list(METRIC_COLUMNS)].mean(axis=0, skipna=True)
        all_scores = np.concatenate([s for state in self.categories.values() for s in state.scores])
        micro = image_metrics(all_scores, np.concatenate(list(labels.values())))
        float16_pool = [state for state in self.categories.values() if state.float16_counts is not None]
        wider_pool = [state.histograms for state in self.categories.values() if state.histograms is not None]
        if float16_pool:
            counts = np.sum([state.float16_counts for state in float16_pool], axis=0)
            n_regions = sum(state.n_regions for state in float16_pool)
            micro.update(histogram_metrics(*counts, n_regions, fpr_limit=self.fpr_limit))
        elif wider_pool:
            merged = merge_score_histograms(wider_pool, self.num_bins)
            micro.update(histogram_metrics(*merged.counts, merged.n_regions, fpr_limit=self.fpr_limit))
        table.loc["macro"] = [*macro, table["n_images"].sum(), table["n_anomalous"].sum()]
        table.loc["micro"] = [*(micro.get(key, NAN) for key in METRIC_COLUMNS), *table.loc["macro"].iloc[-2:]]
        table[["n_images", "n_anomalous"]] = table[["n_images", "n_anomalous"]].astype(int)
        table.index.name = "category"
        return table

    def reset(self) -> None:
        """Forget everything added so far."""
        self.categories = {}


_REQUIRED_KEYS = ("image", "mask", "label", "category")


def _category_counts(dataset: Dataset) -> dict[str, int] | None:
    """Images per category from ``dataset.samples`` without loading an image, else ``None``."""
    samples = getattr(dataset, "samples", None)
    if not isinstance(samples, Sequence) or not all(hasattr(sample, "category") for sample in samples):
        return None
    return dict(Counter(str(sample.category) for sample in samples))


def evaluate(
    predictor: AnomalyPredictor,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    pixel_size: int | Sequence[int] | None = None,
    progress: bool = True,
    output_dir: str | Path | None = None,
    expected_counts: Mapping[str, int] | None = None,
    map_dtype: npt.DTypeLike = np.float16,
    map_sigma: float = DEFAULT_MAP_SIGMA,
) -> pd.DataFrame:
    """Score every test image of ``dataset`` with ``predictor`` and tabulate the metrics.

    The predictor runs in eval mode (``.eval()`` is called if it has one; an ``nn.Module``
    is also moved to ``device``) under ``torch.inference_mode``. Each predicted map is first
    smoothed with a Gaussian of ``map_sigma`` pixels at the predictor's output resolution (the
    input image size), on ``device``; then maps whose size differs from the masks' (or
    ``pixel_size``) are resized bilinearly before scoring. Maps may be any real numbers (e.g.
    logit margins): the rank metrics and the float16-binned micro pooling need no range.

    Args:
        predictor: Callable ``predictor(images (B, 3, H, W)) -> AnomalyPrediction`` with
            ``pred_score (B,)`` and ``anomaly_map (B, h, w)``.
        dataset: Map-style dataset of dicts with ``image (3, S, S)``, ``mask (S, S)``,
            ``label`` (0/1), ``category`` (str) and optionally ``has_mask`` (bool).
        batch_size: Images per forward pass.
        num_workers: DataLoader worker processes.
        device: Where the images (and a module predictor) go.
        pixel_size: Side of the stored pixel maps (see :class:`AnomalyMetrics`); ``None`` keeps
            the masks' resolution.
        progress: Show a tqdm progress bar.
        output_dir: If given, write ``metrics.csv`` and ``metrics.json`` there.
        expected_counts: Images per category, so that each category's maps are freed as soon
            as it is complete; by default counted from ``dataset.samples`` (records with a
            ``category``, as :class:`feclip.data.AnomalyDataset` has) when there is such a list.
        map_dtype: Dtype of the stored pixel maps; ``np.float32`` avoids float16's rounding.
        map_sigma: Standard deviation in pixels of the Gaussian that smooths every map before the
            pixel metrics (scipy's ``gaussian_filter`` with its defaults, as the field's evaluation
            code uses it); ``0`` turns smoothing off.

    Returns:
        DataFrame indexed by category, then ``"macro"`` and ``"micro"``, with columns
        ``image_auroc, image_ap, image_f1max, pixel_auroc, pixel_ap, pixel_f1max, pixel_aupro``
        (fractions in ``[0, 1]``, ``NaN`` where undefined), ``n_images``, ``n_anomalous`` and
        ``map_sigma`` (the sigma used, in every row, so ``metrics.csv`` and ``metrics.json``
        keep it too; it is also in ``table.attrs["map_sigma"]``).
    """
    map_sigma = float(map_sigma)
    smooth_anomaly_maps(torch.zeros(1, 1, 1), map_sigma)  # check the sigma before any work
    if hasattr(predictor, "eval"):
        predictor.eval()
    if isinstance(predictor, torch.nn.Module):
        predictor.to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if expected_counts is None:
        expected_counts = _category_counts(dataset)
    metrics = AnomalyMetrics(pixel_size, expected_counts=expected_counts, map_dtype=map_dtype)
    with torch.inference_mode(), tqdm(total=len(loader), desc="evaluate", disable=not progress) as bar:
        for batch in loader:
            missing = [key for key in _REQUIRED_KEYS if key not in batch]
            if missing:
                raise KeyError(f"dataset items lack the keys {missing}; evaluate needs {list(_REQUIRED_KEYS)}")
            prediction = predictor(batch["image"].to(device))
            if not isinstance(prediction, AnomalyPrediction):
                raise TypeError(f"predictor must return an AnomalyPrediction, got {type(prediction).__name__}")
            maps = prediction.anomaly_map.float()
            maps = maps[:, 0] if maps.ndim == 4 else maps  # tolerate (B, 1, H, W) as update() does
            metrics.update(
                prediction.pred_score,
                batch["label"],
                smooth_anomaly_maps(maps, map_sigma),
                batch["mask"],
                batch.get("has_mask"),
                batch["category"],
            )
            bar.set_postfix(category=batch["category"][-1], refresh=False)
            bar.update()
    table = metrics.compute()
    table["map_sigma"] = map_sigma
    table.attrs["map_sigma"] = map_sigma
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(output_dir / "metrics.csv")
        records = table.astype(object).where(table.notna(), None).to_dict(orient="index")  # NaN -> null
        (output_dir / "metrics.json").write_text(json.dumps(records, indent=2) + "\n")
    return table


def format_percent(table: pd.DataFrame, decimals: int = 1) -> pd.DataFrame:
    """Metric columns as percentages rounded to ``decimals``; count columns untouched.

    Args:
        table: A table from :func:`evaluate` or :meth:`AnomalyMetrics.compute`.
        decimals: Digits after the decimal point.
    """
    formatted = table.copy()
    columns = [column for column in METRIC_COLUMNS if column in formatted.columns]
    formatted[columns] = (formatted[columns] * 100).round(decimals)
    return formatted
