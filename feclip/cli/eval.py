"""``feclip eval``: a detector's per-category, macro and micro metrics on a data set's test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from feclip.cli.choices import DEFAULT_MAP_SIGMA
from feclip.cli.common import (
    add_checkpoint_input,
    add_runtime,
    check_detector_flags,
    check_output_folder,
    require_non_negative,
    require_positive,
    say,
)

NAME = "eval"
SUMMARY = "evaluate a checkpoint or a baseline: per-category, macro and micro metrics"
EPILOG = """maps are smoothed with a Gaussian of --map-sigma pixels (default 4, as most zero-shot papers'
evaluation code; 0: off) before the pixel metrics; the table records the method, the sigma, the
resize mode and the map score. --method clip / winclip score the baselines on their backbone
(no training); winclip+ adds --shots normal images of each category's train split.

examples:
  feclip eval --ckpt runs/visa2mvtec/last.safetensors --data mvtec:data/mvtec
  feclip eval --ckpt runs/visa2mvtec --data mvtec:data/mvtec --map-score logit_margin --map-sigma 0
  feclip eval --ckpt runs/demo --data synth:~/.cache/feclip/synthetic/textures --out results/ --format json
  feclip eval --method winclip --data mvtec:data/mvtec
  feclip eval --method winclip+ --shots 4 --data mvtec:data/mvtec
  feclip eval --onnx model.onnx --data mvtec:data/mvtec"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate a checkpoint (or a baseline) on a data set's test split."
    parser.epilog = EPILOG
    add_checkpoint_input(parser, map_sigma=DEFAULT_MAP_SIGMA, methods=True, onnx=True)
    parser.add_argument("--data", required=True, metavar="SPEC", help="data KIND:PATH")
    parser.add_argument("--categories", metavar="LIST", help="comma-separated categories (default: all)")
    parser.add_argument("--shots", type=int, default=1, metavar="K",
                        help="(winclip+) normal reference images per category, from its train split (default: 1)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for metrics.csv / metrics.json (default: next to the checkpoint; "
                             "eval_<method>_<kind>_<name> in the working folder for a baseline)")
    parser.add_argument("--pixel-size", type=int, default=None, metavar="N", help="side of the stored pixel maps (default: mask size)")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="what is printed: the table in percent, or the metrics as one JSON document (default: table)")
    add_runtime(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _records(table: Any) -> dict[str, dict[str, Any]]:
    """The table as ``{row: {column: value}}`` with NaN as ``None`` (strict JSON)."""
    return table.astype(object).where(table.notna(), None).to_dict(orient="index")


def write_table(table: Any, out: Path) -> None:
    """``metrics.csv`` and ``metrics.json`` (NaN as null), each written atomically."""
    from feclip.checkpoint import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.csv", lambda tmp: table.to_csv(tmp))
    records = _records(table)
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8"))


def _out_folder(args: argparse.Namespace) -> Path:
    """Where the tables go: --out, else beside the checkpoint (a baseline or an ONNX file: the working folder)."""
    from feclip.data import parse_spec

    kind, data_path = parse_spec(args.data)
    name = f"eval_{kind}_{data_path.resolve().name}"
    if args.out is not None:
        return args.out.expanduser()
    if args.method == "feclip" and args.ckpt is not None:
        from feclip.checkpoint import checkpoint_paths

        return checkpoint_paths(args.ckpt)[0].parent / name
    if args.onnx is not None:
        return args.onnx.expanduser().parent / name
    return Path(f"eval_{args.method.replace('+', '_plus')}_{kind}_{data_path.resolve().name}")


def _few_shot_table(args: argparse.Namespace, loaded: Any, dataset: Any) -> Any:
    """WinCLIP+ per category: its first ``--shots`` normal train images as references, then that category's test images."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from feclip.baselines import WinClipFewShot
    from feclip.data import build_dataset
    from feclip.evaluate import AnomalyMetrics
    from feclip.postprocess import smooth_anomaly_maps

    metrics = AnomalyMetrics(args.pixel_size, expected_counts={c: len(dataset.subset(c)) for c in dataset.categories})
    with torch.inference_mode(), tqdm(total=len(dataset), desc="evaluate", unit="image", disable=args.quiet) as bar:
        for category in dataset.categories:
            normal = build_dataset(args.data, split="train", categories=[category], transform=loaded.transform)
            normal_indices = [i for i, sample in enumerate(normal.samples) if sample.label == 0][: args.shots]
            if len(normal_indices) < args.shots:
                raise ValueError(f"--shots {args.shots}: category {category} of {args.data} has only "
                                 f"{len(normal_indices)} normal train images")
            references = torch.stack([normal[i]["image"] for i in normal_indices]).to(loaded.device)
            detector = WinClipFewShot(loaded.detector, references)
            for batch in DataLoader(dataset.subset(category), batch_size=args.batch_size, num_workers=args.num_workers or 0):
                prediction = detector(batch["image"].to(loaded.device))
                maps = smooth_anomaly_maps(prediction.anomaly_map.float(), args.map_sigma)
                metrics.update(prediction.pred_score, batch["label"], maps, batch["mask"], batch.get("has_mask"),
                               batch["category"])
                bar.update(len(batch["label"]))
    table = metrics.compute()
    table["map_sigma"] = float(args.map_sigma)
    return table


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from feclip.cli.common import load_detector
    from feclip.data import build_dataset
    from feclip.evaluate import evaluate, format_percent
    from feclip.postprocess import smooth_anomaly_maps
    from feclip.protocol import check_evaluation

    require_positive(args, "pixel_size", "batch_size", "shots")
    require_non_negative(args, "num_workers")
    check_detector_flags(args)
    out = _out_folder(args)
    check_output_folder(out)  # before the evaluation, not after it
    import torch

    smooth_anomaly_maps(torch.zeros(1, 1, 1), args.map_sigma)  # a bad --map-sigma fails before any work
    loaded = load_detector(args)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    dataset = build_dataset(args.data, split="test", categories=categories, transform=loaded.transform)
    if loaded.checkpoint is not None:
        for warning in check_evaluation(loaded.checkpoint.get("extra", {}), dataset):
            say(f"warning: {warning}")
    if args.method == "winclip+":
        table = _few_shot_table(args, loaded, dataset)
    else:
        table = evaluate(loaded.detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0,
                         device=loaded.device, pixel_size=args.pixel_size, progress=not args.quiet,
                         map_sigma=args.map_sigma)
    for key, value in {**loaded.settings, **({"shots": args.shots} if args.method == "winclip+" else {})}.items():
        table[key] = value
    write_table(table, out)
    if args.format == "json":
        print(json.dumps({"out": str(out), "metrics": _records(table)}, indent=2))
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(format_percent(table).to_string())
    print(f"metrics written to {out / 'metrics.csv'} and {out / 'metrics.json'}")
    return 0
