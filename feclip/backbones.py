"""Creating open_clip backbones: the one factory every detector, checkpoint and benchmark calls.

Real use is ``create_clip("ViT-L-14-336", "openai")``, exactly as in open_clip. On top:

* ``feclip-tiny``, an open_clip model config (12 blocks, width 64, 96 px input, 12x12
  patch grid) registered with open_clip's own config registry, so it is created by
  the same factory as every other model. With ``pretrained=None`` it is randomly
  initialised from a seed; with ``pretrained="toy"`` (:data:`feclip.toy_clip.TOY_TAG`) it
  loads the toy CLIP shipped with feclip. Tests, smoke runs and the book use it wherever
  real pretrained weights cannot be reached.
* A fast, clear failure when pretrained weights are neither cached nor downloadable,
  instead of a long retry loop: the error names the model, the tag and how to point
  at a local checkpoint file.
* The right activation for the weights (OpenAI's CLIPs were trained with QuickGELU), decided
  from the tag, from a weights file, or given by the caller (:func:`uses_quick_gelu`).
* A record of where every backbone came from (:func:`backbone_origin`), which
  :class:`feclip.model.FEClip` stores in its config and checkpoints, and a fingerprint of its
  weights (:func:`backbone_fingerprint`) that tells a rebuilt backbone from another one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

__all__ = [
    "TINY_MODEL",
    "BackboneOrigin",
    "PretrainedWeightsUnavailable",
    "backbone_fingerprint",
    "backbone_origin",
    "create_clip",
    "random_backbone_fingerprint",
    "create_tiny_clip",
    "resolve_pretrained",
    "pretrained_available",
    "has_quick_gelu",
    "is_torchscript_archive",
    "uses_quick_gelu",
]

TINY_MODEL = "feclip-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
if TINY_MODEL not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR)

_HUB_HOST = ("huggingface.co", 443)
_TOY_TAG = "toy"  # feclip.toy_clip.TOY_TAG; spelled here so that naming a tag needs no torch model code


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights are neither cached locally nor reachable over the network."""


@dataclass(frozen=True)
class BackboneOrigin:
    """How :func:`create_clip` made a backbone: enough to make it again.

    Attributes:
        name: open_clip model name.
        pretrained: Tag or weights file as the caller gave it (``None``: random weights).
        seed: Seed of the random initialisation (meaningful when ``pretrained`` is ``None``).
    """

    name: str
    pretrained: str | None
    seed: int


_ORIGIN_ATTRIBUTE = "feclip_origin"


def backbone_origin(clip: nn.Module) -> BackboneOrigin | None:
    """Where :func:`create_clip` made ``clip`` from, or ``None`` for a backbone made some other way.

    open_clip (3.x) keeps neither the model name nor the weights' tag on the model it builds, so
    :func:`create_clip` attaches this record; copies and device moves keep it.
    """
    return getattr(clip, _ORIGIN_ATTRIBUTE, None)


