"""``feclip predict``: every file under the input, whole outputs or none, EXIF, raw maps, thresholds, methods."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import one_error_line, snapshot, tiny_checkpoint, write_synth
from PIL import Image, ImageOps

import feclip.cli.predict_outputs
from feclip.cli import main
from feclip.data import build_dataset, load_rgb, transforms_for_clip
from feclip.data.synthetic import defect_types_for
from feclip.heatmaps import colour_bar, decode_map_png16, resize_map
from feclip.model import load_feclip
from feclip.thresholds import f1_threshold


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth"), family="textures")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="module")
def model(checkpoint: Path):
    return load_feclip(checkpoint)


@pytest.fixture()
def images(synth: Path, tmp_path: Path) -> Path:
    """A user's folder: images at the top, in a good/ folder, deeper down, a text file, a hidden file."""
    root = tmp_path / "mine"
    weave = synth / "textures" / "weave" / "test"
    for target, source in {"a.png": weave / "hole" / "000.png", "good/b.png": weave / "good" / "000.png",
                           "line 2/deep/c.png": weave / "good" / "001.png", "line 2/c.jpg": weave / "hole" / "000.png"}.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").save(root / target)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def _scores(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])


def _predict(model, image: Image.Image):
    with torch.no_grad():
        return model(transforms_for_clip(model.clip).image(image)[None])


def test_every_file_is_tried_and_unreadable_ones_are_reported(checkpoint: Path, images: Path, tmp_path: Path,
                                                              capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(checkpoint), str(images), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    scores = _scores(out)
    relative = [str(Path(p).relative_to(images)) for p in scores["path"]]
    assert relative == ["a.png", "good/b.png", "line 2/c.jpg", "line 2/deep/c.png", "notes.txt"]  # hidden files aside
    assert list(scores["heatmap"].fillna("-")) == ["a_heatmap.png", "good/b_heatmap.png", "line 2/c_heatmap.png",
                                                   "line 2/deep/c_heatmap.png", "-"]
    skipped = scores[scores["error"].notna()]
    assert list(skipped["path"]) == [str(images / "notes.txt")]
    assert skipped["error"].iloc[0].startswith(f"cannot read image {images / 'notes.txt'}")
    assert skipped["image_score"].isna().all()
    assert f"skipped 1 file(s) that are not readable images:\n  {images / 'notes.txt'}: cannot read image" in captured.out
    assert "4 images scored, 1 skipped" in captured.out and captured.err == ""  # --quiet: no progress bar
    for name in scores["heatmap"].dropna():
        assert (out / name).is_file()
    record = json.loads((out / "predict.json").read_text())
    assert (record["generator"], record["scored"], record["skipped"]) == ("feclip predict", 4, 1)
    # A progress bar without --quiet.
    assert main(["predict", "--ckpt", str(checkpoint), str(images), "--out", str(tmp_path / "bar")]) == 0
    assert "predict: 100%" in capsys.readouterr().err


def test_a_labelled_layout_is_scored_whole_except_its_masks(checkpoint: Path, synth: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "layout"
    weave = synth / "textures" / "weave"
    for sub, source in (("good", weave / "test" / "good" / "000.png"), ("abnormal", weave / "test" / "hole" / "000.png"),
                        ("masks", weave / "ground_truth" / "hole" / "000_mask.png"), ("extra", weave / "test" / "good" / "001.png")):
        (folder / sub).mkdir(parents=True)
        shutil.copy(source, folder / sub / ("000_mask.png" if sub == "masks" else "000.png"))
    assert main(["predict", "--ckpt", str(checkpoint), str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert f"feclip: not scored: {folder / 'masks'} (the ground-truth masks" in capsys.readouterr().err
    scores = _scores(tmp_path / "out")
    assert [str(Path(p).relative_to(folder)) for p in scores["path"]] == ["abnormal/000.png", "extra/000.png", "good/000.png"]
    assert list(scores["label"]) == [1, -1, 0]


def test_scores_and_raw_maps_are_the_models(checkpoint: Path, model, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(checkpoint), str(images / "line 2"), "--out", str(out), "--quiet"]) == 0
    png16 = tmp_path / "png16"
    assert main(["predict", "--ckpt", str(checkpoint), str(images / "line 2"), "--out", str(png16), "--quiet",
                 "--maps", "png16"]) == 0
    for row, row16 in zip(_scores(out).itertuples(), _scores(png16).itertuples()):
        prediction = _predict(model, load_rgb(row.path))
        raw = np.load(out / row.map)
        assert raw.shape == (96, 96) and raw.dtype == np.float32  # the model's input size
        np.testing.assert_allclose(raw, prediction.anomaly_map[0].numpy(), atol=1e-6)
        assert row.image_score == pytest.approx(prediction.pred_score.item(), abs=1e-6)
        assert row.max_pixel_score == pytest.approx(float(raw.max()), abs=1e-6)
        with Image.open(png16 / row16.map) as encoded:
            assert encoded.mode.startswith("I;16") or encoded.mode == "I"
            decoded = decode_map_png16(encoded, (0.0, 1.0))
        np.testing.assert_allclose(decoded, raw, atol=0.5 / 65535 + 1e-7)


def test_exif_orientation_is_applied_to_what_the_model_sees_and_to_the_overlay(checkpoint: Path, model, tmp_path: Path
                                                                              ) -> None:
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))  # 80 wide, 40 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(checkpoint), str(tmp_path / "phone.jpg"), "--out", str(out), "--quiet",
                 "--no-colour-bar", "--alpha", "0"]) == 0
    upright = ImageOps.exif_transpose(load_rgb(tmp_path / "phone.jpg"))
    assert upright.size == (40, 80)
    with Image.open(out / "phone_heatmap.png") as overlay:
        assert overlay.size == (40, 80)  # shown upright
        assert np.array_equal(np.asarray(overlay), np.asarray(upright))
    score = _scores(out)["image_score"][0]
    assert score == pytest.approx(_predict(model, upright).pred_score.item(), abs=1e-6)
    assert score != pytest.approx(_predict(model, load_rgb(tmp_path / "phone.jpg")).pred_score.item(), abs=1e-6)


