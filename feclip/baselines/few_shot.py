"""Few-shot anomaly detection: add a memory bank of normal patches to a zero-shot detector.

With ``k`` normal reference images of the category, a patch of a test image is anomalous
when nothing in the references looks like it. WinCLIP+ (Jeong et al., CVPR 2023, eq. 4)
scores this "visual association" as

    a(z) = min over bank entries r of (1 - cos(z, r)) / 2,

i.e. ``(1 - max cosine) / 2``, which lies in ``[0, 1]`` (0: the patch is in the bank,
1: it points the opposite way of every entry) without any clamping or calibration, and
sits on the same scale as the zero-shot probabilities it is averaged with.

* :class:`WinClipFewShot` (WinCLIP+): banks of the final-layer patch features (after
  ``ln_post``) and of the window embeddings of every scale; the association map is the mean
  of the patch-level map and the harmonically aggregated window maps. Final map: mean of the
  zero-shot and association maps; image score: mean of the zero-shot image score and the
  association map's maximum.
* :class:`FEClipFewShot`: one bank per FE-CLIP tap, built from the tap's fused patch tokens
  (``TapFeatures.patch_tokens``, the frequency-enhanced tokens in the ViT's width; the
  text-aligned ``patch_embedding`` can be chosen instead). The association map is averaged over
  taps and combined with FE-CLIP's zero-shot output exactly as above.

The nearest neighbour is a matrix product, chunked over the query patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.baselines.winclip import WinClip, WinClipFeatures, harmonic_aggregation
from feclip.predictor import AnomalyPrediction, Detector

__all__ = [
    "visual_association_score",
    "PatchMemoryBank",
    "FewShotOutput",
    "WinClipFewShot",
    "FEClipFewShot",
]

TapFeature = Literal["patch_tokens", "patch_embedding"]


def visual_association_score(queries: Tensor, memory: Tensor, chunk_size: int = 4096) -> Tensor:
    """``(1 - max cosine similarity to the memory) / 2`` for every query vector.

    Args:
        queries: Query features of shape ``(..., D)``.
        memory: Reference features of shape ``(N, D)``.
        chunk_size: Query rows per matrix product, to bound the ``(chunk, N)`` similarity matrix.

    Returns:
        Scores in ``[0, 1]`` of shape ``(...)``.
    """
    if memory.ndim != 2 or memory.shape[0] == 0 or memory.shape[1] != queries.shape[-1]:
        raise ValueError(f"memory must be (N, {queries.shape[-1]}) with N > 0, got {tuple(memory.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    memory = F.normalize(memory.float(), dim=-1)
    flat = F.normalize(queries.reshape(-1, queries.shape[-1]).float(), dim=-1)  # (Q, D)
    nearest = torch.cat([(chunk @ memory.T).amax(dim=1) for chunk in flat.split(chunk_size)])  # (Q,)
    return ((1.0 - nearest) / 2).clamp(0.0, 1.0).reshape(queries.shape[:-1])


class PatchMemoryBank(nn.Module):
    """Normalised features of normal references; scores queries by :func:`visual_association_score`.

    Args:
        features: Reference features of shape ``(..., D)``, e.g. patch features ``(K, h, w, D)``
            of ``K`` normal images or window embeddings ``(K, M, E)``.
        chunk_size: Query rows per matrix product.
    """

    def __init__(self, features: Tensor, chunk_size: int = 4096) -> None:
        super().__init__()
        if features.ndim < 2 or features.numel() == 0:
            raise ValueError(f"a memory bank needs features of shape (..., D), got {tuple(features.shape)}")
        self.chunk_size = chunk_size
        bank = F.normalize(features.detach().reshape(-1, features.shape[-1]).float(), dim=-1)
        self.register_buffer("features", bank)

    def __len__(self) -> int:
        return self.features.shape[0]

    def forward(self, queries: Tensor) -> Tensor:
        """Association scores of shape ``(...)`` for queries ``(..., D)``."""
        return visual_association_score(queries, self.features, self.chunk_size)

    def extra_repr(self) -> str:
        return f"entries={len(self)}, dim={self.features.shape[1]}"


@dataclass
class FewShotOutput(AnomalyPrediction):
    """Few-shot predictions with their two ingredients.

    Attributes:
        pred_score: Mean of ``zero_shot_score`` and the association map's maximum, shape ``(B,)``.
        anomaly_map: Mean of the zero-shot and association maps at the input size, shape ``(B, H, W)``.
        zero_shot_score: The zero-shot image score, shape ``(B,)``.
        zero_shot_map: The zero-shot map on the token grid, shape ``(B, h, w)``.
        association_map: The visual association map on the token grid, in ``[0, 1]``, shape ``(B, h, w)``.
    """

    zero_shot_score: Tensor = None  # type: ignore[assignment]
    zero_shot_map: Tensor = None  # type: ignore[assignment]
    association_map: Tensor = None  # type: ignore[assignment]


def _combine(zero_shot_score: Tensor, zero_shot_map: Tensor, association_map: Tensor, size: tuple[int, int]) -> FewShotOutput:
    """WinCLIP+'s fusion: average the maps, and the image score with the association maximum."""
    grid_map = (zero_shot_map + association_map) / 2
    anomaly_map = F.interpolate(grid_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return FewShotOutput(
        pred_score=(zero_shot_score + association_map.amax(dim=(-2, -1))) / 2,
        anomaly_map=anomaly_map,
        zero_shot_score=zero_shot_score,
        zero_shot_map=zero_shot_map,
        association_map=association_map,
    )


def _check_references(reference_images: Tensor) -> None:
    if reference_images.ndim != 4 or reference_images.shape[0] == 0:
        raise ValueError(f"reference_images must be (K, 3, H, W) with K >= 1, got {tuple(reference_images.shape)}")


class _FewShotDetector(Detector):
    """A zero-shot detector (``self.zero_shot_detector``) plus memory banks: prompts and temperature are its own."""

    zero_shot_detector: nn.Module

    @property
    def temperature(self) -> float:
        """The zero-shot detector's softmax temperature."""
        return self.zero_shot_detector.temperature

    def set_prompts(self, normal: str | Sequence[str], anomalous: str | Sequence[str]) -> None:
        """Re-embed the zero-shot detector's prompts (the memory banks do not depend on them)."""
        self.zero_shot_detector.set_prompts(normal, anomalous)


class WinClipFewShot(_FewShotDetector):
    """WinCLIP+: WinCLIP zero-shot plus multi-scale memory banks of ``k`` normal references.

    Args:
        winclip: A :class:`~feclip.baselines.winclip.WinClip` (its scales are reused for the window banks).
        reference_images: Normal images of the category, shape ``(K, 3, H, W)``, normalised.
        chunk_size: Query rows per nearest-neighbour matrix product.
    """

    def __init__(self, winclip: WinClip, reference_images: Tensor, chunk_size: int = 4096) -> None:
        super().__init__()
        self.winclip = winclip
        self.chunk_size = chunk_size
        self.set_reference_images(reference_images)

    @property
    def zero_shot_detector(self) -> WinClip:
        return self.winclip

    @classmethod
    def from_open_clip(
        cls,
        reference_images: Tensor,
        name: str = WinClip.default_backbone[0],
        pretrained: str | None = WinClip.default_backbone[1],
        class_name: str = "object",
        *,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> WinClipFewShot:
        """WinCLIP+ on an open_clip backbone; ``kwargs`` go to :meth:`WinClip.from_open_clip`."""
        winclip = WinClip.from_open_clip(name, pretrained, class_name=class_name, device=device, **kwargs)
        return cls(winclip, reference_images.to(device))

    @torch.no_grad()
    def set_reference_images(self, reference_images: Tensor) -> None:
        """(Re)build the patch bank and one window bank per scale from ``K`` normal images ``(K, 3, H, W)``."""
        _check_references(reference_images)
        features = self.winclip.embed(reference_images)
        self.patch_bank = PatchMemoryBank(features.patch_features, self.chunk_size)
        self.window_banks = nn.ModuleList(PatchMemoryBank(w, self.chunk_size) for w in features.window_embeddings)

    def association_map(self, features: WinClipFeatures) -> Tensor:
        """Mean of the patch-level and the harmonically aggregated window association maps, ``(B, h, w)``."""
        maps = [self.patch_bank(features.patch_features)]
        for bank, embeddings, masks in zip(self.window_banks, features.window_embeddings, self.winclip.window_masks):
            maps.append(harmonic_aggregation(bank(embeddings), masks))
        return torch.stack(maps).mean(dim=0)

    def embed(self, images: Tensor) -> WinClipFeatures:
        """WinCLIP's features of normalised images ``(B, 3, H, W)`` (:meth:`WinClip.embed`)."""
        return self.winclip.embed(images)

    @torch.no_grad()
    def predict(self, features: WinClipFeatures, image_size: tuple[int, int]) -> FewShotOutput:
        """Few-shot scores and maps (upsampled to ``image_size`` ``(H, W)``) from :meth:`embed`'s features."""
        cls_scores, zero_shot_map, _ = self.winclip.zero_shot(features)
        zero_shot_score = self.winclip.combine_image_score(cls_scores, zero_shot_map)
        return _combine(zero_shot_score, zero_shot_map, self.association_map(features), image_size)


class FEClipFewShot(_FewShotDetector):
    """FE-CLIP plus one memory bank of normal patches per tap.

    Args:
        feclip_model: A (trained) :class:`feclip.model.FEClip`.
        reference_images: Normal images of the category, shape ``(K, 3, H, W)``, normalised.
        feature: ``"patch_tokens"`` (fused tokens in the ViT's width, default) or
            ``"patch_embedding"`` (after ``ln_post`` and ``fc_patch``, the text-aligned space).
        chunk_size: Query rows per nearest-neighbour matrix product.
    """

    def __init__(
        self,
        feclip_model: nn.Module,
        reference_images: Tensor,
        feature: TapFeature = "patch_tokens",
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        if feature not in ("patch_tokens", "patch_embedding"):
            raise ValueError(f"unknown feature {feature!r}; choose 'patch_tokens' or 'patch_embedding'")
        self.feclip = feclip_model
        self.feature = feature
        self.chunk_size = chunk_size
        self.set_reference_images(reference_images)

    @property
    def zero_shot_detector(self) -> nn.Module:
        return self.feclip

    @torch.no_grad()
    def set_reference_images(self, reference_images: Tensor) -> None:
        """(Re)build one bank per tap; call again after the adapters change."""
        _check_references(reference_images)
        was_training = self.feclip.training
        self.feclip.eval()
        taps = self.feclip.embed(reference_images)
        self.feclip.train(was_training)
        self.banks = nn.ModuleList(PatchMemoryBank(getattr(tap, self.feature), self.chunk_size) for tap in taps)

    @torch.no_grad()
    def embed(self, images: Tensor) -> list[Any]:
        """FE-CLIP's tap features of normalised images ``(B, 3, H, W)`` (:meth:`feclip.model.FEClip.embed`)."""
        return self.feclip.embed(images)

    @torch.no_grad()
    def predict(self, taps: list[Any], image_size: tuple[int, int]) -> FewShotOutput:
        """Few-shot scores and maps (upsampled to ``image_size`` ``(H, W)``) from :meth:`embed`'s features.

        The zero-shot part is FE-CLIP's own prediction from the same features (the same maths on the
        same taps), so the ViT runs once.
        """
        zero_shot = self.feclip.predict(taps, image_size)
        association = torch.stack([bank(getattr(t, self.feature)) for bank, t in zip(self.banks, taps)]).mean(0)
        return _combine(zero_shot.pred_score, zero_shot.tap_maps.mean(0), association, image_size)

    def extra_repr(self) -> str:
        return f"feature={self.feature!r}, bank_entries={[len(b) for b in self.banks]}"