def has_quick_gelu(clip: nn.Module) -> bool:
    """Whether the image tower of an open_clip model uses QuickGELU (``x * sigmoid(1.702 x)``)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(module, QuickGELU) for module in clip.visual.modules())


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
    if pretrained == _TOY_TAG:
        return str(_toy_weights(name))
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


def _toy_weights(name: str) -> Path:
    """The shipped toy CLIP weights file, which exist for ``feclip-tiny`` only."""
    if name != TINY_MODEL:
        raise ValueError(f"the {_TOY_TAG!r} weights are feclip's toy CLIP, made for {TINY_MODEL!r} only, not {name!r}")
    from feclip import toy_clip

    if not toy_clip.TOY_WEIGHTS.is_file():
        raise FileNotFoundError(f"toy CLIP weights not found: {toy_clip.TOY_WEIGHTS} (reinstall feclip, or pretrain "
                                "them with python -m feclip.toy_clip --out FILE)")
    return toy_clip.TOY_WEIGHTS


def pretrained_available(name: str, pretrained: str | None) -> bool:
    """Whether :func:`create_clip` would find these weights (cached, a file, or downloadable now)."""
    try:
        resolve_pretrained(name, pretrained)
    except (PretrainedWeightsUnavailable, FileNotFoundError, ValueError):
        return False
    return True


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive, the format OpenAI released its CLIP weights in.

    A TorchScript zip holds compiled ``code/`` and ``constants.pkl`` next to the tensors; a
    ``torch.save`` zip holds only ``data.pkl`` and the tensors. open_clip's own loaders
    (``load_openai_model``, ``load_state_dict``) take a TorchScript file to be OpenAI's.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return any(entry.endswith("/constants.pkl") or "/code/" in entry for entry in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def uses_quick_gelu(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> bool:
    """Whether these weights were trained with QuickGELU (OpenAI's CLIPs were).

    open_clip only warns when a plain config meets the ``openai`` tag, and cannot know the tag
    at all once it is handed a file, so the activation is decided here, in this order:

    1. ``quick_gelu`` when the caller gives it;
    2. a tag: its pretrained config says (``openai`` tags say QuickGELU);
    3. a weights file in OpenAI's release format (a TorchScript archive, :func:`is_torchscript_archive`): QuickGELU;
    4. any other weights file: what every known tag of the model agrees on (``ViT-L-14-336`` has only
       ``openai``, so QuickGELU); when the tags disagree (``ViT-B-16``, ``ViT-L-14``: OpenAI's and
       LAION's weights share a layout) the file cannot tell, and the caller must say.

    Model names ending in ``-quickgelu`` set it in their config anyway.

    Args:
        name: open_clip model name.
        pretrained: Tag, weights file or ``None`` (random weights: GELU unless ``quick_gelu``).
        quick_gelu: The caller's answer, which wins.

    Returns:
        Whether to build the model with QuickGELU.

    Raises:
        ValueError: A weights file whose activation cannot be told, and no ``quick_gelu``.
    """
    if quick_gelu is not None:
        return bool(quick_gelu)
    if not pretrained or pretrained == _TOY_TAG:
        return False  # random weights; the toy CLIP is a feclip-tiny, whose config says GELU
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu", False))
    if is_torchscript_archive(pretrained):
        return True
    tags = open_clip.list_pretrained_tags_by_model(name)
    votes = {bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False)) for tag in tags}
    if len(votes) == 1:
        return votes.pop()
    if not votes:
        return False  # a model no release is tagged for: open_clip's plain config (GELU)
    raise ValueError(
        f"cannot tell from the weights file {pretrained} whether it holds OpenAI's {name} (trained with QuickGELU) "
        f"or another release (GELU): pass quick_gelu=True or False (--quick-gelu / --no-quick-gelu on the command line)"
    )


def create_clip(
    name: str = "ViT-L-14-336",
    pretrained: str | None = "openai",
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
    quick_gelu: bool | None = None,
    init_on_device: bool = False,
) -> tuple[nn.Module, open_clip.tokenizer.SimpleTokenizer]:
    """Create an open_clip model and its tokenizer, in eval mode, with its :class:`BackboneOrigin` attached.

    This is the one place feclip builds a backbone: detectors (``from_open_clip``), checkpoints
    (:func:`feclip.model.load_feclip`), the toy CLIP and the benchmarks all call it.

    Args:
        name: open_clip model name (``open_clip.list_models()``), or ``"feclip-tiny"``.
        pretrained: Tag (``"openai"``; ``"toy"`` for ``feclip-tiny``'s shipped toy CLIP), checkpoint path,
            or ``None`` for random weights.
        device: Device to put the model on.
        cache_dir: Optional weights cache directory.
        seed: Seed of the random initialisation when ``pretrained`` is ``None`` (the global
            RNG is left untouched), so a random backbone can be rebuilt exactly.
        quick_gelu: Activation for a weights file that cannot tell (see :func:`uses_quick_gelu`).
        init_on_device: Draw random weights directly on ``device`` (seconds instead of a minute for
            ViT-L on a GPU). The draw then follows that device's generator, so the weights are not the
            CPU draw of ``seed`` and a checkpoint cannot rebuild them: for benchmarks, whose timings do
            not depend on the weights.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ValueError: An unknown model or tag, or the toy weights asked for another model.
        FileNotFoundError: A weights file (or the toy CLIP's) is missing.
        PretrainedWeightsUnavailable: The weights are not cached and the hub cannot be reached.
    """
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if pretrained == _TOY_TAG:
        from feclip.toy_clip import load_toy_clip

        _toy_weights(name)  # one clear error for another model or a missing file
        model, tokenizer = load_toy_clip(device=device)  # a seed-0 feclip-tiny from this factory, then the toy state
        setattr(model, _ORIGIN_ATTRIBUTE, BackboneOrigin(name, _TOY_TAG, 0))
        return model.eval(), tokenizer
    weights = resolve_pretrained(name, pretrained, cache_dir)
    force_quick_gelu = uses_quick_gelu(name, pretrained, quick_gelu)
    device = torch.device(device)
    on_device = init_on_device and weights is None
    root_logger = logging.getLogger()
    level = root_logger.level
    if weights is None:
        root_logger.setLevel(logging.ERROR)  # open_clip warns that no weights were loaded: that is the point here
    try:
        with torch.random.fork_rng(devices=[device] if on_device and device.type == "cuda" else []):
            torch.manual_seed(seed)
            with torch.device(device) if on_device else contextlib.nullcontext():
                model = open_clip.create_model(
                    name,
                    pretrained=weights,
                    device=device,
                    cache_dir=cache_dir,
                    force_quick_gelu=force_quick_gelu,
                )
    finally:
        root_logger.setLevel(level)
    setattr(model, _ORIGIN_ATTRIBUTE, BackboneOrigin(name, pretrained or None, seed))
    return model.eval(), open_clip.get_tokenizer(name)


def create_tiny_clip(seed: int = 0, device: torch.device | str = "cpu") -> tuple[nn.Module, open_clip.tokenizer.SimpleTokenizer]:
    """The randomly initialised ``feclip-tiny`` backbone, the same for the same seed: ``create_clip("feclip-tiny", None)``.

    Args:
        seed: Seed of the random initialisation (the global RNG is left untouched).
        device: Device to put the model on.

    Returns:
        ``(model, tokenizer)`` in eval mode.
    """
    return create_clip(TINY_MODEL, None, device=device, seed=seed)


def backbone_fingerprint(clip: nn.Module) -> str:
    """A short hash of the image tower's patch embedding and projection, to tell backbone weights apart.

    Args:
        clip: An open_clip model with a ViT image tower.

    Returns:
        16 hexadecimal characters; equal for equal weights (compared in float32 on the CPU).
    """
    visual = clip.visual
    digest = hashlib.sha256()
    for tensor in (visual.conv1.weight, visual.class_embedding, visual.proj):
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def random_backbone_fingerprint(name: str, seed: int) -> str:
    """The :func:`backbone_fingerprint` of ``create_clip(name, None, seed=seed)`` (built once per process)."""
    clip, _ = create_clip(name, None, seed=seed)
    return backbone_fingerprint(clip)
