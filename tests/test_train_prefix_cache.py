"""The frozen-prefix cache: the same weights as without it, a resume, later epochs that skip the prefix, refusals."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from train_helpers import RandomAnomalyDataset, make_config, make_model, same, trained

from feclip.data.transforms import AnomalyTransform
from feclip.train import train
from feclip.train.prefix_cache import IndexedDataset, PrefixCache, check_cacheable


class FixedImages(RandomAnomalyDataset):
    """In-memory images that never change, and say so."""

    deterministic = True


def _blocks_seen(model) -> list[int]:
    """Images that go through the ViT's first block, appended per call (the prefix runs only on cache misses)."""
    seen: list[int] = []
    model.clip.visual.transformer.resblocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen


def test_cached_training_gives_the_uncached_weights_bit_for_bit(tiny_clip, tmp_path: Path) -> None:
    dataset = FixedImages(n=10)  # batches of 4, 4 and 2, shuffled every epoch
    plain = make_model(tiny_clip)
    plain_history = train(plain, dataset, make_config(epochs=3), out_dir=tmp_path / "plain", progress=False)
    cached = make_model(tiny_clip)
    seen = _blocks_seen(cached)
    cached_history = train(cached, dataset, make_config(epochs=3, cache_prefix=True), out_dir=tmp_path / "cached",
                           progress=False)
    assert same(trained(cached), trained(plain))
    assert cached_history.column("loss") == plain_history.column("loss")
    # Epoch 1 runs the prefix on every image; epochs 2 and 3 only on the one image each checks against the cache.
    assert seen == [4, 4, 2, 1, 1]


def test_a_resumed_cached_run_refills_the_cache_and_ends_where_an_uninterrupted_run_does(tiny_clip, tmp_path) -> None:
    dataset = FixedImages(n=8)
    straight = make_model(tiny_clip)
    train(straight, dataset, make_config(epochs=2), out_dir=tmp_path / "straight", progress=False)
    first = make_model(tiny_clip)
    train(first, dataset, make_config(epochs=1, cache_prefix=True), out_dir=tmp_path / "split", progress=False)
    resumed = make_model(tiny_clip, seed=7)
    seen = _blocks_seen(resumed)
    train(resumed, dataset, make_config(epochs=2, cache_prefix=True), out_dir=tmp_path / "split", resume="auto",
          progress=False)
    assert same(trained(resumed), trained(straight))
    assert sum(seen) == 8  # the cache lives in memory: the resumed epoch fills it again


def test_the_cache_is_refused_for_images_that_may_change(tiny_clip, tmp_path: Path) -> None:
    class Augmented(RandomAnomalyDataset):
        transform = staticmethod(lambda image: image + torch.randn_like(image))  # a random augmentation

    with pytest.raises(ValueError, match=r"cache_prefix=True needs the same training images every epoch.*Augmented"):
        train(make_model(tiny_clip), Augmented(n=4), make_config(cache_prefix=True), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="RandomAnomalyDataset's transform None"):
        check_cacheable(RandomAnomalyDataset(n=4))  # nothing says its images are fixed
    assert not list(tmp_path.iterdir())  # refused before anything was written

    class Transformed(RandomAnomalyDataset):
        transform = AnomalyTransform(96)

    check_cacheable(Subset(Transformed(n=4), [0, 1]))  # feclip's transforms are deterministic, also in a subset
    check_cacheable(FixedImages(n=4))


def test_images_that_change_anyway_stop_training_in_the_next_epoch(tiny_clip, tmp_path: Path) -> None:
    class Lying(FixedImages):
        def __getitem__(self, index: int) -> dict:
            item = super().__getitem__(index)
            return {**item, "image": item["image"] + 0.1 * torch.randn_like(item["image"])}

    with pytest.raises(ValueError, match="differ from the ones cached in an earlier epoch"):
        train(make_model(tiny_clip), Lying(n=4), make_config(epochs=2, cache_prefix=True), out_dir=tmp_path,
              progress=False)


def test_a_changed_backbone_is_refused(tiny_clip) -> None:
    model = make_model(tiny_clip)
    cache = PrefixCache(model, 4, torch.device("cpu"))
    dataset = IndexedDataset(FixedImages(n=4))
    assert dataset[2]["index"] == 2 and len(dataset) == 4
    images = torch.stack([dataset[i]["image"] for i in range(4)])
    tokens = cache.tokens_for(model, images, torch.arange(4))
    assert cache.tokens.dtype == torch.float32 and cache.location == "cpu" and cache.nbytes == 4 * 145 * 64 * 4
    with torch.no_grad():
        assert torch.equal(tokens, model.prefix_tokens(images))
    cache.start_epoch(model)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.clip.visual.proj.mul_(2)
    with pytest.raises(ValueError, match="the backbone or the first tapped block changed"):
        cache.start_epoch(changed)
