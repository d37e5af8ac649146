"""Micro-benchmark: PartMaskPooling and StructureCorrelation vs straightforward Python loops.

Times faceaux's batched implementations (one ``bmm`` for the pooling, all pairs at once for the
correlation) against the obvious per-sample / per-part / per-pair loops, at FSENet's sizes
(B = 256, C = 128, 28×28 feature maps, K = 6 parts), and prints the speed-up measured in the same
run. Both sides are checked to agree before they are timed.

Run it as a script::

    python examples/bench_parts.py [--batch 256] [--device cpu] [--min-run-time 1.0]

or import ``run`` (returns one dict per layer) and the loop references from another tool.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.utils import benchmark

from faceaux import PartMaskPooling, StructureCorrelation


def loop_part_mask_pooling(
    features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """FSENet eq. 6, one sample and one part at a time."""
    batch, channels = features.shape[:2]
    out = torch.empty(batch, masks.shape[1], channels, dtype=features.dtype, device=features.device)
    for b in range(batch):
        for k in range(masks.shape[1]):
            mask = masks[b, k]
            out[b, k] = (features[b] * mask).sum(dim=(1, 2)) / (mask.sum() + eps)
    return out


def loop_structure_correlation(parts: torch.Tensor) -> torch.Tensor:
    """FSENet eq. 7, one sample, one part and one other part at a time (flattened output)."""
    batch, num_parts, _ = parts.shape
    samples = []
    for b in range(batch):
        rows = []
        for n in range(num_parts):
            row = [parts[b, n]]
            for i in range(num_parts):
                if i == n:
                    continue
                distance = torch.linalg.vector_norm(parts[b, n] - parts[b, i])
                cosine = torch.dot(parts[b, n], parts[b, i]) / (
                    torch.linalg.vector_norm(parts[b, n]) * torch.linalg.vector_norm(parts[b, i])
                )
                row.append(torch.stack((distance, cosine)))
            rows.append(torch.cat(row))
        samples.append(torch.cat(rows))
    return torch.stack(samples)


def time_call(fn: Callable[[], torch.Tensor], min_run_time: float, label: str) -> float:
    """Median seconds per call of ``fn`` (after a warm-up call), with torch.utils.benchmark."""
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, label=label)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def run(
    batch: int = 256,
    channels: int = 128,
    size: int = 28,
    parts: int = 6,
    device: str = "cpu",
    min_run_time: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """Time both layers against their loop references; one result dict per layer.

    Each dict has ``layer``, ``shape`` (the input shapes, as text), ``reference_ms``,
    ``faceaux_ms`` (median milliseconds per call) and ``speedup`` (reference / faceaux).
    """
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, size, size, generator=generator).to(device)
    masks = torch.rand(batch, parts, size, size, generator=generator).to(device)
    part_features = torch.randn(batch, parts, channels, generator=generator).to(device)
    pooling, correlation = PartMaskPooling(), StructureCorrelation()
    cases = [
        (
            "PartMaskPooling",
            f"features {tuple(features.shape)}, masks {tuple(masks.shape)}",
            lambda: loop_part_mask_pooling(features, masks),
            lambda: pooling(features, masks),
        ),
        (
            "StructureCorrelation",
            f"parts {tuple(part_features.shape)}",
            lambda: loop_structure_correlation(part_features),
            lambda: correlation(part_features),
        ),
    ]
    results = []
    with torch.no_grad():
        for layer, shape, reference, ours in cases:
            torch.testing.assert_close(ours(), reference(), atol=1e-4, rtol=1e-4)
            reference_s = time_call(reference, min_run_time, f"{layer} loop")
            ours_s = time_call(ours, min_run_time, f"{layer} faceaux")
            results.append(
                {
                    "layer": layer,
                    "shape": shape,
                    "reference_ms": reference_s * 1e3,
                    "faceaux_ms": ours_s * 1e3,
                    "speedup": reference_s / ours_s,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=1.0)
    args = parser.parse_args()
    results = run(
        batch=args.batch,
        channels=args.channels,
        size=args.size,
        parts=args.parts,
        device=args.device,
        min_run_time=args.min_run_time,
    )
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'layer':<22}{'loop ms':>12}{'faceaux ms':>12}{'speed-up':>10}  input")
    for r in results:
        print(
            f"{r['layer']:<22}{r['reference_ms']:>12.2f}{r['faceaux_ms']:>12.2f}"
            f"{r['speedup']:>9.1f}x  {r['shape']}"
        )


if __name__ == "__main__":
    main()
