"""``feclip reproduce``: the command line of :func:`feclip.reproduce.reproduce`.

Wire it into a parser with :func:`add_reproduce_arguments` and run the parsed arguments with
:func:`run_reproduce` (the pattern of :mod:`feclip.data.download`'s ``feclip download``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from feclip.data.sources import SOURCES
from feclip.reproduce.defaults import DEFAULT_MAP_SIGMAS, DEFAULT_SEEDS

__all__ = ["add_reproduce_arguments", "run_reproduce"]


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``feclip reproduce``'s arguments to ``parser`` (run them with :func:`run_reproduce`)."""
    parser.add_argument("--profile", choices=("auto", "full", "smoke"), default=None,
                        help="full: the paper's setting on a GPU; smoke: the synthetic stand-ins on the CPU; "
                             "auto (default, or $FECLIP_PROFILE): full when it can run")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), metavar="N",
                        help="training seeds, one run per direction and seed (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                        help=f"data sets to evaluate, of: {', '.join(SOURCES)} (default: every one under the "
                             "data root; MVTec AD and VisA are required)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="full profile: the data root (default $FECLIP_DATA, else ./data); smoke profile: "
                             "where the synthetic stand-ins are written")
    parser.add_argument("--results-root", type=Path, default=Path("results"),
                        help="folder of the dated output folders (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder instead of RESULTS_ROOT/<date>; the same folder resumes")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the profile's)")
    parser.add_argument("--images-per-category", type=int, default=None, metavar="N",
                        help="evaluate at most N images per category (default: the profile's; all in full)")
    parser.add_argument("--map-sigmas", nargs="+", type=float, default=list(DEFAULT_MAP_SIGMAS), metavar="S",
                        help="score every evaluation with the maps smoothed at each sigma (default: %(default)s)")
    parser.add_argument("--smoke-categories", type=int, default=None, metavar="N",
                        help="smoke profile: keep N categories of each synthetic family (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_reproduce(args: argparse.Namespace) -> int:
    """Run ``feclip reproduce`` from arguments added by :func:`add_reproduce_arguments`; returns the exit status."""
    import torch

    from feclip.profiles import resolve_profile
    from feclip.reproduce.runner import reproduce
    from feclip.reproduce.smoke import SmokeSizes

    profile = resolve_profile(args.profile)
    sizes = None
    if args.smoke_categories is not None:
        if not profile.is_smoke:
            raise ValueError(f"--smoke-categories applies to the smoke profile only (the profile is {profile.name!r})")
        if args.smoke_categories < 1:
            raise ValueError(f"--smoke-categories must be at least 1, got {args.smoke_categories}")
        sizes = SmokeSizes(categories_per_family=args.smoke_categories)
    if profile.num_threads is not None:
        torch.set_num_threads(profile.num_threads)
    result = reproduce(profile, args.seeds, args.datasets, results_root=args.results_root, out=args.out,
                       data_root=args.data_root, epochs=args.epochs, images_per_category=args.images_per_category,
                       sizes=sizes, map_sigmas=args.map_sigmas, progress=not args.no_progress)
    print(result.files["summary_md"].read_text(encoding="utf-8"))
    for path in result.files.values():
        print(f"written: {path}")
    return 0
