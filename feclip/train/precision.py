"""Mixed precision for training and validation: which autocast dtype, if any, on which device."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "resolve_amp"]


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``TrainConfig.amp`` on ``device``, or ``None`` for float32.

    ``"auto"`` is bf16 on a CUDA GPU that supports it and float32 elsewhere; ``"bf16"`` forces bf16 on
    CUDA; ``"off"`` and the CPU are float32.
    """
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``, or nothing when ``dtype`` is ``None``."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
