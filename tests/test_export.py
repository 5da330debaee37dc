"""ONNX export of FE-CLIP: onnxruntime's scores and maps against torch's, metadata, errors, atomic writes.

Every exported graph here is run by onnxruntime on the CPU and compared with the torch model it came
from, at batch sizes other than the one the exporter traced. Exports take seconds each, so every model
is exported once per module (fixtures) and the grid of LFS statistics and bases uses two taps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from feclip.data.transforms import AnomalyTransform, transforms_for_clip
from feclip.evaluate import evaluate
from feclip.export import INPUT_NAME, MIN_TORCH_VERSION, OUTPUT_NAMES, OnnxDetector, export_onnx
from feclip.model import FEClip
from feclip.predictor import AnomalyPrediction
from feclip.taps import default_tap_indices

TOLERANCE = 1e-4  # issue 14: max abs difference between onnxruntime and torch on the tiny backbone
SHORT_TAPS = [0, 2]  # two blocks: the grid of adapter variants exports in a fraction of the full model's time

pytestmark = pytest.mark.skipif(torch.__version__ < MIN_TORCH_VERSION,
                                reason=f"ONNX export needs torch >= {MIN_TORCH_VERSION} (torch.export-based exporter)")


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


def _perturbed(model: FEClip, seed: int = 1, scale: float = 0.5) -> FEClip:
    """Trained-looking weights: every adapter and fc_patch tensor moved by noise of ``scale`` times its spread."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in model.trainable_parameters().values():
            for parameter in group:
                spread = parameter.std() if parameter.numel() > 1 else parameter.abs() + 1
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(scale * (spread + 0.05) * noise)
    return model


def _torch_prediction(model: FEClip, images: torch.Tensor) -> AnomalyPrediction:
    with torch.no_grad():
        return model.eval()(images)


def _max_differences(model: FEClip, detector: OnnxDetector, images: torch.Tensor) -> tuple[float, float]:
    expected, got = _torch_prediction(model, images), detector(images)
    assert got.pred_score.shape == expected.pred_score.shape
    assert got.anomaly_map.shape == expected.anomaly_map.shape
    return (float((got.pred_score - expected.pred_score).abs().max()),
            float((got.anomaly_map - expected.anomaly_map).abs().max()))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[FEClip, Path]:
    """The issue's model: feclip-tiny, random weights, seed 0, default taps; exported with a dynamic batch."""
    model = FEClip.from_open_clip("feclip-tiny", None).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, path


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[FEClip, Path]:
    model = _perturbed(FEClip.from_open_clip("feclip-tiny", None)).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "trained.onnx")
    return model, path


# --- onnxruntime equals torch ------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch_at_several_batch_sizes_from_one_export(tiny_export, batch: int) -> None:
    model, path = tiny_export
    assert model.tap_indices == default_tap_indices(12) and model.tap_indices[-1] == 11  # the whole default detector
    score_difference, map_difference = _max_differences(model, OnnxDetector(path, threads=1), _images(batch, seed=batch))
    assert score_difference < TOLERANCE and map_difference < TOLERANCE, (score_difference, map_difference)


def test_exported_graph_has_a_dynamic_batch_and_fixed_image_size(tiny_export) -> None:
    _, path = tiny_export
    graph = onnx.load(str(path)).graph
    (image_input,) = graph.input
    assert image_input.name == INPUT_NAME
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [3, 96, 96]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert not graph.input[1:]  # weights and text embeddings are initializers, not inputs


def test_trained_looking_weights_are_what_gets_exported(trained_export, tiny_export) -> None:
    trained, path = trained_export
    images = _images(2, seed=7)
    init = _torch_prediction(tiny_export[0], images)
    moved = _torch_prediction(trained, images)
    # The perturbation changes the detector for real, so matching the trained model is not matching the init.
    assert float((moved.anomaly_map - init.anomaly_map).abs().max()) > 100 * TOLERANCE
    score_difference, map_difference = _max_differences(trained, OnnxDetector(path, threads=1), images)
    assert score_difference < TOLERANCE and map_difference < TOLERANCE, (score_difference, map_difference)


