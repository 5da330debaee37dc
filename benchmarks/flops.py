"""FLOPs of CLIP's ViT and of FE-CLIP's additions, counted from the shapes (no model is built).

Matmul and convolution FLOPs (2 x multiply-adds): the patch embedding; per block the QKV and
output projections, ``Q K^T``, ``A V`` and the MLP; per tap FFE's two ``(P^2 x P^2)`` transforms per
window and channel and its ``Linear(D, D)``, LFS's depthwise filter and ``Conv2d(D, D, 3)``,
``fc_patch``, the CLS projection and the cosine scores. Element-wise work (norms, GELU, softmax,
padding, pooling) is not counted. ``tests/test_benchmarks.py`` checks the count against
``torch.utils.flop_counter.FlopCounterMode`` on the tiny backbone. Used by ``overhead.py`` (inference)
and ``prefix_cache.py`` (a training step, and what the frozen-prefix cache skips).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["VitShape", "block_flops", "flop_breakdown", "training_step_flops"]


@dataclass(frozen=True)
class VitShape:
    """What the FLOP count needs to know about a CLIP ViT image tower.

    Attributes:
        image_size: Input side in pixels.
        patch_size: Patch side in pixels.
        width: Token width ``D``.
        layers: Number of transformer blocks.
        mlp_width: Hidden width of the block MLP.
        embed_dim: Output embedding width ``E``.
    """

    image_size: int
    patch_size: int
    width: int
    layers: int
    mlp_width: int
    embed_dim: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        """Sequence length including the CLS token."""
        return self.grid**2 + 1

    @classmethod
    def from_open_clip_config(cls, name: str) -> VitShape:
        """Shape of an open_clip model from its registered config, without building the model."""
        import open_clip

        import feclip.backbones  # noqa: F401  (registers feclip-tiny)

        config = open_clip.get_model_config(name)
        if config is None:
            raise ValueError(f"unknown open_clip model {name!r}")
        vision = config["vision_cfg"]
        width = vision["width"]
        return cls(
            image_size=vision["image_size"],
            patch_size=vision["patch_size"],
            width=width,
            layers=vision["layers"],
            mlp_width=int(width * vision.get("mlp_ratio", 4.0)),
            embed_dim=config["embed_dim"],
        )


def block_flops(shape: VitShape, batch: int = 1) -> float:
    """One transformer block: QKV and output projections, the two attention products, the MLP."""
    n, d = shape.tokens, shape.width
    projections = 2 * n * d * (3 * d) + 2 * n * d * d
    attention = 2 * (2 * n * n * d)  # Q K^T and softmax(.) V over all heads
    mlp = 2 * (2 * n * d * shape.mlp_width)
    return batch * float(projections + attention + mlp)


def flop_breakdown(
    shape: VitShape,
    taps: list[int],
    *,
    ffe_window: int = 3,
    lfs_window: int = 3,
    lfs_statistic: str = "mean",
    use_ffe: bool = True,
    use_lfs: bool = True,
    batch: int = 1,
) -> dict[str, float]:
    """Matmul and convolution FLOPs (2 x MACs) of bare CLIP and of FE-CLIP.

    Element-wise work (norms, GELU, softmax, padding, pooling) is not counted; nor is
    the ``"power"`` statistic, a box filter of squares.

    Args:
        shape: The ViT.
        taps: Tapped blocks (0-based, sorted).
        ffe_window: FFE window ``P``.
        lfs_window: LFS window ``Q``.
        lfs_statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        use_ffe: Whether FFE runs.
        use_lfs: Whether LFS runs.
        batch: Batch size.

    Returns:
        ``clip`` (encode_image), ``fe_clip`` (forward), ``vit`` (what FE-CLIP runs of the ViT),
        ``adapters`` (everything FE-CLIP adds: adapters, fc_patch, tap projections, scoring),
        ``skipped_blocks`` (blocks after the last tap FE-CLIP does not run, negative), and the
        per-tap parts ``ffe_transforms``, ``ffe_linear``, ``lfs_filter``, ``lfs_conv``, ``fc_patch``.
    """
    d, e, grid = shape.width, shape.embed_dim, shape.grid
    patches = grid * grid
    patch_embed = 2.0 * batch * patches * d * 3 * shape.patch_size**2
    cls_projection = 2.0 * batch * d * e
    per_block = block_flops(shape, batch)
    clip = patch_embed + shape.layers * per_block + cls_projection

    windows = math.ceil(grid / ffe_window) ** 2  # FFE pads the grid to whole windows
    area = ffe_window**2
    parts = {
        "ffe_transforms": 2 * (2.0 * batch * windows * area * area * d) if use_ffe else 0.0,
        "ffe_linear": 2.0 * batch * windows * area * d * d if use_ffe else 0.0,
        "lfs_filter": 0.0,
        "lfs_conv": 2.0 * batch * patches * 9 * d * d if use_lfs else 0.0,
        "fc_patch": 2.0 * batch * patches * d * e,
    }
    if use_lfs and lfs_statistic == "mean":
        parts["lfs_filter"] = 2.0 * batch * patches * d * lfs_window**2
    elif use_lfs and lfs_statistic == "abs":
        parts["lfs_filter"] = 2.0 * batch * patches * d * lfs_window**4
    scoring = 2.0 * batch * (patches + 1) * e * 2  # cosine logits against two text embeddings
    per_tap = sum(parts.values()) + cls_projection + scoring
    vit = patch_embed + (taps[-1] + 1) * per_block
    skipped = -(shape.layers - taps[-1] - 1) * per_block
    adapters = len(taps) * per_tap
    return {
        "clip": clip,
        "fe_clip": vit + adapters,
        "vit": vit,
        "adapters": adapters,
        "skipped_blocks": skipped,
        **{name: len(taps) * value for name, value in parts.items()},
    }


def training_step_flops(shape: VitShape, taps: list[int], *, batch: int = 1, cached_prefix: bool = False) -> dict[str, float]:
    """Matmul FLOPs of one FE-CLIP training step, and what the frozen-prefix cache removes from it.

    Forward: the patch embedding and the blocks up to the last tap, the adapters and heads at every tap.
    Backward: gradients reach the adapters through the blocks after the first tap up to the last
    (activation gradients only, the blocks being frozen: one forward's FLOPs for the projections and the
    MLP, two for the attention products, whose backward needs four products); through the trained layers
    (FFE's ``Linear``, LFS's ``Conv2d``, ``fc_patch``: activation and weight gradients, two forwards) and
    through the fixed ones (the DCT transforms and filter, the CLS projection, the text scores: activation
    gradients, one forward). At the first tap nothing before the adapter trains: its layers need weight
    gradients only, its forward transform and filter none, and its CLS token (which no adapter has touched
    yet) none. The prefix (patch embedding and blocks before the first tap) has no backward. With
    ``cached_prefix`` the prefix's forward is gone too. ``tests/test_benchmarks.py`` checks forward and
    backward against ``torch.utils.flop_counter.FlopCounterMode`` on the tiny backbone.

    Returns:
        ``prefix`` (patch embedding + blocks before the first tap), ``forward``, ``backward``, ``step``
        (their sum, without the prefix when ``cached_prefix``) and ``prefix_share`` (the prefix's share of an
        uncached step).
    """
    inference = flop_breakdown(shape, taps, batch=batch)
    per_block = block_flops(shape, batch)
    patch_embed = inference["vit"] - (taps[-1] + 1) * per_block
    prefix = patch_embed + taps[0] * per_block
    forward = inference["fe_clip"]
    attention = batch * 2.0 * (2 * shape.tokens * shape.tokens * shape.width)
    tap = {name: inference[name] / len(taps) for name in ("ffe_transforms", "ffe_linear", "lfs_filter", "lfs_conv", "fc_patch")}
    cls_projection = 2.0 * batch * shape.width * shape.embed_dim
    scores = inference["adapters"] / len(taps) - sum(tap.values()) - cls_projection
    later_tap = 2 * (tap["ffe_linear"] + tap["lfs_conv"] + tap["fc_patch"]) + tap["ffe_transforms"] + tap["lfs_filter"]
    later_tap += cls_projection + scores
    cls_score = 2.0 * batch * shape.embed_dim * 2  # the first tap's image score: nothing trained behind it
    first_tap = tap["ffe_linear"] + tap["lfs_conv"] + 2 * tap["fc_patch"] + tap["ffe_transforms"] / 2 + scores - cls_score
    backward = (taps[-1] - taps[0]) * (per_block + attention) + first_tap + (len(taps) - 1) * later_tap
    uncached = forward + backward
    return {
        "prefix": prefix,
        "forward": forward,
        "backward": backward,
        "step": uncached - prefix if cached_prefix else uncached,
        "prefix_share": prefix / uncached,
    }
