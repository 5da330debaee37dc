"""Wall time of one epoch of the full recipe, end to end: the number a GPU session records for issue 10.

What runs is what ``feclip train --train visa:DATA`` runs, one epoch of it: the full profile's model
(:func:`feclip.recipes.build_model`: ViT-L-14-336, taps [15, 18, 21, 23]) with **random backbone
weights** (``pretrained=None``: the time does not depend on the weights, and they cannot be downloaded
everywhere), the full profile's training config (:func:`feclip.recipes.train_config`: batch 16, Adam,
``amp="auto"``: bf16 where the GPU has it natively, else fp16 with a loss scaler), the default
DataLoader workers, and :func:`feclip.train.train` itself, reading ``--images`` synthetic VisA-sized
JPEGs (1500 x 1000, half of them anomalous with a full-size PNG mask: VisA's test split is 1,200
anomalous of 2,162) through the real VisA reader at the backbone's 336 px. The default ``--images``
is VisA's test split, 2,162 images, so the timed epoch is a full one.

Reported per run: the trainer's own epoch time and images/s (its history row: the loop over the
loader, worker start-up included), the whole ``train`` call (set-up and the checkpoint writes too),
building the model and the data, the precision used, the peak GPU memory, and the projections to
VisA's test split and to the recipe's 9 epochs (a shorter ``--images`` run is projected linearly).

    python benchmarks/full_epoch.py --json runs/full_epoch.json --markdown runs/full_epoch.md   # on a CUDA GPU
    python benchmarks/full_epoch.py --device cpu --backbone feclip-tiny --images 8 --size 150 100   # a smoke run
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, environment, fmt_bytes, markdown_table, set_threads, write_report  # noqa: E402
from loader import IMAGE_WH, write_visa_like  # noqa: E402

from feclip import profiles  # noqa: E402
from feclip.recipes import build_model, train_config, training_data  # noqa: E402
from feclip.train import resolve_device, train  # noqa: E402
from feclip.train.config import AMP_MODES  # noqa: E402

VISA_TEST_IMAGES = 2162  # VisA's split_csv/1cls.csv test split: 962 normal, 1,200 anomalous
RECIPE_EPOCHS = profiles.FULL.epochs
ANOMALY_FRACTION = 0.5  # every other image anomalous (VisA's test split: 0.56)
COLUMNS = ("device", "backbone", "batch", "amp", "num_workers", "images", "epoch_s", "images_per_s", "train_call_s",
           "build_s", "peak_gpu_memory", "visa_epoch_s", "recipe_s")


def run(args: Any, device: torch.device, root: Path, out_dir: Path) -> dict[str, Any]:
    """Build the full recipe's model and data on ``device``, train one epoch into ``out_dir``; one result row."""
    profile = dataclasses.replace(profiles.FULL, backbone=args.backbone, pretrained=None, device=str(device))
    began = time.perf_counter()
    model = build_model(profile)
    data = training_data(model, f"visa:{root}")
    changes = {"epochs": 1, "device": str(device), "amp": args.amp,
               **({"batch_size": args.batch_size} if args.batch_size else {}),
               **({"num_workers": args.num_workers} if args.num_workers is not None else {})}
    config = train_config(profile, **changes)
    built = time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    history = train(model, data.train, config, out_dir=out_dir, progress=not args.quiet)
    call = time.perf_counter() - began
    row = history[-1]
    if not math.isfinite(row["loss"]):
        raise RuntimeError(f"the epoch's loss is {row['loss']}")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    visa_epoch = VISA_TEST_IMAGES / row["images_per_s"]
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone,
        "taps": model.tap_indices,
        "batch": config.batch_size,
        "amp": row["amp"],
        "num_workers": config.num_workers,
        "images": len(data.train),
        "steps": row["step"],
        "loss": row["loss"],
        "epoch_s": row["time_s"],
        "images_per_s": row["images_per_s"],
        "train_call_s": call,
        "build_s": built,
        "peak_gpu_memory": fmt_bytes(peak),
        "peak_gpu_memory_bytes": peak,
        "visa_epoch_s": visa_epoch,
        "recipe_s": RECIPE_EPOCHS * visa_epoch,
        "train_config": config.to_dict(),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time one epoch; returns the result row (and prints the table)."""
    parser = benchmark_parser(__doc__, device=None, rounds=None, warmup=None, clock=False)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else the CPU), cpu, cuda, cuda:1")
    parser.add_argument("--backbone", default=profiles.FULL.backbone, help=f"default: {profiles.FULL.backbone}")
    parser.add_argument("--images", type=int, default=VISA_TEST_IMAGES,
                        help=f"synthetic training images (default: VisA's test split, {VISA_TEST_IMAGES})")
    parser.add_argument("--size", type=int, nargs=2, default=list(IMAGE_WH), metavar=("W", "H"),
                        help="image size on disk (default: VisA's 1500 x 1000)")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto", help="TrainConfig.amp (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the full recipe's 16")
    parser.add_argument("--num-workers", type=int, default=None, help="default: the trainer's (the machine's cores, at most 8)")
    parser.add_argument("--data", type=Path, default=None, help="folder for the images (default: a temporary one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="feclip-full-epoch-") as scratch:
        began = time.perf_counter()
        root = write_visa_like(args.data or Path(scratch) / "visa", args.images, ANOMALY_FRACTION, size=tuple(args.size))
        written = time.perf_counter() - began
        row = run(args, device, root, Path(scratch) / "run")
    info = environment(device) | {"images_written_s": round(written, 1), "size": args.size}
    text = "\n".join([
        markdown_table([row], COLUMNS), "",
        f"one epoch of {row['images']} images in {row['epoch_s']:.1f} s ({row['images_per_s']:.1f} images/s, "
        f"{row['amp']}); VisA's {VISA_TEST_IMAGES} test images: {row['visa_epoch_s']:.1f} s an epoch, "
        f"{row['recipe_s'] / 60:.1f} min for the recipe's {RECIPE_EPOCHS} epochs (set-up and validation not counted).",
    ])
    print(f"environment: {info}\n\n{text}", flush=True)
    write_report(args, info, text, row=row)
    return row


if __name__ == "__main__":
    main()
