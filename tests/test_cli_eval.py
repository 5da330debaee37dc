"""``feclip eval``: JSON output, the baselines by --method (their numbers are the library's), --out checked first."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import one_error_line, tiny_checkpoint

import feclip.evaluate
from feclip.baselines import ClipZeroShot, WinClip, WinClipFewShot
from feclip.cli import main
from feclip.data import build_dataset, transforms_for_clip
from feclip.evaluate import evaluate
from feclip.model import load_feclip

COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Textures with normal train images (WinCLIP+'s references) and a few test images per category."""
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), "--family", "textures", "--n-train-good", "2", "--n-test-good", "2",
                 "--n-defect", "1", "--image-size", "64"]) == 0
    return root / "textures"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


def test_format_json_prints_the_metrics_written(checkpoint: Path, synth: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", "--ckpt", str(checkpoint), "--data", f"synth:{synth}", "--categories", "weave,mesh",
                 "--out", str(tmp_path), "--quiet", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout is the JSON document and nothing else
    assert printed == {"out": str(tmp_path), "metrics": json.loads((tmp_path / "metrics.json").read_text())}
    assert list(printed["metrics"]) == ["weave", "mesh", "macro", "micro"]
    expected = evaluate(load_feclip(checkpoint), build_dataset(f"synth:{synth}", categories=["weave", "mesh"],
                                                               transform=transforms_for_clip(load_feclip(checkpoint).clip)),
                        progress=False)
    for column in COLUMNS:
        assert printed["metrics"]["macro"][column] == pytest.approx(expected.loc["macro", column], abs=1e-12)
    assert printed["metrics"]["macro"]["method"] == "feclip"


@pytest.mark.parametrize("method", ["clip", "winclip"])
def test_the_zero_shot_baselines_are_the_librarys(method: str, synth: Path, tmp_path: Path) -> None:
    assert main(["eval", "--method", method, "--backbone", "feclip-tiny", "--data", f"synth:{synth}", "--categories",
                 "weave", "--out", str(tmp_path), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    detector = (ClipZeroShot if method == "clip" else WinClip).from_open_clip("feclip-tiny", None)
    dataset = build_dataset(f"synth:{synth}", categories=["weave"], transform=transforms_for_clip(detector.clip))
    expected = evaluate(detector, dataset, progress=False)
    for column in COLUMNS:
        assert table.loc["macro", column] == pytest.approx(expected.loc["macro", column], abs=1e-9)
    assert (table.loc["macro", "method"], table.loc["macro", "backbone"]) == (method, "feclip-tiny")


def test_winclip_plus_takes_its_references_from_each_categorys_train_split(synth: Path, tmp_path: Path) -> None:
    assert main(["eval", "--method", "winclip+", "--shots", "2", "--backbone", "feclip-tiny", "--data", f"synth:{synth}",
                 "--categories", "weave,mesh", "--out", str(tmp_path), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    winclip = WinClip.from_open_clip("feclip-tiny", None)
    transform = transforms_for_clip(winclip.clip)
    for category in ("weave", "mesh"):
        train = build_dataset(f"synth:{synth}", split="train", categories=[category], transform=transform)
        references = torch.stack([train[i]["image"] for i in range(2)])  # both normal train images
        test = build_dataset(f"synth:{synth}", categories=[category], transform=transform)
        expected = evaluate(WinClipFewShot(winclip, references), test, progress=False)
        for column in COLUMNS:
            assert table.loc[category, column] == pytest.approx(expected.loc[category, column], abs=1e-9), (category, column)
    assert table.loc["macro", "shots"] == 2 and table.loc["macro", "method"] == "winclip+"


def test_bad_flags_are_refused_before_the_evaluation(checkpoint: Path, synth: Path, tmp_path: Path, monkeypatch,
                                                     capsys) -> None:
    monkeypatch.setattr(feclip.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated before refusing"))
    a_file = tmp_path / "metrics"
    a_file.write_text("x")
    data = ["--data", f"synth:{synth}", "--quiet"]
    cases = [
        (["--ckpt", str(checkpoint), "--out", str(a_file)], f"--out {a_file} is a file, not a folder"),
        (["--ckpt", str(checkpoint), "--pixel-size", "0"], "--pixel-size must be positive, got 0"),
        (["--ckpt", str(checkpoint), "--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--ckpt", str(checkpoint), "--map-sigma", "-1"], "--map-sigma must be zero or more, got -1.0"),
        ([], "--method feclip needs a trained checkpoint: --ckpt RUN_OR_FILE or --onnx FILE"),
        (["--method", "clip", "--ckpt", str(checkpoint)], "--method clip is built from a backbone"),
        (["--method", "winclip+", "--shots", "0"], "--shots must be positive, got 0"),
        (["--ckpt", str(checkpoint), "--backbone", "feclip-tiny"], "--backbone is for the baselines"),
    ]
    for extra, message in cases:
        line = one_error_line(capsys, main(["eval", *data, *extra]))
        assert message in line, (extra, line)
    assert a_file.read_text() == "x"
