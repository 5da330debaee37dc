"""What every subcommand shares: one-line messages, the flags several commands take, loading a checkpoint.

This module imports no torch at module level: parsers are built from it before any command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from feclip.cli.choices import MAP_SCORES, RESIZE_MODES

__all__ = [
    "add_checkpoint_input",
    "add_quick_gelu",
    "add_runtime",
    "formatter",
    "is_main_process",
    "load_checkpoint_model",
    "parse_pretrained",
    "say",
    "user_errors",
]


def say(message: str) -> None:
    """One ``feclip: ...`` line on stderr."""
    print(f"feclip: {message}", file=sys.stderr)


def is_main_process() -> bool:
    """Rank 0 under torchrun (and the only process otherwise): the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a user can cause, printed as one line: OS and value errors, unreachable weights, GPU memory.

    The last two are only looked up when their modules are loaded (nothing else can have raised them),
    so that an error in a command that never imported torch stays quick.
    """
    errors: list[type[BaseException]] = [OSError, ValueError]
    if "feclip.backbones" in sys.modules:
        errors.append(sys.modules["feclip.backbones"].PretrainedWeightsUnavailable)
    if "torch" in sys.modules:
        errors.append(sys.modules["torch"].cuda.OutOfMemoryError)
    return tuple(errors)


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def parse_pretrained(value: str | None) -> str | None:
    """``--pretrained``: a tag or a file; ``none``, ``random`` or an empty value mean random weights."""
    return None if value is None or value.lower() in ("none", "random", "") else value


def add_runtime(parser: argparse.ArgumentParser, batch_size: int | None = 8) -> None:
    """``--device``, ``--batch-size`` and ``--num-workers``."""
    from feclip import profiles

    parser.add_argument("--device", default=None, metavar="DEVICE", help="auto (CUDA if available), cpu, cuda, cuda:1 (default: auto)")
    default = f"default: {batch_size}" if batch_size else f"default: 16; smoke run: {profiles.SMOKE.batch_size}"
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help=f"images per batch ({default})")
    parser.add_argument("--num-workers", type=int, default=None, metavar="N", help="DataLoader worker processes")


def add_quick_gelu(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="the activation of a --pretrained weights file that cannot tell (OpenAI's: QuickGELU; "
                             "LAION's and most others: GELU); default: decided from the tag or the file")


def add_checkpoint_input(parser: argparse.ArgumentParser, map_sigma: float) -> None:
    """The flags of a command that loads a trained checkpoint: ``--ckpt``, its backbone, how maps are made."""
    parser.add_argument("--ckpt", required=True, metavar="CKPT", help="checkpoint .safetensors, or a run folder (its last.safetensors)")
    parser.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE",
                        help="load the backbone's weights from here instead of the checkpoint's tag (e.g. a local .bin)")
    add_quick_gelu(parser)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES,
                        help="how images are fitted to the input size (default: the one the checkpoint was trained with)")
    parser.add_argument("--map-score", choices=MAP_SCORES,
                        help="the map: tap mean of the softmax probabilities or of the logit margins (default: the checkpoint's)")
    parser.add_argument("--map-sigma", type=float, default=map_sigma, metavar="S",
                        help=f"Gaussian smoothing of the maps in pixels, 0: off (default: {map_sigma:g})")


def load_checkpoint_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The checkpoint's model on the asked device, with the ``--map-score`` / ``--resize-mode`` overrides.

    Returns:
        ``(model, device)``.
    """
    from feclip.model import load_feclip
    from feclip.train import resolve_device

    device = resolve_device(args.device or "auto")
    model = load_feclip(args.ckpt, device=device, pretrained=parse_pretrained(args.pretrained), quick_gelu=args.quick_gelu)
    for flag in ("map_score", "resize_mode"):  # how the model reports and reads images; not what it learnt
        if getattr(args, flag) is not None:
            setattr(model.config, flag, getattr(args, flag))
    return model, device


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; ``{}`` when there is none."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
