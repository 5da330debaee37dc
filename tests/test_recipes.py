"""Profile recipes: the model, the zero-shot data sets, and load-or-train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from feclip.data.synthetic import generate_benchmark
from feclip.profiles import FULL, SMOKE
from feclip.recipes import build_model, default_run_dir, load_or_train, profile_datasets, train_config


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_benchmark(root, seed=0, n_train_good=1, n_test_good=2, n_test_defect_per_type=1)
    return dataclasses.replace(SMOKE, data_root=root, epochs=1, batch_size=4)


def test_train_config_takes_the_profile_sizes(profile) -> None:
    config = train_config(profile, epochs=2)
    assert (config.epochs, config.batch_size, config.lr, config.fc_patch_lr) == (2, 4, profile.adapter_lr, profile.fc_patch_lr)
    # The full recipe keeps the reference implementation's 1/100 rate for fc_patch; the smoke recipe trains
    # fc_patch at the adapters' rate (six CPU epochs would barely move a random fc_patch at 1/100).
    full = train_config(FULL)
    assert (full.lr, full.fc_patch_lr) == (5e-4, 5e-6) and config.fc_patch_lr == config.lr


def test_profile_datasets_follow_the_zero_shot_protocol(profile) -> None:
    model = build_model(profile)
    train_set, eval_set = profile_datasets(profile, model)
    # train on the objects family's test split, evaluate on the textures family: disjoint categories
    assert set(train_set.categories).isdisjoint(eval_set.categories)
    assert all(s.image_path.parts[-3] == "test" for s in train_set.samples)  # the auxiliary TEST split
    assert all("objects" in str(s.image_path) for s in train_set.samples)
    assert all("textures" in str(s.image_path) for s in eval_set.samples)
    assert train_set[0]["image"].shape == (3, 96, 96)


def test_load_or_train_trains_once_then_loads(profile, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    model, history = load_or_train(profile, run_dir)
    assert len(history) == 1 and (run_dir / "last.safetensors").is_file()
    loaded, loaded_history = load_or_train(profile, run_dir)
    assert loaded_history.to_frame().equals(history.to_frame())
    for (name, a), (_, b) in zip(model.adapters.state_dict().items(), loaded.adapters.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="another configuration"):
        load_or_train(profile, run_dir, lambda_fuse=0.5)
    with pytest.raises(ValueError, match="fc_patch_lr"):
        load_or_train(profile, run_dir, train_overrides={"fc_patch_lr": 1e-3})
    with pytest.raises(ValueError, match="fc_patch_init"):
        load_or_train(profile, run_dir, fc_patch_init="clip")  # another start is another run
    with pytest.raises(ValueError, match="tap_reduction"):
        load_or_train(profile, run_dir, train_overrides={"tap_reduction": "sum"})
    # How the trained model reports its map is not part of the run: applied to the loaded model.
    margin, _ = load_or_train(profile, run_dir, map_score="logit_margin")
    assert margin.config.map_score == "logit_margin" and margin.anomaly_map_range[0] < 0


def test_load_or_train_reads_an_older_run_as_what_it_trained(profile, tmp_path: Path) -> None:
    """A run saved before issue 9 (format 1, summed taps, fc_patch from CLIP's projection) is not today's default."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from feclip.checkpoint import read_metadata

    run_dir = tmp_path / "old"
    load_or_train(profile, run_dir)
    path = run_dir / "last.safetensors"
    metadata = read_metadata(path)
    metadata["format"] = 1
    for key in ("fc_patch_init", "map_score", "resize_mode", "quick_gelu"):
        del metadata["config"][key]
    training = metadata["extra"]["train_config"]
    for key in ("supervise", "tap_reduction", "focal_alpha", "dice_smooth"):
        del training[key]
    training["loss_reduction"] = "per_tap"
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(path), metadata={"feclip": json.dumps(metadata)})
    with pytest.raises(ValueError, match="another configuration.*fc_patch_init.*tap_reduction"):
        load_or_train(profile, run_dir)


def test_build_model_is_the_same_whatever_the_global_rng(profile) -> None:
    torch.manual_seed(1)
    first = build_model(profile)
    torch.manual_seed(2)
    second = build_model(profile)
    for (name, a), (_, b) in zip(first.adapters.state_dict().items(), second.adapters.state_dict().items()):
        assert torch.equal(a, b), name


def test_default_run_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FECLIP_RUNS", str(tmp_path))
    assert default_run_dir(SMOKE, "ablation") == tmp_path / "smoke" / "ablation"


def test_a_finished_run_is_found_whatever_the_spelling_of_its_settings(profile, tmp_path: Path) -> None:
    """A tap-set name, its blocks in any order, and the basis' old name "dft" all name the same run."""
    run_dir = tmp_path / "named"
    model, _ = load_or_train(profile, run_dir, tap_indices="spread_5", basis="dft")
    assert model.config.tap_indices == [4, 6, 9, 11] and model.config.basis == "hartley"
    for taps, basis in (("spread_5", "hartley"), ([11, 9, 6, 4], "dft")):
        again, _ = load_or_train(profile, run_dir, tap_indices=taps, basis=basis)  # loaded, not trained again
        assert again.config == model.config
    with pytest.raises(ValueError, match="another configuration.*tap_indices"):
        load_or_train(profile, run_dir, tap_indices="last4", basis="hartley")
    with pytest.raises(ValueError, match="unknown tap set 'spread_9'"):
        build_model(profile, tap_indices="spread_9")


def test_a_second_process_on_the_same_run_waits_for_it(profile, tmp_path: Path) -> None:
    """Another kernel holds the run folder (it is training): load_or_train waits, then does its work; no mixed files."""
    import subprocess
    import sys
    import threading

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".last.state.pt.k9x2m4q1.tmp").write_bytes(b"half a state: a kernel was killed mid-save")
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom feclip.run_folder import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()",
                               str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    threading.Timer(2.0, holder.stdin.close).start()  # the other kernel finishes two seconds later
    try:
        with pytest.warns(UserWarning, match=f"PID {holder.pid} .*: waiting for it"):
            _, history = load_or_train(profile, run_dir)
    finally:
        holder.wait(timeout=60)
    assert len(history) == 1 and (run_dir / "last.safetensors").is_file()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") or p.name == "run.lock") == []


def test_published_adapters_stand_in_for_the_default_run(profile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$FECLIP_ADAPTERS lets a reader skip training: the default run is the published model, nothing trains."""
    import feclip.recipes as recipes

    published = build_model(profile)
    with torch.no_grad():
        published.fc_patch.weight.mul_(2)  # not what a fresh build gives
    published.save(tmp_path / "published.safetensors")
    monkeypatch.setenv("FECLIP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FECLIP_ADAPTERS", str(tmp_path / "published.safetensors"))
    monkeypatch.setattr(recipes, "train", lambda *args, **kwargs: pytest.fail("trained instead of loading"))
    model, history = load_or_train(profile)
    assert len(history) == 0 and torch.equal(model.fc_patch.weight, published.fc_patch.weight)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(pytest.fail.Exception, match="trained instead"):  # a run with its own settings still trains
        load_or_train(profile, lambda_fuse=0.5)
    with pytest.raises(ValueError, match="adapters for feclip-tiny, but the smoke profile runs ViT-B-16"):
        recipes.published_adapters(dataclasses.replace(profile, backbone="ViT-B-16"))
