"""The training loop: :func:`train`, one epoch of optimiser steps, the loss and the optimiser.

A run that diverges stops: a non-finite loss raises :class:`NonFiniteLossError` naming the epoch and the
step before anything of that epoch is written, and an epoch whose weights are no longer finite is never
saved, so ``last.safetensors`` and ``last.state.pt`` keep the last good epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from feclip.losses import FEClipLoss, LossParts
from feclip.train.config import TrainConfig
from feclip.train.distributed import DistributedContext, resolve_device
from feclip.train.history import History
from feclip.train.loader import build_train_loader
from feclip.train.precision import autocast, grad_scaler, precision_name, resolve_amp
from feclip.train.prefix_cache import IndexedDataset, PrefixCache, check_cacheable
from feclip.train.run_state import LAST, RunState, resolve_resume, resume_run, save_epoch, seed_everything
from feclip.train.validation import validate, validation_due, validation_score

__all__ = ["EpochTotals", "NonFiniteLossError", "TrainingStep", "batch_loss", "build_loss", "build_optimizer",
           "optimizer_step", "train"]


class NonFiniteLossError(ValueError):
    """Training diverged: the loss, or the trained weights at the end of an epoch, became NaN or infinite."""


def build_loss(config: TrainConfig) -> FEClipLoss:
    """The loss :func:`train` optimises, with every loss setting of ``config``; built once per run."""
    return FEClipLoss(config.w_cls, config.w_mask, supervise=config.supervise, tap_reduction=config.tap_reduction,
                      gamma=config.focal_gamma, focal_alpha=config.focal_alpha, dice_smooth=config.dice_smooth)


def build_optimizer(model: Any, config: TrainConfig) -> torch.optim.Adam:
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


def batch_loss(loss_fn: FEClipLoss, output: Any, batch: dict[str, Any], device: torch.device) -> LossParts:
    """The loss of one batch, the pixel terms only on images whose mask is real (``has_mask``).

    Args:
        loss_fn: The run's loss (:func:`build_loss`).
        output: Anything with ``tap_scores (T, B)`` and ``tap_maps (T, B, h, w)`` (a :class:`TapOutputs` or an
            :class:`feclip.model.FEClipOutput`).
        batch: The loader's batch: ``label``, ``mask`` and optionally ``has_mask``.
        device: The training device.
    """
    labels = batch["label"].to(device)
    masks = batch["mask"].to(device, non_blocking=True)
    has_mask = batch.get("has_mask")
    has_mask = None if has_mask is None else torch.as_tensor(has_mask).to(device).bool()
    return loss_fn(output.tap_scores, output.tap_maps, labels, masks, has_mask=has_mask)


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip_norm: float | None = None) -> bool:
    """Backward from ``loss`` and one optimiser step, through the run's loss scaler.

    With an active scaler (fp16) the gradients come from the scaled loss and are unscaled before
    clipping and the step; a step whose gradients hold inf or NaN is skipped (weights and Adam state
    unchanged) and the scale lowered. A disabled scaler is a plain ``backward`` and ``step``.

    Args:
        loss: The batch's scalar loss.
        optimizer: The run's optimiser (gradients already zeroed).
        scaler: The run's :func:`~feclip.train.precision.grad_scaler`.
        grad_clip_norm: Clip the norm of all trained gradients together to this (``None``: no clipping).

    Returns:
        Whether the step was skipped for non-finite gradients (always ``False`` without a scaler).
    """
    scaler.scale(loss).backward()
    if grad_clip_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip_norm)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.is_enabled() and scaler.get_scale() < scale  # the scale only drops after a skipped step


@dataclass
class TapOutputs:
    """What a training step needs of FE-CLIP: per-tap probabilities on the token grid, nothing upsampled."""

    tap_scores: Tensor
    tap_maps: Tensor


class TrainingStep(nn.Module):
    """FE-CLIP's forward as training needs it (the module DistributedDataParallel wraps).

    From images, or from cached prefix tokens (:mod:`feclip.train.prefix_cache`), to the per-tap
    probabilities the loss compares with the labels; the tap-averaged map is never upsampled here.
    The frozen prefix runs without autograd: it has nothing to train.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor | None, prefix_tokens: Tensor | None = None) -> TapOutputs:
        if prefix_tokens is None:
            with torch.no_grad():
                prefix_tokens = self.model.prefix_tokens(images)
        return TapOutputs(*self.model.tap_probabilities(self.model.embed_from_prefix(prefix_tokens)))


