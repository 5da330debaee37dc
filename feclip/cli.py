"""The ``feclip`` command line: ``synth``, ``train``, ``eval`` and ``predict``.

Every library error a user can cause (a missing path, an unknown dataset kind, a checkpoint
for another model, unreachable weights, a validation set on the target) is printed as one
``feclip: error: ...`` line on stderr with exit status 1; ``--debug`` (or ``FECLIP_DEBUG=1``)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feclip import __version__

__all__ = ["build_parser", "main"]

DEFAULT_BACKBONE, DEFAULT_PRETRAINED = "ViT-L-14-336", "openai"
RUN_FILE = "run.json"
_MODEL_FLAGS = {  # command-line flag -> FEClipConfig field
    "taps": "tap_indices", "lambda_fuse": "lambda_fuse", "ffe_window": "ffe_window",
    "lfs_window": "lfs_window", "lfs_statistic": "lfs_statistic", "basis": "basis",
    "fc_patch_init": "fc_patch_init", "map_score": "map_score", "resize_mode": "resize_mode",
}
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "fc_patch_lr", "seed", "num_workers", "device", "amp")
# Share of the training set the smoke run holds out for validation (stratified per category and label).
SMOKE_VAL_FRACTION = 0.25


def _say(message: str) -> None:
    print(f"feclip: {message}", file=sys.stderr)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- parser


def _smoke_sizes() -> str:
    from feclip.profiles import SMOKE

    return f"{SMOKE.epochs} epochs, batch {SMOKE.batch_size}"


_EXAMPLES = {
    "main": """examples:
  feclip synth --out data/synthetic
  feclip train --out runs/demo                       # smoke run on the synthetic benchmark
  feclip train --train visa:data/visa --val-fraction 0.1 --target mvtec:data/mvtec --out runs/visa2mvtec
  torchrun --nproc_per_node=2 -m feclip train --train visa:data/visa --out runs/ddp
  feclip eval --ckpt runs/visa2mvtec/last.safetensors --data mvtec:data/mvtec
  feclip predict --ckpt runs/visa2mvtec/last.safetensors my_images/ --out heatmaps/

dataset specs are KIND:PATH with KIND one of mvtec, visa, synth (one family of the synthetic
benchmark, e.g. synth:data/synthetic/objects) or folder (PATH/good, PATH/abnormal, PATH/masks).
Add --debug (or set FECLIP_DEBUG=1) to see a traceback instead of the one-line error.""",
    "synth": """examples:
  feclip synth --out data/synthetic
  feclip synth --out data/synthetic --family textures --image-size 128 --seed 1""",
    "train": """zero-shot protocol: train on an auxiliary data set's TEST split (the only one with anomalies
and masks), evaluate on a target never seen in training: VisA for MVTec AD, MVTec AD for VisA,
synthetic objects for synthetic textures.

validation (it picks best.safetensors, so it is part of training) comes from the auxiliary
side only: --val-fraction F holds out F of the training set (stratified per category and
label, seeded by --seed), or --val SPEC names another auxiliary data set. Refused: a --val
that shares images with --train, and, when --target names the data set the run will be
evaluated on, a --train or --val sharing categories with it. feclip eval refuses to score a
best.safetensors on data sharing categories with its validation set.

Without --train this is a smoke run: the synthetic benchmark (generated under the smoke
profile's data root if absent) trains on objects, validates on a held-out quarter of them and
names textures as the target, at the smoke profile's sizes (SMOKE_SIZES) unless --epochs /
--batch-size say otherwise; when no --backbone is given and the ViT-L-14-336 OpenAI weights
cannot be reached, the randomly initialised feclip-tiny backbone is used and a line on stderr
says so.

Every epoch writes RUN_DIR/last.safetensors (+ .json), RUN_DIR/last.state.pt and
RUN_DIR/history.{csv,json}; with validation also best.safetensors. After an interruption,
run the same command with --resume (the data and model flags are read from RUN_DIR/run.json).

examples:
  feclip train --out runs/demo
  feclip train --train visa:data/visa --val-fraction 0.1 --target mvtec:data/mvtec --out runs/visa2mvtec
  feclip train --train mvtec:data/mvtec --out runs/mvtec2visa --taps spread_5 --epochs 5
  feclip train --train visa:data/visa --pretrained ViT-B-16.bin --backbone ViT-B-16 --no-quick-gelu --out runs/b16
  feclip train --out runs/visa2mvtec --resume
  torchrun --nproc_per_node=4 -m feclip train --train visa:data/visa --out runs/ddp""",
    "eval": """maps are smoothed with a Gaussian of --map-sigma pixels (default 4, as most zero-shot papers'
evaluation code; 0: off) before the pixel metrics; the table records the sigma, the resize mode
and the map score.

examples:
  feclip eval --ckpt runs/visa2mvtec/last.safetensors --data mvtec:data/mvtec
  feclip eval --ckpt runs/visa2mvtec --data mvtec:data/mvtec --map-score logit_margin --map-sigma 0
  feclip eval --ckpt runs/demo --data synth:~/.cache/feclip/synthetic/textures --out results/""",
    "predict": """writes one heatmap overlay PNG per image (blue: the lowest possible map value, red: the highest;
0 and 1 for probabilities) and scores.csv (image score, maximum pixel score, and the settings
used) to --out. The maps are the model's own unless --map-sigma smooths them (4 matches the
evaluation tables).

