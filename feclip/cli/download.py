"""``feclip download``: fetch and prepare the public data sets (:mod:`feclip.data.download`)."""

from __future__ import annotations

import argparse

NAME = "download"
SUMMARY = "download and prepare MVTec AD, VisA and the other public data sets"


def configure(parser: argparse.ArgumentParser) -> None:
    from feclip.data.download import add_download_arguments

    parser.description = "Download, verify and lay out the data sets the readers read (resumable, checksummed)."
    add_download_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from feclip.data.download import run_download

    return run_download(args)
