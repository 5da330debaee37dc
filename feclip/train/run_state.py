"""A run folder's files: what every epoch writes, what a resume reads back and checks, and the RNG states.

``last.state.pt`` holds everything a bit-exact resume needs (weights, Adam state, epoch, step, best
score, history and every RNG state); :func:`resume_run` refuses a state made for another model or
backbone and warns about a changed training config.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from feclip.checkpoint import (
    CheckpointMismatch,
    atomic_write,
    backbone_fingerprint,
    config_differences,
    save_checkpoint,
    trained_state_dict,
)
from feclip.train.config import TrainConfig
from feclip.train.history import History

__all__ = [
    "LAST",
    "BEST",
    "STATE",
    "FREE_TO_CHANGE",
    "RunState",
    "capture_rng_state",
    "restore_rng_state",
    "read_state",
    "resolve_resume",
    "resume_run",
    "save_epoch",
    "seed_everything",
]

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "last.state.pt"
_STATE_FORMAT = 1
# What every state file holds (a newer key may be added; an older file without it is read with its default).
_STATE_KEYS = ("format", "epoch", "global_step", "model", "model_config", "backbone_fingerprint", "train_config",
               "optimizer", "rng", "history")
# Settings a resumed run may change without changing its result.
FREE_TO_CHANGE = ("epochs", "num_workers", "device", "val_every", "val_batch_size", "best_metric", "cache_prefix")


@dataclass
class RunState:
    """Where a run stands between epochs.

    Attributes:
        epoch: Epochs done.
        global_step: Optimiser steps done.
        best: Best validation score so far (``-inf`` before any).
        history: One row per epoch done.
    """

    epoch: int = 0
    global_step: int = 0
    best: float = -math.inf
    history: History = field(default_factory=History)


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_resume(resume: str | Path | bool | None, out_dir: Path) -> Path | None:
    """The training-state file to resume from, or ``None`` for a fresh start.

    Args:
        resume: ``None``/``False``: start fresh. ``"auto"``/``True``: ``out_dir``'s state if there is one.
            A run folder, a ``.state.pt`` file, or a checkpoint ``X.safetensors`` (meaning ``X.state.pt``).
        out_dir: The run folder.
    """
    if resume is None or resume is False:
        return None
    if resume is True or resume == "auto":
        return out_dir / STATE if (out_dir / STATE).is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / STATE
    elif path.suffix == ".safetensors":
        path = path.with_suffix(".state.pt")
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume from: training state {path} not found")
    return path


def capture_rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state a resumed run must continue from: torch (CPU and CUDA), numpy, random and the loader's."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": numpy_state["state"]["pos"]}},
        "random": random.getstate(),
        "loader": generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                            "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(numpy_state)
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    generator.set_state(state["loader"])


def read_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """A training-state file's contents, checked to be one.

    Args:
        path: The ``.state.pt`` file.
        mmap: Map the tensors instead of reading them (a quick check that the file is whole).

    Raises:
        ValueError: The file is truncated, corrupt or not a training state (naming it), or from a newer feclip.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle and zip errors for a damaged file
        reason = " ".join(str(err).split()).split(". ")[0][:160] or type(err).__name__
        raise ValueError(f"training state {path} is truncated or corrupt ({reason}); delete it to start the run "
                         "again, or resume from a copy") from err
    missing = [key for key in _STATE_KEYS if key not in state] if isinstance(state, dict) else list(_STATE_KEYS)
    if missing:
        raise ValueError(f"{path} is not a feclip training state (it lacks {missing})")
    if state["format"] > _STATE_FORMAT:
        raise ValueError(f"training state {path} has format {state['format']}; this feclip reads format "
                         f"{_STATE_FORMAT} or older: upgrade feclip")
    return state


def resume_run(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, config: TrainConfig, generator: torch.Generator,
    *, scaler: torch.amp.GradScaler | None = None,
) -> RunState:
    """Load a training state into ``model``, ``optimizer`` and ``generator``, after checking that it fits.

    The learning rates are the current config's (a resumed run may be given other ones, with a warning).

    Raises:
        CheckpointMismatch: The state was made for another model configuration or other backbone weights.
        ValueError: The state file is truncated or corrupt (:func:`read_state`).
    """
    state = read_state(path)
    problems = config_differences(state["model_config"], model.config)
    if state["backbone_fingerprint"] != backbone_fingerprint(model.clip):
        problems.append("backbone weights differ from the ones this run was trained with")
    if problems:
        raise CheckpointMismatch(f"cannot resume from {path}: " + "; ".join(problems))
    saved, current = TrainConfig.from_dict(state["train_config"]).to_dict(), config.to_dict()
    changed = {key: (saved[key], value) for key, value in current.items()
               if key not in FREE_TO_CHANGE and saved.get(key, value) != value}
    if changed:
        warnings.warn(f"resuming {path} with a changed training config {changed}: the run is no "
                      "longer the same as an uninterrupted one", stacklevel=4)
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    for group, lr in zip(optimizer.param_groups, (config.lr, config.fc_patch_lr)):
        group["lr"] = lr
    restore_rng_state(state["rng"], generator)
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):  # fp16's loss scale goes on where it was
        scaler.load_state_dict(state["scaler"])
    return RunState(state["epoch"], state["global_step"], state.get("best", -math.inf), History(state["history"]))


def save_epoch(
    out_dir: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    generator: torch.Generator,
    run: RunState,
    *,
    improved: bool,
    run_info: dict[str, Any] | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write what one finished epoch leaves in the run folder: ``last`` (and ``best``), the state, the history.

    Args:
        out_dir: The run folder.
        model: The FE-CLIP model.
        optimizer: Its optimiser.
        config: The training config (stored in every file).
        generator: The loader's generator (its state is part of the resume state).
        run: Where the run stands after this epoch; ``run.history[-1]`` is this epoch's row.
        improved: Whether this epoch's validation score is the best so far (then ``best`` is written).
        run_info: Facts about the run stored in every checkpoint as ``extra["run"]``.
        scaler: The fp16 loss scaler, whose state (scale, growth tracker) a resume continues from.
    """
    row = run.history[-1]
    extra = {"epoch": run.epoch, "global_step": run.global_step, "train_config": config.to_dict(), "metrics": row,
             **({"run": run_info} if run_info else {})}
    save_checkpoint(model, out_dir / LAST, extra=extra)
    if improved:
        save_checkpoint(model, out_dir / BEST, extra={**extra, "chosen_by": f"val_{config.best_metric}"})
    state = {
        "format": _STATE_FORMAT,
        "epoch": run.epoch,
        "global_step": run.global_step,
        "best": run.best,
        "model": trained_state_dict(model),
        "model_config": model.config.to_dict(),
        "backbone_fingerprint": backbone_fingerprint(model.clip),
        "train_config": config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(generator),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "history": run.history.rows,
    }
    atomic_write(out_dir / STATE, lambda temporary: torch.save(state, temporary))
    run.history.save(out_dir)
