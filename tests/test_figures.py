"""Tests of feclip.figures: the architecture figure says what the configuration says, and stays readable."""

from __future__ import annotations

import re
import subprocess
import sys
from itertools import combinations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from feclip.backbones import create_tiny_clip  # noqa: E402
from feclip.config import FEClipConfig  # noqa: E402
from feclip.figures import TAPPED_COLOUR, architecture_figure, architecture_layout  # noqa: E402
from feclip.model import FEClip  # noqa: E402
from feclip.taps import default_tap_indices  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(figure) -> dict[str, str]:
    """Every text artist that carries an id: id -> its string."""
    return {t.get_gid(): t.get_text() for t in figure.findobj(Text) if t.get_gid()}


def _blocks(figure) -> dict[int, Rectangle]:
    """The ViT's block boxes, by block index."""
    found = {}
    for patch in figure.findobj(Rectangle):
        match = re.fullmatch(r"block-(\d+)", patch.get_gid() or "")
        if match:
            found[int(match.group(1))] = patch
    return found


def _highlighted(figure) -> list[int]:
    tapped = matplotlib.colors.to_rgba(TAPPED_COLOUR)
    return sorted(i for i, patch in _blocks(figure).items() if patch.get_facecolor() == tapped)


def _tap_headings(figure) -> list[int]:
    """Block numbers read back from the ``tap: block <i>`` headings."""
    return sorted(int(re.fullmatch(r"tap: block (\d+)", text).group(1))
                  for gid, text in _texts(figure).items() if gid.startswith("tap-"))


def test_default_config_is_vit_l_with_the_paper_taps_highlighted() -> None:
    figure = architecture_figure(FEClipConfig())  # ViT-L-14-336
    assert sorted(_blocks(figure)) == list(range(24))
    assert _highlighted(figure) == [15, 18, 21, 23] == default_tap_indices(24)
    assert _tap_headings(figure) == [15, 18, 21, 23]
    texts = _texts(figure)
    assert texts["ffe-15-title"] == "FFE (P = 3)" and texts["lfs-23-title"] == "LFS (Q = 3)"
    assert "'mean' statistic" in texts["lfs-18"]
    assert texts["fusion-15-title"] == "fusion, λ = 0.1"
    assert "λ·(ffe + lfs) + (1 − λ)·x" in texts["fusion-15"]
    assert "τ = 0.07" in texts["scoring"] and "mean over the 4 taps" in texts["scoring"]
    assert figure.get_size_inches()[0] == pytest.approx(10.0)  # the book's page width


def test_fusion_feeds_the_next_block_and_the_last_tap_only_the_heads() -> None:
    texts = _texts(architecture_figure(FEClipConfig()))
    assert texts["fusion-15"].endswith("→ block 16") and texts["fusion-21"].endswith("→ block 22")
    assert texts["fusion-23"].endswith("last block: fused tokens → heads")
    assert "proj (frozen)" in texts["image-head-18"] and "fc_patch (trained)" in texts["pixel-head-18"]


def test_texts_follow_a_non_default_config() -> None:
    config = FEClipConfig(tap_indices=[4, 9, 16], ffe_window=5, lfs_window=7, lfs_statistic="power",
                          lambda_fuse=0.25, temperature=0.05, basis="hartley", use_ffe=False)
    figure = architecture_figure(config)
    texts = _texts(figure)
    assert _highlighted(figure) == _tap_headings(figure) == [4, 9, 16]
    for block in (4, 9, 16):
        assert texts[f"ffe-{block}-title"] == "FFE (P = 5): off"
        assert texts[f"ffe-{block}"].startswith("5×5, no overlap\nHartley")
        assert texts[f"lfs-{block}-title"] == "LFS (Q = 7)"
        assert texts[f"lfs-{block}"].startswith("7×7, sliding\nHartley\n'power' statistic")
        assert texts[f"fusion-{block}-title"] == "fusion, λ = 0.25"
    assert "τ = 0.05" in texts["scoring"] and "mean over the 3 taps" in texts["scoring"]
    everything = "\n".join(texts.values())
    assert "P = 3" not in everything and "λ = 0.1" not in everything and "0.07" not in everything


def test_feclip_tiny_has_twelve_blocks_and_its_scaled_taps() -> None:
    figure = architecture_figure(FEClipConfig(backbone="feclip-tiny"))
    assert sorted(_blocks(figure)) == list(range(12))
    assert _highlighted(figure) == _tap_headings(figure) == default_tap_indices(12) == [7, 9, 10, 11]
    assert architecture_layout(FEClipConfig(backbone="feclip-tiny")).depth == 12