@pytest.mark.parametrize("basis", ["dct", "dft"])  # "dft": the Hartley basis' old name, stored as "hartley"
@pytest.mark.parametrize("statistic", ["mean", "abs", "power"])
def test_every_lfs_statistic_and_basis_exports(tmp_path: Path, statistic: str, basis: str) -> None:
    model = _perturbed(FEClip.from_open_clip("feclip-tiny", None, tap_indices=SHORT_TAPS, lfs_statistic=statistic,
                                             basis=basis)).eval()
    detector = OnnxDetector(export_onnx(model, tmp_path / "model.onnx"), threads=1)
    assert detector.config["lfs_statistic"] == statistic
    assert detector.config["basis"] == {"dft": "hartley"}.get(basis, basis)
    score_difference, map_difference = _max_differences(model, detector, _images(3, seed=3))
    assert score_difference < TOLERANCE and map_difference < TOLERANCE, (score_difference, map_difference)


def test_logit_margin_maps_export_with_their_range(tmp_path: Path) -> None:
    model = _perturbed(FEClip.from_open_clip("feclip-tiny", None, tap_indices=SHORT_TAPS,
                                             map_score="logit_margin")).eval()
    detector = OnnxDetector(export_onnx(model, tmp_path / "margin.onnx"), threads=1)
    score_difference, map_difference = _max_differences(model, detector, _images(2, seed=5))
    assert score_difference < TOLERANCE and map_difference < TOLERANCE, (score_difference, map_difference)
    assert detector.anomaly_map_range == pytest.approx(model.anomaly_map_range, rel=1e-12)
    assert detector.anomaly_map_range[1] > 1  # margins, not probabilities


def test_fixed_batch_export_runs_that_batch_and_refuses_others(tmp_path: Path) -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=SHORT_TAPS).eval()
    detector = OnnxDetector(export_onnx(model, tmp_path / "fixed.onnx", batch_size=2), threads=1)
    assert detector.batch_size == 2
    score_difference, map_difference = _max_differences(model, detector, _images(2, seed=2))
    assert score_difference < TOLERANCE and map_difference < TOLERANCE
    with pytest.raises(ValueError, match=r"fixed\.onnx takes images of shape \(2, 3, 96, 96\)"):
        detector(_images(3, seed=2))


def test_prompts_set_before_export_are_baked_in(tmp_path: Path) -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=SHORT_TAPS).eval()
    images = _images(2, seed=11)
    before = _torch_prediction(model, images)
    model.set_prompts("a photo of a flawless bottle", "a photo of a cracked bottle")
    detector = OnnxDetector(export_onnx(model, tmp_path / "prompts.onnx"), threads=1)
    got = detector(images)
    assert float((got.pred_score - before.pred_score).abs().max()) > 100 * TOLERANCE  # new prompts, new scores
    torch.testing.assert_close(got.pred_score, _torch_prediction(model, images).pred_score, atol=TOLERANCE, rtol=0)
    assert detector.config["anomalous_prompts"] == ["a photo of a cracked bottle"]


# --- metadata: what a predictor needs without torch model code -----------------------------------------


def test_metadata_holds_config_version_and_preprocessing(tiny_export) -> None:
    import feclip

    model, path = tiny_export
    detector = OnnxDetector(path)
    assert detector.config == json.loads(json.dumps(model.config.to_dict()))
    assert detector.feclip_version == feclip.__version__
    assert json.loads(detector.metadata["backbone"]) == "feclip-tiny"
    assert json.loads(detector.metadata["pretrained"]) is None
    assert detector.image_size == (96, 96)
    assert detector.anomaly_map_range == (0.0, 1.0)
    assert detector.transform == transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)


def test_metadata_keeps_the_crop_resize_mode(tmp_path: Path) -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0], resize_mode="crop")
    detector = OnnxDetector(export_onnx(model, tmp_path / "crop.onnx"))
    assert detector.transform == AnomalyTransform(96, resize_mode="crop")


def test_onnx_detector_needs_no_model_code(tiny_export) -> None:
    """In a fresh interpreter where FE-CLIP's model modules cannot be imported, the exported file still runs."""
    _, path = tiny_export
    blocked = ["feclip.model", "feclip.adapters", "feclip.vit", "feclip.frozen", "feclip.checkpoint", "feclip.dct"]
    script = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import numpy as np\n"
        "from feclip.export import OnnxDetector\n"
        f"detector = OnnxDetector({str(path)!r}, threads=1)\n"
        "prediction = detector(np.zeros((2, 3, 96, 96), np.float32))\n"
        "print(tuple(prediction.pred_score.shape), tuple(prediction.anomaly_map.shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "(2,) (2, 96, 96)"


