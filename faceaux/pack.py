"""``faceaux pack SRC_DIR OUT_PREFIX``: write an image folder as an MXNet RecordIO set.

The output (``OUT_PREFIX.rec`` + ``OUT_PREFIX.idx``) is what InsightFace's training sets look
like and what mxnet's ``MXIndexedRecordIO`` reads; see :func:`faceaux.data.pack_folder`.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux pack``."""
    parser = subparsers.add_parser(
        "pack",
        help="pack an image folder (one sub-folder per identity) into train.rec + train.idx",
        description=(
            "Pack SRC_DIR (one sub-folder per identity, images inside) into OUT_PREFIX.rec and "
            "OUT_PREFIX.idx in InsightFace's MXNet RecordIO layout (record 0 = index ranges, "
            "then the images with their identity label, then one record per identity). Image "
            "files are stored byte for byte, not re-encoded."
        ),
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder of identity folders")
    parser.add_argument(
        "out_prefix", metavar="OUT_PREFIX", help="output path without extension, e.g. out/train"
    )
    parser.add_argument(
        "--min-images",
        type=int,
        default=1,
        help="skip identities with fewer images (default: 1)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: show one)"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Pack the folder and print what was written; returns the exit status."""
    from faceaux.data.recordio import pack_folder

    summary = pack_folder(
        args.src_dir, args.out_prefix, min_images=args.min_images, progress=not args.no_progress
    )
    print(
        f"packed {summary['images']} images of {summary['identities']} identities into "
        f"{os.fspath(args.out_prefix)}.rec ({summary['bytes']} bytes) and .idx"
    )
    return 0
