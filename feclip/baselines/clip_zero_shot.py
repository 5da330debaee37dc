"""Plain CLIP as a zero-shot anomaly detector: the baseline every later method improves on.

* Image score: the CLS embedding (``clip.encode_image``) against the normal/anomalous text
  embeddings, ``softmax(cos / tau)`` of the anomalous state.
* Naive map: the final-layer patch tokens through the same ``ln_post`` and frozen projection
  as the CLS token, scored against the same text embeddings, upsampled bilinearly.

CLIP was trained to align only the CLS token with text, so the CLS score is one number per
image (no map at all), and the naive patch map, although it has the right shape, is barely
related to where a defect is. :attr:`ClipZeroShotOutput.patch_map` keeps that map on the
token grid so it can be shown as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.frozen import FrozenClipDetector
from feclip.predictor import AnomalyPrediction
from feclip.prompts import PAPER_PROMPTS, class_prompts
from feclip.scoring import anomaly_probability
from feclip.vit import encode_vit, project_tokens

__all__ = ["Prompts", "prompt_pair", "ClipZeroShotOutput", "ClipZeroShot"]

# A class name, or a (normal, anomalous) pair whose members are one prompt or an ensemble.
Prompts = Union[str, Sequence[Union[str, Sequence[str]]]]


def prompt_pair(prompts: Prompts) -> tuple[list[str], list[str]]:
    """Normalise the ways of giving prompts to ``(normal_prompts, anomalous_prompts)``.

    Args:
        prompts: A class name (``"bottle"`` -> :func:`feclip.prompts.class_prompts`), or a pair
            ``(normal, anomalous)`` where each is a sentence or a list of sentences (an ensemble).

    Returns:
        Two non-empty lists of sentences.
    """
    if isinstance(prompts, str):
        normal, anomalous = class_prompts(prompts)
        return [normal], [anomalous]
    if len(prompts) != 2:
        raise ValueError(f"prompts must be a class name or a (normal, anomalous) pair, got {len(prompts)} items")
    normal, anomalous = ([p] if isinstance(p, str) else list(p) for p in prompts)
    if not normal or not anomalous:
        raise ValueError("each side of the prompt pair needs at least one prompt")
    return normal, anomalous


@dataclass
class ClipZeroShotOutput(AnomalyPrediction):
    """CLIP zero-shot predictions.

    Attributes:
        pred_score: CLS anomaly probability, shape ``(B,)``.
        anomaly_map: Naive patch map upsampled to the input size, shape ``(B, H, W)``.
        patch_map: The naive map on the token grid, shape ``(B, h, w)``.
    """

    patch_map: Tensor = None  # type: ignore[assignment]


class ClipZeroShot(FrozenClipDetector):
    """CLIP zero-shot anomaly classification and naive segmentation.

    Args:
        clip: open_clip ``CLIP`` model with a ViT tower; frozen here.
        tokenizer: Its tokenizer (not needed when ``text_features`` is given).
        prompts: A class name or a ``(normal, anomalous)`` pair of prompts or ensembles; FE-CLIP's pair by default.
        temperature: Softmax temperature ``tau``.
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings.

    Example:
        >>> clip, tokenizer = feclip.backbones.create_tiny_clip()
        >>> baseline = ClipZeroShot(clip, tokenizer)
        >>> out = baseline(images)  # images (B, 3, 96, 96)
        >>> out.pred_score.shape, out.anomaly_map.shape, out.patch_map.shape
        (torch.Size([B]), torch.Size([B, 96, 96]), torch.Size([B, 12, 12]))
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any | None = None,
        prompts: Prompts = PAPER_PROMPTS,
        temperature: float = 0.07,
        *,
        text_features: Tensor | None = None,
    ) -> None:
        normal, anomalous = prompt_pair(prompts)
        super().__init__(clip, tokenizer, text_features, normal, anomalous)
        self.temperature = temperature
        self.normal_prompts, self.anomalous_prompts = normal, anomalous

    @classmethod
    def from_open_clip(
        cls,
        name: str = "ViT-L-14-336",
        pretrained: str | None = "openai",
        prompts: Prompts = PAPER_PROMPTS,
        *,
        device: torch.device | str = "cpu",
        cache_dir: str | None = None,
        temperature: float = 0.07,
    ) -> ClipZeroShot:
        """Create the backbone with open_clip (FE-CLIP's ViT-L/14@336 by default) and wrap it."""
        from feclip.backbones import create_clip

        clip, tokenizer = create_clip(name, pretrained, device=device, cache_dir=cache_dir)
        return cls(clip, tokenizer, prompts, temperature).to(device)

    def set_prompts(self, prompts: Prompts) -> None:
        """Re-embed the text prompts (a class name or a pair of prompts/ensembles)."""
        normal, anomalous = prompt_pair(prompts)
        self._embed_prompts(normal, anomalous)
        self.normal_prompts, self.anomalous_prompts = normal, anomalous

    @torch.no_grad()
    def forward(self, images: Tensor) -> ClipZeroShotOutput:
        """Image scores, the naive token-grid map and its upsampled pixel map.

        Args:
            images: Normalised images of shape ``(B, 3, H, W)`` at the backbone's input size.

        Returns:
            :class:`ClipZeroShotOutput`.
        """
        visual = self.clip.visual
        tokens = encode_vit(visual, images)
        image_embedding = project_tokens(visual, tokens.cls_token)  # (B, E), equals clip.encode_image
        patch_embedding = project_tokens(visual, tokens.patch_tokens)  # (B, h, w, E)
        pred_score = anomaly_probability(image_embedding, self.text_features, self.temperature)
        patch_map = anomaly_probability(patch_embedding, self.text_features, self.temperature)
        anomaly_map = F.interpolate(patch_map[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ClipZeroShotOutput(pred_score=pred_score, anomaly_map=anomaly_map[:, 0], patch_map=patch_map)

    def extra_repr(self) -> str:
        return f"normal={self.normal_prompts[:2]}, anomalous={self.anomalous_prompts[:2]}, tau={self.temperature}"
