"""``faceaux convert-fan ARCHIVE OUTPUT``: face-alignment's TorchScript FAN as a plain state dict.

The public face-alignment package ships its 2D-FAN (``2DFAN4-….zip``) as a TorchScript archive,
which :func:`faceaux.load_face_alignment_checkpoint` does not read (it loads state dicts with
``torch.load(weights_only=True)`` only). :func:`convert_fan_torchscript` reads the archive with
``torch.jit.load``, takes its parameters and buffers, checks that they are a FAN in faceaux's
layout (the package's own names), and — unless told not to — runs the archive and a faceaux
:class:`~faceaux.models.FAN` holding the converted weights on the same random input and
requires the same heatmaps, which also tells which pooling the network was trained with.

Only convert an archive you trust: the check runs the archive's TorchScript code (as
face-alignment itself does). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from typing import NamedTuple

import torch

__all__ = ["ConvertedFAN", "add_parser", "convert_fan_torchscript"]

_STACK_HEAD = re.compile(r"^l(\d+)\.weight$")
_LEVEL = re.compile(r"^m0\.b1_(\d+)\.")


class ConvertedFAN(NamedTuple):
    """What :func:`convert_fan_torchscript` found.

    Shape:
        ``state_dict``: the archive's tensors by face-alignment's names (``l0.weight`` is
        ``(num_landmarks, num_features, 1, 1)``); the other fields are plain values.
    """

    state_dict: dict[str, torch.Tensor]
    num_stacks: int
    num_landmarks: int
    num_features: int
    depth: int
    pool: str | None  # "avg" or "max" (the pooling whose outputs matched); None: not checked
    max_difference: float | None  # max |archive − faceaux| over the checked heatmaps


def _architecture(state: dict[str, torch.Tensor], archive: str) -> dict[str, int]:
    stacks = sorted(int(m.group(1)) for key in state if (m := _STACK_HEAD.match(key)))
    levels = {int(m.group(1)) for key in state if (m := _LEVEL.match(key))}
    if (
        not stacks
        or stacks != list(range(len(stacks)))
        or not levels
        or "conv1.weight" not in state
    ):
        raise ValueError(
            f"archive: {archive!r} holds no face-alignment FAN (expected the keys conv1.weight, "
            f"m0.b1_1.*, l0.weight …; found {len(state)} tensors, e.g. {sorted(state)[:5]})"
        )
    head = state["l0.weight"]
    return {
        "num_stacks": len(stacks),
        "num_landmarks": int(head.shape[0]),
        "num_features": int(head.shape[1]),
        "depth": max(levels),
        "in_channels": int(state["conv1.weight"].shape[1]),
    }


def _last_heatmaps(output: object) -> torch.Tensor | None:
    """The archive's output: a tensor, or (older releases) a list with one per stack."""
    if isinstance(output, (list, tuple)) and output:
        output = output[-1]
    return output if isinstance(output, torch.Tensor) else None


