"""Command-line interface: ``faceaux --version``, ``faceaux --help`` and the sub-commands.

Each sub-command lives in its own module that defines ``add_parser(subparsers)``; the parser it
adds sets ``handler=`` (a function ``args -> exit status``) with ``set_defaults``. List the module
in ``SUBCOMMAND_MODULES`` to register it.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from faceaux import __version__

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "faceaux.demo",
    "faceaux.study",
    "faceaux.bench",
    "faceaux.train.command",
    "faceaux.pack",
    "faceaux.evaluate",
    "faceaux.export",
    "faceaux.convert_fan",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``faceaux`` argument parser, with one sub-parser per sub-command."""
    parser = argparse.ArgumentParser(
        prog="faceaux",
        description="Drop-in face-recognition layers for PyTorch.",
        epilog="Run 'faceaux COMMAND --help' for a command's options and their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"faceaux {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.handler(args))
