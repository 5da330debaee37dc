"""The trainer: what it optimises, what it logs, and that it is reproducible and resumable bit for bit."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from feclip.checkpoint import CheckpointMismatch, read_metadata
from feclip.evaluate import evaluate
from feclip.losses import FEClipLoss, bce_loss, dice_loss, focal_loss
from feclip.model import FEClip
from feclip.train import (
    BEST,
    LAST,
    STATE,
    History,
    TrainConfig,
    _batch_loss,
    _restore_rng_state,
    _rng_state,
    build_loss,
    build_optimizer,
    resolve_resume,
    train,
)


class RandomAnomalyDataset(Dataset):
    """``n`` random 96 px images; odd ones are anomalous with a square defect mask, in two categories."""

    def __init__(self, n: int = 8, seed: int = 0, has_mask: bool = True, label: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 96, 96, generator=generator)
        self.labels = [label if label is not None else i % 2 for i in range(n)]
        self.masks = torch.zeros(n, 96, 96)
        for i in range(n):
            if self.labels[i] == 1:
                top, left = torch.randint(0, 64, (2,), generator=generator).tolist()
                self.masks[i, top : top + 24, left : left + 24] = 1
                self.images[i, :, top : top + 24, left : left + 24] += 2.0
        self.has_mask = has_mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index],
                "category": "even" if index % 4 < 2 else "odd", "defect_type": "square", "path": f"{index}.png",
                "has_mask": self.has_mask or self.labels[index] == 0}


def _model(tiny_clip, seed: int = 0) -> FEClip:
    clip, tokenizer = tiny_clip
    torch.manual_seed(seed)
    return FEClip(copy.deepcopy(clip), tokenizer, backbone="feclip-tiny", pretrained=None)


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", **changes})


def _trained(model: FEClip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("adapters.", "fc_patch."))}


def _frozen(model: FEClip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.clip.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_defaults_are_the_reference_implementations_recipe() -> None:
    config = TrainConfig()
    assert (config.epochs, config.batch_size, config.lr, config.fc_patch_lr) == (9, 16, 5e-4, 5e-6)
    assert (config.w_cls, config.w_mask, config.supervise, config.tap_reduction, config.seed) == (1.0, 1.0, "per_tap", "mean", 0)
    assert (config.focal_gamma, config.focal_alpha, config.dice_smooth) == (2.0, 0.25, 1e-6)
    assert (config.betas, config.weight_decay, config.grad_clip_norm) == ((0.9, 0.999), 0.0, None)  # Adam's own
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="best_metric"):
        TrainConfig(best_metric="accuracy")
    with pytest.raises(ValueError, match="unknown training config keys: \\['lr_adapters'\\]"):
        TrainConfig.from_dict({"lr_adapters": 1.0})


def test_a_config_saved_before_the_loss_options_reads_as_what_it_trained() -> None:
    old = {key: value for key, value in TrainConfig().to_dict().items()
           if key not in ("supervise", "tap_reduction", "focal_alpha", "dice_smooth")}
    for legacy, supervise in (("per_tap", "per_tap"), ("mean", "tap_average")):
        config = TrainConfig.from_dict({**old, "loss_reduction": legacy})
        # Summed over taps, no focal alpha, Dice smoothing 1: the loss those runs were trained with.
        assert (config.supervise, config.tap_reduction, config.focal_alpha, config.dice_smooth) == (supervise, "sum", None, 1.0)
    assert TrainConfig(supervise="mean").supervise == "tap_average"
    with pytest.raises(ValueError, match="tap_reduction must be one of"):
        TrainConfig(tap_reduction="max")


def test_build_loss_uses_every_loss_setting() -> None:
    generator = torch.Generator().manual_seed(3)
    tap_scores, tap_maps = torch.rand(3, 2, generator=generator), torch.rand(3, 2, 4, 4, generator=generator)
    labels, masks = torch.tensor([0, 1]), torch.zeros(2, 4, 4)
    masks[1, 1:3, 1:3] = 1
    config = TrainConfig(w_cls=2.0, w_mask=0.5, tap_reduction="sum", focal_gamma=0.5, focal_alpha=0.6, dice_smooth=0.3)
    bce = sum(bce_loss(s, labels) for s in tap_scores)
    focal = sum(focal_loss(m, masks, gamma=0.5, alpha=0.6) for m in tap_maps)
    dice = sum(dice_loss(m, masks, smooth=0.3) for m in tap_maps)
    parts = build_loss(config)(tap_scores, tap_maps, labels, masks)  # maps already at the mask size
    assert parts.total.item() == pytest.approx((2.0 * bce + 0.5 * (focal + dice)).item(), rel=1e-6)
    average = build_loss(TrainConfig(supervise="tap_average"))(tap_scores, tap_maps, labels, masks)
    expected = (bce_loss(tap_scores.mean(0), labels) + focal_loss(tap_maps.mean(0), masks, alpha=0.25)
                + dice_loss(tap_maps.mean(0), masks, smooth=1e-6))
    assert average.total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_optimizer_holds_only_adapters_and_fc_patch(tiny_clip) -> None:
    model = _model(tiny_clip)
    optimizer = build_optimizer(model, _config(lr=1e-3, fc_patch_lr=1e-5))
    adapters, fc_patch = optimizer.param_groups
    assert (adapters["lr"], fc_patch["lr"]) == (1e-3, 1e-5)
    assert {id(p) for p in adapters["params"]} == {id(p) for p in model.adapters.parameters()}
    assert {id(p) for p in fc_patch["params"]} == {id(p) for p in model.fc_patch.parameters()}
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in model.clip.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable


def test_training_moves_adapters_only_and_keeps_clip_in_eval(tiny_clip, tmp_path: Path) -> None:
    model = _model(tiny_clip)
    seen = []
    block = model.clip.visual.transformer.resblocks[0]
    block.register_forward_pre_hook(lambda module, _: seen.append((model.clip.training, module.training, model.adapters.training)))
    clip_before, trained_before = _frozen(model), _trained(model)
    train(model, RandomAnomalyDataset(), _config(epochs=1), out_dir=tmp_path, progress=False)
    assert len(seen) == 2  # two batches of four
    assert all(flags == (False, False, True) for flags in seen)  # CLIP (no dropout) in eval, adapters training
    assert _same(_frozen(model), clip_before)
    after = _trained(model)
    assert all(not torch.equal(after[k], trained_before[k]) for k in after)  # every trained tensor moved


def _adam_step(params: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor], moments: dict[str, list],
               step: int, lrs: dict[str, float], betas: tuple[float, float], weight_decay: float) -> None:
    """One Adam step (Kingma & Ba, eps 1e-8), L2 weight decay added to the gradient as torch.optim.Adam does."""
    beta1, beta2 = betas
    for key, gradient in gradients.items():
        gradient = gradient + weight_decay * params[key]
        first, second = moments.setdefault(key, [torch.zeros_like(gradient), torch.zeros_like(gradient)])
        first.mul_(beta1).add_((1 - beta1) * gradient)
        second.mul_(beta2).add_((1 - beta2) * gradient**2)
        update = (first / (1 - beta1**step)) / ((second / (1 - beta2**step)).sqrt() + 1e-8)
        params[key] = params[key] - lrs[key] * update


def test_the_trainer_applies_clipping_weight_decay_and_betas(tiny_clip, tmp_path: Path) -> None:
    """Two steps of train() against the same two steps written out: clip the gradient norm, then Adam."""
    dataset = RandomAnomalyDataset(n=4)
    config = _config(epochs=1, batch_size=2, shuffle=False, lr=1e-2, fc_patch_lr=1e-3, grad_clip_norm=0.05,
                     weight_decay=0.05, betas=(0.5, 0.9))
    model = _model(tiny_clip)
    reference = copy.deepcopy(model)
    train(model, dataset, config, out_dir=tmp_path, progress=False)

    params = {name: p.detach().double().clone() for name, p in reference.named_parameters() if p.requires_grad}
    lrs = {name: config.fc_patch_lr if name.startswith("fc_patch.") else config.lr for name in params}
    loss_fn, moments = build_loss(config), {}
    for step, start in enumerate((0, 2), start=1):  # the two batches, in order (no shuffling)
        with torch.no_grad():
            for name, parameter in reference.named_parameters():
                if name in params:
                    parameter.copy_(params[name])
        items = [dataset[i] for i in range(start, start + 2)]
        output = reference(torch.stack([item["image"] for item in items]))
        labels, masks = torch.tensor([item["label"] for item in items]), torch.stack([item["mask"] for item in items])
        reference.zero_grad()
        loss_fn(output.tap_scores, output.tap_maps, labels, masks).total.backward()
        gradients = {name: p.grad.double() for name, p in reference.named_parameters() if name in params}
        norm = math.sqrt(sum(float(g.square().sum()) for g in gradients.values()))
        assert norm > 2 * config.grad_clip_norm  # the clipping really acts
        scale = config.grad_clip_norm / (norm + 1e-6)  # clip_grad_norm_'s rule, over both parameter groups
        _adam_step(params, {name: g * scale for name, g in gradients.items()}, moments, step, lrs, config.betas,
                   config.weight_decay)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.detach().double(), params[name], atol=1e-6, rtol=1e-5, msg=name)


def test_history_loss_is_the_dataset_loss(tiny_clip, tmp_path: Path) -> None:
    """With zero learning rates nothing changes, so each epoch's logged loss is the loss of the whole set."""
    dataset = RandomAnomalyDataset(n=6)
    model = _model(tiny_clip)
    history = train(model, dataset, _config(lr=0.0, fc_patch_lr=0.0, batch_size=4), out_dir=tmp_path, progress=False)
    batch = {key: torch.as_tensor([dataset[i][key] for i in range(6)]) if key in ("label", "has_mask")
             else torch.stack([dataset[i][key] for i in range(6)]) for key in ("image", "mask", "label", "has_mask")}
    with torch.no_grad():
        output = model(batch["image"])
        parts = FEClipLoss()(output.tap_scores, output.tap_maps, batch["label"], batch["mask"])
    for row in history:  # batches of 4 and 2: the per-image weighted mean is the full-set mean
        assert row["loss"] == pytest.approx(parts.total.item(), rel=1e-5)
        assert row["bce"] == pytest.approx(parts.bce.item(), rel=1e-5)
        assert row["focal"] == pytest.approx(parts.focal.item(), rel=1e-5)
        assert row["dice"] == pytest.approx(parts.dice.item(), rel=1e-5)
        assert row["lr"] == 0.0 and row["images_per_s"] > 0
    assert [row["step"] for row in history] == [2, 4]
    assert History.load(tmp_path).rows == history.rows
    frame = pd.read_csv(tmp_path / "history.csv")
    assert frame["loss"].tolist() == pytest.approx(history.column("loss"), rel=1e-12)


