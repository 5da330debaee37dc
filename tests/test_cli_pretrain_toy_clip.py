"""``feclip pretrain-toy-clip``: the toy CLIP's own entry point (``python -m feclip.toy_clip``) under ``feclip``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feclip.cli import build_parser, main
from feclip.toy_clip import load_toy_clip, toy_metadata
from feclip.toy_clip.pretrain import _parser
from feclip.toy_clip.pretrain import main as module_main

OPTIONS = ["--steps", "2", "--batch-size", "4", "--warmup", "1", "--threads", "1", "--quiet"]


def _option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_the_options_are_the_modules_own() -> None:
    subcommand = build_parser("pretrain-toy-clip")._subparsers._group_actions[0].choices["pretrain-toy-clip"]
    assert _option_strings(subcommand) == _option_strings(_parser()) and "--windows-per-image" in _option_strings(subcommand)
    defaults = {action.dest: action.default for action in _parser()._actions}
    assert {action.dest: action.default for action in subcommand._actions} == defaults


def test_it_writes_the_same_weights_as_python_m_feclip_toy_clip(tmp_path: Path, capsys) -> None:
    ours, theirs = tmp_path / "cli.safetensors", tmp_path / "module.safetensors"
    assert main(["pretrain-toy-clip", "--out", str(ours), *OPTIONS]) == 0
    assert module_main(["--out", str(theirs), *OPTIONS]) == 0
    assert f"wrote {ours}" in capsys.readouterr().out
    a, b = load_file(str(ours)), load_file(str(theirs))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    load_toy_clip(path=ours)  # a complete feclip-tiny state
    metadata = toy_metadata(ours)
    assert metadata["config"] == toy_metadata(theirs)["config"]
    assert metadata["command"].startswith(f"feclip pretrain-toy-clip --out {ours} --steps 2 --batch-size 4 --lr ")
    assert metadata["command"].endswith("--threads 1 --save-every 100 --quiet")


def test_bad_options_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for options, message in ((["--lr", "0"], "lr must be positive"),
                             (["--out", str(tmp_path / "toy.pt")], "--out must be a .safetensors file")):
        argv = ["pretrain-toy-clip", "--out", str(tmp_path / "toy.safetensors"), "--steps", "1", *options]
        assert main(argv) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("feclip: error: ") and message in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written
