"""Backbone creation: the registered tiny config, and fast, clear failures offline."""

from __future__ import annotations

import socket
import time
import warnings

import open_clip
import pytest
import torch

from feclip.backbones import (
    TINY_MODEL,
    BackboneOrigin,
    PretrainedWeightsUnavailable,
    backbone_origin,
    create_clip,
    create_tiny_clip,
    has_quick_gelu,
    is_torchscript_archive,
    pretrained_available,
    resolve_pretrained,
    uses_quick_gelu,
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


# --- the activation of a weights file ---------------------------------------------------------------


def _state_dict_file(path) -> str:
    torch.save({"visual.proj": torch.zeros(2, 2)}, path)  # a plain torch.save file: what the file is, not its weights
    return str(path)


def _torchscript_file(path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript; OpenAI's files are it
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return str(path)


@pytest.mark.usefixtures("no_network")
def test_quick_gelu_for_a_weights_file(tmp_path) -> None:
    state_dict, torchscript = _state_dict_file(tmp_path / "weights.bin"), _torchscript_file(tmp_path / "ViT-B-16.pt")
    # Every released ViT-L-14-336 is OpenAI's: any file of it was trained with QuickGELU.
    assert uses_quick_gelu("ViT-L-14-336", state_dict) is True
    # ViT-B-16 has OpenAI (QuickGELU) and LAION / DataComp (GELU) releases: a TorchScript archive is OpenAI's...
    assert uses_quick_gelu("ViT-B-16", torchscript) is True
    # ... a plain state dict cannot tell, so the caller must say.
    with pytest.raises(ValueError, match=r"cannot tell .*weights\.bin.*pass quick_gelu=True or False"):
        uses_quick_gelu("ViT-B-16", state_dict)
    assert uses_quick_gelu("ViT-B-16", state_dict, quick_gelu=True) is True
    assert uses_quick_gelu("ViT-B-16", state_dict, quick_gelu=False) is False
    # Tags and random weights, as before; the caller's answer wins over the tag.
    assert uses_quick_gelu("ViT-B-16", "openai") is True and uses_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert uses_quick_gelu("ViT-B-16", None) is False and uses_quick_gelu("ViT-B-16", "openai", quick_gelu=False) is False


def test_torchscript_archives_are_told_from_state_dicts(tmp_path) -> None:
    assert is_torchscript_archive(_torchscript_file(tmp_path / "a.pt"))
    assert not is_torchscript_archive(_state_dict_file(tmp_path / "b.pt"))
    (tmp_path / "c.pt").write_bytes(b"not a zip")
    assert not is_torchscript_archive(tmp_path / "c.pt") and not is_torchscript_archive(tmp_path / "missing.pt")


@pytest.mark.usefixtures("no_network")
def test_create_clip_builds_a_weights_file_with_its_activation(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import feclip.backbones as backbones

    calls = []
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kwargs: calls.append(kwargs) or torch.nn.Identity())
    create_clip("ViT-L-14-336", _state_dict_file(tmp_path / "vit-l.bin"))
    create_clip("ViT-B-16", _torchscript_file(tmp_path / "ViT-B-16.pt"))
    create_clip("ViT-B-16", str(tmp_path / "vit-l.bin"), quick_gelu=False)
    assert [call["force_quick_gelu"] for call in calls] == [True, True, False]
    with pytest.raises(ValueError, match="pass quick_gelu"):
        create_clip("ViT-B-16", str(tmp_path / "vit-l.bin"))
    assert backbones.backbone_origin(torch.nn.Identity()) is None


def test_create_clip_records_where_the_backbone_came_from(tiny_clip) -> None:
    clip, _ = create_tiny_clip(seed=4)
    assert backbone_origin(clip) == BackboneOrigin(TINY_MODEL, None, 4)
    assert backbone_origin(tiny_clip[0]) == BackboneOrigin(TINY_MODEL, None, 0)
    assert not has_quick_gelu(clip)
    quick, _ = create_clip(TINY_MODEL, None, quick_gelu=True)
    assert has_quick_gelu(quick)
    with torch.no_grad():  # same weights (same seed), another activation: other outputs
        assert not torch.allclose(quick.encode_image(torch.ones(1, 3, 96, 96)), tiny_clip[0].encode_image(torch.ones(1, 3, 96, 96)))


# --- one factory --------------------------------------------------------------------------------------


def test_only_the_factory_calls_open_clip_to_build_a_model() -> None:
    """Every backbone (detectors, checkpoints, the toy CLIP, benchmarks) is built by create_clip, nowhere else."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.joinpath("feclip").rglob("*.py"), *root.joinpath("benchmarks").glob("*.py")]
    callers = sorted(str(path.relative_to(root)) for path in sources
                     if "open_clip.create_model(" in path.read_text(encoding="utf-8")
                     or "create_model_and_transforms(" in path.read_text(encoding="utf-8"))
    assert callers == ["feclip/backbones.py"]


def test_init_on_device_draws_the_same_weights_on_the_cpu(tiny_clip) -> None:
    clip, _ = create_clip(TINY_MODEL, None, init_on_device=True)
    reference = tiny_clip[0].state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in clip.state_dict().items())


def test_fingerprints_tell_weights_apart(tiny_clip) -> None:
    from feclip.backbones import backbone_fingerprint, random_backbone_fingerprint

    assert random_backbone_fingerprint(TINY_MODEL, 0) == backbone_fingerprint(tiny_clip[0])
    assert random_backbone_fingerprint(TINY_MODEL, 1) == backbone_fingerprint(create_tiny_clip(seed=1)[0])
    assert random_backbone_fingerprint(TINY_MODEL, 1) != random_backbone_fingerprint(TINY_MODEL, 0)
    assert len(backbone_fingerprint(tiny_clip[0])) == 16


@pytest.mark.usefixtures("no_network")
def test_the_toy_tag_loads_the_shipped_toy_clip(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """create_clip("feclip-tiny", "toy") is the toy CLIP's weights file; here a stand-in file of a seed-3 tiny CLIP."""
    from safetensors.torch import save_file

    import feclip.toy_clip as toy_clip

    assert toy_clip.TOY_TAG == "toy"
    stand_in, _ = create_tiny_clip(seed=3)
    weights = tmp_path / "feclip-tiny-toy.safetensors"
    save_file({key: value.contiguous() for key, value in stand_in.state_dict().items()}, str(weights))
    monkeypatch.setattr(toy_clip, "TOY_WEIGHTS", weights)
    clip, tokenizer = create_clip(TINY_MODEL, toy_clip.TOY_TAG)
    assert all(torch.equal(value, stand_in.state_dict()[key]) for key, value in clip.state_dict().items())
    assert backbone_origin(clip) == BackboneOrigin(TINY_MODEL, "toy", 0) and not clip.training
    assert tokenizer(["a photo"]).shape == (1, 77)
    assert pretrained_available(TINY_MODEL, "toy") and resolve_pretrained(TINY_MODEL, "toy") == str(weights)
    assert not uses_quick_gelu(TINY_MODEL, "toy")
    with pytest.raises(ValueError, match="toy CLIP, made for 'feclip-tiny' only, not 'ViT-B-16'"):
        create_clip("ViT-B-16", "toy")
    monkeypatch.setattr(toy_clip, "TOY_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="toy CLIP weights not found: .*missing.safetensors"):
        create_clip(TINY_MODEL, "toy")
    assert not pretrained_available(TINY_MODEL, "toy")


@pytest.mark.usefixtures("no_network")
def test_a_toy_backbone_round_trips_through_a_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path, tiny_images) -> None:
    from safetensors.torch import save_file

    import feclip.toy_clip as toy_clip
    from feclip.model import FEClip, load_feclip

    stand_in, _ = create_tiny_clip(seed=3)
    weights = tmp_path / "toy.safetensors"
    save_file({key: value.contiguous() for key, value in stand_in.state_dict().items()}, str(weights))
    monkeypatch.setattr(toy_clip, "TOY_WEIGHTS", weights)
    model = FEClip.from_open_clip(TINY_MODEL, "toy", tap_indices=[5, 11])
    assert (model.config.backbone, model.config.pretrained) == (TINY_MODEL, "toy")
    model.save(tmp_path / "run" / "last")
    loaded = load_feclip(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).anomaly_map, model(tiny_images).anomaly_map)
