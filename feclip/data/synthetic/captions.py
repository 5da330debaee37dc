"""Captions of synthetic images: what the toy CLIP reads while it is pretrained on the synthetic world.

A caption is a template around a noun phrase in one state: ``"a close-up photo of a scratched
carpet."``, ``"a photo of a flawless weave."``, ``"a photo of a damaged object."``. The pieces are
chosen so that every prompt the book scores with means something in this world:

* the FE-CLIP paper's pair ``"A photo of a normal object."`` / ``"A photo of a damaged object."``
  (:data:`feclip.prompts.PAPER_PROMPTS`): ``"object"`` names every category, ``"normal"`` and
  ``"damaged"`` are states;
* WinCLIP's ensemble (:func:`feclip.prompts.winclip_prompts`): all its state phrases and all its
  templates are used here as they are;
* class-name prompts (:func:`feclip.prompts.class_prompts`): each category has its own nouns.

Captions of defective images name the state generically (``"damaged"``, ``"with defect"``) or by
the defect type (``"with a scratch"``, ``"discoloured"``); captions of crops and windows describe
what the crop shows, so a crop away from the defect is captioned as normal.
"""

from __future__ import annotations

import numpy as np

from feclip.prompts import ANOMALOUS_STATES, NORMAL_STATES, TEMPLATES

from .render import FAMILIES, STRUCTURAL_DEFECTS, DEFECT_TYPES, family_of

__all__ = [
    "CATEGORY_NOUNS", "DEFECT_STATES", "FAMILY_NOUNS", "GENERIC_NOUN", "NORMAL_STATE_PHRASES",
    "ANOMALOUS_STATE_PHRASES", "CAPTION_TEMPLATES", "caption", "caption_pair", "caption_vocabulary",
]

GENERIC_NOUN = "object"  # what the paper's prompts call every product
FAMILY_NOUNS: dict[str, tuple[str, ...]] = {
    "textures": ("surface", "texture", "material"),
    "objects": ("part", "component", "product"),
    "assemblies": ("assembly", "board"),
}
CATEGORY_NOUNS: dict[str, tuple[str, ...]] = {
    "weave": ("weave", "woven fabric", "fabric"),
    "grain": ("wood", "wood grain", "wooden board"),
    "brushed_metal": ("brushed metal", "metal plate", "metal sheet"),
    "carpet": ("carpet", "rug"),
    "tiles": ("tiles", "tiled floor", "tile"),
    "leather": ("leather", "leather hide"),
    "mesh": ("mesh", "perforated metal", "grid"),
    "nut": ("nut", "hex nut", "metal nut"),
    "pill": ("pill", "capsule", "tablet"),
    "screw": ("screw", "bolt"),
    "ring": ("ring", "washer"),
    "transistor": ("transistor", "electronic component"),
    "cable": ("cable", "cable cross section", "wire"),
    "circuit": ("circuit board", "pcb"),
    "blister": ("blister pack", "pill pack"),
    "keypad": ("keypad", "keyboard"),
}
NORMAL_STATE_PHRASES: tuple[str, ...] = NORMAL_STATES + (
    "normal {}", "good {}", "intact {}", "clean {}", "{} without anomaly", "defect-free {}",
)
ANOMALOUS_STATE_PHRASES: tuple[str, ...] = ANOMALOUS_STATES + (
    "defective {}", "anomalous {}", "broken {}", "{} with an anomaly", "faulty {}",
)
DEFECT_STATES: dict[str, tuple[str, ...]] = {
    "scratch": ("scratched {}", "{} with a scratch"),
    "hole": ("{} with a hole", "punctured {}"),
    "crack": ("cracked {}", "{} with a crack"),
    "stain": ("stained {}", "{} with a stain"),
    "cut": ("{} with a cut", "{} with a missing piece", "torn {}"),
    "contamination": ("contaminated {}", "{} with contamination", "dirty {}", "{} with specks of dirt"),
    "colour": ("discoloured {}", "{} with a colour defect", "{} with the wrong colour"),
    "gloss": ("{} with a glossy patch", "{} with uneven gloss", "{} with a shiny spot"),
    "pitch": ("{} with an irregular pattern", "{} with a wrong pitch", "misprinted {}"),
    "missing": ("{} with a missing part", "incomplete {}"),
    "misplaced": ("{} with a misplaced part", "misaligned {}", "{} with a part out of place"),
}
CAPTION_TEMPLATES: tuple[str, ...] = TEMPLATES


def _noun(category: str, rng: np.random.Generator) -> str:
    draw = rng.random()
    if draw < 0.4:
        return GENERIC_NOUN
    if draw < 0.6:
        nouns = FAMILY_NOUNS[family_of(category)]
    else:
        nouns = CATEGORY_NOUNS[category]
    return nouns[rng.integers(len(nouns))]


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


def caption(category: str, defect_type: str, rng: np.random.Generator, *, specific: float = 0.5) -> str:
    """One caption of an image (or a view of it) of ``category`` in state ``defect_type``.

    Args:
        category: A synthetic category.
        defect_type: ``"good"`` for a view without a defect, else the defect type it shows.
        rng: The random generator.
        specific: Chance that a defective view is captioned by its defect type rather than generically.

    Returns:
        A lower-case sentence ending in a full stop.
    """
    return caption_pair(category, defect_type, rng, specific=specific)[0 if defect_type != "good" else 1]


def caption_pair(category: str, defect_type: str, rng: np.random.Generator, *, specific: float = 0.5) -> tuple[str, str]:
    """Captions of a defective view and of the same view without the defect: one noun and template, two states.

    Contrasting the two teaches the state itself, since nothing else in the pair differs.

    Args:
        category: A synthetic category.
        defect_type: The defect type the defective view shows (``"good"``: both captions are normal).
        rng: The random generator.
        specific: Chance that the defective caption names the defect type rather than a generic state.

    Returns:
        ``(defective_caption, normal_caption)``.
    """
    noun = _noun(category, rng)
    if defect_type == "good":
        anomalous = _pick(NORMAL_STATE_PHRASES, rng)
    else:
        anomalous = _pick(DEFECT_STATES[defect_type] if rng.random() < specific else ANOMALOUS_STATE_PHRASES, rng)
    normal = _pick(NORMAL_STATE_PHRASES, rng)
    template = _pick(CAPTION_TEMPLATES, rng)
    return template.format(anomalous.format(noun)), template.format(normal.format(noun))


def caption_vocabulary(families: tuple[str, ...] = tuple(FAMILIES)) -> set[str]:
    """Every word any caption of these families can contain (lower case, punctuation stripped)."""
    categories = [c for family in families for c in FAMILIES[family]]
    phrases = list(NORMAL_STATE_PHRASES + ANOMALOUS_STATE_PHRASES + CAPTION_TEMPLATES)
    phrases += [p for c in categories for d in DEFECT_TYPES + STRUCTURAL_DEFECTS[c] for p in DEFECT_STATES[d]]
    phrases += [GENERIC_NOUN] + [n for f in families for n in FAMILY_NOUNS[f]] + [n for c in categories for n in CATEGORY_NOUNS[c]]
    return {word.strip(".,").lower() for phrase in phrases for word in phrase.replace("{}", " ").split()}
