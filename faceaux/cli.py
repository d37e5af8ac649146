"""Command-line interface: ``faceaux --version``, ``faceaux --help`` and the sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from faceaux import __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``faceaux`` argument parser, with one sub-parser per sub-command."""
    parser = argparse.ArgumentParser(
        prog="faceaux",
        description="Drop-in face-recognition layers for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"faceaux {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)