examples:
  feclip predict --ckpt runs/visa2mvtec/last.safetensors photo.png --out heatmaps/
  feclip predict --ckpt runs/visa2mvtec my_images/ --out heatmaps/ --alpha 0.4""",
}


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_runtime(parser: argparse.ArgumentParser, batch_size: int | None = 8) -> None:
    parser.add_argument("--device", default=None, metavar="DEVICE", help="auto (CUDA if available), cpu, cuda, cuda:1 (default: auto)")
    from feclip.profiles import SMOKE

    default = f"default: {batch_size}" if batch_size else f"default: 16; smoke run: {SMOKE.batch_size}"
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help=f"images per batch ({default})")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N", help="DataLoader worker processes")


def _add_quick_gelu(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="the activation of a --pretrained weights file that cannot tell (OpenAI's: QuickGELU; "
                             "LAION's and most others: GELU); default: decided from the tag or the file")


def _add_checkpoint_input(parser: argparse.ArgumentParser, map_sigma: float) -> None:
    parser.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint .safetensors, or a run folder (its last.safetensors)")
    parser.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE",
                        help="load the backbone's weights from here instead of the checkpoint's tag (e.g. a local .bin)")
    _add_quick_gelu(parser)
    parser.add_argument("--resize-mode", choices=("squash", "crop"),
                        help="how images are fitted to the input size (default: the one the checkpoint was trained with)")
    parser.add_argument("--map-score", choices=("probability", "logit_margin"),
                        help="the map: tap mean of the softmax probabilities or of the logit margins (default: the checkpoint's)")
    parser.add_argument("--map-sigma", type=float, default=map_sigma, metavar="S",
                        help=f"Gaussian smoothing of the maps in pixels, 0: off (default: {map_sigma:g})")


def build_parser() -> argparse.ArgumentParser:
    """The ``feclip`` argument parser with its four subcommands."""
    from feclip.data import FAMILIES
    from feclip.evaluate import DEFAULT_MAP_SIGMA
    from feclip.profiles import SMOKE
    parser = argparse.ArgumentParser(
        prog="feclip",
        description="Zero-shot industrial anomaly detection with FE-CLIP (frequency-enhanced CLIP).",
        epilog=_EXAMPLES["main"],
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"feclip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = commands.add_parser("synth", help="write the synthetic defect benchmark (MVTec layout)",
                                description="Write the synthetic defect benchmark: one MVTec-layout root per family (textures/, objects/, ...).",
                                epilog=_EXAMPLES["synth"], formatter_class=_formatter)
    synth.add_argument("--out", required=True, type=Path, metavar="DIR", help="benchmark root to write")
    synth.add_argument("--family", choices=("all", "both", *FAMILIES), default="all",
                       help="which family; both: textures and objects, the smoke run's pair (default: all)")
    synth.add_argument("--seed", type=int, default=0, help="seed of every image (default: 0)")
    synth.add_argument("--image-size", type=int, default=96, help="image side in pixels (default: 96)")
    synth.add_argument("--n-train-good", type=int, default=8, help="normal train images per category (default: 8)")
    synth.add_argument("--n-test-good", type=int, default=8, help="normal test images per category (default: 8)")
    synth.add_argument("--n-defect", type=int, default=3, help="test images per defect type and category (default: 3)")

    train = commands.add_parser("train", help="train FE-CLIP's adapters (checkpoints every epoch, resumable)",
                                description="Train FE-CLIP's frequency adapters on an auxiliary data set.",
                                epilog=_EXAMPLES["train"].replace("SMOKE_SIZES", _smoke_sizes()), formatter_class=_formatter)
    train.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder for checkpoints and history")
    train.add_argument("--train", metavar="SPEC", help="training data KIND:PATH (its test split); default: synthetic objects")
    validation = train.add_mutually_exclusive_group()
    validation.add_argument("--val-fraction", type=float, metavar="F",
                            help="hold out this fraction of the training set for validation (stratified, seeded by --seed)")
    validation.add_argument("--val", metavar="SPEC", help="another AUXILIARY data set KIND:PATH to validate on (never the target)")
    train.add_argument("--target", metavar="SPEC", help="the data set this run will be evaluated on: checked to share no "
                                                        "category with --train or --val, and recorded")
    train.add_argument("--backbone", metavar="NAME", help=f"open_clip model name (default: {DEFAULT_BACKBONE})")
    train.add_argument("--pretrained", metavar="TAG_OR_FILE", help=f"pretrained tag or weights file, 'none' for random weights (default: {DEFAULT_PRETRAINED})")
    _add_quick_gelu(train)
    train.add_argument("--taps", metavar="LIST", help="tapped blocks, e.g. 15,18,21,23, or a tap set: spread_3, spread_5, last4 (default: spread_3)")
    train.add_argument("--lambda", dest="lambda_fuse", type=float, metavar="X", help="fusion weight of the adapters (default: 0.1)")
    train.add_argument("--ffe-window", type=int, metavar="P", help="FFE window P (default: 3)")
    train.add_argument("--lfs-window", type=int, metavar="Q", help="LFS window Q (default: 3)")
    train.add_argument("--lfs-statistic", choices=("mean", "abs", "power"), help="LFS statistic (default: mean)")
    train.add_argument("--basis", choices=("dct", "hartley", "dft"), help="frequency basis; dft: the old name of hartley (default: dct)")
    train.add_argument("--fc-patch-init", choices=("random", "clip"),
                       help="start of fc_patch: random (the reference's default) or CLIP's projection (default: random)")
    train.add_argument("--map-score", choices=("probability", "logit_margin"), help="reported map (default: probability)")
    train.add_argument("--resize-mode", choices=("squash", "crop"),
                       help="fit images to the input: squash (both sides) or crop (shorter side, centre crop) (default: squash)")
    train.add_argument("--epochs", type=int, metavar="N", help=f"epochs (default: 9; smoke run: {SMOKE.epochs})")
    train.add_argument("--lr", type=float, metavar="X", help="adapter learning rate (default: 5e-4)")
    train.add_argument("--fc-patch-lr", type=float, metavar="X", help="fc_patch learning rate (default: 5e-6)")
    train.add_argument("--seed", type=int, metavar="N", help="seed of the adapters' initialisation and the data order (default: 0)")
    train.add_argument("--amp", choices=("auto", "bf16", "off"), help="bf16 autocast on GPUs (default: auto)")
    _add_runtime(train, batch_size=None)
    train.add_argument("--resume", nargs="?", const="auto", metavar="PATH",
                       help="continue an interrupted run: RUN_DIR's state, or the given run folder / state file")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint: per-category, macro and micro metrics",
                                   description="Evaluate a checkpoint on a data set's test split.",
                                   epilog=_EXAMPLES["eval"], formatter_class=_formatter)
    _add_checkpoint_input(evaluate, map_sigma=DEFAULT_MAP_SIGMA)
    evaluate.add_argument("--data", required=True, metavar="SPEC", help="data KIND:PATH")
    evaluate.add_argument("--categories", metavar="LIST", help="comma-separated categories (default: all)")
    evaluate.add_argument("--out", type=Path, metavar="DIR", help="folder for metrics.csv / metrics.json (default: next to the checkpoint)")
    evaluate.add_argument("--pixel-size", type=int, default=None, metavar="N", help="side of the stored pixel maps (default: mask size)")
    _add_runtime(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")

    predict = commands.add_parser("predict", help="anomaly heatmaps and scores for your own images",
                                  description="Score images and write heatmap overlays.",
                                  epilog=_EXAMPLES["predict"], formatter_class=_formatter)
    _add_checkpoint_input(predict, map_sigma=0.0)
    predict.add_argument("input", type=Path, metavar="IMAGE_OR_DIR", help="an image file or a folder of images")
    predict.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the overlays and scores.csv")
    predict.add_argument("--alpha", type=float, default=0.5, metavar="X", help="heatmap opacity in the overlay (default: 0.5)")
    _add_runtime(predict)
    return parser


# --------------------------------------------------------------------------- train


def _parse_pretrained(value: str | None) -> str | None:
    return None if value is None or value.lower() in ("none", "random", "") else value


def _parse_taps(value: str | None, depth: int) -> list[int] | None:
    from feclip.taps import TAP_SETS, tap_set

    if value is None:
        return None
    if value in TAP_SETS:
        return tap_set(value, depth)
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--taps must be comma-separated block indices (e.g. 15,18,21,23) or one of {sorted(TAP_SETS)}, "
                         f"got {value!r}") from None


def _demo_data(root: Path) -> Path:
    from feclip.data import generate_benchmark

    if not (root / "objects").is_dir() or not (root / "textures").is_dir():
        if _is_main_process():
            _say(f"generating the synthetic benchmark under {root}")
            generate_benchmark(root)
    return root


def _run_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _cmd_train(args: argparse.Namespace) -> int:
    from feclip.backbones import TINY_MODEL, pretrained_available
    from feclip.backbones import create_clip
    from feclip.checkpoint import CheckpointMismatch, config_differences, read_metadata, upgrade_config
    from feclip.data import build_dataset, transforms_for_clip
    from feclip.model import FEClip, FEClipConfig
    from feclip.profiles import SMOKE
    from feclip.protocol import check_training_data, data_record
    from feclip.train import DistributedContext, TrainConfig, resolve_resume, train
    from feclip.vit import check_vit

    record: dict[str, Any] = {}
    state = resolve_resume(args.resume, args.out) if args.resume is not None else None
    if state is not None:
        record = _run_record(state.parent)
    train_spec, val_spec = args.train or record.get("train"), args.val or record.get("val")
    val_fraction = args.val_fraction if args.val_fraction is not None else record.get("val_fraction")
    target_spec = args.target or record.get("target")
    demo = train_spec is None
    saved_model = upgrade_config(record["model"]) if "model" in record else {}  # an older run.json: what it trained
    model_config = FEClipConfig(**{**FEClipConfig().to_dict(), **saved_model})
    train_config = TrainConfig.from_dict(record["train_config"]) if "train_config" in record else TrainConfig()
    if demo and "train_config" not in record:
        train_config = dataclasses.replace(train_config, epochs=SMOKE.epochs, batch_size=SMOKE.batch_size,
                                           num_workers=SMOKE.num_workers)
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")

    backbone = args.backbone or (model_config.backbone if record else DEFAULT_BACKBONE)
    if args.pretrained is not None:
        pretrained = _parse_pretrained(args.pretrained)
    elif record:
        pretrained = model_config.pretrained
    else:
        pretrained = None if backbone == TINY_MODEL else DEFAULT_PRETRAINED
    if demo and args.backbone is None and args.pretrained is None and not record and not pretrained_available(backbone, pretrained):
        if _is_main_process():
            _say(f"no {backbone} / {pretrained} weights reachable: smoke run with the randomly initialised "
                 f"{TINY_MODEL} backbone (not the paper's numbers; pass --backbone/--pretrained for real weights)")
        backbone, pretrained = TINY_MODEL, None

    train_config = dataclasses.replace(train_config, **{k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None})
    distributed = DistributedContext.setup(train_config.device)
    try:
        if demo:
            root = _demo_data(SMOKE.data_root)
            if distributed.world_size > 1:
                torch.distributed.barrier()
            train_spec = f"synth:{root / SMOKE.train_dataset.split('-')[-1]}"
            target_spec = target_spec or f"synth:{root / SMOKE.eval_dataset.split('-')[-1]}"
            if val_spec is None and val_fraction is None:
                val_fraction = SMOKE_VAL_FRACTION
        quick_gelu = args.quick_gelu if args.quick_gelu is not None else model_config.quick_gelu
        clip, tokenizer = create_clip(backbone, pretrained, seed=0, quick_gelu=quick_gelu)
        try:
            depth = len(check_vit(clip).transformer.resblocks)
        except TypeError as err:  # a backbone FE-CLIP cannot tap (no ViT image tower)
            raise ValueError(f"--backbone {backbone}: {err}") from err
        overrides = {field: getattr(args, flag) for flag, field in _MODEL_FLAGS.items() if getattr(args, flag) is not None}
        if "tap_indices" in overrides:
            overrides["tap_indices"] = _parse_taps(overrides["tap_indices"], depth)
        model_config = dataclasses.replace(model_config, backbone=backbone, pretrained=pretrained, backbone_seed=0,
                                           quick_gelu=None, **overrides)
        torch.manual_seed(train_config.seed)  # the adapters' and fc_patch's initialisation
        model = FEClip(clip, tokenizer, model_config)
        transform = transforms_for_clip(clip, resize_mode=model.config.resize_mode)
        train_set = build_dataset(train_spec, split="test", transform=transform)
        val_set = build_dataset(val_spec, split="test", transform=transform) if val_spec else None
        if val_fraction is not None:
            train_set, val_set = train_set.holdout(val_fraction, seed=train_config.seed)
        target_set = build_dataset(target_spec, split="test", transform=transform) if target_spec else None
        check_training_data(train_set, val_set, target_set)
        run_info = {"train": data_record(train_spec, train_set),
                    "val": data_record(val_spec, val_set, **({"holdout_fraction": val_fraction} if val_fraction else {})),
                    "target": data_record(target_spec, target_set)}
        if state is not None and (state.parent / "last.safetensors").is_file():
            saved = read_metadata(state.parent / "last.safetensors")["config"]
            problems = config_differences(saved, model.config)
            if problems:  # before run.json is rewritten
                raise CheckpointMismatch(f"cannot resume from {state}: " + "; ".join(problems))
        if distributed.is_main:
            args.out.mkdir(parents=True, exist_ok=True)
            record = {"feclip_version": __version__, "train": train_spec, "val": val_spec, "val_fraction": val_fraction,
                      "target": target_spec, "model": model.config.to_dict(), "train_config": train_config.to_dict()}
            (args.out / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            validation = (f", validating on {len(val_set)} held-out images" if val_fraction else
                          f", validating on {val_spec}" if val_spec else "")
            print(f"training {model.config.backbone} ({model.config.pretrained or 'random init'}) taps "
                  f"{model.tap_indices} on {train_spec} ({len(train_set)} images{validation}) for "
                  f"{train_config.epochs} epoch(s) -> {args.out}")
        history = train(model, train_set, train_config, out_dir=args.out, val_dataset=val_set,
                        resume=args.resume, progress=not args.quiet, run_info=run_info)
    finally:
        distributed.close()
    if distributed.is_main and len(history):
        print(f"done: {args.out / 'last.safetensors'} (final loss {history[-1]['loss']:.4f})")
    return 0


# --------------------------------------------------------------------------- eval / predict


def _load_model(args: argparse.Namespace) -> tuple[Any, torch.device]:
    """The checkpoint's model on the asked device, with the ``--map-score`` / ``--resize-mode`` overrides."""
    from feclip.model import load_feclip
    from feclip.train import resolve_device

    device = resolve_device(args.device or "auto")
    model = load_feclip(args.ckpt, device=device, pretrained=_parse_pretrained(args.pretrained), quick_gelu=args.quick_gelu)
    for flag in ("map_score", "resize_mode"):  # how the model reports and reads images; not what it learnt
        if getattr(args, flag) is not None:
            setattr(model.config, flag, getattr(args, flag))
    return model, device


