"""The frozen-CLIP base every detector shares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feclip.frozen import FrozenClipDetector
from feclip.prompts import encode_prompt_pair


def test_clip_is_frozen_and_stays_in_eval_mode(tiny_clip) -> None:
    clip, tokenizer = tiny_clip
    detector = FrozenClipDetector(clip, tokenizer, None, "a normal thing", "a broken thing")
    detector.train()
    assert detector.training and not clip.training
    assert not any(module.training for module in clip.modules())
    assert not any(p.requires_grad for p in clip.parameters())


def test_text_features_are_the_normalised_prompt_embeddings(tiny_clip) -> None:
    clip, tokenizer = tiny_clip
    detector = FrozenClipDetector(clip, tokenizer, None, ["a normal thing"], ["a broken thing", "a cut thing"])
    expected = encode_prompt_pair(clip, tokenizer, ["a normal thing"], ["a broken thing", "a cut thing"])
    torch.testing.assert_close(detector.text_features, expected)
    given = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    no_tokenizer = FrozenClipDetector(clip, None, given, "", "")
    torch.testing.assert_close(no_tokenizer.text_features, F.normalize(given, dim=-1))
    with pytest.raises(ValueError, match="set_prompts needs the tokenizer"):
        no_tokenizer._embed_prompts("x", "y")


def test_missing_tokenizer_names_the_detector(tiny_clip) -> None:
    clip, _ = tiny_clip
    with pytest.raises(ValueError, match="FrozenClipDetector needs a tokenizer"):
        FrozenClipDetector(clip, None, None, "a", "b")
