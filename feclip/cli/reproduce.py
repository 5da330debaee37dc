"""``feclip reproduce``: the paper's protocol in both directions over several seeds (:mod:`feclip.reproduce`)."""

from __future__ import annotations

import argparse

NAME = "reproduce"
SUMMARY = "reproduce the paper's tables: both protocol directions, several seeds, resumable"


def configure(parser: argparse.ArgumentParser) -> None:
    from feclip.reproduce.command import add_reproduce_arguments

    parser.description = "Train and evaluate the zero-shot protocol in both directions over seeds; write the tables."
    add_reproduce_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from feclip.reproduce.command import run_reproduce

    return run_reproduce(args)
