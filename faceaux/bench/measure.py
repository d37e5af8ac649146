"""How the benchmarks measure: interleaved rounds for time, allocated tensor bytes for memory.

**Time.** Two implementations timed one after the other are compared under different load on a
shared machine. :func:`interleaved` times every case once per round (A, B, C, A, B, C, …) and
keeps all rounds, so that load from other processes spreads over the cases alike; ratios are
taken between medians of the same run.

**Memory.** On CUDA, the peak of ``torch.cuda.max_memory_allocated`` during the call. Elsewhere
(CPU, and the ``meta`` device, where a 10-million-class head costs nothing to run),
:class:`LiveBytes` follows every tensor storage created during the call and reports the peak of
their total size: what CUDA's counter reports, for any device. :func:`saved_bytes` adds the
storages that autograd keeps for backward (``torch.autograd.graph.saved_tensors_hooks``).

Examples:
    >>> import torch
    >>> x = torch.randn(100, 100)
    >>> with LiveBytes() as tracker:
    ...     y = x @ x  # one new (100, 100) float32 result
    ...     del y
    ...     z = (x + 1).mul_(2)  # one more; the in-place multiply allocates nothing
    >>> tracker.peak, tracker.current
    (40000, 40000)
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["LiveBytes", "interleaved", "median_ms", "peak_bytes", "saved_bytes", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    cases: Mapping[str, Callable[[], object]],
    rounds: int = 20,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every case, timed in interleaved rounds (A, B, …, A, B, …).

    Each case runs ``warmup`` times untimed first. ``progress`` (optional) gets a line per
    round with the elapsed time and an estimate of the time left.

    Returns:
        ``{name: [seconds of round 1, …, round rounds]}``.
    """
    device = torch.device(device)
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    start = time.perf_counter()
    for round_number in range(1, rounds + 1):
        for name, fn in cases.items():
            begin = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - begin)
        if progress is not None and (round_number % 5 == 0 or round_number == rounds):
            elapsed = time.perf_counter() - start
            left = elapsed / round_number * (rounds - round_number)
            progress(f"    round {round_number}/{rounds}: {elapsed:.0f} s, about {left:.0f} s left")
    return times


def median_ms(seconds: list[float]) -> float:
    """The median of a list of seconds, in milliseconds."""
    return 1000.0 * statistics.median(seconds)


class LiveBytes(TorchDispatchMode):
    """Current and peak total size of the tensor storages created while the mode is active.

    Every operator's fresh outputs are counted once per storage (views and in-place or ``out=``
    results alias an existing storage and are not counted) and uncounted when the storage is
    freed. Works on every device, ``meta`` included (whose storages have a size but no data),
    and sees backward passes run inside the block. Storages that existed before the block are
    not counted: add them yourself (parameters, inputs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        if all(ret.alias_info is None for ret in returns):  # fresh storages only
            for tensor in tree_leaves(out):
                if isinstance(tensor, torch.Tensor):
                    self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._alive:
            return
        size = storage.nbytes()
        self.current += size
        self.peak = max(self.peak, self.current)

        def release(_: object, key: int = key, size: int = size) -> None:
            if self._alive.pop(key, None) is not None:
                self.current -= size

        self._alive[key] = weakref.ref(storage, release)


def peak_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors allocated during ``fn()`` above what was allocated before.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset of the peak; other devices:
    :class:`LiveBytes`. What ``fn`` leaves allocated (e.g. ``.grad`` tensors) counts too.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveBytes() as tracker:
        fn()
    return tracker.peak


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the storages created during ``fn()`` that autograd saves for backward.

    ``fn`` should run a forward pass only. Tensors that existed before (parameters saved by
    reference, inputs) cost no memory of their own and are not counted.
    """
    saved: dict[int, int] = {}
    with LiveBytes() as tracker:

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage._cdata in tracker._alive:
                saved[storage._cdata] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            fn()
    return sum(saved.values())
