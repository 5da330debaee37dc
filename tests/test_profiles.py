"""Run profiles: the CPU smoke profile, the environment switch, and auto-detection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from feclip.profiles import FULL, SMOKE, announce, ensure_data, full_profile_available, resolve_profile


@pytest.fixture(autouse=True)
def _default_smoke_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make test`` points FECLIP_SMOKE_DATA into the checkout; these tests compare with the default profile."""
    monkeypatch.delenv("FECLIP_SMOKE_DATA", raising=False)


def test_smoke_profile_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FECLIP_PROFILE", raising=False)
    monkeypatch.delenv("FECLIP_SMOKE_DATA", raising=False)
    profile = resolve_profile("smoke")
    assert profile == SMOKE and profile.is_smoke
    assert (profile.name, profile.backbone, profile.pretrained, profile.device) == ("smoke", "feclip-tiny", "toy", "cpu")
    assert (profile.train_dataset, profile.eval_dataset) == ("synth-objects", "synth-textures")
    assert profile.winclip_backbone == "feclip-tiny" and profile.num_workers == 0
    assert profile.epochs >= 1 and profile.batch_size >= 1
    assert profile.spec(profile.train_dataset) == f"synth:{profile.data_root / 'objects'}"
    assert profile.spec(profile.eval_dataset) == f"synth:{profile.data_root / 'textures'}"


def test_smoke_data_root_is_read_when_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FECLIP_SMOKE_DATA", str(tmp_path / "synth"))
    assert resolve_profile("smoke").data_root == tmp_path / "synth"


def test_full_profile_is_the_papers_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FECLIP_DATA", str(tmp_path))
    profile = resolve_profile("FULL")
    assert not profile.is_smoke
    assert (profile.backbone, profile.pretrained, profile.device) == ("ViT-L-14-336", "openai", "cuda")
    assert (profile.train_dataset, profile.eval_dataset, profile.epochs, profile.batch_size) == ("visa", "mvtec", 9, 16)
    assert profile.data_root == tmp_path
    assert profile.spec("mvtec") == f"mvtec:{tmp_path / 'mvtec'}"
    assert profile.spec("visa") == f"visa:{tmp_path / 'visa'}"
    assert FULL.name == "full"


def test_environment_variable_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FECLIP_DATA", str(tmp_path))
    monkeypatch.setenv("FECLIP_PROFILE", "full")
    assert resolve_profile().name == "full"
    assert resolve_profile("smoke").name == "smoke"  # an explicit name wins over the environment
    monkeypatch.setenv("FECLIP_PROFILE", "smoke")
    assert resolve_profile() == SMOKE


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks full on a GPU machine with weights and data")
def test_auto_is_smoke_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FECLIP_PROFILE", raising=False)
    for profile in (resolve_profile(), resolve_profile("auto")):
        assert dataclasses.replace(profile, fallback_reason=None) == SMOKE and profile.fallback_reason == "no CUDA GPU"
    monkeypatch.setenv("FECLIP_PROFILE", "auto")
    assert resolve_profile().fallback_reason == "no CUDA GPU"
    assert full_profile_available() == (False, "no CUDA GPU")
    assert resolve_profile("smoke").fallback_reason is None  # asked for, not fallen back to


def test_auto_without_data_or_weights_is_smoke_even_with_a_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("FECLIP_DATA", str(tmp_path))
    available, reason = full_profile_available()
    assert not available and "mvtec" in reason and "visa" in reason
    assert resolve_profile("auto").name == "smoke" and resolve_profile("auto").fallback_reason == reason
    (tmp_path / "mvtec").mkdir()
    available, reason = full_profile_available()
    assert not available and "visa" in reason and "mvtec" not in reason
    # A chapter that only evaluates on the target (MVTec AD) does not need VisA.
    available, reason = full_profile_available(data=("eval",))  # FECLIP_OFFLINE=1: the weights cannot be fetched
    assert not available and "weights" in reason
    (tmp_path / "visa").mkdir()
    available, reason = full_profile_available()
    assert not available and "weights" in reason
    with pytest.raises(ValueError, match="roles"):
        full_profile_available(data=("test",))


def test_ensure_data_needs_only_the_roles_asked_for(tmp_path: Path) -> None:
    full = dataclasses.replace(FULL, data_root=tmp_path)
    (tmp_path / "mvtec").mkdir()
    assert ensure_data(full, data=("eval",)) == tmp_path
    with pytest.raises(FileNotFoundError, match="visa"):
        ensure_data(full)


def test_bad_profile_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="FECLIP_PROFILE must be 'full', 'smoke' or 'auto', got 'gpu'"):
        resolve_profile("gpu")
    monkeypatch.setenv("FECLIP_PROFILE", "fast")
    with pytest.raises(ValueError, match="got 'fast'"):
        resolve_profile()


def test_announce_outside_a_notebook(capsys: pytest.CaptureFixture[str]) -> None:
    announce(SMOKE)
    printed = capsys.readouterr().out
    assert printed.startswith("Profile: smoke:") and "not the paper's numbers" in printed and "fell back" not in printed
    announce(dataclasses.replace(SMOKE, fallback_reason="no CUDA GPU"))
    assert "FECLIP_PROFILE=auto fell back to smoke: no CUDA GPU." in capsys.readouterr().out
    announce(FULL)
    assert capsys.readouterr().out.startswith("Profile: full: ViT-L-14-336 (openai)")


def test_dataset_names_are_read_by_one_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from feclip.profiles import dataset_folder

    assert dataset_folder("visa") == ("visa", "visa") and dataset_folder("synth-objects") == ("synth", "objects")
    monkeypatch.setenv("FECLIP_SMOKE_DATA", str(tmp_path))
    smoke = resolve_profile("smoke")
    assert smoke.spec(smoke.train_dataset) == f"synth:{tmp_path / 'objects'}"
    assert smoke.spec(smoke.eval_dataset) == f"synth:{tmp_path / 'textures'}"
    assert FULL.spec("mvtec") == f"mvtec:{FULL.data_root / 'mvtec'}"


def test_the_full_profile_uses_the_machines_cores_for_its_loader() -> None:
    """A 2-vCPU Colab runtime must not get the 4 workers a fixed default would give (DataLoader warns)."""
    from feclip.profiles import default_num_workers

    from feclip.recipes import train_config

    assert FULL.num_workers == default_num_workers() == train_config(FULL).num_workers
