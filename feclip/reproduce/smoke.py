"""The smoke profile's stand-ins for MVTec AD, VisA and BTAD: the synthetic benchmark in their released layouts.

One synthetic family per data set, each in that set's own layout, so the reproduction reads them
with the same readers and specs as the real ones (:func:`feclip.data.download.dataset_spec`):

* ``mvtec``: the *textures* family in MVTec layout (as the generator writes it);
* ``visa``: the *objects* family in VisA's layout, ``split_csv/1cls.csv`` included
  (:func:`feclip.data.layouts.write_visa_layout`);
* ``btad``: the *assemblies* family in BTAD's layout, ``ok``/``ko`` folders and BMP images
  (:func:`feclip.data.layouts.write_btad_layout`).

The families have disjoint categories, so training on one and evaluating on another is zero-shot
as the paper's protocol is. Numbers on them show that the code runs; they say nothing about the paper.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from feclip.data.layouts import write_btad_layout, write_visa_layout
from feclip.data.synthetic import FAMILIES, SYNTHETIC_VERSION, generate_synthetic_dataset

__all__ = ["SMOKE_FAMILIES", "SmokeSizes", "write_smoke_data"]

# Data set name -> the synthetic family that stands in for it.
SMOKE_FAMILIES = {"mvtec": "textures", "visa": "objects", "btad": "assemblies"}


@dataclass(frozen=True)
class SmokeSizes:
    """How much synthetic data the smoke reproduction writes.

    Attributes:
        image_size: Side of the square images in pixels (at least 32).
        n_train_good: Normal train-split images per category (the protocol never trains on them).
        n_test_good: Normal test-split images per category.
        n_test_defect_per_type: Anomalous test images per defect type and category.
        categories_per_family: Keep the first this many categories of each family (``None``: all).
        seed: Seed of the images.
    """

    image_size: int = 96
    n_train_good: int = 1
    n_test_good: int = 4
    n_test_defect_per_type: int = 1
    categories_per_family: int | None = None
    seed: int = 0

    @property
    def key(self) -> str:
        """Folder name that identifies these sizes (and the generator's version)."""
        categories = "all" if self.categories_per_family is None else self.categories_per_family
        return (f"synthetic-v{SYNTHETIC_VERSION}-px{self.image_size}-train{self.n_train_good}-good{self.n_test_good}"
                f"-defect{self.n_test_defect_per_type}-categories{categories}-seed{self.seed}")

    def to_dict(self) -> dict[str, int | None]:
        """A JSON-serialisable copy."""
        return asdict(self)


def write_smoke_data(base: str | Path, sizes: SmokeSizes = SmokeSizes()) -> Path:
    """The data root ``<base>/<sizes.key>`` holding ``mvtec/``, ``visa/`` and ``btad/`` stand-ins; written if missing.

    The three are generated in a staging folder beside the root and renamed into place together,
    so a crash leaves nothing half written and a concurrent writer's identical copy is kept.

    Args:
        base: Folder under which the data root is created.
        sizes: How much data to write.

    Returns:
        The data root.
    """
    root = Path(base) / sizes.key
    if all((root / name).is_dir() for name in SMOKE_FAMILIES):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
    try:
        counts = dict(image_size=sizes.image_size, n_train_good=sizes.n_train_good, n_test_good=sizes.n_test_good,
                      n_test_defect_per_type=sizes.n_test_defect_per_type, seed=sizes.seed)
        written = {}
        for name, family in SMOKE_FAMILIES.items():
            categories = list(FAMILIES[family][: sizes.categories_per_family])
            target = staging / (name if name == "mvtec" else f"mvtec-layout-{name}")
            written[name] = generate_synthetic_dataset(target, family=family, categories=categories, **counts)
        write_visa_layout(written["visa"], staging / "visa")
        write_btad_layout(written["btad"], staging / "btad")
        for name in ("visa", "btad"):
            shutil.rmtree(written[name])
        try:
            staging.rename(root)
        except OSError as error:  # another process finished first; its copy is the same (same sizes, same seed)
            if not all((root / name).is_dir() for name in SMOKE_FAMILIES):
                raise FileExistsError(f"{root} exists but does not hold {', '.join(SMOKE_FAMILIES)}; "
                                      "delete it to write the smoke data again") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
