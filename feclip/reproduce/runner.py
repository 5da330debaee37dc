"""Run the paper's protocol: train each (direction, seed) once, score each target at each map sigma once, resume.

:func:`reproduce` resolves the profile, finds the data sets (writing the smoke profile's synthetic
stand-ins first), picks the output folder (:func:`~feclip.reproduce.plan.choose_output_folder`) and
works through the plan's runs. Nothing finished is done again:

* a run whose evaluations are all on disk is skipped without loading its model;
* otherwise :func:`feclip.recipes.load_or_train` loads the run if it finished, resumes it if it was
  cut off, and trains it only from scratch when nothing was saved;
* each evaluation table is written (atomically) as soon as it exists, keyed by direction, seed,
  target and sigma, and read back instead of recomputed.

Several sigmas cost one pass of the model (:func:`evaluate_at_sigmas`): the first evaluation records
every batch's scores and maps, the others replay them through :func:`feclip.evaluate.evaluate` with
their own sigma; only the images and masks are read again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from feclip.checkpoint import atomic_write
from feclip.data import AnomalyDataset, build_dataset, transforms_for_clip
from feclip.data.download import dataset_spec
from feclip.data.sources import get_source
from feclip.evaluate import evaluate
from feclip.metrics import METRIC_COLUMNS
from feclip.model import FEClip
from feclip.predictor import AnomalyPrediction
from feclip.profiles import Profile, resolve_profile
from feclip.recipes import load_or_train
from feclip.reproduce.plan import (
    DEFAULT_MAP_SIGMAS,
    DEFAULT_SEEDS,
    Plan,
    Run,
    choose_output_folder,
    find_targets,
    provenance,
    read_manifest,
    with_plan_settings,
    write_manifest,
)
from feclip.reproduce.smoke import SmokeSizes, write_smoke_data
from feclip.reproduce.tables import build_tables, write_tables

__all__ = ["Reproduction", "evaluate_at_sigmas", "read_evaluation", "reproduce"]


def _say(message: str) -> None:
    print(f"feclip reproduce: {message}", file=sys.stderr, flush=True)


@dataclass
class Reproduction:
    """What :func:`reproduce` produced.

    Attributes:
        out: The output folder.
        per_seed: One row per (direction, seed, target, sigma): macro metrics as fractions and what produced them.
        summary: Ours (mean and std over seeds) and the published numbers, in percent, one row per source.
        files: The tables written: ``per_seed_csv``, ``per_seed_md``, ``summary_csv``, ``summary_md``.
    """

    out: Path
    per_seed: pd.DataFrame
    summary: pd.DataFrame
    files: dict[str, Path]


# --------------------------------------------------------------------------- one pass, several sigmas


def _fingerprint(images: Tensor) -> Tensor:
    """A strided sample of a batch, to check that a replayed batch is the recorded one."""
    return images[:, :, ::7, ::7].detach().float().cpu()


class _Recorder:
    """Runs the model and keeps every batch's scores and maps (on the CPU) for :class:`_Replay`."""

    def __init__(self, model: FEClip) -> None:
        self.model = model
        self.batches: list[tuple[Tensor, Tensor, Tensor]] = []

    def eval(self) -> _Recorder:
        self.model.eval()
        return self

    def __call__(self, images: Tensor) -> AnomalyPrediction:
        prediction = self.model(images)
        self.batches.append((_fingerprint(images), prediction.pred_score.detach().cpu(),
                             prediction.anomaly_map.detach().float().cpu()))
        return prediction


