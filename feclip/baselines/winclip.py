"""WinCLIP zero-shot (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", CVPR 2023).

CLIP's patch tokens are not aligned with its text embeddings, so WinCLIP gets a map from
CLS embeddings instead: every small window of the token grid is re-encoded on its own
(the CLS token plus the window's patch tokens only) and scored against the text, like a
whole image. A patch's score is the harmonic mean of the scores of all windows that
cover it, and the maps of the different window sizes are combined by a harmonic mean too.

What this implementation does, precisely:

* Windows of ``scales = (2, 3)`` patches, stride 1 patch (the paper's small and mid scales
  for ViT-B/16+ at 240 px, a 15 x 15 grid). With a larger stride, windows flush with the
  far edges are added so that every patch is covered.
* Windows are encoded by gathering their tokens (positional embeddings already added) into
  short sequences, all windows of the batch through the transformer at once
  (:func:`feclip.vit.encode_windows`).
* Multi-scale map: harmonic mean over the window maps and, with ``include_image_scale``
  (default), the image-level CLS score as the full-image window, as in the paper and in
  anomalib. The final-layer patch tokens are *not* a zero-shot term (they are the
  misaligned tokens WinCLIP avoids); WinCLIP+ uses them for its few-shot memory bank
  (:mod:`feclip.baselines.few_shot`).
* Image score: the paper's zero-shot classifier, the CLS score with the prompt ensemble
  (``image_score="cls"``, default), or ``"mean_cls_map_max"``: the mean of that and the
  maximum of the patch-level map.
* Text: WinCLIP's compositional ensemble, :func:`feclip.prompts.winclip_prompts`;
  scores are ``softmax(cos / 0.07)`` of the anomalous state, :func:`feclip.scoring.anomaly_probability`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.frozen import FrozenClipDetector
from feclip.predictor import AnomalyPrediction
from feclip.prompts import winclip_prompts
from feclip.scoring import anomaly_probability
from feclip.vit import check_vit, embed_images, encode_windows, project_tokens, run_blocks

__all__ = [
    "make_window_masks",
    "window_indices",
    "harmonic_aggregation",
    "harmonic_mean",
    "WinClipConfig",
    "WinClipFeatures",
    "WinClipOutput",
    "WinClip",
]

ImageScore = Literal["cls", "mean_cls_map_max"]
IMAGE_SCORES: tuple[str, ...] = ("cls", "mean_cls_map_max")
# Smallest window score used in harmonic means: 1/0 would turn the masked sum into inf * 0 = NaN.
_SCORE_FLOOR = 1e-30


def _window_starts(length: int, scale: int, stride: int) -> Tensor:
    starts = list(range(0, length - scale + 1, stride))
    if starts[-1] != length - scale:
        starts.append(length - scale)  # cover the last rows/columns when the stride does not divide evenly
    return torch.tensor(starts)


def make_window_masks(grid_size: int | Sequence[int], scale: int, stride: int = 1) -> Tensor:
    """Boolean masks of all ``scale x scale`` sliding windows on a token grid.

    Args:
        grid_size: Token grid ``(h, w)`` (or one int for a square grid).
        scale: Window side, in patches.
        stride: Step between windows, in patches. Windows flush with the bottom and right
            edges are added when ``stride`` does not reach them, so every patch is covered.

    Returns:
        Masks of shape ``(M, h, w)``, windows in row-major order of their top-left corner.

    Example:
        >>> make_window_masks((3, 3), 2).sum(dim=0)
        tensor([[1, 2, 1],
                [2, 4, 2],
                [1, 2, 1]])
    """
    height, width = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if scale < 1 or stride < 1:
        raise ValueError(f"window scale and stride must be positive, got scale={scale}, stride={stride}")
    if scale > min(height, width):
        raise ValueError(f"window scale {scale} does not fit the {height} x {width} token grid")
    rows, cols = torch.arange(height), torch.arange(width)
    row_starts, col_starts = _window_starts(height, scale, stride), _window_starts(width, scale, stride)
    row_in = (rows[None] >= row_starts[:, None]) & (rows[None] < row_starts[:, None] + scale)  # (nR, h)
    col_in = (cols[None] >= col_starts[:, None]) & (cols[None] < col_starts[:, None] + scale)  # (nC, w)
    masks = row_in[:, None, :, None] & col_in[None, :, None, :]  # (nR, nC, h, w)
    return masks.reshape(-1, height, width)


def window_indices(masks: Tensor) -> Tensor:
    """Row-major patch indices of each window.

    Args:
        masks: Window masks of shape ``(M, h, w)``, all with the same number ``K`` of patches.

    Returns:
        Indices of shape ``(M, K)`` into the flattened grid, increasing along each row.
    """
    counts = masks.flatten(1).sum(dim=1)
    if counts.numel() == 0 or (counts != counts[0]).any():
        raise ValueError("window_indices needs at least one window, all of the same size")
    return masks.flatten(1).nonzero()[:, 1].reshape(masks.shape[0], int(counts[0]))


def harmonic_aggregation(window_scores: Tensor, masks: Tensor) -> Tensor:
    """Score of every patch: harmonic mean of the scores of the windows that cover it.

    The harmonic mean is dominated by the smallest score, so a patch is called anomalous
    only if every window around it is.

    Args:
        window_scores: Window scores in ``[0, 1]``, shape ``(B, M)``.
        masks: Window masks of shape ``(M, h, w)``.

    Returns:
        Patch scores of shape ``(B, h, w)``; 0 at patches no window covers.
    """
    coverage = masks.flatten(1).to(torch.float32)  # (M, h*w)
    inverse_sum = (1.0 / window_scores.float().clamp_min(_SCORE_FLOOR)) @ coverage  # (B, h*w)
    counts = coverage.sum(dim=0)
    scores = torch.where(counts > 0, counts / inverse_sum.clamp_min(_SCORE_FLOOR), torch.zeros_like(inverse_sum))
    return scores.reshape(window_scores.shape[0], *masks.shape[1:])


def harmonic_mean(values: Tensor, dim: int = 0) -> Tensor:
    """Harmonic mean along ``dim``: ``n / sum(1 / x)`` (scores floored at a tiny positive value)."""
    return values.shape[dim] / (1.0 / values.float().clamp_min(_SCORE_FLOOR)).sum(dim=dim)


@dataclass
class WinClipConfig:
    """Settings of WinCLIP zero-shot.

    Attributes:
        class_name: Object name of the prompt ensemble (``"object"`` when unknown).
        scales: Window sides in patches.
        stride: Window step in patches.
        temperature: Softmax temperature ``tau``.
        include_image_scale: Use the whole-image CLS score as the largest scale of the map.
        image_score: ``"cls"`` (paper) or ``"mean_cls_map_max"``.
        chunk_size: Most window sequences per transformer call.
        normal_prompts: Prompt ensemble of the normal state (WinCLIP's for ``class_name`` unless set otherwise).
        anomalous_prompts: Prompt ensemble of the anomalous state.
    """

    class_name: str = "object"
    scales: tuple[int, ...] = (2, 3)
    stride: int = 1
    temperature: float = 0.07
    include_image_scale: bool = True
    image_score: ImageScore = "cls"
    chunk_size: int = 4096
    normal_prompts: list[str] = field(default_factory=list)
    anomalous_prompts: list[str] = field(default_factory=list)


@dataclass
class WinClipFeatures:
    """What one pass of the frozen ViT gives WinCLIP.

    Attributes:
        image_embedding: CLS embedding of the whole image, shape ``(B, E)``.
        patch_features: Final-layer patch tokens after ``ln_post`` (not projected), shape ``(B, h, w, D)``.
        window_embeddings: One tensor per scale, window CLS embeddings of shape ``(B, M_s, E)``.
    """

    image_embedding: Tensor
    patch_features: Tensor
    window_embeddings: list[Tensor]


@dataclass
class WinClipOutput(AnomalyPrediction):
    """WinCLIP's predictions.

    Attributes:
        pred_score: Image anomaly score, shape ``(B,)``.
        anomaly_map: Pixel map at the input size, shape ``(B, H, W)``.
        patch_map: Multi-scale map on the token grid, shape ``(B, h, w)``.
        scale_maps: The maps that were combined, shape ``(S, B, h, w)``: the image scale first
            (when used), then one per window scale.
    """

    patch_map: Tensor = None  # type: ignore[assignment]
    scale_maps: Tensor = None  # type: ignore[assignment]


class WinClip(FrozenClipDetector):
    """WinCLIP zero-shot on an injected open_clip ViT.

    Args:
        clip: open_clip ``CLIP`` model with a ViT tower; frozen here.
        tokenizer: Its tokenizer (not needed when ``text_features`` is given).
        class_name: Object name for the prompt ensemble (``"object"`` when unknown).
        scales: Window sides in patches.
        stride: Window step in patches.
        temperature: Softmax temperature.
        include_image_scale: Use the whole-image CLS score as the largest scale of the map.
        image_score: ``"cls"`` (paper) or ``"mean_cls_map_max"``.
        chunk_size: Most window sequences per transformer call.
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings.

    All settings are kept in ``config`` (:class:`WinClipConfig`).

    Example:
        >>> clip, tokenizer = feclip.backbones.create_tiny_clip()
        >>> winclip = WinClip(clip, tokenizer, class_name="bottle")
        >>> out = winclip(images)  # images (B, 3, 96, 96)
        >>> out.pred_score.shape, out.anomaly_map.shape
        (torch.Size([B]), torch.Size([B, 96, 96]))
    """

    default_backbone: ClassVar[tuple[str, str | None]] = ("ViT-B-16-plus-240", "laion400m_e32")  # the paper's ViT-B/16+

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any | None = None,
        class_name: str = "object",
        *,
        scales: Sequence[int] = (2, 3),
        stride: int = 1,
        temperature: float = 0.07,
        include_image_scale: bool = True,
        image_score: ImageScore = "cls",
        chunk_size: int = 4096,
        text_features: Tensor | None = None,
    ) -> None:
        visual = check_vit(clip)
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"unknown image_score {image_score!r}; choose one of {IMAGE_SCORES}")
        scales = tuple(int(s) for s in scales)
        if len(set(scales)) != len(scales) or (not scales and not include_image_scale):
            raise ValueError(f"scales must be distinct (and not empty without the image scale), got {scales}")
        normal, anomalous = winclip_prompts(class_name)
        super().__init__(clip, tokenizer, text_features, normal, anomalous)
        self.config = WinClipConfig(class_name, scales, stride, temperature, include_image_scale, image_score, chunk_size,
                                    list(normal), list(anomalous))
        self.grid_size: tuple[int, int] = tuple(visual.grid_size)
        for scale in scales:
            masks = make_window_masks(self.grid_size, scale, stride)
            self.register_buffer(f"window_masks_{scale}", masks, persistent=False)
            self.register_buffer(f"window_indices_{scale}", window_indices(masks), persistent=False)

    @property
    def window_masks(self) -> list[Tensor]:
        """Window masks per scale, each of shape ``(M_s, h, w)``."""
        return [getattr(self, f"window_masks_{scale}") for scale in self.config.scales]

    @property
    def window_indices(self) -> list[Tensor]:
        """Patch indices of the windows per scale, each of shape ``(M_s, s*s)``."""
        return [getattr(self, f"window_indices_{scale}") for scale in self.config.scales]

    def set_class_name(self, class_name: str) -> None:
        """Re-embed the prompt ensemble for another object class."""
        self.set_prompts(*winclip_prompts(class_name))
        self.config.class_name = class_name

    @torch.no_grad()
    def embed(self, images: Tensor) -> WinClipFeatures:
        """One full forward and one batched forward of all windows.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            :class:`WinClipFeatures`.
        """
        visual = self.clip.visual
        height, width = self.grid_size
        tokens = embed_images(visual, images)  # (B, 1 + h*w, D)
        output = run_blocks(visual, tokens)
        patch_features = visual.ln_post(output[:, 1:]).reshape(images.shape[0], height, width, -1)
        windows = [encode_windows(visual, tokens, indices, self.config.chunk_size) for indices in self.window_indices]
        return WinClipFeatures(project_tokens(visual, output[:, 0]), patch_features, windows)

    def zero_shot(self, features: WinClipFeatures) -> tuple[Tensor, Tensor, Tensor]:
        """Zero-shot scores from encoded features.

        Args:
            features: Output of :meth:`embed` for ``B`` images.

        Returns:
            ``(cls_scores (B,), patch_map (B, h, w), scale_maps (S, B, h, w))``.
        """
        cls_scores = anomaly_probability(features.image_embedding, self.text_features, self.temperature)
        maps = []
        if self.config.include_image_scale:
            maps.append(cls_scores[:, None, None].expand(-1, *self.grid_size))
        for embeddings, masks in zip(features.window_embeddings, self.window_masks):
            window_scores = anomaly_probability(embeddings, self.text_features, self.temperature)  # (B, M)
            maps.append(harmonic_aggregation(window_scores, masks))
        scale_maps = torch.stack(maps)
        return cls_scores, harmonic_mean(scale_maps, dim=0), scale_maps

    def combine_image_score(self, cls_scores: Tensor, patch_map: Tensor) -> Tensor:
        """The image score chosen by ``image_score``, shape ``(B,)``."""
        if self.config.image_score == "cls":
            return cls_scores
        return (cls_scores + patch_map.amax(dim=(-2, -1))) / 2

    def predict(self, features: WinClipFeatures, image_size: tuple[int, int]) -> WinClipOutput:
        """Image scores and pixel maps from :meth:`embed`'s features.

        Args:
            features: Output of :meth:`embed`.
            image_size: ``(H, W)`` the patch map is upsampled to (bilinearly).

        Returns:
            :class:`WinClipOutput`.
        """
        cls_scores, patch_map, scale_maps = self.zero_shot(features)
        anomaly_map = F.interpolate(patch_map[:, None], size=image_size, mode="bilinear", align_corners=False)
        return WinClipOutput(
            pred_score=self.combine_image_score(cls_scores, patch_map),
            anomaly_map=anomaly_map[:, 0],
            patch_map=patch_map,
            scale_maps=scale_maps,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"class_name={c.class_name!r}, grid={self.grid_size}, scales={c.scales}, stride={c.stride}, "
            f"image_scale={c.include_image_scale}, image_score={c.image_score!r}, tau={c.temperature}"
        )
