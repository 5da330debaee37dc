"""Images/s of the real training loader on VisA-sized JPEGs, against the GPU's training step rate.

Writes ``--images`` synthetic JPEGs of 1500 x 1000 pixels (about VisA's size; smooth colour
fields with noise, about 200 KiB each at quality 90; the table reports the mean) in VisA's released
layout (``<category>/Data/Images/{Normal,Anomaly}``, PNG masks, ``split_csv/1cls.csv``) into
a temporary folder, then times the loader the trainer uses: :class:`feclip.data.VisA`
(test split, which is what FE-CLIP trains on) with an ``AnomalyTransform`` at 336 px, in a
``DataLoader`` at batch 16, shuffled, for ``num_workers`` in 0, 1, 2 and the trainer's
default (``TrainConfig.num_workers``). Workers are persistent: one untimed epoch starts them,
then ``--epochs`` epochs are timed; configurations run in an order rotated per round and the
median over ``--rounds`` is reported.

A second table splits one image's cost (decode, resize + normalise, mask) in one process:
what a worker spends per image, hence how many workers keep up with the GPU. The
verdict compares the default's rate with ``--gpu-rate`` (237 images/s: one training step of
ViT-L-14-336 at batch 16 in bf16 on an H100, benchmarks/RESULTS.md).

    python benchmarks/loader.py                       # 128 images, workers 0, 1, 2 and the default
    python benchmarks/loader.py --images 256 --workers 0 2 4 8 16 --json runs/loader.json
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, environment, markdown_table, write_report  # noqa: E402

from feclip.data import AnomalyTransform, VisA, load_mask, load_rgb  # noqa: E402

GPU_IMAGES_PER_S = 237.0  # ViT-L-14-336, batch 16, bf16, H100 (benchmarks/RESULTS.md, train_step.py)
IMAGE_WH = (1500, 1000)


def default_num_workers() -> int:
    """The trainer's default ``num_workers`` (``TrainConfig``), so this follows it when it changes."""
    from feclip.train import TrainConfig

    spec = next(f for f in dataclasses.fields(TrainConfig) if f.name == "num_workers")
    return int(spec.default_factory() if spec.default is dataclasses.MISSING else spec.default)


def _photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random colour field plus sensor-like noise, ``(height, width, 3)`` uint8."""
    coarse = Image.fromarray(rng.integers(40, 220, size=(height // 100, width // 100, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    return np.clip(smooth + rng.normal(0.0, 3.0, size=smooth.shape), 0, 255).astype(np.uint8)


def write_visa_like(root: Path, images: int, anomaly_fraction: float = 0.25, seed: int = 0,
                    size: tuple[int, int] = IMAGE_WH) -> Path:
    """Write ``images`` test images in VisA's released layout under ``root``; returns ``root``.

    Eight distinct pictures are reused under different names (decoding cost does not depend
    on the name, and writing 1500 x 1000 JPEGs is slow); every ``1 / anomaly_fraction``-th
    image is anomalous with a PNG mask of the image's size.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    pictures = [_photo_like(rng, width, height) for _ in range(8)]
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 3: height // 2, width // 4: width // 3] = 255
    rows = ["object,split,label,image,mask"]
    category = root / "pcb1"
    every = max(1, round(1 / anomaly_fraction)) if anomaly_fraction > 0 else 0
    for index in range(images):
        anomalous = every and index % every == 0
        folder = "Anomaly" if anomalous else "Normal"
        image_path = category / "Data" / "Images" / folder / f"{index:04d}.JPG"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pictures[index % len(pictures)]).save(image_path, quality=90)
        mask_field = ""
        if anomalous:
            mask_path = category / "Data" / "Masks" / "Anomaly" / f"{index:04d}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
            mask_field = str(mask_path.relative_to(root))
        rows.append(f"pcb1,test,{'anomaly' if anomalous else 'normal'},{image_path.relative_to(root)},{mask_field}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def _loader(dataset: VisA, workers: int, batch_size: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def _epoch_seconds(loader: DataLoader) -> float:
    start = time.perf_counter()
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 336, 336)
    return time.perf_counter() - start


def measure_workers(dataset: VisA, workers: list[int], batch_size: int, epochs: int, rounds: int,
                    pin_memory: bool) -> dict[int, dict[str, Any]]:
    """Median images/s of each worker count, over rounds whose order rotates; plus the start-up epoch."""
    loaders = {w: _loader(dataset, w, batch_size, pin_memory) for w in workers}
    first_epoch = {w: _epoch_seconds(loaders[w]) for w in workers}  # starts the persistent workers
    rates: dict[int, list[float]] = {w: [] for w in workers}
    for round_index in range(rounds):
        offset = round_index % len(workers)
        for w in workers[offset:] + workers[:offset]:
            seconds = sum(_epoch_seconds(loaders[w]) for _ in range(epochs))
            rates[w].append(epochs * len(dataset) / seconds)
    del loaders  # stops the workers
    return {w: {"images_per_s": statistics.median(rates[w]), "samples": rates[w],
                "first_epoch_images_per_s": len(dataset) / first_epoch[w]} for w in workers}


