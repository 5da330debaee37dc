"""Pictures of the method drawn from the library's own configuration (the book's architecture figure).

:func:`architecture_figure` draws FE-CLIP as a :class:`~feclip.config.FEClipConfig` (or a built
:class:`~feclip.model.FEClip`) defines it: the frozen ViT's blocks, the tapped ones highlighted,
and at every tap the FFE and LFS adapters, their fusion and the two heads. Every number in the
picture (depth, taps, ``P``, ``Q``, the LFS statistic, ``lambda``, ``tau``) is read from the
configuration, so the figure cannot drift from the code.

matplotlib is imported when a figure is drawn, not when this module is imported.

The drawn artists carry ids (``Artist.get_gid()``) so that tests and readers can find them:
``"block-<i>"`` for every block's box, ``"tap-<i>"`` for a tap's heading, ``"ffe-<i>"``,
``"lfs-<i>"``, ``"fusion-<i>"``, ``"image-head-<i>"`` and ``"pixel-head-<i>"`` for its boxes'
texts (their first lines add ``"-title"``, their boxes ``"-box"``), ``"text-encoder"`` and
``"scoring"`` for the shared parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for the annotations; importing them needs torch and matplotlib
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from feclip.config import FEClipConfig
    from feclip.model import FEClip

__all__ = ["TAPPED_COLOUR", "FROZEN_COLOUR", "TRAINED_COLOUR", "ArchitectureLayout", "architecture_layout",
           "architecture_figure"]

FROZEN_COLOUR = "#d9d9d9"  # CLIP's own, untouched parts
TAPPED_COLOUR = "#f4a259"  # a block whose output the adapters read
TRAINED_COLOUR = "#9bd1a4"  # what FE-CLIP trains: FFE, LFS, fc_patch
_PLAIN_COLOUR = "#ffffff"
_FONT = 7.5  # points; the book prints the figure about 10 inches wide
_COLUMN = 24.5  # width of one tap's column, in tenths of an inch
_WIDTH = 100.0  # the drawing's width for up to four taps, in tenths of an inch
_HEIGHT = 60.0


@dataclass(frozen=True)
class ArchitectureLayout:
    """What :func:`architecture_figure` draws, read from a model or its configuration.

    Attributes:
        backbone: The backbone's open_clip name (``None`` when the configuration does not say).
        depth: Number of transformer blocks of the ViT.
        tap_indices: Tapped blocks (0-based), sorted.
        ffe_window: FFE window side ``P``.
        lfs_window: LFS window side ``Q``.
        lfs_statistic: LFS statistic (``"mean"``, ``"abs"`` or ``"power"``).
        lambda_fuse: Fusion weight ``lambda``.
        temperature: Softmax temperature ``tau``; ``None`` when CLIP's learned scale is used and unknown.
        basis: ``"dct"`` or ``"hartley"``.
        use_ffe: Whether the FFE branch is on.
        use_lfs: Whether the LFS branch is on.
    """

    backbone: str | None
    depth: int
    tap_indices: tuple[int, ...]
    ffe_window: int
    lfs_window: int
    lfs_statistic: str
    lambda_fuse: float
    temperature: float | None
    basis: str
    use_ffe: bool
    use_lfs: bool


def _backbone_depth(backbone: str | None) -> int:
    """Number of ViT blocks of an open_clip model config, looked up by name (nothing is built)."""
    if backbone is None:
        raise ValueError("the config names no backbone (config.backbone is None): pass depth=<number of ViT blocks>")
    import open_clip

    import feclip.backbones  # noqa: F401  registers feclip-tiny with open_clip's configs

    model_config = open_clip.get_model_config(backbone)
    if model_config is None:
        raise ValueError(f"unknown backbone {backbone!r} (config.backbone): open_clip has no such model config; "
                         "pass depth=<number of ViT blocks>")
    layers = model_config["vision_cfg"].get("layers")
    if not isinstance(layers, int):
        raise ValueError(f"backbone {backbone!r} (config.backbone) is not a ViT (vision layers {layers!r}); "
                         "FE-CLIP needs a ViT image tower")
    return layers


def architecture_layout(config: FEClipConfig | FEClip, depth: int | None = None) -> ArchitectureLayout:
    """Read what the architecture figure shows from a configuration or a built model, and check it.

    Args:
        config: An :class:`~feclip.config.FEClipConfig` or a built :class:`~feclip.model.FEClip`.
        depth: Number of ViT blocks; ``None`` reads it from the model, or from the open_clip config
            named by ``config.backbone``.

    Returns:
        The :class:`ArchitectureLayout`; taps left at ``None`` are :func:`feclip.taps.default_tap_indices`.

    Raises:
        ValueError: ``depth`` is not positive or disagrees with the model's, the backbone is unknown
            or not a ViT, or ``tap_indices`` are not distinct blocks in ``[0, depth - 1]``.
    """
    from feclip.taps import default_tap_indices

    model = config if hasattr(config, "clip") and hasattr(config, "config") else None
    settings = model.config if model is not None else config
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth must be a positive number of ViT blocks, got {depth!r}")
    if model is not None:
        model_depth = len(model.clip.visual.transformer.resblocks)
        if depth is not None and depth != model_depth:
            raise ValueError(f"depth={depth} disagrees with the model's ViT, which has {model_depth} blocks")
        depth = model_depth
    elif depth is None:
        depth = _backbone_depth(settings.backbone)
    taps = default_tap_indices(depth) if settings.tap_indices is None else sorted(settings.tap_indices)
    if not taps or len(set(taps)) != len(taps) or taps[0] < 0 or taps[-1] >= depth:
        raise ValueError(f"tap_indices must be distinct blocks in [0, {depth - 1}] for a ViT of {depth} blocks, "
                         f"got {settings.tap_indices}")
    if model is not None:
        temperature = float(model.temperature)
    else:
        temperature = None if settings.use_clip_logit_scale else float(settings.temperature)
    return ArchitectureLayout(
        backbone=settings.backbone,
        depth=depth,
        tap_indices=tuple(taps),
        ffe_window=settings.ffe_window,
        lfs_window=settings.lfs_window,
        lfs_statistic=settings.lfs_statistic,
        lambda_fuse=float(settings.lambda_fuse),
        temperature=temperature,
        basis=settings.basis,
        use_ffe=settings.use_ffe,
        use_lfs=settings.use_lfs,
    )


def _number(value: float) -> str:
    return f"{value:.4g}"


def _box(ax: Axes, x: float, y: float, width: float, height: float, text: str, colour: str, gid: str,
         *, bold_first_line: bool = True, muted: bool = False) -> None:
    """A rounded box with centred text; ids: body ``gid``, first line ``gid-title``, box ``gid-box``."""
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=0.8",
                                facecolor=colour, edgecolor="0.55" if muted else "0.25", lw=0.8,
                                linestyle="--" if muted else "-", gid=f"{gid}-box"))
    first, _, rest = text.partition("\n")
    colour_text = "0.5" if muted else "black"
    if rest:
        ax.text(x + width / 2, y + height - 1.0, first, ha="center", va="top", fontsize=_FONT,
                fontweight="bold" if bold_first_line else "normal", color=colour_text, gid=f"{gid}-title")
        ax.text(x + width / 2, y + height - 2.6, rest, ha="center", va="top", fontsize=_FONT - 0.5,
                linespacing=1.25, color=colour_text, gid=gid)
    else:
        ax.text(x + width / 2, y + height / 2, first, ha="center", va="center", fontsize=_FONT,
                color=colour_text, gid=gid)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], colour: str = "0.3") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 0.8,
                                                      "shrinkA": 0, "shrinkB": 0})


def _draw_backbone(ax: Axes, layout: ArchitectureLayout, width: float) -> dict[int, float]:
    """The patch embedding and the row of blocks; returns each block's centre x."""
    from matplotlib.patches import Patch, Rectangle

    top, height = 50.0, 5.0
    _box(ax, 1.0, top, 9.0, height, "patch\nembedding", FROZEN_COLOUR, "patch-embedding", bold_first_line=False)
    left, right = 12.0, width - 1.0
    step = (right - left) / layout.depth
    label_every = 1 if layout.depth <= 32 else 4  # a 48-block row has no room for every number
    centres = {}
    for block in range(layout.depth):
        tapped = block in layout.tap_indices
        x = left + block * step
        ax.add_patch(Rectangle((x + 0.15 * step, top), 0.7 * step, height, gid=f"block-{block}",
                               facecolor=TAPPED_COLOUR if tapped else FROZEN_COLOUR,
                               edgecolor="0.25" if tapped else "0.5", lw=0.9 if tapped else 0.5))
        centres[block] = x + step / 2
        if tapped or block % label_every == 0 or block == layout.depth - 1:
            ax.text(centres[block], top + height / 2, str(block), ha="center", va="center",
                    fontsize=_FONT - 1 if layout.depth <= 32 else _FONT - 2.5,
                    fontweight="bold" if tapped else "normal")
    _arrow(ax, (10.0, top + height / 2), (left + 0.15 * step, top + height / 2))
    name = layout.backbone or "ViT"
    ax.text(left, top + height + 1.2, f"frozen CLIP image tower {name}: {layout.depth} blocks (0-based), "
            f"taps {list(layout.tap_indices)}", ha="left", va="bottom", fontsize=_FONT + 0.5)
    legend = [Patch(facecolor=colour, edgecolor="0.4", label=label) for colour, label in
              ((TAPPED_COLOUR, "tapped block"), (FROZEN_COLOUR, "frozen"), (TRAINED_COLOUR, "trained"))]
    ax.legend(handles=legend, loc="lower right", bbox_to_anchor=(right, top + height + 0.3),
              bbox_transform=ax.transData, ncol=3, fontsize=_FONT, frameon=False, handlelength=1.2,
              borderaxespad=0, columnspacing=1.2)
    return centres


