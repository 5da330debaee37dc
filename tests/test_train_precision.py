"""Mixed precision: autocast only on CUDA; bf16 where the GPU has it natively, else fp16 with a loss scaler."""

from __future__ import annotations

import pytest
import torch

from feclip.train.precision import autocast, bf16_is_native, grad_scaler, precision_name, resolve_amp

CUDA = torch.device("cuda:0")


def test_the_cpu_trains_in_float32_whatever_the_setting() -> None:
    for amp in ("auto", "bf16", "fp16", "off"):
        assert resolve_amp(amp, torch.device("cpu")) is None
    with autocast(torch.device("cpu"), None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not grad_scaler(torch.device("cpu"), None).is_enabled()


def _gpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, native: bool) -> list:
    """Pretend to be a GPU that computes bf16 natively (A100, H100) or only by emulation (T4, V100)."""
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation  # an emulating GPU says yes unless emulation is excluded

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    return asked


def test_auto_is_bf16_on_an_a100_fp16_on_a_t4_and_float32_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _gpu_with_native_bf16(monkeypatch, native=True)
    assert resolve_amp("auto", CUDA) is torch.bfloat16
    assert asked == [False]  # emulated bf16 does not count
    _gpu_with_native_bf16(monkeypatch, native=False)
    assert resolve_amp("auto", CUDA) is torch.float16  # T4-like: emulated bf16 would be slow
    assert resolve_amp("auto", torch.device("cpu")) is None
    for native in (True, False):  # an explicit choice is what it says, whatever the GPU
        _gpu_with_native_bf16(monkeypatch, native)
        assert (resolve_amp("bf16", CUDA), resolve_amp("fp16", CUDA), resolve_amp("off", CUDA)) == (
            torch.bfloat16, torch.float16, None)
    assert [precision_name(resolve_amp(a, CUDA)) for a in ("bf16", "fp16", "off")] == ["bf16", "fp16", "off"]


def test_torch_without_the_emulation_argument_is_asked_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # torch < 2.4's signature
    assert not bf16_is_native(CUDA) and resolve_amp("auto", CUDA) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert bf16_is_native(CUDA) and resolve_amp("auto", CUDA) is torch.bfloat16


def test_only_fp16_gets_an_active_loss_scaler() -> None:
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, torch.float16).is_enabled()
    assert not grad_scaler(cpu, torch.bfloat16).is_enabled() and not grad_scaler(cpu, None).is_enabled()
    with autocast(cpu, torch.float16):  # the CPU runs fp16 autocast too: the fp16 path's logic is testable here
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