def test_the_overlay_has_a_colour_bar_beside_the_untouched_overlay(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    plain, barred = tmp_path / "plain", tmp_path / "barred"
    assert main(["predict", "--ckpt", str(checkpoint), str(images / "a.png"), "--out", str(plain), "--quiet",
                 "--no-colour-bar"]) == 0
    assert main(["predict", "--ckpt", str(checkpoint), str(images / "a.png"), "--out", str(barred), "--quiet"]) == 0
    with Image.open(plain / "a_heatmap.png") as without, Image.open(barred / "a_heatmap.png") as with_bar:
        left, full = np.asarray(without), np.asarray(with_bar)
    assert full.shape[0] == left.shape[0] and full.shape[1] > left.shape[1]
    assert np.array_equal(full[:, : left.shape[1]], left)
    gradient = np.asarray(colour_bar(left.shape[0], 1))[:, 0]
    columns = [c for c in range(left.shape[1], full.shape[1]) if np.array_equal(full[:, c], gradient)]
    assert len(columns) >= 8  # the bar: jet from the top (the range's high end, red) down to its low end (blue)
    assert tuple(gradient[0]) == (128, 0, 0) and tuple(gradient[-1]) == (0, 0, 128)


def test_thresholds_give_decisions_and_masks(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--ckpt", str(checkpoint), str(images), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    scores = _scores(out).dropna(subset=["image_score"])
    image_threshold = float(np.median(scores["image_score"]))
    pixel_threshold = float(np.median(scores["max_pixel_score"])) - 0.01
    assert main([*argv, "--overwrite", "--image-threshold", str(image_threshold), "--pixel-threshold",
                 str(pixel_threshold)]) == 0
    decided = _scores(out).dropna(subset=["image_score"])
    expected = np.where(decided["image_score"] >= image_threshold, "anomalous", "normal")
    assert list(decided["decision"]) == list(expected) and set(expected) == {"anomalous", "normal"}
    for row in decided.itertuples():
        image = load_rgb(row.path)
        flagged = resize_map(np.load(out / row.map), (image.height, image.width)) >= pixel_threshold
        with Image.open(out / row.mask) as mask:
            assert mask.size == image.size and np.array_equal(np.asarray(mask) == 255, flagged)
        assert row.anomalous_pixels == pytest.approx(flagged.mean())
    assert json.loads((out / "thresholds.json").read_text()) == {
        "image_threshold": image_threshold, "pixel_threshold": pixel_threshold, "source": "given"}


def test_calibrated_thresholds_are_the_best_f1_on_the_labelled_folder(checkpoint: Path, model, synth: Path, images: Path,
                                                                     tmp_path: Path, capsys) -> None:
    labelled = tmp_path / "labelled"
    weave = synth / "textures" / "weave"
    for sub in ("good", "abnormal", "masks"):
        (labelled / sub).mkdir(parents=True)
    for path in (weave / "test" / "good").glob("*.png"):
        shutil.copy(path, labelled / "good" / path.name)
    for defect in defect_types_for("weave"):
        shutil.copy(weave / "test" / defect / "000.png", labelled / "abnormal" / f"{defect}.png")
        shutil.copy(weave / "ground_truth" / defect / "000_mask.png", labelled / "masks" / f"{defect}_mask.png")
    out = tmp_path / "out"
    assert main(["predict", "--ckpt", str(checkpoint), str(images), "--out", str(out), "--quiet", "--calibrate",
                 f"folder:{labelled}", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # By hand: the library's model on the labelled folder, the threshold with the best F1.
    dataset = build_dataset(f"folder:{labelled}", transform=transforms_for_clip(model.clip))
    items = [dataset[i] for i in range(len(dataset))]
    with torch.no_grad():
        prediction = model(torch.stack([item["image"] for item in items]))
    image = f1_threshold(prediction.pred_score.numpy(), np.array([item["label"] for item in items]))
    pixel = f1_threshold(prediction.anomaly_map.numpy(), torch.stack([item["mask"] for item in items]).numpy() > 0.5)
    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["image_threshold"] == pytest.approx(image.value, abs=1e-6) and saved["image_f1"] == pytest.approx(image.f1)
    assert saved["pixel_threshold"] == pytest.approx(pixel.value, abs=1e-6) and saved["pixel_f1"] == pytest.approx(pixel.f1)
    assert saved["source"] == f"best F1 on folder:{labelled}" and printed["thresholds"] == saved
    assert [row["path"] for row in printed["images"]] == list(_scores(out)["path"])
    # The same thresholds again, from the file.
    again = tmp_path / "again"
    assert main(["predict", "--ckpt", str(checkpoint), str(images), "--out", str(again), "--quiet", "--thresholds",
                 str(out / "thresholds.json")]) == 0
    assert list(_scores(again)["decision"].fillna("-")) == list(_scores(out)["decision"].fillna("-"))


def test_outputs_are_whole_or_none(checkpoint: Path, images: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    argv = ["predict", "--ckpt", str(checkpoint), str(images), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    before = snapshot(out)
    line = one_error_line(capsys, main(argv))  # a reused --out
    assert f"--out {out} already holds files; pass --overwrite" in line and snapshot(out) == before
    real = feclip.cli.predict_outputs._write_one
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(feclip.cli.predict_outputs, "_write_one", interrupted)
    assert main([*argv, "--overwrite"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "feclip: interrupted"
    monkeypatch.undo()
    assert snapshot(out) == before  # the earlier prediction, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging folder left
    # --overwrite replaces it whole: the overlays of images no longer there go too.
    (images / "a.png").unlink()
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "a_heatmap.png").exists() and "a.png" not in " ".join(_scores(out)["path"])
    # --strict stops at the first unreadable file and writes nothing.
    line = one_error_line(capsys, main(["predict", "--ckpt", str(checkpoint), str(images), "--out",
                                        str(tmp_path / "strict"), "--quiet", "--strict"]))
    assert f"cannot read image {images / 'notes.txt'}" in line and "--strict" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]
    # A folder that is not a prediction is never replaced.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("x")
    line = one_error_line(capsys, main(["predict", "--ckpt", str(checkpoint), str(images), "--out", str(theirs),
                                        "--quiet", "--overwrite"]))
    assert "holds files that feclip predict did not write" in line and (theirs / "thesis.tex").read_text() == "x"


def test_the_baselines_are_reachable(images: Path, tmp_path: Path) -> None:
    from feclip.baselines import ClipZeroShot, WinClip, WinClipFewShot

    folder = images / "line 2"
    reference = images / "good"
    detectors = {"clip": ClipZeroShot.from_open_clip("feclip-tiny", None),
                 "winclip": WinClip.from_open_clip("feclip-tiny", None, class_name="bottle")}
    transform = transforms_for_clip(detectors["clip"].clip)
    detectors["winclip+"] = WinClipFewShot(WinClip.from_open_clip("feclip-tiny", None),
                                           transform.image(load_rgb(reference / "b.png"))[None])
    for method, detector in detectors.items():
        out = tmp_path / method
        extra = ["--class-name", "bottle"] if method == "winclip" else ["--reference", str(reference)] if method == "winclip+" else []
        assert main(["predict", "--method", method, "--backbone", "feclip-tiny", str(folder), "--out", str(out),
                     "--quiet", *extra]) == 0
        scores = _scores(out)
        assert set(scores["method"]) == {method}
        with torch.no_grad():
            for path, score in scores[["path", "image_score"]].itertuples(index=False):
                assert score == pytest.approx(detector(transform.image(load_rgb(path))[None]).pred_score.item(), abs=1e-6)


def test_an_exported_model_predicts_without_torch_model_code(checkpoint: Path, images: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from feclip.export import MIN_TORCH_VERSION

    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < tuple(map(int, MIN_TORCH_VERSION.split("."))):
        pytest.skip(f"ONNX export needs torch >= {MIN_TORCH_VERSION}")
    onnx = tmp_path / "model.onnx"
    assert main(["export", "--ckpt", str(checkpoint), "--out", str(onnx)]) == 0
    folder = images / "line 2"
    assert main(["predict", "--ckpt", str(checkpoint), str(folder), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    code = ("import sys\nfrom feclip.cli import main\n"
            f"assert main(['predict', '--onnx', {str(onnx)!r}, {str(folder)!r}, '--out', {str(tmp_path / 'onnx')!r}, "
            "'--quiet']) == 0\nprint(sorted(m for m in ('feclip.model', 'feclip.backbones', 'feclip.adapters', "
            "'feclip.train') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    ours, exported = _scores(tmp_path / "torch"), _scores(tmp_path / "onnx")
    np.testing.assert_allclose(exported["image_score"], ours["image_score"], atol=1e-4)
    assert set(exported["method"]) == {"feclip (onnx)"}
