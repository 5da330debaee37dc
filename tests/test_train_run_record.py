"""A run's record: data fingerprints (by hand), what makes two records different runs, and reading run.json."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from feclip.config import FEClipConfig
from feclip.data import Sample
from feclip.train import TrainConfig
from feclip.train.run_record import (
    absolute_spec,
    data_differences,
    data_fingerprint,
    read_run_record,
    run_differences,
    run_identity,
)


def _data(root: Path) -> list[Sample]:
    """Three items in two categories, one anomalous with a mask."""
    files = {"a/good/0.png": b"12345", "a/bad/1.png": b"1234567", "a/gt/1_mask.png": b"12", "b/good/0.png": b"1"}
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return [Sample(root / "a/good/0.png", 0, "a", "good"), Sample(root / "a/bad/1.png", 1, "a", "bad", root / "a/gt/1_mask.png"),
            Sample(root / "b/good/0.png", 0, "b", "good")]


def test_the_fingerprint_is_the_digest_of_the_item_list_and_sizes(tmp_path: Path) -> None:
    samples = _data(tmp_path)
    fingerprint = data_fingerprint(samples, tmp_path)
    # By hand: per category, one line per item sorted by path: path, size, label, defect, mask path, mask size.
    lines_a = "a/bad/1.png\t7\t1\tbad\ta/gt/1_mask.png\t2\n" + "a/good/0.png\t5\t0\tgood\tNone\tNone\n"
    lines_b = "b/good/0.png\t1\t0\tgood\tNone\tNone\n"
    assert fingerprint == {
        "images": 3, "bytes": 15,
        "categories": {"a": {"images": 2, "bytes": 14, "digest": hashlib.sha256(lines_a.encode()).hexdigest()[:16]},
                       "b": {"images": 1, "bytes": 1, "digest": hashlib.sha256(lines_b.encode()).hexdigest()[:16]}},
    }
    assert data_fingerprint(list(reversed(samples)), tmp_path) == fingerprint  # the order of the list does not count
    assert data_fingerprint(None, tmp_path) is None


def test_a_moved_folder_keeps_its_fingerprint_a_changed_file_does_not(tmp_path: Path) -> None:
    fingerprint = data_fingerprint(_data(tmp_path / "one"), tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    moved = [Sample(Path(str(s.image_path).replace("one", "two")), s.label, s.category, s.defect_type,
                    s.mask_path and Path(str(s.mask_path).replace("one", "two"))) for s in _data(tmp_path / "one")]
    assert data_fingerprint(moved, tmp_path / "two") == fingerprint
    (tmp_path / "two" / "a/gt/1_mask.png").write_bytes(b"123")  # one mask grew by a byte
    changed = data_fingerprint(moved, tmp_path / "two")
    assert changed["categories"]["b"] == fingerprint["categories"]["b"]
    assert changed["categories"]["a"] != fingerprint["categories"]["a"]
    record, current = {"data": {"train": fingerprint}}, {"data": {"train": changed}}
    assert data_differences(record, current) == ["train data: category a has other files or file sizes than recorded"]
    fewer = data_fingerprint(moved[1:], tmp_path / "two")
    assert data_differences(record, {"data": {"train": fewer}}) == ["train data: category a has 1 images (recorded 2)"]
    assert data_differences(record, {"data": {"train": data_fingerprint(moved[:2], tmp_path / "two")}})[-1] == (
        "train data: category b missing")
    assert data_differences(record, {"data": {"train": fingerprint, "val": fingerprint}}) == [
        "val data: none recorded, a data set now"]
    assert data_differences({}, current) == [
        "the record has no data fingerprint (written by an older feclip), so the data cannot be checked"]


def _record(**changes) -> dict:
    record = {"train": "synth:/data/objects", "val": None, "val_fraction": 0.25, "target": "synth:/data/textures",
              "model": FEClipConfig(backbone="feclip-tiny").to_dict(), "train_config": TrainConfig().to_dict(),
              "data": {"train": {"images": 1}, "val": None, "target": None}}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            record[section][field] = value
        else:
            record[section] = value
    return record


def test_run_differences_are_the_runs_identity() -> None:
    recorded = _record()
    assert run_differences(recorded, copy.deepcopy(recorded)) == []
    # What a resumed run may change (more epochs, workers, the device) does not make it another run.
    assert run_differences(recorded, _record(train_config__epochs=20, train_config__num_workers=0,
                                             train_config__device="cpu")) == []
    assert run_differences(recorded, _record(train_config__lr=1e-3)) == ["training lr 0.0005 (recorded) vs 0.001"]
    assert run_differences(recorded, _record(train_config__seed=1)) == ["training seed 0 (recorded) vs 1"]
    assert run_differences(recorded, _record(model__ffe_window=5)) == ["model ffe_window 3 (recorded) vs 5"]
    assert run_differences(recorded, _record(train="synth:/elsewhere")) == [
        "train 'synth:/data/objects' (recorded) vs 'synth:/elsewhere'"]
    older = _record(model={k: v for k, v in recorded["model"].items() if k != "fc_patch_init"})
    # An older record without fc_patch_init trained from CLIP's projection: another run than today's default.
    assert run_differences(older, recorded) == ["model fc_patch_init 'clip' (recorded) vs 'random'"]


def test_absolute_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("MVTec:data/mvtec") == f"mvtec:{tmp_path / 'data' / 'mvtec'}"
    assert absolute_spec(None) is None


def test_read_run_record_names_the_file_and_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_record()))
    assert read_run_record(path) == _record()
    cases = [
        ('{"train": ', r"is not valid JSON \(Expecting value"),
        ("[1, 2]", "must hold a JSON object, found list"),
        (json.dumps({**_record(), "trian": "x"}), r"has unknown keys \['trian'\]"),
        (json.dumps(_record(train_config={"epochs": 2, "learning_rate": 1})), r"unknown training config keys: \['learning_rate'\]"),
        (json.dumps(_record(model={"backbone": "x", "taps": [1]})), r"unknown FE-CLIP config keys: \['taps'\]"),
        (json.dumps({**_record(), "format": 9}), "has format 9; .*upgrade feclip"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"run record {path}.*{message}"):
            read_run_record(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"run record {path} is not text"):
        read_run_record(path)


def test_run_identity_fingerprints_the_whole_training_data_set(tmp_path: Path) -> None:
    samples = _data(tmp_path)
    specs = {"train": f"folder:{tmp_path}", "val": None, "val_fraction": 0.5, "target": None}
    held_out = run_identity({"backbone": "x"}, {"seed": 0}, specs, samples[:2], samples[2:], None)
    assert held_out["data"] == {"train": data_fingerprint(samples, tmp_path), "val": None, "target": None}
    assert (held_out["train"], held_out["model"], held_out["train_config"]) == (specs["train"], {"backbone": "x"}, {"seed": 0})
    specs = {**specs, "val": f"folder:{tmp_path}", "val_fraction": None, "target": f"folder:{tmp_path}"}
    other = run_identity({}, {}, specs, samples[:2], samples[2:], samples)
    assert other["data"] == {"train": data_fingerprint(samples[:2], tmp_path), "val": data_fingerprint(samples[2:], tmp_path),
                             "target": data_fingerprint(samples, tmp_path)}
