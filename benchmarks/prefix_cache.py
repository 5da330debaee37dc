"""Epoch time of FE-CLIP training with and without the frozen-prefix cache (``TrainConfig.cache_prefix``).

Both variants run the library's own :func:`feclip.train.train` on the same in-memory data set of random
images at the backbone's input size (no image decoding: what is timed is the model's work; a real loader
adds the same decoding time to both), interleaved round by round: every round trains a fresh model
without the cache, then with it (the order alternates between rounds). Epoch times are the trainer's own
``time_s``: wall clock, or with ``--clock process`` this process's CPU seconds (the trainer's epoch timer
is pointed at ``time.process_time``; with ``--threads 1`` on a shared machine this counts the work done,
not the time spent waiting for a core). Epoch 1 fills the cache; epochs 2 and later start at the first
tapped block.

Next to the measured speed-up of epochs 2+ the script prints the analytic share of a training step's
matmul FLOPs the cache skips (:func:`flops.training_step_flops`: the patch embedding and every block
before the first tap, which have no backward pass anyway), and the cache's size for the data set.

Example::

    python benchmarks/prefix_cache.py --backbones feclip-tiny ViT-B-16 --images 16 --epochs 3 --threads 1 --clock process
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, build_feclip, create_backbone, environment, markdown_table, set_threads, write_report  # noqa: E402
from flops import VitShape, training_step_flops  # noqa: E402

import feclip.train.loop  # noqa: E402
from feclip.train import TrainConfig, train  # noqa: E402

COLUMNS = ("backbone", "device", "images", "batch", "taps", "threads", "clock", "uncached_epoch1_s", "cached_epoch1_s",
           "uncached_later_s", "cached_later_s", "speedup_later", "flop_share_skipped", "flop_bound", "cache_mib")


class RandomImages(Dataset):
    """``n`` random images at ``size`` px with a square defect on every other one; fixed, and it says so."""

    deterministic = True

    def __init__(self, n: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.zeros(n, size, size)
        self.masks[1::2, size // 4 : size // 2, size // 4 : size // 2] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "mask": self.masks[index], "label": index % 2, "has_mask": True}


@contextlib.contextmanager
def _epoch_clock(clock: str) -> Iterator[None]:
    """Point the trainer's epoch timer at the chosen clock (its ``time.perf_counter`` is the wall clock)."""
    if clock == "wall":
        yield
        return
    original = feclip.train.loop.time
    feclip.train.loop.time = SimpleNamespace(perf_counter=time.process_time)
    try:
        yield
    finally:
        feclip.train.loop.time = original


def _epoch_times(backbone: str, device: torch.device, dataset: Dataset, config: TrainConfig, clock: str) -> list[float]:
    """Train a fresh FE-CLIP on ``dataset``; the trainer's seconds per epoch on ``clock``."""
    model = build_feclip(create_backbone(backbone, device), backbone, device)
    with tempfile.TemporaryDirectory() as out_dir, _epoch_clock(clock):
        history = train(model, dataset, config, out_dir=out_dir, progress=False)
    return history.column("time_s")


def run_case(backbone: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Time one backbone's training with and without the cache; one result row."""
    shape = VitShape.from_open_clip_config(backbone)
    dataset = RandomImages(args.images, shape.image_size)
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch, num_workers=0, device=device.type, lr=1e-4,
                       fc_patch_lr=1e-6)
    times: dict[bool, list[list[float]]] = {False: [], True: []}
    for round_index in range(args.rounds):
        for cached in (False, True) if round_index % 2 == 0 else (True, False):
            config = dataclasses.replace(base, cache_prefix=cached)
            times[cached].append(_epoch_times(backbone, device, dataset, config, args.clock))
    model = build_feclip(create_backbone(backbone, device), backbone, device)
    taps = model.tap_indices
    flops = training_step_flops(shape, taps, batch=args.batch)
    later = {cached: statistics.median(t for run in runs for t in run[1:]) for cached, runs in times.items()}
    first = {cached: statistics.median(run[0] for run in runs) for cached, runs in times.items()}
    row = {
        "backbone": backbone, "device": device.type, "images": args.images, "batch": args.batch, "taps": taps,
        "threads": torch.get_num_threads(), "clock": args.clock, "rounds": args.rounds, "epochs": args.epochs,
        "uncached_epoch1_s": first[False], "cached_epoch1_s": first[True],
        "uncached_later_s": later[False], "cached_later_s": later[True],
        "speedup_later": later[False] / later[True],
        "flop_share_skipped": flops["prefix_share"], "flop_bound": 1 / (1 - flops["prefix_share"]),
        "cache_mib": args.images * shape.tokens * shape.width * (4 if device.type == "cpu" else 2) / 2**20,
        "samples": {"uncached": times[False], "cached": times[True]},
    }
    print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, device="cpu", rounds=2, warmup=None)
    parser.add_argument("--backbones", nargs="+", default=["feclip-tiny", "ViT-B-16"], help="open_clip model names")
    parser.add_argument("--images", type=int, default=16, help="training images (default: 16)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; epoch 1 fills the cache (default: 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns one row per backbone."""
    args = parse_args(argv)
    if args.epochs < 2:
        raise ValueError("--epochs must be at least 2: the cache only helps from the second epoch on")
    if args.clock == "process" and args.device != "cpu":
        raise ValueError("--clock process counts this process's CPU time: meaningless for a GPU (use --clock wall)")
    set_threads(args.threads)
    device = torch.device(args.device)
    print(markdown_table([], COLUMNS), flush=True)
    rows = [run_case(backbone, device, args) for backbone in args.backbones]
    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    write_report(args, environment(device), table, rows=rows)
    return rows


if __name__ == "__main__":
    main()
