"""``faceaux bench``: what each layer costs, measured in one run on your machine.

- :mod:`faceaux.bench.models` — the reference models against their plain backbones:
  parameters, GFLOPs, forward and forward+backward latency and their ratios.
- :mod:`faceaux.bench.layers` — each layer against its floor (the cheapest computation any
  implementation must do) and its peer library, in interleaved rounds, with peak memory.
- :mod:`faceaux.bench.memory` — the peak memory of a margin-softmax step for 100k to 10M
  classes: dense head, streaming head, Partial FC, per rank.
- :mod:`faceaux.bench.measure` — how: interleaved rounds, allocated-bytes tracking.

Examples: see :mod:`faceaux.bench.models` (``count_parameters``, ``count_flops``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from faceaux.bench.layers import format_layer_rows, layer_rows
from faceaux.bench.memory import format_memory_rows, head_memory_rows
from faceaux.bench.models import (
    DEFAULT_MODELS,
    FULL_MODELS,
    baseline_of,
    benchmark_models,
    count_flops,
    count_parameters,
    format_table,
    time_call,
)

__all__ = [
    "DEFAULT_MODELS",
    "FULL_MODELS",
    "add_parser",
    "baseline_of",
    "benchmark_models",
    "count_flops",
    "count_parameters",
    "format_layer_rows",
    "format_memory_rows",
    "format_table",
    "head_memory_rows",
    "layer_rows",
    "run",
    "time_call",
]

DESCRIPTION = """\
Measure what each layer costs, in one run on this machine.

By default (about a minute on 2 CPU cores): GNAP on IResNet-18 and on MobileFaceNet against
the plain backbones, batch 4, 5 interleaved rounds: parameters, GFLOPs per image, forward and
forward+backward latency, and each model's ratios to its backbone. --full runs every paper's
model at batch 64 (several minutes, several GB of memory). --layers adds the layer micro-benchmarks
(margin heads at 10k and 100k classes, the warp, the part layers, each against its floor and
its peer library, 20 interleaved rounds; several minutes) and the head memory table (100k to
10M classes, computed on the meta device in seconds). Progress goes to stderr.
"""


def _progress(quiet: bool):
    start = time.perf_counter()

    def say(message: str) -> None:
        if not quiet:
            print(f"  {time.perf_counter() - start:6.1f} s  {message}", file=sys.stderr, flush=True)

    return say


def run(args: argparse.Namespace) -> int:
    """Handler of ``faceaux bench``; returns the exit status."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("faceaux bench: --device cuda requested but torch.cuda.is_available() is False")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = (
        list(args.models) if args.models else list(FULL_MODELS if args.full else DEFAULT_MODELS)
    )
    from faceaux.models import list_models

    unknown = [m for m in models if m not in list_models()]
    if unknown:
        print(f"faceaux bench: unknown models {unknown}; see faceaux.models.list_models()")
        return 2
    batch = args.batch if args.batch is not None else (64 if args.full else 4)
    repeats = args.repeats if args.repeats is not None else 5
    warmup = args.warmup if args.warmup is not None else (2 if args.full else 1)
    say = _progress(args.quiet)
    result: dict = {
        "device": args.device,
        "batch": batch,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if not args.no_models:
        say(f"models: {' '.join(models)} (their backbones added), batch {batch}")
        result["models"] = benchmark_models(models, args.device, batch, repeats, warmup, say)
    if args.layers:
        say(f"layer micro-benchmarks: {args.rounds} interleaved rounds each")
        result["layers"] = layer_rows(
            args.device, rounds=args.rounds, classes=args.classes, progress=say
        )
        say("head memory table (meta device)")
        result["memory"] = head_memory_rows()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"\nfaceaux bench — device {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if "models" in result:
        print(f"\nModels (batch {batch}, median of {repeats} interleaved rounds)\n")
        print(format_table(result["models"]))
    if args.layers:
        print(f"\nLayers against their floor and peer (median of {args.rounds} rounds)\n")
        print(format_layer_rows(result["layers"]))
        print("\nPeak memory of one margin-softmax step per rank (B = 256 per rank, D = 512)\n")
        print(format_memory_rows(result["memory"]))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to ``faceaux``'s sub-parsers."""
    parser = subparsers.add_parser(
        "bench",
        help="what each layer costs: models vs backbones, layers vs floors and peers",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="every paper's model at batch 64 (default: the GNAP pairs at batch 4)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        help="models to benchmark; their backbones are added (default: "
        + " ".join(DEFAULT_MODELS)
        + "; with --full: all 12)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="images per forward (default 4; 64 with --full)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds, interleaved over the models; median reported (default 5)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default 1; 2 with --full)"
    )
    parser.add_argument(
        "--no-models", action="store_true", help="skip the model table (e.g. with --layers)"
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="add the layer micro-benchmarks and the head memory table (several minutes)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=20,
        help="interleaved rounds per layer micro-benchmark (default 20)",
    )
    parser.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="class counts of the margin-head benchmarks (default 10000 100000)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads before measuring (default: torch's own choice)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr (default: shown)"
    )
    parser.set_defaults(handler=run)
    return parser
