"""The command line end to end on the tiny backbone: synth -> train -> eval -> predict, resume, and its errors."""

from __future__ import annotations

import ast
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
from cli_helpers import small_smoke_profile
from feclip.checkpoint import read_metadata
from feclip.cli import main
from feclip.data import build_dataset, load_rgb, transforms_for_clip
from feclip.evaluate import evaluate
from feclip.model import load_feclip
from feclip.postprocess import smooth_anomaly_maps

# Two normal test images per category, so that a held-out quarter has normal and anomalous images.
SMALL = ["--n-train-good", "0", "--n-test-good", "2", "--n-defect", "1", "--image-size", "64"]


def _count(categories) -> int:
    """Test images per family with SMALL: two normal ones and one per defect type of each category."""
    return sum(2 + len(feclip.data.synthetic.defect_types_for(c)) for c in categories)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(root), "--family", "both", *SMALL]) == 0
    return root


@pytest.fixture(scope="module")
def run_dir(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--train", f"synth:{synth / 'objects'}", "--val-fraction", "0.25",
                 "--target", f"synth:{synth / 'textures'}", "--out", str(out), "--backbone", "feclip-tiny",
                 "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--quiet"])
    assert code == 0
    return out


def _objects(synth: Path, model) -> tuple:
    """The training and held-out parts of the objects family, as the run above split them (seed 0)."""
    objects = build_dataset(f"synth:{synth / 'objects'}", transform=transforms_for_clip(model.clip))
    return objects.holdout(0.25, seed=0)


