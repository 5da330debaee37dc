"""Devices and torchrun: which process this is, where it computes, and the DistributedDataParallel wrapper."""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistributedContext", "resolve_device"]


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

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

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

    def wrap(self, module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` as ``DistributedDataParallel`` when there are several processes, else as it is."""
        if not self.is_distributed:
            return module
        # The only buffers are frozen CLIP ones and the text features: no need to sync them every step.
        ddp = nn.parallel.DistributedDataParallel
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                          else {"broadcast_buffers": False})  # the older name, deprecated in newer torch
        return ddp(module, device_ids=[device.index] if device.type == "cuda" else None,
                   find_unused_parameters=find_unused_parameters, **no_buffer_sync)

    def sum(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The sum of ``values`` over all processes (``values`` itself with one process)."""
        if not self.is_distributed:
            return values
        reduced = values.to(device)  # NCCL reduces GPU tensors only
        dist.all_reduce(reduced)
        return reduced.cpu()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value``, on every process."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()
