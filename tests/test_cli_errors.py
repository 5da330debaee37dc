"""Every subcommand through every bad input: exit status 1, one line on stderr naming the culprit, nothing half-written.

The cases run in-process (``feclip.cli.main``), each in a sandbox whose files are compared before and
after; a few run as real processes (``python -m feclip``) for the whole path from the shell.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import QUICK, one_error_line, snapshot, tiny_checkpoint, train_argv, write_synth
from PIL import Image

import feclip.cli
from feclip.cli import main
from feclip.data.base import MAX_IMAGE_PIXELS_ENV

# Pillow refuses an image of more than twice this many pixels (300 x 300 here); the 64 px images pass.
_PIXEL_LIMIT = "20000"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data, a checkpoint and bad files for every case; the cases must leave it as it is."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sandbox")
    write_synth(root / "synth")
    tiny_checkpoint(root / "model.safetensors")
    (root / "a_file").write_text("a file, not a folder")
    (root / "a_dir").mkdir()
    (root / "not_clip.bin").write_text("hello")
    torch.save({"weights": torch.zeros(3)}, root / "other.pt")
    (root / "garbage.safetensors").write_bytes(b"not a checkpoint")
    weave = root / "synth" / "textures" / "weave" / "test"
    big = Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8))
    bomb = root / "bomb"  # a labelled folder with one image over the decompression-bomb limit
    for sub, source in (("good", weave / "good" / "000.png"), ("abnormal", weave / "hole" / "000.png")):
        (bomb / sub).mkdir(parents=True)
        shutil.copy(source, bomb / sub / "000.png")
    big.save(bomb / "good" / "huge.png")
    masked = root / "masked"  # an anomalous image whose mask has another size
    for sub in ("good", "abnormal", "masks"):
        (masked / sub).mkdir(parents=True)
    shutil.copy(weave / "good" / "000.png", masked / "good" / "000.png")
    shutil.copy(weave / "hole" / "000.png", masked / "abnormal" / "000.png")
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(masked / "masks" / "000_mask.png")
    photos = root / "photos"
    photos.mkdir()
    shutil.copy(weave / "good" / "000.png", photos / "ok.png")
    big.save(photos / "huge.png")
    (root / "texts").mkdir()
    shutil.copy(weave / "good" / "000.png", root / "texts" / "ok.png")
    (root / "texts" / "readme.png").write_text("a text file with an image's name")
    (root / "earlier").mkdir()  # the output of an earlier prediction
    assert main(["predict", "--ckpt", str(root / "model.safetensors"), str(photos / "ok.png"), "--out",
                 str(root / "earlier"), "--quiet"]) == 0
    return root


def _cases(s: Path) -> list[tuple[str, list[str], str]]:
    """``(name, argv, what the line must say)`` for every subcommand and bad input."""
    ckpt, synth = str(s / "model.safetensors"), s / "synth"
    textures, objects = f"synth:{synth / 'textures'}", f"synth:{synth / 'objects'}"
    bomb = f"{s / 'bomb' / 'good' / 'huge.png'} is over Pillow's decompression-bomb limit"
    run = s / "new_run"
    return [
        # synth
        ("synth --out file", ["synth", "--out", str(s / "a_file")], f"--out {s / 'a_file'} is a file, not a folder"),
        ("synth --image-size 0", ["synth", "--out", str(s / "x"), "--image-size", "0"], "--image-size must be positive, got 0"),
        ("synth --n-defect -1", ["synth", "--out", str(s / "x"), "--n-defect", "-1"], "--n-defect must be zero or more"),
        # train
        ("train --out file", train_argv(synth, s / "a_file"), f"--out {s / 'a_file'} is a file, not a folder"),
        ("train --epochs 0", train_argv(synth, run, "--epochs", "0"), "--epochs must be positive, got 0"),
        ("train --batch-size 0", train_argv(synth, run, "--batch-size", "0"), "--batch-size must be positive, got 0"),
        ("train --num-workers -1", train_argv(synth, run, "--num-workers", "-1"), "--num-workers must be zero or more"),
        ("train --ffe-window 0", train_argv(synth, run, "--ffe-window", "0"), "--ffe-window must be positive, got 0"),
        ("train unknown kind", ["train", "--train", "foo:bar", "--out", str(run), *QUICK], "unknown dataset kind 'foo'"),
        ("train missing data", ["train", "--train", f"synth:{s / 'nowhere'}", "--out", str(run), *QUICK],
         "dataset path not found"),
        ("train --taps", train_argv(synth, run, "--taps", "a,b"), "--taps must be comma-separated"),
        ("train --pretrained text", train_argv(synth, run, "--pretrained", str(s / "not_clip.bin")),
         f"--pretrained {s / 'not_clip.bin'} is not a CLIP checkpoint of feclip-tiny"),
        ("train --pretrained torch file", train_argv(synth, run, "--pretrained", str(s / "other.pt")),
         f"--pretrained {s / 'other.pt'} is not a CLIP checkpoint of feclip-tiny"),
        ("train decompression bomb", ["train", "--train", f"folder:{s / 'bomb'}", "--out", str(run), *QUICK], bomb),
        ("train no hub", ["train", "--train", textures, "--out", str(run)], "model hub cannot be reached"),
        ("train --resume nothing", ["train", "--out", str(run), "--resume", str(s / "a_dir")], "nothing to resume from"),
        # eval
        ("eval --out file", ["eval", "--ckpt", ckpt, "--data", textures, "--out", str(s / "a_file")],
         f"--out {s / 'a_file'} is a file, not a folder"),
        ("eval --pixel-size 0", ["eval", "--ckpt", ckpt, "--data", textures, "--pixel-size", "0"],
         "--pixel-size must be positive, got 0"),
        ("eval --map-sigma -1", ["eval", "--ckpt", ckpt, "--data", textures, "--map-sigma", "-1"], "--map-sigma must be zero"),
        ("eval missing checkpoint", ["eval", "--ckpt", str(s / "nope.safetensors"), "--data", textures], "checkpoint not found"),
        ("eval garbage checkpoint", ["eval", "--ckpt", str(s / "garbage.safetensors"), "--data", textures],
         f"{s / 'garbage.safetensors'} is not a readable safetensors file"),
        ("eval missing data", ["eval", "--ckpt", ckpt, "--data", f"synth:{s / 'nowhere'}"], "dataset path not found"),
        ("eval --pretrained", ["eval", "--ckpt", ckpt, "--data", textures, "--pretrained", str(s / "not_clip.bin")],
         f"--pretrained {s / 'not_clip.bin'} is not a CLIP checkpoint"),
        ("eval decompression bomb", ["eval", "--ckpt", ckpt, "--data", f"folder:{s / 'bomb'}", "--out", str(s / "e"),
                                     "--quiet"], bomb),
        ("eval bomb in a worker", ["eval", "--ckpt", ckpt, "--data", f"folder:{s / 'bomb'}", "--out", str(s / "e"),
                                   "--num-workers", "1", "--quiet"], bomb),
        ("eval mask of another size", ["eval", "--ckpt", ckpt, "--data", f"folder:{s / 'masked'}", "--out", str(s / "e"),
                                       "--quiet"], f"mask {s / 'masked' / 'masks' / '000_mask.png'} is 48x32 (width x "
                                                   f"height) but its image {s / 'masked' / 'abnormal' / '000.png'} is 64x64"),
        ("eval baseline --pretrained", ["eval", "--method", "clip", "--backbone", "feclip-tiny", "--pretrained",
                                        str(s / "other.pt"), "--data", textures], f"--pretrained {s / 'other.pt'} is not"),
        # predict
        ("predict --out file", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "a_file")],
         f"--out {s / 'a_file'} is a file, not a folder"),
        ("predict --batch-size 0", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "p"), "--batch-size", "0"],
         "--batch-size must be positive"),
        ("predict --alpha", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "p"), "--alpha", "2"],
         "--alpha must be in [0, 1]"),
        ("predict missing input", ["predict", "--ckpt", ckpt, str(s / "missing.png"), "--out", str(s / "p")],
         "input not found"),
        ("predict --pretrained", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "p"), "--pretrained",
                                  str(s / "other.pt")], f"--pretrained {s / 'other.pt'} is not a CLIP checkpoint"),
        ("predict reused --out", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "earlier")],
         f"--out {s / 'earlier'} already holds files; pass --overwrite"),
        ("predict --overwrite a foreign folder", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "bomb"),
                                                  "--overwrite"], "holds files that feclip predict did not write"),
        ("predict --strict bomb", ["predict", "--ckpt", ckpt, str(s / "photos"), "--out", str(s / "p"), "--strict", "--quiet"],
         f"{s / 'photos' / 'huge.png'} is over Pillow's decompression-bomb limit"),
        ("predict --strict text", ["predict", "--ckpt", ckpt, str(s / "texts"), "--out", str(s / "p"), "--strict", "--quiet"],
         f"cannot read image {s / 'texts' / 'readme.png'}"),
        ("predict winclip+ without references", ["predict", "--method", "winclip+", "--backbone", "feclip-tiny",
                                                 str(s / "photos"), "--out", str(s / "p")], "needs --reference DIR"),
        # download
        ("download --root file", ["download", "mvtec", "--root", str(s / "a_file")], f"--root {s / 'a_file'} is a file"),
        ("download unknown", ["download", "nosuch", "--root", str(s / "d")], "unknown data set 'nosuch'"),
        ("download --timeout 0", ["download", "mvtec", "--root", str(s / "d"), "--timeout", "0"],
         "--timeout must be positive"),
        # reproduce
        ("reproduce --out file", ["reproduce", "--profile", "smoke", "--out", str(s / "a_file")],
         f"--out {s / 'a_file'} is a file, not a folder"),
        ("reproduce --epochs 0", ["reproduce", "--profile", "smoke", "--out", str(s / "r"), "--epochs", "0"],
         "--epochs must be positive, got 0"),
        ("reproduce --images-per-category 0", ["reproduce", "--profile", "smoke", "--out", str(s / "r"),
                                               "--images-per-category", "0"], "--images-per-category must be positive"),
        # export
        ("export missing checkpoint", ["export", "--ckpt", str(s / "nope"), "--out", str(s / "m.onnx")], "checkpoint not found"),
        ("export --out folder", ["export", "--ckpt", ckpt, "--out", str(s / "a_dir")], f"--out {s / 'a_dir'} is a folder"),
        ("export --batch-size 0", ["export", "--ckpt", ckpt, "--out", str(s / "m.onnx"), "--batch-size", "0"],
         "--batch-size must be positive"),
        ("export --pretrained", ["export", "--ckpt", ckpt, "--out", str(s / "m.onnx"), "--pretrained", str(s / "other.pt")],
         f"--pretrained {s / 'other.pt'} is not a CLIP checkpoint"),
        # pretrain-toy-clip
        ("pretrain-toy-clip --out folder", ["pretrain-toy-clip", "--out", str(s / "a_dir")], str(s / "a_dir")),
        ("pretrain-toy-clip --steps 0", ["pretrain-toy-clip", "--out", str(s / "t.safetensors"), "--steps", "0"],
         "--steps must be positive, got 0"),
    ]


def test_every_subcommand_is_covered(sandbox: Path) -> None:
    assert {argv[0] for _, argv, _ in _cases(sandbox)} == set(feclip.cli.COMMANDS)


def test_every_bad_input_is_one_line_naming_it_and_writes_nothing(sandbox: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, _PIXEL_LIMIT)
    failures = []
    for name, argv, message in _cases(sandbox):
        before = snapshot(sandbox)
        code = main(argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        if not (code == 1 and len(lines) == 1 and lines[0].startswith("feclip: error: ") and message in lines[0]
                and "Traceback" not in captured.err + captured.out):
            failures.append(f"{name}: exit {code}, stderr {captured.err!r}")
        elif snapshot(sandbox) != before:
            changed = set(snapshot(sandbox)) ^ set(before) or "contents"
            failures.append(f"{name}: wrote {changed}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("argv, message", [
    (["train", "--train", "synth:SANDBOX/synth/objects", "--out", "SANDBOX/a_file", "--backbone", "feclip-tiny"],
     "--out SANDBOX/a_file is a file, not a folder"),
    (["predict", "--ckpt", "SANDBOX/model.safetensors", "SANDBOX/texts", "--out", "SANDBOX/p", "--strict", "--quiet"],
     "cannot read image SANDBOX/texts/readme.png"),
])
def test_from_the_shell(sandbox: Path, argv: list[str], message: str) -> None:
    """The real console path: ``python -m feclip`` in a fresh process."""
    argv = [arg.replace("SANDBOX", str(sandbox)) for arg in argv]
    before = snapshot(sandbox)
    result = subprocess.run([sys.executable, "-m", "feclip", *argv], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"feclip: error: {message.replace('SANDBOX', str(sandbox))}")
    assert snapshot(sandbox) == before


def test_debug_shows_the_traceback(sandbox: Path) -> None:
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        main(["--debug", "synth", "--out", str(sandbox / "a_file")])


def test_worker_errors_read_as_their_own_message() -> None:
    from feclip.cli.common import error_line

    wrapped = OSError("Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                      "last):\n  File \"x.py\", line 1, in f\n    raise ...\n"
                      "feclip.data.base.ImageReadError: cannot read image a.png: truncated\n")
    assert error_line(wrapped) == "cannot read image a.png: truncated"
    assert error_line(ValueError("two\n  lines")) == "two lines" and error_line(ValueError()) == "ValueError"