def _one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("feclip: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def test_synth_writes_the_benchmark(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert sorted(p.name for p in synth.iterdir() if p.is_dir()) == ["objects", "textures"]  # --family both
    for family in ("objects", "textures"):
        for category in feclip.data.FAMILIES[family]:
            test = synth / family / category / "test"
            assert len(list((test / "good").glob("*.png"))) == 2
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
    assert record["train"] == f"synth:{synth / 'objects'}" and record["val"] is None and record["val_fraction"] == 0.25
    assert record["target"] == f"synth:{synth / 'textures'}"
    assert record["model"]["backbone"] == "feclip-tiny" and record["model"]["pretrained"] is None
    assert record["model"]["tap_indices"] == [7, 9, 10, 11]  # spread_3 scaled to 12 blocks
    assert (record["model"]["fc_patch_init"], record["model"]["resize_mode"]) == ("random", "squash")
    assert record["train_config"]["epochs"] == 1 and record["train_config"]["batch_size"] == 8
    kept, held_out = _objects(synth, load_feclip(run_dir))
    assert len(held_out) > 0 and len(kept) + len(held_out) == _count(feclip.data.OBJECT_CATEGORIES)
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1] and history[0]["step"] == -(-len(kept) // 8)  # the kept part only
    metadata = read_metadata(run_dir / "last.safetensors")
    assert metadata["config"] == record["model"]
    run = metadata["extra"]["run"]  # the protocol, recorded in the checkpoint itself
    objects = sorted(feclip.data.OBJECT_CATEGORIES)
    assert run["train"] == {"spec": record["train"], "categories": objects, "images": len(kept)}
    assert run["val"] == {"spec": None, "categories": objects, "images": len(held_out), "holdout_fraction": 0.25}
    assert run["target"]["categories"] == sorted(feclip.data.TEXTURE_CATEGORIES)
    assert read_metadata(run_dir / "best.safetensors")["extra"]["chosen_by"] == "val_image_auroc"


def test_validation_is_the_held_out_part_of_the_training_set(run_dir: Path, synth: Path) -> None:
    model = load_feclip(run_dir)
    _, held_out = _objects(synth, model)
    table = evaluate(model, held_out, batch_size=8, progress=False)  # the final model is the last epoch's
    history = json.loads((run_dir / "history.json").read_text())
    for column in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert history[-1][f"val_{column}"] == pytest.approx(table.loc["macro", column], abs=1e-12)


def test_eval_prints_and_writes_the_table(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    code = main(["eval", "--ckpt", str(run_dir), "--data", f"synth:{synth / 'textures'}", "--out", str(tmp_path),
                 "--batch-size", "16", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    assert list(table.index) == [*sorted(feclip.data.TEXTURE_CATEGORIES), "macro", "micro"]
    for name in table.index:
        assert name in out
    assert table.loc["macro", "n_images"] == _count(feclip.data.TEXTURE_CATEGORIES)
    assert json.loads((tmp_path / "metrics.json").read_text())["micro"]
    assert set(table["map_sigma"]) == {4.0} and set(table["resize_mode"]) == {"squash"}
    assert set(table["map_score"]) == {"probability"}
    # The command line's numbers are the library's.
    model = load_feclip(run_dir)
    textures = build_dataset(f"synth:{synth / 'textures'}", transform=transforms_for_clip(model.clip))
    expected = evaluate(model, textures, batch_size=16, progress=False, map_sigma=4.0)
    for column in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert table.loc["macro", column] == pytest.approx(expected.loc["macro", column], abs=1e-12)
    assert f"{100 * table.loc['macro', 'image_auroc']:.1f}" in out  # printed in percent


def test_eval_options_reach_the_table(run_dir: Path, synth: Path, tmp_path: Path) -> None:
    argv = ["eval", "--ckpt", str(run_dir), "--data", f"synth:{synth / 'textures'}", "--categories", "weave",
            "--map-score", "logit_margin", "--map-sigma", "0", "--resize-mode", "crop", "--quiet"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "metrics.csv", index_col="category")
    assert (table.loc["macro", "map_sigma"], table.loc["macro", "map_score"], table.loc["macro", "resize_mode"]) == (
        0.0, "logit_margin", "crop")
    model = load_feclip(run_dir)
    model.config.map_score = "logit_margin"
    weave = build_dataset(f"synth:{synth / 'textures'}", categories="weave",
                          transform=transforms_for_clip(model.clip, resize_mode="crop"))
    expected = evaluate(model, weave, batch_size=8, progress=False, map_sigma=0.0)
    assert table.loc["macro", "pixel_aupro"] == pytest.approx(expected.loc["macro", "pixel_aupro"], abs=1e-12)
    default = evaluate(load_feclip(run_dir), weave, batch_size=8, progress=False)  # probability, sigma 4
    assert default.loc["macro", "pixel_aupro"] != pytest.approx(expected.loc["macro", "pixel_aupro"], abs=1e-9)


def test_predict_on_a_folder_of_own_images(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    images = tmp_path / "mine"
    images.mkdir()
    shutil.copy(synth / "textures" / "weave" / "test" / "hole" / "000.png", images / "a.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "b.jpg")  # another size
    out = tmp_path / "heatmaps"
    assert main(["predict", "--ckpt", str(run_dir / "last.safetensors"), str(images), "--out", str(out)]) == 0
    assert "2 images scored, 0 skipped" in capsys.readouterr().out
    scores = pd.read_csv(out / "scores.csv")
    assert list(scores["heatmap"]) == ["a_heatmap.png", "b_heatmap.png"] and list(scores["label"]) == [-1, -1]
    for name, (width, height) in (("a_heatmap.png", (64, 64)), ("b_heatmap.png", (70, 50))):
        with Image.open(out / name) as overlay:  # the image's size, and a colour bar to its right
            assert overlay.height == height and overlay.width > width and overlay.mode == "RGB"
    assert set(scores["map_sigma"]) == {0.0} and set(scores["map_score"]) == {"probability"}  # the model's own maps
    model = load_feclip(run_dir)
    transform = transforms_for_clip(model.clip)
    with torch.no_grad():
        for path, score, peak in scores[["path", "image_score", "max_pixel_score"]].itertuples(index=False):
            prediction = model(transform.image(load_rgb(path))[None])
            assert score == pytest.approx(prediction.pred_score.item(), abs=1e-6)
            assert peak == pytest.approx(prediction.anomaly_map.max().item(), abs=1e-6)
    assert main(["predict", "--ckpt", str(run_dir), str(images), "--out", str(out / "smooth"), "--map-sigma", "4"]) == 0
    smooth = pd.read_csv(out / "smooth" / "scores.csv")
    with torch.no_grad():
        prediction = model(transform.image(load_rgb(smooth["path"][0]))[None])
    expected = smooth_anomaly_maps(prediction.anomaly_map, 4.0).max().item()
    assert smooth["max_pixel_score"][0] == pytest.approx(expected, abs=1e-6) and set(smooth["map_sigma"]) == {4.0}
    assert expected != pytest.approx(prediction.anomaly_map.max().item(), abs=1e-6)  # the smoothing shows


def test_predict_on_one_image(run_dir: Path, synth: Path, tmp_path: Path) -> None:
    image = synth / "objects" / "nut" / "test" / "crack" / "000.png"
    assert main(["predict", "--ckpt", str(run_dir), str(image), "--out", str(tmp_path), "--alpha", "0", "--no-colour-bar"]) == 0
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
    smoke = small_smoke_profile(monkeypatch, tmp_path / "smoke-data")
    monkeypatch.setattr(feclip.data, "FAMILIES", {f: feclip.data.FAMILIES[f] for f in ("objects", "textures")})
    assert main(["train", "--out", str(tmp_path / "demo"), "--epochs", "1", "--num-workers", "0", "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == f"feclip: generating the synthetic benchmark under {smoke.data_root}"
    assert err[0].startswith("feclip: no ViT-L-14-336 / openai weights reachable: smoke run with feclip's toy CLIP "
                             "(feclip-tiny pretrained on the synthetic world")
    record = json.loads((tmp_path / "demo" / "run.json").read_text())
    # It validates on a held-out part of its training data, never on the target (textures).
    assert record["train"] == f"synth:{smoke.data_root / 'objects'}" and record["target"] == f"synth:{smoke.data_root / 'textures'}"
    assert record["val"] is None and record["val_fraction"] == 0.25
    assert record["model"]["backbone"] == "feclip-tiny"
    assert record["train_config"]["batch_size"] == smoke.batch_size and record["train_config"]["epochs"] == 1
    assert "val_image_auroc" in json.loads((tmp_path / "demo" / "history.json").read_text())[0]


def test_the_protocol_is_enforced(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    objects, textures = f"synth:{synth / 'objects'}", f"synth:{synth / 'textures'}"
    common = ["--backbone", "feclip-tiny", "--epochs", "1", "--num-workers", "0", "--quiet"]
    cases = [
        (["train", "--train", objects, "--val", objects, "--out", str(tmp_path / "a"), *common],
         "the validation set shares"),
        (["train", "--train", objects, "--val", textures, "--target", textures, "--out", str(tmp_path / "b"), *common],
         "the validation set shares categories"),
        (["train", "--train", objects, "--target", objects, "--val-fraction", "0.25", "--out", str(tmp_path / "c"), *common],
         "the training set shares categories"),
        (["train", "--train", objects, "--val-fraction", "1.5", "--out", str(tmp_path / "e"), *common],
         "--val-fraction must be in (0, 1)"),
    ]
    for argv, message in cases:
        line = _one_error_line(capsys, main(argv))
        assert message in line, (argv, line)
        assert not Path(argv[argv.index("--out") + 1]).exists()  # refused before anything is written
    # best.safetensors was chosen on held-out objects: scoring it on objects would select on the test data.
    line = _one_error_line(capsys, main(["eval", "--ckpt", str(run_dir / "best.safetensors"), "--data", objects,
                                         "--out", str(tmp_path / "d")]))
    assert "chosen by val_image_auroc on a validation set that shares categories" in line
    with pytest.raises(SystemExit):  # --val and --val-fraction exclude each other (argparse usage error)
        main(["train", "--train", objects, "--val", textures, "--val-fraction", "0.2", "--out", str(tmp_path / "f")])
    capsys.readouterr()
    # last.safetensors was not chosen on anything: evaluating it in-domain is allowed, with a warning.
    assert main(["eval", "--ckpt", str(run_dir), "--data", objects, "--categories", "nut", "--out", str(tmp_path / "g"),
                 "--quiet"]) == 0
    assert "warning: the model was trained on categories ['nut'] of this data set" in capsys.readouterr().err


def test_model_flags_reach_the_checkpoint(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--train", f"synth:{synth / 'objects'}", "--out", str(out), "--backbone", "feclip-tiny",
                 "--epochs", "1", "--num-workers", "0", "--quiet", "--fc-patch-init", "clip",
                 "--map-score", "logit_margin", "--resize-mode", "crop"]) == 0
    config = read_metadata(out / "last.safetensors")["config"]
    assert (config["fc_patch_init"], config["map_score"], config["resize_mode"]) == ("clip", "logit_margin", "crop")
    model = load_feclip(out)
    assert torch.allclose(model.fc_patch.weight, model.clip.visual.proj.T, atol=1e-3)  # it started there: 1 epoch moved it little
    assert not (out / "best.safetensors").exists()  # no validation: nothing to choose a best by


def test_help_reads_well(capsys) -> None:
    for command in ("synth", "train", "eval", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])  # --out is required: argparse's usage error
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
    # The smoke sizes in the help come from the smoke profile, whatever they are.
    smoke = feclip.profiles.SMOKE
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"smoke profile's sizes ({smoke.epochs} epochs, batch {smoke.batch_size})" in text
    assert f"(default: 9; smoke run: {smoke.epochs})" in text and f"(default: 16; smoke run: {smoke.batch_size})" in text
    assert "--val mvtec" not in text and "--val-fraction" in text  # no example validates on the target
    result = subprocess.run([sys.executable, "-m", "feclip", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: feclip")
    for command in ("synth", "train", "eval", "predict", "examples:"):
        assert command in result.stdout


# --- the command line's structure ------------------------------------------------------------------------


def _modules_after_help(argvs: list[list[str]]) -> list[str]:
    code = ("import sys\nfrom feclip.cli import main\nfor argv in {argvs!r}:\n    try:\n        main(argv)\n"
            "    except SystemExit as exit:\n        assert exit.code == 0, argv\n"
            "print(sorted(name for name in ('torch', 'open_clip', 'numpy', 'pandas') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code.format(argvs=argvs)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_help_imports_no_torch() -> None:
    """``feclip --help`` and every subcommand's own ``--help`` answer without importing torch (seconds to load)."""
    from feclip.cli import COMMANDS

    assert {"synth", "train", "eval", "predict", "export", "download", "reproduce", "pretrain-toy-clip"} <= set(COMMANDS)
    assert _modules_after_help([["--help"], *[[command, "--help"] for command in COMMANDS]]) == []


def test_the_offered_values_are_the_librarys() -> None:
    import feclip.cli.choices as choices
    from feclip.adapters import LFS_STATISTICS
    from feclip.backbones import TINY_MODEL
    from feclip.config import FC_PATCH_INITS, MAP_SCORES
    from feclip.data import DATASET_KINDS
    from feclip.data.synthetic import FAMILIES
    from feclip.data.transforms import RESIZE_MODES
    from feclip.dct import BASES, canonical_basis
    from feclip.evaluate import DEFAULT_MAP_SIGMA
    from feclip.model import FEClip
    from feclip.train.config import AMP_MODES

    assert (choices.DEFAULT_BACKBONE, choices.DEFAULT_PRETRAINED) == FEClip.default_backbone
    assert choices.TINY_MODEL == TINY_MODEL and choices.DATASET_KINDS == DATASET_KINDS
    assert choices.SYNTH_FAMILIES == tuple(FAMILIES) and choices.LFS_STATISTICS == LFS_STATISTICS
    assert choices.BASES == BASES and all(canonical_basis(alias) in BASES for alias in choices.BASIS_ALIASES)
    assert (choices.FC_PATCH_INITS, choices.MAP_SCORES, choices.RESIZE_MODES) == (FC_PATCH_INITS, MAP_SCORES, RESIZE_MODES)
    assert choices.AMP_MODES == AMP_MODES and choices.DEFAULT_MAP_SIGMA == DEFAULT_MAP_SIGMA
    from feclip.heatmaps import MAP_FORMATS

    assert choices.MAP_FORMATS == MAP_FORMATS


def test_download_and_reproduce_are_wired(tmp_path: Path, capsys) -> None:
    for command, flag in (("download", "--from-archive"), ("reproduce", "--seeds")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and flag in capsys.readouterr().out
    assert main(["download", "--list", "--root", str(tmp_path)]) == 0  # offline: lists the sets and where they go
    assert "mvtec" in capsys.readouterr().out


def test_train_is_set_up_by_the_recipes(synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One set-up path: the command line's model, data and config come from feclip.recipes, as the notebooks' do."""
    import feclip.recipes as recipes

    calls = []
    for name in ("build_model", "training_data", "train_config"):
        real = getattr(recipes, name)
        monkeypatch.setattr(recipes, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    out = tmp_path / "run"
    assert main(["train", "--train", f"synth:{synth / 'objects'}", "--out", str(out), "--backbone", "feclip-tiny",
                 "--epochs", "1", "--num-workers", "0", "--quiet", "--cache-prefix", "--basis", "dft", "--taps", "spread_5"]) == 0
    assert sorted(calls) == ["build_model", "train_config", "training_data"]
    record = json.loads((out / "run.json").read_text())
    config = record["train_config"]
    assert (config["lr"], config["fc_patch_lr"], config["batch_size"]) == (5e-4, 5e-6, 16)  # the paper's recipe
    assert config["cache_prefix"] is True and config["device"] == "auto"
    from feclip.taps import tap_set

    assert record["model"]["basis"] == "hartley" and record["model"]["tap_indices"] == tap_set("spread_5", 12) == [4, 6, 9, 11]
    model = recipes.build_model(dataclasses.replace(feclip.profiles.FULL, backbone="feclip-tiny", pretrained=None,
                                                    device="cpu"), basis="hartley", tap_indices="spread_5")
    trained = load_feclip(out)
    assert trained.config == model.config  # what the recipe builds is what the command line trained
