"""FE-CLIP: a frozen open_clip ViT whose tapped blocks are enhanced by frequency adapters.

The forward pass runs the ViT block by block. After each tapped block the patch
tokens (never the CLS token) are replaced by the adapter's fused tokens, which then
feed the next block. At every tap:

* the CLS token -> ``ln_post`` -> CLIP's frozen projection gives an image embedding,
* the fused patch tokens -> ``ln_post`` -> the learnable ``fc_patch`` give patch embeddings,

and both are scored against the normal/anomalous text embeddings
(:func:`feclip.scoring.anomaly_probability`). Scores and maps are averaged over taps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.adapters import LFS_STATISTICS, FrequencyAdapter, LfsStatistic
from feclip.predictor import AnomalyPrediction
from feclip.frozen import FrozenClipDetector
from feclip.prompts import PAPER_PROMPTS
from feclip.scoring import anomaly_probability
from feclip.taps import default_tap_indices
from feclip.vit import check_vit, embed_images, project_tokens

__all__ = ["FEClipConfig", "FEClipOutput", "TapFeatures", "FEClip"]


@dataclass
class FEClipConfig:
    """Everything that defines an FE-CLIP model besides the backbone's weights.

    Attributes:
        backbone: open_clip model name the adapters were built for.
        pretrained: Pretrained tag or path of the backbone (``None``: random weights).
        backbone_seed: Seed of a random backbone (``pretrained=None``), so a checkpoint can rebuild it.
        tap_indices: Tapped blocks (0-based); ``None`` picks :func:`feclip.taps.default_tap_indices`.
        ffe_window: FFE window side ``P``.
        lfs_window: LFS window side ``Q``.
        lfs_statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        lambda_fuse: Fusion weight ``lambda`` of the adapter branch.
        basis: ``"dct"`` (FE-CLIP) or ``"dft"`` (ablation).
        use_ffe: Whether the FFE branch is used.
        use_lfs: Whether the LFS branch is used.
        temperature: Softmax temperature ``tau``.
        use_clip_logit_scale: Use CLIP's own learned temperature instead of ``temperature``.
        normal_prompts: Prompt ensemble of the normal state.
        anomalous_prompts: Prompt ensemble of the anomalous state.
    """

    backbone: str = "ViT-L-14-336"
    pretrained: str | None = "openai"
    backbone_seed: int = 0
    tap_indices: list[int] | None = None
    ffe_window: int = 3
    lfs_window: int = 3
    lfs_statistic: LfsStatistic = "mean"
    lambda_fuse: float = 0.1
    basis: str = "dct"
    use_ffe: bool = True
    use_lfs: bool = True
    temperature: float = 0.07
    use_clip_logit_scale: bool = False
    normal_prompts: list[str] = field(default_factory=lambda: [PAPER_PROMPTS[0]])
    anomalous_prompts: list[str] = field(default_factory=lambda: [PAPER_PROMPTS[1]])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FEClipConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FE-CLIP config keys: {unknown}")
        return cls(**values)


@dataclass
class FEClipOutput(AnomalyPrediction):
    """FE-CLIP's predictions, averaged over taps, with the per-tap values kept.

    Attributes:
        pred_score: Image anomaly probability, mean over taps, shape ``(B,)``.
        anomaly_map: Pixel anomaly probability at the input resolution, shape ``(B, H, W)``.
        tap_scores: Image probability per tap, shape ``(T, B)``.
        tap_maps: Patch probability per tap on the token grid, shape ``(T, B, h, w)``.
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

    Args:
        clip: An open_clip ``CLIP`` model with a ViT image tower. It is frozen here.
        tokenizer: Its tokenizer, used to embed the prompts (not needed when ``text_features`` is given).
        config: Hyper-parameters; keyword arguments override single fields.
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings.
        **overrides: Fields of :class:`FEClipConfig`.

    Example:
        >>> clip, tokenizer = feclip.backbones.create_tiny_clip()
        >>> model = FEClip(clip, tokenizer, backbone="feclip-tiny", pretrained=None)
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
        config = dataclasses.replace(config or FEClipConfig(), **overrides)
        if config.lfs_statistic not in LFS_STATISTICS:
            raise ValueError(f"unknown lfs_statistic {config.lfs_statistic!r}; choose one of {LFS_STATISTICS}")
        depth = len(visual.transformer.resblocks)
        taps = sorted(config.tap_indices) if config.tap_indices is not None else default_tap_indices(depth)
        if not taps or len(set(taps)) != len(taps) or taps[0] < 0 or taps[-1] >= depth:
            raise ValueError(f"tap_indices must be distinct blocks in [0, {depth - 1}], got {config.tap_indices}")
        super().__init__(clip, tokenizer, text_features, config.normal_prompts, config.anomalous_prompts)
        self.config = dataclasses.replace(config, tap_indices=taps)
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
        # Start fc_patch at CLIP's own projection: at step 0 the map is CLIP's naive patch map,
        # and the small learning rate the seed implementation found best only has to refine it.
        self.fc_patch = nn.Linear(width, visual.proj.shape[1])
        with torch.no_grad():
            self.fc_patch.weight.copy_(visual.proj.T)
            self.fc_patch.bias.zero_()

    @classmethod
    def from_open_clip(
        cls,
        name: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        *,
        device: torch.device | str = "cpu",
        cache_dir: str | None = None,
        seed: int = 0,
        **overrides: Any,
    ) -> FEClip:
        """Create the backbone with open_clip and wrap it.

        Args:
            name: open_clip model name (``"ViT-L-14-336"`` in the paper; ``"feclip-tiny"`` offline).
            pretrained: Pretrained tag (``"openai"``), a checkpoint path, or ``None`` for random weights.
            device: Device of the model.
            cache_dir: Optional weights cache directory.
            seed: Seed of the adapters' initialisation and of a random backbone (``pretrained=None``);
                the global RNG is left untouched, so the same call always builds the same model.
            **overrides: Fields of :class:`FEClipConfig`.

        Returns:
            The model, on ``device``.
        """
        from feclip.backbones import create_clip

        clip, tokenizer = create_clip(name, pretrained, device=device, cache_dir=cache_dir, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(clip, tokenizer, backbone=name, pretrained=pretrained, backbone_seed=seed, **overrides)
        return model.to(device)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any) -> FEClip:
        """Rebuild a model saved by :meth:`save` (see :func:`feclip.checkpoint.load_feclip`).

        Args:
            path: A ``.safetensors`` checkpoint or a run folder (its ``last.safetensors``).
            device: Device of the model.
            **kwargs: Passed to :func:`feclip.checkpoint.load_feclip` (``clip``, ``tokenizer``, ``pretrained``...).

        Returns:
            The model, with its backbone rebuilt from the saved config and the trained weights loaded.
        """
        from feclip.checkpoint import load_feclip

        return load_feclip(path, device=device, **kwargs)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Save the trained weights (adapters and ``fc_patch``) and the config, atomically.

        See :func:`feclip.checkpoint.save_checkpoint`.
        """
        from feclip.checkpoint import save_checkpoint

        return save_checkpoint(self, path, extra=extra)

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

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters the optimiser should see, in the groups the trainer gives their own learning rates."""
        return {"adapters": list(self.adapters.parameters()), "fc_patch": list(self.fc_patch.parameters())}

    def set_prompts(self, normal: str | list[str], anomalous: str | list[str]) -> None:
        """Re-embed the text prompts (for example with a class name, or WinCLIP's ensemble)."""
        normal = [normal] if isinstance(normal, str) else list(normal)
        anomalous = [anomalous] if isinstance(anomalous, str) else list(anomalous)
        self._embed_prompts(normal, anomalous)
        self.config.normal_prompts, self.config.anomalous_prompts = normal, anomalous

    def encode_taps(self, images: Tensor) -> list[TapFeatures]:
        """Run the tapped ViT and return what every tap produces.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            One :class:`TapFeatures` per tapped block, in block order.
        """
        visual = self.clip.visual
        batch_first = getattr(visual.transformer, "batch_first", False)
        height, width = self.grid_size
        adapter_at = dict(zip(self.tap_indices, self.adapters))
        x = embed_images(visual, images)  # (B, 1 + h*w, D)
        if not batch_first:
            x = x.transpose(0, 1)  # (1 + h*w, B, D), older open_clip
        features = []
        for index, block in enumerate(visual.transformer.resblocks[: self.tap_indices[-1] + 1]):
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

    def predict_from_taps(self, taps: list[TapFeatures], image_size: tuple[int, int]) -> FEClipOutput:
        """Score the features of :meth:`encode_taps` and average over taps.

        Args:
            taps: Output of :meth:`encode_taps`.
            image_size: ``(H, W)`` the map is upsampled to.

        Returns:
            :class:`FEClipOutput`.
        """
        temperature = self.temperature
        tap_scores = torch.stack([anomaly_probability(t.image_embedding, self.text_features, temperature) for t in taps])
        tap_maps = torch.stack([anomaly_probability(t.patch_embedding, self.text_features, temperature) for t in taps])
        anomaly_map = F.interpolate(tap_maps.mean(dim=0)[:, None], size=image_size, mode="bilinear", align_corners=False)
        return FEClipOutput(
            pred_score=tap_scores.mean(dim=0),
            anomaly_map=anomaly_map[:, 0],
            tap_scores=tap_scores,
            tap_maps=tap_maps,
        )

    def forward(self, images: Tensor) -> FEClipOutput:
        """Image scores and pixel maps.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            :class:`FEClipOutput` with ``pred_score (B,)``, ``anomaly_map (B, H, W)``,
            ``tap_scores (T, B)`` and ``tap_maps (T, B, h, w)``.
        """
        return self.predict_from_taps(self.encode_taps(images), tuple(images.shape[-2:]))

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"backbone={c.backbone!r}, taps={c.tap_indices}, P={c.ffe_window}, Q={c.lfs_window}, "
            f"lfs_statistic={c.lfs_statistic!r}, lambda_fuse={c.lambda_fuse}, tau={self.temperature:.4g}"
        )
