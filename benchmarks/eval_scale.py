"""Time and peak memory of evaluate()'s metric stage at MVTec AD scale, without a model.

The stage is :class:`feclip.evaluate.AnomalyMetrics`: ``update`` per batch (resize the maps
and masks, store or bin the pixels) and ``compute`` (per-category, macro and micro metrics).
Inputs are synthetic maps and masks in 15 categories with the image counts of MVTec AD's
test set (1725 images in all, 1258 of them anomalous) and, for the full-resolution scenario,
mask sides of 700 to 1024 px per category (a stand-in for MVTec AD's image sizes). Anomalous images get one to three defects
(elliptic blobs and one-pixel scratches); maps are probabilities at the model's 336 px,
higher on the defects, so every metric is well defined and not trivial.

Two scenarios:

* ``336``: masks at 336 px, stored at 336 px (``pixel_size=336``);
* ``full``: masks at each category's full size (700 to 1024 px), maps resized up to it
  (``pixel_size=None``, evaluate()'s default).

Each category's batches are drawn (with rotated labels) from a pool of ``--pool`` batches
generated before the clock starts, so the timing counts the metric stage only. Time is
wall clock (``time.perf_counter``) and process CPU time summed over every ``update`` and
the final ``compute``. Peak memory is the process's resident-set high-water mark above its
size after the pools were generated (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``,
:func:`common._rss_peak`): numpy arrays, which torch's profiler would not see, count too.

Example::

    python benchmarks/eval_scale.py --scenarios 336 full --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import _rss_peak, benchmark_parser, environment, fmt_bytes, markdown_table, set_threads, write_report  # noqa: E402

from feclip.evaluate import AnomalyMetrics  # noqa: E402

# MVTec AD's test split: category -> (images, anomalous images, our stand-in mask side in pixels).
MVTEC_TEST_SET = {
    "bottle": (83, 63, 900), "cable": (150, 92, 1024), "capsule": (132, 109, 1000), "carpet": (117, 89, 1024),
    "grid": (78, 57, 1024), "hazelnut": (110, 70, 1024), "leather": (124, 92, 1024), "metal_nut": (115, 93, 700),
    "pill": (167, 141, 800), "screw": (160, 119, 1024), "tile": (117, 84, 840), "toothbrush": (42, 30, 1024),
    "transistor": (100, 40, 1024), "wood": (79, 60, 1024), "zipper": (151, 119, 1024),
}
MAP_SIZE = 336
GOALS = {"336": {"seconds": 60.0, "bytes": 4 * 2**30}}
COLUMNS = ("scenario", "images", "categories", "map_px", "stored_px", "pixels", "map_dtype", "threads",
           "seconds", "cpu_seconds", "update_s", "compute_s", "peak_rss", "goal", "verdict", "micro_pixel_aupro")


def synthetic_batch(rng: np.random.Generator, batch: int, mask_size: int, anomalous: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps ``(B, 336, 336)`` in ``[0, 1]`` and masks ``(B, S, S)``; the first ``anomalous`` images have defects."""
    masks = np.zeros((batch, mask_size, mask_size), dtype=bool)
    rows, cols = np.ogrid[:mask_size, :mask_size]
    for index in range(anomalous):
        for _ in range(rng.integers(1, 4)):
            centre = rng.integers(0, mask_size, size=2)
            if rng.random() < 0.25:  # a one-pixel-wide scratch
                length = int(rng.integers(mask_size // 20, mask_size // 4))
                masks[index, centre[0], max(0, centre[1] - length // 2) : centre[1] + length // 2] = True
            else:
                radii = rng.integers(3, mask_size // 12, size=2)
                masks[index] |= ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], MAP_SIZE)[:, 0]
    noise = torch.from_numpy(rng.random((batch, MAP_SIZE, MAP_SIZE), dtype=np.float32))
    maps = (0.7 * noise + 0.3 * small.clamp(0, 1) + 0.1 * (small > 0).float()).clamp(0, 1)
    return maps, torch.from_numpy(masks)


def build_pools(scenario: str, scale: float, pool: int, batch: int, seed: int) -> dict[str, list[tuple]]:
    """Per category, ``pool`` batches of ``(maps, masks, labels)`` and the category's image counts."""
    rng = np.random.default_rng(seed)
    pools = {}
    for category, (images, anomalous, side) in MVTEC_TEST_SET.items():
        mask_size = side if scenario == "full" else MAP_SIZE
        batches = []
        for _ in range(pool):
            maps, masks = synthetic_batch(rng, batch, mask_size, batch // 2)
            labels = masks.flatten(1).any(dim=1).to(torch.int64)
            batches.append((maps, masks, labels))
        count = max(2, round(images * scale))
        pools[category] = [(count, max(1, min(count - 1, round(anomalous * scale)))), batches]
    return pools


def _batches_of(category_pool: list, batch: int):
    """Yield ``(maps, masks, labels)`` batches: the category's anomalous images, then its normal ones.

    Images are taken from the pool's batches in turn, so ``n_anomalous`` and ``count - n_anomalous``
    are met exactly, whatever the pool holds.
    """
    (count, n_anomalous), pool = category_pool
    rows = {label: [(p, int(r)) for p in range(len(pool)) for r in torch.nonzero(pool[p][2] == label).flatten()]
            for label in (0, 1)}
    wanted = {1: n_anomalous, 0: count - n_anomalous}
    items = [rows[label][i % len(rows[label])] for label in (1, 0) for i in range(wanted[label])]
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        yield tuple(torch.stack([pool[p][part][r] for p, r in chunk]) for part in range(3))


def run_scenario(scenario: str, *, scale: float, pool: int, batch: int, map_dtype: str, seed: int) -> dict[str, Any]:
    pools = build_pools(scenario, scale, pool, batch, seed)
    counts = {category: entry[0][0] for category, entry in pools.items()}
    pixel_size = MAP_SIZE if scenario == "336" else None
    timers = {"update": 0.0, "compute": 0.0, "cpu": 0.0}
    result: dict[str, Any] = {}

    def stage() -> None:
        metrics = AnomalyMetrics(pixel_size, expected_counts=counts, map_dtype=np.dtype(map_dtype))
        for category, category_pool in pools.items():
            for maps, masks, labels in _batches_of(category_pool, batch):
                scores = maps.flatten(1).amax(dim=1)
                start, cpu = time.perf_counter(), time.process_time()
                metrics.update(scores, labels, maps, masks, category=category)
                timers["update"] += time.perf_counter() - start
                timers["cpu"] += time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        result["table"] = metrics.compute()
        timers["compute"] += time.perf_counter() - start
        timers["cpu"] += time.process_time() - cpu

    peak = _rss_peak(stage)
    table = result["table"]
    images = int(table.loc["micro", "n_images"])
    side = {c: (MAP_SIZE if scenario == "336" else MVTEC_TEST_SET[c][2]) for c in counts}
    seconds = timers["update"] + timers["compute"]
    goal = GOALS.get(scenario)
    verdict = ""
    if goal:
        verdict = "PASS" if seconds < goal["seconds"] and peak < goal["bytes"] else "FAIL"
    return {
        "scenario": scenario, "images": images, "categories": len(counts), "map_px": MAP_SIZE,
        "stored_px": "336" if scenario == "336" else f"{min(side.values())}-{max(side.values())}",
        "pixels": float(sum(counts[c] * side[c] ** 2 for c in counts)), "map_dtype": map_dtype,
        "threads": torch.get_num_threads(), "seconds": seconds, "cpu_seconds": timers["cpu"],
        "update_s": timers["update"], "compute_s": timers["compute"], "peak_rss": fmt_bytes(peak), "peak_bytes": peak,
        "goal": f"< {goal['seconds']:.0f} s, < {fmt_bytes(goal['bytes'])}" if goal else "",
        "verdict": verdict, "micro_pixel_aupro": float(table.loc["micro", "pixel_aupro"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, device=None, rounds=None, warmup=None, clock=False)
    parser.set_defaults(threads=1)
    parser.add_argument("--scenarios", nargs="+", choices=("336", "full"), default=["336", "full"])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of MVTec AD's image counts (1 = 1725 images)")
    parser.add_argument("--batch", type=int, default=8, help="images per update (evaluate()'s default batch)")
    parser.add_argument("--pool", type=int, default=4, help="distinct pre-generated batches per category")
    parser.add_argument("--map-dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1 or args.batch < 2 or args.pool < 1:
        parser.error("need 0 < --scale <= 1, --batch >= 2 and --pool >= 1")
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the metric-stage benchmark; returns one row per scenario."""
    args = parse_args(argv)
    set_threads(args.threads)
    rows = [run_scenario(s, scale=args.scale, pool=args.pool, batch=args.batch, map_dtype=args.map_dtype, seed=args.seed)
            for s in args.scenarios]
    table = markdown_table(rows, COLUMNS)
    print(table)
    write_report(args, environment(torch.device("cpu")), table, rows=rows)
    return rows


if __name__ == "__main__":
    main()