class _Replay:
    """Returns the recorded predictions batch by batch, checking that the images are the recorded ones."""

    def __init__(self, batches: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        self.batches, self.position = batches, 0

    def __call__(self, images: Tensor) -> AnomalyPrediction:
        if self.position >= len(self.batches):
            raise RuntimeError(f"more batches than the {len(self.batches)} recorded: the data set changed")
        fingerprint, scores, maps = self.batches[self.position]
        self.position += 1
        if fingerprint.shape != _fingerprint(images).shape or not torch.equal(fingerprint, _fingerprint(images)):
            raise RuntimeError(f"batch {self.position - 1} differs from the recorded one: the data set changed")
        return AnomalyPrediction(scores.to(images.device), maps.to(images.device))


def evaluate_at_sigmas(model: FEClip, dataset: AnomalyDataset, sigmas: Sequence[float],
                       **evaluate_kwargs: Any) -> dict[float, pd.DataFrame]:
    """:func:`feclip.evaluate.evaluate` at each map sigma, running the model once.

    Args:
        model: The trained model (moved to ``evaluate_kwargs["device"]`` if given).
        dataset: The test set.
        sigmas: Map smoothing sigmas in pixels (at least one).
        **evaluate_kwargs: ``batch_size``, ``num_workers``, ``device``, ``progress``... of ``evaluate``.

    Returns:
        ``{sigma: table}``, each table exactly what ``evaluate(model, dataset, map_sigma=sigma)`` gives.

    With several sigmas the maps are held on the CPU in float32 between the passes: 0.45 MB per
    image at 336 px, about 1 GB for VisA's 2,162 test images.
    """
    sigmas = [float(sigma) for sigma in sigmas]
    if not sigmas:
        raise ValueError("at least one map sigma is needed")
    model.to(evaluate_kwargs.get("device", "cpu"))
    recorder = _Recorder(model)
    tables = {sigmas[0]: evaluate(recorder if len(sigmas) > 1 else model, dataset, map_sigma=sigmas[0],
                                  **evaluate_kwargs)}
    for sigma in sigmas[1:]:
        replay = _Replay(recorder.batches)
        tables[sigma] = evaluate(replay, dataset, map_sigma=sigma, **evaluate_kwargs)
        if replay.position != len(recorder.batches):
            raise RuntimeError(f"only {replay.position} of {len(recorder.batches)} recorded batches were replayed")
    return tables


# --------------------------------------------------------------------------- evaluation files


def _write_evaluation(path: Path, table: pd.DataFrame, record: dict[str, Any]) -> None:
    """``<path>.csv`` (the table) then ``<path>`` (the record and the table): the JSON marks it done."""
    atomic_write(path.with_suffix(".csv"), lambda tmp: table.to_csv(tmp))
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="index")
    text = json.dumps({"record": record, "table": rows}, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_evaluation(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(record, table)`` of an evaluation file; the table indexed by category, ``macro`` and ``micro``.

    Raises:
        ValueError: The file is not an evaluation file (its path is named).
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        table = pd.DataFrame.from_dict(content["table"], orient="index")
        table = table.astype({column: float for column in (*METRIC_COLUMNS, "map_sigma")})
        table = table.astype({"n_images": int, "n_anomalous": int})
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a reproduction evaluation file ({error}); delete it to evaluate again") from error
    table.index.name = "category"
    return content["record"], table


# --------------------------------------------------------------------------- the plan


def _target_dataset(profile: Profile, model: FEClip, target: str) -> AnomalyDataset:
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    dataset = build_dataset(dataset_spec(target, profile.data_root), split="test", transform=transform)
    return dataset.limit_per_category(profile.max_images_per_category)


def _run_profile(plan: Plan, run: Run) -> Profile:
    """The profile :func:`feclip.recipes.load_or_train` trains this run with: its seed and its data sets."""
    first_target = get_source(run.targets[0])
    return dataclasses.replace(plan.profile, seed=run.seed, train_dataset=run.auxiliary,
                               eval_dataset=f"{first_target.reader}-{first_target.name}")


def _execute(plan: Plan, run: Run, out: Path, progress: bool) -> None:
    pending = {target: [s for s in plan.map_sigmas if not run.evaluation_file(out, target, s).is_file()]
               for target in run.targets}
    pending = {target: sigmas for target, sigmas in pending.items() if sigmas}
    if not pending:
        _say(f"train {run.auxiliary}, seed {run.seed}: every evaluation is on disk")
        return
    profile = _run_profile(plan, run)
    _say(f"train {run.auxiliary}, seed {run.seed}: load, resume or train {run.run_dir(out)}")
    model, history = load_or_train(profile, run.run_dir(out), progress=progress)
    for target, sigmas in pending.items():
        _say(f"evaluate {run.auxiliary} -> {target}, seed {run.seed}, map sigma {', '.join(f'{s:g}' for s in sigmas)}")
        dataset = _target_dataset(plan.profile, model, target)
        tables = evaluate_at_sigmas(model, dataset, sigmas, batch_size=profile.batch_size,
                                    num_workers=profile.num_workers, device=profile.device, progress=progress)
        for sigma, table in tables.items():
            record = {**provenance(profile), "auxiliary": run.auxiliary, "target": target, "seed": run.seed,
                      "map_sigma": sigma, "train_spec": profile.spec(profile.train_dataset),
                      "target_spec": dataset_spec(target, profile.data_root), "epochs_trained": len(history),
                      "resize_mode": model.config.resize_mode, "map_score": model.config.map_score,
                      "tap_indices": list(model.config.tap_indices),
                      "images_per_category": profile.max_images_per_category,
                      "run_dir": run.run_dir(out).relative_to(out).as_posix()}
            _write_evaluation(run.evaluation_file(out, target, sigma), table, record)


def reproduce(
    profile: str | Profile | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    datasets: Sequence[str] | None = None,
    *,
    results_root: str | Path = "results",
    out: str | Path | None = None,
    data_root: str | Path | None = None,
    epochs: int | None = None,
    images_per_category: int | None = None,
    sizes: SmokeSizes | None = None,
    map_sigmas: Sequence[float] = DEFAULT_MAP_SIGMAS,
    progress: bool = True,
) -> Reproduction:
    """Reproduce the paper's zero-shot protocol in both directions over several seeds, resumably.

    Trains on VisA's test split and evaluates on MVTec AD; trains on MVTec AD's test split and
    evaluates on VisA and every other data set under the data root. Writes per-seed rows and a
    summary with the paper's and the reference implementation's numbers beside ours
    (:mod:`feclip.reproduce.tables`) to ``results_root/<date>/`` (or ``out``). Running it again
    with the same settings continues an unfinished reproduction where it stopped.

    Args:
        profile: ``"full"``, ``"smoke"``, ``"auto"``, a :class:`~feclip.profiles.Profile`, or ``None``
            for ``$FECLIP_PROFILE`` (else ``auto``).
        seeds: Training seeds (default five, as the paper averages five runs).
        datasets: Targets to evaluate (names of :data:`feclip.data.sources.SOURCES`); ``None``: every
            downloaded one, MVTec AD and VisA required.
        results_root: Folder of the dated output folders.
        out: Output folder instead of ``results_root/<date>``.
        data_root: Full profile: the data root (default the profile's, ``$FECLIP_DATA``). Smoke profile:
            where the synthetic stand-ins are written (default beside the profile's synthetic data).
        epochs: Training epochs instead of the profile's.
        images_per_category: Cap on evaluated images per category instead of the profile's.
        sizes: Smoke profile only: how much synthetic data to write (default :class:`SmokeSizes`).
        map_sigmas: Map smoothing sigmas to score every evaluation at (default 0 and 4).
        progress: Show progress bars.

    Returns:
        The :class:`Reproduction`.
    """
    seeds = tuple(int(seed) for seed in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one, got {list(seeds)}")
    sigmas = tuple(float(sigma) for sigma in map_sigmas)
    if not sigmas or any(sigma < 0 for sigma in sigmas) or len(set(sigmas)) != len(sigmas):
        raise ValueError(f"map_sigmas must be distinct numbers >= 0, at least one, got {list(map_sigmas)}")
    base = profile if isinstance(profile, Profile) else resolve_profile(profile)
    if base.is_smoke:
        sizes = sizes or SmokeSizes()
        smoke_base = Path(data_root) if data_root is not None else base.data_root.with_name(f"{base.data_root.name}-reproduce")
        root = write_smoke_data(smoke_base.expanduser(), sizes)
    elif sizes is not None:
        raise ValueError("sizes apply to the smoke profile's synthetic data only")
    else:
        root = Path(data_root if data_root is not None else base.data_root).expanduser()
    plan_profile = with_plan_settings(base, data_root=root, epochs=epochs, images_per_category=images_per_category)
    plan = Plan(plan_profile, seeds, find_targets(root, datasets), sigmas, sizes.to_dict() if sizes else None)
    out = choose_output_folder(plan, Path(results_root).expanduser(), Path(out).expanduser() if out else None)
    _say(f"profile {plan_profile.name} ({plan_profile.backbone}, data {root}): writing to {out}, {len(plan.runs)} runs, "
         f"targets {', '.join(plan.targets)}, seeds {list(seeds)}")
    write_manifest(out, plan, finished=False)
    for number, run in enumerate(plan.runs, 1):
        _say(f"run {number}/{len(plan.runs)}")
        _execute(plan, run, out, progress)
    evaluations = [read_evaluation(run.evaluation_file(out, target, sigma))
                   for run in plan.runs for target in run.targets for sigma in plan.map_sigmas]
    per_seed, summary = build_tables(evaluations, plan.targets)
    files = write_tables(out, per_seed, summary, _produced_by(out, plan))
    write_manifest(out, plan, finished=True)
    _say(f"done: {files['summary_md']}")
    return Reproduction(out, per_seed, summary, files)


def _produced_by(out: Path, plan: Plan) -> dict[str, Any]:
    """What the summary says produced it: the plan's provenance now, its seeds and targets, when it started."""
    return {**provenance(plan.profile), "seeds": list(plan.seeds), "targets": list(plan.targets),
            "started": (read_manifest(out) or {}).get("started"),
            "images_per_category": plan.profile.max_images_per_category, "smoke_sizes": plan.smoke_sizes}
