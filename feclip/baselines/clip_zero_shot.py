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

from feclip.frozen import FrozenClipDetector, prompt_list
from feclip.predictor import AnomalyPrediction
from feclip.prompts import PAPER_PROMPTS, class_prompts
from feclip.scoring import anomaly_probability
from feclip.vit import encode_vit, project_tokens

__all__ = ["Prompts", "prompt_pair", "ClipZeroShotConfig", "ClipZeroShotFeatures", "ClipZeroShotOutput", "ClipZeroShot"]

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
    return prompt_list(prompts[0]), prompt_list(prompts[1])


@dataclass
class ClipZeroShotConfig:
    """Settings of the CLIP zero-shot baseline.

    Attributes:
        normal_prompts: Prompt ensemble of the normal state.
        anomalous_prompts: Prompt ensemble of the anomalous state.
        temperature: Softmax temperature ``tau``.
    """

    normal_prompts: list[str]
    anomalous_prompts: list[str]
    temperature: float = 0.07


@dataclass
class ClipZeroShotFeatures:
    """What the frozen ViT gives the baseline (:meth:`ClipZeroShot.embed`).

    Attributes:
        image_embedding: CLS embedding, equal to ``clip.encode_image``, shape ``(B, E)``.
        patch_embedding: Final-layer patch tokens through ``ln_post`` and the frozen projection, shape ``(B, h, w, E)``.
    """

    image_embedding: Tensor
    patch_embedding: Tensor


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
        self.config = ClipZeroShotConfig(normal, anomalous, temperature)

    @torch.no_grad()
    def embed(self, images: Tensor) -> ClipZeroShotFeatures:
        """The CLS and patch embeddings of normalised images ``(B, 3, H, W)`` at the backbone's input size."""
        visual = self.clip.visual
        tokens = encode_vit(visual, images)
        return ClipZeroShotFeatures(
            image_embedding=project_tokens(visual, tokens.cls_token),  # (B, E), equals clip.encode_image
            patch_embedding=project_tokens(visual, tokens.patch_tokens),  # (B, h, w, E)
        )

    @torch.no_grad()
    def predict(self, features: ClipZeroShotFeatures, image_size: tuple[int, int]) -> ClipZeroShotOutput:
        """Image scores, the naive token-grid map and its pixel map upsampled to ``image_size`` ``(H, W)``."""
        pred_score = anomaly_probability(features.image_embedding, self.text_features, self.temperature)
        patch_map = anomaly_probability(features.patch_embedding, self.text_features, self.temperature)
        anomaly_map = F.interpolate(patch_map[:, None], size=image_size, mode="bilinear", align_corners=False)
        return ClipZeroShotOutput(pred_score=pred_score, anomaly_map=anomaly_map[:, 0], patch_map=patch_map)

    def extra_repr(self) -> str:
        c = self.config
        return f"normal={c.normal_prompts[:2]}, anomalous={c.anomalous_prompts[:2]}, tau={c.temperature}"
