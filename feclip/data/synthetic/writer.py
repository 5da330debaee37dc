"""Writing the synthetic world to disk in MVTec layout, safely, and reading it back.

A family is rendered into a hidden staging folder next to the target and renamed into place, so a
reader never sees half a data set and a crash leaves nothing half-written. The target must be new
or empty: a folder is replaced (``overwrite=True``) only when the marker file this module writes,
:data:`MARKER_NAME`, says it wrote the folder and every file in it, so nothing it did not create is
ever deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from feclip.data.mvtec import MVTecAD

from .render import FAMILIES, defect_types_for, render_sample

__all__ = ["MARKER_NAME", "SYNTHETIC_VERSION", "SyntheticDataset", "generate_benchmark", "generate_synthetic_dataset",
           "read_marker"]

MARKER_NAME = ".feclip-synthetic.json"
# Bumped whenever the same arguments would render other images, so a cached copy can tell it is stale.
SYNTHETIC_VERSION = 2


class SyntheticDataset(MVTecAD):
    """One family of the synthetic benchmark, read as MVTec layout (what ``build_dataset("synth:PATH")`` returns)."""


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The marker of a folder written by :func:`generate_synthetic_dataset`, or ``None`` if it has none.

    Raises:
        ValueError: The marker exists but is not valid JSON (its path is named).
    """
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid synthetic data set marker: {error}") from error


def _image_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """One generator per file, so an image does not change when counts or other categories do."""
    key = [seed, *(zlib.crc32(s.encode()) for s in (category, split, defect)), index]
    return np.random.default_rng(key)


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new uniquely named folder in ``parent`` with the user's normal permissions (``mkdtemp`` makes it 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    return folder


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder that is not wholly this module's own work."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another output folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} is not empty; write the synthetic data set to a new or empty folder, or pass "
                              "overwrite=True to replace one that generate_synthetic_dataset wrote")
    marker = read_marker(out)
    if marker is None:
        raise FileExistsError(f"{out} was not written by generate_synthetic_dataset (no {MARKER_NAME}); "
                              "refusing to replace it")
    ours = set(marker.get("files", [])) | {MARKER_NAME}
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out).as_posix()
        is_ours = relative in ours if not path.is_dir() or path.is_symlink() else any(f.startswith(relative + "/") for f in ours)
        if not is_ours:
            raise FileExistsError(f"{path} was not written by generate_synthetic_dataset; refusing to replace {out}")


