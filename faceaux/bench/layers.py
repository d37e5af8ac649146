"""Layer micro-benchmarks: each layer against its floor and its peer, measured in one run.

Every item is timed in interleaved rounds with its **floor** — the cheapest computation any
implementation of it must do (a plain linear layer + cross-entropy for a margin head,
``F.grid_sample`` on a precomputed grid for the warp, the one batched product of the part
layers) — and its **peer** (pytorch-metric-learning's losses, kornia's warps, a Python loop),
on the same inputs; the rows give the medians, the time ratios ``× floor`` and ``× peer``
(< 1: faster) and the peak memory of one call (see :mod:`faceaux.bench.measure`). Each group
checks that its implementations agree before timing them.

- **heads** (B = 256, D = 512, C = 10k and 100k, forward + backward, gradients for the
  embeddings and the centres): ``ArcFace``, ``CosFace``, ``CombinedMargin`` and
  ``SubCenterArcFace`` + ``F.cross_entropy``, and the streaming :func:`margin_cross_entropy`;
  floor ``F.cross_entropy(x @ W.t(), y)`` with the same ``W`` (for sub-centres ``W`` is
  ``(C·k, D)``); peers ``pytorch_metric_learning.losses.ArcFaceLoss``/``CosFaceLoss``/
  ``SubCenterArcFaceLoss`` (the ``bench`` extra; rows say when it is missing) and, for the
  streaming loss, the dense ``ArcFace`` head.
- **warp** (B = 64, 3×128² → 112², bilinear, affine and projective matrices, forward and
  forward + backward with gradients for the images and the matrices): floor ``F.grid_sample``
  on the precomputed grid; peer kornia's ``warp_affine`` / ``warp_perspective``.
- **parts** (B = 256, C = 128, 28², K = 6, forward): ``PartMaskPooling`` and
  ``StructureCorrelation``; floor the batched product each reduces to; peer the obvious Python
  loop over samples and parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from faceaux.bench.measure import interleaved, median_ms, peak_bytes

__all__ = [
    "Group",
    "format_layer_rows",
    "head_groups",
    "layer_rows",
    "loop_part_mask_pooling",
    "loop_structure_correlation",
    "parts_groups",
    "run_groups",
    "warp_groups",
]

Progress = Callable[[str], None]


@dataclass
class Group:
    """Cases timed together in interleaved rounds, and the rows that compare them.

    ``rows`` are ``(item, floor, peer)`` names of ``cases`` (``floor``/``peer`` may be
    ``None``); ``notes`` maps a missing peer's row to the reason.
    """

    benchmark: str
    shape: str
    mode: str
    cases: dict[str, Callable[[], object]]
    rows: list[tuple[str, str | None, str | None]]
    notes: dict[str, str] = field(default_factory=dict)


def run_groups(
    groups: Iterable[Group],
    rounds: int = 20,
    device: torch.device | str = "cpu",
    memory: bool = True,
    progress: Progress | None = None,
) -> list[dict]:
    """Time every group (interleaved rounds, one warm-up call) and build one row per item.

    ``groups`` may be a generator: each group is built when reached and freed after its rows.
    """
    device = torch.device(device)
    rows = []
    for number, group in enumerate(groups, 1):
        if progress is not None:
            progress(f"[{number}] {group.benchmark}: {group.shape}, {group.mode}")
        times = interleaved(group.cases, rounds, 1, device, progress)
        peaks = {}
        if memory:
            peaks = {name: peak_bytes(fn, device) / 2**20 for name, fn in group.cases.items()}
        for item, floor, peer in group.rows:
            ms = median_ms(times[item])
            row: dict[str, object] = {
                "benchmark": group.benchmark,
                "item": item,
                "shape": group.shape,
                "mode": group.mode,
                "ms": ms,
            }
            for role, name in (("floor", floor), ("peer", peer)):
                row[role] = name if name is not None else group.notes.get(item, "")
                if name is not None:
                    row[f"{role}_ms"] = median_ms(times[name])
                    row[f"x_{role}"] = ms / row[f"{role}_ms"]
            if memory:
                row["peak_mib"] = peaks[item]
                for role, name in (("floor", floor), ("peer", peer)):
                    if name is not None:
                        row[f"{role}_peak_mib"] = peaks[name]
            row["rounds"] = rounds
            rows.append(row)
    return rows


# --- margin heads ------------------------------------------------------------------------------


def _pml_losses():
    """pytorch-metric-learning's losses module, or None (it is the ``bench`` extra)."""
    try:
        from pytorch_metric_learning import losses
    except ImportError:
        return None
    return losses


