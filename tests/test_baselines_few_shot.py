"""Few-shot memory banks: nearest neighbours against scipy, zero association for known patches, the fusion rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from feclip.baselines.few_shot import FEClipFewShot, FewShotOutput, PatchMemoryBank, WinClipFewShot, visual_association_score
from feclip.baselines.winclip import WinClip, harmonic_aggregation
from feclip.model import FEClip
from feclip.predictor import AnomalyPredictor


def _check_fusion(out: FewShotOutput) -> None:
    """WinCLIP+'s rules: maps averaged, image score = mean of zero-shot score and association maximum; all in [0, 1]."""
    expected_map = F.interpolate(((out.zero_shot_map + out.association_map) / 2)[:, None], size=(96, 96), mode="bilinear")
    torch.testing.assert_close(out.anomaly_map, expected_map[:, 0])
    torch.testing.assert_close(out.pred_score, (out.zero_shot_score + out.association_map.amax(dim=(1, 2))) / 2)
    for value in (out.pred_score, out.anomaly_map, out.association_map):
        assert 0 <= float(value.min()) and float(value.max()) <= 1


def test_association_score_matches_scipy_cosine_distance() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, memory = torch.randn(2, 3, 4, 8, generator=generator), torch.randn(50, 8, generator=generator)
    expected = cdist(queries.reshape(-1, 8).double().numpy(), memory.double().numpy(), metric="cosine").min(axis=1) / 2
    got = visual_association_score(queries, memory)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got.double().flatten(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(visual_association_score(queries, memory, chunk_size=5), got)
    # the extremes: the same direction scores 0, the opposite one 1
    assert visual_association_score(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), torch.tensor([[1.0, 0.0]])).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="memory"):
        visual_association_score(queries, torch.randn(5, 7))


def test_memory_bank_scores_its_own_patches_zero() -> None:
    generator = torch.Generator().manual_seed(1)
    references = torch.randn(2, 4, 4, 16, generator=generator)  # K=2 images of 4x4 patches
    bank = PatchMemoryBank(references, chunk_size=7)
    assert len(bank) == 32 and torch.allclose(bank.features.norm(dim=1), torch.ones(32))
    query = torch.randn(1, 4, 4, 16, generator=generator)
    query[0, :2] = references[1, 2:] * 3.0  # top half copied (scaled) from the bank
    scores = bank(query)
    assert float(scores[0, :2].max()) < 1e-6
    assert float(scores[0, 2:].min()) > 0.05
    with pytest.raises(ValueError, match="memory bank"):
        PatchMemoryBank(torch.zeros(0, 16))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def winclip_few_shot(tiny_clip, images) -> WinClipFewShot:
    clip, tokenizer = tiny_clip
    return WinClipFewShot(WinClip(clip, tokenizer, scales=(2, 3)), images[:1])


def test_winclip_few_shot_zero_association_on_its_reference(winclip_few_shot, images) -> None:
    out = winclip_few_shot(images)
    assert isinstance(out, FewShotOutput) and isinstance(winclip_few_shot, AnomalyPredictor)
    assert out.association_map.shape == (2, 12, 12)
    assert float(out.association_map[0].max()) < 1e-5  # the reference itself: every patch and window is in the banks
    assert float(out.association_map[1].min()) > 0
    _check_fusion(out)


def test_winclip_few_shot_parts(winclip_few_shot, images) -> None:
    winclip = winclip_few_shot.winclip
    out = winclip_few_shot(images[1:])
    zero_shot = winclip(images[1:])
    torch.testing.assert_close(out.zero_shot_map, zero_shot.patch_map)
    torch.testing.assert_close(out.zero_shot_score, zero_shot.pred_score)
    features = winclip.embed(images[1:])
    reference = winclip.embed(images[:1])
    patch_level = visual_association_score(features.patch_features, reference.patch_features.reshape(-1, 64))
    window_level = [
        harmonic_aggregation(visual_association_score(w, r.reshape(-1, 64)), masks)
        for w, r, masks in zip(features.window_embeddings, reference.window_embeddings, winclip.window_masks)
    ]
    torch.testing.assert_close(out.association_map, (patch_level + window_level[0] + window_level[1]) / 3)


@pytest.fixture(scope="module")
def feclip_model(tiny_clip) -> FEClip:
    clip, tokenizer = tiny_clip
    return FEClip(clip, tokenizer, backbone="feclip-tiny", pretrained=None).eval()


def test_feclip_few_shot_zero_shot_part_is_feclip(feclip_model, images) -> None:
    few_shot = FEClipFewShot(feclip_model, images[:1])
    assert len(few_shot.banks) == len(feclip_model.tap_indices) and len(few_shot.banks[0]) == 144
    out = few_shot(images)
    with torch.no_grad():
        expected = feclip_model(images)
    torch.testing.assert_close(out.zero_shot_score, expected.pred_score)
    torch.testing.assert_close(out.zero_shot_map, expected.tap_maps.mean(dim=0))
    assert float(out.association_map[0].max()) < 1e-5  # the reference image itself
    assert float(out.association_map[1].min()) > 0
    with torch.no_grad():
        taps = feclip_model.embed(images[1:])
        references = feclip_model.embed(images[:1])
    by_hand = torch.stack(
        [visual_association_score(t.patch_tokens, r.patch_tokens.reshape(-1, 64)) for t, r in zip(taps, references)]
    ).mean(dim=0)
    torch.testing.assert_close(out.association_map[1:], by_hand)
    _check_fusion(out)


def test_feclip_few_shot_on_projected_embeddings(feclip_model, images) -> None:
    out = FEClipFewShot(feclip_model, images[:1], feature="patch_embedding")(images)
    assert float(out.association_map[0].max()) < 1e-5
    _check_fusion(out)
    with pytest.raises(ValueError, match="feature"):
        FEClipFewShot(feclip_model, images[:1], feature="cls")
    with pytest.raises(ValueError, match="reference_images"):
        FEClipFewShot(feclip_model, images[0])
