"""Backbone creation: the registered tiny config, and fast, clear failures offline."""

from __future__ import annotations

import socket
import time

import open_clip
import pytest
import torch

from feclip.backbones import (
    TINY_MODEL,
    PretrainedWeightsUnavailable,
    create_clip,
    create_tiny_clip,
    pretrained_available,
    resolve_pretrained,
)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test loudly."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to reach the network: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tiny_config_is_registered_with_open_clip(tiny_clip) -> None:
    assert TINY_MODEL == "feclip-tiny" and TINY_MODEL in open_clip.list_models()
    visual = tiny_clip[0].visual
    assert tuple(visual.image_size) == (96, 96) and tuple(visual.grid_size) == (12, 12)
    assert len(visual.transformer.resblocks) == 12
    assert visual.conv1.out_channels == 64 and tuple(visual.proj.shape) == (64, 64)
    assert not tiny_clip[0].training


def test_tiny_clip_is_deterministic_per_seed_and_leaves_the_global_rng_alone(tiny_clip) -> None:
    torch.manual_seed(5)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    same, _ = create_tiny_clip(seed=0)
    assert torch.equal(torch.rand(3), expected_draw)
    other, _ = create_tiny_clip(seed=1)
    reference = tiny_clip[0].state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in same.state_dict().items())
    assert not torch.equal(other.visual.proj, tiny_clip[0].visual.proj)
    assert not torch.equal(other.visual.conv1.weight, tiny_clip[0].visual.conv1.weight)


@pytest.mark.usefixtures("no_network")
def test_offline_pretrained_fails_fast_with_advice() -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_clip("ViT-L-14-336", "openai")
    assert time.perf_counter() - start < 5  # no download retries, no network time-outs
    message = str(error.value)
    assert "'ViT-L-14-336'" in message and "'openai'" in message
    assert 'pretrained="/path/to/' in message and TINY_MODEL in message
    assert not pretrained_available("ViT-L-14-336", "openai")


def test_an_unreachable_hub_also_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FECLIP_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probes = []

    def unreachable(address: tuple[str, int], timeout: float | None = None) -> None:
        probes.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(PretrainedWeightsUnavailable, match="cannot be reached"):
        resolve_pretrained("ViT-L-14-336", "openai")
    assert len(probes) == 1 and probes[0][1] <= 3


@pytest.mark.usefixtures("no_network")
def test_missing_checkpoint_path_is_named(tmp_path) -> None:
    missing = tmp_path / "weights" / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_clip("ViT-L-14-336", str(missing))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        resolve_pretrained("ViT-L-14-336", "model.safetensors")
    assert not pretrained_available("ViT-L-14-336", str(missing))


@pytest.mark.usefixtures("no_network")
def test_an_existing_checkpoint_path_is_passed_through(tmp_path) -> None:
    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(b"")
    assert resolve_pretrained(TINY_MODEL, str(checkpoint)) == str(checkpoint)


@pytest.mark.usefixtures("no_network")
def test_unknown_tag_and_model_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"no pretrained weights tagged 'laion9b' for model 'ViT-L-14-336'.*openai"):
        create_clip("ViT-L-14-336", "laion9b")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        create_clip("ViT-Z-99", None)


@pytest.mark.usefixtures("no_network")
def test_random_weights_need_no_network(tiny_clip) -> None:
    assert resolve_pretrained("ViT-L-14-336", None) is None
    assert pretrained_available(TINY_MODEL, None)
    model, tokenizer = create_clip(TINY_MODEL, None)
    assert not model.training
    tokens = tokenizer(["a photo of a bottle."])
    assert tokens.shape == (1, 77)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, 64)
        assert model.encode_image(torch.zeros(1, 3, 96, 96)).shape == (1, 64)


@pytest.mark.parametrize("resolved", ["openai", "/cache/timm/open_clip_model.safetensors"])
def test_openai_weights_are_built_with_quick_gelu(monkeypatch: pytest.MonkeyPatch, resolved: str) -> None:
    """OpenAI's CLIPs were trained with QuickGELU; open_clip >= 2.23 only warns when a plain config gets them.

    Whether the tag goes to open_clip as is (online) or as the cached file it resolved to,
    the model must be built with QuickGELU, or every activation is silently wrong.
    """
    import feclip.backbones as backbones

    calls = []

    def spy(name: str, pretrained: str | None = None, **kwargs: object) -> torch.nn.Module:
        calls.append((name, pretrained, kwargs))
        return torch.nn.Identity()

    monkeypatch.setattr(backbones, "resolve_pretrained", lambda *args, **kwargs: resolved)
    monkeypatch.setattr(open_clip, "create_model", spy)
    create_clip("ViT-L-14-336", "openai")
    (name, pretrained, kwargs), = calls
    assert pretrained == resolved
    assert kwargs.get("force_quick_gelu") or name.endswith("-quickgelu"), (name, kwargs)