def _draw_tap(ax: Axes, layout: ArchitectureLayout, block: int, block_x: float, x0: float) -> None:
    """One tap's column: heading, FFE and LFS, fusion, the two heads (heights in tenths of an inch)."""
    P, Q, basis = layout.ffe_window, layout.lfs_window, "DCT" if layout.basis == "dct" else "Hartley"
    half, gap = 11.0, 1.0
    centre = x0 + _COLUMN / 2
    ax.plot([block_x, centre], [50.0, 45.6], color="0.35", lw=0.8)
    ax.text(centre, 45.2, f"tap: block {block}", ha="center", va="top", fontsize=_FONT + 0.5,
            fontweight="bold", gid=f"tap-{block}")
    left, right = centre - gap / 2 - half, centre + gap / 2
    ffe_off, lfs_off = ("" if used else ": off" for used in (layout.use_ffe, layout.use_lfs))
    ffe = f"FFE (P = {P}){ffe_off}\n{P}×{P}, no overlap\n{basis}\nLinear + GELU\ninverse {basis}"
    lfs = f"LFS (Q = {Q}){lfs_off}\n{Q}×{Q}, sliding\n{basis}\n'{layout.lfs_statistic}' statistic\nConv3×3 + GELU"
    for x, text, used, gid in ((left, ffe, layout.use_ffe, "ffe"), (right, lfs, layout.use_lfs, "lfs")):
        _box(ax, x, 32.0, half, 10.0, text, TRAINED_COLOUR if used else _PLAIN_COLOUR, f"{gid}-{block}",
             muted=not used)
    last = block + 1 == layout.depth
    following = "last block: fused tokens → heads" if last else f"fused patch tokens → block {block + 1}"
    fusion = f"fusion, λ = {_number(layout.lambda_fuse)}\nλ·(ffe + lfs) + (1 − λ)·x\n{following}"
    _box(ax, left, 23.0, 2 * half + gap, 6.5, fusion, _PLAIN_COLOUR, f"fusion-{block}")
    _box(ax, left, 11.0, half, 9.5, "image head\nCLS token\nln_post\nproj (frozen)\n→ image score", FROZEN_COLOUR,
         f"image-head-{block}")
    _box(ax, right, 11.0, half, 9.5, "pixel head\npatch tokens\nln_post\nfc_patch (trained)\n→ pixel map",
         TRAINED_COLOUR, f"pixel-head-{block}")
    for x in (left + half / 2, right + half / 2):
        for start, end in ((43.6, 42.0), (32.0, 29.5), (23.0, 20.5), (11.0, 8.0)):
            _arrow(ax, (x, start), (x, end))


