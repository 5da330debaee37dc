"""Contrastive pretraining of ``feclip-tiny`` on captioned views of the synthetic world (``python -m feclip.toy_clip``).

Every step renders a fresh batch (:func:`feclip.toy_clip.views.render_batch`): whole images and
token windows of the *textures* and *objects* families, each with a caption, and trains the whole
model with open_clip's own contrastive loss (``open_clip.ClipLoss``) under AdamW, a linear warm-up
and a cosine decay, as CLIP itself was trained. Batches depend only on ``(seed, step)``, so a run
is reproducible and a killed run resumes from its last state file (``<out>.state.pt``, written
every ``--save-every`` steps) to the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transformer import text_global_pool
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from feclip.toy_clip.options import DESCRIPTION, PretrainConfig, add_arguments
from feclip.toy_clip.views import PretrainBatch, ViewMix, group_windows, render_batch, step_rng, window_indices
from feclip.vit import embed_images, project_tokens, run_blocks

__all__ = ["PretrainConfig", "add_arguments", "encode_batch", "encode_captions", "pretrain", "run", "save_toy_weights",
           "main"]

TOY_DESCRIPTION = "feclip toy CLIP, pretrained on the synthetic world; not OpenAI's CLIP"


def _image_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images ``(B, S, S, 3)`` -> normalised float tensor ``(B, 3, S, S)``."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def encode_captions(clip: nn.Module, tokens: Tensor) -> Tensor:
    """``clip.encode_text`` on token ids cut after the longest caption's end-of-text token.

    The text tower's attention is causal and its output is read at the end-of-text token, so the
    padding after it never changes the result; cutting it makes the tower ~5x cheaper for short captions.

    Args:
        clip: An open_clip ``CLIP`` model whose text tower pools at the end-of-text token (``"argmax"``).
        tokens: Token ids ``(T, L)`` from its tokenizer, zero-padded.

    Returns:
        Text embeddings ``(T, E)``, equal to ``clip.encode_text(tokens)``.
    """
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = clip.token_embedding(tokens) + clip.positional_embedding[:length]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    return text_global_pool(x, tokens, clip.text_pool_type) @ clip.text_projection


def encode_batch(clip: nn.Module, tokenizer: Any, batch: PretrainBatch) -> tuple[Tensor, Tensor]:
    """Unit-norm image and text embeddings of every view of a batch, in matching order.

    Whole images go through the ViT as usual; each window goes through it as WinCLIP encodes one:
    the CLS token plus the window's patch tokens (positions already added), nothing else.

    Args:
        clip: The open_clip model being trained.
        tokenizer: Its tokenizer.
        batch: The rendered batch.

    Returns:
        ``(image_features, text_features)``, both ``(V, E)`` with ``V = B + len(batch.windows)``.
    """
    visual = clip.visual
    cfg = open_clip.get_model_preprocess_cfg(clip)
    tokens = embed_images(visual, _image_tensor(batch.images, cfg["mean"], cfg["std"]))  # (B, 1 + N, D)
    grid = visual.grid_size[0]
    features = [project_tokens(visual, run_blocks(visual, tokens)[:, 0])]
    order = list(range(len(batch.captions)))
    for size, positions in group_windows(batch.windows).items():
        views = [batch.windows[p] for p in positions]
        index = torch.tensor([[0] + [i + 1 for i in window_indices(v, grid)] for v in views])  # (M, 1 + K)
        sequences = tokens[torch.tensor([v.image for v in views])[:, None], index]  # (M, 1 + K, D)
        features.append(project_tokens(visual, run_blocks(visual, sequences)[:, 0]))
        order += [len(batch.captions) + p for p in positions]
    captions = batch.captions + [w.caption for w in batch.windows]
    captions = [captions[i] for i in order]
    unique = sorted(set(captions))
    text = encode_captions(clip, tokenizer(unique))  # each distinct caption once
    text = text[torch.tensor([unique.index(c) for c in captions])]
    return F.normalize(torch.cat(features), dim=-1), F.normalize(text, dim=-1)


def _optimizer(clip: nn.Module, config: PretrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in clip.named_parameters():
        matrix = parameter.ndim >= 2 and "embedding" not in name and "logit_scale" not in name
        (decay if matrix else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state.pt")


def _save_state(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def pretrain(
    config: PretrainConfig,
    out: str | Path | None = None,
    *,
    save_every: int = 100,
    progress: bool = True,
    on_step: Any = None,
) -> tuple[nn.Module, Any, list[dict[str, float]]]:
    """Pretrain ``feclip-tiny`` from its seeded random initialisation.

    Args:
        config: The run's hyper-parameters.
        out: Weights file to resume from (``<out>.state.pt``) and save the state beside; ``None``: no state kept.
        save_every: Steps between state files.
        progress: Show a tqdm bar.
        on_step: Optional ``callback(step, clip, tokenizer)`` after every step (evaluation, logging).

    Returns:
        ``(clip, tokenizer, history)`` with the model in eval mode; ``history`` holds one row per step.
    """
    from feclip.backbones import create_tiny_clip

    clip, tokenizer = create_tiny_clip(seed=config.seed)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(1 / config.init_temperature))
    clip.train()
    optimizer = _optimizer(clip, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    loss_fn = open_clip.ClipLoss()
    history: list[dict[str, float]] = []
    state_file = _state_path(Path(out)) if out is not None else None
    if state_file is not None and state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state["config"] != config.to_dict():
            raise ValueError(f"{state_file} belongs to another configuration ({state['config']}); "
                             "delete it or pass the same settings")
        clip.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    start = len(history)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc="pretrain")
    for step in bar:
        began = time.perf_counter()
        batch = render_batch(step_rng(config.seed, step), config.batch_size, config.mix)
        image_features, text_features = encode_batch(clip, tokenizer, batch)
        loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the inverse temperature
        row = dict(step=step + 1, loss=float(loss.detach()), views=len(image_features), logit_scale=float(clip.logit_scale.detach().exp()),
                   lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - began)
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", scale=f"{row['logit_scale']:.1f}")
        if state_file is not None and ((step + 1) % save_every == 0 or step + 1 == config.steps):
            _save_state(state_file, dict(config=config.to_dict(), model=clip.state_dict(), history=history,
                                         optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict()))
        if on_step is not None:
            on_step(step + 1, clip, tokenizer)
    return clip.eval(), tokenizer, history


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_toy_weights(clip: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write the model's weights as float16 safetensors, atomically, with string metadata.

    Args:
        clip: The pretrained ``feclip-tiny`` model.
        path: The ``.safetensors`` file.
        metadata: Values stored in the header (non-strings as JSON), besides the description.

    Returns:
        ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().to(torch.float16).contiguous() for name, value in clip.state_dict().items()}
    header = {"description": TOY_DESCRIPTION, "model": "feclip-tiny"}
    header.update({key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()})
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata=header)
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o666 & ~umask)  # the user's normal permissions, whatever the writer chose
    os.replace(partial, path)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feclip.toy_clip", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace, command: str) -> int:
    """Pretrain with the parsed options of :func:`add_arguments` and write the weights; ``command`` is recorded.

    Raises:
        ValueError: An option out of range, or a state file of another configuration.
        OSError: The weights or the state cannot be written.
    """
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                            weight_decay=args.weight_decay, seed=args.seed,
                            mix=dataclasses.replace(ViewMix(), windows_per_image=args.windows_per_image))
    if args.out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {args.out}")
    began = time.perf_counter()
    clip, _, history = pretrain(config, args.out, save_every=args.save_every, progress=not args.quiet)
    from feclip import __version__

    metadata = dict(command=command, feclip_version=__version__, git_commit=_git_commit(),
                    date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), torch_version=torch.__version__,
                    threads=torch.get_num_threads(), wall_seconds=round(time.perf_counter() - began, 1),
                    config=config.to_dict(), final_loss=float(np.mean([r["loss"] for r in history[-50:]])))
    save_toy_weights(clip, args.out, metadata)
    print(f"wrote {args.out} ({metadata['wall_seconds']} s, mean loss of the last 50 steps {metadata['final_loss']:.3f})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run pretraining from the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return run(args, "python -m feclip.toy_clip " + " ".join(sys.argv[1:] if argv is None else argv))
    except (ValueError, OSError) as error:
        print(f"feclip.toy_clip: error: {error}", file=sys.stderr)
        return 1
