"""Recipes that put a run to work: its model, its data sets, its training config, and "load or train".

This is the one place a training run is set up. The notebooks call :func:`load_or_train` (and the
pieces), ``feclip train`` and ``feclip reproduce`` build their model, data and config with the same
functions:

* :func:`build_model`: a fresh FE-CLIP on a profile's backbone (the backbone from
  :func:`feclip.backbones.create_clip`, the adapters seeded by the profile's seed);
* :func:`training_data`: the training set (the auxiliary data set's test split), its validation set
  (held out of it, or another auxiliary set) and the named target, checked by :mod:`feclip.protocol`;
* :func:`train_config`: the profile's training hyper-parameters.

``load_or_train`` follows the "load or train" habit: a chapter that needs a trained FE-CLIP loads
the checkpoint an earlier chapter (or an earlier session) wrote, resumes it if training was cut off,
and trains from scratch only when there is nothing to load.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feclip.backbones import create_clip
from feclip.checkpoint import read_metadata, remove_stale_temporaries
from feclip.config import FEClipConfig
from feclip.data import AnomalyDataset, build_dataset, transforms_for_clip
from feclip.dct import canonical_basis
from feclip.model import FEClip
from feclip.profiles import Profile, ensure_data
from feclip.protocol import check_training_data, data_record
from feclip.run_folder import RunLock
from feclip.taps import TAP_SETS, tap_set
from feclip.train import History, TrainConfig, train

# Training settings that make a finished run a different run (device, workers and logging do not).
_RUN_DEFINING = ("epochs", "batch_size", "lr", "fc_patch_lr", "w_cls", "w_mask", "supervise", "tap_reduction",
                 "focal_gamma", "focal_alpha", "dice_smooth", "seed")
# Model settings that change what training produces even when left at their defaults.
_MODEL_RUN_DEFINING = ("fc_patch_init", "resize_mode")
# How long load_or_train waits for another process training the same run folder (a second notebook kernel).
_LOCK_WAIT_S = 24 * 3600.0
# Model settings that only change how a trained model reports: applied to a loaded model, never compared.
_INFERENCE_ONLY = ("map_score",)

__all__ = ["ADAPTERS_ENV", "TrainingData", "build_model", "published_adapters", "training_data", "profile_datasets", "train_config", "default_run_dir",
           "load_or_train"]


def build_model(profile: Profile, *, quick_gelu: bool | None = None, backbone_seed: int | None = None,
                **overrides: Any) -> FEClip:
    """A fresh FE-CLIP on the profile's backbone.

    Args:
        profile: The run profile: its ``backbone``, ``pretrained``, ``device`` and ``seed`` (of the adapters'
            and ``fc_patch``'s initialisation, and of a random backbone unless ``backbone_seed`` says otherwise).
        quick_gelu: The activation of a weights file that cannot tell (:func:`feclip.backbones.uses_quick_gelu`).
        backbone_seed: Seed of a random backbone (``pretrained=None``); default: ``profile.seed``.
        **overrides: Fields of :class:`feclip.config.FEClipConfig` (taps, lambda, ...); ``tap_indices`` may
            name a tap set (``"spread_5"``), scaled to the backbone's depth.

    Returns:
        The model on ``profile.device``; the same call builds the same model whatever the global RNG.
    """
    seed = profile.seed if backbone_seed is None else backbone_seed
    clip, tokenizer = create_clip(profile.backbone, profile.pretrained, device=profile.device, seed=seed,
                                  quick_gelu=quick_gelu)
    overrides = _resolved(overrides, len(clip.visual.transformer.resblocks))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(profile.seed)  # the adapters' and fc_patch's initialisation
        model = FEClip(clip, tokenizer, **overrides)
    return model.to(profile.device)


def _resolved(overrides: dict[str, Any], depth: int) -> dict[str, Any]:
    """Model overrides as the config stores them: a tap-set name as its blocks for ``depth``, the basis canonical."""
    resolved = dict(overrides)
    taps = resolved.get("tap_indices")
    if isinstance(taps, str):
        if taps not in TAP_SETS:
            raise ValueError(f"unknown tap set {taps!r}; choose one of {sorted(TAP_SETS)}")
        resolved["tap_indices"] = tap_set(taps, depth)
    elif taps is not None:
        resolved["tap_indices"] = sorted(taps)
    if "basis" in resolved:
        resolved["basis"] = canonical_basis(resolved["basis"])
    return resolved


@dataclass
class TrainingData:
    """The data sets of one training run, checked against the zero-shot protocol.

    Attributes:
        train: The training set: the auxiliary data set's test split (less any held-out part).
        val: The validation set (auxiliary side only), or ``None``.
        target: The data set the run will be evaluated on, if named (never trained on), or ``None``.
        run_info: What the checkpoints record about them (``extra["run"]``, :func:`feclip.protocol.data_record`).
    """

    train: AnomalyDataset
    val: AnomalyDataset | None
    target: AnomalyDataset | None
    run_info: dict[str, Any]


def training_data(
    model: FEClip,
    train_spec: str,
    *,
    val_spec: str | None = None,
    val_fraction: float | None = None,
    target_spec: str | None = None,
    seed: int = 0,
) -> TrainingData:
    """Build and check a run's data sets, transformed for ``model``'s backbone and resize mode.

    Args:
        model: The model the items must fit.
        train_spec: ``KIND:PATH`` of the auxiliary data set (its test split is trained on).
        val_spec: ``KIND:PATH`` of another auxiliary data set to validate on.
        val_fraction: Or: the share of the training set to hold out for validation (stratified, seeded).
        target_spec: ``KIND:PATH`` of the data set the run will be evaluated on (checked, recorded, not trained on).
        seed: Seed of the held-out split.

    Raises:
        ValueError: A fraction outside ``(0, 1)``, or both ways of validating.
        feclip.protocol.ProtocolError: The validation set is training data, or the target shares categories.
    """
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if val_fraction is not None and val_spec is not None:
        raise ValueError("validate on a held-out fraction of the training set or on another data set, not both")
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    train_set = build_dataset(train_spec, split="test", transform=transform)
    val_set = build_dataset(val_spec, split="test", transform=transform) if val_spec else None
    if val_fraction is not None:
        train_set, val_set = train_set.holdout(val_fraction, seed=seed)
    target_set = build_dataset(target_spec, split="test", transform=transform) if target_spec else None
    check_training_data(train_set, val_set, target_set)
    holdout = {"holdout_fraction": val_fraction} if val_fraction else {}
    run_info = {"train": data_record(train_spec, train_set), "val": data_record(val_spec, val_set, **holdout),
                "target": data_record(target_spec, target_set)}
    return TrainingData(train_set, val_set, target_set, run_info)


def profile_datasets(profile: Profile, model: FEClip) -> tuple[AnomalyDataset, AnomalyDataset]:
    """The zero-shot protocol's two data sets, transformed for ``model``'s backbone.

    Training uses the **test split of the auxiliary data set** (it has anomalies and masks):
    VisA in the full profile, the synthetic *objects* family in the smoke profile. Evaluation
    uses the test split of the target data set, never seen in training: MVTec AD, or the
    synthetic *textures* family.

    Args:
        profile: The run profile (its data is generated first if the smoke profile needs it).
        model: The model whose input size and normalisation the items must match.

    Returns:
        ``(train_dataset, eval_dataset)``.
    """
    ensure_data(profile)
    data = training_data(model, profile.spec(profile.train_dataset), target_spec=profile.spec(profile.eval_dataset))
    return data.train, data.target.limit_per_category(profile.max_images_per_category)


def train_config(profile: Profile, **overrides: Any) -> TrainConfig:
    """The profile's training hyper-parameters, with optional overrides.

    Args:
        profile: The run profile.
        **overrides: Fields of :class:`feclip.train.TrainConfig`.

    Returns:
        The configuration.
    """
    config = TrainConfig(
        epochs=profile.epochs,
        batch_size=profile.batch_size,
        lr=profile.adapter_lr,
        fc_patch_lr=profile.fc_patch_lr,
        seed=profile.seed,
        num_workers=profile.num_workers,
        device=profile.device,
    )
    return dataclasses.replace(config, **overrides)


def default_run_dir(profile: Profile, name: str = "feclip") -> Path:
    """Where a profile's runs live: ``$FECLIP_RUNS/<profile>/<name>`` (default ``~/.cache/feclip/runs``)."""
    root = Path(os.environ.get("FECLIP_RUNS", Path.home() / ".cache" / "feclip" / "runs")).expanduser()
    return root / profile.name / name


def _finished_run(profile: Profile, run_dir: Path, config: TrainConfig, model_overrides: dict[str, Any]
                  ) -> tuple[FEClip, History] | None:
    """The run in ``run_dir`` if it finished with this configuration; ``None`` if it did not finish."""
    checkpoint = run_dir / "last.safetensors"
    if not (checkpoint.is_file() and (run_dir / "history.json").is_file()):
        return None
    history = History.load(run_dir)
    if len(history) < config.epochs:
        return None
    model = FEClip.load(checkpoint, device=profile.device)
    saved = read_metadata(checkpoint).get("extra", {}).get("train_config")
    saved_training = TrainConfig.from_dict(saved).to_dict() if saved else {}
    wanted_training = config.to_dict()
    wanted_model = {name: getattr(FEClipConfig(), name) for name in _MODEL_RUN_DEFINING}
    depth = len(model.clip.visual.transformer.resblocks)
    wanted_model |= {k: v for k, v in _resolved(model_overrides, depth).items() if k not in _INFERENCE_ONLY}
    differing = {k: v for k, v in wanted_model.items() if getattr(model.config, k) != v}
    differing |= {k: wanted_training[k] for k in _RUN_DEFINING if saved_training.get(k, wanted_training[k]) != wanted_training[k]}
    if differing:
        raise ValueError(f"{run_dir} holds a run with another configuration ({differing}); use another run_dir")
    for name in _INFERENCE_ONLY:
        if name in model_overrides:
            setattr(model.config, name, model_overrides[name])
    return model.eval(), history


ADAPTERS_ENV = "FECLIP_ADAPTERS"


def published_adapters(profile: Profile) -> FEClip | None:
    """The published FE-CLIP named by ``$FECLIP_ADAPTERS`` (a checkpoint URL or path), or ``None`` if unset.

    A reader who sets it skips training: :func:`load_or_train`'s default run is this model. It must
    have been trained on the profile's backbone.

    Args:
        profile: The run profile (its backbone and device).

    Returns:
        The model in eval mode, or ``None``.

    Raises:
        ValueError: The checkpoint was trained on another backbone than the profile's.
    """
    source = os.environ.get(ADAPTERS_ENV)
    if not source:
        return None
    model = FEClip.from_pretrained(source, device=profile.device)
    if model.config.backbone != profile.backbone:
        raise ValueError(f"{ADAPTERS_ENV}={source} holds adapters for {model.config.backbone}, "
                         f"but the {profile.name} profile runs {profile.backbone}")
    return model.eval()


def load_or_train(
    profile: Profile,
    run_dir: str | Path | None = None,
    *,
    progress: bool | None = None,
    train_overrides: dict[str, Any] | None = None,
    **model_overrides: Any,
) -> tuple[FEClip, History]:
    """A trained FE-CLIP for the profile: loaded if its run finished, resumed if cut off, else trained.

    The run folder's lock (:class:`feclip.run_folder.RunLock`) is held meanwhile: a second process asking
    for the same run waits for the first to finish, then loads what it trained. The profile's default
    run (no ``run_dir``, no overrides) is the published model of ``$FECLIP_ADAPTERS`` when that is set
    (:func:`published_adapters`; its history is then empty).

    Args:
        profile: The run profile.
        run_dir: Run folder (default :func:`default_run_dir`); use one folder per configuration.
        progress: Show tqdm bars while training (default: in the full profile, where an epoch takes minutes).
        train_overrides: Fields of :class:`feclip.train.TrainConfig` to change.
        **model_overrides: Fields of :class:`feclip.config.FEClipConfig` to change.

    Returns:
        ``(model, history)``, the model in eval mode.
    """
    if run_dir is None and not train_overrides and not model_overrides:
        published = published_adapters(profile)
        if published is not None:
            return published, History()
    progress = not profile.is_smoke if progress is None else progress
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(profile)
    config = train_config(profile, **(train_overrides or {}))
    with RunLock(run_dir).acquire(wait_s=_LOCK_WAIT_S):  # another kernel training this run: wait, then load it
        remove_stale_temporaries(run_dir)  # what a killed kernel left half-written
        finished = _finished_run(profile, run_dir, config, model_overrides)
        if finished is not None:
            return finished
        model = build_model(profile, **model_overrides)
        ensure_data(profile)
        data = training_data(model, profile.spec(profile.train_dataset), target_spec=profile.spec(profile.eval_dataset))
        history = train(model, data.train, config, out_dir=run_dir, resume="auto", progress=progress,
                        run_info=data.run_info)
    return model.eval(), history