def _write_table(table: Any, out: Path) -> None:
    """``metrics.csv`` and ``metrics.json`` (NaN as null), each written atomically."""
    from feclip.checkpoint import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "metrics.csv", lambda tmp: table.to_csv(tmp))
    records = table.astype(object).where(table.notna(), None).to_dict(orient="index")
    atomic_write(out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8"))


def _cmd_eval(args: argparse.Namespace) -> int:
    import pandas as pd

    from feclip.checkpoint import checkpoint_paths, read_metadata
    from feclip.data import build_dataset, transforms_for_clip
    from feclip.evaluate import evaluate, format_percent
    from feclip.protocol import check_evaluation

    model, device = _load_model(args)
    categories = [c.strip() for c in args.categories.split(",")] if args.categories else None
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    dataset = build_dataset(args.data, split="test", categories=categories, transform=transform)
    weights, _ = checkpoint_paths(args.ckpt)
    for warning in check_evaluation(read_metadata(weights).get("extra", {}), dataset):
        _say(f"warning: {warning}")
    kind, _, data_path = args.data.partition(":")
    out = args.out or weights.parent / f"eval_{kind}_{Path(data_path).expanduser().resolve().name}"
    table = evaluate(model, dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0, device=device,
                     pixel_size=args.pixel_size, progress=not args.quiet, map_sigma=args.map_sigma)
    table["resize_mode"], table["map_score"] = model.config.resize_mode, model.config.map_score
    _write_table(table, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(format_percent(table).to_string())
    print(f"metrics written to {out / 'metrics.csv'} and {out / 'metrics.json'}")
    return 0


def _overlay(image: Any, anomaly_map: np.ndarray, alpha: float, value_range: tuple[float, float] = (0.0, 1.0)) -> Any:
    """Blend a ``(h, w)`` map, coloured with ``jet`` over ``value_range``, onto an RGB PIL image."""
    from matplotlib import colormaps
    from PIL import Image

    resized = torch.nn.functional.interpolate(torch.from_numpy(anomaly_map)[None, None].float(),
                                              size=(image.height, image.width), mode="bilinear", align_corners=False)
    low, high = value_range
    heat = colormaps["jet"](((resized[0, 0] - low) / (high - low)).clamp(0, 1).numpy())[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) / 255 + alpha * heat
    return Image.fromarray(np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8))


def _cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd
    from torch.utils.data import DataLoader

    from feclip.data import AnomalyDataset, Sample, build_dataset, load_rgb, transforms_for_clip
    from feclip.postprocess import smooth_anomaly_maps

    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not args.input.exists():
        raise FileNotFoundError(f"input not found: {args.input}")
    model, device = _load_model(args)
    smooth_anomaly_maps(torch.zeros(1, 1, 1), args.map_sigma)  # a bad --map-sigma fails before any work
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    if args.input.is_dir():
        dataset = build_dataset(f"folder:{args.input}", transform=transform)
    else:
        dataset = AnomalyDataset([Sample(args.input, -1, "custom", "unknown", None, has_mask=False)], transform)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    settings = {"map_score": model.config.map_score, "map_sigma": args.map_sigma, "resize_mode": model.config.resize_mode}
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0)
    with torch.inference_mode():
        for batch in loader:
            prediction = model(batch["image"].to(device))
            maps = smooth_anomaly_maps(prediction.anomaly_map.float(), args.map_sigma)
            for index, path in enumerate(batch["path"]):
                name = f"{Path(path).stem}_heatmap.png"
                if name in used:
                    name = f"{Path(path).stem}_{Path(path).suffix.lstrip('.')}_heatmap.png"
                used.add(name)
                anomaly_map = maps[index].cpu().numpy()
                _overlay(load_rgb(path), anomaly_map, args.alpha, model.anomaly_map_range).save(args.out / name)
                rows.append({"path": path, "image_score": float(prediction.pred_score[index]),
                             "max_pixel_score": float(anomaly_map.max()), "label": int(batch["label"][index]),
                             "heatmap": name, **settings})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "scores.csv", index=False)
    print(table[["path", "image_score", "max_pixel_score"]].to_string(index=False, float_format="%.4f"))
    print(f"{len(rows)} heatmaps and scores.csv written to {args.out} "
          f"(map: {settings['map_score']}, smoothed with sigma {args.map_sigma:g})")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from feclip.data import FAMILIES, generate_synthetic_dataset

    families = {"all": list(FAMILIES), "both": ["textures", "objects"]}.get(args.family, [args.family])
    for family in families:
        root = generate_synthetic_dataset(args.out / family, family=family, image_size=args.image_size,
                                          n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                                          n_test_defect_per_type=args.n_defect, seed=args.seed)
        print(f"{family}: synth:{root}")
    if {"textures", "objects"} <= set(families):
        print(f"train with: feclip train --train synth:{args.out / 'objects'} --val-fraction 0.25 "
              f"--target synth:{args.out / 'textures'} --out runs/synth")
    return 0


_COMMANDS = {"synth": _cmd_synth, "train": _cmd_train, "eval": _cmd_eval, "predict": _cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    from feclip.backbones import PretrainedWeightsUnavailable

    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("FECLIP_DEBUG", "0") not in ("", "0")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        _say("interrupted")
        return 130
    except (OSError, ValueError, PretrainedWeightsUnavailable, torch.cuda.OutOfMemoryError) as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"feclip: error: {message}", file=sys.stderr)
        return 1
