"""benchmarks/toy_world.py: its summary and target checks on known rows, and one tiny end-to-end run (no timing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("feclip_benchmarks_toy_world", BENCHMARKS / "toy_world.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toy_world = _load()


def _rows(trained_pixel: dict[tuple[int, str], float]) -> list[dict]:
    """Two seeds; every metric fixed except the trained FE-CLIP's pixel AUROC."""
    base = {"clip_zero_shot": (0.80, 0.70, 0.30), "winclip": (0.78, 0.82, 0.50), "feclip_untrained": (0.60, 0.55, 0.20)}
    rows = []
    for seed in (0, 1):
        for family in ("textures", "assemblies"):
            for method, (image, pixel, aupro) in base.items():
                rows.append(dict(seed=seed, family=family, method=method, image_auroc=image, pixel_auroc=pixel, pixel_aupro=aupro))
            rows.append(dict(seed=seed, family=family, method="feclip_trained", image_auroc=0.81 + 0.02 * seed,
                             pixel_auroc=trained_pixel[seed, family], pixel_aupro=0.6))
    return rows


def test_summary_is_the_mean_and_spread_over_seeds() -> None:
    rows = _rows({(0, "textures"): 0.90, (1, "textures"): 0.96, (0, "assemblies"): 0.7, (1, "assemblies"): 0.5})
    summary = {(r["method"], r["family"]): r for r in toy_world.summarise(rows)}
    trained = summary["feclip_trained", "textures"]
    assert trained["seeds"] == 2 and trained["pixel_auroc"] == pytest.approx(0.93)
    assert trained["pixel_auroc_std"] == pytest.approx(np.std([0.90, 0.96]))
    assert trained["image_auroc"] == pytest.approx(0.82) and summary["winclip", "assemblies"]["pixel_auroc_std"] == 0


def test_targets_pass_and_fail_where_they_should() -> None:
    rows = _rows({(0, "textures"): 0.90, (1, "textures"): 0.96, (0, "assemblies"): 0.70, (1, "assemblies"): 0.58})
    verdicts = {t["target"]: (t["value"], t["verdict"]) for t in toy_world.check_targets(rows)}
    assert verdicts["toy-CLIP zero-shot image AUROC >= 0.75"] == (pytest.approx(0.80), "PASS")
    assert verdicts["trained FE-CLIP pixel AUROC >= 0.90"] == (pytest.approx(0.93), "PASS")
    assert verdicts["trained FE-CLIP pixel AUROC - WinCLIP's >= 0.05"] == (pytest.approx(0.11), "PASS")
    assert verdicts["trained FE-CLIP image AUROC - CLIP zero-shot's >= 0"] == (pytest.approx(0.02), "PASS")
    # Per seed on the held-out family: 0.70 - 0.55 passes, 0.58 - 0.55 does not.
    assert verdicts["assemblies, seed 0: trained - untrained FE-CLIP pixel AUROC >= 0.05"][1] == "PASS"
    assert verdicts["assemblies, seed 1: trained - untrained FE-CLIP pixel AUROC >= 0.05"] == (pytest.approx(0.03), "FAIL")
    worse = _rows({(0, "textures"): 0.80, (1, "textures"): 0.84, (0, "assemblies"): 0.7, (1, "assemblies"): 0.7})
    failed = {t["target"] for t in toy_world.check_targets(worse) if t["verdict"] == "FAIL"}
    assert failed == {"trained FE-CLIP pixel AUROC >= 0.90", "trained FE-CLIP pixel AUROC - WinCLIP's >= 0.05"}


def test_a_tiny_run_scores_every_detector_on_both_families(tmp_path: Path) -> None:
    result = toy_world.main(["--seeds", "0", "--n-good", "1", "--n-defect", "1", "--epochs", "1",
                             "--json", str(tmp_path / "toy.json"), "--markdown", str(tmp_path / "toy.md")])
    rows = result["rows"]
    assert {(r["method"], r["family"]) for r in rows} == {(m, f) for m in toy_world.METHODS for f in ("textures", "assemblies")}
    assert all(0 <= r[m] <= 1 for r in rows for m in ("image_auroc", "pixel_auroc"))
    assert len(result["targets"]) == 7 and (tmp_path / "toy.json").is_file()
    assert "feclip_trained" in (tmp_path / "toy.md").read_text()
