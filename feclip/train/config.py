"""The training configuration: every setting of a run, with the reference implementation's recipe as defaults."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from feclip.losses import check_tap_options
from feclip.metrics import METRIC_COLUMNS
from feclip.profiles import MAX_DEFAULT_WORKERS, default_num_workers

__all__ = ["AMP_MODES", "MAX_DEFAULT_WORKERS", "TrainConfig", "default_num_workers"]

AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
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
        num_workers: DataLoader worker processes; default :func:`default_num_workers`, one per available CPU
            core (``os.sched_getaffinity``), at most 8: one worker turns about 36 VisA-sized images/s into
            336 px tensors (benchmarks/RESULTS.md, "loader"), so 8 keep up with an H100 (237 images/s) and a
            Colab runtime's 2 cores give 2. Workers are persistent and memory is pinned on CUDA
            (:func:`feclip.train.loader.build_train_loader`). ``0`` loads in the training process.
        shuffle: Shuffle the training set every epoch.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amp: Mixed precision on CUDA (:mod:`feclip.train.precision`): ``"auto"`` (bf16 autocast on a GPU that
            computes bf16 natively, else fp16 autocast with a loss scaler: T4, V100), ``"bf16"``, ``"fp16"``
            or ``"off"``; the CPU trains in float32. Each history row records the precision used (``amp``).
        val_every: Validate every this many epochs (and after the last one).
        val_batch_size: Validation batch size (default: ``batch_size``).
        best_metric: Macro column of the validation table that picks ``best.safetensors``.
        cache_prefix: Keep the tokens that enter the first tapped block from the first epoch and start
            later epochs there (:mod:`feclip.train.prefix_cache`): the blocks before the first tap never
            see an adapter, so they are a fixed function of the image. Same result, less work per epoch.
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
    num_workers: int = field(default_factory=default_num_workers)
    shuffle: bool = True
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    val_every: int = 1
    val_batch_size: int | None = None
    best_metric: str = "image_auroc"
    cache_prefix: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise ValueError(f"epochs, batch_size and val_every must be positive, got {self.epochs}, "
                             f"{self.batch_size}, {self.val_every}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        for name in ("lr", "fc_patch_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"the learning rate {name} must be a positive finite number, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip_norm is not None and not (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0):
            raise ValueError(f"grad_clip_norm must be a positive finite number or None, got {self.grad_clip_norm!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
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
