"""The command line end to end on the tiny backbone: synth -> train -> eval -> predict, resume, and its errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import feclip.data
import feclip.profiles
from feclip.checkpoint import load_feclip, read_metadata
from feclip.cli import main
from feclip.data import load_rgb, transforms_for_clip

SMALL = ["--n-train-good", "0", "--n-test-good", "1", "--n-defect", "1", "--image-size", "64"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), *SMALL]) == 0
    return root


@pytest.fixture(scope="module")
def run_dir(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--train", f"synth:{synth / 'objects'}", "--val", f"synth:{synth / 'textures'}",
                 "--out", str(out), "--backbone", "feclip-tiny", "--epochs", "1", "--batch-size", "8",
                 "--num-workers", "0", "--quiet"])
    assert code == 0
    return out


def _one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("feclip: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def test_synth_writes_the_benchmark(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for family, categories in feclip.data.FAMILIES.items():
        for category in categories:
            test = synth / family / category / "test"
            assert len(list((test / "good").glob("*.png"))) == 1
            assert sorted(p.name for p in test.iterdir()) == sorted(["good", *feclip.data.synthetic.defect_types_for(category)])
    assert main(["synth", "--out", str(tmp_path), "--family", "objects", "--seed", "3", *SMALL]) == 0
    assert capsys.readouterr().out.strip() == f"objects: synth:{tmp_path / 'objects'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]
    with Image.open(tmp_path / "objects" / "nut" / "test" / "good" / "000.png") as image:
        assert image.size == (64, 64)


def test_train_writes_a_complete_run(run_dir: Path, synth: Path) -> None:
    assert {"last.safetensors", "last.json", "last.state.pt", "best.safetensors", "history.csv", "history.json",
            "run.json"} <= {p.name for p in run_dir.iterdir()}
    record = json.loads((run_dir / "run.json").read_text())
    assert record["train"] == f"synth:{synth / 'objects'}" and record["val"] == f"synth:{synth / 'textures'}"
    assert record["model"]["backbone"] == "feclip-tiny" and record["model"]["pretrained"] is None
    assert record["model"]["tap_indices"] == [7, 9, 10, 11]  # spread_3 scaled to 12 blocks
    assert record["train_config"]["epochs"] == 1 and record["train_config"]["batch_size"] == 8
    history = json.loads((run_dir / "history.json").read_text())
    n_objects = sum(1 + len(feclip.data.synthetic.defect_types_for(c)) for c in feclip.data.OBJECT_CATEGORIES)
    assert [row["epoch"] for row in history] == [1] and history[0]["step"] == -(-n_objects // 8)  # ceil(images / 8)
    assert read_metadata(run_dir / "last.safetensors")["config"] == record["model"]


def test_eval_prints_and_writes_the_table(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    code = main(["eval", "--ckpt", str(run_dir), "--data", f"synth:{synth / 'textures'}", "--out", str(tmp_path),
                 "--batch-size", "16", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    assert list(table.index) == [*sorted(feclip.data.TEXTURE_CATEGORIES), "macro", "micro"]
    for name in table.index:
        assert name in out
    n_textures = sum(1 + len(feclip.data.synthetic.defect_types_for(c)) for c in feclip.data.TEXTURE_CATEGORIES)
    assert table.loc["macro", "n_images"] == n_textures and json.loads((tmp_path / "metrics.json").read_text())["micro"]
    # The same model on the same data as the validation after the last epoch: the same numbers.
    history = json.loads((run_dir / "history.json").read_text())
    assert table.loc["macro", "image_auroc"] == pytest.approx(history[-1]["val_image_auroc"], abs=1e-12)
    assert table.loc["macro", "pixel_auroc"] == pytest.approx(history[-1]["val_pixel_auroc"], abs=1e-12)
    assert f"{100 * table.loc['macro', 'image_auroc']:.1f}" in out  # printed in percent


def test_predict_on_a_folder_of_own_images(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "mine"
    images.mkdir()
    shutil.copy(synth / "textures" / "weave" / "test" / "hole" / "000.png", images / "a.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "b.jpg")  # another size
    out = tmp_path / "heatmaps"
    assert main(["predict", "--ckpt", str(run_dir / "last.safetensors"), str(images), "--out", str(out)]) == 0
    assert "2 heatmaps" in capsys.readouterr().out
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["heatmap"]) == ["a_heatmap.png", "b_heatmap.png"] and list(scores["label"]) == [-1, -1]
    for name, size in (("a_heatmap.png", (64, 64)), ("b_heatmap.png", (70, 50))):
        with Image.open(out / name) as overlay:
            assert overlay.size == size and overlay.mode == "RGB"
    model = load_feclip(run_dir)
    transform = transforms_for_clip(model.clip)
    with torch.no_grad():
        for path, score, peak in scores[["path", "image_score", "max_pixel_score"]].itertuples(index=False):
            prediction = model(transform.image(load_rgb(path))[None])
            assert score == pytest.approx(prediction.pred_score.item(), abs=1e-6)
            assert peak == pytest.approx(prediction.anomaly_map.max().item(), abs=1e-6)


def test_predict_on_one_image(run_dir: Path, synth: Path, tmp_path: Path) -> None:
    image = synth / "objects" / "nut" / "test" / "crack" / "000.png"
    assert main(["predict", "--ckpt", str(run_dir), str(image), "--out", str(tmp_path), "--alpha", "0"]) == 0
    with Image.open(tmp_path / "000_heatmap.png") as overlay, Image.open(image) as original:
        assert np.array_equal(np.asarray(overlay), np.asarray(original.convert("RGB")))  # alpha 0: the image itself


def test_resume_from_the_command_line(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # Data, model and training flags come from run.json; only the longer schedule is new.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--quiet"]) == 0
    history = json.loads((run / "history.json").read_text())
    original = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and history[0]["loss"] == original[0]["loss"]
    assert read_metadata(run / "last.safetensors")["extra"]["epoch"] == 2


def test_errors_are_one_line(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    textures = f"synth:{synth / 'textures'}"
    cases = [
        (["eval", "--ckpt", str(run_dir), "--data", f"synth:{tmp_path / 'nowhere'}"], "dataset path not found"),
        (["train", "--train", "foo:bar", "--out", str(tmp_path / "r"), "--backbone", "feclip-tiny"],
         "unknown dataset kind 'foo'"),
        (["eval", "--ckpt", str(tmp_path / "nope.safetensors"), "--data", textures], "checkpoint not found"),
        (["predict", "--ckpt", str(run_dir), str(tmp_path / "missing.png"), "--out", str(tmp_path)], "input not found"),
        (["train", "--train", textures, "--out", str(tmp_path / "r"), "--backbone", "feclip-tiny", "--taps", "a,b"],
         "--taps must be comma-separated"),
        (["train", "--train", textures, "--out", str(tmp_path / "r")], "model hub cannot be reached"),
    ]
    for argv, message in cases:
        line = _one_error_line(capsys, main(argv))
        assert message in line, (argv, line)


def test_checkpoint_mismatch_on_resume_is_one_line_and_changes_nothing(run_dir: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = _one_error_line(capsys, main(["train", "--out", str(run), "--resume", "--taps", "1,2", "--quiet"]))
    assert "cannot resume" in line and "tap_indices [7, 9, 10, 11] (checkpoint) vs [1, 2] (model)" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_smoke_default_trains_on_the_synthetic_benchmark(tmp_path: Path, monkeypatch, capsys) -> None:
    smoke = dataclasses.replace(feclip.profiles.SMOKE, data_root=tmp_path / "smoke-data")
    monkeypatch.setattr(feclip.profiles, "SMOKE", smoke)
    generate = feclip.data.generate_benchmark
    monkeypatch.setattr(feclip.data, "generate_benchmark",
                        lambda root: generate(root, image_size=64, n_train_good=0, n_test_good=1, n_test_defect_per_type=1))
    assert main(["train", "--out", str(tmp_path / "demo"), "--epochs", "1", "--num-workers", "0", "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == f"feclip: generating the synthetic benchmark under {smoke.data_root}"
    assert err[0].startswith("feclip: no ViT-L-14-336 / openai weights reachable: smoke run with the randomly "
                             "initialised feclip-tiny backbone")
    record = json.loads((tmp_path / "demo" / "run.json").read_text())
    assert record["train"] == f"synth:{smoke.data_root / 'objects'}" and record["val"] == f"synth:{smoke.data_root / 'textures'}"
    assert record["model"]["backbone"] == "feclip-tiny"
    assert record["train_config"]["batch_size"] == smoke.batch_size and record["train_config"]["epochs"] == 1
    assert "val_image_auroc" in json.loads((tmp_path / "demo" / "history.json").read_text())[0]


def test_help_reads_well(capsys) -> None:
    for command in ("synth", "train", "eval", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])  # --out is required: argparse's usage error
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    result = subprocess.run([sys.executable, "-m", "feclip", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: feclip")
    for command in ("synth", "train", "eval", "predict", "examples:"):
        assert command in result.stdout
