"""FEClip on the tiny random open_clip ViT: equivalences with plain CLIP, wiring of the adapters, gradients."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from feclip.dct import dct2, idct2
from feclip.model import FEClip, FEClipConfig, FEClipOutput
from feclip.predictor import AnomalyPrediction
from feclip.prompts import encode_prompt_pair
from feclip.scoring import anomaly_probability
from feclip.taps import default_tap_indices

TINY = {"backbone": "feclip-tiny", "pretrained": None}
GRID = 12  # 96 px / patch 8


def _model(tiny_clip: tuple[nn.Module, object], **overrides: object) -> FEClip:
    clip, tokenizer = tiny_clip
    return FEClip(clip, tokenizer, **{**TINY, **overrides})


def _block_outputs(clip: nn.Module, images: Tensor) -> dict[int, Tensor]:
    """Tokens after every ViT block of CLIP's own ``encode_image`` pass, ``(B, 1 + h*w, D)``, caught by hooks."""
    outputs: dict[int, Tensor] = {}
    blocks = clip.visual.transformer.resblocks
    handles = [
        block.register_forward_hook(lambda _m, _i, out, index=index: outputs.__setitem__(index, out.detach()))
        for index, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            clip.encode_image(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


# --- equivalence with plain CLIP at lambda = 0 ----------------------------------------------------


def test_zero_lambda_cls_embedding_at_the_last_block_is_clip_encode_image(tiny_clip, tiny_images) -> None:
    model = _model(tiny_clip, lambda_fuse=0.0)
    assert model.tap_indices[-1] == 11
    with torch.no_grad():
        taps = model.embed(tiny_images)
        expected = tiny_clip[0].encode_image(tiny_images)
    torch.testing.assert_close(taps[-1].image_embedding, expected, atol=1e-5, rtol=0)


def test_zero_lambda_tap_maps_are_clips_naive_patch_maps(tiny_clip, tiny_images) -> None:
    # fc_patch_init="clip" (not the default since issue 9): at lambda = 0 the maps are CLIP's naive patch maps.
    model = _model(tiny_clip, lambda_fuse=0.0, tap_indices=[2, 5, 11], fc_patch_init="clip")
    visual = tiny_clip[0].visual
    blocks = _block_outputs(tiny_clip[0], tiny_images)
    with torch.no_grad():
        taps = model.embed(tiny_images)
        out = model(tiny_images)
    assert [t.block for t in taps] == [2, 5, 11]
    for position, tap in enumerate(taps):
        tokens = blocks[tap.block]  # CLIP's own tokens after this block
        naive = (visual.ln_post(tokens[:, 1:]) @ visual.proj).reshape(2, GRID, GRID, -1)
        torch.testing.assert_close(tap.patch_tokens, tokens[:, 1:].reshape(2, GRID, GRID, -1), atol=1e-5, rtol=0)
        torch.testing.assert_close(tap.patch_embedding, naive, atol=1e-5, rtol=0)
        torch.testing.assert_close(tap.image_embedding, visual.ln_post(tokens[:, 0]) @ visual.proj, atol=1e-5, rtol=0)
        expected_map = anomaly_probability(naive, model.text_features, 0.07)
        torch.testing.assert_close(out.tap_maps[position], expected_map, atol=1e-5, rtol=0)


def test_patch_embeddings_go_through_fc_patch_whatever_its_init(tiny_clip, tiny_images) -> None:
    model = _model(tiny_clip, lambda_fuse=0.0, tap_indices=[2, 11])
    visual = tiny_clip[0].visual
    blocks = _block_outputs(tiny_clip[0], tiny_images)
    weight, bias = model.fc_patch.weight.double(), model.fc_patch.bias.double()
    with torch.no_grad():
        taps = model.embed(tiny_images)
    for tap in taps:
        normed = visual.ln_post(blocks[tap.block][:, 1:]).double()
        expected = (normed @ weight.T + bias).reshape(2, GRID, GRID, -1)
        torch.testing.assert_close(tap.patch_embedding.double(), expected, atol=1e-5, rtol=0)


# --- fc_patch initialisation ----------------------------------------------------------------------


def test_fc_patch_starts_random_by_default_and_at_clips_projection_on_request(tiny_clip) -> None:
    assert FEClipConfig().fc_patch_init == "random"  # the reference implementation's default
    proj = tiny_clip[0].visual.proj
    clip_init = _model(tiny_clip, fc_patch_init="clip")
    assert torch.equal(clip_init.fc_patch.weight, proj.T) and torch.equal(clip_init.fc_patch.bias, torch.zeros(64))
    random_init = _model(tiny_clip)
    assert random_init.config.fc_patch_init == "random"
    # PyTorch's nn.Linear default: weight and bias uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)], fan_in = 64.
    bound = 1 / math.sqrt(64)
    for tensor in (random_init.fc_patch.weight, random_init.fc_patch.bias):
        assert tensor.abs().max() <= bound
    weight = random_init.fc_patch.weight.detach().double()
    assert weight.abs().max() > 0.95 * bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # std of U(-b, b)
    assert (weight - proj.T.double()).abs().max() > 0.1


def test_direct_construction_is_deterministic_under_the_global_seed(tiny_clip) -> None:
    def trained_tensors(seed: int, **overrides: object) -> dict[str, Tensor]:
        torch.manual_seed(seed)
        model = _model(tiny_clip, **overrides)
        return {k: v for k, v in model.state_dict().items() if k.startswith(("adapters.", "fc_patch."))}

    first, again, other = trained_tensors(3), trained_tensors(3), trained_tensors(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["fc_patch.weight"], other["fc_patch.weight"])
    # The "clip" start draws the same numbers first, so the adapters do not depend on the choice.
    clip_start = trained_tensors(3, fc_patch_init="clip")
    assert all(torch.equal(first[k], clip_start[k]) for k in first if k.startswith("adapters."))


def test_from_open_clip_is_seeded() -> None:
    a, b = FEClip.from_open_clip("feclip-tiny", None, seed=5), FEClip.from_open_clip("feclip-tiny", None, seed=5)
    c = FEClip.from_open_clip("feclip-tiny", None, seed=6)
    assert torch.equal(a.fc_patch.weight, b.fc_patch.weight) and not torch.equal(a.fc_patch.weight, c.fc_patch.weight)


# --- the injected backbone is recorded ------------------------------------------------------------


def test_the_injected_backbone_is_recorded_not_assumed(tiny_clip) -> None:
    import open_clip

    from feclip.backbones import create_tiny_clip

    clip, tokenizer = create_tiny_clip(seed=3)
    model = FEClip(clip, tokenizer)  # no backbone named: read from the backbone create_clip made
    assert (model.config.backbone, model.config.pretrained, model.config.backbone_seed) == ("feclip-tiny", None, 3)
    assert model.config.quick_gelu is False
    named = FEClip(clip, tokenizer, backbone="feclip-tiny", pretrained=None, backbone_seed=3)
    assert named.config == model.config
    foreign = open_clip.create_model("feclip-tiny", pretrained=None)  # not made by feclip: origin unknown
    unknown = FEClip(foreign, tokenizer)
    assert unknown.config.backbone is None and unknown.config.pretrained is None
    with pytest.raises(ValueError, match="quick_gelu=True, but the backbone uses GELU"):
        FEClip(clip, tokenizer, quick_gelu=True)


# --- how the adapters are wired -------------------------------------------------------------------


def test_adapters_never_touch_the_cls_token_and_fused_tokens_feed_the_next_block(tiny_clip, tiny_images) -> None:
    model = _model(tiny_clip, lambda_fuse=0.1)
    first = model.tap_indices[0]
    blocks = tiny_clip[0].visual.transformer.resblocks
    seen: dict[str, Tensor] = {}
    handles = [
        blocks[first].register_forward_hook(lambda _m, _i, out: seen.__setitem__("after_tap", out.detach())),
        blocks[first + 1].register_forward_pre_hook(lambda _m, args: seen.__setitem__("into_next", args[0].detach())),
    ]
    try:
        with torch.no_grad():
            taps = model.embed(tiny_images)
    finally:
        for handle in handles:
            handle.remove()
    # CLS passes the adapter unchanged; the patch tokens that enter the next block are the fused ones.
    assert torch.equal(seen["into_next"][:, 0], seen["after_tap"][:, 0])
    assert (seen["into_next"][:, 1:] - seen["after_tap"][:, 1:]).abs().max() > 1e-4
    torch.testing.assert_close(seen["into_next"][:, 1:], taps[0].patch_tokens.flatten(1, 2))
    # So at the first tap the image embedding cannot depend on lambda.
    with torch.no_grad():
        plain = _model(tiny_clip, lambda_fuse=0.0).embed(tiny_images)
    torch.testing.assert_close(taps[0].image_embedding, plain[0].image_embedding, atol=0, rtol=0)
    assert (taps[-1].image_embedding - plain[-1].image_embedding).abs().max() > 1e-6


def test_an_early_adapter_changes_the_later_taps(tiny_clip, tiny_images) -> None:
    model = _model(tiny_clip, lambda_fuse=0.1)
    with torch.no_grad():
        before = model.embed(tiny_images)
        for parameter in model.adapters[0].parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
        after = model.embed(tiny_images)
    assert torch.equal(before[0].image_embedding, after[0].image_embedding)
    assert (before[0].patch_embedding - after[0].patch_embedding).abs().max() > 1e-4
    for earlier, later in zip(before[1:], after[1:]):
        assert (earlier.patch_embedding - later.patch_embedding).abs().max() > 1e-5
        assert (earlier.image_embedding - later.image_embedding).abs().max() > 1e-6


def test_lnd_transformer_gives_the_same_outputs(tiny_clip, tiny_images) -> None:
    """Older open_clip runs the blocks sequence-first ``(L, B, D)``; FEClip must transpose around them."""

    class SequenceFirstBlock(nn.Module):
        def __init__(self, block: nn.Module) -> None:
            super().__init__()
            self.block, self.calls = block, 0

        def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
            assert x.shape[:2] == (1 + GRID * GRID, 2), f"expected (L, B, D), got {tuple(x.shape)}"
            self.calls += 1
            return self.block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)

    lnd_clip = copy.deepcopy(tiny_clip[0])
    transformer = lnd_clip.visual.transformer
    transformer.batch_first = False
    transformer.resblocks = nn.ModuleList(SequenceFirstBlock(block) for block in transformer.resblocks)

    model = _model(tiny_clip, lambda_fuse=0.1)
    lnd_model = FEClip(lnd_clip, text_features=model.text_features, **TINY, lambda_fuse=0.1)
    lnd_model.adapters.load_state_dict(model.adapters.state_dict())
    lnd_model.fc_patch.load_state_dict(model.fc_patch.state_dict())
    with torch.no_grad():
        out, lnd_out = model(tiny_images), lnd_model(tiny_images)
        torch.testing.assert_close(lnd_clip.encode_image(tiny_images), tiny_clip[0].encode_image(tiny_images))
    assert transformer.resblocks[model.tap_indices[-1]].calls == 2  # once by FEClip, once by encode_image
    torch.testing.assert_close(lnd_out.tap_scores, out.tap_scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(lnd_out.tap_maps, out.tap_maps, atol=1e-5, rtol=0)


# --- training set-up ------------------------------------------------------------------------------


def test_only_adapters_and_fc_patch_receive_gradients(tiny_clip, tiny_images) -> None:
    clip = copy.deepcopy(tiny_clip[0]).requires_grad_(True)  # trainable as it comes: FEClip must freeze it
    for parameter in clip.parameters():
        parameter.grad = None
    model = FEClip(clip, tiny_clip[1], **TINY)
    out = model(tiny_images)
    (out.pred_score.sum() + out.anomaly_map.mean()).backward()
    groups = model.trainable_parameters()
    trainable = groups["adapters"] + groups["fc_patch"]
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable}
    assert len(groups["fc_patch"]) == 2 and len(groups["adapters"]) == len(list(model.adapters.parameters()))
    for parameter in trainable:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0
    for parameter in clip.parameters():
        assert not parameter.requires_grad and parameter.grad is None


def test_train_mode_keeps_clip_in_eval(tiny_clip) -> None:
    model = _model(tiny_clip).train()
    assert model.training and all(m.training for m in model.adapters.modules())
    assert not any(m.training for m in model.clip.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


# --- taps and configuration -----------------------------------------------------------------------


def test_default_taps() -> None:
    assert default_tap_indices(24) == [15, 18, 21, 23]
    assert FEClipConfig().tap_indices is None  # resolved against the backbone's depth at build time


def test_tiny_model_picks_the_default_taps_for_its_depth(tiny_clip) -> None:
    model = _model(tiny_clip)
    assert len(tiny_clip[0].visual.transformer.resblocks) == 12
    assert model.tap_indices == default_tap_indices(12) == model.config.tap_indices
    assert len(model.adapters) == 4
    assert model.grid_size == (GRID, GRID)
    assert _model(tiny_clip, tap_indices=[9, 3]).tap_indices == [3, 9]


@pytest.mark.parametrize("taps", [[], [3, 3], [-1, 4], [12], [0, 12]])
def test_bad_tap_indices_are_rejected(tiny_clip, taps: list[int]) -> None:
    with pytest.raises(ValueError, match=r"tap_indices must be distinct blocks in \[0, 11\]"):
        _model(tiny_clip, tap_indices=taps)


def test_other_construction_errors(tiny_clip, tiny_images) -> None:
    clip, _ = tiny_clip
    with pytest.raises(ValueError, match="unknown lfs_statistic 'median'"):
        _model(tiny_clip, lfs_statistic="median")
    with pytest.raises(ValueError, match="unknown fc_patch_init 'proj'"):
        _model(tiny_clip, fc_patch_init="proj")
    with pytest.raises(ValueError, match="unknown resize_mode 'pad'"):
        _model(tiny_clip, resize_mode="pad")
    with pytest.raises(ValueError, match="tokenizer"):
        FEClip(clip, None, **TINY)
    with pytest.raises(TypeError, match="VisionTransformer"):
        FEClip(nn.Linear(2, 2), None, text_features=torch.randn(2, 64))
    with pytest.raises(TypeError, match="unexpected keyword"):
        _model(tiny_clip, lamda_fuse=0.2)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 96, 96\)"):
        _model(tiny_clip)(tiny_images[..., :64, :64])


@pytest.mark.parametrize(("field", "letter", "value"), [("ffe_window", "P", GRID + 1), ("lfs_window", "Q", 99),
                                                        ("ffe_window", "P", 0), ("lfs_window", "Q", -3)])
def test_windows_that_do_not_fit_the_token_grid_are_refused(tiny_clip, field: str, letter: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"{field} {letter} = {value} does not fit the 12 x 12 token grid of "
                                         rf"feclip-tiny: choose 1 <= {letter} <= 12"):
        _model(tiny_clip, **{field: value})
    assert _model(tiny_clip, **{field: GRID}).config.to_dict()[field] == GRID  # the whole grid is one window
    branch = "use_ffe" if field == "ffe_window" else "use_lfs"
    assert _model(tiny_clip, **{field: value, branch: False}).config.to_dict()[field] == value  # an unused window


def test_config_round_trip_and_unknown_keys() -> None:
    config = FEClipConfig(backbone="feclip-tiny", pretrained=None, tap_indices=[1, 4], lfs_statistic="abs", basis="hartley")
    values = config.to_dict()
    assert values["tap_indices"] == [1, 4] and values["basis"] == "hartley"
    assert FEClipConfig.from_dict(values) == config
    assert FEClipConfig.from_dict(json.loads(json.dumps(values))) == config  # to_dict is JSON-ready
    with pytest.raises(ValueError, match=r"unknown FE-CLIP config keys: \['bogus', 'p_window'\]"):
        FEClipConfig.from_dict({**values, "bogus": 1, "p_window": 3})
    # "dft" was the Hartley basis' first name: a config (or checkpoint) that says it reads as "hartley".
    assert FEClipConfig.from_dict({**values, "basis": "dft"}) == config
    with pytest.raises(ValueError, match=r"unknown frequency basis 'fft'.*\['dct', 'hartley'\]"):
        FEClipConfig(basis="fft")


def test_model_config_records_the_overrides(tiny_clip) -> None:
    model = _model(tiny_clip, ffe_window=2, lfs_window=5, lambda_fuse=0.2, use_lfs=False)
    assert model.config.ffe_window == 2 and model.config.lambda_fuse == 0.2
    assert model.adapters[0].ffe.window == 2 and model.adapters[0].lfs is None
    assert model.adapters[0].lambda_fuse == 0.2
    rebuilt = FEClip(tiny_clip[0], tiny_clip[1], FEClipConfig.from_dict(model.config.to_dict()))
    assert rebuilt.config == model.config


# --- outputs --------------------------------------------------------------------------------------


def _bilinear_upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``(..., n, n)`` with half-pixel centres and edge clamping, written out."""
    n = grid.shape[-1]
    source = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, None)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = source - low
    rows = grid[..., low, :] * (1 - weight)[:, None] + grid[..., high, :] * weight[:, None]
    return rows[..., low] * (1 - weight) + rows[..., high] * weight


def test_output_shapes_ranges_and_reductions(tiny_clip, tiny_images) -> None:
    model = _model(tiny_clip)
    with torch.no_grad():
        out = model(tiny_images)
    assert isinstance(out, FEClipOutput) and isinstance(out, AnomalyPrediction)
    assert out.pred_score.shape == (2,)
    assert out.anomaly_map.shape == (2, 96, 96)
    assert out.tap_scores.shape == (4, 2)
    assert out.tap_maps.shape == (4, 2, GRID, GRID)
    for values in (out.pred_score, out.anomaly_map, out.tap_scores, out.tap_maps):
        assert values.min() >= 0 and values.max() <= 1
    assert out.tap_maps.std() > 0  # a real map, not a constant
    torch.testing.assert_close(out.pred_score, out.tap_scores.mean(dim=0))
    expected_map = _bilinear_upsample(out.tap_maps.mean(dim=0).double().numpy(), 96)
    np.testing.assert_allclose(out.anomaly_map.numpy(), expected_map, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_scores_are_the_softmax_of_the_tap_embeddings(tiny_clip, tiny_images, temperature: float) -> None:
    model = _model(tiny_clip) if temperature == 0.07 else _model(tiny_clip, temperature=temperature)
    assert model.temperature == temperature
    with torch.no_grad():
        taps, out = model.embed(tiny_images), model(tiny_images)
    text = model.text_features.double()
    for position, tap in enumerate(taps):
        cosine = F.normalize(tap.image_embedding.double(), dim=-1) @ text.T  # text features are unit-norm
        expected = (cosine / temperature).softmax(dim=-1)[:, 1]
        torch.testing.assert_close(out.tap_scores[position].double(), expected, atol=1e-5, rtol=0)
        patch_cosine = F.normalize(tap.patch_embedding.double(), dim=-1) @ text.T
        expected_map = (patch_cosine / temperature).softmax(dim=-1)[..., 1]
        torch.testing.assert_close(out.tap_maps[position].double(), expected_map, atol=1e-5, rtol=0)


def test_logit_margin_map(tiny_clip, tiny_images) -> None:
    probability = _model(tiny_clip)
    margin = _model(tiny_clip, map_score="logit_margin")
    margin.load_state_dict(probability.state_dict())
    with torch.no_grad():
        taps, out, out_probability = margin.embed(tiny_images), margin(tiny_images), probability(tiny_images)
    text = margin.text_features.double()
    margins = []
    for tap in taps:
        cosine = F.normalize(tap.patch_embedding.double(), dim=-1) @ text.T  # (B, h, w, 2)
        margins.append((cosine[..., 1] - cosine[..., 0]) / 0.07)
    expected = _bilinear_upsample(torch.stack(margins).mean(dim=0).numpy(), 96)  # tap mean, then upsampled
    np.testing.assert_allclose(out.anomaly_map.double().numpy(), expected, atol=2e-5)
    # Only the reported map changes: image scores and the per-tap maps the losses use stay probabilities.
    torch.testing.assert_close(out.pred_score, out_probability.pred_score, atol=0, rtol=0)
    torch.testing.assert_close(out.tap_maps, out_probability.tap_maps, atol=0, rtol=0)
    assert out.anomaly_map.min() < 0 or out.anomaly_map.max() > 1  # really not a probability
    low, high = margin.anomaly_map_range
    bound = float((text[1] - text[0]).norm()) / 0.07
    assert (low, high) == pytest.approx((-bound, bound), rel=1e-6)
    assert low <= out.anomaly_map.min() and out.anomaly_map.max() <= high
    assert probability.anomaly_map_range == (0.0, 1.0)
    with pytest.raises(ValueError, match="unknown map_score 'margin'"):
        _model(tiny_clip, map_score="margin")


def test_clip_logit_scale_sets_the_temperature(tiny_clip, tiny_images) -> None:
    clip = copy.deepcopy(tiny_clip[0])
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))  # CLIP's learned scale; the random init would equal 1 / 0.07
    model = FEClip(clip, tiny_clip[1], **TINY, use_clip_logit_scale=True)
    default = FEClip(clip, tiny_clip[1], **TINY)
    default.adapters.load_state_dict(model.adapters.state_dict())
    assert model.temperature == pytest.approx(0.01, rel=1e-5)
    assert default.temperature == 0.07
    with torch.no_grad():
        taps, out, out_default = model.embed(tiny_images), model(tiny_images), default(tiny_images)
    expected = torch.stack([anomaly_probability(t.image_embedding, model.text_features, 0.01) for t in taps])
    torch.testing.assert_close(out.tap_scores, expected)
    assert (out.tap_scores - out_default.tap_scores).abs().max() > 1e-4


def test_set_prompts_changes_the_text_features(tiny_clip) -> None:
    clip, tokenizer = tiny_clip
    model = _model(tiny_clip)
    before = model.text_features.clone()
    torch.testing.assert_close(
        before, encode_prompt_pair(clip, tokenizer, model.config.normal_prompts, model.config.anomalous_prompts)
    )
    anomalous = ["a photo of a broken bottle.", "a photo of a cracked bottle."]
    model.set_prompts("a photo of a flawless bottle.", anomalous)
    expected = encode_prompt_pair(clip, tokenizer, ["a photo of a flawless bottle."], anomalous)
    torch.testing.assert_close(model.text_features, expected)
    assert (model.text_features - before).abs().max() > 1e-3
    assert model.config.normal_prompts == ["a photo of a flawless bottle."]
    assert len(model.config.anomalous_prompts) == 2
    with pytest.raises(ValueError, match="tokenizer"):
        FEClip(clip, None, **TINY, text_features=before).set_prompts("a", "b")


def test_precomputed_text_features_are_normalised(tiny_clip) -> None:
    raw = torch.randn(2, 64) * 3
    model = FEClip(tiny_clip[0], None, **TINY, text_features=raw)
    torch.testing.assert_close(model.text_features, F.normalize(raw, dim=-1))


def test_from_open_clip_builds_the_tiny_backbone() -> None:
    model = FEClip.from_open_clip("feclip-tiny", None, lambda_fuse=0.2)
    assert model.config.backbone == "feclip-tiny" and model.config.pretrained is None
    assert model.config.lambda_fuse == 0.2 and model.tap_indices == default_tap_indices(12)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 96, 96))
    assert out.anomaly_map.shape == (1, 96, 96)


def test_a_grid_the_windows_do_not_divide() -> None:
    """ViT-B/16 at 224 px has a 14x14 grid, which P = 3 does not divide: FFE pads and crops, nothing else changes."""
    import open_clip

    from feclip.backbones import TINY_MODEL

    clip = open_clip.create_model(TINY_MODEL, pretrained=None, force_image_size=112).eval()  # 14x14 grid
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    images = torch.randn(2, 3, 112, 112)
    model = FEClip(clip, tokenizer, backbone=TINY_MODEL, pretrained=None)
    assert model.grid_size == (14, 14)
    with torch.no_grad():
        out, taps = model(images), model.embed(images)
    assert out.tap_maps.shape == (4, 2, 14, 14) and out.anomaly_map.shape == (2, 112, 112)
    # The first tap's fused tokens, written out in float64: FFE on the 3x3 windows of the grid
    # replicate-padded to 15x15 (DCT, Linear + GELU, inverse DCT), cropped back to 14x14.
    tokens = _block_outputs(clip, images)[taps[0].block][:, 1:].reshape(2, 14, 14, -1).double()
    adapter = copy.deepcopy(model.adapters[0]).double()
    padded = F.pad(tokens.permute(0, 3, 1, 2), (0, 1, 0, 1), mode="replicate")  # (B, D, 15, 15)
    ffe = torch.zeros_like(padded)
    for row in range(0, 15, 3):
        for col in range(0, 15, 3):
            coefficients = dct2(padded[..., row : row + 3, col : col + 3])  # (B, D, 3, 3)
            transformed = adapter.ffe.mlp(coefficients.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            ffe[..., row : row + 3, col : col + 3] = idct2(transformed)
    ffe = ffe[..., :14, :14].permute(0, 2, 3, 1)
    with torch.no_grad():
        expected = 0.1 * (ffe + adapter.lfs(tokens)) + 0.9 * tokens
    torch.testing.assert_close(taps[0].patch_tokens.double(), expected, atol=1e-5, rtol=0)
    expected_map = anomaly_probability(model.fc_patch(clip.visual.ln_post(taps[0].patch_tokens)), model.text_features)
    torch.testing.assert_close(out.tap_maps[0], expected_map)
    identity = FEClip(clip, tokenizer, backbone=TINY_MODEL, pretrained=None, lambda_fuse=0.0)
    torch.testing.assert_close(identity.embed(images)[-1].image_embedding, clip.encode_image(images), atol=1e-5, rtol=0)


def test_from_pretrained_loads_a_local_checkpoint_after_checking_its_sha256(tiny_clip, tiny_images, tmp_path) -> None:
    """A local file or run folder; over HTTP with its cache: tests/test_hub.py."""
    import hashlib

    from feclip.data.download import ChecksumMismatchError

    model = _model(tiny_clip, fc_patch_init="clip", lambda_fuse=0.3)
    path = model.save(tmp_path / "last.safetensors")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for source in (path, tmp_path):
        loaded = FEClip.from_pretrained(source, sha256=digest)
        assert loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(loaded(tiny_images).anomaly_map, model.eval()(tiny_images).anomaly_map)
    with pytest.raises(ChecksumMismatchError, match="expected " + "f" * 64):
        FEClip.from_pretrained(path, sha256="f" * 64)