def _write_family(root: Path, categories: Sequence[str], defects: dict[str, tuple[str, ...]], image_size: int,
                  counts: tuple[int, int, int], seed: int) -> list[str]:
    n_train_good, n_test_good, n_defect = counts
    written = []
    for category in categories:
        jobs = [("train", "good", n_train_good), ("test", "good", n_test_good)]
        jobs += [("test", defect, n_defect) for defect in defects[category]]
        for split, defect, count in jobs:
            (root / category / split / defect).mkdir(parents=True, exist_ok=True)
            if defect != "good" and count:
                (root / category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                sample = render_sample(category, defect, _image_rng(seed, category, split, defect, index), image_size)
                image_name = f"{category}/{split}/{defect}/{index:03d}.png"
                # Fast zlib level: generation time matters more than a few hundred kB.
                Image.fromarray(sample.image).save(root / image_name, compress_level=1)
                written.append(image_name)
                if defect != "good":
                    mask_name = f"{category}/ground_truth/{defect}/{index:03d}_mask.png"
                    Image.fromarray(sample.mask.astype(np.uint8) * 255).save(root / mask_name, compress_level=1)
                    written.append(mask_name)
    return written


def generate_synthetic_dataset(
    out_dir: str | Path,
    *,
    family: str = "textures",
    categories: Sequence[str] | None = None,
    image_size: int = 96,
    n_train_good: int = 8,
    n_test_good: int = 8,
    n_test_defect_per_type: int = 3,
    defect_types: Sequence[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write one family as an MVTec-layout tree (readable by :class:`SyntheticDataset` / ``MVTecAD``).

    Writes ``<out_dir>/<category>/train/good/000.png``, ``test/good/``, ``test/<defect>/`` and
    ``ground_truth/<defect>/000_mask.png`` (0/255), plus the marker :data:`MARKER_NAME` (the
    arguments and the list of files written). The same arguments give byte-identical files.
    Everything is written to a staging folder beside ``out_dir`` and renamed into place.

    Args:
        out_dir: Root of the family (an MVTec root): a new or empty folder, or with ``overwrite``
            one this function wrote.
        family: A key of :data:`FAMILIES`.
        categories: Subset of the family's categories; None for all.
        image_size: Side of the square images in pixels (at least 32).
        n_train_good: Normal training images per category.
        n_test_good: Normal test images per category.
        n_test_defect_per_type: Defective test images per defect type and category.
        defect_types: Defect types to write; None for each category's own (:func:`defect_types_for`).
            Each must apply to every chosen category.
        seed: Seed of everything.
        overwrite: Replace ``out_dir`` if it holds a data set written here, and nothing else.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: An unknown family, category or defect type, or a bad size or count.
        FileExistsError: ``out_dir`` is a file, or a non-empty folder that may not be replaced.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {list(FAMILIES)}")
    chosen = list(FAMILIES[family] if categories is None else categories)
    unknown = [c for c in chosen if c not in FAMILIES[family]]
    if unknown:
        raise ValueError(f"unknown category {unknown[0]!r} for family {family!r}; valid: {FAMILIES[family]}")
    defects = {c: defect_types_for(c) if defect_types is None else tuple(defect_types) for c in chosen}
    for category in chosen:
        bad = [d for d in defects[category] if d not in defect_types_for(category)]
        if bad:
            raise ValueError(f"unknown defect type {bad[0]!r} for category {category!r}; valid: {defect_types_for(category)}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if min(n_train_good, n_test_good, n_test_defect_per_type) < 0:
        raise ValueError("image counts must be non-negative")
    out = Path(out_dir)
    _check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(out.parent, f".{out.name}.staging-")
    try:
        files = _write_family(staging, chosen, defects, image_size, (n_train_good, n_test_good, n_test_defect_per_type), seed)
        marker = dict(generator="feclip.data.synthetic", version=SYNTHETIC_VERSION, family=family, categories=chosen,
                      defect_types={c: list(d) for c, d in defects.items()}, image_size=image_size,
                      n_train_good=n_train_good, n_test_good=n_test_good,
                      n_test_defect_per_type=n_test_defect_per_type, seed=seed, files=sorted(files))
        (staging / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if out.exists() and any(out.iterdir()):  # ours, checked above: move it aside, then drop it
            _check_replaceable(out, overwrite)  # again, just before anything is moved
            retired = _new_folder(out.parent, f".{out.name}.replaced-")
            out.rename(retired / out.name)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)  # onto a missing or empty folder
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def generate_benchmark(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 96,
    n_train_good: int = 8,
    n_test_good: int = 8,
    n_test_defect_per_type: int = 3,
    families: Sequence[str] = tuple(FAMILIES),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write families under one root: ``<out_dir>/textures/<cat>/...``, ``<out_dir>/objects/...``, ...

    Each family root is itself an MVTec root (see :func:`generate_synthetic_dataset`). Train
    FE-CLIP on the test split of one pretraining family and evaluate on the other: the offline
    stand-in for the paper's VisA -> MVTec protocol; ``assemblies`` is seen by no training at all.

    Returns:
        ``{family: <out_dir>/<family>}`` for every family written.
    """
    counts = dict(image_size=image_size, n_train_good=n_train_good, n_test_good=n_test_good,
                  n_test_defect_per_type=n_test_defect_per_type, seed=seed, overwrite=overwrite)
    return {family: generate_synthetic_dataset(Path(out_dir) / family, family=family, **counts) for family in families}
