"""What every zero-shot detector in feclip shares: a frozen open_clip ViT and the two text embeddings it scores against."""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType
from typing import Any, ClassVar, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.predictor import Detector
from feclip.prompts import encode_prompt_pair
from feclip.vit import check_vit

__all__ = ["DetectorConfig", "FrozenClipDetector", "prompt_list"]

_Self = TypeVar("_Self", bound="FrozenClipDetector")


class DetectorConfig(Protocol):
    """What every detector's config holds (:class:`feclip.model.FEClipConfig`, ``ClipZeroShotConfig``, ``WinClipConfig``)."""

    temperature: float
    normal_prompts: list[str]
    anomalous_prompts: list[str]


def prompt_list(prompts: str | Sequence[str]) -> list[str]:
    """One prompt or an ensemble as a non-empty list of sentences."""
    listed = [prompts] if isinstance(prompts, str) else list(prompts)
    if not listed:
        raise ValueError("each side of a prompt pair needs at least one prompt")
    return listed


class FrozenClipDetector(Detector):
    """Base of FE-CLIP and the zero-shot baselines: the CLIP is frozen and stays in eval mode, even under ``train()``.

    Subclasses score embeddings against ``text_features``, row 0 the normal and row 1 the
    anomalous state (:func:`feclip.scoring.anomaly_probability`), keep their settings in
    ``self.config`` (a :class:`DetectorConfig`), and implement ``embed`` and ``predict``
    (:class:`feclip.predictor.Detector`). This base gives them ``forward``, :meth:`from_open_clip`,
    :meth:`set_prompts` and :attr:`temperature`.

    Args:
        clip: open_clip ``CLIP`` model with a ViT image tower.
        tokenizer: Its tokenizer (not needed when ``text_features`` is given).
        text_features: Precomputed ``(2, E)`` normal/anomalous text embeddings, or ``None`` to embed the prompts.
        normal: Prompt or ensemble of the normal state.
        anomalous: Prompt or ensemble of the anomalous state.
    """

    #: ``(open_clip name, pretrained tag)`` that :meth:`from_open_clip` builds when not told otherwise.
    default_backbone: ClassVar[tuple[str, str | None]] = ("ViT-L-14-336", "openai")
    config: DetectorConfig

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

    @classmethod
    def from_open_clip(
        cls: type[_Self],
        name: str | None = None,
        pretrained: str | None | EllipsisType = ...,
        *,
        device: torch.device | str = "cpu",
        cache_dir: str | None = None,
        seed: int = 0,
        quick_gelu: bool | None = None,
        **options: Any,
    ) -> _Self:
        """Create the backbone with :func:`feclip.backbones.create_clip` and wrap it.

        Args:
            name: open_clip model name (``"feclip-tiny"`` offline); default: the class's
                :attr:`default_backbone` (FE-CLIP and CLIP: ``ViT-L-14-336``; WinCLIP: ``ViT-B-16-plus-240``).
            pretrained: Pretrained tag, a checkpoint path, or ``None`` for random weights; default: the
                class's :attr:`default_backbone` tag (``openai``; WinCLIP: ``laion400m_e32``).
            device: Device of the detector.
            cache_dir: Optional weights cache directory.
            seed: Seed of a random backbone (``pretrained=None``) and of any trained part's initialisation;
                the global RNG is left untouched, so the same call always builds the same detector.
            quick_gelu: Activation of a backbone loaded from a weights file (see
                :func:`feclip.backbones.uses_quick_gelu`); ``None`` decides it from the tag or the file.
            **options: Keyword arguments of the detector's constructor (FE-CLIP: fields of its config).

        Returns:
            The detector, on ``device``.
        """
        from feclip.backbones import create_clip

        default_name, default_pretrained = cls.default_backbone
        clip, tokenizer = create_clip(
            name or default_name,
            default_pretrained if pretrained is ... else pretrained,
            device=device,
            cache_dir=cache_dir,
            seed=seed,
            quick_gelu=quick_gelu,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            detector = cls(clip, tokenizer, **options)
        return detector.to(device)

    def train(self, mode: bool = True) -> FrozenClipDetector:
        """Set the mode of what trains; the frozen CLIP always stays in eval mode (no dropout on the teacher)."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def temperature(self) -> float:
        """Softmax temperature ``tau`` the detector scores with (``config.temperature``)."""
        return self.config.temperature

    def set_prompts(self, normal: str | Sequence[str], anomalous: str | Sequence[str]) -> None:
        """Re-embed the text prompts (a sentence or an ensemble per state) and record them in the config.

        Args:
            normal: Prompt or ensemble of the normal state.
            anomalous: Prompt or ensemble of the anomalous state.
        """
        normal, anomalous = prompt_list(normal), prompt_list(anomalous)
        self._embed_prompts(normal, anomalous)
        self.config.normal_prompts, self.config.anomalous_prompts = normal, anomalous

    def _embed_prompts(self, normal: str | Sequence[str], anomalous: str | Sequence[str]) -> None:
        """Replace ``text_features`` by the embeddings of new prompts."""
        if self._tokenizer is None:
            raise ValueError("set_prompts needs the tokenizer the model was built with")
        features = encode_prompt_pair(self.clip, self._tokenizer, normal, anomalous)
        self.text_features.copy_(F.normalize(features.float(), dim=-1))
