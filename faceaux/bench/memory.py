"""Peak memory of a margin-softmax training step: dense head, streaming head, Partial FC.

One forward + backward of the classifier alone (embeddings in, gradients for the embeddings and
the centres out), per rank: with ``W`` ranks each holds ``C / W`` centres and sees the global
batch ``N = B·W`` (Partial FC gathers the embeddings of every rank); the dense head is
replicated (each rank holds all ``C`` centres and its own batch ``B``). A rank is simulated in
one process by a head of ``C / W`` classes on ``N`` rows — the all-gather's ``(N, D)`` buffers
are not counted. Memory is the centres and the inputs plus the peak of the tensors allocated
during the step (:func:`faceaux.bench.measure.peak_bytes`: ``max_memory_allocated`` on CUDA,
the storages' bytes elsewhere), so it includes the centres' gradient. On the ``meta`` device
(the default) nothing is allocated, so 10 million classes cost no memory to measure; the
storages and their sizes are those a CPU run creates (Partial FC's class sampling, which reads
the labels, is replaced on ``meta`` by a sample of the same size).

Examples:
    >>> rows = head_memory_rows(classes=(1000,), world_sizes=(1,), batch=8, dim=16)
    >>> [row["head"] for row in rows][:2]
    ['dense: ArcFace + F.cross_entropy', 'streaming: margin_cross_entropy']
    >>> all(row["ratio"] >= 1 for row in rows)  # never less than the centres and their gradient
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from faceaux.bench.measure import peak_bytes, saved_bytes
from faceaux.heads import ArcFace, PartialFC, margin_cross_entropy, shard_range

__all__ = ["HEADS", "format_memory_rows", "head_memory_rows"]

#: The variants, in table order: name → (kind, sample rate, streams).
HEADS: dict[str, tuple[str, float, bool]] = {
    "dense: ArcFace + F.cross_entropy": ("dense", 1.0, False),
    "streaming: margin_cross_entropy": ("streaming", 1.0, True),
    "Partial FC, sample_rate=1.0": ("partial_fc", 1.0, False),
    "Partial FC, sample_rate=1.0, chunk_size": ("partial_fc", 1.0, True),
    "Partial FC, sample_rate=0.1": ("partial_fc", 0.1, False),
    "Partial FC, sample_rate=0.1, chunk_size": ("partial_fc", 0.1, True),
}


class _SameSizeSample(PartialFC):
    """Partial FC whose class sample has the size a real one has, without reading the labels
    (``torch.unique`` has no ``meta`` kernel); every label must be below ``num_sample``."""

    def sample_classes(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(self.num_sample, device=local_labels.device), local_labels


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def head_memory_rows(
    classes: Sequence[int] = (100_000, 1_000_000, 10_000_000),
    world_sizes: Sequence[int] = (1, 8),
    batch: int = 256,
    dim: int = 512,
    chunk_size: int = 8192,
    device: torch.device | str = "meta",
    heads: Sequence[str] = tuple(HEADS),
) -> list[dict]:
    """One row per variant, class count and world size (Partial FC's; the others are ``W = 1``).

    Each row: ``head``, ``world_size``, ``classes``, ``local_classes``, ``rows`` (N), the
    ``peak_gib`` of the step, ``centres_gib`` (this rank's centres and their gradient),
    ``ratio`` = peak / centres, and ``saved_gib`` (tensors autograd keeps between forward and
    backward, beyond the centres and the inputs).
    """
    device = torch.device(device)
    out = []
    for name in heads:
        kind, sample_rate, streams = HEADS[name]
        for world_size in world_sizes if kind == "partial_fc" else (1,):
            for num_classes in classes:
                start, stop = shard_range(num_classes, 0, world_size)
                local, rows = stop - start, batch * world_size
                config = (kind, sample_rate, streams, local, rows, dim, chunk_size, device)
                step, weight, inputs = _step(*config)
                total = _nbytes(weight, *inputs) + peak_bytes(step, device)
                centres = 2 * _nbytes(weight)
                out.append(
                    {
                        "head": name,
                        "world_size": world_size,
                        "classes": num_classes,
                        "local_classes": local,
                        "rows": rows,
                        "peak_gib": total / 2**30,
                        "centres_gib": centres / 2**30,
                        "ratio": total / centres,
                        "saved_gib": saved_bytes(_forward(*config)) / 2**30,
                    }
                )
    return out


def _build(kind, sample_rate, streams, local, rows, dim, chunk_size, device):
    generator = torch.Generator().manual_seed(0)
    with torch.device(device):
        if kind in ("dense", "streaming"):
            head = ArcFace(dim, local)  # (streaming: its centres; the loss is the function)
        else:
            factory = _SameSizeSample if device.type == "meta" else PartialFC
            head = factory(
                dim, local, sample_rate=sample_rate, chunk_size=chunk_size if streams else None
            )
    embeddings = torch.randn(rows, dim, generator=generator).to(device).requires_grad_(True)
    limit = head.num_sample if kind == "partial_fc" else local
    labels = torch.randint(0, limit, (rows,), generator=generator).to(device)
    if kind == "partial_fc":
        loss = lambda: head(embeddings, labels)  # noqa: E731
    elif kind == "streaming":
        loss = lambda: margin_cross_entropy(  # noqa: E731
            embeddings, head.weight, labels, chunk_size=chunk_size
        )
    else:
        loss = lambda: F.cross_entropy(head(embeddings, labels), labels)  # noqa: E731
    return loss, head.weight, (embeddings, labels)


def _step(*args):
    loss, weight, inputs = _build(*args)

    def step() -> None:
        weight.grad = inputs[0].grad = None
        loss().backward()

    return step, weight, inputs


def _forward(*args):
    loss, _, _ = _build(*args)
    return lambda: loss()


def format_memory_rows(rows: Sequence[dict]) -> str:
    """A Markdown table: one line per variant and world size, one column per class count."""
    classes = sorted({row["classes"] for row in rows})
    header = "| per rank | W | " + " | ".join(f"C = {_short(c)}" for c in classes) + " |"
    lines = [header, "|" + "---|" * (2 + len(classes))]
    keys = []
    for row in rows:
        key = (row["head"], row["world_size"])
        if key not in keys:
            keys.append(key)
    for head, world_size in keys:
        cells = []
        for num_classes in classes:
            match = [
                r
                for r in rows
                if (r["head"], r["world_size"], r["classes"]) == (head, world_size, num_classes)
            ]
            cells.append(
                f"{match[0]['peak_gib']:.2f} GiB ({match[0]['ratio']:.2f}×)" if match else "—"
            )
        lines.append(f"| {head} | {world_size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(count: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)
