"""Training FE-CLIP's adapters: resumable, reproducible, single- or multi-GPU.

Zero-shot protocol: the adapters are trained on an *auxiliary* data set and evaluated on a
*target* data set they never saw (VisA for an MVTec AD evaluation, MVTec AD for VisA; the
synthetic ``objects`` family for ``textures`` offline). Training uses the auxiliary data
set's **test** split, the only one with anomalies and masks; see
:func:`feclip.data.training_split_for_zero_shot`.

Only the adapters and ``fc_patch`` learn (Adam, two parameter groups with their own learning
rates); the CLIP backbone stays frozen and in eval mode. The loss is
``w_cls * BCE + w_mask * (focal + Dice)``, per tap and averaged over taps
(:class:`feclip.losses.FEClipLoss`, built from the config by :func:`build_loss`).

Validation data, if any, must come from the auxiliary side too (for example a held-out part of
the training set): choosing ``best.safetensors`` on the target's test set would leak the target
into a zero-shot result.

Every epoch writes to ``out_dir`` (atomically, so a Colab disconnect mid-save loses nothing):

* ``last.safetensors`` + ``last.json``: the trained weights and config (:mod:`feclip.checkpoint`);
* ``best.safetensors`` + ``best.json``: the epoch with the best validation metric (with a validation set);
* ``last.state.pt``: everything needed to resume bit-exactly: weights, Adam state, epoch,
  step, RNG states (torch, numpy, random) and the DataLoader generator;
* ``history.csv`` / ``history.json``: one row per epoch.

``train(..., resume=out_dir)`` (or ``resume="auto"``) continues from ``last.state.pt``; on the
CPU, 1 epoch + resume + 1 epoch gives exactly the weights of 2 epochs in one go.

Under ``torchrun --nproc_per_node=N`` the model runs as ``DistributedDataParallel`` with a
``DistributedSampler``; ``batch_size`` is per process, and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from feclip.checkpoint import (
    CheckpointMismatch,
    atomic_write,
    backbone_fingerprint,
    config_differences,
    save_checkpoint,
    trained_state_dict,
)
from feclip.losses import FEClipLoss, LossParts, check_tap_options
from feclip.metrics import METRIC_COLUMNS
from feclip.model import FEClip

__all__ = [
    "TrainConfig",
    "History",
    "DistributedContext",
    "build_loss",
    "build_optimizer",
    "resolve_device",
    "resolve_resume",
    "seed_everything",
    "train",
    "LAST",
    "BEST",
    "STATE",
]

LAST, BEST, STATE = "last.safetensors", "best.safetensors", "last.state.pt"
_STATE_FORMAT = 1
# Settings a resumed run may change without changing its result.
_FREE_TO_CHANGE = ("epochs", "num_workers", "device", "val_every", "val_batch_size", "best_metric")
# What a config saved before these fields existed trained with (its key ``loss_reduction`` is today's ``supervise``).
_LEGACY_MEANING = {"tap_reduction": "sum", "focal_alpha": None, "dice_smooth": 1.0}


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are the reference implementation's recipe.

    The paper states Adam, learning rate 5e-4, batch 16 and 9 epochs; the reference implementation
    adds ``fc_patch_lr`` = lr / 100 (its experiment 12), the per-tap losses averaged over taps, focal
    ``alpha = 0.25``, ``gamma = 2`` and Dice smoothing ``1e-6``. ``book/reproducibility.md`` lists
    every setting with its source.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step and per process.
        lr: Adam learning rate of the adapters.
        fc_patch_lr: Adam learning rate of ``fc_patch``.
        betas: Adam betas.
        weight_decay: Adam weight decay.
        w_cls: Weight of the image BCE.
        w_mask: Weight of the pixel focal + Dice.
        supervise: What the loss compares with the labels: ``"per_tap"`` (every tap's score and map) or
            ``"tap_average"`` (only their tap average); the old field ``loss_reduction`` and its value
            ``"mean"`` are read as this.
        tap_reduction: How per-tap losses combine: ``"mean"`` over taps or ``"sum"``.
        focal_gamma: Focal loss exponent.
        focal_alpha: Focal weight of anomalous pixels (normal ones get ``1 - focal_alpha``); ``None``: none.
        dice_smooth: Dice smoothing.
        grad_clip_norm: Clip the gradient norm to this (``None``: no clipping).
        seed: Seed of the data order (and of numpy / random / torch at the start).
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training set every epoch.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amp: ``"auto"`` (bf16 autocast on a CUDA GPU that supports it, else float32), ``"bf16"`` or ``"off"``.
        val_every: Validate every this many epochs (and after the last one).
        val_batch_size: Validation batch size (default: ``batch_size``).
        best_metric: Macro column of the validation table that picks ``best.safetensors``.
    """

    epochs: int = 9
    batch_size: int = 16
    lr: float = 5e-4
    fc_patch_lr: float = 5e-6
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    w_cls: float = 1.0
    w_mask: float = 1.0
    supervise: Literal["per_tap", "tap_average"] = "per_tap"
    tap_reduction: Literal["mean", "sum"] = "mean"
    focal_gamma: float = 2.0
    focal_alpha: float | None = 0.25
    dice_smooth: float = 1e-6
    grad_clip_norm: float | None = None
    seed: int = 0
    num_workers: int = 4
    shuffle: bool = True
    device: str = "auto"
    amp: Literal["auto", "bf16", "off"] = "auto"
    val_every: int = 1
    val_batch_size: int | None = None
    best_metric: str = "image_auroc"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ValueError(f"epochs, batch_size and val_every must be positive, got {self.epochs}, "
                             f"{self.batch_size}, {self.val_every}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if self.best_metric not in METRIC_COLUMNS:
            raise ValueError(f"best_metric must be one of {list(METRIC_COLUMNS)}, got {self.best_metric!r}")
        self.supervise, self.tap_reduction = check_tap_options(self.supervise, self.tap_reduction)
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them.

        A dict written before ``supervise`` had its name (it has ``loss_reduction``) is read as what it
        trained with: per-tap losses summed over taps, no focal alpha, Dice smoothing 1.
        """
        if "loss_reduction" in values:
            values = {**_LEGACY_MEANING, **values}
            values["supervise"] = values.pop("loss_reduction")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**values)


class History:
    """Per-epoch training log: ``epoch, step, loss, bce, focal, dice, images_per_s, lr, fc_patch_lr, time_s``
    and, with a validation set, ``val_<metric>`` macro metrics (``val_image_auroc``, ``val_pixel_auroc``...).
    """

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows or []]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, last={self.rows[-1] if self.rows else None})"

    def column(self, name: str) -> list[Any]:
        """One value per epoch (``None`` where an epoch lacks it)."""
        return [row.get(name) for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """The history as a DataFrame indexed by epoch."""
        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def save(self, out_dir: str | Path) -> None:
        """Write ``history.csv`` and ``history.json`` (NaN as ``null``) atomically."""
        out_dir = Path(out_dir)
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in self.rows]
        text = json.dumps(clean, indent=2) + "\n"
        atomic_write(out_dir / "history.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        atomic_write(out_dir / "history.csv", lambda tmp: pd.DataFrame(self.rows).to_csv(tmp, index=False))

    @classmethod
    def load(cls, out_dir: str | Path) -> History:
        """Read ``history.json`` from a run folder."""
        path = Path(out_dir) / "history.json"
        if not path.is_file():
            raise FileNotFoundError(f"no training history: {path}")
        return cls(json.loads(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch per worker from its generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if str(device) == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def build_loss(config: TrainConfig) -> FEClipLoss:
    """The loss :func:`train` optimises, with every loss setting of ``config``."""
    return FEClipLoss(config.w_cls, config.w_mask, supervise=config.supervise, tap_reduction=config.tap_reduction,
                      gamma=config.focal_gamma, focal_alpha=config.focal_alpha, dice_smooth=config.dice_smooth)


def build_optimizer(model: FEClip, config: TrainConfig) -> torch.optim.Adam:
    """Adam over the adapters (``lr``) and ``fc_patch`` (``fc_patch_lr``) only; the CLIP is not in it."""
    groups = model.trainable_parameters()
    return torch.optim.Adam(
        [
            {"params": groups["adapters"], "lr": config.lr, "name": "adapters"},
            {"params": groups["fc_patch"], "lr": config.fc_patch_lr, "name": "fc_patch"},
        ],
        betas=config.betas,
        weight_decay=config.weight_decay,
    )


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


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {**numpy_state, "state": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                                           "pos": numpy_state["state"]["pos"]}},
        "random": random.getstate(),
        "loader": generator.get_state(),
    }


def _restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
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


def _save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def _batch_loss(loss_fn: FEClipLoss, output: Any, batch: dict[str, Any], device: torch.device) -> LossParts:
    """The loss, with the pixel terms only on images whose mask is real (``has_mask``)."""
    labels = batch["label"].to(device)
    masks = batch["mask"].to(device, non_blocking=True)
    has_mask = batch.get("has_mask")
    has_mask = None if has_mask is None else torch.as_tensor(has_mask).to(device).bool()
    return loss_fn(output.tap_scores, output.tap_maps, labels, masks, has_mask=has_mask)


@dataclass
class DistributedContext:
    """Rank and world size of this process; ``setup`` joins torchrun's process group if there is one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> DistributedContext:
        """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
            return cls()
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_nccl = resolve_device(device, local_rank).type == "cuda"
        if use_nccl:
            torch.cuda.set_device(local_rank)
        # Rank 0 validates while the others wait at a barrier: allow long validations.
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=datetime.timedelta(hours=2))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, created_group=True)

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()


def _validate(model: FEClip, dataset: Dataset, config: TrainConfig, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    from feclip.evaluate import evaluate

    with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        table = evaluate(model, dataset, batch_size=config.val_batch_size or config.batch_size,
                         num_workers=config.num_workers, device=device, progress=False)
    model.train()
    # The macro metrics, and the map smoothing they were measured with (evaluate's default).
    columns = [c for c in table.columns if c in METRIC_COLUMNS or c == "map_sigma"]
    return {f"val_{column}": float(table.loc["macro", column]) for column in columns}


def _check_labels(dataset: Dataset) -> None:
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) and int(np.min(labels)) < 0:
        raise ValueError("the training set has unlabelled images (label -1); training needs normal (0) and anomalous (1) images")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")


# --------------------------------------------------------------------------- train


def train(
    model: FEClip,
    train_dataset: Dataset,
    config: TrainConfig | None = None,
    *,
    out_dir: str | Path,
    val_dataset: Dataset | None = None,
    resume: str | Path | bool | None = None,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
) -> History:
    """Train the adapters and ``fc_patch`` of ``model`` in place; checkpoint every epoch.

    Args:
        model: The FE-CLIP model (its CLIP stays frozen and in eval mode).
        train_dataset: Items with ``image (3, S, S)``, ``mask (S, S)``, ``label`` and ``has_mask``:
            the auxiliary data set's test split (see the module docstring).
        config: Hyper-parameters (default :class:`TrainConfig`).
        out_dir: Run folder for checkpoints, training state and history.
        val_dataset: Optional validation set evaluated after every ``val_every`` epochs (macro metrics
            in the history, ``best.safetensors`` by ``config.best_metric``). It must come from the
            auxiliary side, e.g. :meth:`feclip.data.AnomalyDataset.holdout` of the training set, never from
            the target: a ``best`` chosen on the target's test set is no longer zero-shot.
        resume: ``None`` (fresh), ``"auto"`` (resume ``out_dir`` if it has a state), or a run
            folder / state file / checkpoint to continue from.
        progress: Show tqdm bars and a one-line summary per epoch.
        run_info: JSON-serialisable facts about the run (data specs, their categories), stored as
            ``extra["run"]`` in every checkpoint; the command line records the protocol there. A
            ``best.safetensors`` also records ``extra["chosen_by"]`` (the validation column).

    Returns:
        The :class:`History`, also written to ``out_dir/history.{csv,json}``.
    """
    config = config or TrainConfig()
    _check_labels(train_dataset)
    out_dir = Path(out_dir).expanduser()
    distributed = DistributedContext.setup(config.device)
    try:
        return _train(model, train_dataset, config, out_dir, val_dataset, resume, progress, distributed, run_info)
    finally:
        distributed.close()


def _train(
    model: FEClip,
    train_dataset: Dataset,
    config: TrainConfig,
    out_dir: Path,
    val_dataset: Dataset | None,
    resume: str | Path | bool | None,
    progress: bool,
    distributed: DistributedContext,
    run_info: dict[str, Any] | None = None,
) -> History:
    device = resolve_device(config.device, distributed.local_rank)
    amp = _amp_dtype(config.amp, device)
    model.to(device)
    optimizer = build_optimizer(model, config)
    loss_fn = build_loss(config)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    history, start_epoch, global_step, best = History(), 0, 0, -math.inf

    state_path = resolve_resume(resume, out_dir)
    if state_path is not None:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        problems = config_differences(state["model_config"], model.config)
        if state["backbone_fingerprint"] != backbone_fingerprint(model.clip):
            problems.append("backbone weights differ from the ones this run was trained with")
        if problems:
            raise CheckpointMismatch(f"cannot resume from {state_path}: " + "; ".join(problems))
        saved_config, current_config = TrainConfig.from_dict(state["train_config"]).to_dict(), config.to_dict()
        changed = {key: (saved_config[key], value) for key, value in current_config.items()
                   if key not in _FREE_TO_CHANGE and saved_config[key] != value}
        if changed:
            warnings.warn(f"resuming {state_path} with a changed training config {changed}: the run is no "
                          "longer the same as an uninterrupted one", stacklevel=3)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(optimizer.param_groups, (config.lr, config.fc_patch_lr)):
            group["lr"] = lr
        _restore_rng_state(state["rng"], generator)
        history, start_epoch, global_step = History(state["history"]), state["epoch"], state["global_step"]
        best = state.get("best", -math.inf)

    sampler = None
    if distributed.world_size > 1:
        sampler = DistributedSampler(train_dataset, distributed.world_size, distributed.rank,
                                     shuffle=config.shuffle, seed=config.seed)
    loader = DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        shuffle=config.shuffle and sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda",
    )
    network: nn.Module = model
    if distributed.world_size > 1:
        # The only buffers are frozen CLIP ones and the text features: no need to sync them every step.
        ddp = nn.parallel.DistributedDataParallel
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                          else {"broadcast_buffers": False})  # the older name, deprecated in newer torch
        network = ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=model.config.lambda_fuse == 0, **no_buffer_sync)
    show = progress and distributed.is_main
    if show and start_epoch >= config.epochs:
        tqdm.write(f"{out_dir}: all {config.epochs} epochs already done")

    for epoch in range(start_epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        network.train()
        totals = torch.zeros(5, dtype=torch.float64)  # loss, bce, focal, dice (each * images), images
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False, dynamic_ncols=True)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                output = network(images)
            parts = _batch_loss(loss_fn, output, batch, device)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            if config.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip_norm)
            optimizer.step()
            global_step += 1
            count = images.shape[0]
            totals += torch.tensor([float(parts.total.detach()) * count, float(parts.bce) * count,
                                    float(parts.focal) * count, float(parts.dice) * count, count], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[4]:.4f}",
                            img_s=f"{totals[4] * distributed.world_size / (time.perf_counter() - started):.1f}")
        if distributed.world_size > 1:
            reduced = totals.to(device)  # NCCL reduces GPU tensors only
            dist.all_reduce(reduced)
            totals = reduced.cpu()
        elapsed = time.perf_counter() - started
        images_seen = totals[4].item()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "loss": totals[0].item() / images_seen,
            "bce": totals[1].item() / images_seen,
            "focal": totals[2].item() / images_seen,
            "dice": totals[3].item() / images_seen,
            "images_per_s": images_seen / elapsed,
            "lr": optimizer.param_groups[0]["lr"],
            "fc_patch_lr": optimizer.param_groups[1]["lr"],
            "time_s": elapsed,
        }
        validate = val_dataset is not None and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs)
        if validate:
            metrics = [_validate(model, val_dataset, config, device, amp) if distributed.is_main else None]
            if distributed.world_size > 1:
                dist.broadcast_object_list(metrics, src=0)
            row.update(metrics[0])
        history.append(row)
        score = row.get(f"val_{config.best_metric}", math.nan) if validate else math.nan
        improved = not math.isnan(score) and score > best
        best = score if improved else best
        if distributed.is_main:
            extra = {"epoch": epoch + 1, "global_step": global_step, "train_config": config.to_dict(), "metrics": row,
                     **({"run": run_info} if run_info else {})}
            save_checkpoint(model, out_dir / LAST, extra=extra)
            if improved:
                save_checkpoint(model, out_dir / BEST, extra={**extra, "chosen_by": f"val_{config.best_metric}"})
            _save_state(out_dir / STATE, {
                "format": _STATE_FORMAT,
                "epoch": epoch + 1,
                "global_step": global_step,
                "best": best,
                "model": trained_state_dict(model),
                "model_config": model.config.to_dict(),
                "backbone_fingerprint": backbone_fingerprint(model.clip),
                "train_config": config.to_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(generator),
                "history": history.rows,
            })
            history.save(out_dir)
            if show:
                tqdm.write(_summary(row, config.epochs))
        if distributed.world_size > 1:
            dist.barrier()
    model.eval()
    return history


def _summary(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f} (bce {row['bce']:.4f}, focal {row['focal']:.4f}, "
            f"dice {row['dice']:.4f})  {row['images_per_s']:.1f} img/s")
    for key, label in (("val_image_auroc", "val image AUROC"), ("val_pixel_auroc", "pixel AUROC")):
        if key in row and not math.isnan(row[key]):
            text += f"  {label} {100 * row[key]:.1f}"
    return text

