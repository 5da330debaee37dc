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


# --- one detector API ----------------------------------------------------------------------------------


def _detectors(tiny_clip, references: torch.Tensor) -> dict:
    import copy

    from feclip.baselines import ClipZeroShot, FEClipFewShot, WinClip, WinClipFewShot
    from feclip.model import FEClip

    clip, tokenizer = tiny_clip
    feclip_model = FEClip(copy.deepcopy(clip), tokenizer, tap_indices=[5, 11])
    return {
        "clip": ClipZeroShot(clip, tokenizer),
        "winclip": WinClip(clip, tokenizer, scales=(3,)),
        "feclip": feclip_model,
        "winclip+": WinClipFewShot(WinClip(clip, tokenizer, scales=(3,)), references),
        "feclip+": FEClipFewShot(feclip_model, references),
    }


@pytest.mark.parametrize("name", ["clip", "winclip", "feclip", "winclip+", "feclip+"])
def test_every_detector_speaks_one_api(tiny_clip, tiny_images, name: str) -> None:
    """embed then predict is the forward pass; set_prompts(normal, anomalous); temperature lives in the config."""
    from feclip.predictor import AnomalyPrediction, AnomalyPredictor, Detector
    from feclip.scoring import anomaly_probability

    clip, tokenizer = tiny_clip
    detector = _detectors(tiny_clip, tiny_images[:1])[name].eval()
    assert isinstance(detector, Detector) and isinstance(detector, AnomalyPredictor)
    with torch.no_grad():
        features = detector.embed(tiny_images)
        by_steps, whole = detector.predict(features, (80, 72)), detector(tiny_images)
    assert isinstance(whole, AnomalyPrediction) and by_steps.anomaly_map.shape == (2, 80, 72)
    assert whole.anomaly_map.shape == (2, 96, 96)
    torch.testing.assert_close(by_steps.pred_score, whole.pred_score)
    with torch.no_grad():
        torch.testing.assert_close(detector.predict(features, (96, 96)).anomaly_map, whole.anomaly_map)

    zero_shot = getattr(detector, "zero_shot_detector", detector)
    assert detector.temperature == zero_shot.config.temperature == 0.07
    normal, anomalous = "a photo of a flawless part.", ["a photo of a cracked part.", "a photo of a bent part."]
    detector.set_prompts(normal, anomalous)
    torch.testing.assert_close(zero_shot.text_features, encode_prompt_pair(clip, tokenizer, [normal], anomalous))
    assert (zero_shot.config.normal_prompts, zero_shot.config.anomalous_prompts) == ([normal], anomalous)

    zero_shot.config.temperature = 0.5  # the temperature the scores use is the config's
    assert detector.temperature == 0.5
    if name == "clip":
        with torch.no_grad():
            expected = anomaly_probability(detector.embed(tiny_images).image_embedding, zero_shot.text_features, 0.5)
            torch.testing.assert_close(detector(tiny_images).pred_score, expected)
    with torch.no_grad():
        cooler = detector(tiny_images).pred_score
    assert not torch.allclose(cooler, whole.pred_score, atol=1e-6)


def test_evaluate_accepts_every_detector(tiny_clip, tiny_images) -> None:
    from torch.utils.data import Dataset

    from feclip.evaluate import evaluate

    class Four(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> dict:
            mask = torch.zeros(96, 96)
            mask[20:40, 30:50] = float(index % 2)
            return {"image": torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(index)), "mask": mask,
                    "label": index % 2, "category": "part", "has_mask": True}

    for name, detector in _detectors(tiny_clip, tiny_images[:1]).items():
        table = evaluate(detector, Four(), batch_size=2, progress=False)
        assert table.loc["macro", "n_images"] == 4, name
        assert 0 <= table.loc["macro", "image_auroc"] <= 1, name


def test_from_open_clip_is_written_once_and_builds_each_detectors_backbone() -> None:
    from feclip.backbones import backbone_fingerprint, create_tiny_clip
    from feclip.baselines import ClipZeroShot, WinClip, WinClipFewShot
    from feclip.model import FEClip

    for cls in (FEClip, ClipZeroShot, WinClip):
        assert "from_open_clip" not in vars(cls)  # the one body is FrozenClipDetector's
    assert FEClip.default_backbone == ClipZeroShot.default_backbone == ("ViT-L-14-336", "openai")
    assert WinClip.default_backbone == ("ViT-B-16-plus-240", "laion400m_e32")
    expected = backbone_fingerprint(create_tiny_clip(seed=2)[0])
    baseline = ClipZeroShot.from_open_clip("feclip-tiny", None, seed=2, prompts="bottle", temperature=0.2)
    winclip = WinClip.from_open_clip("feclip-tiny", None, seed=2, class_name="screw", scales=(2,))
    assert backbone_fingerprint(baseline.clip) == backbone_fingerprint(winclip.clip) == expected
    assert baseline.config.temperature == 0.2 and "bottle" in baseline.config.normal_prompts[0]
    assert (winclip.config.class_name, winclip.config.scales) == ("screw", (2,))
    few_shot = WinClipFewShot.from_open_clip(torch.zeros(1, 3, 96, 96), "feclip-tiny", None, class_name="screw")
    assert few_shot.winclip.config.class_name == "screw"
