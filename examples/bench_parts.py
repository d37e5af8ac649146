"""Micro-benchmark: PartMaskPooling and StructureCorrelation against their batched product and
a straightforward Python loop, in interleaved rounds.

At FSENet's sizes (B = 256, C = 128, 28×28 feature maps, K = 6 parts), forward. Both sides are
checked to agree before they are timed. The code is :mod:`faceaux.bench.layers`
(``faceaux bench --layers`` runs it too).

    python examples/bench_parts.py [--batch 256] [--device cpu] [--rounds 20]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from faceaux.bench.layers import format_layer_rows, parts_groups, run_groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    groups = parts_groups(args.batch, args.channels, args.size, args.parts, args.device)
    rows = run_groups(groups, args.rounds, args.device, progress=print)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}\n")
    print(format_layer_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
