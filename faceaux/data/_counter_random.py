"""Counter-based random numbers: a pure function of integer keys, vectorised in torch.

``SyntheticFaces`` draws every random quantity from a hash of what it belongs to, e.g.
``(seed, stream, identity, parameter)`` or ``(image_seed, stream, identity, image, parameter)``,
instead of from a stateful generator. A quantity therefore does not depend on how many other
identities or images a set holds, nor on the order they are rendered in: identity ``i`` of
``seed`` is the same face in every set built with that seed.

The hash is Chris Wellons' ``lowbias32`` integer mixer applied to each key in turn. All values
are kept in ``[0, 2**32)`` inside ``int64`` tensors; the 32-bit products are formed from 16-bit
halves, so no intermediate overflows ``int64``.
"""

from __future__ import annotations

import math

import torch

_MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(x * k) mod 2**32`` for ``x`` in ``[0, 2**32)`` without leaving int64's range."""
    low, high = k & 0xFFFF, k >> 16
    return (x * low + (((x * high) & 0xFFFF) << 16)) & _MASK


def _mix(x: torch.Tensor) -> torch.Tensor:
    """One round of the lowbias32 mixer (a bijection of ``[0, 2**32)``)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_hash(*keys: int | torch.Tensor) -> torch.Tensor:
    """Hash integer keys (Python ints ≥ 0 or int64 tensors, broadcast) to ``[0, 2**32)``.

    Keys above ``2**32`` are folded in as two 32-bit words.

    Shape:
        the broadcast shape of the tensor keys (``()`` if all are ints).

    Examples:
        >>> a = counter_hash(7, torch.arange(3))
        >>> bool((a == counter_hash(7, torch.arange(3))).all()), a.shape
        (True, torch.Size([3]))
    """
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for key in keys:
        if isinstance(key, torch.Tensor):
            words = [key.to(torch.int64) & _MASK]
        else:
            words = [key & _MASK] if key <= _MASK else [key & _MASK, (key >> 32) & _MASK]
        for word in words:
            h = _mix(((h ^ word) + 0x632BE5AB) & _MASK)
    return h


def counter_uniform(*keys: int | torch.Tensor) -> torch.Tensor:
    """Uniform float32 numbers in the open interval ``(0, 1)`` from integer keys.

    Shape:
        the broadcast shape of the tensor keys.

    Examples:
        >>> u = counter_uniform(0, torch.arange(1000))
        >>> bool(((u > 0) & (u < 1)).all()), abs(float(u.mean()) - 0.5) < 0.05
        (True, True)
    """
    return ((counter_hash(*keys) >> 8).to(torch.float32) + 0.5) / 2.0**24


def counter_normal(*keys: int | torch.Tensor) -> torch.Tensor:
    """Standard normal float32 numbers from integer keys (Box–Muller on two uniforms).

    Shape:
        the broadcast shape of the tensor keys.

    Examples:
        >>> z = counter_normal(1, torch.arange(4000))
        >>> abs(float(z.mean())) < 0.1, abs(float(z.std()) - 1) < 0.1
        (True, True)
    """
    u1 = counter_uniform(*keys, 0x5EED)
    u2 = counter_uniform(*keys, 0xB0B)
    return (-2 * u1.log()).sqrt() * torch.cos(2 * math.pi * u2)
