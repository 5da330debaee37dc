"""``feclip train`` and its run folder: one run per folder, resuming what was recorded, a lock, faults in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import QUICK, one_error_line, small_smoke_profile, snapshot, train_argv, write_synth

import feclip.checkpoint
import feclip.train.loop
from feclip.checkpoint import read_metadata
from feclip.cli import main
from feclip.data import OBJECT_CATEGORIES
from feclip.data.synthetic import defect_types_for
from feclip.run_folder import LOCK_FILE
from feclip.train.run_state import STATE


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def run_dir(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (never changed by a test: copy it first)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_argv(synth, out)) == 0
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def test_the_same_command_after_a_crash_resumes_and_says_so(synth: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out, straight = tmp_path / "crashed", tmp_path / "straight"
    assert main(train_argv(synth, straight, "--epochs", "2")) == 0
    real_save = feclip.train.loop.save_epoch

    def killed_in_epoch_two(out_dir, model, optimizer, config, generator, run, **kwargs):
        if run.epoch == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, the runtime went away
        real_save(out_dir, model, optimizer, config, generator, run, **kwargs)

    monkeypatch.setattr(feclip.train.loop, "save_epoch", killed_in_epoch_two)
    assert main(train_argv(synth, out, "--epochs", "2")) == 130
    assert read_metadata(out / "last.safetensors")["extra"]["epoch"] == 1 and not (out / LOCK_FILE).exists()
    monkeypatch.setattr(feclip.train.loop, "save_epoch", real_save)
    capsys.readouterr()
    assert main(train_argv(synth, out, "--epochs", "2")) == 0  # the same command again
    assert f"feclip: resuming the run in {out} (1 of 2 epochs done)" in capsys.readouterr().err
    resumed, uninterrupted = _tensors(out / "last.safetensors"), _tensors(straight / "last.safetensors")
    assert resumed.keys() == uninterrupted.keys() and all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1, 2]
    before = snapshot(out)
    assert main(train_argv(synth, out, "--epochs", "2")) == 0  # once more: nothing left to do, nothing rewritten
    assert f"the run in {out} is complete (2 of 2 epochs): nothing to train" in capsys.readouterr().err
    assert {k: v for k, v in snapshot(out).items() if k != "run.json"} == {k: v for k, v in before.items() if k != "run.json"}


def test_another_run_into_a_run_folder_is_refused_and_changes_nothing(run_dir: Path, synth: Path, tmp_path: Path,
                                                                      capsys) -> None:
    out = _copy(run_dir, tmp_path)
    before = snapshot(out)
    cases = [
        (train_argv(synth, out, "--lr", "0.001"), "training lr 0.0005 (recorded) vs 0.001"),
        (train_argv(synth, out, "--seed", "3"), "training seed 0 (recorded) vs 3"),
        (train_argv(synth, out, "--lfs-statistic", "power"), "model lfs_statistic 'mean' (recorded) vs 'power'"),
        (["train", "--train", f"synth:{synth / 'textures'}", "--val-fraction", "0.25", "--target",
          f"synth:{synth / 'objects'}", "--out", str(out), *QUICK], f"train 'synth:{synth / 'objects'}' (recorded)"),
    ]
    for argv, difference in cases:
        line = one_error_line(capsys, main(argv))
        assert line.startswith(f"feclip: error: {out} holds a run (") and difference in line, line
        assert line.endswith("pass --resume to continue it or --overwrite to replace it")
    assert snapshot(out) == before


def test_overwrite_replaces_the_run_and_nothing_else(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    out = _copy(run_dir, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "eval_synth_textures").mkdir()
    assert main(train_argv(synth, out, "--lr", "0.001", "--overwrite")) == 0
    assert f"feclip: replacing the run in {out} (--overwrite)" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["train_config"]["lr"] == 0.001
    assert read_metadata(out / "last.safetensors")["extra"]["train_config"]["lr"] == 0.001
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval_synth_textures").is_dir()
    with pytest.raises(SystemExit) as exit_info:  # they exclude each other
        main(train_argv(synth, out, "--resume", "--overwrite"))
    assert exit_info.value.code == 2


def test_a_concurrent_run_into_the_same_folder_fails_at_once(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    """Another real process holds the folder's lock: a second run fails before doing anything."""
    out = _copy(run_dir, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom feclip.run_folder import RunLock\n"
                               "with RunLock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()",
                               str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(out)
        line = one_error_line(capsys, main(train_argv(synth, out, "--epochs", "2")))
        assert f"{out} is in use by another feclip run (PID {holder.pid} on " in line
        assert snapshot(out) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # The holder is gone: the same command goes ahead.
    assert main(train_argv(synth, out, "--epochs", "2")) == 0 and not (out / LOCK_FILE).exists()


def test_a_stale_lock_and_stale_temporaries_are_cleaned_up(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    out = _copy(run_dir, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}))
    (out / ".last.safetensors.x1y2z3w4.tmp").write_bytes(b"half a checkpoint")  # left by a kill -9 mid-save
    assert main(train_argv(synth, out)) == 0
    err = capsys.readouterr().err
    assert f"feclip: took over the stale lock of PID {dead.pid} on {os.uname().nodename} (no such process)" in err
    assert f"feclip: removed the temporary files an interrupted save left in {out}" in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") or p.name == LOCK_FILE]


