"""Shared fixtures: a tiny random CLIP, a fixed seed, and no network.

``FECLIP_OFFLINE=1`` is set before any feclip module is imported, so nothing in the
test session probes the model hub; the autouse fixture keeps it set even when a test
edits the environment.
"""

from __future__ import annotations

import os

os.environ["FECLIP_OFFLINE"] = "1"  # before feclip.backbones can be imported by any test module

import pytest
import torch
from torch import nn

# The tensors here are tiny: with several processes sharing two cores, one intra-op thread is
# several times faster than two that spin-wait for each other.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs offline and from the same global seed."""
    monkeypatch.setenv("FECLIP_OFFLINE", "1")
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_clip() -> tuple[nn.Module, object]:
    """The randomly initialised ``feclip-tiny`` open_clip model (seed 0) and its tokenizer, in eval mode.

    Shared by the session: tests must not change its weights or structure (deep-copy it first).
    """
    from feclip.backbones import create_tiny_clip

    return create_tiny_clip(seed=0)


@pytest.fixture()
def tiny_images() -> torch.Tensor:
    """A batch of two random normalised images at the tiny backbone's 96 px, shape ``(2, 3, 96, 96)``."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(2, 3, 96, 96, generator=generator)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) the chapters run one after another
    on one worker, in order: later chapters load the runs earlier ones trained, and they share the smoke data."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.xdist_group("notebooks"))
