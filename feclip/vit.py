"""Running an open_clip ViT image tower by hand: CLS and patch tokens, and WinCLIP's window encodings.

``clip.encode_image`` only returns the pooled CLS embedding. FE-CLIP and the baselines need more:

* the final-layer patch tokens (CLIP's naive anomaly map, WinCLIP+'s patch memory bank),
* the CLS embedding of a *window*: the ViT re-run on the CLS token plus the patch tokens
  inside the window only (WinCLIP's "masked" image encoding).

For the windows the embedded tokens (patch embedding + positional embedding + ``ln_pre``)
are computed once per image, and the tokens of every window are gathered into short
sequences ``(1 + s*s, D)`` that go through the transformer together, as one batch. Because
the positional embeddings were added before the gather, every patch keeps its position.
:func:`encode_windows_with_attention_mask` computes the same thing with full-length
sequences and an attention mask; it is the slow reference the tests compare against.

Blocks are run one by one, so both layouts of open_clip's transformer work: batch first
``(N, L, D)`` (open_clip >= 2.23) and sequence first ``(L, N, D)`` (older releases).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "VitTokens",
    "check_vit",
    "embed_images",
    "run_blocks",
    "project_tokens",
    "encode_vit",
    "gather_window_tokens",
    "encode_windows",
    "window_attention_mask",
    "encode_windows_with_attention_mask",
]


@dataclass
class VitTokens:
    """Final-layer tokens of a ViT image tower, before ``ln_post``.

    Attributes:
        cls_token: CLS token, shape ``(B, D)``.
        patch_tokens: Patch tokens on the token grid, shape ``(B, h, w, D)``.
    """

    cls_token: Tensor
    patch_tokens: Tensor


def check_vit(clip: nn.Module) -> nn.Module:
    """The ViT image tower of an open_clip model, or one clear error saying why it cannot be used.

    Args:
        clip: An open_clip ``CLIP`` model (or its ``visual`` tower itself).

    Returns:
        The ``VisionTransformer``.

    Raises:
        TypeError: The tower is not a CLS-pooled ViT with an output projection.
    """
    visual = getattr(clip, "visual", clip)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing:
        raise TypeError(f"feclip needs an open_clip model with a VisionTransformer tower; missing {missing}")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise TypeError("feclip needs a ViT that pools with its CLS token (pool_type 'tok', no attentional pooler)")
    if visual.proj is None:
        raise TypeError("feclip needs the ViT's output projection (visual.proj is None)")
    return visual


def embed_images(visual: nn.Module, images: Tensor) -> Tensor:
    """Patch embedding, CLS token, positional embedding and ``ln_pre``: the tokens block 0 sees.

    ``ln_pre`` normalises every token on its own, so selecting tokens after it is the same as before it.

    Args:
        visual: open_clip ``VisionTransformer``.
        images: Normalised images of shape ``(B, 3, H, W)`` at the tower's input size.

    Returns:
        Tokens of shape ``(B, 1 + h*w, D)``, CLS first, patches in row-major order.
    """
    if images.ndim != 4 or tuple(images.shape[-2:]) != tuple(visual.image_size):
        raise ValueError(f"images must be (B, 3, {visual.image_size[0]}, {visual.image_size[1]}), got {tuple(images.shape)}")
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, D, h, w)
    x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def run_blocks(visual: nn.Module, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """All transformer blocks of the tower, in either layout.

    Args:
        visual: open_clip ``VisionTransformer``.
        tokens: Sequences of shape ``(N, L, D)``.
        attn_mask: Optional additive float mask of shape ``(L, L)`` or ``(N * heads, L, L)``.

    Returns:
        Output tokens of shape ``(N, L, D)``.
    """
    batch_first = getattr(visual.transformer, "batch_first", False)
    x = tokens if batch_first else tokens.transpose(0, 1)  # (L, N, D) for older open_clip
    for block in visual.transformer.resblocks:
        x = block(x, attn_mask=attn_mask)
    return x if batch_first else x.transpose(0, 1)


def project_tokens(visual: nn.Module, tokens: Tensor) -> Tensor:
    """``ln_post`` then CLIP's frozen projection: tokens ``(..., D)`` -> embeddings ``(..., E)``."""
    return visual.ln_post(tokens) @ visual.proj


def encode_vit(visual: nn.Module, images: Tensor) -> VitTokens:
    """Final-layer CLS and patch tokens of a batch of images.

    ``project_tokens(visual, out.cls_token)`` equals ``clip.encode_image(images)``.

    Args:
        visual: open_clip ``VisionTransformer``.
        images: Normalised images of shape ``(B, 3, H, W)``.

    Returns:
        :class:`VitTokens` with ``cls_token (B, D)`` and ``patch_tokens (B, h, w, D)``.
    """
    height, width = visual.grid_size
    x = run_blocks(visual, embed_images(visual, images))  # (B, 1 + h*w, D)
    return VitTokens(cls_token=x[:, 0], patch_tokens=x[:, 1:].reshape(x.shape[0], height, width, -1))


