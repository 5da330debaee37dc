"""The values the command line offers before any library module is imported.

``feclip --help`` (and every subcommand's ``--help``) must answer without importing torch, which
takes seconds; the library modules that define these vocabularies all import it. So the parser
reads them from here, and ``tests/test_cli.py`` checks that every one equals the library's own
constant (named next to it), so the two never drift apart.
"""

from __future__ import annotations

__all__ = [
    "AMP_MODES",
    "BASES",
    "BASIS_ALIASES",
    "DATASET_KINDS",
    "DEFAULT_BACKBONE",
    "DEFAULT_MAP_SIGMA",
    "DEFAULT_PRETRAINED",
    "FC_PATCH_INITS",
    "LFS_STATISTICS",
    "MAP_FORMATS",
    "MAP_SCORES",
    "RESIZE_MODES",
    "SYNTH_FAMILIES",
    "TINY_MODEL",
]

DEFAULT_BACKBONE, DEFAULT_PRETRAINED = "ViT-L-14-336", "openai"  # FEClip.default_backbone
TINY_MODEL = "feclip-tiny"  # feclip.backbones.TINY_MODEL
DATASET_KINDS = ("mvtec", "visa", "folder", "synth")  # feclip.data.DATASET_KINDS
SYNTH_FAMILIES = ("textures", "objects", "assemblies")  # tuple(feclip.data.synthetic.FAMILIES)
LFS_STATISTICS = ("mean", "abs", "power")  # feclip.adapters.LFS_STATISTICS
BASES = ("dct", "hartley")  # feclip.dct.BASES
BASIS_ALIASES = ("dft",)  # old names feclip.dct.canonical_basis still reads
FC_PATCH_INITS = ("random", "clip")  # feclip.config.FC_PATCH_INITS
MAP_SCORES = ("probability", "logit_margin")  # feclip.config.MAP_SCORES
RESIZE_MODES = ("squash", "crop")  # feclip.data.transforms.RESIZE_MODES
AMP_MODES = ("auto", "bf16", "fp16", "off")  # feclip.train.config.AMP_MODES
DEFAULT_MAP_SIGMA = 4.0  # feclip.evaluate.DEFAULT_MAP_SIGMA
MAP_FORMATS = ("npy", "png16", "none")  # feclip.heatmaps.MAP_FORMATS
