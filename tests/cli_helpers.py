"""Shared by the command line's tests (tests/test_cli*.py): small synthetic data, a tiny checkpoint, error checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from feclip.cli import main

# Two normal test images per category, so that a held-out quarter has normal and anomalous images.
SMALL = ["--n-train-good", "0", "--n-test-good", "2", "--n-defect", "1", "--image-size", "64"]
# A one-epoch training run on the tiny backbone, quick on a CPU.
QUICK = ["--backbone", "feclip-tiny", "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--quiet"]


def write_synth(root: Path, family: str = "both") -> Path:
    """The small synthetic benchmark (objects and textures) under ``root``."""
    assert main(["synth", "--out", str(root), "--family", family, *SMALL]) == 0
    return root


def train_argv(synth: Path, out: Path, *extra: str) -> list[str]:
    """``feclip train`` on synthetic objects (a held-out quarter validates), textures named as the target."""
    return ["train", "--train", f"synth:{synth / 'objects'}", "--val-fraction", "0.25",
            "--target", f"synth:{synth / 'textures'}", "--out", str(out), *QUICK, *extra]


def small_smoke_profile(monkeypatch: pytest.MonkeyPatch, data_root: Path):
    """The smoke profile with its data under ``data_root`` and its synthetic benchmark generated small (64 px).

    What ``feclip train`` without ``--train`` runs, shrunk for a test. Returns the patched profile.
    """
    import dataclasses

    import feclip.data
    import feclip.profiles

    smoke = dataclasses.replace(feclip.profiles.SMOKE, data_root=data_root)
    monkeypatch.setattr(feclip.profiles, "SMOKE", smoke)
    generate = feclip.data.generate_benchmark
    monkeypatch.setattr(feclip.data, "generate_benchmark",
                        lambda root, families: generate(root, image_size=64, n_train_good=0, n_test_good=2,
                                                        n_test_defect_per_type=1, families=families))
    return smoke


def tiny_checkpoint(path: Path) -> Path:
    """An untrained FE-CLIP on the tiny random backbone, saved: what eval and predict need to run."""
    from feclip.checkpoint import save_checkpoint
    from feclip.model import FEClip

    return save_checkpoint(FEClip.from_open_clip("feclip-tiny", None), path)


def one_error_line(capsys: pytest.CaptureFixture, code: int, notes: int = 0) -> str:
    """The command failed with exit status 1 and one ``feclip: error:`` line on stderr, no traceback.

    Args:
        notes: How many ``feclip:`` lines may come before the error (what the command said it was doing).
    """
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1, captured.err
    assert len(lines) == notes + 1 and lines[-1].startswith("feclip: error: "), captured.err
    assert all(line.startswith("feclip: ") and "error" not in line for line in lines[:-1]), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[-1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