def breakdown(dataset: VisA, images: int) -> dict[str, float]:
    """Milliseconds per image of each step of ``__getitem__``, in this process (one core)."""
    samples = dataset.samples[:images]
    masked = [s for s in samples if s.mask_path is not None]
    transform = dataset.transform

    def per_image(fn, items) -> float:
        if not items:
            return math.nan
        start = time.perf_counter()
        for item in items:
            fn(item)
        return 1000 * (time.perf_counter() - start) / len(items)

    decoded = {s.image_path: load_rgb(s.image_path) for s in samples}
    decode_ms = per_image(lambda s: load_rgb(s.image_path), samples)
    transform_ms = per_image(lambda s: transform.image(decoded[s.image_path]), samples)
    mask_ms = per_image(lambda s: transform.mask(load_mask(s.mask_path)), masked)
    getitem_ms = per_image(lambda i: dataset[i], range(len(samples)))
    share = len(masked) / len(samples)
    return {"decode_ms": decode_ms, "resize_normalise_ms": transform_ms, "mask_ms_per_masked_image": mask_ms,
            "masked_share": share, "getitem_ms": getitem_ms, "images_per_s_per_core": 1000 / getitem_ms}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; returns one row per worker count (and prints the tables)."""
    parser = benchmark_parser(__doc__, device=None, rounds=2, warmup=None, clock=False, threads=False)
    parser.add_argument("--images", type=int, default=128, help="images written and loaded per epoch")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="num_workers values (default: 0 1 2 and the trainer's default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per round")
    parser.add_argument("--size", type=int, nargs=2, default=list(IMAGE_WH), metavar=("W", "H"))
    parser.add_argument("--gpu-rate", type=float, default=GPU_IMAGES_PER_S, help="GPU training images/s to compare")
    parser.add_argument("--data", type=Path, default=None, help="folder for the images (default: a temporary one)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # as in a DataLoader worker; the main process only collates
    default = default_num_workers()
    workers = sorted(set(args.workers if args.workers is not None else [0, 1, 2, default]))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="feclip-loader-") as scratch:
        root = write_visa_like(args.data or Path(scratch), args.images, size=tuple(args.size))
        jpeg_kib = statistics.mean(p.stat().st_size for p in root.glob("pcb1/Data/Images/*/*.JPG")) / 1024
        dataset = VisA(root, split="test", transform=AnomalyTransform(image_size=args.image_size))
        parts = breakdown(dataset, min(32, len(dataset)))
        results = measure_workers(dataset, workers, args.batch_size, args.epochs, args.rounds,
                                  pin_memory=torch.cuda.is_available())
    load_after = os.getloadavg()
    rows = []
    for w in workers:
        rate = results[w]["images_per_s"]
        rows.append({"num_workers": w, "default": "yes" if w == default else "", "images_per_s": rate,
                     "first_epoch_images_per_s": results[w]["first_epoch_images_per_s"],
                     "vs_gpu": rate / args.gpu_rate, "bottleneck": "yes" if rate < args.gpu_rate else "no"})
    per_core = parts["images_per_s_per_core"]
    needed = math.ceil(args.gpu_rate / per_core)
    columns = ["num_workers", "default", "images_per_s", "first_epoch_images_per_s", "vs_gpu", "bottleneck"]
    info = environment(torch.device("cpu")) | {"load_before": load_before, "load_after": load_after,
                                               "images": args.images, "jpeg_kib": jpeg_kib, "size": args.size}
    by_workers = {row["num_workers"]: row for row in rows}
    if default in by_workers:
        verdict = (f"default num_workers = {default}: {by_workers[default]['images_per_s']:.1f} images/s against the GPU's "
                   f"{args.gpu_rate:.0f}: the loader {'IS' if by_workers[default]['bottleneck'] == 'yes' else 'is NOT'} "
                   f"the bottleneck on this machine ({os.cpu_count()} cores).")
    else:
        verdict = f"the default num_workers ({default}) was not measured (--workers)."
    text = "\n".join([
        markdown_table(rows, columns), "",
        markdown_table([parts], list(parts)), "",
        verdict,
        f"one worker does about {per_core:.1f} images/s, so keeping up with {args.gpu_rate:.0f} images/s needs about "
        f"{needed} workers (and as many free cores).",
    ])
    print(f"environment: {info}\n\n{text}")
    write_report(args, info, text, rows=rows, breakdown=parts, raw=results)
    return rows


if __name__ == "__main__":
    main()
