"""``feclip export``: a checkpoint to one ONNX graph that onnxruntime runs as torch does; its one-line errors.

An export takes about 20 s here, so the module exports once (fixture) and every error case fails before
the exporter runs.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import make_model

from feclip.cli import main
from feclip.export import MIN_TORCH_VERSION, OnnxDetector
from feclip.model import load_feclip

pytestmark = pytest.mark.skipif(torch.__version__ < MIN_TORCH_VERSION,
                                reason=f"ONNX export needs torch >= {MIN_TORCH_VERSION}")


@pytest.fixture(scope="module")
def run_dir(tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose last.safetensors holds trained-looking (perturbed) adapters and fc_patch."""
    model = make_model(tiny_clip, seed=2)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "last.safetensors")
    return folder


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(["export", "--ckpt", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    return out, text.getvalue()


def test_the_exported_graph_scores_as_the_checkpoint_does(run_dir: Path, exported: tuple[Path, str]) -> None:
    out, printed = exported
    assert printed.startswith(f"wrote {out} (") and "images (B, 3, 96, 96) -> pred_score (B,), anomaly_map (B, 96, 96)" in printed
    model = load_feclip(run_dir)
    detector = OnnxDetector(out)
    assert detector.config == model.config.to_dict() and detector.batch_size is None  # a dynamic batch axis
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(9))  # traced at 2: run at 3
    with torch.no_grad():
        expected = model(images)
    got = detector(images)
    assert float((got.pred_score - expected.pred_score).abs().max()) < 1e-4
    assert float((got.anomaly_map - expected.anomaly_map).abs().max()) < 1e-4
    assert float((expected.pred_score - expected.pred_score.mean()).abs().max()) > 1e-3  # the scores differ: a real check


def _one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("feclip: error: "), captured.err
    return lines[0]


def test_an_existing_out_is_kept_unless_overwrite(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.onnx"
    out.write_text("mine")
    line = _one_error_line(capsys, main(["export", "--ckpt", str(run_dir), "--out", str(out)]))
    assert f"--out {out} exists; pass --overwrite to replace it" in line and out.read_text() == "mine"
    line = _one_error_line(capsys, main(["export", "--ckpt", str(run_dir), "--out", str(tmp_path)]))
    assert f"--out {tmp_path} is a folder" in line


def test_other_bad_input_is_one_line_and_writes_nothing(run_dir: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    cases = [(["--ckpt", str(tmp_path / "nothing")], "checkpoint not found"),
             (["--ckpt", str(run_dir), "--batch-size", "0"], "--batch-size must be positive, got 0")]
    for flags, message in cases:
        assert message in _one_error_line(capsys, main(["export", *flags, "--out", str(out)]))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the export extra is not installed
    line = _one_error_line(capsys, main(["export", "--ckpt", str(run_dir), "--out", str(out)]))
    assert "needs the onnxscript package: pip install feclip[export]" in line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(run_dir), "--format", "torchscript", "--out", str(out)])  # argparse: exit 2
    assert "invalid choice: 'torchscript'" in capsys.readouterr().err
