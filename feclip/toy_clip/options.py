"""The toy CLIP's pretraining options: what a run is, without torch or numpy.

:class:`PretrainConfig` (and the :class:`ViewMix` it holds) and :func:`add_arguments` live here,
apart from the training code of :mod:`feclip.toy_clip.pretrain`, so that ``feclip
pretrain-toy-clip --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DESCRIPTION", "PretrainConfig", "ViewMix", "add_arguments"]

DESCRIPTION = "Pretrain feclip-tiny contrastively (open_clip.ClipLoss) on captioned synthetic textures and objects."


@dataclass(frozen=True)
class ViewMix:
    """What one pretraining batch holds.

    Attributes:
        defect_fraction: Share of rendered images that have a defect.
        twin_fraction: Share of defective images whose defect-free twin (the same scene, ``clean``) joins
            the batch, captioned with the same noun and template in the normal state, with the same windows.
        windows_per_image: Window views cut from each image.
        window_sizes: Window sides in patches, drawn uniformly.
        defect_window_fraction: Share of a defective image's windows centred on the defect (the others fall
            anywhere, and are captioned by what they show).
        specific_caption: Chance that a defective view is captioned by its defect type (else "damaged", ...).
        families: Families the images are drawn from.
    """

    defect_fraction: float = 0.5
    twin_fraction: float = 1.0
    windows_per_image: int = 4
    window_sizes: tuple[int, ...] = (2, 3, 4, 6)
    defect_window_fraction: float = 1.0
    specific_caption: float = 0.5
    families: tuple[str, ...] = ("textures", "objects")  # feclip.data.synthetic.PRETRAINING_FAMILIES


@dataclass(frozen=True)
class PretrainConfig:
    """Hyper-parameters of one pretraining run.

    Attributes:
        steps: Optimiser steps.
        batch_size: Images rendered per step (each also gives ``mix.windows_per_image`` window views).
        lr: Peak AdamW learning rate.
        warmup_steps: Steps of linear warm-up before the cosine decay to zero.
        weight_decay: AdamW weight decay of the matrices (not of gains, biases, embeddings or the logit scale).
        init_temperature: Starting softmax temperature of the loss (CLIP's 0.07; it is learnt from there).
        seed: Seed of the initial weights and of every batch.
        mix: What a batch holds.
    """

    steps: int = 2000
    batch_size: int = 24
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    init_temperature: float = 0.07
    seed: int = 0
    mix: ViewMix = field(default_factory=ViewMix)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.warmup_steps < 0:
            raise ValueError(f"steps and batch_size must be positive (batch_size >= 2) and warmup_steps >= 0, got "
                             f"{self.steps}, {self.batch_size}, {self.warmup_steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m feclip.toy_clip``, also those of ``feclip pretrain-toy-clip``."""
    defaults = PretrainConfig()
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="weights file to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"optimiser steps (default: {defaults.steps})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"images rendered per step, each with its window views (default: {defaults.batch_size})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default: {defaults.lr})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    parser.add_argument("--windows-per-image", type=int, default=defaults.mix.windows_per_image,
                        help="token-window views cut from each image")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the weights and of every batch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--save-every", type=int, default=100, help="steps between resumable state files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
