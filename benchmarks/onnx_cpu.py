"""onnxruntime against torch on the CPU: the whole FE-CLIP detector, exported once by :func:`feclip.export.export_onnx`.

The model is ``FEClip.from_open_clip(backbone, None)``: random weights (seed 0), the default taps of
:func:`feclip.taps.default_tap_indices`, default adapters. It is exported once with a dynamic batch;
then, for every thread count and batch size, the torch forward (``torch.inference_mode``) and the
onnxruntime session (:class:`feclip.export.OnnxDetector`, CPU provider) run on the same random
images, **interleaved** round by round (:func:`common.time_interleaved`), so both see the same load
of a shared machine. Threads are fixed for both: ``torch.set_num_threads(n)`` and onnxruntime's
``intra_op_num_threads = n``. Each row also gives the largest difference between the two outputs,
so a fast but wrong graph cannot pass unnoticed.

Example::

    python benchmarks/onnx_cpu.py --backbone ViT-B-16 --batch-sizes 1 8 --threads 1 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, environment, markdown_table, paired_ratio, time_interleaved, write_report  # noqa: E402

from feclip.export import OnnxDetector, export_onnx  # noqa: E402
from feclip.model import FEClip  # noqa: E402

COLUMNS = ("backbone", "batch", "threads", "clock", "torch_ms", "onnxruntime_ms", "onnxruntime_over_torch", "max_score_diff",
           "max_map_diff")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, device=None, threads=False)
    parser.add_argument("--backbone", default="ViT-B-16", help="open_clip model name (random weights)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads of both runtimes")
    parser.add_argument("--onnx", type=Path, default=None, help="where to write the exported model (default: a temp dir)")
    return parser.parse_args(argv)


def _load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def run_case(
    model: FEClip, detector: OnnxDetector, batch: int, threads: int, *, rounds: int, warmup: int, clock: str = "wall"
) -> dict[str, Any]:
    """Time torch and onnxruntime on one batch, interleaved, with ``threads`` intra-op threads each."""
    torch.set_num_threads(threads)
    images = torch.randn(batch, 3, *detector.image_size, generator=torch.Generator().manual_seed(batch))

    def run_torch() -> Any:
        with torch.inference_mode():
            return model(images)

    expected, got = run_torch(), detector(images)
    timings = time_interleaved({"torch": run_torch, "onnxruntime": lambda: detector(images)},
                               device=torch.device("cpu"), rounds=rounds, warmup=warmup, clock=clock)
    return {
        "backbone": model.config.backbone,
        "batch": batch,
        "threads": threads,
        "clock": clock,
        "torch_ms": timings["torch"].median * 1e3,
        "onnxruntime_ms": timings["onnxruntime"].median * 1e3,
        "onnxruntime_over_torch": paired_ratio(timings["onnxruntime"], timings["torch"]),
        "max_score_diff": float((got.pred_score - expected.pred_score).abs().max()),
        "max_map_diff": float((got.anomaly_map - expected.anomaly_map).abs().max()),
        "samples_ms": {name: [s * 1e3 for s in timing.samples] for name, timing in timings.items()},
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Export once, then time both runtimes for every (threads, batch); returns one row per case."""
    import onnxruntime

    args = parse_args(argv)
    load_before = _load_average()
    model = FEClip.from_open_clip(args.backbone, None).eval()
    with tempfile.TemporaryDirectory() as scratch:
        path = args.onnx or Path(scratch) / f"{args.backbone}.onnx"
        start = time.perf_counter()
        export_onnx(model, path)
        export_s = time.perf_counter() - start
        print(f"exported {args.backbone} (taps {model.tap_indices}) to {path}: {path.stat().st_size / 2**20:.1f} MiB "
              f"in {export_s:.1f} s", flush=True)
        rows = []
        for threads in args.threads:
            detector = OnnxDetector(path, threads=threads)
            for batch in args.batch_sizes:
                rows.append(run_case(model, detector, batch, threads, rounds=args.rounds, warmup=args.warmup,
                                     clock=args.clock))
                print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    env = {**environment(torch.device("cpu")), "onnxruntime": onnxruntime.__version__, "export_s": export_s,
           "taps": model.tap_indices, "load_average_before": load_before, "load_average_after": _load_average()}
    table = markdown_table(rows, COLUMNS)
    print(f"\n{table}\n\nenvironment: {env}")
    write_report(args, env, table, rows=rows)
    return rows


if __name__ == "__main__":
    main()
