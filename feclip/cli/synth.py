"""``feclip synth``: write the synthetic defect benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from feclip.cli.choices import SYNTH_FAMILIES

NAME = "synth"
SUMMARY = "write the synthetic defect benchmark (MVTec layout)"
EPILOG = """examples:
  feclip synth --out data/synthetic
  feclip synth --out data/synthetic --family textures --image-size 128 --seed 1"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Write the synthetic defect benchmark: one MVTec-layout root per family (textures/, objects/, ...)."
    parser.epilog = EPILOG
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="benchmark root to write")
    parser.add_argument("--family", choices=("all", "both", *SYNTH_FAMILIES), default="all",
                        help="which family; both: textures and objects, the smoke run's pair (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every image (default: 0)")
    parser.add_argument("--image-size", type=int, default=96, help="image side in pixels (default: 96)")
    parser.add_argument("--n-train-good", type=int, default=8, help="normal train images per category (default: 8)")
    parser.add_argument("--n-test-good", type=int, default=8, help="normal test images per category (default: 8)")
    parser.add_argument("--n-defect", type=int, default=3, help="test images per defect type and category (default: 3)")


def run(args: argparse.Namespace) -> int:
    from feclip.data import FAMILIES, generate_synthetic_dataset

    families = {"all": list(FAMILIES), "both": ["textures", "objects"]}.get(args.family, [args.family])
    for family in families:
        root = generate_synthetic_dataset(args.out / family, family=family, image_size=args.image_size,
                                          n_train_good=args.n_train_good, n_test_good=args.n_test_good,
                                          n_test_defect_per_type=args.n_defect, seed=args.seed)
        print(f"{family}: synth:{root}")
    if {"textures", "objects"} <= set(families):
        print(f"train with: feclip train --train synth:{args.out / 'objects'} --val-fraction 0.25 "
              f"--target synth:{args.out / 'textures'} --out runs/synth")
    return 0