def gather_window_tokens(tokens: Tensor, window_indices: Tensor) -> Tensor:
    """The CLS token plus the patch tokens of every window, as one batch of short sequences.

    Args:
        tokens: Embedded tokens of shape ``(B, 1 + N, D)`` (CLS first, positions already added).
        window_indices: Patch indices (row-major, in ``[0, N)``) of each window, shape ``(M, K)``.

    Returns:
        Sequences of shape ``(B * M, 1 + K, D)``, image-major: row ``b * M + m`` is window ``m`` of image ``b``.
    """
    batch, _, dim = tokens.shape
    windows = window_indices.shape[0]
    cls_index = torch.zeros(windows, 1, dtype=torch.long, device=tokens.device)
    index = torch.cat([cls_index, window_indices.to(tokens.device).long() + 1], dim=1)  # (M, 1 + K)
    gathered = tokens[:, index]  # (B, M, 1 + K, D)
    return gathered.reshape(batch * windows, index.shape[1], dim)


def encode_windows(visual: nn.Module, tokens: Tensor, window_indices: Tensor, chunk_size: int = 4096) -> Tensor:
    """CLIP image embedding of every window: CLS of the ViT re-run on the window's tokens only.

    Args:
        visual: open_clip ``VisionTransformer``.
        tokens: Embedded tokens from :func:`embed_images`, shape ``(B, 1 + N, D)``.
        window_indices: Patch indices of each window, shape ``(M, K)``.
        chunk_size: Most sequences per transformer call; bounds memory for large batches.

    Returns:
        Window embeddings of shape ``(B, M, E)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    sequences = gather_window_tokens(tokens, window_indices)  # (B * M, 1 + K, D)
    cls = torch.cat([run_blocks(visual, chunk)[:, 0] for chunk in sequences.split(chunk_size)])  # (B * M, D)
    return project_tokens(visual, cls).reshape(tokens.shape[0], window_indices.shape[0], -1)


def window_attention_mask(window_indices: Tensor, num_patches: int, num_heads: int) -> Tensor:
    """Additive attention masks that let every token attend only to the CLS token and its window's patches.

    Args:
        window_indices: Patch indices of each window, shape ``(M, K)``.
        num_patches: Patches ``N`` of the full sequence.
        num_heads: Attention heads of the tower (PyTorch wants one mask per head).

    Returns:
        Float mask of shape ``(M * heads, 1 + N, 1 + N)``: 0 where a key is kept, ``-inf`` elsewhere.
    """
    windows = window_indices.shape[0]
    keep = torch.zeros(windows, 1 + num_patches, dtype=torch.bool, device=window_indices.device)
    keep[:, 0] = True
    keep.scatter_(1, window_indices.long() + 1, True)
    mask = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device).masked_fill(~keep, float("-inf"))
    mask = mask[:, None, :].expand(windows, 1 + num_patches, 1 + num_patches)  # same keys for every query
    return mask.repeat_interleave(num_heads, dim=0)


def _num_heads(visual: nn.Module) -> int:
    return int(visual.transformer.resblocks[0].attn.num_heads)


def encode_windows_with_attention_mask(visual: nn.Module, tokens: Tensor, window_indices: Tensor) -> Tensor:
    """Same result as :func:`encode_windows`, on full-length sequences with an attention mask.

    Tokens outside a window are still computed but never attended to, so the CLS token (and every
    token inside the window) sees exactly what it sees in the gathered short sequence. It costs
    ``O(M * heads * (1 + N)^2)`` memory: a reference for tests and teaching, not the hot path.

    Args:
        visual: open_clip ``VisionTransformer``.
        tokens: Embedded tokens from :func:`embed_images`, shape ``(B, 1 + N, D)``.
        window_indices: Patch indices of each window, shape ``(M, K)``.

    Returns:
        Window embeddings of shape ``(B, M, E)``.
    """
    batch, length, dim = tokens.shape
    windows = window_indices.shape[0]
    mask = window_attention_mask(window_indices, length - 1, _num_heads(visual)).to(tokens)  # (M*heads, L, L)
    sequences = tokens[:, None].expand(batch, windows, length, dim).reshape(batch * windows, length, dim)
    mask = mask.repeat(batch, 1, 1)  # (B*M*heads, L, L), image-major like the sequences
    cls = run_blocks(visual, sequences, attn_mask=mask)[:, 0]
    return project_tokens(visual, cls).reshape(batch, windows, -1)
