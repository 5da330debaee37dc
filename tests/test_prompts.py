"""Prompt ensembles and their CLIP text embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feclip.prompts import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    PAPER_PROMPTS,
    TEMPLATES,
    class_prompts,
    encode_prompt_pair,
    encode_prompts,
    winclip_prompts,
)


def test_paper_and_class_prompts() -> None:
    assert PAPER_PROMPTS == ("A photo of a normal object.", "A photo of a damaged object.")
    assert class_prompts() == PAPER_PROMPTS
    assert class_prompts("metal nut") == ("A photo of a normal metal nut.", "A photo of a damaged metal nut.")


def test_winclip_ensemble_counts_and_formatting() -> None:
    assert (len(NORMAL_STATES), len(ANOMALOUS_STATES), len(TEMPLATES)) == (7, 4, 22)
    normal, anomalous = winclip_prompts("bottle")
    assert len(normal) == 7 * 22 and len(anomalous) == 4 * 22
    assert len(set(normal)) == len(normal) and len(set(anomalous)) == len(anomalous)
    # Ordered state-major: prompt s * 22 + t is template t filled with state s.
    assert normal[0] == "a cropped photo of the bottle."
    assert normal[22] == "a cropped photo of the flawless bottle."
    assert normal[4 * 22 + 21] == "a photo of a bottle without flaw for anomaly detection."
    assert anomalous[0] == "a cropped photo of the damaged bottle."
    assert anomalous[3 * 22 + 12] == "a photo of a bottle with damage."
    assert all("bottle" in prompt and "{}" not in prompt for prompt in normal + anomalous)
    assert winclip_prompts()[1][0] == "a cropped photo of the damaged object."


def test_winclip_ensemble_with_custom_parts() -> None:
    normal, anomalous = winclip_prompts("cable", ["good {}"], ["bad {}", "{} with a cut"], ["{}!", "see the {}."])
    assert normal == ["good cable!", "see the good cable."]
    assert anomalous == ["bad cable!", "see the bad cable.", "cable with a cut!", "see the cable with a cut."]


def test_encode_prompt_pair_is_the_normalised_mean_of_normalised_embeddings(tiny_clip) -> None:
    clip, tokenizer = tiny_clip
    normal = ["a photo of a flawless bottle.", "a photo of a perfect bottle.", "a bottle."]
    anomalous = "a photo of a damaged bottle."
    pair = encode_prompt_pair(clip, tokenizer, normal, anomalous)
    assert pair.shape == (2, 64)
    torch.testing.assert_close(pair.norm(dim=-1), torch.ones(2))

    def embed_one(prompt: str) -> torch.Tensor:  # one sentence at a time, so batching cannot hide a bug
        with torch.no_grad():
            vector = clip.encode_text(tokenizer([prompt]))[0].double()
        return vector / vector.norm()

    mean = sum(embed_one(prompt) for prompt in normal) / 3
    torch.testing.assert_close(pair[0].double(), mean / mean.norm(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pair[1].double(), embed_one(anomalous), atol=1e-5, rtol=0)
    assert (pair[0] - pair[1]).abs().max() > 1e-3
    torch.testing.assert_close(encode_prompts(clip, tokenizer, normal), pair[0])


def test_encode_prompts_needs_a_prompt(tiny_clip) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        encode_prompts(*tiny_clip, [])


def test_encode_prompts_does_not_track_gradients(tiny_clip) -> None:
    features = encode_prompts(*tiny_clip, ["a photo of a bottle."])
    assert not features.requires_grad
    torch.testing.assert_close(features, F.normalize(features, dim=-1))
