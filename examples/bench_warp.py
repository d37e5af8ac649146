"""Benchmark: ``warp`` against ``F.grid_sample`` on a precomputed grid and against kornia's
``warp_affine`` / ``warp_perspective``, forward and forward + backward, in interleaved rounds.

B = 64 images of 3×128² warped to 112², bilinear, affine and projective matrices; gradients for
the images and the matrices in the backward runs. The outputs are checked against kornia's
before timing. The code is :mod:`faceaux.bench.layers` (``faceaux bench --layers`` runs it too).

    python examples/bench_warp.py [--batch 64] [--rounds 30] [--threads 1]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from faceaux.bench.layers import format_layer_rows, run_groups, warp_groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--in-size", type=int, default=128)
    parser.add_argument("--out-size", type=int, default=112)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    groups = warp_groups(args.batch, 3, args.in_size, args.out_size, args.device)
    rows = run_groups(groups, args.rounds, args.device, progress=print)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}\n")
    print(format_layer_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
