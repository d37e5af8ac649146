"""Peak memory of one margin-softmax training step, per rank: dense head, streaming head and
Partial FC (sample rates 1.0 and 0.1, with and without chunk_size), for 100k to 10M classes.

Measured on the ``meta`` device by default (no memory is used, so 10M classes run anywhere in
about a minute): the tensors and their sizes are those of a real run. ``--device cpu`` (or
``cuda``) measures real allocations instead; keep the class counts within the machine's memory.
The code is :mod:`faceaux.bench.memory` (``faceaux bench --layers`` prints the same table).

    python examples/bench_head_memory.py
    python examples/bench_head_memory.py --device cpu --classes 100000 --world-sizes 1
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from faceaux.bench.memory import format_memory_rows, head_memory_rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch", type=int, default=256, help="embeddings per rank")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--device", default="meta")
    args = parser.parse_args(argv)
    rows = head_memory_rows(
        args.classes, args.world_sizes, args.batch, args.dim, args.chunk_size, args.device
    )
    print(
        f"B = {args.batch} per rank, D = {args.dim}, chunk_size = {args.chunk_size}, "
        f"device {args.device}; GiB (× the rank's centres and their gradient)\n"
    )
    print(format_memory_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