def test_numpy_input_gives_the_same_torch_tensors(tiny_export) -> None:
    _, path = tiny_export
    detector = OnnxDetector(path, threads=1)
    images = _images(2, seed=4)
    from_tensor, from_array = detector(images), detector(images.numpy().astype(np.float64))
    assert isinstance(from_array.pred_score, torch.Tensor) and from_array.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(from_array.pred_score, from_tensor.pred_score, atol=1e-7, rtol=0)
    torch.testing.assert_close(from_array.anomaly_map, from_tensor.anomaly_map, atol=1e-7, rtol=0)


def test_evaluate_takes_the_onnx_detector(tiny_export) -> None:
    model, path = tiny_export
    generator = torch.Generator().manual_seed(21)
    dataset = []
    for index in range(6):
        mask = torch.zeros(96, 96)
        if index % 2:
            top, left = (int(v) for v in torch.randint(0, 70, (2,), generator=generator))
            mask[top : top + 20, left : left + 20] = 1
        dataset.append({"image": torch.randn(3, 96, 96, generator=generator), "mask": mask, "label": index % 2,
                        "category": "bottle" if index < 4 else "cable"})
    options = {"batch_size": 4, "progress": False, "map_dtype": np.float32}
    expected = evaluate(model, dataset, **options)
    got = evaluate(OnnxDetector(path, threads=1), dataset, **options)
    assert list(got.index) == ["bottle", "cable", "macro", "micro"]
    np.testing.assert_allclose(got.to_numpy(dtype=float), expected.to_numpy(dtype=float), atol=1e-4, equal_nan=True)


# --- what the export does to the model and the file ---------------------------------------------------


def test_export_leaves_the_training_mode_as_it_was(tmp_path: Path) -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0]).train()
    export_onnx(model, tmp_path / "m.onnx", batch_size=1)
    assert model.training and model.adapters.training and not model.clip.training


def test_a_failed_export_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    def failing_export(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0])
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(model, target)
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous export")

    class HalfWrittenProgram:
        """Stands in for the exporter's ONNXProgram: the disk fills up half way through ``save``."""

        model = type("Model", (), {"metadata_props": {}})()

        def save(self, destination, **kwargs) -> None:
            Path(destination).write_bytes(b"half")
            raise OSError("disk full")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: HalfWrittenProgram())
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0])
    with pytest.raises(OSError, match="disk full"):
        export_onnx(model, target)
    assert target.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# --- one clear error per bad input ---------------------------------------------------------------------


def test_missing_onnxruntime_says_how_to_install(monkeypatch, tiny_export) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install feclip\[export\]"):
        OnnxDetector(tiny_export[1])


@pytest.mark.parametrize("module", ["onnx", "onnxscript"])
def test_missing_exporter_packages_say_how_to_install(monkeypatch, tmp_path: Path, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0])
    with pytest.raises(ImportError, match=rf"{module}.*pip install feclip\[export\]"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_export_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        export_onnx(model, tmp_path / "m.onnx", batch_size=0)
    with pytest.raises(TypeError, match="exports FEClip models, got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")  # type: ignore[arg-type]


def test_old_torch_is_refused_with_the_version_it_needs(tmp_path: Path, monkeypatch) -> None:
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.5.1"))
    model = FEClip.from_open_clip("feclip-tiny", None, tap_indices=[0])
    with pytest.raises(RuntimeError, match=rf"needs torch >= {MIN_TORCH_VERSION}.*found 2\.5\.1"):
        export_onnx(model, tmp_path / "m.onnx")


def test_bad_files_get_one_clear_error_naming_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxDetector(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match=r"garbage\.onnx is not a readable ONNX model"):
        OnnxDetector(garbage)
    # A valid ONNX graph that feclip did not write: an identity with none of the metadata.
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["pred_score"])], "identity",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("pred_score", onnx.TensorProto.FLOAT, [1])],
    ), opset_imports=[onnx.helper.make_opsetid("", 17)])
    identity.ir_version = 8
    foreign = tmp_path / "foreign.onnx"
    onnx.save(identity, str(foreign))
    with pytest.raises(ValueError, match=r"foreign\.onnx was not written by feclip\.export\.export_onnx.*feclip_config"):
        OnnxDetector(foreign)


def test_wrong_image_shape_is_one_clear_error(tiny_export) -> None:
    detector = OnnxDetector(tiny_export[1], threads=1)
    with pytest.raises(ValueError, match=r"tiny\.onnx takes images of shape \(B, 3, 96, 96\), got \(2, 3, 64, 64\)"):
        detector(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(3, 96, 96\)"):
        detector(torch.zeros(3, 96, 96))
