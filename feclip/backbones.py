"""Creating open_clip backbones: the real pretrained ones, and a tiny one for tests and smoke runs.

Real use is ``create_clip("ViT-L-14-336", "openai")``, exactly as in open_clip. Two
things are added on top:

* ``feclip-tiny``, an open_clip model config (12 blocks, width 64, 96 px input, 12x12
  patch grid) registered with open_clip's own config registry, so it is created by
  the same factory as every other model. It is randomly initialised: tests, smoke
  runs and the book use it wherever pretrained weights cannot be reached.
* A fast, clear failure when pretrained weights are neither cached nor downloadable,
  instead of a long retry loop: the error names the model, the tag and how to point
  at a local checkpoint file.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import open_clip
import torch
from torch import nn

__all__ = [
    "TINY_MODEL",
    "PretrainedWeightsUnavailable",
    "create_clip",
    "create_tiny_clip",
    "resolve_pretrained",
    "pretrained_available",
    "uses_quick_gelu",
]

TINY_MODEL = "feclip-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
if TINY_MODEL not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR)

_HUB_HOST = ("huggingface.co", 443)


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached locally nor reachable over the network."""


def _offline() -> bool:
    """Offline when asked to be (``FECLIP_OFFLINE`` or ``HF_HUB_OFFLINE``) or when the hub does not answer in 3 s."""
    if os.environ.get("FECLIP_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return True
    try:
        socket.create_connection(_HUB_HOST, timeout=3).close()
    except OSError:
        return True
    return False


def _cached_file(cfg: dict, cache_dir: str | None) -> str | None:
    """Local path of a pretrained file already in the Hugging Face or URL cache, else ``None``."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith(".bin"):
            candidates.insert(0, filename.replace(".bin", ".safetensors").replace("pytorch_model", "model"))
        for candidate in candidates:
            found = try_to_load_from_cache(model_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
    url = cfg.get("url", "")
    if url:
        path = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def resolve_pretrained(name: str, pretrained: str | None, cache_dir: str | None = None) -> str | None:
    """Turn a pretrained tag or path into what ``open_clip.create_model`` should load, failing fast offline.

    Args:
        name: open_clip model name, e.g. ``"ViT-L-14-336"``.
        pretrained: A tag such as ``"openai"``, a path to a checkpoint file, or ``None`` for random weights.
        cache_dir: Optional weights cache directory.

    Returns:
        ``None`` (random weights), a local file path, or the tag itself when it can be downloaded now.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path but no file is there.
        ValueError: The tag is unknown for this model.
        PretrainedWeightsUnavailable: The weights are not cached and the hub cannot be reached.
    """
    if not pretrained:
        return None
    if os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors")):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"pretrained checkpoint file not found: {pretrained}")
        return pretrained
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"no pretrained weights tagged {pretrained!r} for model {name!r}; known tags: {tags or 'none'}")
    cached = _cached_file(cfg, cache_dir)
    if cached:
        return cached
    if _offline():
        raise PretrainedWeightsUnavailable(
            f"pretrained weights {name!r} / {pretrained!r} are not cached and the model hub cannot be reached. "
            f"Download open_clip_pytorch_model.bin for this model elsewhere and pass its path, e.g. "
            f'pretrained="/path/to/open_clip_pytorch_model.bin" (or --pretrained PATH on the command line), '
            f'or use the offline backbone name="{TINY_MODEL}", pretrained=None.'
        )
    return pretrained


def pretrained_available(name: str, pretrained: str | None) -> bool:
    """Whether :func:`create_clip` would find these weights (cached, a file, or downloadable now)."""
    try:
        resolve_pretrained(name, pretrained)
    except (PretrainedWeightsUnavailable, FileNotFoundError, ValueError):
        return False
    return True


def uses_quick_gelu(name: str, pretrained: str | None) -> bool:
    """Whether these weights were trained with QuickGELU (OpenAI's CLIPs were).

    open_clip only warns when a plain config meets the ``openai`` tag, and cannot know the tag
    at all once it is handed a cached file, so the activation is decided here: from the tag's
    pretrained config, or, for a checkpoint path, when every known tag of the model uses QuickGELU
    (``ViT-L-14-336`` has only ``openai``). Model names ending in ``-quickgelu`` already set it.

    Args:
        name: open_clip model name.
        pretrained: Tag, checkpoint path or ``None``.

    Returns:
        Whether to build the model with QuickGELU.
    """
    if not pretrained:
        return False
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    tags = open_clip.list_pretrained_tags_by_model(name)
    return bool(tags) and all(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False) for tag in tags)


def create_clip(
    name: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> tuple[nn.Module, open_clip.tokenizer.SimpleTokenizer]:
    """Create an open_clip model and its tokenizer, in eval mode.

    Args:
        name: open_clip model name (``open_clip.list_models()``), or ``"feclip-tiny"``.
        pretrained: Tag (``"openai"``), checkpoint path, or ``None`` for random weights.
        device: Device to put the model on.
        cache_dir: Optional weights cache directory.
        seed: Seed of the random initialisation when ``pretrained`` is ``None`` (the global
            RNG is left untouched), so a random backbone can be rebuilt exactly.

    Returns:
        ``(model, tokenizer)``.
    """
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    weights = resolve_pretrained(name, pretrained, cache_dir)
    root_logger = logging.getLogger()
    level = root_logger.level
    if weights is None:
        root_logger.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: that is the point here
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(
                name,
                pretrained=weights,
                device=device,
                cache_dir=cache_dir,
                force_quick_gelu=uses_quick_gelu(name, pretrained),
            )
    finally:
        root_logger.setLevel(level)
    return model.eval(), open_clip.get_tokenizer(name)


def create_tiny_clip(seed: int = 0, device: torch.device | str = "cpu") -> tuple[nn.Module, open_clip.tokenizer.SimpleTokenizer]:
    """The randomly initialised ``feclip-tiny`` backbone, the same for the same seed.

    Args:
        seed: Seed of the random initialisation (the global RNG is left untouched).
        device: Device to put the model on.

    Returns:
        ``(model, tokenizer)`` in eval mode.
    """
    return create_clip(TINY_MODEL, None, device=device, seed=seed)
