"""FE-CLIP's adapters: the library's fast paths against direct unfold-and-transform references.

For every candidate the script first checks that the fast path equals the reference
(forward output and the gradient with respect to the tokens, in full fp32), then times
forward (``torch.no_grad``) and forward+backward, interleaved, and measures peak memory:

* ``FFE``: :class:`feclip.adapters.FrequencyFeatureExtraction` (one ``(P^2 x P^2)`` Kronecker
  transform per window, as a matmul) against :func:`ffe_reference`, which transforms every
  window explicitly with an einsum over a ``(B, h, w, P, P, D)`` tensor. Both share the
  ``Linear + GELU``.
* ``LFS <statistic>``: :func:`feclip.adapters.local_frequency_statistic` (depthwise filter,
  box filter or grouped convolution; see its docstring) against
  :func:`feclip.adapters.local_frequency_statistic_reference`, which materialises every
  sliding window's coefficients, ``(B, D, H * W, Q, Q)``.
* ``LFS module`` (``--with-module``): the statistic followed by LFS's ``Conv2d(D, D, 3) + GELU``,
  the same in both paths, to show how much of the module the statistic is.

With ``--conv-variants`` the LFS module is also timed with two memory layouts of its
``Conv2d(D, D, 3)`` (the statistic arrives as a channels-last view): the input made
contiguous first, and the weight kept in ``torch.channels_last``; outputs are checked equal.

Then a sweep over the LFS window ``Q`` (``--q-sweep``, default 3 5 7) shows how peak memory
grows with ``Q * Q``: it does not for the signed mean and the power, it does for the
reference and for ``abs``, which needs every coefficient.

Default sizes are ViT-L/14-336's: ``B=16``, a ``24 x 24`` token grid, ``D=1024``.

Example::

    python benchmarks/adapters.py --batch 4 --rounds 3 --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_parser,
    environment,
    fmt_bytes,
    markdown_table,
    no_tf32,
    peak_memory,
    resolve_devices,
    set_threads,
    synchronize,
    time_interleaved,
    write_report,
)

from feclip.adapters import (  # noqa: E402
    LFS_STATISTICS,
    FrequencyFeatureExtraction,
    LocalFrequencyStatistics,
    local_frequency_statistic,
    local_frequency_statistic_reference,
    statistic_filters,
)
from feclip.dct import frequency_basis  # noqa: E402

COLUMNS = (
    "device", "op", "window", "batch", "pass", "fast_ms", "ref_ms", "speedup", "fast_peak", "ref_peak", "max_abs_diff",
)
SWEEP_COLUMNS = ("device", "op", "window", "batch", "pass", "fast_peak", "ref_peak", "fast_ms", "ref_ms")


def ffe_reference(tokens: Tensor, mlp: nn.Module, window: int, basis: str = "dct") -> Tensor:
    """FFE computed window by window: explicit 2-D transforms of a ``(B, h, w, P, P, D)`` tensor.

    Args:
        tokens: Token grid of shape ``(B, H, W, D)``.
        mlp: The ``Linear + GELU`` applied to the coefficients (shared with the module under test).
        window: Window side ``P``.
        basis: ``"dct"`` or ``"dft"``.

    Returns:
        ``(B, H, W, D)``.
    """
    batch, height, width, channels = tokens.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:  # replicate-pad bottom/right to whole windows, as the library does
        tokens = nn.functional.pad(tokens.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode="replicate").permute(0, 2, 3, 1)
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    windows = tokens.reshape(batch, rows, window, cols, window, channels).permute(0, 1, 3, 2, 4, 5)  # (B,h,w,P,P,D)
    matrix = frequency_basis(basis, window, dtype=tokens.dtype, device=tokens.device)
    coefficients = torch.einsum("ki,lj,bhwijd->bhwkld", matrix, matrix, windows)
    mixed = mlp(coefficients)
    spatial = torch.einsum("ki,lj,bhwkld->bhwijd", matrix, matrix, mixed)
    grid = spatial.permute(0, 1, 3, 2, 4, 5).reshape(batch, rows * window, cols * window, channels)
    return grid[:, :height, :width]


def check_equal(fast: Tensor, reference: Tensor, what: str, tolerance: float = 1e-4) -> float:
    """Assert the two paths agree to ``tolerance`` (relative, and absolute on the scale of the values).

    Returns:
        The largest absolute difference.

    Raises:
        AssertionError: Some entry differs beyond tolerance.
    """
    fast, reference = fast.double(), reference.double()
    close = torch.isclose(fast, reference, rtol=tolerance, atol=tolerance * max(1.0, reference.abs().max().item()))
    bad = (~close).sum().item()
    if bad:
        raise AssertionError(f"{what}: fast path differs from the reference at {bad} of {close.numel()} entries, "
                             f"max |diff| {(fast - reference).abs().max().item():.3g}")
    return (fast - reference).abs().max().item()


@contextlib.contextmanager
def _in_float64(modules: list[nn.Module]) -> Iterator[None]:
    """Run with ``modules`` in float64, then back in float32."""
    for module in modules:
        module.double()
    try:
        yield
    finally:
        for module in modules:
            module.float()


def _forward_and_grad(fn: Callable[[Tensor], Tensor], tokens: Tensor, upstream: Tensor) -> tuple[Tensor, Tensor]:
    leaf = tokens.detach().requires_grad_(True)
    out = fn(leaf)
    out.backward(upstream)
    return out.detach(), leaf.grad


def _fwd_bwd(fn: Callable[[Tensor], Tensor], leaf: Tensor, upstream: Tensor, params: list[Tensor]) -> Callable[[], None]:
    def step() -> None:
        leaf.grad = None
        for parameter in params:
            parameter.grad = None
        fn(leaf).backward(upstream)

    return step


def compare(
    op: str,
    window: int,
    fast: Callable[[Tensor], Tensor],
    reference: Callable[[Tensor], Tensor],
    tokens: Tensor,
    *,
    modules: list[nn.Module],
    rounds: int,
    warmup: int,
    min_run_time: float,
    clock: str = "wall",
    exact_gradients: bool = False,
) -> list[dict[str, Any]]:
    """Check, time and measure one fast/reference pair; one row for forward, one for forward+backward.

    Forward outputs are compared in float32. With ``exact_gradients`` the input gradients
    are compared in float64 (``modules`` converted for the check), else in float32: ``|c|``
    has no derivative at ``c = 0``, and in float32 the two LFS paths round a few
    near-zero coefficients to opposite signs, so ``"abs"`` needs float64.
    """
    device = tokens.device
    params = [p for module in modules for p in module.parameters()]
    generator = torch.Generator().manual_seed(1)
    upstream = torch.randn(tokens.shape, generator=generator).to(device)
    with no_tf32():
        with torch.no_grad():
            diff_forward = check_equal(fast(tokens), reference(tokens), f"{op} (Q/P={window}) forward")
        dtype = torch.float64 if exact_gradients else tokens.dtype
        with _in_float64(modules) if exact_gradients else contextlib.nullcontext():
            _, grad_fast = _forward_and_grad(fast, tokens.to(dtype), upstream.to(dtype))
            _, grad_ref = _forward_and_grad(reference, tokens.to(dtype), upstream.to(dtype))
            tolerance = 1e-7 if exact_gradients else 1e-4
            diff_backward = check_equal(grad_fast, grad_ref, f"{op} (Q/P={window}) input gradient ({dtype})", tolerance)
    del grad_fast, grad_ref
    for parameter in params:
        parameter.grad = None

    rows = []
    leaf = tokens.detach().requires_grad_(True)
    passes = {
        "fwd": ({"fast": lambda: fast(tokens), "ref": lambda: reference(tokens)}, torch.no_grad, diff_forward),
        "fwd+bwd": (
            {"fast": _fwd_bwd(fast, leaf, upstream, params), "ref": _fwd_bwd(reference, leaf, upstream, params)},
            torch.enable_grad,
            diff_backward,
        ),
    }
    for name, (candidates, grad_mode, diff) in passes.items():
        with grad_mode():
            timings = time_interleaved(
                candidates, device=device, rounds=rounds, warmup=warmup, min_run_time=min_run_time, clock=clock
            )
            memory = {key: peak_memory(fn, device) for key, fn in candidates.items()}
        rows.append({
            "device": device.type,
            "op": op,
            "window": window,
            "batch": tokens.shape[0],
            "grid": tokens.shape[1],
            "width": tokens.shape[3],
            "pass": name,
            "clock": clock,
            "fast_ms": 1e3 * timings["fast"].median,
            "ref_ms": 1e3 * timings["ref"].median,
            "speedup": timings["ref"].median / timings["fast"].median,
            "fast_peak": fmt_bytes(memory["fast"].bytes),
            "ref_peak": fmt_bytes(memory["ref"].bytes),
            "fast_peak_bytes": memory["fast"].bytes,
            "ref_peak_bytes": memory["ref"].bytes,
            "memory_method": memory["fast"].method,
            "max_abs_diff": diff,
        })
        print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    return rows


def lfs_pair(width: int, window: int, statistic: str) -> tuple[Callable, Callable]:
    """Fast and reference LFS statistic; the fast one builds its fixed filters once per dtype (as the module does)."""
    filters: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def fast(tokens: Tensor) -> Tensor:
        key = (tokens.dtype, tokens.device)
        if key not in filters:
            filters[key] = statistic_filters(window, statistic, width, dtype=tokens.dtype, device=tokens.device)
        return local_frequency_statistic(tokens, window, statistic, filters=filters[key])

    def reference(tokens: Tensor) -> Tensor:
        return local_frequency_statistic_reference(tokens, window, statistic)

    return fast, reference


CONV_VARIANT_COLUMNS = ("device", "variant", "batch", "pass", "ms", "vs_as_is")


def conv_variants(tokens: Tensor, *, rounds: int, warmup: int, min_run_time: float, clock: str) -> list[dict[str, Any]]:
    """LFS module forward and forward+backward with three layouts of its Conv3x3 (see the module doc)."""
    device, width = tokens.device, tokens.shape[-1]

    def lfs(channels_last_weight: bool) -> LocalFrequencyStatistics:
        torch.manual_seed(0)
        module = LocalFrequencyStatistics(width).to(device)
        if channels_last_weight:
            module.conv.to(memory_format=torch.channels_last)
        return module

    as_is, weight_cl, contiguous = lfs(False), lfs(True), lfs(False)

    def contiguous_forward(x: Tensor) -> Tensor:
        statistic = local_frequency_statistic(x, contiguous.window, contiguous.statistic, filters=contiguous.filters)
        return contiguous.act(contiguous.conv(statistic.permute(0, 3, 1, 2).contiguous())).permute(0, 2, 3, 1)

    variants: dict[str, tuple[Callable[[Tensor], Tensor], nn.Module]] = {
        "as is (channels-last input view)": (as_is, as_is),
        "input .contiguous() before the conv": (contiguous_forward, contiguous),
        "conv weight in channels_last": (weight_cl, weight_cl),
    }
    with torch.no_grad(), no_tf32():
        expected = as_is(tokens)
        for name, (fn, _) in variants.items():
            check_equal(fn(tokens), expected, f"conv variant {name!r}")
    leaf = tokens.detach().requires_grad_(True)
    upstream = torch.randn_like(tokens)
    passes = {
        "fwd": (torch.no_grad, {name: (lambda fn=fn: fn(tokens)) for name, (fn, _) in variants.items()}),
        "fwd+bwd": (
            torch.enable_grad,
            {name: _fwd_bwd(fn, leaf, upstream, list(module.parameters())) for name, (fn, module) in variants.items()},
        ),
    }
    rows = []
    for pass_name, (grad_mode, candidates) in passes.items():
        with grad_mode():
            timings = time_interleaved(candidates, device=device, rounds=rounds, warmup=warmup, min_run_time=min_run_time, clock=clock)
        base = timings["as is (channels-last input view)"].median
        for name, timing in timings.items():
            rows.append({"device": device.type, "variant": name, "batch": tokens.shape[0], "pass": pass_name, "clock": clock,
                         "ms": 1e3 * timing.median, "vs_as_is": timing.median / base})
            print(markdown_table(rows[-1:], CONV_VARIANT_COLUMNS).splitlines()[-1], flush=True)
    return rows


def run(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], ...]:
    """All comparisons on one device: (main rows, Q-sweep rows, conv-variant rows)."""
    torch.manual_seed(0)
    tokens = torch.randn(args.batch, args.grid, args.grid, args.width).to(device)
    clock = args.clock if device.type == "cpu" else "wall"
    timing = {"rounds": args.rounds, "warmup": args.warmup, "min_run_time": args.min_run_time, "clock": clock}
    rows: list[dict[str, Any]] = []

    ffe = FrequencyFeatureExtraction(args.width, args.ffe_window).to(device)
    rows += compare(
        "FFE", args.ffe_window, ffe, lambda x: ffe_reference(x, ffe.mlp, args.ffe_window), tokens, modules=[ffe], **timing
    )
    for statistic in args.statistics:
        fast, reference = lfs_pair(args.width, args.lfs_window, statistic)
        rows += compare(f"LFS {statistic}", args.lfs_window, fast, reference, tokens, modules=[], exact_gradients=True, **timing)
        if args.with_module:
            lfs = LocalFrequencyStatistics(args.width, args.lfs_window, statistic).to(device)

            def head(fn: Callable[[Tensor], Tensor], lfs: LocalFrequencyStatistics = lfs) -> Callable[[Tensor], Tensor]:
                return lambda x: lfs.act(lfs.conv(fn(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

            rows += compare(
                f"LFS module {statistic}", args.lfs_window, head(fast), head(reference), tokens,
                modules=[lfs], exact_gradients=True, **timing,
            )

    if args.conv_variants:
        rows_conv = conv_variants(tokens, **timing)
    else:
        rows_conv = []

    sweep: list[dict[str, Any]] = []
    sweep_tokens = tokens[: args.sweep_batch].contiguous()
    for statistic in args.statistics:
        for window in args.q_sweep:
            fast, reference = lfs_pair(args.width, window, statistic)
            for row in compare(
                f"LFS {statistic}", window, fast, reference, sweep_tokens, modules=[], exact_gradients=True, rounds=1, warmup=0, min_run_time=0.0, clock=clock,
            ):
                sweep.append(row)
            synchronize(device)
    return rows, sweep, rows_conv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grid", type=int, default=24, help="token grid side (24 for ViT-L/14 at 336 px)")
    parser.add_argument("--width", type=int, default=1024, help="token width D")
    parser.add_argument("--ffe-window", type=int, default=3)
    parser.add_argument("--lfs-window", type=int, default=3)
    parser.add_argument("--statistics", nargs="+", default=list(LFS_STATISTICS), choices=LFS_STATISTICS)
    parser.add_argument("--q-sweep", nargs="*", type=int, default=[3, 5, 7], help="LFS windows of the memory sweep")
    parser.add_argument("--sweep-batch", type=int, default=None, help="batch of the sweep (default: --batch)")
    parser.add_argument("--with-module", action="store_true", help="also compare the whole LFS module (with its Conv3x3)")
    parser.add_argument("--conv-variants", action="store_true", help="also time LFS's Conv3x3 in other memory layouts")
    parser.add_argument("--min-run-time", type=float, default=0.0,
                        help="seconds per sample for Timer.blocked_autorange (0: one call per sample)")
    args = parser.parse_args(argv)
    args.sweep_batch = args.sweep_batch or args.batch
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Run every comparison; returns ``{"rows", "sweep", "conv_variants"}`` lists of rows. Raises if a fast path is wrong."""
    args = parse_args(argv)
    set_threads(args.threads)
    devices = resolve_devices(args.device)
    print(markdown_table([], COLUMNS), flush=True)
    rows, sweep, conv = [], [], []
    for device in devices:
        device_rows, device_sweep, device_conv = run(args, device)
        rows += device_rows
        sweep += device_sweep
        conv += device_conv
    text = (
        f"## Fast path vs reference (B={args.batch}, {args.grid}x{args.grid} grid, D={args.width})\n\n"
        + markdown_table(rows, COLUMNS)
        + f"\n\n## Peak memory against the LFS window Q (B={args.sweep_batch})\n\n"
        + markdown_table(sweep, SWEEP_COLUMNS)
    )
    if conv:
        text += "\n\n## LFS module: memory layout of the Conv3x3\n\n" + markdown_table(conv, CONV_VARIANT_COLUMNS)
    slower = [r for r in rows + sweep if r["speedup"] < 1]
    text += "".join(
        f"\n\nSLOWER: the fast path of {r['op']} (window {r['window']}, batch {r['batch']}, {r['pass']}) "
        f"took {r['fast_ms']:.4g} ms against the reference's {r['ref_ms']:.4g} ms"
        for r in slower
    )
    print("\n" + text)
    write_report(args, [environment(device) for device in devices], text, rows=rows, sweep=sweep, conv_variants=conv)
    return {"rows": rows, "sweep": sweep, "conv_variants": conv}


if __name__ == "__main__":
    main()