def _training_step(loss_fn: Callable[[], torch.Tensor], *leaves: torch.Tensor) -> Callable:
    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        loss_fn().backward()

    return step


def head_groups(
    batch: int = 256,
    dim: int = 512,
    classes: Sequence[int] = (10_000, 100_000),
    device: torch.device | str = "cpu",
    sub_centres: int = 3,
    chunk_size: int = 8192,
    seed: int = 0,
) -> Iterator[Group]:
    """Two groups per class count, built when reached (so one class count is in memory at a
    time): the single-centre heads and the streaming loss, then sub-centre ArcFace."""
    device = torch.device(device)
    for num_classes in classes:
        yield _single_centre_heads(batch, dim, num_classes, device, chunk_size, seed)
        yield _sub_centre_head(batch, dim, num_classes, device, sub_centres, seed)


_MISSING_PML = "pytorch-metric-learning not installed (pip install 'faceaux[bench]')"


def _inputs(batch, dim, num_classes, device, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)
    y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    return x, y


def _single_centre_heads(batch, dim, num_classes, device, chunk_size, seed) -> Group:
    from faceaux.heads import ArcFace, CombinedMargin, CosFace
    from faceaux.heads.streaming import margin_cross_entropy

    x, y = _inputs(batch, dim, num_classes, device, seed)
    heads = {
        "ArcFace + CE": ArcFace(dim, num_classes).to(device),
        "CosFace + CE": CosFace(dim, num_classes).to(device),
        "CombinedMargin + CE": CombinedMargin(dim, num_classes).to(device),
    }
    weight = heads["ArcFace + CE"].weight
    for head in heads.values():  # one set of centres for every head (no copies)
        head.weight = weight
    cases: dict[str, Callable[[], object]] = {
        "linear + CE": _training_step(lambda: F.cross_entropy(x @ weight.t(), y), x, weight)
    }
    for name, head in heads.items():
        cases[name] = _training_step(lambda head=head: F.cross_entropy(head(x, y), y), x, weight)
    streaming = "margin_cross_entropy (streaming)"
    cases[streaming] = _training_step(
        lambda: margin_cross_entropy(x, weight, y, chunk_size=chunk_size), x, weight
    )
    with torch.no_grad():  # the same maths: the streaming loss is the dense head's
        dense = F.cross_entropy(heads["ArcFace + CE"](x, y), y)
        _agree(margin_cross_entropy(x, weight, y, chunk_size=chunk_size), dense, streaming)
    rows = [
        ("ArcFace + CE", "linear + CE", "pml ArcFaceLoss"),
        ("CosFace + CE", "linear + CE", "pml CosFaceLoss"),
        ("CombinedMargin + CE", "linear + CE", None),
        (streaming, "linear + CE", "ArcFace + CE"),
    ]
    notes = {"CombinedMargin + CE": "pytorch-metric-learning has no combined margin"}
    losses = _pml_losses()
    if losses is None:
        rows = [(item, floor, None if item in heads else peer) for item, floor, peer in rows]
        notes.update({"ArcFace + CE": _MISSING_PML, "CosFace + CE": _MISSING_PML})
    else:
        peers = {
            "pml ArcFaceLoss": (
                losses.ArcFaceLoss(num_classes, dim, margin=math.degrees(0.5), scale=64),
                heads["ArcFace + CE"],
            ),
            "pml CosFaceLoss": (
                losses.CosFaceLoss(num_classes, dim, margin=0.35, scale=64),
                heads["CosFace + CE"],
            ),
        }
        for name, (peer, ours) in peers.items():
            peer.to(device)
            with torch.no_grad():
                peer.W.copy_(weight.t())  # pml stores the centres as (D, C)
                _agree(peer(x, y), F.cross_entropy(ours(x, y), y), f"{name} vs faceaux")
            cases[name] = _training_step(lambda peer=peer: peer(x, y), x, peer.W)
    return Group("heads", f"B={batch} D={dim} C={num_classes}", "fwd+bwd", cases, rows, notes)


