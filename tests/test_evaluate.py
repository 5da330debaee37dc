"""evaluate() and AnomalyMetrics on a tiny in-memory dataset with fake predictors whose metrics are known."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import Dataset

from feclip.evaluate import AnomalyMetrics, evaluate, format_percent, resize_maps, resize_masks
from feclip.metrics import METRIC_COLUMNS, PIXEL_METRICS, image_metrics, pixel_metrics
from feclip.predictor import AnomalyPrediction

SIZE = 16


class TinyDataset(Dataset):
    """Data-item dicts whose image carries the answer: channel 0 is the mask, channel 1 the label, 2 noise."""

    def __init__(self, categories: dict[str, int], seed: int = 0, no_mask: tuple[str, ...] = ()) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for category, count in categories.items():
            for index in range(count):
                label = index % 2  # alternate normal / anomalous
                mask = np.zeros((SIZE, SIZE), np.float32)
                if label:
                    for _ in range(rng.integers(1, 3)):  # 2 x 2 aligned blocks, one or two regions
                        top, left = 2 * rng.integers(0, SIZE // 2, size=2)
                        mask[top : top + 2, left : left + 2] = 1.0
                image = np.stack([mask, np.full_like(mask, label), rng.random((SIZE, SIZE), dtype=np.float32)])
                has_mask = not (label and category in no_mask)
                self.items.append(
                    {
                        "image": torch.from_numpy(image),
                        "mask": torch.from_numpy(mask if has_mask else np.zeros_like(mask)),
                        "label": label,
                        "category": category,
                        "defect_type": "scratch" if label else "good",
                        "path": f"{category}/{index:03d}.png",
                        "has_mask": has_mask,
                    }
                )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


class PerfectPredictor(nn.Module):
    """Reads the answer off the image; also records that evaluate() put it in eval mode."""

    def __init__(self, map_size: int = SIZE) -> None:
        super().__init__()
        self.map_size = map_size
        self.was_training: list[bool] = []

    def forward(self, images: Tensor) -> AnomalyPrediction:
        self.was_training.append(self.training)
        maps = images[:, 0]
        if self.map_size != SIZE:  # block-average: bilinear upsampling must still rank defects first
            maps = F.avg_pool2d(maps[:, None], SIZE // self.map_size)[:, 0]
        return AnomalyPrediction(pred_score=images[:, 1, 0, 0], anomaly_map=maps)


def inverted_predictor(images: Tensor) -> AnomalyPrediction:
    return AnomalyPrediction(pred_score=1 - images[:, 1, 0, 0], anomaly_map=1 - images[:, 0])


def noisy_predictor(images: Tensor) -> AnomalyPrediction:
    maps = 0.6 * images[:, 2] + 0.3 * images[:, 0]
    return AnomalyPrediction(pred_score=maps.amax(dim=(1, 2)), anomaly_map=maps)


def reference_metrics(dataset: TinyDataset, category: str) -> dict[str, float]:
    items = [item for item in dataset.items if item["category"] == category]
    images = torch.stack([item["image"] for item in items])
    prediction = noisy_predictor(images)
    masks = torch.stack([item["mask"] for item in items]).numpy() > 0.5
    result = image_metrics(prediction.pred_score.numpy(), np.array([item["label"] for item in items]))
    maps = prediction.anomaly_map.numpy().astype(np.float16).astype(np.float32)  # as stored
    return result | pixel_metrics(maps, masks)


def test_perfect_and_inverted_predictors(tmp_path: Path) -> None:
    dataset = TinyDataset({"bottle": 6, "cable": 5})
    predictor = PerfectPredictor()
    predictor.train()
    table = evaluate(predictor, dataset, batch_size=4, progress=False, map_sigma=0, output_dir=tmp_path)
    assert predictor.was_training and not any(predictor.was_training)
    assert list(table.index) == ["bottle", "cable", "macro", "micro"]
    assert np.allclose(table[list(METRIC_COLUMNS)].to_numpy(), 1.0)
    assert table.loc["bottle", "n_images"] == 6 and table.loc["cable", "n_anomalous"] == 2
    assert table.loc["micro", "n_images"] == 11

    inverted = evaluate(inverted_predictor, dataset, batch_size=3, progress=False, map_sigma=0)
    for row in ("bottle", "cable", "macro", "micro"):
        assert inverted.loc[row, "image_auroc"] == 0.0
        assert inverted.loc[row, "pixel_auroc"] == 0.0
        assert inverted.loc[row, "pixel_aupro"] == 0.0

    written = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert records["macro"]["pixel_aupro"] == pytest.approx(1.0) and records["bottle"]["n_images"] == 6


def test_values_macro_and_micro_against_references() -> None:
    dataset = TinyDataset({"bottle": 8, "cable": 7, "wood": 6}, seed=1)
    table = evaluate(noisy_predictor, dataset, batch_size=5, progress=False, map_sigma=0)  # batches straddle categories
    for category in ("bottle", "cable", "wood"):
        expected = reference_metrics(dataset, category)
        assert table.loc[category, list(METRIC_COLUMNS)].to_dict() == pytest.approx(expected, abs=1e-12)
    # Macro: one metric by hand, then all of them via the mean.
    per_category = table.loc[["bottle", "cable", "wood"]]
    aupro_b, aupro_c, aupro_w = per_category["pixel_aupro"]
    assert table.loc["macro", "pixel_aupro"] == pytest.approx((aupro_b + aupro_c + aupro_w) / 3)
    assert table.loc["macro", list(METRIC_COLUMNS)].to_numpy() == pytest.approx(
        per_category[list(METRIC_COLUMNS)].mean().to_numpy()
    )
    # Micro: everything pooled, images exactly, pixels through the histograms of the stored maps.
    images = torch.stack([item["image"] for item in dataset.items])
    prediction = noisy_predictor(images)
    labels = np.array([item["label"] for item in dataset.items])
    masks = images[:, 0].numpy() > 0.5
    maps = prediction.anomaly_map.numpy()
    assert table.loc["micro", "image_auroc"] == pytest.approx(roc_auc_score(labels, prediction.pred_score), abs=1e-12)
    assert table.loc["micro", "image_ap"] == pytest.approx(average_precision_score(labels, prediction.pred_score))
    stored = maps.astype(np.float16).astype(np.float32)
    micro = table.loc["micro"]
    # float16 maps are pooled with one histogram bin per float16 value: exact.
    assert micro["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), stored.ravel()), abs=1e-9)
    assert micro["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), stored.ravel()), abs=1e-9)
    assert micro[list(PIXEL_METRICS)].to_dict() == pytest.approx(pixel_metrics(stored, masks), abs=1e-9)
    # Stored at full precision, only the histogram bins round: still within 1e-4 of the raw scores.
    exact = evaluate(noisy_predictor, dataset, batch_size=5, progress=False, map_sigma=0, map_dtype=np.float32)
    micro = exact.loc["micro"]
    assert micro["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert micro["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert micro[list(PIXEL_METRICS)].to_dict() == pytest.approx(pixel_metrics(maps, masks), abs=1e-4)
    bottle = pixel_metrics(maps[:8], masks[:8])  # per category, float32 storage keeps the exact scores
    assert exact.loc["bottle", list(PIXEL_METRICS)].to_dict() == pytest.approx(bottle, abs=1e-12)


def test_missing_masks_skip_pixel_metrics_only() -> None:
    dataset = TinyDataset({"bottle": 6, "candle": 6}, seed=2, no_mask=("candle",))
    table = evaluate(noisy_predictor, dataset, batch_size=4, progress=False, map_sigma=0)
    assert all(math.isnan(table.loc["candle", column]) for column in PIXEL_METRICS)
    assert not math.isnan(table.loc["candle", "image_auroc"])
    bottle = reference_metrics(dataset, "bottle")
    for column in PIXEL_METRICS:  # macro and micro pixel metrics come from bottle alone
        assert table.loc["macro", column] == pytest.approx(bottle[column])
        assert table.loc["micro", column] == pytest.approx(bottle[column], abs=1e-3)


def test_small_maps_are_resized_to_the_masks() -> None:
    table = evaluate(PerfectPredictor(map_size=SIZE // 2), TinyDataset({"grid": 6}), batch_size=6, progress=False, map_sigma=0)
    assert np.allclose(table[list(METRIC_COLUMNS)].to_numpy(), 1.0)


def test_reduced_pixel_size_matches_manual_downsampling() -> None:
    dataset = TinyDataset({"tile": 7}, seed=3)
    table = evaluate(noisy_predictor, dataset, batch_size=4, progress=False, map_sigma=0, pixel_size=8)
    images = torch.stack([item["image"] for item in dataset.items])
    maps = F.interpolate(noisy_predictor(images).anomaly_map[:, None], size=8, mode="bilinear", antialias=True)[:, 0]
    masks = F.max_pool2d(images[:, :1], 2)[:, 0] > 0.5
    expected = pixel_metrics(maps.numpy().astype(np.float16).astype(np.float32), masks.numpy())
    assert table.loc["tile", list(PIXEL_METRICS)].to_dict() == pytest.approx(expected, abs=1e-12)


def test_resize_helpers() -> None:
    masks = torch.zeros(1, 8, 8)
    masks[0, 5, 2] = 1.0  # a one-pixel defect survives shrinking
    small = resize_masks(masks, 4)
    assert small.dtype == torch.bool and small.sum() == 1 and small[0, 2, 1]
    assert resize_masks(small.float(), 8).sum() == 4  # nearest growth: 2 x 2
    maps = torch.rand(2, 5, 7)
    assert resize_maps(maps, (5, 7)) is maps
    assert resize_maps(maps, (10, 14)).shape == (2, 10, 14)


def test_accumulator_frees_complete_categories_and_validates() -> None:
    metrics = AnomalyMetrics(expected_counts={"a": 4})
    maps = torch.rand(4, 8, 8)
    masks = torch.zeros(4, 8, 8)
    masks[2:, :3, :3] = 1
    labels = torch.tensor([0, 0, 1, 1])
    metrics.update(maps.amax((1, 2)), labels, maps, masks, category="a")
    assert metrics.categories["a"].result is not None and metrics.categories["a"].maps == []
    with pytest.raises(ValueError, match="after it was finalised"):
        metrics.update(maps.amax((1, 2)), labels, maps, masks, category="a")
    with pytest.raises(ValueError, match="values in"):
        metrics.update(maps.amax((1, 2)), torch.tensor([0, 2, 1, 1]), maps, masks, category="b")
    with pytest.raises(ValueError, match="NaN"):
        metrics.update(maps.amax((1, 2)), labels, maps * float("nan"), masks, category="c")
    with pytest.raises(ValueError, match="no batches"):
        AnomalyMetrics().compute()


def test_counts_from_dataset_samples_free_categories_early() -> None:
    dataset = TinyDataset({"bottle": 4, "cable": 4})
    dataset.samples = [SimpleNamespace(category=item["category"]) for item in dataset.items]
    table = evaluate(PerfectPredictor(), dataset, batch_size=3, progress=False, map_sigma=0)
    assert table.loc["bottle", "pixel_aupro"] == 1.0
    dataset.samples = dataset.samples[1:]  # claims 3 bottles, yields 4: the counts are really used
    with pytest.raises(ValueError, match="'bottle' got more images after it was finalised with 3"):
        evaluate(PerfectPredictor(), dataset, batch_size=3, progress=False, map_sigma=0)


def test_normal_images_without_mask_count_as_all_normal() -> None:
    maps = torch.zeros(3, 4, 4)
    masks = torch.zeros(3, 4, 4)
    maps[1, 0, 0] = masks[1, 0, 0] = 1.0  # the anomalous image's defect is found
    maps[2, 1, 1] = masks[2, 1, 1] = 1.0  # a stray mask pixel on a normal image without a mask
    metrics = AnomalyMetrics()
    metrics.update(torch.tensor([0.1, 0.9, 0.2]), torch.tensor([0, 1, 0]), maps, masks, [True, True, False])
    table = metrics.compute()
    assert list(table.index) == ["all", "macro", "micro"]
    # The stray pixel is a false positive at score 1: AUROC = 1 - (1/2) / 47 (tie with the defect).
    assert table.loc["all", "pixel_auroc"] == pytest.approx(1 - 0.5 / 47)
    assert table.loc["all", "pixel_ap"] == pytest.approx(0.5)


def test_format_percent() -> None:
    table = pd.DataFrame({"image_auroc": [0.98765, float("nan")], "n_images": [10, 20]}, index=["a", "macro"])
    formatted = format_percent(table, decimals=1)
    assert formatted.loc["a", "image_auroc"] == 98.8 and math.isnan(formatted.loc["macro", "image_auroc"])
    assert formatted["n_images"].tolist() == [10, 20] and table.loc["a", "image_auroc"] == 0.98765


# ---- map smoothing (map_sigma) and maps that are not probabilities
def test_maps_are_smoothed_at_the_output_resolution_before_any_resize() -> None:
    from scipy import ndimage

    dataset = TinyDataset({"tile": 7}, seed=4)
    table = evaluate(noisy_predictor, dataset, batch_size=3, progress=False, pixel_size=8, map_sigma=1.5,
                     map_dtype=np.float32)
    images = torch.stack([item["image"] for item in dataset.items])
    maps = noisy_predictor(images).anomaly_map.double().numpy()
    smoothed = np.stack([ndimage.gaussian_filter(m, 1.5) for m in maps])  # the field's scipy call, at 16 px
    resized = resize_maps(torch.from_numpy(smoothed).float(), 8).numpy()  # then down to the stored 8 px
    masks = resize_masks(images[:, 0], 8).numpy()
    assert table.loc["tile", list(PIXEL_METRICS)].to_dict() == pytest.approx(pixel_metrics(resized, masks), abs=1e-6)
    swapped = np.stack([ndimage.gaussian_filter(m, 1.5) for m in resize_maps(torch.from_numpy(maps).float(), 8).numpy()])
    assert table.loc["tile", "pixel_aupro"] != pytest.approx(pixel_metrics(swapped, masks)["pixel_aupro"], abs=1e-6)


def test_the_table_records_its_map_sigma_in_every_writer(tmp_path: Path) -> None:
    dataset = TinyDataset({"bottle": 6})
    default = evaluate(noisy_predictor, dataset, batch_size=6, progress=False, output_dir=tmp_path)
    assert default.attrs["map_sigma"] == 4.0 and (default["map_sigma"] == 4.0).all()
    explicit = evaluate(noisy_predictor, dataset, batch_size=6, progress=False, map_sigma=4)
    pd.testing.assert_frame_equal(default, explicit)
    with_channel = evaluate(lambda x: AnomalyPrediction(noisy_predictor(x).pred_score, noisy_predictor(x).anomaly_map[:, None]),
                            dataset, batch_size=6, progress=False)  # maps (B, 1, H, W) are smoothed alike
    pd.testing.assert_frame_equal(default, with_channel)
    unsmoothed = evaluate(noisy_predictor, dataset, batch_size=6, progress=False, map_sigma=0)
    assert unsmoothed.loc["bottle", "pixel_aupro"] != default.loc["bottle", "pixel_aupro"]
    assert unsmoothed.loc["bottle", "image_auroc"] == default.loc["bottle", "image_auroc"]  # image scores untouched
    assert pd.read_csv(tmp_path / "metrics.csv", index_col="category")["map_sigma"].tolist() == [4.0] * 3
    assert json.loads((tmp_path / "metrics.json").read_text())["micro"]["map_sigma"] == 4.0
    with pytest.raises(ValueError, match="map sigma must be a finite number >= 0"):
        evaluate(noisy_predictor, dataset, progress=False, map_sigma=-2)


def margin_predictor(images: Tensor) -> AnomalyPrediction:
    """Logit margins in [-20, 20]: far outside [0, 1], the old histogram range."""
    maps = 40.0 * (0.6 * images[:, 2] + 0.3 * images[:, 0]) - 20.0
    return AnomalyPrediction(pred_score=maps.amax(dim=(1, 2)), anomaly_map=maps)


def test_micro_pixel_metrics_of_logit_margins_agree_with_sklearn() -> None:
    dataset = TinyDataset({"bottle": 8, "cable": 7, "wood": 6}, seed=5)
    table = evaluate(margin_predictor, dataset, batch_size=5, progress=False, map_sigma=0)
    images = torch.stack([item["image"] for item in dataset.items])
    stored = margin_predictor(images).anomaly_map.numpy().astype(np.float16).astype(np.float64)
    assert stored.min() < -10 and stored.max() > 10
    masks = images[:, 0].numpy() > 0.5
    micro = table.loc["micro"]
    # float16 margins of magnitude >= 1 are multiples of 2**-10, the merged bin width: only the few
    # between -1 and 1 can share a bin with another value.
    assert micro["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), stored.ravel()), abs=1e-6)
    assert micro["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), stored.ravel()), abs=1e-6)
    assert micro[list(PIXEL_METRICS)].to_dict() == pytest.approx(pixel_metrics(stored, masks), abs=1e-6)
    per_category = pixel_metrics(stored[8:15], masks[8:15])  # rank metrics do not care about the range
    assert table.loc["cable", list(PIXEL_METRICS)].to_dict() == pytest.approx(per_category, abs=1e-12)
