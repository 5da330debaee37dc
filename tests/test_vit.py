"""The hand-run ViT tower: equal to open_clip's own forward, in both layouts, and its window encodings."""

from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import Transformer
from torch import Tensor, nn

from feclip.vit import (
    check_vit,
    embed_images,
    encode_vit,
    encode_windows,
    encode_windows_with_attention_mask,
    gather_window_tokens,
    project_tokens,
    window_attention_mask,
)

WINDOWS = torch.tensor([[0, 1, 12, 13], [25, 26, 37, 38]])  # two 2x2 windows on the 12x12 grid


def _reference_window_embedding(clip: nn.Module, images: Tensor, window: list[int]) -> Tensor:
    """One window through open_clip's own ``Transformer.forward`` (which handles its layout itself), ``(B, E)``."""
    visual = clip.visual
    tokens = embed_images(visual, images)
    sequence = tokens[:, [0] + [i + 1 for i in window]]
    return visual.ln_post(visual.transformer(sequence)[:, 0]) @ visual.proj


def test_cls_through_ln_post_and_proj_equals_encode_image(tiny_clip, tiny_images) -> None:
    clip, _ = tiny_clip
    with torch.no_grad():
        tokens = encode_vit(clip.visual, tiny_images)
        expected = clip.encode_image(tiny_images)
    assert tokens.cls_token.shape == (2, 64) and tokens.patch_tokens.shape == (2, 12, 12, 64)
    torch.testing.assert_close(project_tokens(clip.visual, tokens.cls_token), expected, atol=1e-5, rtol=0)


def test_patch_tokens_equal_open_clip_output_tokens(tiny_clip, tiny_images) -> None:
    visual = copy.deepcopy(tiny_clip[0].visual)
    visual.output_tokens = True  # open_clip then also returns the ln_post'd patch tokens
    with torch.no_grad():
        _, open_clip_tokens = visual(tiny_images)  # (B, h*w, D)
        tokens = encode_vit(visual, tiny_images)
    torch.testing.assert_close(visual.ln_post(tokens.patch_tokens).flatten(1, 2), open_clip_tokens, atol=1e-5, rtol=0)


def test_sequence_first_layout_gives_the_same_tokens(tiny_clip, tiny_images) -> None:
    visual = copy.deepcopy(tiny_clip[0].visual)
    lnd = Transformer(width=64, layers=12, heads=4, batch_first=False)
    lnd.load_state_dict(visual.transformer.state_dict())
    with torch.no_grad():
        expected = encode_vit(visual, tiny_images)
        tokens_before = embed_images(visual, tiny_images)
        windows_before = encode_windows(visual, tokens_before, WINDOWS)
        visual.transformer = lnd.eval()  # blocks now expect (L, N, D), like older open_clip
        got = encode_vit(visual, tiny_images)
        windows_after = encode_windows(visual, embed_images(visual, tiny_images), WINDOWS)
    torch.testing.assert_close(got.cls_token, expected.cls_token, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.patch_tokens, expected.patch_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(windows_after, windows_before, atol=1e-5, rtol=0)


def test_gather_window_tokens_picks_cls_and_window_patches() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # B=2, 1 + 4 patches, D=3
    windows = torch.tensor([[0, 1], [2, 3], [1, 3]])
    gathered = gather_window_tokens(tokens, windows)
    assert gathered.shape == (6, 3, 3)
    # image 1, window 2 is row 1*3 + 2: CLS, then patches 1 and 3 (tokens 2 and 4).
    torch.testing.assert_close(gathered[5], tokens[1, [0, 2, 4]])
    torch.testing.assert_close(gathered[0], tokens[0, [0, 1, 2]])


def test_batched_windows_equal_one_window_at_a_time(tiny_clip, tiny_images) -> None:
    clip, _ = tiny_clip
    with torch.no_grad():
        tokens = embed_images(clip.visual, tiny_images)
        batched = encode_windows(clip.visual, tokens, WINDOWS)
        chunked = encode_windows(clip.visual, tokens, WINDOWS, chunk_size=1)
        masked = encode_windows_with_attention_mask(clip.visual, tokens, WINDOWS)
        references = [_reference_window_embedding(clip, tiny_images, w.tolist()) for w in WINDOWS]
    assert batched.shape == (2, 2, 64)
    for index, reference in enumerate(references):
        torch.testing.assert_close(batched[:, index], reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, batched, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked, batched, atol=1e-5, rtol=0)


def test_window_of_all_patches_is_the_whole_image(tiny_clip, tiny_images) -> None:
    clip, _ = tiny_clip
    with torch.no_grad():
        tokens = embed_images(clip.visual, tiny_images)
        whole = encode_windows(clip.visual, tokens, torch.arange(144)[None])
        expected = clip.encode_image(tiny_images)
    torch.testing.assert_close(whole[:, 0], expected, atol=1e-5, rtol=0)


def test_window_attention_mask_by_hand() -> None:
    mask = window_attention_mask(torch.tensor([[1, 3]]), num_patches=4, num_heads=2)
    assert mask.shape == (2, 5, 5)
    # keys kept: CLS (0) and patches 1, 3 (tokens 2, 4), for every query and head
    expected_row = torch.tensor([0.0, -float("inf"), 0.0, -float("inf"), 0.0])
    assert torch.equal(mask, expected_row.expand(2, 5, 5))


def test_bad_inputs_raise_one_clear_error(tiny_clip) -> None:
    clip, _ = tiny_clip
    with pytest.raises(ValueError, match="96"):
        embed_images(clip.visual, torch.zeros(1, 3, 64, 64))
    with pytest.raises(TypeError, match="VisionTransformer"):
        check_vit(nn.Linear(2, 2))
    assert check_vit(clip) is clip.visual
