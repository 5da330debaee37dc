"""The training loop: what it optimises, what it logs, and that it is reproducible."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from train_helpers import RandomAnomalyDataset, frozen, make_config, make_model, same, trained

from feclip.checkpoint import load_into, read_metadata
from feclip.evaluate import evaluate
from feclip.losses import FEClipLoss, bce_loss, dice_loss, focal_loss
from feclip.model import FEClip
from feclip.train import BEST, LAST, STATE, History, TrainConfig, build_loss, build_optimizer, train
from feclip.train.loop import NonFiniteLossError, batch_loss


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
    model = make_model(tiny_clip)
    optimizer = build_optimizer(model, make_config(lr=1e-3, fc_patch_lr=1e-5))
    adapters, fc_patch = optimizer.param_groups
    assert (adapters["lr"], fc_patch["lr"]) == (1e-3, 1e-5)
    assert {id(p) for p in adapters["params"]} == {id(p) for p in model.adapters.parameters()}
    assert {id(p) for p in fc_patch["params"]} == {id(p) for p in model.fc_patch.parameters()}
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in model.clip.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable


def test_training_moves_adapters_only_and_keeps_clip_in_eval(tiny_clip, tmp_path: Path) -> None:
    model = make_model(tiny_clip)
    seen = []
    block = model.clip.visual.transformer.resblocks[0]
    block.register_forward_pre_hook(lambda module, _: seen.append((model.clip.training, module.training, model.adapters.training)))
    clip_before, trained_before = frozen(model), trained(model)
    train(model, RandomAnomalyDataset(), make_config(epochs=1), out_dir=tmp_path, progress=False)
    assert len(seen) == 2  # two batches of four
    assert all(flags == (False, False, True) for flags in seen)  # CLIP (no dropout) in eval, adapters training
    assert same(frozen(model), clip_before)
    after = trained(model)
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
    config = make_config(epochs=1, batch_size=2, shuffle=False, lr=1e-2, fc_patch_lr=1e-3, grad_clip_norm=0.05,
                     weight_decay=0.05, betas=(0.5, 0.9))
    model = make_model(tiny_clip)
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
    """With learning rates too small to move the weights (zero is refused), each epoch's logged loss is the loss
    of the whole set."""
    dataset = RandomAnomalyDataset(n=6)
    model = make_model(tiny_clip)
    history = train(model, dataset, make_config(lr=1e-30, fc_patch_lr=1e-30, batch_size=4), out_dir=tmp_path,
                    progress=False)
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
        assert row["lr"] == 1e-30 and row["images_per_s"] > 0 and row["amp"] == "off"
    assert [row["step"] for row in history] == [2, 4]
    assert History.load(tmp_path).rows == history.rows
    frame = pd.read_csv(tmp_path / "history.csv")
    assert frame["loss"].tolist() == pytest.approx(history.column("loss"), rel=1e-12)


def test_pixel_loss_only_on_images_with_masks(tiny_clip) -> None:
    dataset = RandomAnomalyDataset(n=4, has_mask=False)  # anomalous images without masks, normal ones with
    batch = {key: torch.as_tensor([dataset[i][key] for i in range(4)]) if key in ("label", "has_mask")
             else torch.stack([dataset[i][key] for i in range(4)]) for key in ("image", "mask", "label", "has_mask")}
    model = make_model(tiny_clip)
    with torch.no_grad():
        output = model(batch["image"])
        parts = batch_loss(FEClipLoss(w_cls=2.0, w_mask=0.5), output, batch, torch.device("cpu"))
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
        model = make_model(tiny_clip)  # same initialisation; the training seed sets the data order
        torch.manual_seed(123)  # the global RNG state before train() must not matter
        train(model, dataset, make_config(seed=seed), out_dir=tmp_path / name, progress=False)
        runs[name] = trained(model)
    assert same(runs["a"], runs["b"])
    assert not same(runs["a"], runs["c"])


def test_validation_metrics_and_best_checkpoint(tiny_clip, tmp_path: Path) -> None:
    model = make_model(tiny_clip)
    val = RandomAnomalyDataset(n=8, seed=1)
    run_info = {"train": {"spec": "random", "categories": ["even", "odd"], "images": 8}}
    history = train(model, RandomAnomalyDataset(), make_config(), out_dir=tmp_path, val_dataset=val, progress=False,
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
        train(make_model(tiny_clip), RandomAnomalyDataset(n=2, label=-1), make_config(), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="empty"):
        train(make_model(tiny_clip), RandomAnomalyDataset(n=0), make_config(), out_dir=tmp_path, progress=False)


# --- mixed precision: the fp16 path's loss scaler, run on the CPU ---------------------------------------


def _poison_gradient(parameter: torch.nn.Parameter, at_calls: set[int], value: float = math.inf) -> list[int]:
    """Make ``parameter``'s gradient non-finite in the backward passes numbered ``at_calls`` (1-based)."""
    calls = [0]

    def hook(gradient: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return gradient + value if calls[0] in at_calls else gradient

    parameter.register_hook(hook)
    return calls


def test_a_step_with_inf_gradients_is_skipped_by_the_fp16_scaler(tiny_clip) -> None:
    from feclip.train.loop import optimizer_step
    from feclip.train.precision import grad_scaler

    model = make_model(tiny_clip)
    optimizer = build_optimizer(model, make_config(lr=1e-2))
    scaler = grad_scaler(torch.device("cpu"), torch.float16)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    _poison_gradient(next(model.adapters.parameters()), at_calls={1})

    def step() -> bool:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            output = model(images)
            loss = output.tap_scores.float().mean() + output.tap_maps.float().mean()
        return optimizer_step(loss, optimizer, scaler, grad_clip_norm=1.0)

    before, scale = trained(model), scaler.get_scale()
    assert step() is True  # the planted inf: no step, a lower scale
    assert same(trained(model), before) and optimizer.state == {} and scaler.get_scale() == scale / 2
    assert step() is False  # a clean step moves every trained tensor
    after = trained(model)
    assert all(not torch.equal(after[k], before[k]) for k in after) and scaler.get_scale() == scale / 2


def test_fp16_training_resumes_bit_exactly_with_its_loss_scale(tiny_clip, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """1 epoch + resume + 1 epoch == 2 epochs, in fp16 with a GradScaler, one step skipped for a planted inf."""
    import feclip.train.loop as loop

    monkeypatch.setattr(loop, "resolve_amp", lambda amp, device: torch.float16)  # the CPU as a T4
    dataset = RandomAnomalyDataset()

    def run(out: Path, epochs: int, resume: bool, poison: bool) -> tuple[FEClip, History]:
        model = make_model(tiny_clip, seed=7 if resume else 0)
        if poison:
            _poison_gradient(model.fc_patch.weight, at_calls={1})
        return model, train(model, dataset, make_config(epochs=epochs), out_dir=out, progress=False,
                            resume="auto" if resume else None)

    straight, straight_history = run(tmp_path / "straight", 2, resume=False, poison=True)
    run(tmp_path / "split", 1, resume=False, poison=True)
    resumed, history = run(tmp_path / "split", 2, resume=True, poison=False)
    assert same(trained(resumed), trained(straight))
    assert history.rows == [{**row, "images_per_s": r["images_per_s"], "time_s": r["time_s"]}
                            for row, r in zip(straight_history.rows, history.rows)]
    assert [row["amp"] for row in history] == ["fp16", "fp16"]
    assert [row["skipped_steps"] for row in history] == [1, 0]  # the planted inf, and nothing else overflowed
    assert [row["loss_scale"] for row in history] == [2.0**15, 2.0**15]
    saved = [torch.load(tmp_path / name / STATE, weights_only=True)["scaler"] for name in ("straight", "split")]
    assert saved[0] == saved[1] and saved[0]["scale"] == 2.0**15 and saved[0]["_growth_tracker"] == 3


# --- divergence: never a NaN checkpoint ----------------------------------------------------------------


def _nan_output_at(model: FEClip, calls_to_poison: set[int]) -> None:
    """Make the first adapter's output NaN in its forward calls numbered ``calls_to_poison`` (1-based)."""
    calls = [0]

    def hook(module, inputs, output):
        calls[0] += 1
        return output * math.nan if calls[0] in calls_to_poison else None

    model.adapters[0].register_forward_hook(hook)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_epoch(tiny_clip, tmp_path: Path) -> None:
    dataset = RandomAnomalyDataset()  # 8 images, batches of 4: 2 steps an epoch
    clean = make_model(tiny_clip)
    train(clean, dataset, make_config(epochs=1), out_dir=tmp_path / "clean", progress=False)
    model = make_model(tiny_clip)
    _nan_output_at(model, {4})  # epoch 2, its second batch
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at epoch 2, step 4 \(batch 2 of 2 in this epoch\); "
                                                 r"nothing of this epoch was saved: .*last.safetensors holds epoch 1"):
        train(model, dataset, make_config(epochs=3), out_dir=tmp_path / "run", progress=False)
    assert read_metadata(tmp_path / "run" / LAST)["extra"]["epoch"] == 1
    assert torch.load(tmp_path / "run" / STATE, weights_only=True)["epoch"] == 1
    assert len(History.load(tmp_path / "run")) == 1
    saved, reference = make_model(tiny_clip, seed=3), make_model(tiny_clip, seed=4)
    load_into(saved, tmp_path / "run" / LAST), load_into(reference, tmp_path / "clean" / LAST)
    assert same(trained(saved), trained(reference))  # the last good epoch, bit for bit

    first = make_model(tiny_clip)
    _nan_output_at(first, {1})
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 1 .*no epoch finished, so nothing was saved"):
        train(first, dataset, make_config(epochs=1), out_dir=tmp_path / "first", progress=False)
    assert not (tmp_path / "first" / LAST).exists()


def test_weights_made_non_finite_by_the_last_step_are_never_saved(tiny_clip, tmp_path: Path) -> None:
    model = make_model(tiny_clip)
    _poison_gradient(model.fc_patch.bias, at_calls={4}, value=math.nan)  # finite loss, NaN gradient, last step
    with pytest.raises(NonFiniteLossError, match=r"after epoch 2 the trained weights \['fc_patch.bias'\] hold NaN"):
        train(model, RandomAnomalyDataset(), make_config(epochs=2), out_dir=tmp_path, progress=False)
    assert read_metadata(tmp_path / LAST)["extra"]["epoch"] == 1
    assert bool(torch.isfinite(load_file(tmp_path / LAST)["fc_patch.bias"]).all())


def test_the_default_workers_train_without_dataloader_warnings(tiny_clip, tmp_path: Path) -> None:
    """issue 13: the worker default fits the machine, so neither training nor its validations warn about workers."""
    import warnings

    from feclip.train.config import default_num_workers

    config = TrainConfig(epochs=2, batch_size=4, device="cpu")  # num_workers left at its default
    assert config.num_workers == default_num_workers() >= 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train(make_model(tiny_clip), RandomAnomalyDataset(), config, out_dir=tmp_path,
                        val_dataset=RandomAnomalyDataset(n=4, seed=1), progress=False)
    assert len(history) == 2 and "val_image_auroc" in history[-1]
    assert [str(w.message) for w in caught if "worker" in str(w.message)] == []
