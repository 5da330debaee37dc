"""What every subcommand shares: one-line messages, the flags several commands take, loading a checkpoint.

This module imports no torch at module level: parsers are built from it before any command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feclip.cli.choices import MAP_SCORES, RESIZE_MODES

__all__ = [
    "add_checkpoint_input",
    "add_quick_gelu",
    "add_runtime",
    "check_common_flags",
    "check_detector_flags",
    "check_output_folder",
    "error_line",
    "formatter",
    "is_main_process",
    "LoadedDetector",
    "load_checkpoint_model",
    "load_detector",
    "parse_pretrained",
    "pretrained_file_errors",
    "require_non_negative",
    "require_positive",
    "say",
    "user_errors",
    "winclip_plus",
    "METHODS",
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


def error_line(error: BaseException) -> str:
    """An error as one line: its message with the whitespace folded.

    An error raised in a DataLoader worker reaches the main process as the same type whose message
    holds the worker's whole traceback; its last line is the original message.
    """
    text = str(error)
    if "Original Traceback" in text:
        last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
        name, separator, message = last.partition(": ")
        text = message if separator and name.replace(".", "").replace("_", "").isalnum() else last
    return " ".join(text.split()) or type(error).__name__


def check_output_folder(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that exists as something else (a file), before any work is done.

    Raises:
        NotADirectoryError: Naming ``option`` and ``path``.
    """
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file, not a folder; choose a folder for the output")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _values(args: argparse.Namespace, name: str) -> list[Any]:
    value = getattr(args, name, None)
    return [] if value is None or isinstance(value, bool) else list(value) if isinstance(value, list) else [value]


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse a given value of the flags ``names`` (attribute names) that is not positive, naming the flag."""
    for name in names:
        for value in _values(args, name):
            if not value > 0:  # NaN too
                raise ValueError(f"{_flag(name)} must be positive, got {value}")


def require_non_negative(args: argparse.Namespace, *names: str) -> None:
    """Refuse a given value of the flags ``names`` that is negative, naming the flag."""
    for name in names:
        for value in _values(args, name):
            if not value >= 0:
                raise ValueError(f"{_flag(name)} must be zero or more, got {value}")


# Sizes and counts any subcommand may take, checked for every one before it runs (attribute names).
_POSITIVE_FLAGS = ("epochs", "batch_size", "pixel_size", "image_size", "steps", "images_per_category", "shots",
                   "save_every", "windows_per_image", "threads", "ffe_window", "lfs_window", "opset", "timeout")
_NON_NEGATIVE_FLAGS = ("num_workers", "n_train_good", "n_test_good", "n_defect", "warmup", "map_sigma", "map_sigmas",
                       "weight_decay", "smoke_categories")
# The options naming an output FOLDER, per subcommand: a file there is refused before any work.
_OUTPUT_FOLDERS = {"synth": ("out",), "train": ("out",), "eval": ("out",), "predict": ("out",),
                   "download": ("root",), "reproduce": ("out", "results_root")}


def check_common_flags(command: str, args: argparse.Namespace) -> None:
    """What every subcommand's flags must be, whoever wrote the subcommand: positive sizes, output folders."""
    require_positive(args, *_POSITIVE_FLAGS)
    require_non_negative(args, *_NON_NEGATIVE_FLAGS)
    for name in _OUTPUT_FOLDERS.get(command, ()):
        if getattr(args, name, None) is not None:
            check_output_folder(Path(getattr(args, name)).expanduser(), _flag(name))


@contextlib.contextmanager
def pretrained_file_errors(pretrained: str | None, backbone: str | None) -> Iterator[None]:
    """Turn what loading a ``--pretrained`` weights file that does not fit raises into one error naming it.

    open_clip fails on such a file with a ``RuntimeError`` listing hundreds of keys, an assertion or a
    ``KeyError`` from the unpickler; nothing the user can read. Other errors pass unchanged.
    """
    path = Path(pretrained).expanduser() if pretrained and parse_pretrained(pretrained) else None
    try:
        yield
    except (RuntimeError, KeyError, AssertionError, EOFError, IndexError, TypeError, AttributeError) as err:
        if path is None or not path.is_file():
            raise
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"--pretrained {pretrained} is not a CLIP checkpoint of {backbone or 'this backbone'} "
                         f"({reason[:160]})") from err
    except Exception as err:
        if path is None or not path.is_file() or isinstance(err, user_errors()):
            raise
        raise ValueError(f"--pretrained {pretrained} is not a readable CLIP checkpoint ({error_line(err)[:160]})") from err


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