def convert_fan_torchscript(
    archive: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    check: bool = True,
) -> ConvertedFAN:
    """Convert face-alignment's TorchScript FAN archive to a state dict (and save it).

    The FAN of FAN-Face §3.1 (Bulat & Tzimiropoulos, ICCV 2017), in the public face-alignment
    package's layout: the number of stacks, landmarks, hourglass width and depth are read from
    the tensors, and the state dict must load into a :class:`~faceaux.models.FAN` built with
    them, key for key. With ``check=True`` the archive and that FAN (average pooling first, max
    pooling — face-alignment's pre-1.1 models — if that differs) run on one random input of the
    native size (256×256 for depth 4) and must give the same last-stack heatmaps (to 1e-4 of
    their largest value).

    Args:
        archive: the TorchScript file, e.g. face-alignment's ``2DFAN4-<hash>.zip``.
        output: where to ``torch.save`` the state dict; ``None`` saves nothing.
        check: run the archive and the converted FAN and compare them.

    Returns:
        A :class:`ConvertedFAN`; ``load_face_alignment_checkpoint(output, num_stacks=2)`` then
        gives FAN-Face's 2-stack FAN (pass ``pool="max"`` when ``pool`` says so).

    Raises:
        ValueError: the file is not a TorchScript archive, holds no FAN, or (``check``) computes
            something else than the FAN its weights describe.

    Shape:
        ``state_dict["l0.weight"]``: ``(K, C, 1, 1)``; the FAN maps ``(B, 3, 256, 256)`` to
        heatmaps ``(B, K, 64, 64)``.

    Examples:
        >>> import os, tempfile
        >>> from faceaux.models import FAN
        >>> folder = tempfile.mkdtemp()
        >>> fan = FAN(num_stacks=2, num_landmarks=68, num_features=16, depth=2, input_size=64)
        >>> traced = torch.jit.trace(fan.eval(), torch.rand(1, 3, 64, 64))
        >>> torch.jit.save(traced, os.path.join(folder, "2DFAN.zip"))
        >>> found = convert_fan_torchscript(
        ...     os.path.join(folder, "2DFAN.zip"), os.path.join(folder, "2DFAN.pth")
        ... )
        >>> found.num_stacks, found.num_landmarks, found.pool, found.max_difference
        (2, 68, 'avg', 0.0)
    """
    from faceaux.models.hourglass import load_face_alignment_checkpoint

    path = os.fspath(archive)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"archive: no such file: {path!r}")
    try:
        with warnings.catch_warnings():
            # face-alignment ships TorchScript: reading it is the point, whatever torch thinks
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as error:
        raise ValueError(
            f"archive: could not read {path!r} as a TorchScript archive with torch.jit.load "
            f"({str(error).splitlines()[0]}); a plain state dict loads directly with "
            "faceaux.load_face_alignment_checkpoint"
        ) from error
    state = {name: t.detach().clone() for name, t in module.state_dict().items()}
    config = _architecture(state, path)
    size = 16 * 2 ** config["depth"]  # FAN's 256 for depth 4; a multiple of 4·2**depth

    def build(pool: str):
        try:
            return load_face_alignment_checkpoint(
                state,
                num_stacks=config["num_stacks"],
                num_features=config["num_features"],
                depth=config["depth"],
                in_channels=config["in_channels"],
                input_size=size,
                pool=pool,
            )
        except ValueError as error:
            raise ValueError(f"archive: {path!r}: {error}") from error

    fan = build("avg")  # every key and shape of a FAN, and nothing else
    pool, difference = None, None
    if check:
        module.eval()
        images = torch.rand(1, config["in_channels"], size, size, generator=torch.Generator())
        with torch.no_grad():
            expected = _last_heatmaps(module(images))
            if expected is None:
                raise ValueError(f"archive: {path!r} returned no tensor for a (1, C, H, W) input")
            tolerance = 1e-4 * max(1.0, expected.abs().max().item())
            tried = []
            for candidate in ("avg", "max"):
                got = (fan if candidate == "avg" else build(candidate))(images)
                if got.shape != expected.shape:
                    raise ValueError(
                        f"archive: {path!r} returned heatmaps of shape {tuple(expected.shape)}, "
                        f"the FAN of its weights {tuple(got.shape)}"
                    )
                gap = (got - expected).abs().max().item()
                tried.append(f"{candidate} pooling: {gap:.3g}")
                if gap <= tolerance:
                    pool, difference = candidate, gap
                    break
        if pool is None:
            raise ValueError(
                f"archive: {path!r} does not compute the FAN its weights describe (max "
                f"|difference| of the heatmaps with {', '.join(tried)}; allowed {tolerance:.3g})"
            )
    if output is not None:
        torch.save(state, os.fspath(output))
    return ConvertedFAN(
        state,
        config["num_stacks"],
        config["num_landmarks"],
        config["num_features"],
        config["depth"],
        pool,
        difference,
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceaux convert-fan``."""
    parser = subparsers.add_parser(
        "convert-fan",
        help="convert face-alignment's TorchScript FAN (2DFAN4.zip) to a state dict",
        description=(
            "Read face-alignment's TorchScript FAN archive (2DFAN4-<hash>.zip, one of the "
            "face-alignment package's model downloads) and save its weights as a plain state "
            "dict that faceaux.load_face_alignment_checkpoint loads (num_stacks=2 gives "
            "FAN-Face's 2-stack FAN). The archive and the converted FAN are run on one random "
            "input and must give the same heatmaps; that runs the archive's code, so convert "
            "only files you trust. Nothing is downloaded."
        ),
    )
    parser.add_argument("archive", metavar="ARCHIVE", help="the TorchScript file (.zip)")
    parser.add_argument("output", metavar="OUTPUT", help="the state dict to write (.pth)")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="do not run the archive to compare outputs (default: compare)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert, print what was found; returns the exit status."""
    found = convert_fan_torchscript(args.archive, args.output, check=not args.no_check)
    checked = (
        "not compared with the archive (--no-check)"
        if found.pool is None
        else f"same heatmaps as the archive (max |difference| {found.max_difference:.2g}, "
        f"{found.pool} pooling)"
    )
    pool = ', pool="max"' if found.pool == "max" else ""
    print(
        f"{args.archive}: FAN with {found.num_stacks} stacks, {found.num_landmarks} landmarks, "
        f"width {found.num_features}, depth {found.depth}; {checked}\n"
        f"wrote {args.output} ({len(found.state_dict)} tensors); load it with "
        f'faceaux.load_face_alignment_checkpoint("{args.output}", num_stacks=2{pool})'
    )
    return 0
