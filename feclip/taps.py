"""Which transformer blocks FE-CLIP taps.

FE-CLIP reads features at ``N = 4`` blocks of the ViT; the paper does not say which.
The reference implementation (the anomalib fork ``taewanHwang/anomalib``) compared three
sets on ViT-L/14 (24 blocks) and recommends the spread one:

========  ===================  =====================================
name      ViT-L/14 blocks      notes
========  ===================  =====================================
last4     [20, 21, 22, 23]     the four last blocks
spread_3  [15, 18, 21, 23]     recommended (best image AUROC)
spread_5  [8, 13, 18, 23]      reaches further back (best pixel AUROC)
========  ===================  =====================================

For a ViT of another depth a spread set is scaled proportionally: block ``i`` of 24
becomes ``floor((i + 1) * depth / 24 + 0.5) - 1``, so the last block always maps to the
last block; ``last4`` stays the last four blocks.
"""

from __future__ import annotations

import math

__all__ = ["REFERENCE_DEPTH", "TAP_SETS", "DEFAULT_TAP_SET", "tap_set", "default_tap_indices", "scale_tap_indices"]

REFERENCE_DEPTH = 24
TAP_SETS: dict[str, tuple[int, ...]] = {
    "last4": (20, 21, 22, 23),
    "spread_3": (15, 18, 21, 23),
    "spread_5": (8, 13, 18, 23),
}
DEFAULT_TAP_SET = "spread_3"


def scale_tap_indices(indices: tuple[int, ...] | list[int], depth: int, reference_depth: int = REFERENCE_DEPTH) -> list[int]:
    """Map block indices of a ``reference_depth``-block ViT to a ``depth``-block one, keeping the last block last.

    Args:
        indices: Block indices (0-based) for the reference depth.
        depth: Number of blocks of the target ViT.
        reference_depth: Number of blocks the indices were chosen for.

    Returns:
        Sorted, de-duplicated block indices for the target depth.
    """
    if depth < 1:
        raise ValueError(f"depth must be positive, got {depth}")
    return sorted({min(depth - 1, max(0, math.floor((i + 1) * depth / reference_depth + 0.5) - 1)) for i in indices})


def tap_set(name: str, depth: int) -> list[int]:
    """A named tap set (``"last4"``, ``"spread_3"``, ``"spread_5"``) for a ViT with ``depth`` blocks.

    Args:
        name: Key of :data:`TAP_SETS`.
        depth: Number of transformer blocks.

    Returns:
        Sorted block indices.
    """
    if name not in TAP_SETS:
        raise ValueError(f"unknown tap set {name!r}; choose one of {sorted(TAP_SETS)}")
    if name == "last4":
        return list(range(max(0, depth - 4), depth))
    return scale_tap_indices(TAP_SETS[name], depth)


def default_tap_indices(depth: int) -> list[int]:
    """The recommended ``spread_3`` set, scaled to ``depth`` blocks (``[15, 18, 21, 23]`` for 24)."""
    return tap_set(DEFAULT_TAP_SET, depth)