@dataclass
class EpochTotals:
    """Sums over one epoch's images: each loss part weighted by the batch's image count, and the count."""

    loss: float = 0.0
    bce: float = 0.0
    focal: float = 0.0
    dice: float = 0.0
    images: float = 0.0

    def add(self, parts: LossParts, count: int) -> None:
        self.loss += float(parts.total.detach()) * count
        self.bce += float(parts.bce) * count
        self.focal += float(parts.focal) * count
        self.dice += float(parts.dice) * count
        self.images += count

    def summed_over(self, distributed: DistributedContext, device: torch.device) -> EpochTotals:
        """These totals summed over every process."""
        return EpochTotals(*distributed.sum(torch.tensor(astuple(self), dtype=torch.float64), device).tolist())

    def means(self) -> dict[str, float]:
        """Per-image mean of each loss part."""
        return {name: getattr(self, name) / self.images for name in ("loss", "bce", "focal", "dice")}


@dataclass
class _Run:
    """What one call of :func:`train` works with."""

    model: Any
    network: nn.Module
    loss_fn: FEClipLoss
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: Any
    generator: torch.Generator
    config: TrainConfig
    device: torch.device
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler
    distributed: DistributedContext
    cache: PrefixCache | None
    state: RunState
    out_dir: Path


def train(
    model: Any,
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
            the auxiliary data set's test split (see :mod:`feclip.train`).
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

    Raises:
        NonFiniteLossError: The loss or the weights became NaN or infinite (the run folder keeps the last
            good epoch).
    """
    config = config or TrainConfig()
    _check_labels(train_dataset)
    if config.cache_prefix:
        check_cacheable(train_dataset)
    out_dir = Path(out_dir).expanduser()
    distributed = DistributedContext.setup(config.device)
    try:
        run = _set_up(model, train_dataset, config, out_dir, resume, distributed)
        return _train(run, out_dir, val_dataset, progress, run_info)
    finally:
        distributed.close()


def _set_up(model: Any, dataset: Dataset, config: TrainConfig, out_dir: Path, resume: str | Path | bool | None,
            distributed: DistributedContext) -> _Run:
    """Device, optimiser, loss, seeds, the resumed state if any, the loader, the DDP wrapper and the cache."""
    device = resolve_device(config.device, distributed.local_rank)
    model.to(device)
    optimizer, loss_fn = build_optimizer(model, config), build_loss(config)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    amp = resolve_amp(config.amp, device)
    scaler = grad_scaler(device, amp)
    state_path = resolve_resume(resume, out_dir)
    state = RunState() if state_path is None else resume_run(state_path, model, optimizer, config, generator,
                                                             scaler=scaler)
    cache = PrefixCache(model, len(dataset), device) if config.cache_prefix else None  # type: ignore[arg-type]
    loader, sampler = build_train_loader(IndexedDataset(dataset) if cache else dataset, config, generator, distributed,
                                         device)
    network = distributed.wrap(TrainingStep(model), device, find_unused_parameters=model.config.lambda_fuse == 0)
    return _Run(model, network, loss_fn, optimizer, loader, sampler, generator, config, device, amp, scaler,
                distributed, cache, state, out_dir)


def _train(run: _Run, out_dir: Path, val_dataset: Dataset | None, progress: bool, run_info: dict[str, Any] | None
           ) -> History:
    """The epochs: train, validate when due, write the run folder (rank 0), and wait for every process."""
    config, state, distributed = run.config, run.state, run.distributed
    show = progress and distributed.is_main
    if show and state.epoch >= config.epochs:
        tqdm.write(f"{out_dir}: all {config.epochs} epochs already done")
    for epoch in range(state.epoch, config.epochs):
        row = run_epoch(run, epoch, show)
        _check_weights(run, epoch)
        if validation_due(config, epoch + 1, val_dataset is not None):
            row.update(distributed.from_main(
                validate(run.model, val_dataset, config, run.device, run.amp, show) if distributed.is_main else None))
        score = validation_score(row, config)
        improved = not math.isnan(score) and score > state.best
        state.epoch, state.best = epoch + 1, score if improved else state.best
        state.history.append(row)
        if distributed.is_main:
            save_epoch(out_dir, run.model, run.optimizer, config, run.generator, state, improved=improved,
                       run_info=run_info, scaler=run.scaler)
            if show:
                tqdm.write(_summary(row, config.epochs))
        distributed.barrier()
    run.model.eval()
    return state.history


def run_epoch(run: _Run, epoch: int, show: bool) -> dict[str, Any]:
    """One pass over the training set, one optimiser step per batch; returns the epoch's history row."""
    config, state = run.config, run.state
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    if run.cache is not None:
        run.cache.start_epoch(run.model)
    run.network.train()
    totals, started, skipped = EpochTotals(), time.perf_counter(), 0
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False, dynamic_ncols=True)
    for batch_number, batch in enumerate(bar, start=1):
        with autocast(run.device, run.amp):
            prefix = run.cache.tokens_for(run.model, batch["image"], batch["index"]) if run.cache else None
            images = None if prefix is not None else batch["image"].to(run.device, non_blocking=True)
            output = run.network(images, prefix)
        parts = batch_loss(run.loss_fn, output, batch, run.device)
        _check_loss(run, parts.total, epoch, batch_number)
        run.optimizer.zero_grad(set_to_none=True)
        skipped += optimizer_step(parts.total, run.optimizer, run.scaler, config.grad_clip_norm)
        state.global_step += 1
        totals.add(parts, len(batch["label"]))
        bar.set_postfix(loss=f"{totals.loss / totals.images:.4f}",
                        img_s=f"{totals.images * run.distributed.world_size / (time.perf_counter() - started):.1f}")
    totals = totals.summed_over(run.distributed, run.device)
    elapsed = time.perf_counter() - started
    row = {"epoch": epoch + 1, "step": state.global_step, **totals.means(), "images_per_s": totals.images / elapsed,
           "lr": run.optimizer.param_groups[0]["lr"], "fc_patch_lr": run.optimizer.param_groups[1]["lr"],
           "time_s": elapsed, "amp": precision_name(run.amp)}
    if run.scaler.is_enabled():
        row.update(skipped_steps=skipped, loss_scale=run.scaler.get_scale())
    return row