def _sub_centre_head(batch, dim, num_classes, device, sub_centres, seed) -> Group:
    from faceaux.heads import SubCenterArcFace

    x, y = _inputs(batch, dim, num_classes, device, seed)
    head = SubCenterArcFace(dim, num_classes, k=sub_centres).to(device)
    weight = head.weight
    item = "SubCenterArcFace + CE"
    cases: dict[str, Callable[[], object]] = {
        "linear + CE": _training_step(
            lambda: F.cross_entropy(x @ weight.flatten(0, 1).t(), y), x, weight
        ),
        item: _training_step(lambda: F.cross_entropy(head(x, y), y), x, weight),
    }
    rows: list[tuple[str, str | None, str | None]] = [(item, "linear + CE", None)]
    notes = {item: _MISSING_PML}
    losses = _pml_losses()
    if losses is not None:
        peer = losses.SubCenterArcFaceLoss(
            num_classes=num_classes,
            embedding_size=dim,
            margin=math.degrees(0.5),
            scale=64,
            sub_centers=sub_centres,
        ).to(device)
        with torch.no_grad():  # pml's (D, C·k) columns: class-major, sub-centre minor
            peer.W.copy_(weight.detach().flatten(0, 1).t())
            _agree(peer(x, y), F.cross_entropy(head(x, y), y), "pml SubCenterArcFaceLoss")
        cases["pml SubCenterArcFaceLoss"] = _training_step(lambda: peer(x, y), x, peer.W)
        rows, notes = [(item, "linear + CE", "pml SubCenterArcFaceLoss")], {}
    shape = f"B={batch} D={dim} C={num_classes} k={sub_centres} (W: C·k rows)"
    return Group("heads", shape, "fwd+bwd", cases, rows, notes)


def _agree(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 1e-3) -> None:
    got, want = float(got), float(want)
    if not abs(got - want) <= rtol * max(1.0, abs(want)):
        raise RuntimeError(f"{what}: the implementations disagree ({got} vs {want})")


# --- warp --------------------------------------------------------------------------------------


def warp_groups(
    batch: int = 64,
    channels: int = 3,
    in_size: int = 128,
    out_size: int = 112,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[Group]:
    """Four groups: affine and projective matrices, forward and forward + backward."""
    import kornia

    from faceaux.layers.geometry import to_pixel_matrix, warp

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, channels, in_size, in_size, generator=generator).to(device)
    size = (out_size, out_size)
    groups = []
    for kind in ("affine", "projective"):
        noise = 0.05 * torch.randn(batch, 3, 3, generator=generator)
        matrix = torch.eye(3) + noise
        matrix[:, 2] = torch.tensor([0.0, 0.0, 1.0]) + (
            0.2 * noise[:, 2] if kind != "affine" else 0
        )
        matrix[:, 2, 2] = 1.0
        matrix = matrix.to(device)
        pixel = to_pixel_matrix(matrix, (in_size, in_size), size)
        with torch.no_grad():
            grid = _grid_of(matrix, size)
            ours, theirs = warp(images, matrix, size), _kornia(kornia, kind, images, pixel, size)
        difference = float((ours - theirs).abs().max())
        if difference > 1e-3:
            raise RuntimeError(f"warp vs kornia ({kind}): max |difference| {difference}")
        peer_name = f"kornia {'warp_affine' if kind == 'affine' else 'warp_perspective'}"
        for backward in (False, True):
            image_leaf = images.clone().requires_grad_(backward)
            grid_leaf = grid.clone().requires_grad_(backward)
            matrix_leaf = matrix.clone().requires_grad_(backward)
            pixel_leaf = pixel.clone().requires_grad_(backward)

            def run(call, *leaves, backward=backward):
                def step():
                    for leaf in leaves:
                        leaf.grad = None
                    with torch.set_grad_enabled(backward):
                        out = call()
                        if backward:
                            out.sum().backward()

                return step

            cases = {
                "F.grid_sample, precomputed grid": run(
                    lambda i=image_leaf, g=grid_leaf: F.grid_sample(i, g, align_corners=False),
                    image_leaf,
                    grid_leaf,
                ),
                f"warp ({kind})": run(
                    lambda i=image_leaf, m=matrix_leaf: warp(i, m, size), image_leaf, matrix_leaf
                ),
                peer_name: run(
                    lambda i=image_leaf, p=pixel_leaf, k=kind: _kornia(kornia, k, i, p, size),
                    image_leaf,
                    pixel_leaf,
                ),
            }
            rows = [(f"warp ({kind})", "F.grid_sample, precomputed grid", peer_name)]
            shape = f"B={batch} {channels}x{in_size}² → {out_size}²"
            groups.append(Group("warp", shape, "fwd+bwd" if backward else "fwd", cases, rows))
    return groups


def _grid_of(matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The sampling grid of ``warp`` (eq. 1), computed once: the floor's input."""
    height, width = size
    ys = torch.linspace(-1, 1, height, device=matrix.device) * (height - 1) / height
    xs = torch.linspace(-1, 1, width, device=matrix.device) * (width - 1) / width
    yt, xt = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xt, yt, torch.ones_like(xt)], -1).reshape(-1, 3)
    mapped = points @ matrix.transpose(1, 2)
    return (mapped[..., :2] / mapped[..., 2:]).reshape(-1, height, width, 2).contiguous()


