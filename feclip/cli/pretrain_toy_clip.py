"""``feclip pretrain-toy-clip``: pretrain the toy CLIP, ``python -m feclip.toy_clip`` under the ``feclip`` command.

The options are :func:`feclip.toy_clip.options.add_arguments`' own, so the two commands never drift
apart; their defaults are :class:`feclip.toy_clip.options.PretrainConfig`'s (a module without torch, so
``--help`` answers at once). It is the developers' command that remakes the weights shipped in
``feclip/weights``.
"""

from __future__ import annotations

import argparse

NAME = "pretrain-toy-clip"
SUMMARY = "pretrain the toy CLIP (feclip-tiny on the captioned synthetic world) that feclip ships"
EPILOG = """the toy CLIP is feclip-tiny pretrained with open_clip's contrastive loss on captioned
renderings of the synthetic textures and objects: not OpenAI's CLIP, it has never seen a photograph.
A killed run resumes from its state file FILE.state.pt when given the same options.

examples:
  feclip pretrain-toy-clip --out toy.safetensors
  feclip pretrain-toy-clip --out toy.safetensors --steps 200 --threads 2 --quiet"""


def configure(parser: argparse.ArgumentParser) -> None:
    from feclip.toy_clip.options import DESCRIPTION, add_arguments

    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    add_arguments(parser)


def command_line(args: argparse.Namespace) -> str:
    """The command that makes these weights, every option spelled out (recorded in the weights file)."""
    words = [f"feclip {NAME}"]
    for name, value in vars(args).items():
        if name in ("command", "debug") or value is None or value is False:
            continue
        words.append(f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}"))
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    from feclip.toy_clip.pretrain import run as pretrain_run

    return pretrain_run(args, command_line(args))
