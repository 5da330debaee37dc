"""The run folder's state: resuming bit for bit, what a resume refuses, and RNG states in a state file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from train_helpers import RandomAnomalyDataset, make_config, make_model, same, trained

from feclip.checkpoint import CheckpointMismatch, read_metadata
from feclip.model import FEClip
from feclip.train import LAST, STATE, resolve_resume, train
from feclip.train.run_state import capture_rng_state, read_state, restore_rng_state


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_clip, tmp_path: Path) -> None:
    dataset = RandomAnomalyDataset()
    straight = make_model(tiny_clip)
    straight_history = train(straight, dataset, make_config(epochs=2), out_dir=tmp_path / "straight", progress=False)

    first = make_model(tiny_clip)
    train(first, dataset, make_config(epochs=1), out_dir=tmp_path / "split", progress=False)
    assert read_metadata(tmp_path / "split" / LAST)["extra"]["epoch"] == 1
    resumed = make_model(tiny_clip, seed=7)  # a fresh process: other initial weights, all replaced by the state
    torch.manual_seed(99)
    history = train(resumed, dataset, make_config(epochs=2), out_dir=tmp_path / "split", resume="auto", progress=False)
    assert same(trained(resumed), trained(straight))
    for key in ("epoch", "step", "loss", "bce", "focal", "dice"):
        assert history.column(key) == straight_history.column(key)
    assert read_metadata(tmp_path / "split" / LAST)["extra"]["epoch"] == 2

    again = make_model(tiny_clip, seed=7)  # everything done: resuming changes nothing
    train(again, dataset, make_config(epochs=2), out_dir=tmp_path / "split", resume=tmp_path / "split" / LAST, progress=False)
    assert same(trained(again), trained(straight))


def test_resume_paths_and_mismatches(tiny_clip, tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None and resolve_resume("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        resolve_resume(tmp_path / "elsewhere", tmp_path)
    train(make_model(tiny_clip), RandomAnomalyDataset(n=4), make_config(epochs=1), out_dir=tmp_path, progress=False)
    assert resolve_resume(True, tmp_path) == resolve_resume(tmp_path, tmp_path) == tmp_path / STATE
    clip, tokenizer = tiny_clip
    other = FEClip(copy.deepcopy(clip), tokenizer, backbone="feclip-tiny", pretrained=None, tap_indices=[10, 11])
    with pytest.raises(CheckpointMismatch, match=r"tap_indices \[7, 9, 10, 11\] \(checkpoint\) vs \[10, 11\]"):
        train(other, RandomAnomalyDataset(n=4), make_config(), out_dir=tmp_path, resume=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="changed training config .*'lr': \\(0.0005, 0.001\\)"):
        train(make_model(tiny_clip), RandomAnomalyDataset(n=4), make_config(lr=1e-3), out_dir=tmp_path, resume="auto", progress=False)


def test_rng_states_survive_a_state_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": capture_rng_state(generator)}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3), torch.rand(3, generator=generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"], generator)
    actual = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3), torch.rand(3, generator=generator))
    assert actual[:3] == expected[:3]
    assert torch.equal(actual[3], expected[3]) and torch.equal(actual[4], expected[4])


def test_a_truncated_or_corrupt_state_is_one_error_naming_the_file(tiny_clip, tmp_path: Path) -> None:
    train(make_model(tiny_clip), RandomAnomalyDataset(n=4), make_config(epochs=1), out_dir=tmp_path, progress=False)
    state = tmp_path / STATE
    whole = state.read_bytes()
    assert read_state(state)["epoch"] == 1 and read_state(state, mmap=True)["epoch"] == 1
    damaged = {
        "truncated": (whole[: len(whole) // 2], "is truncated or corrupt"),
        "garbage": (b"\x00" * 64, "is truncated or corrupt"),
        "empty": (b"", "is truncated or corrupt"),
    }
    for name, (content, message) in damaged.items():
        state.write_bytes(content)
        with pytest.raises(ValueError, match=f"training state {state} {message}"):
            train(make_model(tiny_clip), RandomAnomalyDataset(n=4), make_config(), out_dir=tmp_path, resume="auto",
                  progress=False)
    torch.save({"epoch": 1, "weights": torch.zeros(2)}, state)  # a torch file, but not a training state
    with pytest.raises(ValueError, match=rf"{state} is not a feclip training state \(it lacks \['format', 'global_step'"):
        read_state(state)
    torch.save({"format": 99, **{key: 0 for key in ("epoch", "global_step", "model", "model_config", "backbone_fingerprint",
                                      "train_config", "optimizer", "rng", "history")}}, state)
    with pytest.raises(ValueError, match="has format 99; .*upgrade feclip"):
        read_state(state)
