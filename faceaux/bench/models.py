"""What bolting a layer onto a recognizer costs: the reference models against their backbones.

For each reference model: parameters (all, and trainable — the frozen FAN and parsing networks
are counted in the first only), forward GFLOPs per image (matmul/convolution FLOPs counted by
:class:`torch.utils.flop_counter.FlopCounterMode`, 2 per multiply-add; element-wise ops are not
counted), forward latency (eval mode, no gradients) and forward+backward latency (train mode),
and the **overhead relative to the plain backbone** (e.g. ``fanface_iresnet34`` vs
``iresnet34``) as ratios of figures measured in the same run, in interleaved rounds.

Examples:
    >>> import torch
    >>> from faceaux.bench import count_flops, count_parameters
    >>> from faceaux.models import create_model
    >>> model = create_model("iresnet_nano")
    >>> count_parameters(model)
    1111792
    >>> count_flops(model, torch.zeros(1, 3, 112, 112)) > 0
    True
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "DEFAULT_MODELS",
    "FULL_MODELS",
    "baseline_of",
    "benchmark_models",
    "count_flops",
    "count_parameters",
    "format_table",
    "time_call",
]

#: The models ``faceaux bench`` runs by default (under a minute on 2 CPU cores at batch 4): GNAP
#: on two backbones, each model after the backbone it is compared with.
DEFAULT_MODELS: tuple[str, ...] = (
    "iresnet18",
    "iresnet18_gnap",
    "mobilefacenet",
    "mobilefacenet_gnap",
)

#: Every paper's model with its backbone (``faceaux bench --full``).
FULL_MODELS: tuple[str, ...] = (
    "iresnet18",
    "iresnet18_gnap",
    "iresnet34",
    "fanface_iresnet34",
    "stnface_iresnet34",
    "iresnet50",
    "fanface_iresnet50",
    "fsenet_iresnet50",
    "mobilefacenet",
    "mobilefacenet_gnap",
    "mtl_attr_fast",
    "mtl_attr_full",
)


def baseline_of(name: str) -> str | None:
    """The plain backbone ``name``'s overhead is measured against (the registry's ``baseline``)."""
    from faceaux.models.registry import get_model_cfg

    return get_model_cfg(name)["baseline"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, images: torch.Tensor) -> int:
    """Forward FLOPs of ``model(images)`` counted by ``FlopCounterMode`` (no gradients).

    Counts matmul / convolution / attention FLOPs (2 per multiply-add) of the whole batch;
    element-wise operations (BatchNorm, activations, poolings, norms) are not counted. Works
    with tensors on the ``meta`` device (no arithmetic is done then).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(images)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(name: str, device: torch.device) -> nn.Module:
    from faceaux.models import create_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random FAN / parser: fine for timing
        return create_model(name).to(device)


class _Case:
    """One model with its input and its two timed steps."""

    def __init__(self, name: str, device: torch.device, batch: int) -> None:
        self.name = name
        self.model = _build(name, device)
        from faceaux.models.registry import get_model_cfg

        size = get_model_cfg(name)["input_size"][1:]
        generator = torch.Generator().manual_seed(0)
        self.images = (torch.rand(batch, 3, *size, generator=generator) * 2 - 1).to(device)
        self.flops = count_flops(self.model, self.images[:1])
        self.forward_s: list[float] = []
        self.forward_backward_s: list[float] = []

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(self.images)

    def forward_backward(self) -> None:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        self.model(self.images).float().square().mean().backward()

    def row(self, batch: int) -> dict[str, float | int | str]:
        return {
            "model": self.name,
            "params": count_parameters(self.model),
            "trainable_params": count_parameters(self.model, trainable_only=True),
            "gflops": self.flops / 1e9,
            "forward_ms": statistics.median(self.forward_s) * 1e3,
            "forward_backward_ms": statistics.median(self.forward_backward_s) * 1e3,
            "batch": batch,
        }


def benchmark_models(
    names: Sequence[str],
    device: str | torch.device = "cpu",
    batch: int = 64,
    repeats: int = 5,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Benchmark ``names`` (their baselines are added when missing) and add overhead ratios.

    ``progress`` (optional) receives one line per step: building, warming up, each round with
    the time so far and an estimate of the time left.

    Rows: parameters (all / trainable), GFLOPs per image, median forward (eval, no gradients)
    and forward+backward (train) latency of a batch. The timed runs are **interleaved**: each
    of the ``repeats`` rounds times every model once, so load from other processes during the
    run spreads over all models alike instead of skewing one of them. Each model with a
    baseline (:func:`baseline_of`, the registry's ``baseline``) gets ``baseline`` and the ratios
    ``params_ratio`` (trainable), ``flops_ratio``, ``forward_ratio``, ``forward_backward_ratio``
    = model / baseline, all from this run.
    """
    device = torch.device(device)
    ordered: list[str] = []
    for name in names:
        baseline = baseline_of(name)
        if baseline is not None and baseline not in ordered:
            ordered.append(baseline)
        if name not in ordered:
            ordered.append(name)
    say = progress or (lambda message: None)
    start = time.perf_counter()
    cases = []
    for number, name in enumerate(ordered, 1):
        say(f"[{number}/{len(ordered)}] building {name}")
        cases.append(_Case(name, device, batch))
    for number, case in enumerate(cases, 1):
        say(f"[{number}/{len(cases)}] warming up {case.name} ({warmup} untimed runs)")
        for _ in range(warmup):
            case.forward()
            case.forward_backward()
    for round_number in range(1, repeats + 1):
        round_start = time.perf_counter()
        for case in cases:
            case.forward_s.append(time_call(case.forward, device, 1, 0))
        for case in cases:
            case.forward_backward_s.append(time_call(case.forward_backward, device, 1, 0))
        left = (time.perf_counter() - round_start) * (repeats - round_number)
        say(
            f"round {round_number}/{repeats} timed; {time.perf_counter() - start:.0f} s so far, "
            f"about {left:.0f} s left"
        )
    rows = {case.name: case.row(batch) for case in cases}
    for name, row in rows.items():
        baseline = baseline_of(name)
        if baseline is None or baseline not in rows:
            continue
        base = rows[baseline]
        row["baseline"] = baseline
        row["params_ratio"] = row["trainable_params"] / base["trainable_params"]
        row["flops_ratio"] = row["gflops"] / base["gflops"]
        row["forward_ratio"] = row["forward_ms"] / base["forward_ms"]
        row["forward_backward_ratio"] = row["forward_backward_ms"] / base["forward_backward_ms"]
    return list(rows.values())


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table of :func:`benchmark_models` rows."""
    header = (
        "| model | params (M) | trainable (M) | GFLOPs/img | fwd (ms) | fwd+bwd (ms) "
        "| vs | params × | FLOPs × | fwd × | fwd+bwd × |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        ratios = ["", "", "", "", ""]
        if "baseline" in row:
            ratios = [
                row["baseline"],
                f"{row['params_ratio']:.3f}",
                f"{row['flops_ratio']:.3f}",
                f"{row['forward_ratio']:.2f}",
                f"{row['forward_backward_ratio']:.2f}",
            ]
        lines.append(
            f"| {row['model']} | {row['params'] / 1e6:.2f} | {row['trainable_params'] / 1e6:.2f} "
            f"| {row['gflops']:.2f} | {row['forward_ms']:.1f} | {row['forward_backward_ms']:.1f} "
            f"| {' | '.join(ratios)} |"
        )
    return "\n".join(lines)
