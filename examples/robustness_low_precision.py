"""Robustness check: every margin head trains 1,000 low-precision steps without a non-finite value.

Each head trains under ``torch.autocast`` (bfloat16, and float16 where the device supports it)
on batches whose rows sit *exactly on* their class centre (half of them) or *exactly opposite*
it (the other half): target cosines of +1 and −1, where ``acos`` has an infinite slope and a
clamp to ``1 − ε`` rounds back to 1 in half precision. Every step checks the loss, the
gradients of the embeddings and of the centres, and the centres after the SGD step, and counts
the steps where any of them holds a NaN or an inf.

    python examples/robustness_low_precision.py                # 1,000 steps, bf16 and fp16
    python examples/robustness_low_precision.py --steps 200 --dtypes bfloat16

Exits with status 1 if any step of any head was not finite (CI runs it after the tests).
``low_precision_rows()`` returns the table's rows.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from faceaux import (
    AdaFace,
    AdaFaceMargin,
    ArcFace,
    CombinedMargin,
    CosFace,
    NormSoftmax,
    PartialFC,
    SphereFace,
    SubCenterArcFace,
)
from faceaux.heads import margin_cross_entropy

EMBEDDING_SIZE, NUM_CLASSES, BATCH = 32, 64, 16


class StreamedArcFace(nn.Module):
    """The streaming loss over its own centres (chunks of 24 classes: 64 = 24 + 24 + 16)."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.01 * torch.randn(num_classes, embedding_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_cross_entropy(embeddings, self.weight, labels, chunk_size=24)


def heads() -> dict[str, Callable[[], nn.Module]]:
    """Every head, by name, with its paper's defaults (one PartialFC samples half its centres;
    the last three stream over chunks of classes)."""
    d, c = EMBEDDING_SIZE, NUM_CLASSES
    return {
        "ArcFace": lambda: ArcFace(d, c),
        "CosFace": lambda: CosFace(d, c),
        "CombinedMargin": lambda: CombinedMargin(d, c),
        "SphereFace": lambda: SphereFace(d, c),
        "AdaFace": lambda: AdaFace(d, c),
        "SubCenterArcFace": lambda: SubCenterArcFace(d, c),
        "NormSoftmax": lambda: NormSoftmax(d, c),
        "PartialFC+ArcFace": lambda: PartialFC(d, c, sample_rate=0.5),
        "PartialFC+AdaFaceMargin": lambda: PartialFC(d, c, margin_fn=AdaFaceMargin()),
        "margin_cross_entropy": lambda: StreamedArcFace(d, c),
        "PartialFC+ArcFace chunks": lambda: PartialFC(d, c, sample_rate=0.5, chunk_size=24),
        "PartialFC+AdaFace chunks": lambda: PartialFC(
            d, c, margin_fn=AdaFaceMargin(), chunk_size=24
        ),
    }


def _centres(head: nn.Module) -> torch.Tensor:
    """One unit centre per class ``(C, D)``: sub-centre 0 for SubCenterArcFace."""
    weight = head.weight.detach()
    return F.normalize(weight[:, 0] if weight.ndim == 3 else weight, dim=1)


def run_head(name: str, dtype: torch.dtype, steps: int, seed: int = 0) -> dict[str, object]:
    """Train head ``name`` for ``steps`` SGD steps under autocast; count the non-finite steps."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    head = heads()[name]()
    parameters = list(head.parameters())
    all_labels = torch.randint(0, NUM_CLASSES, (steps, BATCH))
    # feature norms from 1 to 64 (AdaFace and SphereFace read them); the first half of the rows
    # sit exactly on their centre, the second half exactly opposite it
    side = torch.tensor([1.0, -1.0]).repeat_interleave(BATCH // 2)[:, None]
    scales = (1.0 + 63.0 * torch.rand(steps, BATCH, 1)) * side
    bad = torch.zeros(3, dtype=torch.int64)  # steps with a non-finite loss, gradient, weight
    start = time.perf_counter()
    for step in range(steps):
        labels = all_labels[step]
        embeddings = (scales[step] * _centres(head)[labels]).requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype):
            out = head(embeddings, labels)
            loss = out if out.ndim == 0 else F.cross_entropy(out.float(), labels)
        grads = torch.autograd.grad(loss, [embeddings, *parameters])
        with torch.no_grad():
            torch._foreach_add_(parameters, grads[1:], alpha=-0.1)  # a plain SGD step, lr 0.1
            # a norm is finite iff every entry is (these values are far from overflowing)
            finite = torch.stack(
                [loss.float(), *torch._foreach_norm(grads), *torch._foreach_norm(parameters)]
            ).isfinite()
            split = 1 + len(grads)
            bad += ~torch.stack([finite[0], finite[1:split].all(), finite[split:].all()])
    loss_steps, grad_steps, weight_steps = bad.tolist()
    return {
        "head": name,
        "dtype": str(dtype).removeprefix("torch."),
        "steps": steps,
        "nonfinite_loss": loss_steps,
        "nonfinite_grad": grad_steps,
        "nonfinite_weight": weight_steps,
        "seconds": time.perf_counter() - start,
    }


def low_precision_rows(
    steps: int = 1000,
    dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16),
    workers: int = 2,
) -> list[dict[str, object]]:
    """One row per (head, dtype): the non-finite step counts and the run time.

    The runs are independent single-threaded processes, ``workers`` at a time.
    """
    jobs = [(name, dtype, steps) for dtype in dtypes for name in heads()]
    if workers <= 1:
        return [run_head(*job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(run_head, *zip(*jobs, strict=True)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = low_precision_rows(args.steps, [getattr(torch, n) for n in args.dtypes], args.workers)
    print(f"{'head':<24} {'dtype':<9} {'steps':>5} {'loss':>5} {'grad':>5} {'weight':>6} {'s':>6}")
    for row in rows:
        print(
            f"{row['head']:<24} {row['dtype']:<9} {row['steps']:>5} {row['nonfinite_loss']:>5} "
            f"{row['nonfinite_grad']:>5} {row['nonfinite_weight']:>6} {row['seconds']:>6.2f}"
        )
    counts = ("nonfinite_loss", "nonfinite_grad", "nonfinite_weight")
    bad = [row for row in rows if any(row[key] for key in counts)]
    elapsed = time.perf_counter() - start
    print(f"non-finite steps in {len(bad)} of {len(rows)} runs; {elapsed:.1f} s wall")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
