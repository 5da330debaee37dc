"""Tests for feclip.data.synthetic: determinism, layout, and masks that sit where the pixels changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from feclip.data import MVTecAD, build_dataset
from feclip.data.synthetic import (
    DEFECT_TYPES,
    FAMILIES,
    OBJECT_CATEGORIES,
    TEXTURE_CATEGORIES,
    generate_benchmark,
    generate_synthetic_dataset,
    render_sample,
)

SMALL = dict(image_size=48, n_train_good=1, n_test_good=1, n_test_defect_per_type=1)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_families_are_disjoint_with_at_least_five_defect_types() -> None:
    assert set(FAMILIES) == {"textures", "objects"}
    assert not set(TEXTURE_CATEGORIES) & set(OBJECT_CATEGORIES)
    assert len(DEFECT_TYPES) >= 5 and {"scratch", "hole", "crack", "stain", "cut"} <= set(DEFECT_TYPES)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    kwargs = dict(family="objects", categories=["pill"], **SMALL)
    first = _files(generate_synthetic_dataset(tmp_path / "a", seed=3, **kwargs))
    second = _files(generate_synthetic_dataset(tmp_path / "b", seed=3, **kwargs))
    other = _files(generate_synthetic_dataset(tmp_path / "c", seed=4, **kwargs))
    assert first == second and len(first) == 2 + 2 * len(DEFECT_TYPES)
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if not name.startswith("pill/ground_truth"))


def test_layout_counts_and_mask_contents(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, family="textures", categories=["tiles", "weave"], image_size=40,
                                      n_train_good=2, n_test_good=1, n_test_defect_per_type=2, seed=0)
    weave = root / "weave"
    assert len(list((weave / "train" / "good").glob("*.png"))) == 2
    assert sorted(p.name for p in (weave / "test").iterdir()) == sorted(("good",) + DEFECT_TYPES)
    assert not (weave / "ground_truth" / "good").exists()
    for defect in DEFECT_TYPES:
        for index in range(2):
            mask = np.asarray(Image.open(weave / "ground_truth" / defect / f"{index:03d}_mask.png"))
            image = Image.open(weave / "test" / defect / f"{index:03d}.png")
            assert image.size == (40, 40) and image.mode == "RGB"
            assert set(np.unique(mask).tolist()) == {0, 255}  # never empty, strictly binary


def test_mvtec_reader_loads_the_generated_tree(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, family="objects", categories=["nut"], **SMALL)
    dataset = MVTecAD(root, image_size=32)
    assert len(dataset) == 1 + len(DEFECT_TYPES)
    assert {s.defect_type for s in dataset.samples} == {"good"} | set(DEFECT_TYPES)
    for index in range(len(dataset)):
        item = dataset[index]
        assert (item["mask"].sum() > 0) == (item["label"] == 1)


@pytest.mark.parametrize("category", TEXTURE_CATEGORIES + OBJECT_CATEGORIES)
def test_mask_covers_exactly_the_changed_pixels(category: str) -> None:
    for defect in DEFECT_TYPES:
        for seed in range(2):
            sample = render_sample(category, defect, np.random.default_rng([seed, 11]), 64)
            change = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1)
            assert sample.mask.sum() >= 4, (category, defect, seed)
            # Clearly changed pixels lie on the mask up to its 2-px anti-aliased rim ...
            clearly_changed = change > 8
            near_mask = binary_dilation(sample.mask, iterations=2)
            assert (clearly_changed & ~near_mask).sum() <= 0.15 * clearly_changed.sum(), (category, defect, seed)
            # ... and masked pixels did change.
            assert (change[sample.mask] > 3).mean() >= 0.85, (category, defect, seed)


def test_normal_images_vary_and_have_empty_masks() -> None:
    first = render_sample("carpet", "good", np.random.default_rng(0), 48)
    second = render_sample("carpet", "good", np.random.default_rng(1), 48)
    assert not first.mask.any() and np.array_equal(first.image, first.clean)
    assert np.abs(first.image.astype(int) - second.image.astype(int)).mean() > 5


def test_generate_benchmark_writes_both_families_as_mvtec_roots(tmp_path: Path) -> None:
    paths = generate_benchmark(tmp_path, seed=0, image_size=32, n_train_good=1, n_test_good=1,
                               n_test_defect_per_type=1)
    assert paths == {"textures": tmp_path / "textures", "objects": tmp_path / "objects"}
    objects = build_dataset(f"synth:{paths['objects']}", image_size=32)
    assert objects.categories == sorted(OBJECT_CATEGORIES)
    textures = build_dataset(f"synth:{paths['textures']}", split="train", image_size=32)
    assert textures.categories == sorted(TEXTURE_CATEGORIES) and set(textures.labels.tolist()) == {0}
    with pytest.raises(ValueError, match="benchmark root"):
        build_dataset(f"synth:{tmp_path}")


def test_regenerating_replaces_a_category_folder(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, family="objects", categories=["ring"], **{**SMALL, "n_test_good": 3})
    generate_synthetic_dataset(tmp_path, family="objects", categories=["ring"], **SMALL)
    assert len(list((tmp_path / "ring" / "test" / "good").iterdir())) == 1


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'fabrics'"):
        generate_synthetic_dataset(tmp_path, family="fabrics")
    with pytest.raises(ValueError, match="'pill' for family 'textures'"):
        generate_synthetic_dataset(tmp_path, family="textures", categories=["pill"])
    with pytest.raises(ValueError, match="'dent'"):
        generate_synthetic_dataset(tmp_path, defect_types=["dent"])
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_dataset(tmp_path, image_size=16)
    with pytest.raises(ValueError, match="'nail'"):
        render_sample("nail", "good", np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="generate_benchmark"):
        build_dataset(f"synth:{tmp_path / 'not_generated'}")