def test_resume_checks_the_data_and_works_from_another_directory(synth: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    monkeypatch.chdir(tmp_path)
    relative = ["train", "--train", "synth:data/objects", "--val-fraction", "0.25", "--target", "synth:data/textures",
                "--out", "runs/r", *QUICK]
    assert main(relative) == 0
    record = json.loads((tmp_path / "runs" / "r" / "run.json").read_text())
    assert record["train"] == f"synth:{data / 'objects'}" and record["target"] == f"synth:{data / 'textures'}"
    # The whole objects test split is fingerprinted (the held-out quarter is a seeded part of it).
    objects = {c: 2 + len(defect_types_for(c)) for c in OBJECT_CATEGORIES}  # two normal images, one per defect type
    assert {c: v["images"] for c, v in record["data"]["train"]["categories"].items()} == objects
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", "../runs/r", "--resume", "--epochs", "2", "--quiet"]) == 0
    assert read_metadata(tmp_path / "runs" / "r" / "last.safetensors")["extra"]["epoch"] == 2
    # Other data: one more image of one category. Refused, naming the difference; allowed and recorded on demand.
    shutil.copy(data / "objects" / "nut" / "test" / "good" / "000.png", data / "objects" / "nut" / "test" / "good" / "009.png")
    run = tmp_path / "runs" / "r"
    before = snapshot(run)
    capsys.readouterr()
    line = one_error_line(capsys, main(["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet"]))
    nut = f"train data: category nut has {objects['nut'] + 1} images (recorded {objects['nut']})"
    assert f"cannot resume {run}: its data changed ({nut})" in line
    assert "--allow-data-change" in line and snapshot(run) == before
    line = one_error_line(capsys, main(["train", "--out", str(run), "--epochs", "3", "--quiet", "--train",
                                        "synth:../data/objects", "--val-fraction", "0.25", "--target",
                                        "synth:../data/textures", "--backbone", "feclip-tiny", "--batch-size", "8",
                                        "--num-workers", "0"]))
    assert f"{run} holds a run ({nut})" in line
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--quiet", "--allow-data-change"]) == 0
    assert "warning: resuming with other data (--allow-data-change, recorded in run.json)" in capsys.readouterr().err
    changes = json.loads((run / "run.json").read_text())["data_changes"]
    assert [change["differences"] for change in changes] == [[nut]]
    assert json.loads((run / "run.json").read_text())["data"]["train"]["images"] == sum(objects.values()) + 1  # as now


def test_a_damaged_run_folder_is_one_error_naming_the_file(run_dir: Path, synth: Path, tmp_path: Path, capsys) -> None:
    out = _copy(run_dir, tmp_path)
    record, state = out / "run.json", out / STATE
    good_record, good_state = record.read_bytes(), state.read_bytes()
    state.write_bytes(good_state[: len(good_state) // 3])  # a copy cut short
    before = snapshot(out)
    for argv in (["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"], train_argv(synth, out, "--epochs", "2")):
        line = one_error_line(capsys, main(argv))
        assert f"training state {state} is truncated or corrupt" in line, line
        assert snapshot(out) == before
    state.write_bytes(good_state)
    for text, message in (('{"train": "synth:x",', "is not valid JSON"), (good_record.decode().replace('"val"', '"vall"'),
                                                                         "has unknown keys ['vall']")):
        record.write_text(text)
        for argv in (["train", "--out", str(out), "--resume", "--quiet"], train_argv(synth, out)):
            line = one_error_line(capsys, main(argv))
            assert f"run record {record} {message}" in line, line
    record.unlink()  # without the record, a resume cannot know what it resumes
    line = one_error_line(capsys, main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]))
    assert f"cannot resume {out}: it has no run.json" in line
    line = one_error_line(capsys, main(train_argv(synth, out)))
    assert f"{out} holds a run (" in line and "but no run.json to tell which" in line


def test_a_full_disk_while_saving_keeps_the_last_good_files(run_dir: Path, synth: Path, tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    out = _copy(run_dir, tmp_path)
    before = snapshot(out)

    def no_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feclip.checkpoint, "save_file", no_space)
    line = one_error_line(capsys, main(train_argv(synth, out, "--epochs", "2")), notes=1)  # "resuming the run ..."
    assert line == (f"feclip: error: no space left on device while writing {out / 'last.safetensors'} (the previous "
                    "last.safetensors is kept); free some space and run the command again")
    after = snapshot(out)
    assert {k: after[k] for k in before if k != "run.json"} == {k: v for k, v in before.items() if k != "run.json"}
    assert set(after) == set(before)  # no temporary, no lock left
    monkeypatch.undo()
    assert main(train_argv(synth, out, "--epochs", "2")) == 0  # space again: the same command finishes the run
    assert read_metadata(out / "last.safetensors")["extra"]["epoch"] == 2


def test_bad_sizes_and_a_file_as_out_are_refused_before_any_work(synth: Path, tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--epochs", "0"], "--epochs must be positive, got 0"),
        (["--batch-size", "-2"], "--batch-size must be positive, got -2"),
        (["--ffe-window", "0"], "--ffe-window must be positive, got 0"),
        (["--lfs-window", "-1"], "--lfs-window must be positive, got -1"),
        (["--num-workers", "-1"], "--num-workers must be zero or more, got -1"),
    ]
    for extra, message in cases:
        assert message in one_error_line(capsys, main(train_argv(synth, tmp_path / "r", *extra)))
        assert not (tmp_path / "r").exists()
    line = one_error_line(capsys, main(train_argv(synth, a_file)))
    assert f"--out {a_file} is a file, not a folder" in line and a_file.read_text() == "x"


def test_data_preparation_and_validation_show_progress(tmp_path: Path, monkeypatch, capsys) -> None:
    """The default run (the smoke profile on a CPU): no long silent stretch while data is made or a model validated."""
    small_smoke_profile(monkeypatch, tmp_path / "data")
    assert main(["train", "--out", str(tmp_path / "demo"), "--epochs", "1", "--num-workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "synthetic benchmark: 100%" in err and "3/3" in err  # objects, textures and assemblies
    assert "epoch 1/1" in err and "evaluate: 100%" in err  # the validation on the held-out quarter
    assert main(["train", "--out", str(tmp_path / "quiet"), "--epochs", "1", "--num-workers", "0", "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
