"""Smoke tests of the benchmark scripts: they run on the tiny backbone, return sane numbers,
their FLOP counts match a hand computation and torch's FLOP counter, and their fast paths
equal the references. No timing is asserted (the machine is shared)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` by path (the scripts are not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"feclip_benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


overhead = _load("overhead")  # puts benchmarks/ on sys.path, where the scripts find their helpers
import common  # noqa: E402  (the same module object the scripts use)
flop_count = _load("flops")  # the FLOP counts (benchmarks/flops.py)

adapters_bench = _load("adapters")
train_step = _load("train_step")
CPU = torch.device("cpu")


def test_timing_rounds_and_median():
    calls: list[str] = []
    timings = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, device=CPU, rounds=3, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates per round
    assert all(len(t.samples) == 3 and t.q1 <= t.median <= t.q3 for t in timings.values())
    stats = common.Timing.from_samples([3.0, 1.0, 2.0, 10.0])
    assert stats.median == 2.5
    assert common.paired_ratio(common.Timing.from_samples([2.0, 4.0, 9.0]), common.Timing.from_samples([1.0, 2.0, 3.0])) == 2.0


def test_peak_memory_cpu_counts_the_allocation():
    def allocate() -> None:
        a = torch.ones(1 << 20)  # 4 MiB, freed at return
        b = torch.ones(1 << 18)  # 1 MiB
        del a, b

    peak = common.peak_memory(allocate, CPU)
    assert peak.method in ("cpu_profiler", "rss_hwm")
    if peak.method == "cpu_profiler":  # exact: both tensors live at once
        assert peak.bytes == 5 * 2**20
    else:
        assert peak.bytes >= 4 * 2**20


def test_flop_breakdown_matches_hand_count_for_vit_l():
    shape = flop_count.VitShape.from_open_clip_config("ViT-L-14-336")
    flops = flop_count.flop_breakdown(shape, [15, 18, 21, 23])
    n, d = 577, 1024
    per_block = 2 * n * d * 4 * d + 4 * n * n * d + 2 * 2 * n * d * 4096
    assert flops["vit"] == pytest.approx(2 * 576 * d * 3 * 14 * 14 + 24 * per_block)
    assert flops["lfs_conv"] == 4 * 2 * 576 * 9 * d * d  # Conv3x3 D->D at 4 taps
    assert flops["ffe_linear"] == 4 * 2 * 576 * d * d
    assert flops["fc_patch"] == 4 * 2 * 576 * d * 768
    assert 380e9 < flops["clip"] < 383e9 and 51e9 < flops["adapters"] < 53e9
    assert flops["fe_clip"] / flops["clip"] == pytest.approx(1.136, abs=0.002)


def test_flop_breakdown_matches_torch_flop_counter_on_tiny():
    clip = common.create_backbone("feclip-tiny", CPU)
    model = common.build_feclip(clip, "feclip-tiny", CPU, tap_indices=[3, 6, 9])
    clip.train()  # nn.MultiheadAttention's fused inference kernel is invisible to FlopCounterMode
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            clip.encode_image(images)
        counted_clip = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model(images)
        counted_fe = counter.get_total_flops()
    shape = flop_count.VitShape.from_open_clip_config("feclip-tiny")
    flops = flop_count.flop_breakdown(shape, [3, 6, 9], batch=2)
    # The CPU attention kernel has no FLOP formula in the counter: add Q K^T and A V by hand.
    attention = 2 * 2 * 2 * shape.tokens**2 * shape.width
    assert counted_clip + shape.layers * attention == pytest.approx(flops["clip"], rel=1e-9)
    assert counted_fe + 10 * attention == pytest.approx(flops["fe_clip"], rel=1e-9)  # blocks 0..9 run
    assert flops["skipped_blocks"] == -2 * flop_count.block_flops(shape, 2)


def test_overhead_main_on_tiny(tmp_path):
    rows = overhead.main(
        ["--backbones", "feclip-tiny", "--batch-sizes", "2", "--device", "cpu", "--rounds", "1", "--warmup", "0",
         "--json", str(tmp_path / "o.json"), "--markdown", str(tmp_path / "o.md")]
    )
    (row,) = rows
    assert row["clip_ms"] > 0 and row["fe_clip_ms"] > 0 and math.isfinite(row["ratio"]) and row["ratio"] > 0
    flops = flop_count.flop_breakdown(flop_count.VitShape.from_open_clip_config("feclip-tiny"), row["taps"], batch=2)
    assert row["flop_ratio"] == pytest.approx(flops["fe_clip"] / flops["clip"], rel=1e-12)
    assert row["verdict"] == "" and row["taps"] == [7, 9, 10, 11]
    assert "feclip-tiny" in (tmp_path / "o.md").read_text() and (tmp_path / "o.json").stat().st_size > 0
    assert overhead.target_for("ViT-L-14-336", CPU, 1) == overhead.TARGET_CPU_BATCH1


def test_ffe_reference_equals_library_ffe_with_padding():
    from feclip.adapters import FrequencyFeatureExtraction

    torch.manual_seed(0)
    ffe = FrequencyFeatureExtraction(8, window=3)
    tokens = torch.randn(2, 7, 5, 8)  # neither side divisible by P: exercises the replicate padding
    torch.testing.assert_close(adapters_bench.ffe_reference(tokens, ffe.mlp, 3), ffe(tokens), rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match="differs from the reference"):
        adapters_bench.check_equal(ffe(tokens) + 1e-2, ffe(tokens), "perturbed")


def test_adapters_main_fast_paths_equal_reference():
    result = adapters_bench.main(
        ["--batch", "2", "--grid", "7", "--width", "8", "--device", "cpu", "--rounds", "1", "--warmup", "0",
         "--q-sweep", "3", "5", "--conv-variants"]
    )
    rows, sweep = result["rows"], result["sweep"]
    assert {r["op"] for r in rows} == {"FFE", "LFS mean", "LFS abs", "LFS power"}
    for row in rows + sweep:
        assert row["max_abs_diff"] < 1e-4 and row["fast_ms"] > 0 and row["ref_ms"] > 0
    peaks = {(r["op"], r["window"]): r for r in sweep if r["pass"] == "fwd"}
    for statistic in ("mean", "power"):  # Q^2-free paths: only the padded input grows with Q
        fast_growth = peaks[(f"LFS {statistic}", 5)]["fast_peak_bytes"] / peaks[(f"LFS {statistic}", 3)]["fast_peak_bytes"]
        ref_growth = peaks[(f"LFS {statistic}", 5)]["ref_peak_bytes"] / peaks[(f"LFS {statistic}", 3)]["ref_peak_bytes"]
        assert fast_growth < 1.6 < 2.2 < ref_growth


def test_train_step_main_on_tiny():
    (row,) = train_step.main(["--device", "cpu", "--backbones", "feclip-tiny", "--batch", "2", "--rounds", "1", "--warmup", "0"])
    assert row["images_per_s"] > 0 and row["step_ms"] > 0 and math.isfinite(row["loss"]) and row["loss"] > 0
    assert row["peak_memory_bytes"] > 0
    assert row["trainable_parameters"] == 4 * ((64 * 64 + 64) + (64 * 64 * 9 + 64)) + (64 * 64 + 64)


def test_bad_device_option_is_one_clear_error():
    with pytest.raises(ValueError, match="--device"):
        common.resolve_devices("tpu")


def test_eval_scale_main_counts_every_image_and_pixel():
    eval_scale = _load("eval_scale")
    (row,) = eval_scale.main(["--scenarios", "full", "--scale", "0.02", "--pool", "1", "--batch", "2"])
    counts = {c: max(2, round(n * 0.02)) for c, (n, _, _) in eval_scale.MVTEC_TEST_SET.items()}
    assert row["images"] == sum(counts.values()) and row["categories"] == 15
    assert row["pixels"] == sum(counts[c] * side**2 for c, (_, _, side) in eval_scale.MVTEC_TEST_SET.items())
    assert 0 < row["micro_pixel_aupro"] < 1 and row["seconds"] > 0 and row["peak_bytes"] >= 0


@pytest.mark.parametrize("taps", [[3, 6, 9], [7, 9, 10, 11], [0, 11], [5]])
def test_training_step_flops_match_torch_flop_counter_on_tiny(taps):
    from feclip.losses import FEClipLoss
    from feclip.train.loop import TrainingStep

    clip = common.create_backbone("feclip-tiny", CPU)
    model = common.build_feclip(clip, "feclip-tiny", CPU, tap_indices=taps).train()
    clip.train()  # nn.MultiheadAttention's fused inference kernel is invisible to FlopCounterMode
    images, masks = torch.randn(2, 3, 96, 96), torch.zeros(2, 96, 96)
    masks[1, 10:30, 10:30] = 1
    with FlopCounterMode(display=False) as counter:
        output = TrainingStep(model)(images)
        loss = FEClipLoss()(output.tap_scores, output.tap_maps, torch.tensor([0, 1]), masks).total
        forward = counter.get_total_flops()
        loss.backward()
    backward = counter.get_total_flops() - forward
    shape = flop_count.VitShape.from_open_clip_config("feclip-tiny")
    flops = flop_count.training_step_flops(shape, taps, batch=2)
    attention = 2 * 2 * 2 * shape.tokens**2 * shape.width  # the CPU attention kernel is not counted: add it
    assert forward + (taps[-1] + 1) * attention == pytest.approx(flops["forward"], rel=1e-12)
    assert backward + (taps[-1] - taps[0]) * 2 * attention == pytest.approx(flops["backward"], rel=1e-12)
    cached = flop_count.training_step_flops(shape, taps, batch=2, cached_prefix=True)
    assert flops["step"] - cached["step"] == flops["prefix"] == pytest.approx(
        flops["forward"] - flop_count.flop_breakdown(shape, taps, batch=2)["adapters"]
        - (taps[-1] + 1 - taps[0]) * flop_count.block_flops(shape, 2))


def test_prefix_cache_main_on_tiny(tmp_path):
    prefix_cache = _load("prefix_cache")
    (row,) = prefix_cache.main(["--backbones", "feclip-tiny", "--images", "4", "--batch", "2", "--epochs", "2",
                                "--rounds", "1", "--json", str(tmp_path / "p.json")])
    assert row["cached_later_s"] > 0 and row["uncached_later_s"] > 0 and row["speedup_later"] > 0
    assert len(row["samples"]["cached"][0]) == 2  # one run of two epochs
    assert 0 < row["flop_share_skipped"] < 1 and row["flop_bound"] == pytest.approx(1 / (1 - row["flop_share_skipped"]))
    assert row["cache_mib"] == pytest.approx(4 * 145 * 64 * 4 / 2**20)
    assert (tmp_path / "p.json").stat().st_size > 0


def test_full_epoch_main_on_tiny(tmp_path):
    """The full recipe's epoch, timed end to end (here: tiny backbone, 6 small JPEGs in VisA's layout, the CPU)."""
    full_epoch = _load("full_epoch")
    row = full_epoch.main(["--device", "cpu", "--backbone", "feclip-tiny", "--images", "6", "--size", "150", "100",
                           "--batch-size", "4", "--num-workers", "0", "--threads", "1", "--quiet",
                           "--json", str(tmp_path / "f.json")])
    assert (row["images"], row["steps"], row["batch"], row["amp"]) == (6, 2, 4, "off")  # batches of 4 and 2; CPU: fp32
    config = row["train_config"]
    assert (config["lr"], config["fc_patch_lr"], config["epochs"], config["amp"]) == (5e-4, 5e-6, 1, "auto")  # full recipe
    assert row["images_per_s"] == pytest.approx(6 / row["epoch_s"], rel=1e-12)
    assert row["visa_epoch_s"] == pytest.approx(2162 / row["images_per_s"], rel=1e-12)
    assert row["recipe_s"] == pytest.approx(9 * row["visa_epoch_s"], rel=1e-12)
    assert math.isfinite(row["loss"]) and row["train_call_s"] >= row["epoch_s"] > 0
    assert (tmp_path / "f.json").stat().st_size > 0
