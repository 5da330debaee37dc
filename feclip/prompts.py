"""Text prompts and their CLIP embeddings.

Everything in FE-CLIP is scored against two text embeddings, one for the normal and
one for the anomalous state. Three ways to build them:

* the FE-CLIP paper's object-agnostic pair (:data:`PAPER_PROMPTS`),
* the same with a class name (:func:`class_prompts`),
* WinCLIP's compositional ensemble: states x templates (:func:`winclip_prompts`), whose
  embeddings are averaged per class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PAPER_PROMPTS",
    "NORMAL_STATES",
    "ANOMALOUS_STATES",
    "TEMPLATES",
    "class_prompts",
    "winclip_prompts",
    "encode_prompts",
    "encode_prompt_pair",
]

PAPER_PROMPTS: tuple[str, str] = ("A photo of a normal object.", "A photo of a damaged object.")

# WinCLIP's compositional prompt ensemble (Jeong et al., CVPR 2023, appendix): state words and templates.
NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES: tuple[str, ...] = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def class_prompts(class_name: str = "object") -> tuple[str, str]:
    """The paper's pair with a class name: ``("A photo of a normal <class>.", "A photo of a damaged <class>.")``."""
    return f"A photo of a normal {class_name}.", f"A photo of a damaged {class_name}."


def winclip_prompts(
    class_name: str = "object",
    normal_states: Sequence[str] = NORMAL_STATES,
    anomalous_states: Sequence[str] = ANOMALOUS_STATES,
    templates: Sequence[str] = TEMPLATES,
) -> tuple[list[str], list[str]]:
    """WinCLIP's compositional ensemble for one class.

    Args:
        class_name: Object name, e.g. ``"bottle"``; ``"object"`` when unknown.
        normal_states: State phrases with one ``{}`` for the class name.
        anomalous_states: Anomalous state phrases.
        templates: Sentence templates with one ``{}`` for the state phrase.

    Returns:
        ``(normal_prompts, anomalous_prompts)``, of lengths ``len(normal_states) * len(templates)``
        and ``len(anomalous_states) * len(templates)``.
    """
    normal = [t.format(s.format(class_name)) for s in normal_states for t in templates]
    anomalous = [t.format(s.format(class_name)) for s in anomalous_states for t in templates]
    return normal, anomalous


@torch.no_grad()
def encode_prompts(clip: nn.Module, tokenizer: Callable[[list[str]], Tensor], prompts: Sequence[str]) -> Tensor:
    """Mean of the normalised CLIP text embeddings of an ensemble, normalised again.

    Args:
        clip: open_clip model with ``encode_text``.
        tokenizer: open_clip tokenizer for that model.
        prompts: One or more sentences describing one state.

    Returns:
        Unit-norm embedding of shape ``(E,)``.
    """
    if len(prompts) == 0:
        raise ValueError("a prompt ensemble needs at least one prompt")
    device = next(clip.parameters()).device
    embeddings = F.normalize(clip.encode_text(tokenizer(list(prompts)).to(device)).float(), dim=-1)  # (P, E)
    return F.normalize(embeddings.mean(dim=0), dim=-1)


def encode_prompt_pair(
    clip: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    normal: str | Sequence[str],
    anomalous: str | Sequence[str],
) -> Tensor:
    """Text embeddings of the normal and the anomalous state, stacked.

    Args:
        clip: open_clip model with ``encode_text``.
        tokenizer: open_clip tokenizer for that model.
        normal: Prompt or prompt ensemble of the normal state.
        anomalous: Prompt or prompt ensemble of the anomalous state.

    Returns:
        Unit-norm embeddings of shape ``(2, E)``: row 0 normal, row 1 anomalous.
    """
    normal = [normal] if isinstance(normal, str) else list(normal)
    anomalous = [anomalous] if isinstance(anomalous, str) else list(anomalous)
    return torch.stack([encode_prompts(clip, tokenizer, normal), encode_prompts(clip, tokenizer, anomalous)])
