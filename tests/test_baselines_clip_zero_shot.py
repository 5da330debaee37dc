"""CLIP zero-shot: image score and naive patch map against hand computations from open_clip's own outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from feclip.baselines.clip_zero_shot import ClipZeroShot, ClipZeroShotOutput, prompt_pair
from feclip.predictor import AnomalyPrediction, AnomalyPredictor
from feclip.prompts import PAPER_PROMPTS, class_prompts, encode_prompt_pair


def _text_pair(tiny_clip, normal: str, anomalous: str) -> torch.Tensor:
    clip, tokenizer = tiny_clip
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokenizer([normal, anomalous])), dim=-1)  # (2, E)
    return text


def _softmax_anomalous(cos_normal: torch.Tensor, cos_anomalous: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.exp(cos_anomalous / tau) / (torch.exp(cos_normal / tau) + torch.exp(cos_anomalous / tau))


@pytest.fixture()
def output(tiny_clip, tiny_images) -> ClipZeroShotOutput:
    clip, tokenizer = tiny_clip
    return ClipZeroShot(clip, tokenizer)(tiny_images)


def test_image_score_equals_hand_computation(tiny_clip, tiny_images, output) -> None:
    clip, _ = tiny_clip
    text = _text_pair(tiny_clip, *PAPER_PROMPTS)
    with torch.no_grad():
        image = F.normalize(clip.encode_image(tiny_images), dim=-1)
    expected = _softmax_anomalous(image @ text[0], image @ text[1], 0.07)
    torch.testing.assert_close(output.pred_score, expected, atol=1e-5, rtol=0)


def test_patch_map_is_final_patch_tokens_through_the_frozen_projection(tiny_clip, tiny_images, output) -> None:
    visual = copy.deepcopy(tiny_clip[0].visual)
    visual.output_tokens = True  # open_clip returns the ln_post'd patch tokens, not projected
    text = _text_pair(tiny_clip, *PAPER_PROMPTS)
    with torch.no_grad():
        _, tokens = visual(tiny_images)
    patches = F.normalize(tokens @ visual.proj, dim=-1).reshape(2, 12, 12, -1)
    expected = _softmax_anomalous(patches @ text[0], patches @ text[1], 0.07)
    torch.testing.assert_close(output.patch_map, expected, atol=1e-5, rtol=0)


def test_anomaly_map_is_the_patch_map_upsampled(output) -> None:
    assert isinstance(output, AnomalyPrediction)
    assert output.anomaly_map.shape == (2, 96, 96)
    expected = F.interpolate(output.patch_map[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(output.anomaly_map, expected)
    # bilinear upsampling only interpolates: the pixel map stays within the patch map's range
    assert output.anomaly_map.min() >= output.patch_map.min() - 1e-6
    assert output.anomaly_map.max() <= output.patch_map.max() + 1e-6


def test_class_name_and_ensembles(tiny_clip) -> None:
    clip, tokenizer = tiny_clip
    bottle = ClipZeroShot(clip, tokenizer, prompts="bottle")
    expected = encode_prompt_pair(clip, tokenizer, *class_prompts("bottle"))
    torch.testing.assert_close(bottle.text_features, expected)
    ensemble = (["a photo of a good screw.", "a flawless screw."], ["a broken screw."])
    bottle.set_prompts(*ensemble)
    torch.testing.assert_close(bottle.text_features, encode_prompt_pair(clip, tokenizer, *ensemble))
    assert bottle.config.normal_prompts == ensemble[0] and isinstance(bottle, AnomalyPredictor)


def test_temperature_and_precomputed_text(tiny_clip, tiny_images) -> None:
    clip, tokenizer = tiny_clip
    text = encode_prompt_pair(clip, tokenizer, *PAPER_PROMPTS)
    sharp = ClipZeroShot(clip, None, temperature=0.01, text_features=text)(tiny_images)
    with torch.no_grad():
        image = F.normalize(clip.encode_image(tiny_images), dim=-1)
    torch.testing.assert_close(sharp.pred_score, _softmax_anomalous(image @ text[0], image @ text[1], 0.01), atol=1e-5, rtol=0)


def test_prompt_pair_forms_and_errors(tiny_clip) -> None:
    assert prompt_pair("cable") == ([class_prompts("cable")[0]], [class_prompts("cable")[1]])
    assert prompt_pair(("ok", ["bad", "worse"])) == (["ok"], ["bad", "worse"])
    with pytest.raises(ValueError, match="pair"):
        prompt_pair(("a", "b", "c"))
    with pytest.raises(ValueError, match="at least one"):
        prompt_pair(([], "b"))
    with pytest.raises(ValueError, match="tokenizer"):
        ClipZeroShot(tiny_clip[0], None)
