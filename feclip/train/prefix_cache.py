"""The frozen-prefix cache: the tokens entering FE-CLIP's first tapped block, computed once per training image.

The blocks before the first tap never see an adapter, so their output is a fixed function of the image
(:meth:`feclip.model.FEClip.prefix_tokens`). With ``TrainConfig.cache_prefix`` the first epoch keeps
these tokens and later epochs start from them (:meth:`feclip.model.FEClip.embed_from_prefix`), skipping
the patch embedding and every block before the first tap, forward and in memory.

Choices, and why:

* **Precision.** On the CPU the cache stores float32, exactly what the blocks produced, so a cached run
  gives bit for bit the weights of an uncached one (tested). On a GPU it stores float16 (half the memory:
  577 x 1024 x 2 bytes = 1.2 MB per image for ViT-L/14 at 336 px), equal to an uncached run within float16
  rounding of the tokens.
* **Where.** On the GPU when the whole cache fits in half of the free GPU memory; else in pinned host
  memory (fast copies to the GPU); else, if pinning fails, in plain host memory.
* **Resume.** The cache lives in memory only: after a resume the first epoch fills it again. Storing it
  would make a checkpoint hold gigabytes that a resume can rebuild in one epoch.
* **Safety.** It is refused when the images may change between epochs (a training set whose transform
  is not feclip's deterministic :class:`~feclip.data.transforms.AnomalyTransform`, unless the data set
  declares ``deterministic = True``), and at every epoch the backbone's fingerprint and the first tap are
  compared with those the cache was filled with, and one cached image is recomputed and compared: a
  random augmentation or a changed backbone stops training with an error instead of training on stale tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from feclip.backbones import backbone_fingerprint

__all__ = ["IndexedDataset", "PrefixCache", "check_cacheable"]

# Share of the free GPU memory the cache may take.
_GPU_SHARE = 0.5


def _base_dataset(dataset: Dataset) -> Dataset:
    while isinstance(dataset, (Subset, IndexedDataset)):
        dataset = dataset.dataset
    return dataset


def check_cacheable(dataset: Dataset) -> None:
    """Refuse a training set whose images may differ from epoch to epoch (the cache would keep stale tokens).

    Raises:
        ValueError: Naming the data set and its transform.
    """
    from feclip.data.transforms import AnomalyTransform

    base = _base_dataset(dataset)
    if getattr(base, "deterministic", False) is True:
        return
    transform = getattr(base, "transform", None)
    if isinstance(transform, AnomalyTransform):
        return
    raise ValueError(
        f"cache_prefix=True needs the same training images every epoch, but {type(base).__name__}'s transform "
        f"{transform!r} is not feclip's deterministic AnomalyTransform (a random augmentation or shuffled crop would "
        "make the cached tokens wrong): train with cache_prefix=False, or set deterministic = True on a data set "
        "whose images never change"
    )


class IndexedDataset(Dataset):
    """A data set whose items also carry their ``index``, the key of the cache."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "index": index}


class PrefixCache:
    """Prefix tokens ``(1 + h*w, D)`` of every training image, filled on first use.

    Args:
        model: The FE-CLIP model being trained.
        size: Number of training images (indices ``0 .. size - 1``).
        device: The training device.
    """

    def __init__(self, model: Any, size: int, device: torch.device) -> None:
        visual = model.clip.visual
        height, width = model.grid_size
        shape = (size, 1 + height * width, visual.conv1.out_channels)
        self.device = device
        self.dtype = torch.float32 if device.type == "cpu" else torch.float16
        self.first_tap = model.tap_indices[0]
        self.fingerprint = backbone_fingerprint(model.clip)
        self.tokens, self.location = self._allocate(shape)
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.hits = self.misses = 0
        self._verify_next_hit = False

    def _allocate(self, shape: tuple[int, int, int]) -> tuple[Tensor, str]:
        nbytes = shape[0] * shape[1] * shape[2] * torch.finfo(self.dtype).bits // 8
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if nbytes <= _GPU_SHARE * free:
                return torch.empty(shape, dtype=self.dtype, device=self.device), "gpu"
            try:
                return torch.empty(shape, dtype=self.dtype, pin_memory=True), "pinned"
            except RuntimeError:  # pinning can fail (locked-memory limits): plain host memory still works
                pass
        return torch.empty(shape, dtype=self.dtype), "cpu"

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds when full."""
        return self.tokens.numel() * self.tokens.element_size()

    def start_epoch(self, model: Any) -> None:
        """Refuse to go on when the backbone or the first tap is no longer the one the cache was filled with,
        and check the epoch's first cached image against a fresh computation."""
        if backbone_fingerprint(model.clip) != self.fingerprint or model.tap_indices[0] != self.first_tap:
            raise ValueError("the backbone or the first tapped block changed during training: the cached prefix "
                             "tokens are stale; train with cache_prefix=False")
        self._verify_next_hit = True

    def tokens_for(self, model: Any, images: Tensor, indices: Tensor) -> Tensor:
        """The prefix tokens of a batch: from the cache where filled, computed (and stored) where not.

        Args:
            model: The FE-CLIP model.
            images: The batch's images ``(B, 3, H, W)`` (on any device; only the missing ones are moved).
            indices: Their indices in the training set, ``(B,)``.

        Returns:
            Tokens ``(B, 1 + h*w, D)`` in float32 on the training device.
        """
        indices = indices.cpu()
        missing = ~self.filled[indices]
        out = torch.empty(len(indices), *self.tokens.shape[1:], dtype=torch.float32, device=self.device)
        with torch.no_grad():
            if missing.any():
                computed = model.prefix_tokens(images[missing].to(self.device, non_blocking=True)).float()
                out[missing.to(self.device)] = computed
                self.tokens[indices[missing].to(self.tokens.device)] = computed.to(self.tokens.device, self.dtype)
                self.filled[indices[missing]] = True
            hit = ~missing
            if hit.any():
                stored = self.tokens[indices[hit].to(self.tokens.device)].to(self.device, torch.float32, non_blocking=True)
                if self._verify_next_hit:
                    self._verify(model, images[hit][:1], stored[:1])
                out[hit.to(self.device)] = stored
        self.misses += int(missing.sum())
        self.hits += int((~missing).sum())
        return out

    def _verify(self, model: Any, image: Tensor, stored: Tensor) -> None:
        """Recompute one cached image's tokens: they must be what the cache holds (within float16 on a GPU)."""
        self._verify_next_hit = False
        fresh = model.prefix_tokens(image.to(self.device)).float()
        if self.dtype == torch.float32:
            same = torch.equal(fresh, stored)
        else:
            same = bool(((fresh - stored).abs() <= 1e-2 * fresh.abs().amax() + 1e-3).all())
        if not same:
            raise ValueError("a training image's frozen-prefix tokens differ from the ones cached in an earlier epoch: "
                             "the images change between epochs (random augmentation?) or the backbone changed; "
                             "train with cache_prefix=False")
