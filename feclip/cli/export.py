"""``feclip export``: a trained checkpoint as one ONNX graph (:func:`feclip.export.export_onnx`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from feclip.cli.choices import MAP_SCORES, RESIZE_MODES
from feclip.cli.common import add_quick_gelu, say

NAME = "export"
SUMMARY = "export a checkpoint as one ONNX graph for onnxruntime (pip install feclip[export])"
FORMATS = ("onnx",)
EPILOG = """the graph holds the whole detector: the tapped ViT, the adapters, both heads, the average over
taps and the upsampling of the map, with the text embeddings baked in. Input: normalised images
(B, 3, H, W) at the backbone's size; outputs: pred_score (B,) and anomaly_map (B, H, W). The
preprocessing (size, mean, std, resize mode) is stored in the file's metadata, so onnxruntime alone
runs it (feclip.export.OnnxDetector). Needs the export extra: pip install feclip[export].

examples:
  feclip export --ckpt runs/visa2mvtec --format onnx --out model.onnx
  feclip export --ckpt runs/visa2mvtec/best.safetensors --out model_b8.onnx --batch-size 8
  feclip export --ckpt runs/visa2mvtec --out model.onnx --pretrained ViT-L-14-336.bin --quick-gelu"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Export a trained FE-CLIP checkpoint as one ONNX graph."
    parser.epilog = EPILOG
    parser.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint .safetensors, or a run folder (its last.safetensors)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format (default: onnx)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the graph file to write, e.g. model.onnx")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="fix the batch size (default: a dynamic batch axis)")
    parser.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default: the exporter's)")
    parser.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE",
                        help="load the backbone's weights from here instead of the checkpoint's tag (e.g. a local .bin)")
    add_quick_gelu(parser)
    parser.add_argument("--map-score", choices=MAP_SCORES,
                        help="the exported map: tap mean of the probabilities or of the logit margins (default: the checkpoint's)")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES,
                        help="the preprocessing recorded in the file (default: the one the checkpoint was trained with)")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot or should not be written, before any work."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} exists; pass --overwrite to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"--out {out}: {out.parent} is a file, not a folder")


def run(args: argparse.Namespace) -> int:
    from feclip.cli.common import load_checkpoint_model
    from feclip.export import export_onnx

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    _check_out(args.out, args.overwrite)
    args.device = "cpu"  # traced on the CPU: the graph runs anywhere onnxruntime does
    model, _ = load_checkpoint_model(args)
    try:
        path = export_onnx(model, args.out, batch_size=args.batch_size, opset=args.opset)
    except ImportError as error:  # the optional extra is missing: its message says how to install it
        say(f"error: {error}")
        return 1
    size = path.stat().st_size / 2**20
    height, width = model.clip.visual.image_size
    batch = args.batch_size or "B"
    print(f"wrote {path} ({size:.1f} MiB): images ({batch}, 3, {height}, {width}) -> pred_score ({batch},), "
          f"anomaly_map ({batch}, {height}, {width}); run it with feclip.export.OnnxDetector('{path}')")
    return 0
