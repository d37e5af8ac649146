"""Benchmark: faceaux ArcFace + F.cross_entropy vs pytorch-metric-learning's ArcFaceLoss on CPU.

Times one training step of the head alone — forward and backward, gradients for the embeddings
and the class centres — at batch B, embedding size D and C classes, with the same weights and
inputs for both, and reports the time ratio measured in the same run (> 1: faceaux is faster).
pytorch-metric-learning is a benchmark-only dependency (``pip install "faceaux[bench]"``).

    python examples/bench_margin.py                 # B=256, D=512, C in {10k, 100k}
    python examples/bench_margin.py --classes 1000 --repeats 3

``margin_rows()`` returns the rows, for ``faceaux bench`` to import.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from faceaux.heads import ArcFace


def _load_pml_arcface():
    try:
        from pytorch_metric_learning.losses import ArcFaceLoss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "this benchmark compares with pytorch-metric-learning: pip install 'faceaux[bench]'"
        ) from error
    return ArcFaceLoss


def _time_step(step: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median wall time of ``step`` in milliseconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def margin_rows(
    batch_size: int = 256,
    embedding_size: int = 512,
    class_counts: Sequence[int] = (10_000, 100_000),
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
) -> list[dict[str, float | int | str]]:
    """Time forward+backward of both heads for each class count; one row per count.

    Each row: ``{"name", "B", "D", "C", "faceaux_ms", "pml_ms", "speedup"}`` with
    ``speedup = pml_ms / faceaux_ms`` (medians over ``repeats`` steps after ``warmup``).
    """
    arcface_loss = _load_pml_arcface()
    rows = []
    for num_classes in class_counts:
        generator = torch.Generator().manual_seed(seed)
        embeddings = torch.randn(batch_size, embedding_size, generator=generator)
        labels = torch.randint(0, num_classes, (batch_size,), generator=generator)

        ours = ArcFace(embedding_size, num_classes, s=64.0, m=0.5)
        theirs = arcface_loss(num_classes, embedding_size, margin=math.degrees(0.5), scale=64)
        with torch.no_grad():
            theirs.W.copy_(ours.weight.t())  # pml stores centres as (D, C)
        x_ours = embeddings.clone().requires_grad_(True)
        x_theirs = embeddings.clone().requires_grad_(True)

        def step_ours(x=x_ours, head=ours, y=labels):
            x.grad, head.weight.grad = None, None
            F.cross_entropy(head(x, y), y).backward()

        def step_theirs(x=x_theirs, loss=theirs, y=labels):
            x.grad, loss.W.grad = None, None
            loss(x, y).backward()

        # same maths: the two losses agree before we time them
        with torch.no_grad():
            ours_loss = F.cross_entropy(ours(embeddings, labels), labels).item()
            theirs_loss = theirs(embeddings, labels).item()
        if abs(ours_loss - theirs_loss) > 1e-3 * max(1.0, abs(theirs_loss)):
            raise RuntimeError(f"losses differ: faceaux {ours_loss} vs pml {theirs_loss}")

        # interleave the two so that load from other processes hits both alike
        ours_ms, theirs_ms = [], []
        for _ in range(repeats):
            ours_ms.append(_time_step(step_ours, 1, warmup))
            theirs_ms.append(_time_step(step_theirs, 1, warmup))
            warmup = 0
        ours_median, theirs_median = statistics.median(ours_ms), statistics.median(theirs_ms)
        rows.append(
            {
                "name": "ArcFace + cross_entropy vs pml ArcFaceLoss (fwd+bwd)",
                "B": batch_size,
                "D": embedding_size,
                "C": num_classes,
                "faceaux_ms": ours_median,
                "pml_ms": theirs_median,
                "speedup": theirs_median / ours_median,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embedding-size", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    rows = margin_rows(
        args.batch_size, args.embedding_size, args.classes, args.repeats, args.warmup
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'B':>5} {'D':>5} {'C':>8} {'faceaux ms':>11} {'pml ms':>9} {'pml/faceaux':>12}")
    for row in rows:
        print(
            f"{row['B']:>5} {row['D']:>5} {row['C']:>8} {row['faceaux_ms']:>11.1f} "
            f"{row['pml_ms']:>9.1f} {row['speedup']:>12.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
