"""A synthetic world of industrial images with defects, generated deterministically from a seed.

Three families with disjoint categories (:data:`FAMILIES`):

* ``textures``: surfaces that fill the frame (weave, wood grain, brushed metal, carpet, tiles,
  leather, perforated mesh) with random phase, orientation, colour and lighting;
* ``objects``: one part on a backdrop (hex nut, two-colour pill, screw, ring, and the mounted
  transistor and cable cross-section, which always face the same way);
* ``assemblies``: several parts laid out on a carrier (circuit board, blister pack, keypad). No
  training ever sees this family (:data:`HELD_OUT_FAMILY`); it measures out-of-world generalisation.

Every category has the surface defects of :data:`DEFECT_TYPES`: local ones (``scratch``,
``hole``, ``crack``, ``stain``, ``cut``, ``contamination``: a cluster of specks) and large-area
ones (``colour``: another hue over a region or the whole surface; ``gloss``: flattened contrast
and a sheen). Categories add faults of their own structure (:data:`STRUCTURAL_DEFECTS`):
``pitch`` for every texture (a region made at another pitch), ``missing`` and ``misplaced`` parts
for the objects and assemblies that have parts. :func:`defect_types_for` lists a category's types.

Every image has captions (:func:`caption`) built from WinCLIP's states and templates and the
category's nouns; the toy CLIP (:mod:`feclip.toy_clip`) is pretrained on captioned renderings of
the textures and objects families (:data:`PRETRAINING_FAMILIES`).

Zero-shot protocol offline: FE-CLIP trains on one family and is evaluated on another it has
never seen (VisA -> MVTec in the paper). :func:`generate_benchmark` writes all families, each as
an MVTec root, safely (staging folder, marker file, never deleting what it did not write).
"""

from .captions import caption, caption_pair, caption_vocabulary
from .render import (
    ASSEMBLY_CATEGORIES,
    DEFECT_TYPES,
    FAMILIES,
    HELD_OUT_FAMILY,
    OBJECT_CATEGORIES,
    PRETRAINING_FAMILIES,
    STRUCTURAL_DEFECTS,
    TEXTURE_CATEGORIES,
    SyntheticSample,
    defect_types_for,
    family_of,
    render_sample,
)
from .writer import (
    MARKER_NAME,
    SYNTHETIC_VERSION,
    SyntheticDataset,
    generate_benchmark,
    generate_synthetic_dataset,
    read_marker,
)

__all__ = [
    "ASSEMBLY_CATEGORIES", "DEFECT_TYPES", "FAMILIES", "HELD_OUT_FAMILY", "MARKER_NAME", "OBJECT_CATEGORIES",
    "PRETRAINING_FAMILIES", "STRUCTURAL_DEFECTS", "SYNTHETIC_VERSION", "TEXTURE_CATEGORIES", "SyntheticDataset",
    "SyntheticSample", "caption", "caption_pair", "caption_vocabulary", "defect_types_for", "family_of", "generate_benchmark",
    "generate_synthetic_dataset", "read_marker", "render_sample",
]
