"""The toy world: CLIP zero-shot, WinCLIP, and FE-CLIP before and after training, all on the toy CLIP.

For each seed the synthetic benchmark is generated (all three families, default sizes), and four
detectors share the pretrained toy CLIP (:func:`feclip.toy_clip.load_toy_clip`):

* ``clip_zero_shot``: :class:`feclip.baselines.ClipZeroShot` with the paper's prompt pair (CLS
  score and its naive patch map);
* ``winclip``: :class:`feclip.baselines.WinClip`, class name ``"object"``, default scales;
* ``feclip_untrained``: FE-CLIP with freshly initialised adapters and ``fc_patch`` (seeded);
* ``feclip_trained``: the same model after training on the **objects** family's test split with
  the smoke profile's recipe (:data:`feclip.profiles.SMOKE` through :func:`feclip.recipes.train_config`;
  ``--epochs`` etc. override it, and the overrides are recorded).

Every detector is evaluated with :func:`feclip.evaluate.evaluate` (its defaults, map smoothing
included) on the **textures** family (never seen by FE-CLIP's training; seen by the toy CLIP's
pretraining) and on **assemblies** (seen by no training at all). The summary is the mean over
seeds of the macro (per-category mean) metrics, and the issue's targets are checked on it.

Run from the repository root::

    python benchmarks/toy_world.py --seeds 0 1 2 --threads 2 --json runs/toy_world.json --markdown runs/toy_world.md
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, markdown_table, set_threads, write_json  # noqa: E402

from feclip.baselines import ClipZeroShot, WinClip  # noqa: E402
from feclip.data import build_dataset, transforms_for_clip  # noqa: E402
from feclip.data.synthetic import generate_benchmark  # noqa: E402
from feclip.evaluate import evaluate  # noqa: E402
from feclip.model import FEClip  # noqa: E402
from feclip.profiles import SMOKE  # noqa: E402
from feclip.prompts import PAPER_PROMPTS  # noqa: E402
from feclip.recipes import train_config  # noqa: E402
from feclip.toy_clip import TOY_TAG, TOY_WEIGHTS, load_toy_clip, toy_metadata  # noqa: E402
from feclip.train import train  # noqa: E402

METHODS = ("clip_zero_shot", "winclip", "feclip_untrained", "feclip_trained")
METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
TRAIN_FAMILY, UNSEEN_FAMILY, HELD_OUT_FAMILY = "objects", "textures", "assemblies"


def _feclip(weights: Path, seed: int) -> FEClip:
    """FE-CLIP on the toy CLIP, its adapters and ``fc_patch`` initialised from ``seed`` (global RNG untouched)."""
    clip, tokenizer = load_toy_clip(path=weights)
    pretrained = TOY_TAG if weights == TOY_WEIGHTS else str(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FEClip(clip, tokenizer, backbone="feclip-tiny", pretrained=pretrained, backbone_seed=0)


def run_seed(seed: int, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """All detectors on one seed's benchmark; one row per (method, family)."""
    paths = generate_benchmark(workdir / f"data-{seed}", seed=seed, image_size=args.image_size, n_train_good=0,
                               n_test_good=args.n_good, n_test_defect_per_type=args.n_defect)
    transform = transforms_for_clip(load_toy_clip(path=args.weights)[0])
    families = (UNSEEN_FAMILY, HELD_OUT_FAMILY)
    eval_sets = {f: build_dataset(f"synth:{paths[f]}", split="test", transform=transform) for f in families}
    overrides = {k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                       fc_patch_lr=args.fc_patch_lr).items() if v is not None}
    config = train_config(dataclasses.replace(SMOKE, seed=seed), num_workers=0, device="cpu", **overrides)
    rows: list[dict[str, Any]] = []

    def measure(method: str, model: Any, extra: dict[str, Any]) -> None:
        for family, dataset in eval_sets.items():
            began = time.perf_counter()
            table = evaluate(model, dataset, batch_size=16, progress=False)
            rows.append(dict(seed=seed, method=method, family=family, **{m: float(table.loc["macro", m]) for m in METRICS},
                             n_images=int(table.loc["macro", "n_images"]), eval_s=time.perf_counter() - began, **extra))
            print(f"seed {seed} {method:17s} {family:10s} " + " ".join(f"{m} {rows[-1][m]:.3f}" for m in METRICS), flush=True)

    measure("clip_zero_shot", ClipZeroShot(*load_toy_clip(path=args.weights), PAPER_PROMPTS), {})
    measure("winclip", WinClip(*load_toy_clip(path=args.weights), class_name="object"), {})
    measure("feclip_untrained", _feclip(args.weights, seed), {})
    model = _feclip(args.weights, seed)
    train_set = build_dataset(f"synth:{paths[TRAIN_FAMILY]}", split="test", transform=transform)
    began = time.perf_counter()
    history = train(model, train_set, config, out_dir=workdir / f"run-{seed}", progress=False)
    extra = dict(train_s=time.perf_counter() - began, train_images=len(train_set), final_loss=history[-1]["loss"])
    measure("feclip_trained", model, extra)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every metric, per (method, family)."""
    summary = []
    for family in (UNSEEN_FAMILY, HELD_OUT_FAMILY):
        for method in METHODS:
            chosen = [r for r in rows if r["method"] == method and r["family"] == family]
            if not chosen:
                continue
            row: dict[str, Any] = dict(family=family, method=method, seeds=len(chosen))
            for metric in METRICS:
                values = np.array([r[metric] for r in chosen])
                row[metric], row[f"{metric}_std"] = float(values.mean()), float(values.std())
            summary.append(row)
    return summary


def check_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on the seed-mean macro metrics (and per seed for the held-out family)."""
    mean = {(r["method"], r["family"]): r for r in summarise(rows)}

    def get(method: str, metric: str, family: str = UNSEEN_FAMILY) -> float:
        return mean[(method, family)][metric]

    trained_pixel = get("feclip_trained", "pixel_auroc")
    checks = [
        ("toy-CLIP zero-shot image AUROC >= 0.75", get("clip_zero_shot", "image_auroc"), 0.75),
        ("WinCLIP pixel AUROC >= 0.80", get("winclip", "pixel_auroc"), 0.80),
        ("trained FE-CLIP pixel AUROC >= 0.90", trained_pixel, 0.90),
        ("trained FE-CLIP pixel AUROC - WinCLIP's >= 0.05", trained_pixel - get("winclip", "pixel_auroc"), 0.05),
        ("trained FE-CLIP pixel AUROC - CLIP naive map's >= 0.05", trained_pixel - get("clip_zero_shot", "pixel_auroc"), 0.05),
        ("trained FE-CLIP image AUROC - CLIP zero-shot's >= 0", get("feclip_trained", "image_auroc") - get("clip_zero_shot", "image_auroc"), 0.0),
    ]
    for seed in sorted({r["seed"] for r in rows}):
        def pixel(method: str) -> float:
            return next(r["pixel_auroc"] for r in rows if r["seed"] == seed and r["method"] == method and r["family"] == HELD_OUT_FAMILY)
        checks.append((f"{HELD_OUT_FAMILY}, seed {seed}: trained - untrained FE-CLIP pixel AUROC >= 0.05",
                       pixel("feclip_trained") - pixel("feclip_untrained"), 0.05))
    return [dict(target=name, value=value, threshold=threshold, verdict="PASS" if value >= threshold else "FAIL")
            for name, value, threshold in checks]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="benchmark and initialisation seeds")
    parser.add_argument("--weights", type=Path, default=TOY_WEIGHTS, help="toy CLIP weights (default: the shipped file)")
    parser.add_argument("--image-size", type=int, default=96, help="synthetic image side (default: 96)")
    parser.add_argument("--n-good", type=int, default=8, help="normal test images per category (default: 8)")
    parser.add_argument("--n-defect", type=int, default=3, help="test images per defect type and category (default: 3)")
    parser.add_argument("--epochs", type=int, default=None, help=f"FE-CLIP training epochs (default: smoke's {SMOKE.epochs})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"training batch (default: smoke's {SMOKE.batch_size})")
    parser.add_argument("--lr", type=float, default=None, help=f"adapter learning rate (default: smoke's {SMOKE.adapter_lr})")
    parser.add_argument("--fc-patch-lr", type=float, default=None, help=f"fc_patch learning rate (default: smoke's {SMOKE.fc_patch_lr})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=None, help="where data and runs go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write every row, the summary and the environment here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows", "summary", "targets", "environment", "weights"}``."""
    args = _parser().parse_args(argv)
    set_threads(args.threads)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toy_world-") as scratch:
        workdir = args.workdir or Path(scratch)
        rows = [row for seed in args.seeds for row in run_seed(seed, args, workdir)]
    summary, targets = summarise(rows), check_targets(rows)
    metadata = toy_metadata(args.weights)
    result = dict(rows=rows, summary=summary, targets=targets, environment=environment(torch.device("cpu")),
                  weights=dict(path=str(args.weights), command=metadata.get("command"), date=metadata.get("date")),
                  wall_s=time.perf_counter() - began, argv=list(sys.argv[1:] if argv is None else argv))
    columns = ["family", "method", "seeds"] + [c for m in METRICS for c in (m, f"{m}_std")]
    text = "\n\n".join([markdown_table(summary, columns), markdown_table(targets, ["target", "value", "threshold", "verdict"]),
                        markdown_table(rows, ["seed", "family", "method", *METRICS, "eval_s", "train_s"])])
    print(text)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
