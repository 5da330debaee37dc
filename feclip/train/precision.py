"""Mixed precision for training and validation: which autocast dtype, if any, on which device, and the loss scaler.

``TrainConfig.amp`` is one of :data:`feclip.train.config.AMP_MODES`:

* ``"auto"``: bf16 on a CUDA GPU that computes it natively (compute capability 8.0 and up: A100,
  H100, L4, RTX 30xx/40xx), else fp16 with a loss scaler (T4, V100: bf16 there is emulated and slow);
* ``"bf16"``: bf16 autocast on CUDA, emulated where the GPU lacks it;
* ``"fp16"``: fp16 autocast on CUDA, with a :class:`torch.amp.GradScaler`;
* ``"off"``: float32.

The CPU trains in float32 whatever the setting. fp16's range is small (largest value 65504, smallest
normal 6e-5), so its gradients are computed from the loss times a large scale and divided back before
the optimiser step; a step whose gradients overflowed to inf or NaN is skipped and the scale halved
(:func:`grad_scaler`; its state is part of the run's resumable state).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISION_NAMES", "autocast", "bf16_is_native", "grad_scaler", "precision_name", "resolve_amp"]

#: The name a run records for each autocast dtype (``None``: float32).
PRECISION_NAMES: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}


def bf16_is_native(device: torch.device) -> bool:
    """Whether the CUDA GPU ``device`` computes bf16 in hardware (not emulated).

    Asks ``torch.cuda.is_bf16_supported(including_emulation=False)``; torch releases before that
    argument existed answered for native support only, and are asked without it.
    """
    # The query is about the current device: make it this one (no CUDA at all: nothing to switch, it says no).
    with torch.cuda.device(device) if torch.cuda.is_available() else contextlib.nullcontext():
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.4: no such argument, and no emulation counted
            return bool(torch.cuda.is_bf16_supported())


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``TrainConfig.amp`` on ``device``, or ``None`` for float32.

    ``"auto"`` is bf16 on a CUDA GPU with native bf16, fp16 on any other CUDA GPU; ``"bf16"`` and
    ``"fp16"`` force their dtype on CUDA; ``"off"`` and the CPU are float32.
    """
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if bf16_is_native(device) else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"off"``: what a run records as the precision it trained in."""
    return PRECISION_NAMES[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``, or nothing when ``dtype`` is ``None``."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler of a run: active for fp16 autocast, a pass-through otherwise.

    A disabled scaler's ``scale(loss)`` is ``loss`` and its ``step(optimizer)`` is ``optimizer.step()``,
    so float32 and bf16 runs take the same code path and give the same numbers as without one.
    """
    enabled = dtype is torch.float16
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device.type == "cuda")  # torch < 2.3: CUDA only