#: What ``--method`` offers: FE-CLIP (a trained checkpoint) and the baselines the library has.
METHODS = ("feclip", "clip", "winclip", "winclip+")


def add_checkpoint_input(parser: argparse.ArgumentParser, map_sigma: float, *, methods: bool = False,
                         onnx: bool = False) -> None:
    """The flags of a command that scores images with a detector: which one, its backbone, how maps are made.

    Args:
        parser: The subcommand's parser.
        map_sigma: The default ``--map-sigma``.
        methods: Offer ``--method`` (the baselines, built from a backbone) besides FE-CLIP's ``--ckpt``.
        onnx: Offer ``--onnx`` (an exported FE-CLIP run by onnxruntime).
    """
    if methods:
        parser.add_argument("--method", choices=METHODS, default="feclip",
                            help="feclip: a trained checkpoint (--ckpt or --onnx); clip, winclip: the zero-shot "
                                 "baselines on a backbone (--backbone, --pretrained); winclip+: WinCLIP with normal "
                                 "reference images (default: feclip)")
    parser.add_argument("--ckpt", required=not methods, metavar="CKPT",
                        help="checkpoint .safetensors, or a run folder (its last.safetensors)")
    if onnx:
        parser.add_argument("--onnx", type=Path, metavar="FILE",
                            help="an FE-CLIP exported by feclip export, run by onnxruntime without torch's model "
                                 "code (instead of --ckpt)")
    if methods:
        parser.add_argument("--backbone", metavar="NAME",
                            help="open_clip model of a baseline (default: the method's own, ViT-L-14-336 for clip, "
                                 "ViT-B-16-plus-240 for winclip)")
        parser.add_argument("--class-name", default="object", metavar="NAME",
                            help="object name in WinCLIP's prompts (default: object)")
    parser.add_argument("--pretrained", default=None, metavar="TAG_OR_FILE",
                        help="the backbone's weights: instead of the checkpoint's tag (e.g. a local .bin), or a "
                             "baseline's tag or file ('none': random weights)")
    add_quick_gelu(parser)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES,
                        help="how images are fitted to the input size (default: the one the checkpoint was trained with)")
    parser.add_argument("--map-score", choices=MAP_SCORES,
                        help="the map: tap mean of the softmax probabilities or of the logit margins (default: the checkpoint's)")
    parser.add_argument("--map-sigma", type=float, default=map_sigma, metavar="S",
                        help=f"Gaussian smoothing of the maps in pixels, 0: off (default: {map_sigma:g})")


@dataclass
class LoadedDetector:
    """A detector ready to score images, and what a command needs with it.

    Attributes:
        detector: ``detector(images (B, 3, H, W)) -> AnomalyPrediction``.
        device: Where its images go.
        transform: The :class:`feclip.data.AnomalyTransform` its images need.
        value_range: The interval its maps lie in (the overlay's colour scale).
        settings: What the output tables record about it (method, map score, resize mode, ...).
        checkpoint: Its checkpoint's metadata (FE-CLIP from ``--ckpt``), else ``None``.
    """

    detector: Any
    device: Any
    transform: Any
    value_range: tuple[float, float]
    settings: dict[str, Any]
    checkpoint: dict[str, Any] | None = None


def check_detector_flags(args: argparse.Namespace) -> None:
    """Refuse flags that do not go together, before any work (each message names them)."""
    method = getattr(args, "method", "feclip")
    onnx = getattr(args, "onnx", None)
    if method == "feclip":
        if args.ckpt is None and onnx is None:
            raise ValueError("--method feclip needs a trained checkpoint: --ckpt RUN_OR_FILE" + (" or --onnx FILE" if
                                                                                                 hasattr(args, "onnx") else ""))
        if args.ckpt is not None and onnx is not None:
            raise ValueError("give --ckpt or --onnx, not both")
        if getattr(args, "backbone", None) is not None:
            raise ValueError("--backbone is for the baselines; --method feclip takes its backbone from the checkpoint")
        if onnx is not None and (args.pretrained or args.quick_gelu is not None or args.map_score or args.resize_mode):
            raise ValueError("--onnx runs the exported graph as it is: --pretrained, --quick-gelu, --map-score and "
                             "--resize-mode were fixed by feclip export")
    else:
        if args.ckpt is not None or onnx is not None:
            raise ValueError(f"--method {method} is built from a backbone (--backbone, --pretrained): it takes no "
                             "--ckpt or --onnx")
        if args.map_score is not None:
            raise ValueError(f"--map-score applies to --method feclip only, not {method}")
    require_non_negative(args, "map_sigma")


