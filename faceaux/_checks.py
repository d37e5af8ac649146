"""Cheap input validation shared by every layer: shape checks with messages that show the shape.

Every check raises ``ValueError`` naming the argument and stating what was expected and what was
received, e.g. ``features: expected a 4-D tensor (B, C, H, W), received shape (2, 3)``. They look
at shapes and dtypes only, never at the data, so they cost nothing on a hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(
    x: object,
    name: str,
    layout: str,
    *,
    sizes: Sequence[int | None] | None = None,
    floating: bool = False,
) -> None:
    """Check that ``x`` is a tensor with ``len(layout_dims)`` dimensions and the given sizes.

    Args:
        x: the value to check.
        name: the argument's name, as the user wrote it.
        layout: the expected layout in the docstring notation, e.g. ``"(B, C, H, W)"``; its number
            of comma-separated entries is the expected number of dimensions.
        sizes: optional expected size per dimension; ``None`` entries are not checked.
        floating: require a floating-point dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor {layout}, received {type(x).__name__}")
    ndim = len([d for d in layout.strip("()").split(",") if d.strip()])
    if x.ndim != ndim:
        raise ValueError(
            f"{name}: expected a {ndim}-D tensor {layout}, received shape {tuple(x.shape)}"
        )
    if sizes is not None:
        for dim, (want, got) in enumerate(zip(sizes, x.shape, strict=True)):
            if want is not None and want != got:
                raise ValueError(
                    f"{name}: expected shape {layout} with size {want} at dim {dim}, "
                    f"received shape {tuple(x.shape)}"
                )
    if floating and not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, received dtype {x.dtype}")


def check_same_batch(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Check that two tensors have the same batch size (dimension 0)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{b_name}: expected batch size {a.shape[0]} (that of {a_name}, shape "
            f"{tuple(a.shape)}), received shape {tuple(b.shape)}"
        )


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is an ``int`` ≥ 1 (``bool`` refused) and return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, received {value!r}")
    return value
