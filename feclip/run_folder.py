"""A run folder belongs to one run: its lock, the files that make it a run, and replacing them.

:class:`RunLock` is a lock file (``run.lock``) holding the PID and host of the process that trains
into the folder. A second process that finds it fails at once (:class:`RunInUse`) instead of both
writing the same checkpoints; a lock whose process is gone (same host, no such PID: a crash or
``kill -9``) is stale and taken over. The lock is created with ``O_EXCL``, and a stale one is
renamed away before it is replaced, so two processes taking over the same stale lock cannot both win.

This module needs no torch: the command line checks the folder before it builds anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_FILE",
    "RUN_FILES",
    "RunInUse",
    "RunLock",
    "pid_alive",
    "remove_run_files",
    "run_files_in",
]

LOCK_FILE = "run.lock"
# What a training run writes into its folder (feclip.train.run_state and the command line's run.json).
RUN_FILES = ("run.json", "last.safetensors", "last.json", "best.safetensors", "best.json", "last.state.pt",
             "history.csv", "history.json")
# A lock file still empty this long after it was made belongs to a process that died while writing it.
_EMPTY_LOCK_GRACE_S = 10.0
# The lock files this process holds: a lock naming our own PID is stale only when we do not hold it.
_HELD: set[Path] = set()


class RunInUse(OSError):
    """Another live process holds the run folder's lock (an ``OSError``, like ``EBUSY``)."""


def run_files_in(directory: Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``directory``."""
    return [name for name in RUN_FILES if (directory / name).is_file()]


def remove_run_files(directory: Path) -> list[str]:
    """Delete a run's own files (:data:`RUN_FILES`) from ``directory``; anything else there is left alone.

    Returns:
        The names deleted.
    """
    removed = run_files_in(directory)
    for name in removed:
        (directory / name).unlink(missing_ok=True)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


@dataclass
class RunLock:
    """The lock of one run folder, held while a process trains into it.

    Use as a context manager, or call :meth:`acquire` and :meth:`release`. ``stale`` lists the
    holders of stale locks taken over (for the caller to report).

    Args:
        directory: The run folder (created if missing; :attr:`created` says whether it was).
    """

    directory: Path

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.path = self.directory / LOCK_FILE
        self.created = False
        self.held = False
        self.waited = False
        self.stale: list[dict[str, Any]] = []

    def _holder(self) -> dict[str, Any] | None:
        """The lock file's holder, ``{}`` for an unreadable one, ``None`` when there is no lock file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if not holder:  # empty or garbled: a process that died between creating and writing it, unless just made
            with contextlib.suppress(OSError):
                return time.time() - self.path.stat().st_mtime > _EMPTY_LOCK_GRACE_S
            return False
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process: we cannot tell whether it is alive
        pid = int(holder.get("pid", -1))
        if pid == os.getpid():  # ours if we hold it; else a dead process's PID, reused (a container's first PIDs)
            return self.path.resolve() not in _HELD
        return not pid_alive(pid)

    def _describe(self, holder: dict[str, Any]) -> str:
        if not holder:
            return "a process that is starting"
        return f"PID {holder.get('pid')} on {holder.get('host')}, since {holder.get('started', '?')}"

    def acquire(self, wait_s: float = 0.0) -> RunLock:
        """Take the lock, taking over a stale one.

        Args:
            wait_s: How long to wait for another live holder to let go (polling every second); 0: fail at once.

        Raises:
            RunInUse: Another live process (or a process on another host) holds it, for longer than ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._acquire_once()
            except RunInUse as busy:
                if time.monotonic() >= deadline or self.path.resolve() in _HELD:  # held by us: waiting would deadlock
                    raise
                if not self.waited:
                    warnings.warn(f"{busy}: waiting for it", stacklevel=2)
                self.waited = True
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _acquire_once(self) -> RunLock:
        if not self.directory.exists():
            self.directory.mkdir(parents=True)
            self.created = True
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(100):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._is_stale(holder):
                    other_host = holder and holder.get("host") != socket.gethostname()
                    hint = (f"; if that process is gone, delete {self.path}" if other_host else
                            "; wait for it to finish or choose another --out")
                    raise RunInUse(f"{self.directory} is in use by another feclip run ({self._describe(holder)}){hint}")
                aside = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.stale")
                try:
                    os.rename(self.path, aside)  # only one process taking over wins this rename
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                self.stale.append(holder)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self.held = True
            _HELD.add(self.path.resolve())
            return self
        raise RunInUse(f"could not take the lock {self.path}: other processes keep replacing it")

    def release(self) -> None:
        """Give the lock back (only if this process holds it)."""
        if self.held:
            holder = self._holder()
            if holder and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            _HELD.discard(self.path.resolve())
            self.held = False

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()  # ``with RunLock(d).acquire(wait_s=...)`` takes it once

    def __exit__(self, *exc_info: object) -> None:
        self.release()
