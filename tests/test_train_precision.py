"""Mixed precision: autocast only on CUDA, bf16 where asked or supported."""

from __future__ import annotations

import pytest
import torch

from feclip.train.precision import autocast, resolve_amp


def test_the_cpu_trains_in_float32_whatever_the_setting() -> None:
    for amp in ("auto", "bf16", "off"):
        assert resolve_amp(amp, torch.device("cpu")) is None
    with autocast(torch.device("cpu"), None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cuda_uses_bf16_when_asked_or_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda:0")
    assert resolve_amp("off", cuda) is None
    assert resolve_amp("bf16", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_amp("auto", cuda) is None  # an older GPU: float32, not emulated bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_amp("auto", cuda) is torch.bfloat16
