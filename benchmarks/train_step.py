"""Throughput and peak memory of one FE-CLIP training step.

A step is what the trainer does per batch (:class:`feclip.train.loop.TrainingStep`): forward through the tapped ViT (frozen),
FE-CLIP's loss (:class:`feclip.losses.FEClipLoss`, per tap), backward into the adapters
and ``fc_patch`` (the gradient flows back through the frozen blocks after the first
tap), and an Adam step. Inputs are synthetic: random images, rectangular masks, labels
from the masks; the backbone has random weights (``pretrained=None``).

For context, FE-CLIP inference (``torch.inference_mode``) on the same batch is timed
interleaved with the step.

Defaults per device: CPU runs ``feclip-tiny`` and ``ViT-B-16`` at batch 4 in fp32; CUDA
runs ``ViT-L-14-336`` at batch 16 with bf16 autocast.

Example::

    python benchmarks/train_step.py --device cpu --backbones feclip-tiny --batch 4 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_parser,
    build_feclip,
    create_backbone,
    environment,
    fmt_bytes,
    markdown_table,
    peak_memory,
    resolve_devices,
    set_threads,
    time_interleaved,
    write_report,
)

from feclip.losses import FEClipLoss  # noqa: E402
from feclip.train.loop import TrainingStep  # noqa: E402

DEFAULTS = {
    "cpu": {"backbones": ["feclip-tiny", "ViT-B-16"], "batch": 4, "precision": "fp32"},
    "cuda": {"backbones": ["ViT-L-14-336"], "batch": 16, "precision": "bf16"},
}
COLUMNS = ("device", "backbone", "batch", "precision", "threads", "clock", "step_ms", "images_per_s", "infer_ms", "step_over_infer", "peak_memory", "loss")


def synthetic_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random images, rectangular masks (every other image anomalous) and their labels.

    Returns:
        ``images (B, 3, S, S)``, ``masks (B, S, S)`` in ``{0, 1}``, ``labels (B,)``.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = torch.zeros(batch, size, size)
    for index in range(1, batch, 2):
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        masks[index, top : top + size // 4, left : left + size // 4] = 1
    labels = masks.flatten(1).amax(dim=1)
    return images.to(device), masks.to(device), labels.to(device)


def run_case(
    backbone: str, device: torch.device, batch: int, precision: str, *, rounds: int, warmup: int, clock: str = "wall"
) -> dict[str, Any]:
    """Time the training step of one backbone; returns one result row."""
    clip = create_backbone(backbone, device)
    model = build_feclip(clip, backbone, device).train()
    training_step = TrainingStep(model)  # what the trainer runs: per-tap outputs, the averaged map not upsampled
    groups = model.trainable_parameters()
    optimizer = torch.optim.Adam([{"params": groups["adapters"], "lr": 1e-4}, {"params": groups["fc_patch"], "lr": 1e-5}])
    loss_fn = FEClipLoss()
    size = clip.visual.image_size[0]
    images, masks, labels = synthetic_batch(batch, size, device)

    def autocast() -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = training_step(images)
            loss = loss_fn(out.tap_scores, out.tap_maps, labels, masks).total
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(images)

    timings = time_interleaved({"step": step, "infer": infer}, device=device, rounds=rounds, warmup=warmup, clock=clock)
    memory = peak_memory(step, device)  # Adam's state already exists: steady-state peak
    final_loss = float(losses[-1])
    if not math.isfinite(final_loss):
        raise RuntimeError(f"{backbone}: training step produced a non-finite loss {final_loss}")
    row = {
        "device": device.type,
        "backbone": backbone,
        "batch": batch,
        "precision": precision,
        "rounds": rounds,
        "clock": clock,
        "threads": torch.get_num_threads(),
        "step_ms": 1e3 * timings["step"].median,
        "images_per_s": batch / timings["step"].median,
        "infer_ms": 1e3 * timings["infer"].median,
        "step_over_infer": timings["step"].median / timings["infer"].median,
        "peak_memory": fmt_bytes(memory.bytes),
        "peak_memory_bytes": memory.bytes,
        "memory_method": memory.method,
        "loss": final_loss,
        "trainable_parameters": sum(p.numel() for group in groups.values() for p in group),
        "samples": {name: t.samples for name, t in timings.items()},
    }
    print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, rounds=3)
    parser.add_argument("--backbones", nargs="+", default=None, help="default: tiny and ViT-B-16 on CPU, ViT-L-14-336 on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 16 on CUDA")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: fp32 on CPU, bf16 autocast on CUDA")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the training-step benchmark; returns one row per (device, backbone)."""
    args = parse_args(argv)
    set_threads(args.threads)
    devices = resolve_devices(args.device)
    print(markdown_table([], COLUMNS), flush=True)
    rows = []
    for device in devices:
        defaults = DEFAULTS[device.type]
        for backbone in args.backbones or defaults["backbones"]:
            rows.append(
                run_case(
                    backbone,
                    device,
                    args.batch or defaults["batch"],
                    args.precision or defaults["precision"],
                    rounds=args.rounds,
                    warmup=args.warmup,
                    clock=args.clock if device.type == "cpu" else "wall",
                )
            )
    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    write_report(args, [environment(device) for device in devices], table, rows=rows)
    return rows


if __name__ == "__main__":
    main()
