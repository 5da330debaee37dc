"""Shared helpers of the benchmark scripts: arguments, interleaved timing, peak memory, backbones, reports.

Arguments and reports
    :func:`benchmark_parser` gives every script the same options (``--device``, ``--rounds``,
    ``--warmup``, ``--clock``, ``--threads``, ``--json``, ``--markdown``, each where it applies) and
    :func:`write_report` the same outputs: ``--json`` holds the environment (:func:`environment`:
    date, versions, threads, cores, the machine's load average), the arguments and every number;
    ``--markdown`` the environment line and the table.

Timing
    Candidates that are compared are run **interleaved in one process**: every round runs
    each candidate once, in an order rotated from round to round, so slow drifts of the
    machine (other jobs, clock changes) hit all of them alike. A round's sample is either
    one call timed with ``time.perf_counter`` (slow calls, ``min_run_time=0``) or the median
    per-call time of :meth:`torch.utils.benchmark.Timer.blocked_autorange` (fast calls). The
    reported number is the median over rounds, after ``warmup`` untimed calls. On CUDA the
    clock is read after ``torch.cuda.synchronize()``.

Peak memory
    The peak of tensor memory **allocated during one call, above what was live before it**:

    * CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
      ``memory_allocated()`` before the call.
    * CPU: torch's profiler with ``profile_memory=True`` records every allocation and free
      of torch's CPU allocator; replaying them (``torch.profiler._memory_profiler``) gives the
      live bytes over time, and we take its maximum. This is the CPU analogue of the CUDA
      number: it counts tensors, not the process's resident set (no Python objects, no
      allocator caching, not disturbed by other processes). Only if that private API fails
      do we fall back to the Linux resident-set high-water mark (``VmHWM`` after resetting it
      through ``/proc/self/clear_refs``), and the method is reported next to the number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.benchmark import Timer

__all__ = [
    "CLOCKS",
    "benchmark_parser",
    "write_report",
    "Timing",
    "PeakMemory",
    "set_threads",
    "resolve_devices",
    "synchronize",
    "time_interleaved",
    "paired_ratio",
    "peak_memory",
    "no_tf32",
    "create_backbone",
    "build_feclip",
    "environment",
    "markdown_table",
    "write_json",
    "fmt_bytes",
]


@dataclass
class Timing:
    """Seconds per call of one candidate, over interleaved rounds.

    Attributes:
        median: Median over rounds, in seconds.
        q1: First quartile over rounds.
        q3: Third quartile over rounds.
        samples: Every round's seconds per call, in round order.
    """

    median: float
    q1: float
    q3: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        values = sorted(samples)
        if len(values) >= 2:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = q3 = values[0]
        return cls(median=statistics.median(values), q1=q1, q3=q3, samples=list(samples))


@dataclass
class PeakMemory:
    """Peak tensor memory of one call above what was live before it.

    Attributes:
        bytes: Peak in bytes (``nan`` when it could not be measured).
        method: ``"cuda_max_allocated"``, ``"cpu_profiler"``, ``"rss_hwm"`` or ``"unavailable"``.
    """

    bytes: float
    method: str


def benchmark_parser(
    doc: str,
    *,
    device: str | None = "auto",
    rounds: int | None = 5,
    warmup: int | None = 1,
    clock: bool = True,
    threads: bool = True,
) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares, as far as this one uses them.

    Args:
        doc: The script's module docstring; its first paragraph is the description.
        device: Default of ``--device`` (``None``: no such option).
        rounds: Default of ``--rounds`` (``None``: no such option).
        warmup: Default of ``--warmup`` (``None``: no such option).
        clock: Whether the script takes ``--clock``.
        threads: Whether the script takes ``--threads`` (one int; ``None``: torch's default).

    Returns:
        The parser; ``--json`` and ``--markdown`` are always there. Add the script's own options to it.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    if device is not None:
        parser.add_argument("--device", default=device, help=f"cpu, cuda, or auto (CPU, and CUDA when present) (default: {device})")
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved timed rounds, median reported (default: {rounds})")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls of each candidate first (default: {warmup})")
    if clock:
        parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                            help="process: CPU seconds of this process (CPU only; steadier on a shared machine with --threads 1)")
    if threads:
        parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the environment, the arguments and every number here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the environment and the table here")
    return parser


def write_report(args: argparse.Namespace, env: Any, table: str, **payload: Any) -> None:
    """Write ``--json`` (environment, arguments, ``payload``) and ``--markdown`` (environment line, table), if asked."""
    if args.json:
        write_json(args.json, {"environment": env, "args": vars(args), **payload})
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"environment: {env}\n\n{table}\n")


def set_threads(num_threads: int | None) -> int:
    """Pin torch's intra-op threads (``None`` keeps the default); returns the count in use."""
    if num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()


def resolve_devices(option: str) -> list[torch.device]:
    """``"cpu"``, ``"cuda"`` or ``"auto"`` (CPU, and CUDA when present) as a list of devices.

    Raises:
        ValueError: ``--device cuda`` was asked for but CUDA is not available.
    """
    if option == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if option.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {option}: CUDA is not available on this machine")
    if option not in ("cpu",) and not option.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {option!r}")
    return [torch.device(option)]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a clock read means the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}


