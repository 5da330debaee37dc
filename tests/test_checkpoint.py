"""Checkpoints: only the trained tensors, a config that rebuilds the model, atomic writes, clear mismatches."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import feclip.checkpoint as checkpoint
from feclip.backbones import create_tiny_clip
from feclip.checkpoint import (
    CheckpointMismatch,
    DiskFullError,
    atomic_write,
    backbone_fingerprint,
    checkpoint_paths,
    load_into,
    read_metadata,
    remove_stale_temporaries,
    save_checkpoint,
)
from feclip.model import FEClip, load_feclip


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


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_users_normal_permissions(tiny_clip, tmp_path: Path) -> None:
    """0o666 less the umask, as any other program's files; not mkstemp's (or safetensors') 0o600."""
    for mask, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        folder = tmp_path / oct(mask)
        with _umask(mask):
            weights = save_checkpoint(_model(tiny_clip), folder / "last.safetensors")
            text = atomic_write(folder / "history.json", lambda tmp: tmp.write_text("[]"))
            state = atomic_write(folder / "last.state.pt", lambda tmp: torch.save({"x": torch.zeros(2)}, tmp))
        assert [_mode(p) for p in (weights, folder / "last.json", text, state)] == [expected] * 4, oct(mask)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    leftovers = [".last.safetensors.k2j_x9a1.tmp", ".last.state.pt.0a1b2c3d.tmp", ".history.csv.abcdefgh.tmp"]
    kept = ["last.safetensors", "notes.tmp", ".hidden", ".x.short.tmp", "a.last.state.pt.0a1b2c3d.tmp"]
    for name in leftovers + kept:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in remove_stale_temporaries(tmp_path)) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_full_disk_is_one_error_naming_the_file_and_keeps_the_last_good_one(tiny_clip, tmp_path: Path,
                                                                               monkeypatch) -> None:
    path = save_checkpoint(_model(tiny_clip, seed=0), tmp_path / "last.safetensors", extra={"epoch": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {path} \\(the previous "
                                            "last.safetensors is kept\\)") as raised:
        save_checkpoint(_model(tiny_clip, seed=1), path, extra={"epoch": 2})
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary, nothing replaced
    with pytest.raises(DiskFullError, match="new.txt was not written"):  # the writers' own wording counts too
        atomic_write(tmp_path / "new.txt", lambda tmp: (_ for _ in ()).throw(RuntimeError("I/O error: os error 28")))


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 kB tmpfs (needs the right to mount: root in a container), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: a failed test may still hold a file open


def test_a_really_full_disk_is_reported_whatever_the_writer_raises(small_tmpfs: Path) -> None:
    """torch.save reports a full disk as an unrelated RuntimeError: the free space tells."""
    target = small_tmpfs / "last.state.pt"
    atomic_write(target, lambda tmp: torch.save({"x": torch.zeros(10)}, tmp))
    before = target.read_bytes()
    with pytest.raises(DiskFullError, match=f"no space left on device while writing {target}"):
        atomic_write(target, lambda tmp: torch.save({"x": torch.zeros(200_000)}, tmp))  # 800 kB
    assert target.read_bytes() == before and [p.name for p in small_tmpfs.iterdir()] == ["last.state.pt"]


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


# --- what issue 9 added to a checkpoint ---------------------------------------------------------------


def test_fc_patch_init_and_map_settings_survive_a_save(tiny_clip, tmp_path: Path, tiny_images: torch.Tensor) -> None:
    torch.manual_seed(11)
    model = FEClip(copy.deepcopy(tiny_clip[0]), tiny_clip[1], map_score="logit_margin", resize_mode="crop").eval()
    assert model.config.fc_patch_init == "random"
    save_checkpoint(model, tmp_path / "a")
    torch.manual_seed(12)
    expected_draw = torch.rand(3)
    torch.manual_seed(12)  # another global seed: the random start must come from the file, not be redrawn
    loaded = load_feclip(tmp_path / "a")
    assert torch.equal(torch.rand(3), expected_draw)  # and loading leaves the caller's RNG alone
    assert (loaded.config.fc_patch_init, loaded.config.map_score, loaded.config.resize_mode) == ("random", "logit_margin", "crop")
    assert loaded.config.quick_gelu is False and loaded.config == model.config
    assert torch.equal(loaded.fc_patch.weight, model.fc_patch.weight)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).anomaly_map, model(tiny_images).anomaly_map)


def test_a_checkpoint_that_says_dft_loads_into_a_hartley_model(tiny_clip, tmp_path: Path, tiny_images) -> None:
    """basis="dft" was the Hartley basis' first name: checkpoints that say it load as "hartley"."""
    model = _model(tiny_clip, basis="hartley")
    path = save_checkpoint(model, tmp_path / "old")
    metadata = read_metadata(path)
    metadata["config"]["basis"] = "dft"
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(path), metadata={"feclip": json.dumps(metadata)})
    assert read_metadata(path)["config"]["basis"] == "hartley"
    assert checkpoint.config_differences({**metadata["config"], "basis": "dft"}, model.config) == []
    loaded = load_feclip(path)
    load_into(_model(tiny_clip, basis="dft"), path)  # a model asked for with the old name is the same model
    assert loaded.config.basis == "hartley"
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).anomaly_map, model(tiny_images).anomaly_map)