def test_pixel_loss_only_on_images_with_masks(tiny_clip) -> None:
    dataset = RandomAnomalyDataset(n=4, has_mask=False)  # anomalous images without masks, normal ones with
    batch = {key: torch.as_tensor([dataset[i][key] for i in range(4)]) if key in ("label", "has_mask")
             else torch.stack([dataset[i][key] for i in range(4)]) for key in ("image", "mask", "label", "has_mask")}
    model = _model(tiny_clip)
    with torch.no_grad():
        output = model(batch["image"])
        parts = _batch_loss(FEClipLoss(w_cls=2.0, w_mask=0.5), output, batch, torch.device("cpu"))
        valid = batch["has_mask"]
        bce = FEClipLoss()(output.tap_scores, output.tap_maps, batch["label"], batch["mask"]).bce
        pixels = FEClipLoss()(output.tap_scores[:, valid], output.tap_maps[:, valid], batch["label"][valid], batch["mask"][valid])
    assert valid.tolist() == [True, False, True, False]
    assert parts.bce.item() == pytest.approx(bce.item())
    assert parts.focal.item() == pytest.approx(pixels.focal.item())
    assert parts.total.item() == pytest.approx(2.0 * bce.item() + 0.5 * (pixels.focal + pixels.dice).item())


def test_same_seed_same_weights_other_seed_other_weights(tiny_clip, tmp_path: Path) -> None:
    dataset = RandomAnomalyDataset()
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        model = _model(tiny_clip)  # same initialisation; the training seed sets the data order
        torch.manual_seed(123)  # the global RNG state before train() must not matter
        train(model, dataset, _config(seed=seed), out_dir=tmp_path / name, progress=False)
        runs[name] = _trained(model)
    assert _same(runs["a"], runs["b"])
    assert not _same(runs["a"], runs["c"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_clip, tmp_path: Path) -> None:
    dataset = RandomAnomalyDataset()
    straight = _model(tiny_clip)
    straight_history = train(straight, dataset, _config(epochs=2), out_dir=tmp_path / "straight", progress=False)

    first = _model(tiny_clip)
    train(first, dataset, _config(epochs=1), out_dir=tmp_path / "split", progress=False)
    assert read_metadata(tmp_path / "split" / LAST)["extra"]["epoch"] == 1
    resumed = _model(tiny_clip, seed=7)  # a fresh process: other initial weights, all replaced by the state
    torch.manual_seed(99)
    history = train(resumed, dataset, _config(epochs=2), out_dir=tmp_path / "split", resume="auto", progress=False)
    assert _same(_trained(resumed), _trained(straight))
    for key in ("epoch", "step", "loss", "bce", "focal", "dice"):
        assert history.column(key) == straight_history.column(key)
    assert read_metadata(tmp_path / "split" / LAST)["extra"]["epoch"] == 2

    again = _model(tiny_clip, seed=7)  # everything done: resuming changes nothing
    train(again, dataset, _config(epochs=2), out_dir=tmp_path / "split", resume=tmp_path / "split" / LAST, progress=False)
    assert _same(_trained(again), _trained(straight))


def test_resume_paths_and_mismatches(tiny_clip, tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None and resolve_resume("auto", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        resolve_resume(tmp_path / "elsewhere", tmp_path)
    train(_model(tiny_clip), RandomAnomalyDataset(n=4), _config(epochs=1), out_dir=tmp_path, progress=False)
    assert resolve_resume(True, tmp_path) == resolve_resume(tmp_path, tmp_path) == tmp_path / STATE
    clip, tokenizer = tiny_clip
    other = FEClip(copy.deepcopy(clip), tokenizer, backbone="feclip-tiny", pretrained=None, tap_indices=[10, 11])
    with pytest.raises(CheckpointMismatch, match=r"tap_indices \[7, 9, 10, 11\] \(checkpoint\) vs \[10, 11\]"):
        train(other, RandomAnomalyDataset(n=4), _config(), out_dir=tmp_path, resume=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="changed training config .*'lr': \\(0.0005, 0.001\\)"):
        train(_model(tiny_clip), RandomAnomalyDataset(n=4), _config(lr=1e-3), out_dir=tmp_path, resume="auto", progress=False)


def test_validation_metrics_and_best_checkpoint(tiny_clip, tmp_path: Path) -> None:
    model = _model(tiny_clip)
    val = RandomAnomalyDataset(n=8, seed=1)
    run_info = {"train": {"spec": "random", "categories": ["even", "odd"], "images": 8}}
    history = train(model, RandomAnomalyDataset(), _config(), out_dir=tmp_path, val_dataset=val, progress=False,
                    run_info=run_info)
    assert read_metadata(tmp_path / LAST)["extra"]["run"] == run_info
    table = evaluate(model, val, batch_size=4, progress=False)  # the final model is the last epoch's
    for column in ("image_auroc", "pixel_auroc", "pixel_aupro"):
        assert history[-1][f"val_{column}"] == pytest.approx(table.loc["macro", column])
    assert history[-1]["val_map_sigma"] == 4.0  # the smoothing the validation metrics were measured with
    best_epoch = max(history, key=lambda row: row["val_image_auroc"])["epoch"]  # first of equals wins
    assert read_metadata(tmp_path / BEST)["extra"]["epoch"] == best_epoch
    assert read_metadata(tmp_path / BEST)["extra"]["chosen_by"] == "val_image_auroc"
    assert "chosen_by" not in read_metadata(tmp_path / LAST)["extra"]
    assert json.loads((tmp_path / "history.json").read_text())[-1]["val_image_auroc"] == history[-1]["val_image_auroc"]


def test_bad_training_sets(tiny_clip, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unlabelled images"):
        train(_model(tiny_clip), RandomAnomalyDataset(n=2, label=-1), _config(), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(_model(tiny_clip), RandomAnomalyDataset(n=0), _config(), out_dir=tmp_path, progress=False)


def test_rng_states_survive_a_state_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": _rng_state(generator)}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3), torch.rand(3, generator=generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.manual_seed(9)
    _restore_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"], generator)
    actual = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3), torch.rand(3, generator=generator))
    assert actual[:3] == expected[:3]
    assert torch.equal(actual[3], expected[3]) and torch.equal(actual[4], expected[4])