def _baseline(args: argparse.Namespace, device: Any) -> Any:
    """``--method clip | winclip | winclip+`` (the latter without its references yet) on its backbone."""
    from feclip.baselines import ClipZeroShot, WinClip
    from feclip.cli.choices import TINY_MODEL

    cls = ClipZeroShot if args.method == "clip" else WinClip
    if args.pretrained is not None:
        pretrained: Any = parse_pretrained(args.pretrained)
    elif args.backbone is None:
        pretrained = ...  # the method's own default weights
    else:
        pretrained = None if args.backbone == TINY_MODEL else "openai"
    options = {} if args.method == "clip" else {"class_name": args.class_name}
    with pretrained_file_errors(args.pretrained, args.backbone or cls.default_backbone[0]):
        try:
            return cls.from_open_clip(args.backbone, pretrained, device=device, quick_gelu=args.quick_gelu, **options)
        except TypeError as err:  # a backbone without a ViT image tower
            raise ValueError(f"--backbone {args.backbone}: {err}") from err


def load_detector(args: argparse.Namespace) -> LoadedDetector:
    """The detector ``--method`` / ``--ckpt`` / ``--onnx`` name (:func:`check_detector_flags` first)."""
    import torch

    method = getattr(args, "method", "feclip")
    if getattr(args, "onnx", None) is not None:  # onnxruntime alone: no torch model code is imported
        from feclip.export import OnnxDetector

        detector = OnnxDetector(args.onnx)
        config = detector.config
        settings = {"method": "feclip (onnx)", "map_score": config.get("map_score"),
                    "resize_mode": detector.transform.resize_mode}
        return LoadedDetector(detector, torch.device("cpu"), detector.transform, detector.anomaly_map_range, settings)
    from feclip.data import transforms_for_clip
    from feclip.train import resolve_device

    if method == "feclip":
        from feclip.checkpoint import checkpoint_paths, read_metadata

        model, device = load_checkpoint_model(args)
        settings = {"method": "feclip", "map_score": model.config.map_score, "resize_mode": model.config.resize_mode}
        return LoadedDetector(model, device, transforms_for_clip(model.clip, resize_mode=model.config.resize_mode),
                              model.anomaly_map_range, settings, read_metadata(checkpoint_paths(args.ckpt)[0]))
    device = resolve_device(args.device or "auto")
    detector = _baseline(args, device)
    resize_mode = args.resize_mode or "squash"
    settings = {"method": method, "backbone": args.backbone or type(detector).default_backbone[0],
                "map_score": "probability", "resize_mode": resize_mode}
    return LoadedDetector(detector, device, transforms_for_clip(detector.clip, resize_mode=resize_mode), (0.0, 1.0),
                          settings)


def winclip_plus(loaded: LoadedDetector, references: Any) -> LoadedDetector:
    """WinCLIP+ from a loaded WinCLIP and normal reference images ``(K, 3, H, W)``, normalised."""
    import dataclasses as dc

    from feclip.baselines import WinClipFewShot

    detector = WinClipFewShot(loaded.detector, references.to(loaded.device))
    return dc.replace(loaded, detector=detector, settings={**loaded.settings, "shots": int(references.shape[0])})


def load_checkpoint_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The checkpoint's model on the asked device, with the ``--map-score`` / ``--resize-mode`` overrides.

    Returns:
        ``(model, device)``.
    """
    from feclip.model import load_feclip
    from feclip.train import resolve_device

    device = resolve_device(args.device or "auto")
    with pretrained_file_errors(args.pretrained, "the checkpoint's backbone"):
        model = load_feclip(args.ckpt, device=device, pretrained=parse_pretrained(args.pretrained), quick_gelu=args.quick_gelu)
    for flag in ("map_score", "resize_mode"):  # how the model reports and reads images; not what it learnt
        if getattr(args, flag) is not None:
            setattr(model.config, flag, getattr(args, flag))
    return model, device