def _kornia(kornia, kind, images, pixel, size):
    transform = kornia.geometry.transform
    if kind == "affine":
        return transform.warp_affine(images, pixel[:, :2], size, align_corners=True)
    return transform.warp_perspective(images, pixel, size, align_corners=True)


# --- part layers -------------------------------------------------------------------------------


def loop_part_mask_pooling(
    features: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """FSENet eq. 6, one sample and one part at a time (the obvious reference)."""
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


def parts_groups(
    batch: int = 256,
    channels: int = 128,
    size: int = 28,
    parts: int = 6,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[Group]:
    """One group: both part layers, their batched products and their Python loops (forward)."""
    from faceaux.layers.parts import PartMaskPooling, StructureCorrelation

    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, size, size, generator=generator).to(device)
    masks = torch.rand(batch, parts, size, size, generator=generator).to(device)
    part_features = torch.randn(batch, parts, channels, generator=generator).to(device)
    pooling, correlation = PartMaskPooling(), StructureCorrelation()
    with torch.no_grad():
        torch.testing.assert_close(
            pooling(features, masks), loop_part_mask_pooling(features, masks), atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            correlation(part_features),
            loop_structure_correlation(part_features),
            atol=1e-4,
            rtol=1e-4,
        )

    def no_grad(call):
        def step():
            with torch.no_grad():
                call()

        return step

    cases = {
        "PartMaskPooling": no_grad(lambda: pooling(features, masks)),
        "bmm(masks, features)": no_grad(
            lambda: torch.bmm(masks.flatten(2), features.flatten(2).transpose(1, 2))
        ),
        "loop over samples and parts": no_grad(lambda: loop_part_mask_pooling(features, masks)),
        "StructureCorrelation": no_grad(lambda: correlation(part_features)),
        "bmm(parts, partsᵀ)": no_grad(
            lambda: torch.bmm(part_features, part_features.transpose(1, 2))
        ),
        "loop over samples and pairs": no_grad(lambda: loop_structure_correlation(part_features)),
    }
    rows = [
        ("PartMaskPooling", "bmm(masks, features)", "loop over samples and parts"),
        ("StructureCorrelation", "bmm(parts, partsᵀ)", "loop over samples and pairs"),
    ]
    shape = f"B={batch} C={channels} {size}² K={parts}"
    return [Group("parts", shape, "fwd", cases, rows)]


# --- all of them -------------------------------------------------------------------------------


def layer_rows(
    device: torch.device | str = "cpu",
    quick: bool = False,
    rounds: int = 20,
    classes: Sequence[int] = (10_000, 100_000),
    benchmarks: Sequence[str] = ("parts", "warp", "heads"),
    progress: Progress | None = None,
) -> list[dict]:
    """Rows of every micro-benchmark (see the module docstring).

    ``quick`` shrinks every problem (B = 8, C = 300, 16² images) and runs 2 rounds: a smoke
    run for tests, not a measurement.
    """
    if quick:
        rounds, classes = 2, (300,)
    builders: dict[str, Callable[[], Iterable[Group]]] = {
        "parts": lambda: parts_groups(**({"batch": 4, "size": 8} if quick else {}), device=device),
        "warp": lambda: warp_groups(
            **({"batch": 2, "in_size": 20, "out_size": 16} if quick else {}), device=device
        ),
        "heads": lambda: head_groups(
            **({"batch": 8, "dim": 16} if quick else {}), classes=classes, device=device
        ),
    }
    groups = (group for name in benchmarks for group in builders[name]())  # built when reached
    return run_groups(groups, rounds, device, progress=progress)


def format_layer_rows(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`layer_rows` (times in ms, ratios ``ours / other``)."""
    header = (
        "| benchmark | item | shape | mode | ms | floor | floor ms | × floor | peer | peer ms "
        "| × peer | peak MiB (ours / floor / peer) |"
    )
    lines = [header, "|" + "---|" * 12]

    def number(row: dict, key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "—"

    for row in rows:
        peaks = " / ".join(
            number(row, key, ".1f") for key in ("peak_mib", "floor_peak_mib", "peer_peak_mib")
        )
        lines.append(
            f"| {row['benchmark']} | {row['item']} | {row['shape']} | {row['mode']} "
            f"| {row['ms']:.1f} | {row['floor']} | {number(row, 'floor_ms', '.1f')} "
            f"| {number(row, 'x_floor', '.2f')} | {row['peer']} | {number(row, 'peer_ms', '.1f')} "
            f"| {number(row, 'x_peer', '.2f')} | {peaks} |"
        )
    return "\n".join(lines)
