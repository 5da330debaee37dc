"""The run folder's lock (held by another live process, stale after a crash, another host's) and its files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feclip.run_folder import LOCK_FILE, RUN_FILES, RunInUse, RunLock, pid_alive, remove_run_files, run_files_in

# A second process that takes the lock of the folder in argv[1], says so, and holds it until stdin closes.
_HOLDER = """
import sys, time
from feclip.run_folder import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
    time.sleep(float(sys.argv[2]))  # still working a while after it was told to finish
"""


def _holder(folder: Path, linger_s: float = 0.0) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(linger_s)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: the PID names no process any more
    return process.pid


def test_a_live_process_holding_the_lock_keeps_a_second_one_out(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    process = _holder(folder)
    try:
        holder = json.loads((folder / LOCK_FILE).read_text())
        assert holder["pid"] == process.pid and holder["host"] == socket.gethostname()
        started = time.perf_counter()
        with pytest.raises(RunInUse, match=rf"{folder} is in use by another feclip run \(PID {process.pid} on "):
            RunLock(folder).acquire()
        assert time.perf_counter() - started < 1.0  # at once, not after a wait
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert not (folder / LOCK_FILE).exists()  # released on exit
    with RunLock(folder) as lock:
        assert lock.held and not lock.stale and not lock.created  # the folder was there already


def test_the_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    process = _holder(folder)
    os.kill(process.pid, signal.SIGKILL)  # a crash: the lock file stays behind
    process.wait(timeout=60)
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == process.pid
    with RunLock(folder) as lock:
        assert [holder["pid"] for holder in lock.stale] == [process.pid]
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()
    assert sorted(p.name for p in folder.iterdir()) == []  # the stale lock was not left aside


def test_this_process_holding_the_lock_is_not_stale(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        started = time.perf_counter()
        with pytest.raises(RunInUse, match=f"PID {os.getpid()}"):
            RunLock(tmp_path).acquire(wait_s=60)  # no waiting for ourselves
        assert time.perf_counter() - started < 1.0
    # Our own PID in a lock we do not hold: a dead process's, whose PID we were given again (a container).
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with RunLock(tmp_path) as lock:
        assert len(lock.stale) == 1


def test_another_hosts_lock_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example"}))
    with pytest.raises(RunInUse, match=f"elsewhere.example.*if that process is gone, delete {tmp_path / LOCK_FILE}"):
        RunLock(tmp_path).acquire()


def test_an_empty_lock_is_a_starting_process_then_stale(tmp_path: Path) -> None:
    lock_file = tmp_path / LOCK_FILE
    lock_file.write_text("")
    with pytest.raises(RunInUse, match="a process that is starting"):
        RunLock(tmp_path).acquire()
    old = time.time() - 60
    os.utime(lock_file, (old, old))  # still empty a minute later: its process died before writing it
    with RunLock(tmp_path) as lock:
        assert lock.stale == [{}]


def test_pid_alive() -> None:
    assert pid_alive(os.getpid()) and not pid_alive(_dead_pid()) and not pid_alive(0)


def test_a_new_folder_is_created_and_run_files_are_the_runs_only(tmp_path: Path) -> None:
    with RunLock(tmp_path / "a" / "b") as lock:
        assert lock.created and (tmp_path / "a" / "b").is_dir()
    for name in (*RUN_FILES, "notes.txt", "eval_synth_textures"):
        (tmp_path / name).write_text("x")
    assert run_files_in(tmp_path) == list(RUN_FILES)
    assert remove_run_files(tmp_path) == list(RUN_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "eval_synth_textures", "notes.txt"]


def test_a_holder_that_finishes_is_waited_for(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    process = _holder(folder, linger_s=2.0)
    started = time.perf_counter()
    try:
        with pytest.warns(UserWarning, match="waiting for it"), pytest.raises(RunInUse):
            RunLock(folder).acquire(wait_s=1.5)  # still held after the wait
        assert time.perf_counter() - started >= 1.5
        process.stdin.close()  # the holder finishes...
        with pytest.warns(UserWarning, match=f"in use by another feclip run \\(PID {process.pid} .*: waiting for it"):
            with RunLock(folder).acquire(wait_s=60) as lock:  # ... and the waiting process goes ahead
                assert lock.held and json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        if not process.stdin.closed:
            process.stdin.close()
        process.wait(timeout=60)
    assert not (folder / LOCK_FILE).exists()
