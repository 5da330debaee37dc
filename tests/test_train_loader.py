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


def _epochs(loader, count: int) -> list[list[int]]:
    return [[int(i) for batch in loader for i in batch["index"]] for _ in range(count)]


def test_persistent_workers_leave_the_order_to_the_saved_generator() -> None:
    """A resumed run (generator restored, fresh loader) sees the order the uninterrupted run saw in that epoch.

    Persistent workers draw their seeds once per loader, not once per epoch: drawn from the order's
    generator, they would shift every later order of a resumed run.
    """
    config = TrainConfig(batch_size=4, num_workers=1, seed=0)
    generator = torch.Generator().manual_seed(0)
    loader, _ = build_train_loader(Numbers(), config, generator, DistributedContext(), torch.device("cpu"))
    assert loader.persistent_workers and not loader.pin_memory  # no CUDA: nothing to pin for
    first = _epochs(loader, 1)
    saved = generator.get_state()  # what the state file holds after epoch 1
    straight = _epochs(loader, 2)
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved)
    resumed, _ = build_train_loader(Numbers(), config, resumed_generator, DistributedContext(), torch.device("cpu"))
    assert _epochs(resumed, 2) == straight
    assert first[0] != straight[0] != straight[1] and sorted(straight[0]) == list(range(10))


def test_memory_is_pinned_for_cuda_and_zero_workers_load_in_process() -> None:
    config = TrainConfig(batch_size=4, num_workers=0)
    loader, _ = build_train_loader(Numbers(), config, torch.Generator(), DistributedContext(), torch.device("cuda"))
    assert loader.pin_memory and not loader.persistent_workers and loader.num_workers == 0
