"""The training DataLoader: seeded order, seeded workers, one sampler per process under torchrun."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from feclip.train.config import TrainConfig
from feclip.train.distributed import DistributedContext

__all__ = ["build_train_loader", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """DataLoader seeds torch per worker from its generator; numpy and random follow it."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(
    dataset: Dataset, config: TrainConfig, generator: torch.Generator, distributed: DistributedContext, device: torch.device
) -> tuple[DataLoader, DistributedSampler | None]:
    """The loader of one run: shuffled by ``generator`` (or a ``DistributedSampler`` seeded by ``config.seed``).

    Returns:
        ``(loader, sampler)``; call ``sampler.set_epoch(epoch)`` every epoch when it is not ``None``.
    """
    sampler = None
    if distributed.is_distributed:
        sampler = DistributedSampler(dataset, distributed.world_size, distributed.rank, shuffle=config.shuffle,
                                     seed=config.seed)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=config.shuffle and sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        generator=generator,
        worker_init_fn=seed_worker,
        pin_memory=device.type == "cuda",
    )
    return loader, sampler
