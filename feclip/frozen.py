"""What every detector in feclip shares: a frozen open_clip ViT and the two text embeddings it scores against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from feclip.prompts import encode_prompt_pair
from feclip.vit import check_vit

__all__ = ["FrozenClipDetector"]


class FrozenClipDetector(nn.Module):
    """Base of FE-CLIP and the baselines: the CLIP is frozen and stays in eval mode, even under ``train()``.

    Subclasses score embeddings against ``text_features``, row 0 the normal and row 1 the
    anomalous state (:func:`feclip.scoring.anomaly_probability`).

    Args:
        clip: open_clip ``CLIP`` model with a ViT image tower.
        tokenizer: Its tokenizer (not needed when ``text_features`` is given).
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings, or ``None`` to embed the prompts.
        normal: Prompt or ensemble of the normal state.
        anomalous: Prompt or ensemble of the anomalous state.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any | None,
        text_features: Tensor | None,
        normal: str | Sequence[str],
        anomalous: str | Sequence[str],
    ) -> None:
        super().__init__()
        check_vit(clip)
        self.clip = clip.eval()
        for parameter in self.clip.parameters():
            parameter.requires_grad_(False)
        self._tokenizer = tokenizer
        if text_features is None:
            if tokenizer is None:
                raise ValueError(f"{type(self).__name__} needs a tokenizer to embed its prompts, or precomputed text_features")
            text_features = encode_prompt_pair(clip, tokenizer, normal, anomalous)
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1))

    def train(self, mode: bool = True) -> FrozenClipDetector:
        """Set the mode of what trains; the frozen CLIP always stays in eval mode (no dropout on the teacher)."""
        super().train(mode)
        self.clip.eval()
        return self

    def _embed_prompts(self, normal: str | Sequence[str], anomalous: str | Sequence[str]) -> None:
        """Replace ``text_features`` by the embeddings of new prompts."""
        if self._tokenizer is None:
            raise ValueError("set_prompts needs the tokenizer the model was built with")
        features = encode_prompt_pair(self.clip, self._tokenizer, normal, anomalous)
        self.text_features.copy_(F.normalize(features.float(), dim=-1))
