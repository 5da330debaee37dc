"""Tests for feclip.data.synthetic: determinism, layout, masks where the pixels changed, captions, safe writing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from feclip.data import MVTecAD, build_dataset
from feclip.data.synthetic import (
    ASSEMBLY_CATEGORIES,
    DEFECT_TYPES,
    FAMILIES,
    HELD_OUT_FAMILY,
    MARKER_NAME,
    OBJECT_CATEGORIES,
    PRETRAINING_FAMILIES,
    STRUCTURAL_DEFECTS,
    TEXTURE_CATEGORIES,
    SyntheticDataset,
    caption,
    caption_vocabulary,
    defect_types_for,
    generate_benchmark,
    generate_synthetic_dataset,
    read_marker,
    render_sample,
)
from feclip.prompts import PAPER_PROMPTS, TEMPLATES, class_prompts, winclip_prompts

SMALL = dict(image_size=48, n_train_good=1, n_test_good=1, n_test_defect_per_type=1)
ALL_CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES + ASSEMBLY_CATEGORIES


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _change(sample) -> np.ndarray:
    return np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1)


def test_three_disjoint_families_with_shared_and_structural_defects() -> None:
    assert list(FAMILIES) == ["textures", "objects", "assemblies"]
    assert PRETRAINING_FAMILIES == ("textures", "objects") and HELD_OUT_FAMILY == "assemblies"
    assert len(set(ALL_CATEGORIES)) == len(ALL_CATEGORIES) == sum(len(c) for c in FAMILIES.values())
    assert len(TEXTURE_CATEGORIES) >= 6 and len(OBJECT_CATEGORIES) >= 6 and len(ASSEMBLY_CATEGORIES) >= 3
    assert {"scratch", "hole", "crack", "stain", "cut", "contamination", "colour", "gloss"} <= set(DEFECT_TYPES)
    assert all(defect_types_for(c) == DEFECT_TYPES + ("pitch",) for c in TEXTURE_CATEGORIES)
    assert defect_types_for("transistor")[-2:] == ("missing", "misplaced") and defect_types_for("nut") == DEFECT_TYPES
    assert all(set(STRUCTURAL_DEFECTS[c]) == {"missing", "misplaced"} for c in ASSEMBLY_CATEGORIES)


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    kwargs = dict(family="objects", categories=["pill", "cable"], **SMALL)
    first = _files(generate_synthetic_dataset(tmp_path / "a", seed=3, **kwargs))
    second = _files(generate_synthetic_dataset(tmp_path / "b", seed=3, **kwargs))
    other = _files(generate_synthetic_dataset(tmp_path / "c", seed=4, **kwargs))
    images = 2 + 2 * len(DEFECT_TYPES) + 2 + 2 * len(defect_types_for("cable"))
    assert first == second and len(first) == images + 1  # + the marker
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if "ground_truth" not in name)


def test_layout_counts_and_mask_contents(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "t", family="textures", categories=["tiles", "weave"], image_size=40,
                                      n_train_good=2, n_test_good=1, n_test_defect_per_type=2, seed=0)
    weave = root / "weave"
    assert len(list((weave / "train" / "good").glob("*.png"))) == 2
    assert sorted(p.name for p in (weave / "test").iterdir()) == sorted(("good",) + defect_types_for("weave"))
    assert not (weave / "ground_truth" / "good").exists()
    for defect in defect_types_for("weave"):
        for index in range(2):
            mask = np.asarray(Image.open(weave / "ground_truth" / defect / f"{index:03d}_mask.png"))
            image = Image.open(weave / "test" / defect / f"{index:03d}.png")
            assert image.size == (40, 40) and image.mode == "RGB"
            assert set(np.unique(mask).tolist()) == {0, 255}  # never empty, strictly binary
    marker = read_marker(root)
    assert marker["family"] == "textures" and marker["categories"] == ["tiles", "weave"] and marker["seed"] == 0
    assert set(marker["files"]) == set(_files(root)) - {MARKER_NAME}


def test_mvtec_reader_loads_the_generated_tree(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "o", family="objects", categories=["nut"], **SMALL)
    dataset = MVTecAD(root, image_size=32)
    assert len(dataset) == 1 + len(DEFECT_TYPES)
    assert {s.defect_type for s in dataset.samples} == {"good"} | set(DEFECT_TYPES)
    for index in range(len(dataset)):
        item = dataset[index]
        assert (item["mask"].sum() > 0) == (item["label"] == 1)


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_surface_defect_masks_cover_exactly_the_changed_pixels(category: str) -> None:
    for defect in DEFECT_TYPES:
        for seed in range(2):
            sample = render_sample(category, defect, np.random.default_rng([seed, 11]), 64)
            change = _change(sample)
            assert sample.mask.sum() >= 4, (category, defect, seed)
            # Clearly changed pixels lie on the mask up to its 2-px anti-aliased rim ...
            clearly_changed = change > 8
            near_mask = binary_dilation(sample.mask, iterations=2)
            assert (clearly_changed & ~near_mask).sum() <= 0.15 * clearly_changed.sum(), (category, defect, seed)
            # ... and masked pixels did change.
            assert (change[sample.mask] > 3).mean() >= 0.85, (category, defect, seed)


@pytest.mark.parametrize("category", [c for c in ALL_CATEGORIES if STRUCTURAL_DEFECTS[c]])
def test_structural_defect_masks_cover_the_changed_region(category: str) -> None:
    for defect in STRUCTURAL_DEFECTS[category]:
        for seed in range(2):
            sample = render_sample(category, defect, np.random.default_rng([seed, 11]), 64)
            change = _change(sample)
            clearly_changed = change > 8
            assert sample.mask.sum() >= 16 and clearly_changed.sum() >= 16, (category, defect, seed)
            assert (clearly_changed & ~binary_dilation(sample.mask, iterations=2)).sum() <= 0.05 * clearly_changed.sum()
            # A region made at another pitch matches the surface here and there; a moved part changes most of its area.
            assert (change[sample.mask] > 3).mean() >= (0.4 if defect == "pitch" else 0.75), (category, defect, seed)


def test_large_area_defects_are_large_and_local_ones_small() -> None:
    def mean_area(defect: str) -> float:
        return np.mean([render_sample(c, defect, np.random.default_rng([s, 5]), 64).mask.mean()
                        for c in ("carpet", "leather", "tiles") for s in range(4)])

    assert mean_area("colour") > 0.15 and mean_area("gloss") > 0.15
    assert mean_area("scratch") < 0.03 and mean_area("contamination") < 0.05 and mean_area("pitch") > 0.1


def test_a_variant_renders_the_same_part_with_only_the_fault_changed() -> None:
    sample = render_sample("transistor", "missing", np.random.default_rng(7), 96)
    good = render_sample("transistor", "good", np.random.default_rng(7), 96)
    assert np.array_equal(sample.clean, good.image)  # the clean image is the very same transistor
    change = _change(sample)
    assert (change[~binary_dilation(sample.mask, iterations=3)] <= 8).all()
    assert 0.005 < sample.mask.mean() < 0.1  # one lead, not the whole part


def test_normal_images_vary_and_have_empty_masks() -> None:
    for category in ("carpet", "cable", "keypad"):
        first = render_sample(category, "good", np.random.default_rng(0), 48)
        second = render_sample(category, "good", np.random.default_rng(1), 48)
        assert not first.mask.any() and np.array_equal(first.image, first.clean)
        assert np.abs(first.image.astype(int) - second.image.astype(int)).mean() > 5


def test_captions_name_state_and_category_and_cover_the_prompt_vocabulary() -> None:
    rng = np.random.default_rng(0)
    good = [caption("carpet", "good", rng) for _ in range(4000)]
    scratched = [caption("carpet", "scratch", rng, specific=1.0) for _ in range(300)]
    generic = [caption("screw", "missing", rng, specific=0.0) for _ in range(4000)]
    assert all(c.endswith(".") and c == c.lower() for c in good + scratched + generic)
    assert not any("damaged" in c or "scratch" in c for c in good)
    assert all("scratch" in c for c in scratched)
    assert not any("missing" in c for c in generic) and any("damaged" in c for c in generic)
    assert any("carpet" in c or "rug" in c for c in good) and any(" object" in c for c in good)
    assert {"a photo of a normal object.", "a photo of a damaged object."} <= {c for c in good + generic}
    # Every word the book prompts with occurs in some caption of the pretraining families.
    vocabulary = caption_vocabulary(PRETRAINING_FAMILIES)
    normal, anomalous = winclip_prompts("object")
    prompts = [*PAPER_PROMPTS, *normal, *anomalous, *class_prompts("carpet"), *class_prompts("screw"), *TEMPLATES]
    words = {w.strip(".,").lower() for p in prompts for w in p.replace("{}", " ").split()}
    assert words <= vocabulary, words - vocabulary
    assert "keypad" not in vocabulary and "keypad" in caption_vocabulary()


def test_generate_benchmark_writes_every_family_as_an_mvtec_root(tmp_path: Path) -> None:
    paths = generate_benchmark(tmp_path, seed=0, image_size=32, n_train_good=1, n_test_good=1, n_test_defect_per_type=1)
    assert paths == {family: tmp_path / family for family in FAMILIES}
    objects = build_dataset(f"synth:{paths['objects']}", image_size=32)
    assert objects.categories == sorted(OBJECT_CATEGORIES)
    assert isinstance(objects, SyntheticDataset) and repr(objects).startswith("SyntheticDataset(")
    textures = build_dataset(f"synth:{paths['textures']}", split="train", image_size=32)
    assert textures.categories == sorted(TEXTURE_CATEGORIES) and set(textures.labels.tolist()) == {0}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FAMILIES)  # no staging folder left behind
    with pytest.raises(ValueError, match="benchmark root"):
        build_dataset(f"synth:{tmp_path}")


def test_a_non_empty_target_is_refused_and_keeps_its_files(tmp_path: Path) -> None:
    target = tmp_path / "ring"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=str(target)):
            generate_synthetic_dataset(target, family="objects", categories=["ring"], overwrite=overwrite, **SMALL)
    assert _files(target) == {"notes.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring"]  # the staging folder is gone
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        generate_synthetic_dataset(a_file, family="objects", **SMALL)


def test_overwrite_replaces_only_a_data_set_written_here(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    generate_synthetic_dataset(root, family="objects", categories=["ring"], **{**SMALL, "n_test_good": 3})
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_dataset(root, family="objects", categories=["ring"], **SMALL)
    generate_synthetic_dataset(root, family="objects", categories=["ring"], overwrite=True, **SMALL)
    assert len(list((root / "ring" / "test" / "good").iterdir())) == 1
    (root / "ring" / "test" / "good" / "user.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="user.png"):
        generate_synthetic_dataset(root, family="objects", categories=["ring"], overwrite=True, **SMALL)
    assert (root / "ring" / "test" / "good" / "user.png").read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_synthetic_dataset(empty, family="objects", categories=["nut"], **SMALL)  # an empty folder is fine
    umask = os.umask(0)
    os.umask(umask)
    assert (empty / "nut" / "train" / "good" / "000.png").is_file()
    assert empty.stat().st_mode & 0o777 == 0o777 & ~umask  # the user's normal permissions, not mkdtemp's 0700


def test_a_crash_while_writing_leaves_the_target_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = generate_synthetic_dataset(tmp_path / "objects", family="objects", categories=["pill"], **SMALL)
    before = _files(root)
    import feclip.data.synthetic.writer as writer

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "render_sample", broken)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic_dataset(root, family="objects", categories=["pill"], overwrite=True, **SMALL)
    assert _files(root) == before and sorted(p.name for p in tmp_path.iterdir()) == ["objects"]


def test_a_broken_marker_is_named(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=MARKER_NAME):
        read_marker(tmp_path)
    assert read_marker(tmp_path / "missing") is None
    assert json.loads((generate_synthetic_dataset(tmp_path / "n", family="objects", categories=["nut"], **SMALL)
                       / MARKER_NAME).read_text())["version"] >= 2


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'fabrics'"):
        generate_synthetic_dataset(tmp_path, family="fabrics")
    with pytest.raises(ValueError, match="'pill' for family 'textures'"):
        generate_synthetic_dataset(tmp_path, family="textures", categories=["pill"])
    with pytest.raises(ValueError, match="'dent'"):
        generate_synthetic_dataset(tmp_path, defect_types=["dent"])
    with pytest.raises(ValueError, match="'missing' for category 'nut'"):
        generate_synthetic_dataset(tmp_path, family="objects", categories=["nut"], defect_types=["missing"])
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_dataset(tmp_path, image_size=16)
    with pytest.raises(ValueError, match="'nail'"):
        render_sample("nail", "good", np.random.default_rng(0))
    with pytest.raises(ValueError, match="'pitch' for category 'nut'"):
        render_sample("nut", "pitch", np.random.default_rng(0))
    with pytest.raises(FileNotFoundError, match="generate_benchmark"):
        build_dataset(f"synth:{tmp_path / 'not_generated'}")
