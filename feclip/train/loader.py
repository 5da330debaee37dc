"""The training DataLoader: seeded order, seeded workers, one sampler per process under torchrun.

The order of every epoch comes from the run's generator alone (saved in the training state), through a
:class:`~torch.utils.data.RandomSampler` that draws from it once per epoch. The DataLoader's own
generator, which seeds the workers, is a second one seeded by ``config.seed``: persistent workers are
started once per loader, so the number of draws it sees differs between a run and its resumption, and
sharing the order's generator with it would give a resumed run another order. feclip's training sets
are a fixed function of the index (no random augmentation), so the worker seeds never change a result;
a random augmentation of one's own would draw from the workers' RNGs, which persistent workers carry
from epoch to epoch: such a run repeats from its start, but a resumed one draws differently.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

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

    ``config.num_workers`` worker processes (persistent: started once, not every epoch), memory pinned
    for a CUDA ``device`` (faster, asynchronous host-to-GPU copies).

    Returns:
        ``(loader, sampler)``; call ``sampler.set_epoch(epoch)`` every epoch when it is not ``None``.
    """
    distributed_sampler = None
    sampler: Sampler | None = None
    if distributed.is_distributed:
        sampler = distributed_sampler = DistributedSampler(dataset, distributed.world_size, distributed.rank,
                                                           shuffle=config.shuffle, seed=config.seed)
    elif config.shuffle:
        sampler = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),  # the workers' seeds only, never the order
        worker_init_fn=seed_worker,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
    )
    return loader, distributed_sampler
