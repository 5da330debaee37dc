"""FE-CLIP: a frozen open_clip ViT whose tapped blocks are enhanced by frequency adapters.

The forward pass runs the ViT block by block. After each tapped block the patch
tokens (never the CLS token) are replaced by the adapter's fused tokens, which then
feed the next block. At every tap:

* the CLS token -> ``ln_post`` -> CLIP's frozen projection gives an image embedding,
* the fused patch tokens -> ``ln_post`` -> the learnable ``fc_patch`` give patch embeddings,

and both are scored against the normal/anomalous text embeddings
(:func:`feclip.scoring.anomaly_probability`). Scores and maps are averaged over taps. The
reported map is that probability, or with ``map_score="logit_margin"`` the tap average of the
logit margins (:func:`feclip.scoring.anomaly_logit_margin`); training always uses the probabilities.

The forward pass is :class:`feclip.predictor.Detector`'s two steps: :meth:`FEClip.embed` (the
tapped ViT, itself :meth:`FEClip.prefix_tokens`, the frozen blocks before the first tap, then
:meth:`FEClip.embed_from_prefix`) and :meth:`FEClip.predict`. Checkpoints are written and read
by :mod:`feclip.checkpoint`; :func:`load_feclip` rebuilds a model, backbone included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.adapters import LFS_STATISTICS, FrequencyAdapter
from feclip.backbones import backbone_origin, create_clip, has_quick_gelu
from feclip.checkpoint import load_into, read_metadata, save_checkpoint
from feclip.config import FC_PATCH_INITS, MAP_SCORES, FEClipConfig
from feclip.data.transforms import RESIZE_MODES
from feclip.frozen import FrozenClipDetector
from feclip.predictor import AnomalyPrediction
from feclip.scoring import anomaly_logit_margin, anomaly_probability, logit_margin_bound
from feclip.taps import default_tap_indices
from feclip.vit import check_vit, embed_images, project_tokens

__all__ = ["FC_PATCH_INITS", "MAP_SCORES", "FEClipConfig", "FEClipOutput", "TapFeatures", "FEClip", "load_feclip"]


@dataclass
class FEClipOutput(AnomalyPrediction):
    """FE-CLIP's predictions, averaged over taps, with the per-tap values kept.

    Attributes:
        pred_score: Image anomaly probability, mean over taps, shape ``(B,)``.
        anomaly_map: Pixel anomaly map at the input resolution, shape ``(B, H, W)``: the tap mean of the
            probabilities, or of the logit margins with ``map_score="logit_margin"``
            (see :attr:`FEClip.anomaly_map_range`).
        tap_scores: Image probability per tap, shape ``(T, B)``.
        tap_maps: Patch probability per tap on the token grid, shape ``(T, B, h, w)`` (what the losses use,
            whatever ``map_score``).
    """

    tap_scores: Tensor = None  # type: ignore[assignment]
    tap_maps: Tensor = None  # type: ignore[assignment]


@dataclass
class TapFeatures:
    """What one tapped block produces.

    Attributes:
        block: Index of the tapped block.
        image_embedding: CLS token through ``ln_post`` and CLIP's projection, shape ``(B, E)``.
        patch_embedding: Fused patch tokens through ``ln_post`` and ``fc_patch``, shape ``(B, h, w, E)``.
        patch_tokens: Fused patch tokens in the ViT's width, shape ``(B, h, w, D)``.
    """

    block: int
    image_embedding: Tensor
    patch_embedding: Tensor
    patch_tokens: Tensor


class FEClip(FrozenClipDetector):
    """FE-CLIP on top of an injected open_clip CLIP model.

    The trained parts are initialised from torch's global RNG, so the same global seed gives the
    same model (:meth:`~feclip.frozen.FrozenClipDetector.from_open_clip` seeds it for you).

    Args:
        clip: An open_clip ``CLIP`` model with a ViT image tower. It is frozen here.
        tokenizer: Its tokenizer, used to embed the prompts (not needed when ``text_features`` is given).
        config: Hyper-parameters; keyword arguments override single fields. A given config is taken as is,
            ``backbone`` and ``pretrained`` included.
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings.
        **overrides: Fields of :class:`FEClipConfig`. Without a config, ``backbone``, ``pretrained`` and
            ``backbone_seed`` left out are read from a backbone made by :func:`feclip.backbones.create_clip`;
            for a backbone made otherwise they must be given, or :meth:`save` refuses.

    Raises:
        ValueError: An unknown option value, bad taps, or a ``quick_gelu`` the backbone does not have.

    Example:
        >>> clip, tokenizer = feclip.backbones.create_tiny_clip()
        >>> model = FEClip(clip, tokenizer)  # config.backbone == "feclip-tiny", config.pretrained is None
        >>> out = model(images)  # images (B, 3, 96, 96)
        >>> out.pred_score.shape, out.anomaly_map.shape
        (torch.Size([B]), torch.Size([B, 96, 96]))
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any | None = None,
        config: FEClipConfig | None = None,
        *,
        text_features: Tensor | None = None,
        **overrides: Any,
    ) -> None:
        visual = check_vit(clip)
        config = dataclasses.replace(config or _config_of_injected(clip, overrides), **overrides)
        for name, value, choices in (
            ("lfs_statistic", config.lfs_statistic, LFS_STATISTICS),
            ("fc_patch_init", config.fc_patch_init, FC_PATCH_INITS),
            ("map_score", config.map_score, MAP_SCORES),
            ("resize_mode", config.resize_mode, RESIZE_MODES),
        ):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
        quick_gelu = has_quick_gelu(clip)
        if config.quick_gelu is not None and config.quick_gelu != quick_gelu:
            raise ValueError(f"the config says quick_gelu={config.quick_gelu}, but the backbone uses "
                             f"{'QuickGELU' if quick_gelu else 'GELU'}")
        depth = len(visual.transformer.resblocks)
        taps = sorted(config.tap_indices) if config.tap_indices is not None else default_tap_indices(depth)
        if not taps or len(set(taps)) != len(taps) or taps[0] < 0 or taps[-1] >= depth:
            raise ValueError(f"tap_indices must be distinct blocks in [0, {depth - 1}], got {config.tap_indices}")
        _check_windows(config, tuple(visual.grid_size))
        super().__init__(clip, tokenizer, text_features, config.normal_prompts, config.anomalous_prompts)
        self.config = dataclasses.replace(config, tap_indices=taps, quick_gelu=quick_gelu)
        width = visual.conv1.out_channels
        self.grid_size: tuple[int, int] = tuple(visual.grid_size)
        self.adapters = nn.ModuleList(
            FrequencyAdapter(
                width,
                ffe_window=config.ffe_window,
                lfs_window=config.lfs_window,
                lfs_statistic=config.lfs_statistic,
                lambda_fuse=config.lambda_fuse,
                basis=config.basis,
                use_ffe=config.use_ffe,
                use_lfs=config.use_lfs,
            )
            for _ in taps
        )
        # "random" is the reference implementation's default: its note says that starting at visual.proj
        # "hurts zero-shot pixel performance significantly (0.74 -> 0.18)", CLIP's projected patch tokens
        # being poorly aligned with the text. The random draw happens for "clip" too, so that the choice
        # never shifts the global RNG for what is built after.
        self.fc_patch = nn.Linear(width, visual.proj.shape[1])
        if config.fc_patch_init == "clip":
            with torch.no_grad():
                self.fc_patch.weight.copy_(visual.proj.T)
                self.fc_patch.bias.zero_()

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any) -> FEClip:
        """Rebuild a model saved by :meth:`save`: :func:`load_feclip` (``clip``, ``tokenizer``, ``pretrained``...)."""
        return load_feclip(path, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_url: str | Path, sha256: str | None = None, *, device: torch.device | str = "cpu",
                        cache_dir: str | Path | None = None, progress: bool = True, **options: Any) -> FEClip:
        """Load a published checkpoint: a URL (downloaded once into a cache, :mod:`feclip.hub`) or a local one.

        Args:
            path_or_url: ``http(s)://`` URL of a ``.safetensors`` checkpoint (the file alone: its header holds
                the config), or a local checkpoint file or run folder.
            sha256: The file's published SHA-256, checked before anything is loaded.
            device: Device of the returned model.
            cache_dir: Where downloads are kept (default ``$FECLIP_CACHE/checkpoints``, else torch's hub cache).
            progress: Show a progress bar while downloading.
            **options: :func:`load_feclip`'s ``clip``, ``tokenizer``, ``pretrained`` and ``quick_gelu``.

        Returns:
            The model in eval mode, its backbone rebuilt from the checkpoint's record.
        """
        from feclip.hub import fetch_checkpoint

        checkpoint = fetch_checkpoint(path_or_url, sha256, cache_dir=cache_dir, progress=progress)
        return load_feclip(checkpoint, device=device, **options)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Save the trained weights (adapters and ``fc_patch``) and the config, atomically.

        See :func:`feclip.checkpoint.save_checkpoint`.
        """
        return save_checkpoint(self, path, extra=extra)

    def export_onnx(self, path: str | Path, **options: Any) -> Path:
        """Write the whole detector as one ONNX graph: :func:`feclip.export.export_onnx` (``batch_size``, ``opset``)."""
        from feclip.export import export_onnx  # needs the optional onnx packages only when called

        return export_onnx(self, path, **options)

    @property
    def tap_indices(self) -> list[int]:
        """The tapped blocks, sorted."""
        return list(self.config.tap_indices)

    @property
    def temperature(self) -> float:
        """Softmax temperature in use (CLIP's own when ``use_clip_logit_scale``)."""
        if self.config.use_clip_logit_scale:
            return float(1.0 / self.clip.logit_scale.exp())
        return self.config.temperature

    @property
    def anomaly_map_range(self) -> tuple[float, float]:
        """The interval every value of ``anomaly_map`` lies in: ``(0, 1)`` for probabilities, and for logit
        margins ``+-||t_anomalous - t_normal|| / tau`` (:func:`feclip.scoring.logit_margin_bound`), which
        changes with the prompts and the temperature."""
        if self.config.map_score == "probability":
            return (0.0, 1.0)
        bound = logit_margin_bound(self.text_features, self.temperature)
        return (-bound, bound)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters the optimiser should see, in the groups the trainer gives their own learning rates."""
        return {"adapters": list(self.adapters.parameters()), "fc_patch": list(self.fc_patch.parameters())}

    def prefix_tokens(self, images: Tensor) -> Tensor:
        """The tokens that enter the first tapped block: a fixed function of the image, no adapter before it.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            Tokens of shape ``(B, 1 + h*w, D)`` (CLS first), batch first whatever open_clip's layout.
        """
        visual = self.clip.visual
        batch_first = getattr(visual.transformer, "batch_first", False)
        x = embed_images(visual, images)  # (B, 1 + h*w, D)
        if not batch_first:
            x = x.transpose(0, 1)  # (1 + h*w, B, D), older open_clip
        for block in visual.transformer.resblocks[: self.tap_indices[0]]:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def embed_from_prefix(self, tokens: Tensor) -> list[TapFeatures]:
        """Run the tapped blocks from :meth:`prefix_tokens`' output on, with the adapters.

        Args:
            tokens: Tokens entering the first tapped block, shape ``(B, 1 + h*w, D)``.

        Returns:
            One :class:`TapFeatures` per tapped block, in block order.
        """
        visual = self.clip.visual
        batch_first = getattr(visual.transformer, "batch_first", False)
        height, width = self.grid_size
        adapter_at = dict(zip(self.tap_indices, self.adapters))
        first = self.tap_indices[0]
        x = tokens if batch_first else tokens.transpose(0, 1)
        features = []
        for index, block in enumerate(visual.transformer.resblocks[first : self.tap_indices[-1] + 1], start=first):
            x = block(x)
            if index not in adapter_at:
                continue
            tokens = x if batch_first else x.transpose(0, 1)  # (B, 1 + h*w, D)
            cls, patches = tokens[:, 0], tokens[:, 1:].reshape(tokens.shape[0], height, width, -1)
            fused = adapter_at[index](patches)  # (B, h, w, D)
            tokens = torch.cat([cls[:, None], fused.flatten(1, 2)], dim=1)
            x = tokens if batch_first else tokens.transpose(0, 1)
            features.append(
                TapFeatures(
                    block=index,
                    image_embedding=project_tokens(visual, cls),
                    patch_embedding=self.fc_patch(visual.ln_post(fused)),
                    patch_tokens=fused,
                )
            )
        return features

    def embed(self, images: Tensor) -> list[TapFeatures]:
        """Run the tapped ViT and return what every tap produces.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            One :class:`TapFeatures` per tapped block, in block order.
        """
        return self.embed_from_prefix(self.prefix_tokens(images))

    def tap_probabilities(self, taps: list[TapFeatures]) -> tuple[Tensor, Tensor]:
        """Per-tap anomaly probabilities of :meth:`embed`'s features: what the losses compare with the labels.

        Args:
            taps: Output of :meth:`embed`.

        Returns:
            ``(tap_scores (T, B), tap_maps (T, B, h, w))``, on the token grid (no upsampling).
        """
        temperature = self.temperature
        tap_scores = torch.stack([anomaly_probability(t.image_embedding, self.text_features, temperature) for t in taps])
        tap_maps = torch.stack([anomaly_probability(t.patch_embedding, self.text_features, temperature) for t in taps])
        return tap_scores, tap_maps

    def predict(self, taps: list[TapFeatures], image_size: tuple[int, int]) -> FEClipOutput:
        """Score the features of :meth:`embed` and average over taps.

        Args:
            taps: Output of :meth:`embed`.
            image_size: ``(H, W)`` the map is upsampled to.

        Returns:
            :class:`FEClipOutput` with ``pred_score (B,)``, ``anomaly_map (B, H, W)``,
            ``tap_scores (T, B)`` and ``tap_maps (T, B, h, w)``.
        """
        tap_scores, tap_maps = self.tap_probabilities(taps)
        if self.config.map_score == "logit_margin":
            grid_map = torch.stack([anomaly_logit_margin(t.patch_embedding, self.text_features, self.temperature)
                                    for t in taps]).mean(dim=0)  # (B, h, w)
        else:
            grid_map = tap_maps.mean(dim=0)
        anomaly_map = F.interpolate(grid_map[:, None], size=image_size, mode="bilinear", align_corners=False)
        return FEClipOutput(
            pred_score=tap_scores.mean(dim=0),
            anomaly_map=anomaly_map[:, 0],
            tap_scores=tap_scores,
            tap_maps=tap_maps,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"backbone={c.backbone!r}, taps={c.tap_indices}, P={c.ffe_window}, Q={c.lfs_window}, "
            f"lfs_statistic={c.lfs_statistic!r}, lambda_fuse={c.lambda_fuse}, tau={self.temperature:.4g}, "
            f"fc_patch_init={c.fc_patch_init!r}, map_score={c.map_score!r}"
        )


def _check_windows(config: FEClipConfig, grid: tuple[int, int]) -> None:
    """Refuse an FFE window ``P`` or LFS window ``Q`` below 1 or larger than the backbone's token grid.

    A window larger than the grid would be mostly padding: FFE's one window and LFS's statistic would
    describe the padding rule, not the image.
    """
    for name, letter, value, used in (("ffe_window", "P", config.ffe_window, config.use_ffe),
                                      ("lfs_window", "Q", config.lfs_window, config.use_lfs)):
        if used and not 1 <= value <= min(grid):
            raise ValueError(f"{name} {letter} = {value} does not fit the {grid[0]} x {grid[1]} token grid of "
                             f"{config.backbone or 'this backbone'}: choose 1 <= {letter} <= {min(grid)}")


def _config_of_injected(clip: nn.Module, overrides: dict[str, Any]) -> FEClipConfig:
    """A default config whose origin fields the caller left out describe ``clip`` itself.

    A backbone made by :func:`feclip.backbones.create_clip` knows its name, weights and seed; any
    other backbone is of unknown origin (``backbone=None``) unless the caller names it.
    """
    origin = backbone_origin(clip)
    known = {"backbone": None, "pretrained": None} if origin is None else {
        "backbone": origin.name, "pretrained": origin.pretrained, "backbone_seed": origin.seed}
    return FEClipConfig(**{name: value for name, value in known.items() if name not in overrides})


def load_feclip(
    path: str | Path,
    device: torch.device | str = "cpu",
    clip: nn.Module | None = None,
    tokenizer: Any | None = None,
    *,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    quick_gelu: bool | None = None,
) -> FEClip:
    """Rebuild an FE-CLIP model from a checkpoint, backbone included.

    Args:
        path: Checkpoint file (or a run folder, meaning its ``last.safetensors``).
        device: Device of the returned model.
        clip: A ready backbone to use instead of building the one the checkpoint names.
        tokenizer: Its tokenizer (default: open_clip's tokenizer for the checkpoint's backbone).
        pretrained: Where to load the backbone's weights from instead of the stored tag, e.g. a
            local ``open_clip_pytorch_model.bin`` when the hub is unreachable.
        cache_dir: Optional weights cache directory.
        quick_gelu: The activation of a ``pretrained`` weights file, for a checkpoint that did not record it.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        FileNotFoundError: No checkpoint there.
        feclip.checkpoint.CheckpointMismatch: ``clip`` is not the backbone the checkpoint was trained on.
        feclip.backbones.PretrainedWeightsUnavailable: The backbone's weights cannot be reached.
    """
    import open_clip

    metadata = read_metadata(path)
    config = FEClipConfig.from_dict(metadata["config"])
    if clip is None:
        clip, tokenizer = create_clip(
            config.backbone,
            pretrained or config.pretrained,
            seed=metadata.get("backbone_seed") or 0,
            device=device,
            cache_dir=cache_dir,
            quick_gelu=quick_gelu if quick_gelu is not None else config.quick_gelu,
        )
    elif tokenizer is None:
        tokenizer = open_clip.get_tokenizer(config.backbone)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the caller's RNG alone
        model = FEClip(clip, tokenizer, config)
    load_into(model, path)
    return model.to(device).eval()
