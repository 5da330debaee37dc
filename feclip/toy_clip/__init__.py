"""The toy CLIP: ``feclip-tiny`` pretrained contrastively on the captioned synthetic world, shipped with feclip.

Real CLIP weights cannot be used everywhere the book and the tests run (no GPU, no network). A
*random* tiny CLIP knows nothing, so every zero-shot number it gives is noise. The toy CLIP is
the same ``feclip-tiny`` architecture, pretrained with open_clip's contrastive loss on captioned
renderings of the synthetic *textures* and *objects* families (:mod:`feclip.toy_clip.pretrain`,
``python -m feclip.toy_clip``), so that in its small world "a photo of a damaged object" means
something. It is **not** OpenAI's CLIP, and it has never seen a real photograph: its numbers say
whether the code and the method behave as they should, not what FE-CLIP scores on MVTec AD.

:data:`TOY_WEIGHTS` is the weights file inside the installed package; :func:`load_toy_clip`
builds the model from it, offline.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads only when a model is built: `feclip pretrain-toy-clip --help` stays quick
    import torch
    from torch import nn

__all__ = ["TOY_TAG", "TOY_WEIGHTS", "load_toy_clip", "toy_metadata"]

TOY_TAG = "toy"  # the pretrained tag that names these weights, as in create_clip("feclip-tiny", pretrained="toy")
TOY_WEIGHTS: Path = Path(str(resources.files("feclip") / "weights" / "feclip-tiny-toy.safetensors"))


def _weights_file(path: str | Path | None) -> Path:
    path = Path(path) if path is not None else TOY_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"toy CLIP weights not found: {path} (reinstall feclip, or pretrain them with "
                                "python -m feclip.toy_clip --out FILE)")
    return path


def toy_metadata(path: str | Path | None = None) -> dict[str, Any]:
    """The header of a toy CLIP weights file: description, command, feclip version, git commit, date, config...

    Values that were stored as JSON are decoded.

    Args:
        path: Weights file; default :data:`TOY_WEIGHTS`.
    """
    from safetensors import safe_open

    with safe_open(str(_weights_file(path)), framework="pt") as handle:
        header = handle.metadata() or {}
    decoded = {}
    for key, value in header.items():
        try:
            decoded[key] = json.loads(value) if value[:1] in "[{" or key in ("threads", "wall_seconds", "final_loss") else value
        except json.JSONDecodeError:
            decoded[key] = value
    return decoded


def load_toy_clip(device: torch.device | str = "cpu", path: str | Path | None = None) -> tuple[nn.Module, Any]:
    """The pretrained toy CLIP (``feclip-tiny`` architecture) and its tokenizer, in eval mode, float32, offline.

    Args:
        device: Device of the model.
        path: Weights file; default :data:`TOY_WEIGHTS`, the copy shipped in the package.

    Returns:
        ``(clip, tokenizer)``, like :func:`feclip.backbones.create_clip`.

    Raises:
        FileNotFoundError: The weights file is missing.
        ValueError: The file is not a complete ``feclip-tiny`` state (its name is given).
    """
    from safetensors.torch import load_file

    from feclip.backbones import create_tiny_clip

    weights = _weights_file(path)
    clip, tokenizer = create_tiny_clip(seed=0)
    state = {name: value.float() for name, value in load_file(str(weights)).items()}
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{weights} is not a feclip-tiny CLIP state: {str(error).splitlines()[0]}") from error
    return clip.to(device).eval(), tokenizer
