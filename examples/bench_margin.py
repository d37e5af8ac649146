"""Benchmark: the margin heads against a plain linear layer + cross-entropy and against
pytorch-metric-learning, forward + backward, in interleaved rounds.

ArcFace, CosFace, CombinedMargin and SubCenterArcFace + ``F.cross_entropy`` and the streaming
``margin_cross_entropy``, each timed with its floor ``F.cross_entropy(x @ W.t(), y)`` (same
``W``) and its peer (pml's ``ArcFaceLoss``/``CosFaceLoss``/``SubCenterArcFaceLoss``; the dense
ArcFace head for the streaming loss) on the same inputs, with the peak memory of one step.
The code is :mod:`faceaux.bench.layers`; ``faceaux bench --layers`` runs it too.
pytorch-metric-learning is the ``bench`` extra (``pip install "faceaux[bench]"``).

    python examples/bench_margin.py                       # B=256, D=512, C in {10k, 100k}
    python examples/bench_margin.py --classes 100000 --rounds 30 --threads 1
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from faceaux.bench.layers import format_layer_rows, head_groups, run_groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    groups = head_groups(args.batch_size, args.embedding_size, args.classes, args.device)
    rows = run_groups(groups, args.rounds, args.device, progress=print)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}\n")
    print(format_layer_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
