"""``feclip eval``: a checkpoint's per-category, macro and micro metrics on a data set's test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from feclip.cli.choices import DEFAULT_MAP_SIGMA
from feclip.cli.common import add_checkpoint_input, add_runtime, load_checkpoint_model, say

NAME = "eval"
SUMMARY = "evaluate a checkpoint: per-category, macro and micro metrics"
EPILOG = """maps are smoothed with a Gaussian of --map-sigma pixels (default 4, as most zero-shot papers'
evaluation code; 0: off) before the pixel metrics; the table records the sigma, the resize mode
and the map score.

examples:
  feclip eval --ckpt runs/visa2mvtec/last.safetensors --data mvtec:data/mvtec
  feclip eval --ckpt runs/visa2mvtec --data mvtec:data/mvtec --map-score logit_margin --map-sigma 0
  feclip eval --ckpt runs/demo --data synth:~/.cache/feclip/synthetic/textures --out results/"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Evaluate a checkpoint on a data set's test split."
    parser.epilog = EPILOG
    add_checkpoint_input(parser, map_sigma=DEFAULT_MAP_SIGMA)
    parser.add_argument("--data", required=True, metavar="SPEC", help="data KIND:PATH")
    parser.add_argument("--categories", metavar="LIST", help="comma-separated categories (default: all)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="folder for metrics.csv / metrics.json (default: next to the checkpoint)")
    parser.add_argument("--pixel-size", type=int, default=None, metavar="N", help="side of the stored pixel maps (default: mask size)")
    add_runtime(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def write_table(table: Any, out: Path) -> None:
    """``metrics.csv`` and ``metrics.json`` (NaN as null), each written atomically."""
    from feclip.checkpoint import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.csv", lambda tmp: table.to_csv(tmp))
    records = table.astype(object).where(table.notna(), None).to_dict(orient="index")
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8"))


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from feclip.checkpoint import checkpoint_paths, read_metadata
    from feclip.data import build_dataset, parse_spec, transforms_for_clip
    from feclip.evaluate import evaluate, format_percent
    from feclip.protocol import check_evaluation

    model, device = load_checkpoint_model(args)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    dataset = build_dataset(args.data, split="test", categories=categories, transform=transform)
    weights, _ = checkpoint_paths(args.ckpt)
    for warning in check_evaluation(read_metadata(weights).get("extra", {}), dataset):
        say(f"warning: {warning}")
    kind, data_path = parse_spec(args.data)
    out = args.out or weights.parent / f"eval_{kind}_{data_path.resolve().name}"
    table = evaluate(model, dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0, device=device,
                     pixel_size=args.pixel_size, progress=not args.quiet, map_sigma=args.map_sigma)
    table["resize_mode"], table["map_score"] = model.config.resize_mode, model.config.map_score
    write_table(table, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(format_percent(table).to_string())
    print(f"metrics written to {out / 'metrics.csv'} and {out / 'metrics.json'}")
    return 0