def test_a_format_1_checkpoint_reads_as_trained_from_clips_projection(tiny_clip, tmp_path: Path) -> None:
    model = _model(tiny_clip, fc_patch_init="clip")
    path = save_checkpoint(model, tmp_path / "old")
    metadata = read_metadata(path)
    # Rewrite it as feclip 0.1.0 wrote it: format 1, a config without the fields issue 9 added.
    metadata["format"] = 1
    for key in ("fc_patch_init", "map_score", "resize_mode", "quick_gelu"):
        del metadata["config"][key]
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(path), metadata={"feclip": json.dumps(metadata)})
    assert read_metadata(path)["config"]["fc_patch_init"] == "clip"
    loaded = load_feclip(path)
    assert (loaded.config.fc_patch_init, loaded.config.map_score, loaded.config.resize_mode) == ("clip", "probability", "squash")
    assert loaded.config.quick_gelu is False  # read from the rebuilt backbone
    assert torch.equal(loaded.fc_patch.weight, model.fc_patch.weight)


def test_a_random_backbone_other_than_tiny_reloads_with_its_seed(tmp_path: Path, tiny_images: torch.Tensor) -> None:
    """The old second backbone factory (checkpoint.build_backbone) rebuilt every random non-tiny backbone with seed 0."""
    import open_clip

    from feclip.backbones import TINY_MODEL

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    tiny_config = json.loads((Path(checkpoint.__file__).parent / "model_configs" / f"{TINY_MODEL}.json").read_text())
    (config_dir / "feclip-test-other.json").write_text(json.dumps(tiny_config))  # same size, another name
    open_clip.add_model_config(config_dir)
    model = FEClip.from_open_clip("feclip-test-other", None, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the save must not doubt that seed 1 rebuilds this backbone
        save_checkpoint(model, tmp_path / "other")
    loaded = load_feclip(tmp_path / "other")
    assert backbone_fingerprint(loaded.clip) == backbone_fingerprint(model.clip)
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).anomaly_map, model(tiny_images).anomaly_map)


def test_a_backbone_of_unknown_origin_cannot_be_saved(tiny_clip, tmp_path: Path) -> None:
    import open_clip

    foreign = open_clip.create_model("feclip-tiny", pretrained=None)  # not made by feclip: nothing records its origin
    model = FEClip(foreign, tiny_clip[1])
    with pytest.raises(ValueError, match=r"does not know which backbone it wraps.*backbone=<open_clip name>"):
        save_checkpoint(model, tmp_path / "a")
    assert not list(tmp_path.iterdir())
    named = FEClip(foreign, tiny_clip[1], backbone="feclip-tiny", pretrained=None)
    assert (named.config.backbone, named.config.pretrained) == ("feclip-tiny", None)
    # A backbone made by feclip needs no naming, and a tiny one is never recorded as the paper's ViT-L.
    made_by_feclip = FEClip(tiny_clip[0], tiny_clip[1])
    save_checkpoint(made_by_feclip, tmp_path / "c")
    assert (read_metadata(tmp_path / "c")["config"]["backbone"], read_metadata(tmp_path / "c")["config"]["pretrained"]) == ("feclip-tiny", None)


def test_a_backbone_with_another_activation_is_refused(tiny_clip, tmp_path: Path) -> None:
    from feclip.backbones import create_clip

    save_checkpoint(_model(tiny_clip), tmp_path / "a")
    quick, tokenizer = create_clip("feclip-tiny", None, quick_gelu=True)  # same weights, QuickGELU
    with pytest.raises(ValueError, match=r"the config says quick_gelu=False, but the backbone uses QuickGELU"):
        load_feclip(tmp_path / "a", clip=quick, tokenizer=tokenizer)
    with pytest.raises(CheckpointMismatch, match=r"quick_gelu False \(checkpoint\) vs True \(model\)"):
        load_into(FEClip(quick, tokenizer), tmp_path / "a")


def test_checkpoint_and_model_import_no_circle() -> None:
    """feclip.model uses feclip.checkpoint; feclip.checkpoint never imports feclip.model, not even lazily."""
    import ast
    import subprocess
    import sys

    source = Path(checkpoint.__file__).read_text(encoding="utf-8")
    runtime_imports = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
                       and node.module == "feclip.model"]
    assert len(runtime_imports) == 1  # the one under TYPE_CHECKING, for annotations
    code = "import sys, feclip.checkpoint; print('feclip.model' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
