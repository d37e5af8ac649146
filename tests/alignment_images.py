"""Procedural test images for the alignment tests: smooth gradients and soft-edged shapes.

Warps are compared on images that look like pictures (smooth regions, edges of a pixel or two,
a few overlapping objects), not on noise, where every interpolation difference would show.
"""

from __future__ import annotations

import math

import torch


def smooth_shapes(
    batch: int,
    channels: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    shapes: int = 4,
    edge: float = 0.08,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A ``(B, C, H, W)`` batch in ``[0, 1]``: a linear colour gradient under soft ellipses.

    Args:
        batch, channels, height, width: the output shape.
        seed: the images depend on nothing else.
        shapes: ellipses per image.
        edge: edge softness in normalised units (``2 / width`` is about one pixel).
        dtype: output dtype.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    ys = torch.linspace(-1, 1, height, dtype=torch.float64)[:, None].expand(height, width)
    xs = torch.linspace(-1, 1, width, dtype=torch.float64)[None, :].expand(height, width)
    slopes = uniform(batch, channels, 2, low=-1, high=1)
    image = 0.5 + 0.25 * (slopes[..., 0, None, None] * xs + slopes[..., 1, None, None] * ys)
    for _ in range(shapes):
        centre = uniform(batch, 2, low=-0.6, high=0.6)
        radii = uniform(batch, 2, low=0.15, high=0.45)
        angle = uniform(batch, low=0.0, high=math.pi)
        dx = xs - centre[:, 0, None, None]
        dy = ys - centre[:, 1, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u = (cos * dx + sin * dy) / radii[:, 0, None, None]
        v = (cos * dy - sin * dx) / radii[:, 1, None, None]
        inside = torch.sigmoid((1 - torch.sqrt(u * u + v * v)) / edge)[:, None]
        colour = uniform(batch, channels)[..., None, None]
        image = image * (1 - inside) + colour * inside
    return image.to(dtype)
