"""The ``feclip`` command line: one module per subcommand.

Every library error a user can cause (a missing path, an unknown dataset kind, a checkpoint
for another model, unreachable weights, a validation set on the target) is printed as one
``feclip: error: ...`` line on stderr with exit status 1; ``--debug`` (or ``FECLIP_DEBUG=1``)
shows the traceback instead.

Layout: each subcommand is a module of this package with ``NAME``, ``SUMMARY`` (its line in
``feclip --help``), ``configure(parser)`` (description, epilog, arguments) and ``run(args) -> int``;
:data:`COMMANDS` lists them in the order ``feclip --help`` shows them. Shared flags and the one-line
errors live in :mod:`feclip.cli.common`, the offered values in :mod:`feclip.cli.choices`. Modules
import torch (and the library) only inside ``run``, and only the command that runs gets its
arguments, so that ``--help`` answers at once (``pretrain-toy-clip``'s own ``--help`` excepted: its
options and defaults are :mod:`feclip.toy_clip.pretrain`'s). A new subcommand is a new module listed in
:data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from feclip import __version__
from feclip.cli.common import check_common_flags, error_line, formatter, user_errors

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand name -> its module in this package, in help order.
COMMANDS: dict[str, str] = {
    "synth": "synth",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "download": "download",
    "reproduce": "reproduce",
    "export": "export",
    "pretrain-toy-clip": "pretrain_toy_clip",
}

_EXAMPLES = """examples:
  feclip synth --out data/synthetic
  feclip train --out runs/demo                       # smoke run on the synthetic benchmark
  feclip train --train visa:data/visa --val-fraction 0.1 --target mvtec:data/mvtec --out runs/visa2mvtec
  torchrun --nproc_per_node=2 -m feclip train --train visa:data/visa --out runs/ddp
  feclip eval --ckpt runs/visa2mvtec/last.safetensors --data mvtec:data/mvtec
  feclip predict --ckpt runs/visa2mvtec/last.safetensors my_images/ --out heatmaps/
  feclip download mvtec visa --root data
  feclip reproduce --profile smoke --seeds 0 1

dataset specs are KIND:PATH with KIND one of mvtec, visa, synth (one family of the synthetic
benchmark, e.g. synth:data/synthetic/objects) or folder (PATH/good, PATH/abnormal, PATH/masks).
Add --debug (or set FECLIP_DEBUG=1) to see a traceback instead of the one-line error."""


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"feclip.cli.{COMMANDS[name]}")


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if it is one of ours."""
    word = next((token for token in argv if not token.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None, *, all_commands: bool = True) -> argparse.ArgumentParser:
    """The ``feclip`` argument parser.

    Args:
        command: Give this subcommand its arguments (the others get only their summary line).
        all_commands: With ``command=None``, give every subcommand its arguments (a complete parser,
            which imports what every subcommand's arguments need); ``False``: none of them.
    """
    parser = argparse.ArgumentParser(
        prog="feclip",
        description="Zero-shot industrial anomaly detection with FE-CLIP (frequency-enhanced CLIP).",
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"feclip {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = _module(name)
        subparser = commands.add_parser(name, help=module.SUMMARY, formatter_class=formatter)
        if name == command or (command is None and all_commands):
            module.configure(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    args = build_parser(command, all_commands=False).parse_args(argv)
    debug = args.debug or os.environ.get("FECLIP_DEBUG", "0") not in ("", "0")
    try:
        check_common_flags(args.command, args)
        return _module(args.command).run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("feclip: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not isinstance(err, user_errors()):
            raise
        print(f"feclip: error: {error_line(err)}", file=sys.stderr)
        return 1