def _draw_scoring(ax: Axes, layout: ArchitectureLayout, width: float) -> None:
    """The frozen text tower and the shared scoring box under the columns."""
    _box(ax, 1.0, 1.0, 21.0, 7.0, "text encoder (frozen)\n'normal' / 'damaged' prompts\n→ two text embeddings",
         FROZEN_COLOUR, "text-encoder")
    tau = "CLIP's learned τ" if layout.temperature is None else f"τ = {_number(layout.temperature)}"
    taps = len(layout.tap_indices)
    scoring = (f"scores at every tap\nsoftmax over the cosine similarities with the two text embeddings, "
               f"divided by {tau}\nmean over the {taps} taps → image score and pixel map")
    _box(ax, 24.0, 1.0, width - 25.0, 7.0, scoring, _PLAIN_COLOUR, "scoring")
    _arrow(ax, (22.0, 4.5), (24.0, 4.5))


def architecture_figure(config: FEClipConfig | FEClip, depth: int | None = None, ax: Axes | None = None) -> Figure:
    """Draw FE-CLIP's architecture as ``config`` defines it.

    The frozen ViT's blocks run left to right, the tapped ones highlighted. Under every tap a
    column shows the FFE (``P x P`` windows) and LFS (sliding ``Q x Q`` windows, its statistic)
    adapters, their fusion ``lambda * (ffe + lfs) + (1 - lambda) * x`` that feeds the next block,
    and the two heads (CLS -> ``ln_post`` -> frozen ``proj`` -> image score; patch tokens ->
    ``ln_post`` -> ``fc_patch`` -> pixel map). At the bottom both heads are scored against the
    normal/damaged text embeddings at temperature ``tau`` and averaged over the taps. Green marks
    what is trained, grey what stays frozen, orange the tapped blocks.

    Args:
        config: An :class:`~feclip.config.FEClipConfig` (taps ``None`` are the defaults for the depth)
            or a built :class:`~feclip.model.FEClip` (its taps, depth and temperature).
        depth: Number of ViT blocks; ``None`` reads it from the model or from the open_clip config
            named by ``config.backbone`` (24 for ``ViT-L-14-336``, 12 for ``feclip-tiny``).
        ax: Axes to draw into (its limits and aspect are set here); ``None`` makes a new figure
            10 inches wide (wider for more than four taps).

    Returns:
        The matplotlib figure drawn into.

    Raises:
        ValueError: See :func:`architecture_layout` (bad ``depth``, unknown backbone, taps outside
            the ViT).

    Example:
        >>> from feclip.config import FEClipConfig
        >>> figure = architecture_figure(FEClipConfig())  # ViT-L-14-336: 24 blocks, taps [15, 18, 21, 23]
    """
    layout = architecture_layout(config, depth)
    width = max(_WIDTH, 2.0 + _COLUMN * len(layout.tap_indices))
    if ax is None:
        import matplotlib.pyplot as plt

        figure, ax = plt.subplots(figsize=(width / 10, _HEIGHT / 10))
        figure.subplots_adjust(left=0, right=1, bottom=0, top=1)
    ax.set_xlim(0, width)
    ax.set_ylim(0, _HEIGHT)
    ax.set_aspect("equal")
    ax.axis("off")
    centres = _draw_backbone(ax, layout, width)
    start = (width - _COLUMN * len(layout.tap_indices)) / 2
    for column, block in enumerate(layout.tap_indices):
        _draw_tap(ax, layout, block, centres[block], start + column * _COLUMN)
    _draw_scoring(ax, layout, width)
    return ax.figure