def test_a_given_depth_replaces_the_backbone_lookup() -> None:
    figure = architecture_figure(FEClipConfig(backbone=None), depth=6)
    assert sorted(_blocks(figure)) == list(range(6))
    assert _highlighted(figure) == default_tap_indices(6)


def test_a_built_model_gives_its_taps_depth_and_temperature() -> None:
    torch.manual_seed(0)
    clip, tokenizer = create_tiny_clip()
    model = FEClip(clip, tokenizer, tap_indices=[2, 5, 11], use_clip_logit_scale=True)
    layout = architecture_layout(model)
    assert layout.depth == 12 and layout.tap_indices == (2, 5, 11)
    assert layout.temperature == pytest.approx(float(model.temperature))
    expected_tau = f"τ = {float(model.temperature):.4g}"
    assert expected_tau in _texts(architecture_figure(model))["scoring"]
    # A config that uses CLIP's own scale cannot know its value: the figure says so instead of inventing one.
    assert "CLIP's learned τ" in _texts(architecture_figure(model.config))["scoring"]


def test_it_draws_into_given_axes() -> None:
    figure, ax = plt.subplots(figsize=(10, 6))
    assert architecture_figure(FEClipConfig(), ax=ax) is figure
    assert _highlighted(figure) == [15, 18, 21, 23]


@pytest.mark.parametrize(
    ("config", "depth", "option"),
    [
        (FEClipConfig(tap_indices=[15, 18, 21, 24]), None, "tap_indices"),
        (FEClipConfig(tap_indices=[-1, 3]), None, "tap_indices"),
        (FEClipConfig(backbone="feclip-tiny", tap_indices=[7, 7]), None, "tap_indices"),
        (FEClipConfig(), 0, "depth"),
        (FEClipConfig(backbone=None), None, "depth"),
        (FEClipConfig(backbone="no-such-model"), None, "backbone"),
        (FEClipConfig(backbone="RN50"), None, "backbone"),
    ],
)
def test_bad_input_is_one_error_that_names_the_option(config: FEClipConfig, depth: int | None, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        architecture_figure(config, depth=depth)
    assert not plt.get_fignums(), "nothing is drawn before the input is checked"


def test_a_depth_that_disagrees_with_the_model_is_an_error() -> None:
    torch.manual_seed(0)
    clip, tokenizer = create_tiny_clip()
    with pytest.raises(ValueError, match=r"depth=24 disagrees .* 12 blocks"):
        architecture_figure(FEClip(clip, tokenizer), depth=24)


@pytest.mark.parametrize(
    "config",
    [FEClipConfig(),
     FEClipConfig(backbone="feclip-tiny", ffe_window=11, lfs_window=11, lfs_statistic="power", basis="hartley",
                  lambda_fuse=0.125, temperature=0.0625, use_lfs=False)],
)
def test_no_text_overlaps_another_or_leaves_its_box(config: FEClipConfig) -> None:
    figure = architecture_figure(config)
    figure.canvas.draw()  # lays the legend out
    renderer = figure.canvas.get_renderer()
    texts = [t for t in figure.findobj(Text) if t.get_text() and t.get_visible()]
    boxes = {t: t.get_window_extent(renderer) for t in texts}
    for (first, a), (second, b) in combinations(boxes.items(), 2):
        assert not a.overlaps(b), f"{first.get_text()!r} overlaps {second.get_text()!r}"
    page = figure.bbox
    for text, extent in boxes.items():
        assert page.x0 <= extent.x0 and extent.x1 <= page.x1 and page.y0 <= extent.y0 and extent.y1 <= page.y1
    patches = {p.get_gid(): p.get_window_extent(renderer) for p in figure.findobj() if (p.get_gid() or "").endswith("-box")}
    for text in texts:
        gid = (text.get_gid() or "").removesuffix("-title")
        if f"{gid}-box" in patches:
            inside, extent = patches[f"{gid}-box"], boxes[text]
            assert inside.x0 < extent.x0 and extent.x1 < inside.x1, f"{text.get_text()!r} is wider than its box"
            assert inside.y0 < extent.y0 and extent.y1 < inside.y1, f"{text.get_text()!r} is taller than its box"


def test_importing_the_module_imports_neither_matplotlib_nor_torch() -> None:
    code = "import sys, feclip, feclip.figures; print(sorted({'matplotlib', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
