"""The training loader: the seeded generator alone decides the order."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from feclip.train import TrainConfig
from feclip.train.distributed import DistributedContext
from feclip.train.loader import build_train_loader


class Numbers(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        return {"index": index}


def _order(seed: int, shuffle: bool = True) -> list[int]:
    config = TrainConfig(batch_size=4, num_workers=0, shuffle=shuffle, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    loader, sampler = build_train_loader(Numbers(), config, generator, DistributedContext(), torch.device("cpu"))
    assert sampler is None  # one process: the generator shuffles
    return [int(i) for batch in loader for i in batch["index"]]


def test_the_order_is_the_generators_and_nothing_else() -> None:
    torch.manual_seed(123)
    first = _order(0)
    torch.manual_seed(456)  # the global RNG does not matter
    assert _order(0) == first and sorted(first) == list(range(10)) and first != list(range(10))
    assert _order(1) != first
    assert _order(0, shuffle=False) == list(range(10))
