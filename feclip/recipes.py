"""Recipes that put a profile to work: its model, its data sets, and "load or train".

The notebooks and smoke runs are thin callers of these. ``load_or_train`` follows the
"load or train" habit: a chapter that needs a trained FE-CLIP loads the checkpoint an
earlier chapter (or an earlier session) wrote, resumes it if training was cut off, and
trains from scratch only when there is nothing to load.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from feclip.checkpoint import read_metadata
from feclip.data import AnomalyDataset, build_dataset, transforms_for_clip
from feclip.model import FEClip, FEClipConfig
from feclip.profiles import Profile, ensure_data
from feclip.train import History, TrainConfig, train

# Training settings that make a finished run a different run (device, workers and logging do not).
_RUN_DEFINING = ("epochs", "batch_size", "lr", "fc_patch_lr", "w_cls", "w_mask", "supervise", "tap_reduction",
                 "focal_gamma", "focal_alpha", "dice_smooth", "seed")
# Model settings that change what training produces even when left at their defaults.
_MODEL_RUN_DEFINING = ("fc_patch_init", "resize_mode")
# Model settings that only change how a trained model reports: applied to a loaded model, never compared.
_INFERENCE_ONLY = ("map_score",)

__all__ = ["build_model", "profile_datasets", "train_config", "default_run_dir", "load_or_train"]


def build_model(profile: Profile, **overrides: Any) -> FEClip:
    """A fresh FE-CLIP on the profile's backbone.

    Args:
        profile: The run profile.
        **overrides: Fields of :class:`feclip.model.FEClipConfig` (taps, lambda, ...).

    Returns:
        The model on ``profile.device``.
    """
    return FEClip.from_open_clip(
        profile.backbone, profile.pretrained, device=profile.device, seed=profile.seed, **overrides
    )


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
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    train_set = build_dataset(profile.spec(profile.train_dataset), split="test", transform=transform)
    eval_set = build_dataset(profile.spec(profile.eval_dataset), split="test", transform=transform)
    return train_set, eval_set.limit_per_category(profile.max_images_per_category)


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


def load_or_train(
    profile: Profile,
    run_dir: str | Path | None = None,
    *,
    progress: bool = False,
    train_overrides: dict[str, Any] | None = None,
    **model_overrides: Any,
) -> tuple[FEClip, History]:
    """A trained FE-CLIP for the profile: loaded if its run finished, resumed if cut off, else trained.

    Args:
        profile: The run profile.
        run_dir: Run folder (default :func:`default_run_dir`); use one folder per configuration.
        progress: Show tqdm bars while training.
        train_overrides: Fields of :class:`feclip.train.TrainConfig` to change.
        **model_overrides: Fields of :class:`feclip.model.FEClipConfig` to change.

    Returns:
        ``(model, history)``, the model in eval mode.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(profile)
    config = train_config(profile, **(train_overrides or {}))
    checkpoint = run_dir / "last.safetensors"
    if checkpoint.is_file() and (run_dir / "history.json").is_file():
        history = History.load(run_dir)
        if len(history) >= config.epochs:
            model = FEClip.load(checkpoint, device=profile.device)
            saved = read_metadata(checkpoint).get("extra", {}).get("train_config")
            saved_training = TrainConfig.from_dict(saved).to_dict() if saved else {}
            wanted_training = config.to_dict()
            wanted_model = {name: getattr(FEClipConfig(), name) for name in _MODEL_RUN_DEFINING}
            wanted_model |= {k: v for k, v in model_overrides.items() if k not in _INFERENCE_ONLY}
            differing = {k: v for k, v in wanted_model.items() if getattr(model.config, k) != v}
            differing |= {k: wanted_training[k] for k in _RUN_DEFINING if saved_training.get(k, wanted_training[k]) != wanted_training[k]}
            if differing:
                raise ValueError(f"{run_dir} holds a run with another configuration ({differing}); use another run_dir")
            for name in _INFERENCE_ONLY:
                if name in model_overrides:
                    setattr(model.config, name, model_overrides[name])
            return model.eval(), history
    model = build_model(profile, **model_overrides)
    train_set, _ = profile_datasets(profile, model)
    history = train(model, train_set, config, out_dir=run_dir, resume="auto", progress=progress)
    return model.eval(), history
