"""WinCLIP: window masks by hand, harmonic aggregation against a loop, and the module against its own maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import hmean

from feclip.vit import embed_images
from feclip.baselines.winclip import (
    WinClip,
    WinClipOutput,
    harmonic_aggregation,
    harmonic_mean,
    make_window_masks,
    window_indices,
)
from feclip.predictor import AnomalyPredictor
from feclip.prompts import encode_prompt_pair, winclip_prompts
from feclip.scoring import anomaly_probability


def _brute_force_aggregation(window_scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    batch, (height, width) = window_scores.shape[0], masks.shape[1:]
    out = torch.zeros(batch, height, width, dtype=torch.float64)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                covering = [float(window_scores[b, m]) for m in range(masks.shape[0]) if masks[m, i, j]]
                out[b, i, j] = len(covering) / sum(1 / s for s in covering) if covering else 0.0
    return out


def test_window_masks_by_hand() -> None:
    masks = make_window_masks((3, 4), scale=2)
    assert masks.shape == (6, 3, 4) and masks.dtype == torch.bool  # (3-2+1) * (4-2+1) windows
    assert masks.flatten(1).sum(dim=1).tolist() == [4] * 6
    assert masks.sum(dim=0).tolist() == [[1, 2, 2, 1], [2, 4, 4, 2], [1, 2, 2, 1]]
    assert masks[4].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]  # 5th window: row 1, column 1
    assert make_window_masks(5, scale=3).shape == (9, 5, 5)
    assert make_window_masks((4, 4), scale=4).sum(dim=0).tolist() == [[1] * 4] * 4


def test_window_masks_with_stride_cover_every_patch() -> None:
    masks = make_window_masks((5, 5), scale=2, stride=2)  # starts 0, 2 and the flush-edge 3 in each direction
    assert masks.shape == (9, 5, 5)
    # per axis, rows 0..4 are covered by 1, 1, 1, 2, 1 windows (row 3 by the windows starting at 2 and 3)
    per_axis = [1, 1, 1, 2, 1]
    assert masks.sum(dim=0).tolist() == [[r * c for c in per_axis] for r in per_axis]
    assert make_window_masks((4, 4), scale=2, stride=2).sum(dim=0).eq(1).all()
    with pytest.raises(ValueError, match="does not fit"):
        make_window_masks((3, 3), scale=4)
    with pytest.raises(ValueError, match="positive"):
        make_window_masks((3, 3), scale=2, stride=0)


def test_window_indices_are_row_major() -> None:
    indices = window_indices(make_window_masks((3, 3), scale=2))
    assert indices.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]


def test_harmonic_aggregation_hand_example() -> None:
    scores = torch.tensor([[1.0, 0.75, 0.5, 0.25]])  # four 2x2 windows on a 3x3 grid
    result = harmonic_aggregation(scores, make_window_masks((3, 3), 2))
    # centre: 4 / (1 + 4/3 + 2 + 4) = 0.48; top-middle: 2 / (1 + 4/3) = 6/7
    expected = torch.tensor([[[1.0, 6 / 7, 0.75], [2 / 3, 0.48, 0.375], [0.5, 1 / 3, 0.25]]])
    torch.testing.assert_close(result, expected)


def test_harmonic_aggregation_matches_brute_force_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    for masks in (make_window_masks((5, 6), 3), make_window_masks((5, 5), 2, stride=2)):
        scores = torch.rand(2, masks.shape[0], generator=generator) * 0.98 + 0.01
        torch.testing.assert_close(harmonic_aggregation(scores, masks).double(), _brute_force_aggregation(scores, masks))
    # a patch no window covers gets 0; a zero window score pulls its patches to 0 without NaNs
    masks = torch.zeros(1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = True
    assert harmonic_aggregation(torch.tensor([[0.5]]), masks).tolist() == [[[0.5, 0.0], [0.0, 0.0]]]
    pulled_down = harmonic_aggregation(torch.tensor([[0.0, 0.5]]), torch.cat([masks, masks]))
    assert not pulled_down.isnan().any() and float(pulled_down.max()) < 1e-20


def test_harmonic_mean_matches_scipy() -> None:
    values = torch.rand(3, 4, 5) * 0.9 + 0.05
    torch.testing.assert_close(harmonic_mean(values, dim=0), torch.from_numpy(hmean(values.numpy(), axis=0)))


@pytest.fixture(scope="module")
def winclip(tiny_clip) -> WinClip:
    clip, tokenizer = tiny_clip
    return WinClip(clip, tokenizer, class_name="bottle")


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(7))


def test_windows_of_the_module_equal_a_plain_forward(tiny_clip, winclip, image) -> None:
    clip, _ = tiny_clip
    features = winclip.embed(image)
    assert [w.shape for w in features.window_embeddings] == [(1, 121, 64), (1, 100, 64)]
    with torch.no_grad():
        tokens = embed_images(clip.visual, image)
        for scale_index, window in ((0, 0), (0, 57), (1, 99)):
            patches = winclip.window_indices[scale_index][window]
            sequence = tokens[:, torch.cat([torch.zeros(1, dtype=torch.long), patches + 1])]
            reference = clip.visual.ln_post(clip.visual.transformer(sequence)[:, 0]) @ clip.visual.proj
            torch.testing.assert_close(features.window_embeddings[scale_index][:, window], reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(features.image_embedding, clip.encode_image(image), atol=1e-5, rtol=0)


def test_forward_combines_scales_as_documented(tiny_clip, winclip, image) -> None:
    clip, tokenizer = tiny_clip
    torch.testing.assert_close(winclip.text_features, encode_prompt_pair(clip, tokenizer, *winclip_prompts("bottle")))
    out = winclip(image)
    assert isinstance(out, WinClipOutput) and isinstance(winclip, AnomalyPredictor)
    features = winclip.embed(image)
    cls_score = anomaly_probability(features.image_embedding, winclip.text_features)
    torch.testing.assert_close(out.pred_score, cls_score)  # image_score="cls"
    assert out.scale_maps.shape == (3, 1, 12, 12)
    torch.testing.assert_close(out.scale_maps[0], cls_score[:, None, None].expand(1, 12, 12))
    # patch (5, 7) at scale 3 is covered by the 3 x 3 windows with top-left rows 3..5 and columns 5..7
    window_scores = anomaly_probability(features.window_embeddings[1], winclip.text_features)[0]
    covering = [window_scores[r * 10 + c] for r in range(3, 6) for c in range(5, 8)]
    torch.testing.assert_close(out.scale_maps[2, 0, 5, 7], torch.tensor(float(hmean([float(s) for s in covering]))))
    torch.testing.assert_close(out.patch_map, torch.from_numpy(hmean(out.scale_maps.double().numpy(), axis=0)).float())
    expected_map = F.interpolate(out.patch_map[:, None], size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out.anomaly_map, expected_map)
    assert 0 <= float(out.anomaly_map.min()) and float(out.anomaly_map.max()) <= 1


def test_options_change_what_they_say(tiny_clip, winclip, image) -> None:
    clip, _ = tiny_clip
    text = winclip.text_features
    windows_only = WinClip(clip, text_features=text, include_image_scale=False, image_score="mean_cls_map_max")(image)
    assert windows_only.scale_maps.shape == (2, 1, 12, 12)
    cls_score = winclip(image).pred_score
    torch.testing.assert_close(windows_only.pred_score, (cls_score + windows_only.patch_map.amax(dim=(1, 2))) / 2)
    with pytest.raises(ValueError, match="image_score"):
        WinClip(clip, text_features=text, image_score="max")
    with pytest.raises(ValueError, match="distinct"):
        WinClip(clip, text_features=text, scales=(2, 2))
    with pytest.raises(ValueError, match="tokenizer"):
        WinClip(clip)
    assert np.isclose(float(winclip.window_masks[0].sum()), 121 * 4)


def test_stride_and_temperature_change_the_values(tiny_clip, winclip, image) -> None:
    """Scale 3, stride 2 on the 12x12 grid: window rows/columns start at 0, 2, 4, 6, 8 and the flush 9."""
    clip, _ = tiny_clip
    tau = 0.5
    strided = WinClip(clip, text_features=winclip.text_features, scales=(3,), stride=2, temperature=tau)
    features, out = strided.embed(image), strided(image)
    starts = [0, 2, 4, 6, 8, 9]
    assert features.window_embeddings[0].shape == (1, 36, 64)

    def window_score(row: int, col: int) -> float:
        """The window's CLS embedding from a plain forward of its own tokens, scored at temperature tau."""
        with torch.no_grad():
            tokens = embed_images(clip.visual, image)
            patches = torch.tensor([r * 12 + c for r in range(row, row + 3) for c in range(col, col + 3)])
            sequence = tokens[:, torch.cat([torch.zeros(1, dtype=torch.long), patches + 1])]
            embedding = clip.visual.ln_post(clip.visual.transformer(sequence)[:, 0]) @ clip.visual.proj
        cosine = F.normalize(embedding.double(), dim=-1) @ F.normalize(strided.text_features.double(), dim=-1).T
        return float((cosine / tau).softmax(dim=-1)[0, 1])

    # Patch (11, 11) lies only in the window starting at (9, 9); patch (10, 2) in those starting at rows 8, 9 x columns 0, 2.
    assert out.scale_maps[1, 0, 11, 11].item() == pytest.approx(window_score(9, 9), abs=1e-5)
    covering = [window_score(r, c) for r in (8, 9) for c in (0, 2)]
    assert out.scale_maps[1, 0, 10, 2].item() == pytest.approx(float(hmean(covering)), abs=1e-5)
    assert sorted({int(i) // 12 for i in strided.window_indices[0][:, 0]}) == starts  # top-left rows of the windows
    cosine = F.normalize(features.image_embedding.double(), dim=-1) @ F.normalize(strided.text_features.double(), dim=-1).T
    torch.testing.assert_close(out.pred_score.double(), (cosine / tau).softmax(dim=-1)[:, 1], atol=1e-6, rtol=0)
