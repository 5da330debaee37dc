"""Small, safe FE-CLIP checkpoints: only the trained adapters and ``fc_patch``, plus the config.

The frozen CLIP backbone is never saved: a checkpoint names it (``backbone``,
``pretrained``) and :func:`feclip.model.load_feclip` rebuilds it with
:func:`feclip.backbones.create_clip`. A ViT-L/14-336
checkpoint therefore holds about 42 M adapter weights instead of the 430 M of the whole
model. What a checkpoint holds:

* ``<name>.safetensors``: the tensors ``adapters.*`` and ``fc_patch.*``, and in the
  safetensors header (metadata key ``"feclip"``) a JSON document with the
  :class:`~feclip.model.FEClipConfig`, the feclip version, the seed of a randomly
  initialised backbone, a fingerprint of the backbone weights, and any ``extra`` values
  (the trainer stores the epoch and its :class:`~feclip.train.TrainConfig`);
* ``<name>.json``: the same document, for people and ``jq``.

This module reads and writes files; it knows the model only through what it saves (``config``,
``clip``, ``state_dict``), so :mod:`feclip.model` can use it without an import circle.

Format 2 added ``fc_patch_init``, ``map_score``, ``resize_mode`` and ``quick_gelu`` to the config.
A format-1 checkpoint still loads, read as what it was trained with: ``fc_patch`` started at
CLIP's projection (``fc_patch_init="clip"``), probability maps, squashed images, and the
activation the weights' tag implies.

Every file is written atomically (:func:`atomic_write`): to a temporary file in the same
folder, flushed to disk with ``fsync``, then renamed over the target with ``os.replace``.
A crash or a Colab disconnect in the middle of a save leaves the previous checkpoint intact;
:func:`remove_stale_temporaries` deletes the hidden temporary such a crash leaves behind. A full
disk is one :class:`DiskFullError` naming the file. Files get the user's normal permissions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from feclip.backbones import backbone_fingerprint, random_backbone_fingerprint
from feclip.dct import canonical_basis

if TYPE_CHECKING:
    from feclip.model import FEClip, FEClipConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "TRAINED_PREFIXES",
    "CheckpointMismatch",
    "DiskFullError",
    "atomic_write",
    "backbone_fingerprint",
    "checkpoint_paths",
    "config_differences",
    "load_into",
    "read_metadata",
    "remove_stale_temporaries",
    "save_checkpoint",
    "trained_state_dict",
    "upgrade_config",
]

CHECKPOINT_FORMAT = 2
# What a format-1 config (written before these fields existed) meant, where today's default differs.
_FORMAT_1_MEANING = {"fc_patch_init": "clip"}
TRAINED_PREFIXES = ("adapters.", "fc_patch.")
# Fields that change what the saved tensors mean; a model must agree on all of them to load them.
_STRUCTURAL_FIELDS = (
    "backbone",
    "tap_indices",
    "ffe_window",
    "lfs_window",
    "lfs_statistic",
    "lambda_fuse",
    "basis",
    "use_ffe",
    "use_lfs",
    "quick_gelu",
)
# Structural fields an old checkpoint may not know (None): then they are not compared.
_MAYBE_UNKNOWN = ("quick_gelu",)


class CheckpointMismatch(ValueError):
    """A checkpoint was made for a different FE-CLIP (backbone, taps, windows, statistic, ...)."""


# --------------------------------------------------------------------------- atomic files

# A temporary of atomic_write: ".<target name>.<8 random characters>.tmp" in the target's folder (the same
# pattern tempfile.mkstemp gave before, so that leftovers of older versions are recognised too).
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")
# Free space below which a failed write is taken to have filled the disk (writers such as torch.save report
# a full disk as an unrelated RuntimeError; the half-written temporary still holds the space when we look).
_NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(OSError):
    """A file could not be written because its file system is full (or the user's quota is spent).

    Its ``errno`` is ``ENOSPC``; its message is the one line the command line prints.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno, self.strerror = errno.ENOSPC, message

    def __str__(self) -> str:
        return self.strerror


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; best effort, since some file systems (Windows, FUSE mounts) refuse it."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _new_temporary(path: Path) -> tuple[Path, int]:
    """Create an empty temporary beside ``path`` with the user's normal permissions (``0o666`` less the umask).

    ``tempfile.mkstemp`` would create it ``0o600`` (and so does safetensors, which writes its own
    temporary), and ``os.replace`` keeps that mode: checkpoints the user's group cannot read.

    Returns:
        The temporary and the permission bits it was created with.
    """
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temporary, stat.S_IMODE(temporary.stat().st_mode)


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write failed because ``directory``'s file system is full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    if "no space left on device" in text or "os error 28" in text or "disk quota exceeded" in text:
        return True
    try:
        usage = os.statvfs(directory)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return usage.f_bavail * usage.f_frsize < _NEARLY_FULL_BYTES


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file so that ``path`` holds either its old content or the complete new one.

    The file gets the user's normal permissions (``0o666`` less the umask). A write that fails because
    the disk is full raises :class:`DiskFullError` naming ``path`` (the previous file is kept).

    Args:
        path: The target file.
        write: Called with a temporary path in the same folder; must write the whole file there.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DiskFullError: No space left on the device (or the quota is spent); ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path, mode = _new_temporary(path)
    try:
        write(temporary_path)
        if stat.S_IMODE(temporary_path.stat().st_mode) != mode:  # the writer made its own file (safetensors: 0o600)
            os.chmod(temporary_path, mode)
        with open(temporary_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary_path, path)
    except Exception as error:
        full = _disk_full(error, path.parent)
        temporary_path.unlink(missing_ok=True)
        if full:
            kept = f"the previous {path.name} is kept" if path.exists() else f"{path.name} was not written"
            raise DiskFullError(f"no space left on device while writing {path} ({kept}); free some space and run "
                                "the command again") from error
        raise
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries an interrupted :func:`atomic_write` left in ``directory`` (a crash, ``kill -9``).

    Call it only where no other process is writing (the run folder's lock is held): a temporary
    being written right now looks the same.

    Returns:
        The files deleted.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for candidate in directory.iterdir():
        if _TEMPORARY.match(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- save


def _strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``, so the document is strict JSON (``jq`` reads it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, sidecar)`` for a checkpoint path given with or without ``.safetensors``, or as a run folder.

    A folder means its ``last.safetensors`` (what :func:`feclip.train.train` writes every epoch).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "last.safetensors"
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def trained_state_dict(model: FEClip) -> dict[str, torch.Tensor]:
    """The trained tensors (``adapters.*``, ``fc_patch.*``) on the CPU, contiguous, ready for safetensors."""
    return {
        key: value.detach().cpu().contiguous()
        for key, value in model.state_dict().items()
        if key.startswith(TRAINED_PREFIXES)
    }


def save_checkpoint(
    model: FEClip,
    path: str | Path,
    extra: dict[str, Any] | None = None,
    *,
    backbone_seed: int | None = None,
) -> Path:
    """Save the adapters, ``fc_patch`` and the config, atomically.

    Args:
        model: The FE-CLIP model (or a ``DistributedDataParallel`` wrapping one).
        path: Target ``.safetensors`` file (the suffix is added if missing); a ``.json`` sidecar goes next to it.
        extra: JSON-serialisable values stored with the checkpoint (epoch, training config, metrics).
        backbone_seed: Seed of a randomly initialised backbone (``pretrained=None``), so that
            :func:`feclip.model.load_feclip` can rebuild the same one; default ``model.config.backbone_seed``.

    Returns:
        The path of the ``.safetensors`` file.

    Raises:
        ValueError: The model does not know its backbone (``config.backbone`` is ``None``).
    """
    from feclip import __version__

    weights_path, sidecar_path = checkpoint_paths(path)
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper saves what it wraps
    config = model.config
    if config.backbone is None:
        raise ValueError(
            f"cannot save {weights_path}: this FE-CLIP does not know which backbone it wraps (it was not made by "
            "feclip.backbones.create_clip); name it: FEClip(clip, tokenizer, backbone=<open_clip name>, "
            "pretrained=<tag, weights file or None>, backbone_seed=<seed of random weights>)"
        )
    seed = int(backbone_seed if backbone_seed is not None else config.backbone_seed)
    fingerprint = backbone_fingerprint(model.clip)
    if config.pretrained is None and fingerprint != random_backbone_fingerprint(config.backbone, seed):
        warnings.warn(
            f"the randomly initialised {config.backbone} backbone is not the one seed {seed} gives; "
            f"{weights_path} will only load with load_feclip(..., clip=<that backbone>). "
            "Pass backbone_seed= to save_checkpoint.",
            stacklevel=2,
        )
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "feclip_version": __version__,
        "config": config.to_dict(),
        "backbone_seed": seed if config.pretrained is None else None,
        "backbone_fingerprint": fingerprint,
        "grid_size": list(model.grid_size),
        "extra": _strict_json(extra or {}),
    }
    document = json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    tensors = trained_state_dict(model)
    atomic_write(weights_path, lambda temporary: save_file(tensors, str(temporary), metadata={"feclip": document}))
    _write_text_atomic(sidecar_path, document + "\n")
    return weights_path


# --------------------------------------------------------------------------- load


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON document stored in a checkpoint's safetensors header.

    Raises:
        FileNotFoundError: No checkpoint at ``path``.
        ValueError: The file is not an feclip checkpoint, or comes from a newer feclip.
    """
    weights_path, _ = checkpoint_paths(path)
    if not weights_path.is_file():
        tried = f" (nor {weights_path})" if Path(path).expanduser() != weights_path else ""
        raise FileNotFoundError(f"checkpoint not found: {path}{tried}")
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    if "feclip" not in header:
        raise ValueError(f"{weights_path} is a safetensors file without feclip metadata (not an FE-CLIP checkpoint)")
    metadata = json.loads(header["feclip"])
    if metadata.get("format", 0) > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{weights_path} has checkpoint format {metadata['format']} from feclip {metadata.get('feclip_version')}; "
            f"this feclip reads format {CHECKPOINT_FORMAT} or older: upgrade feclip"
        )
    if "config" in metadata:
        metadata["config"] = upgrade_config(metadata["config"])
    return metadata


def upgrade_config(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict read as what it was trained with, in today's spelling.

    A config written before format 2 (it has no ``fc_patch_init``) started ``fc_patch`` at CLIP's
    projection; the basis once called ``"dft"`` is ``"hartley"``.
    """
    upgraded = values if "fc_patch_init" in values else {**_FORMAT_1_MEANING, **values}
    if "basis" in upgraded:
        upgraded = {**upgraded, "basis": canonical_basis(upgraded["basis"])}
    return upgraded


def _load_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(weights_path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def config_differences(saved: dict[str, Any], current: FEClipConfig) -> list[str]:
    """The structural fields where a saved config (as a dict) and a model's config differ, one phrase each."""
    saved, current_values = upgrade_config(saved), current.to_dict()
    return [
        f"{name} {saved.get(name)!r} (checkpoint) vs {current_values[name]!r} (model)"
        for name in _STRUCTURAL_FIELDS
        if saved.get(name) != current_values[name]
        and not (name in _MAYBE_UNKNOWN and None in (saved.get(name), current_values[name]))
    ]


def load_into(model: FEClip, path: str | Path, *, check_backbone: bool = True) -> dict[str, Any]:
    """Copy a checkpoint's adapters and ``fc_patch`` into ``model``, after checking that they fit.

    Prompts and temperature are the model's own (they are inference-time choices); every
    structural field (backbone, taps, ``P``, ``Q``, statistic, ``lambda``, basis, branches)
    and the backbone weights must match.

    Args:
        model: An FE-CLIP model built for the same backbone and configuration.
        path: Checkpoint file (or a run folder, meaning its ``last.safetensors``).
        check_backbone: Compare the backbone weights' fingerprint too.

    Returns:
        The checkpoint's metadata (see :func:`read_metadata`).

    Raises:
        CheckpointMismatch: Naming every field that differs.
    """
    weights_path, _ = checkpoint_paths(path)
    metadata = read_metadata(weights_path)
    problems = config_differences(metadata["config"], model.config)
    if not problems and check_backbone:
        fingerprint = backbone_fingerprint(model.clip)
        if fingerprint != metadata["backbone_fingerprint"]:
            saved = metadata["config"]
            problems.append(
                f"backbone weights differ: checkpoint trained on {saved['backbone']} / {saved['pretrained']!r}"
                + (f" (random init, seed {metadata['backbone_seed']})" if metadata.get("backbone_seed") is not None else "")
                + f", the model's {model.config.backbone} / {model.config.pretrained!r} has other weights"
            )
    tensors = _load_tensors(weights_path)
    if not problems:
        expected = {key: value.shape for key, value in model.state_dict().items() if key.startswith(TRAINED_PREFIXES)}
        found = {key: value.shape for key, value in tensors.items()}
        if expected != found:
            missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
            shapes = [f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in set(found) & set(expected) if found[k] != expected[k]]
            problems.append(f"tensors differ: missing {missing}, unexpected {unexpected}, shapes {sorted(shapes)}")
    if problems:
        raise CheckpointMismatch(f"checkpoint {weights_path} does not match this model: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=False)
    return metadata
