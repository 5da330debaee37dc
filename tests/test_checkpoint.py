"""Checkpoints: only the trained tensors, a config that rebuilds the model, atomic writes, clear mismatches."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import feclip.checkpoint as checkpoint
from feclip.backbones import create_tiny_clip
from feclip.checkpoint import (
    CheckpointMismatch,
    atomic_write,
    backbone_fingerprint,
    checkpoint_paths,
    load_feclip,
    load_into,
    read_metadata,
    save_checkpoint,
)
from feclip.model import FEClip


def _model(tiny_clip, seed: int = 0, **overrides) -> FEClip:
    clip, tokenizer = tiny_clip
    torch.manual_seed(seed)
    settings = {"backbone": "feclip-tiny", "pretrained": None, **overrides}
    model = FEClip(copy.deepcopy(clip), tokenizer, **settings)
    with torch.no_grad():  # pretend it was trained: every trained tensor moves away from its initial value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    return model.eval()


def test_checkpoint_holds_only_the_trained_tensors_and_the_config(tiny_clip, tmp_path: Path) -> None:
    model = _model(tiny_clip, lfs_statistic="power", tap_indices=[3, 7, 11], lambda_fuse=0.2)
    path = save_checkpoint(model, tmp_path / "model", extra={"epoch": 3, "metrics": {"pixel_auroc": float("nan")}})
    assert path == tmp_path / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        stored = {key: handle.get_tensor(key) for key in keys}
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert keys == set(trainable)
    assert all(key.startswith(("adapters.", "fc_patch.")) for key in keys)
    assert sum(t.numel() for t in stored.values()) == sum(p.numel() for p in trainable.values())
    for name, parameter in trainable.items():
        assert torch.equal(stored[name], parameter.detach())
    metadata = read_metadata(path)
    assert metadata["config"] == model.config.to_dict()
    assert metadata["config"]["tap_indices"] == [3, 7, 11] and metadata["config"]["lfs_statistic"] == "power"
    assert metadata["extra"] == {"epoch": 3, "metrics": {"pixel_auroc": None}}  # strict JSON: NaN as null
    assert metadata["backbone_seed"] == 0
    assert metadata["backbone_fingerprint"] == backbone_fingerprint(model.clip)
    import feclip

    assert metadata["feclip_version"] == feclip.__version__
    assert json.loads((tmp_path / "model.json").read_text()) == metadata  # the sidecar says the same


def test_load_feclip_rebuilds_the_same_model(tiny_clip, tmp_path: Path, tiny_images: torch.Tensor) -> None:
    model = _model(tiny_clip, ffe_window=2, lfs_window=4, lfs_statistic="abs")
    save_checkpoint(model, tmp_path / "run" / "last.safetensors")
    loaded = load_feclip(tmp_path / "run")  # a run folder means its last.safetensors
    assert loaded.config == model.config
    assert not loaded.training and not loaded.clip.training
    with torch.no_grad():
        expected, actual = model(tiny_images), loaded(tiny_images)
    assert torch.equal(actual.pred_score, expected.pred_score)
    assert torch.equal(actual.anomaly_map, expected.anomaly_map)


def test_load_feclip_with_a_given_backbone(tiny_clip, tmp_path: Path, tiny_images: torch.Tensor) -> None:
    model = _model(tiny_clip)
    save_checkpoint(model, tmp_path / "a.safetensors")
    clip, _ = create_tiny_clip(0)
    loaded = load_feclip(tmp_path / "a.safetensors", clip=clip)  # tokenizer from open_clip by name
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).anomaly_map, model(tiny_images).anomaly_map)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"tap_indices": [5, 11]}, "tap_indices [7, 9, 10, 11] (checkpoint) vs [5, 11] (model)"),
        ({"lfs_statistic": "abs"}, "lfs_statistic 'mean' (checkpoint) vs 'abs' (model)"),
        ({"ffe_window": 2, "lfs_window": 4}, "ffe_window 3 (checkpoint) vs 2 (model); lfs_window 3 (checkpoint) vs 4"),
        ({"lambda_fuse": 0.3}, "lambda_fuse 0.1 (checkpoint) vs 0.3 (model)"),
        ({"backbone": "ViT-B-16"}, "backbone 'feclip-tiny' (checkpoint) vs 'ViT-B-16' (model)"),
    ],
)
def test_load_into_names_what_differs(tiny_clip, tmp_path: Path, overrides: dict, named: str) -> None:
    save_checkpoint(_model(tiny_clip), tmp_path / "a.safetensors")
    other = _model(tiny_clip, seed=1, **overrides)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match="does not match this model") as error:
        load_into(other, tmp_path / "a.safetensors")
    assert named in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing was half-loaded


def test_load_into_rejects_other_backbone_weights(tiny_clip, tmp_path: Path) -> None:
    save_checkpoint(_model(tiny_clip), tmp_path / "a.safetensors")
    clip, tokenizer = create_tiny_clip(seed=1)
    other = FEClip(clip, tokenizer, backbone="feclip-tiny", pretrained=None)
    with pytest.raises(CheckpointMismatch, match="backbone weights differ"):
        load_into(other, tmp_path / "a.safetensors")
    load_into(other, tmp_path / "a.safetensors", check_backbone=False)  # explicitly allowed
    assert torch.equal(other.fc_patch.weight, _model(tiny_clip).fc_patch.weight)


def test_load_into_copies_the_weights(tiny_clip, tmp_path: Path) -> None:
    source, target = _model(tiny_clip, seed=0), _model(tiny_clip, seed=1)
    assert not torch.equal(source.adapters[0].ffe.mlp[0].weight, target.adapters[0].ffe.mlp[0].weight)
    save_checkpoint(source, tmp_path / "a")
    metadata = load_into(target, tmp_path / "a")
    assert metadata["config"]["backbone"] == "feclip-tiny"
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name


def test_unknown_backbone_seed_is_reported(tiny_clip, tmp_path: Path) -> None:
    model = _model(tiny_clip)  # built on create_tiny_clip(0)
    with pytest.warns(UserWarning, match="not the one seed 5 gives"):
        save_checkpoint(model, tmp_path / "a", backbone_seed=5)
    with pytest.raises(CheckpointMismatch, match=r"random init, seed 5"):
        load_feclip(tmp_path / "a")


def test_interrupted_save_keeps_the_previous_checkpoint(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(_model(tiny_clip, seed=0), tmp_path / "last.safetensors", extra={"epoch": 1})
    weights, sidecar = path.read_bytes(), (tmp_path / "last.json").read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # half a file, then the Colab runtime dies
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_model(tiny_clip, seed=1), path, extra={"epoch": 2})
    assert path.read_bytes() == weights and (tmp_path / "last.json").read_bytes() == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]  # no temporary left
    assert read_metadata(path)["extra"] == {"epoch": 1}


def test_atomic_write_replaces_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write(target, lambda tmp: tmp.write_text("old"))
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, lambda tmp: (tmp.write_text("ne"), (_ for _ in ()).throw(RuntimeError("disk full"))))
    assert target.read_text() == "old"
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing"):
        read_metadata(tmp_path / "missing")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="without feclip metadata"):
        read_metadata(tmp_path / "plain.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_metadata(tmp_path / "garbage.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "future.safetensors"), metadata={"feclip": json.dumps({"format": 99})})
    with pytest.raises(ValueError, match="upgrade feclip"):
        read_metadata(tmp_path / "future.safetensors")


def test_checkpoint_paths(tmp_path: Path) -> None:
    assert checkpoint_paths(tmp_path) == (tmp_path / "last.safetensors", tmp_path / "last.json")
    assert checkpoint_paths(tmp_path / "best") == (tmp_path / "best.safetensors", tmp_path / "best.json")
    assert checkpoint_paths(tmp_path / "x.safetensors") == (tmp_path / "x.safetensors", tmp_path / "x.json")
