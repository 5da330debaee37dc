"""Shared by the trainer's tests (tests/test_train_*.py): a small random anomaly data set and model helpers."""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

from feclip.model import FEClip
from feclip.train import TrainConfig


class RandomAnomalyDataset(Dataset):
    """``n`` random 96 px images; odd ones are anomalous with a square defect mask, in two categories."""

    def __init__(self, n: int = 8, seed: int = 0, has_mask: bool = True, label: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 96, 96, generator=generator)
        self.labels = [label if label is not None else i % 2 for i in range(n)]
        self.masks = torch.zeros(n, 96, 96)
        for i in range(n):
            if self.labels[i] == 1:
                top, left = torch.randint(0, 64, (2,), generator=generator).tolist()
                self.masks[i, top : top + 24, left : left + 24] = 1
                self.images[i, :, top : top + 24, left : left + 24] += 2.0
        self.has_mask = has_mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index],
                "category": "even" if index % 4 < 2 else "odd", "defect_type": "square", "path": f"{index}.png",
                "has_mask": self.has_mask or self.labels[index] == 0}


def make_model(tiny_clip, seed: int = 0) -> FEClip:
    clip, tokenizer = tiny_clip
    torch.manual_seed(seed)
    return FEClip(copy.deepcopy(clip), tokenizer, backbone="feclip-tiny", pretrained=None)


def make_config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", **changes})


def trained(model: FEClip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("adapters.", "fc_patch."))}


def frozen(model: FEClip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.clip.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
