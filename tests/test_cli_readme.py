"""The README's examples run as printed: its first command-line example and its Python snippet, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def _first_command_line_example() -> str:
    return next(block for block in _blocks("bash") if re.search(r"^feclip ", block, flags=re.MULTILINE))


def test_the_readme_says_where_the_command_is() -> None:
    assert ".venv/bin/feclip" in README and "source .venv/bin/activate" in README
    example = _first_command_line_example()
    assert example.startswith("source .venv/bin/activate\n")
    assert {"synth", "train", "eval", "predict"} <= set(re.findall(r"^feclip (\w+)", example, flags=re.MULTILINE))


def test_the_first_command_line_example_runs_offline_as_written(tmp_path: Path) -> None:
    """In a fresh folder whose .venv is this checkout's; no network (FECLIP_OFFLINE, set by conftest)."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the environment running the tests: the checkout's .venv
    environment = {**os.environ, "FECLIP_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _first_command_line_example()], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "runs" / "synth" / "last.safetensors").is_file()
    metrics = pd.read_csv(tmp_path / "runs" / "synth" / "eval_synth_textures" / "metrics.csv", index_col="category")
    assert "macro" in metrics.index and metrics.loc["macro", "n_images"] > 0
    scores = pd.read_csv(tmp_path / "predictions" / "scores.csv")
    assert len(scores) > 0 and scores["error"].isna().all()
    assert "Traceback" not in result.stderr


def test_the_python_snippet_runs_as_printed(tmp_path: Path) -> None:
    (snippet,) = _blocks("python")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "FECLIP_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.fullmatch(r"anomaly score 0\.\d{3}, map \(1, 96, 96\)\n", result.stdout), result.stdout
    # Run twice: the same snippet again (its data folder exists now) still works.
    again = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "FECLIP_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr[-3000:]