def _kept(run: _Run, epoch: int) -> str:
    """What the run folder still holds when epoch ``epoch`` (0-based) fails."""
    if epoch == 0:
        return "no epoch finished, so nothing was saved"
    return f"nothing of this epoch was saved: {run.out_dir / LAST} holds epoch {epoch}, the last good one"


def _check_loss(run: _Run, loss: Tensor, epoch: int, batch_number: int) -> None:
    """Stop before the step when the loss is NaN or infinite (on any process: every one stops together)."""
    value = float(loss.detach())
    bad = run.distributed.sum(torch.tensor([0.0 if math.isfinite(value) else 1.0]), run.device)
    if float(bad[0]) == 0:
        return
    where = "" if not math.isfinite(value) else " on another process"
    raise NonFiniteLossError(
        f"training diverged: the loss is {value if where == '' else 'NaN or infinite'}{where} at epoch {epoch + 1}, "
        f"step {run.state.global_step + 1} (batch {batch_number} of {len(run.loader)} in this epoch); "
        f"{_kept(run, epoch)}. Lower the learning rates (lr {run.config.lr:g}, fc_patch_lr {run.config.fc_patch_lr:g})"
        + (" or train in float32 (amp 'off')" if run.amp is not None else ""))


def _check_weights(run: _Run, epoch: int) -> None:
    """Refuse to save an epoch whose trained weights hold NaN or infinities (non-finite gradients in its last step)."""
    bad = sorted(name for name, parameter in run.model.named_parameters()
                 if parameter.requires_grad and not bool(torch.isfinite(parameter).all()))
    if bad:
        raise NonFiniteLossError(f"training diverged: after epoch {epoch + 1} the trained weights {bad[:3]}"
                                 f"{' ...' if len(bad) > 3 else ''} hold NaN or infinite values (non-finite gradients); "
                                 f"{_kept(run, epoch)}")


def _check_labels(dataset: Dataset) -> None:
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) and int(np.min(labels)) < 0:
        raise ValueError("the training set has unlabelled images (label -1); training needs normal (0) and anomalous (1) images")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the training set is empty")


def _summary(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f} (bce {row['bce']:.4f}, focal {row['focal']:.4f}, "
            f"dice {row['dice']:.4f})  {row['images_per_s']:.1f} img/s")
    for key, label in (("val_image_auroc", "val image AUROC"), ("val_pixel_auroc", "pixel AUROC")):
        if key in row and not math.isnan(row[key]):
            text += f"  {label} {100 * row[key]:.1f}"
    return text