def _time_once(fn: Callable[[], Any], device: torch.device, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def time_interleaved(
    candidates: dict[str, Callable[[], Any]],
    *,
    device: torch.device,
    rounds: int = 5,
    warmup: int = 1,
    min_run_time: float = 0.0,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Median seconds per call of each candidate, measured in interleaved rounds.

    Args:
        candidates: Name -> zero-argument callable; all are timed under the same conditions.
        device: Device the callables run on (for synchronisation).
        rounds: Timed rounds; every round runs every candidate.
        warmup: Untimed calls of every candidate before the first round.
        min_run_time: ``0``: one call per sample, timed directly (for calls of 10 ms or more).
            Positive: each sample is ``Timer.blocked_autorange(min_run_time).median`` (fast calls).
        clock: ``"wall"`` (``time.perf_counter``) or ``"process"`` (``time.process_time``: CPU
            seconds of this process, all its threads summed). On a CPU shared with other jobs,
            ``"process"`` with one thread counts the work done rather than the time spent waiting
            for a core; it is meaningless for CUDA (the GPU's time is not the process's).

    Returns:
        Name -> :class:`Timing`, with one sample per round.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if clock not in CLOCKS or (clock == "process" and device.type != "cpu"):
        raise ValueError(f"clock must be one of {sorted(CLOCKS)} ('process' on CPU only), got {clock!r} on {device}")
    # Timer's own default clock synchronises CUDA; only the process clock is passed explicitly.
    timer_options = {"timer": time.process_time} if clock == "process" else {}
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            fn = candidates[name]
            if min_run_time > 0:
                timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), **timer_options)
                samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
            else:
                samples[name].append(_time_once(fn, device, CLOCKS[clock]))
    return {name: Timing.from_samples(values) for name, values in samples.items()}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median of the per-round ratios: robust to load that changes between rounds."""
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples))


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name):
                return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _cpu_profiler_peak(fn: Callable[[], Any]) -> float:
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return float(peak)


def _rss_peak(fn: Callable[[], Any]) -> float:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set (Linux >= 4.0)
    before = _rss_kib("VmRSS")
    fn()
    return float((_rss_kib("VmHWM") - before) * 1024)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> PeakMemory:
    """Peak tensor memory allocated by one call of ``fn``, above what was live before (see the module doc).

    Args:
        fn: Zero-argument callable; run once (run it before, so lazy initialisation is not counted).
        device: Device it runs on.

    Returns:
        :class:`PeakMemory`.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return PeakMemory(float(torch.cuda.max_memory_allocated(device) - before), "cuda_max_allocated")
    try:
        with _quiet_profiler():
            return PeakMemory(_cpu_profiler_peak(fn), "cpu_profiler")
    except Exception as error:  # a private API: fall back rather than fail the benchmark
        logging.getLogger(__name__).warning("profiler memory failed (%s); using the resident-set high-water mark", error)
    try:
        return PeakMemory(_rss_peak(fn), "rss_hwm")
    except OSError:
        return PeakMemory(math.nan, "unavailable")


@contextlib.contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Silence file descriptor 2 while profiling: some torch builds print a line per profiler start/stop there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions on CUDA, for exactness checks (cuDNN allows TF32 by default)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul


def create_backbone(name: str, device: torch.device) -> nn.Module:
    """A randomly initialised open_clip model (``pretrained=None``), in eval mode, on ``device``.

    Built by :func:`feclip.backbones.create_clip` with the architecture the paper's weights need:
    QuickGELU where the model's ``openai`` weights use it (ViT-L-14-336, ViT-B-16), as
    ``create_clip(name, "openai")`` builds it. The random weights are drawn directly on ``device``
    (``init_on_device``), which makes ViT-L's random init seconds instead of a minute on a GPU
    machine. Timing does not depend on the weights' values.
    """
    import open_clip

    from feclip.backbones import create_clip, uses_quick_gelu

    quick_gelu = "openai" in open_clip.list_pretrained_tags_by_model(name) and uses_quick_gelu(name, "openai")
    clip, _ = create_clip(name, None, device=device, quick_gelu=quick_gelu, init_on_device=True)
    return clip


def build_feclip(clip: nn.Module, backbone: str, device: torch.device, **overrides: Any) -> nn.Module:
    """FE-CLIP (default adapters unless overridden) on ``clip``, in eval mode.

    Random ``(2, E)`` text features stand in for the prompt embeddings, so the text
    tower never runs: the benchmarks time the image path only.
    """
    from feclip.model import FEClip

    generator = torch.Generator().manual_seed(0)
    text_features = torch.randn(2, clip.visual.proj.shape[1], generator=generator)
    model = FEClip(clip, None, text_features=text_features, backbone=backbone, pretrained=None, **overrides)
    return model.to(device).eval()


def environment(device: torch.device) -> dict[str, Any]:
    """Where and when a run happened, for the results file."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    with contextlib.suppress(OSError, AttributeError):  # the machine's load: other jobs share its cores
        info["load_average"] = [round(load, 2) for load in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def fmt_bytes(value: float) -> str:
    """``1.5 MiB`` style, ``n/a`` for nan."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` (dataclasses allowed) as indented JSON, creating parent folders."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def default(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        return str(value)

    Path(path).write_text(json.dumps(payload, indent=2, default=default) + "\n")
