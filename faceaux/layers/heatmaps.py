"""Landmark heatmaps: render them, decode them, and stack them with images or features.

FAN-Face (Yang, Bulat & Tzimiropoulos, usually cited as AAAI 2020) §3.2: FAN represents landmark
i by a heatmap H_i with a 2-D Gaussian at the landmark; the heatmaps of the 51 internal
landmarks are re-sampled to the image resolution and stacked with it (eq. 1, the "H2" variant),
or with intermediate recognizer features ("H2+", §5 AS1).

Coordinates are (x, y) in pixels of the map they refer to, with pixel centres at integers:
(0, 0) is the centre of the top-left pixel and the map covers [-0.5, W - 0.5] × [-0.5, H - 0.5].
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    autocast_disabled,
    check_finite_float,
    check_same_batch,
    check_tensor,
    finite_check,
    raise_bad_data,
)
from faceaux.conventions import INTERNAL_51

__all__ = [
    "HeatmapStacker",
    "heatmaps_to_landmarks",
    "render_heatmaps",
]

_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
#: ``HeatmapStacker(normalize="max")`` divides each map by ``max(peak, _PEAK_FLOOR)``.
_PEAK_FLOOR = 1e-6


def render_heatmaps(
    landmarks: torch.Tensor,
    size: tuple[int, int],
    sigma: float = 1.0,
) -> torch.Tensor:
    """Render one Gaussian heatmap per landmark, with peak value 1 at the landmark.

    FAN's training-target convention (FAN-Face §3.2): H_i(u, v) = exp(-((u - x_i)² + (v - y_i)²)
    / (2σ²)) over the pixel centres (u, v) — not normalised to sum 1 (unlike kornia's
    ``render_gaussian2d``). A landmark outside the map ([-0.5, W - 0.5] × [-0.5, H - 0.5]) or
    with a non-finite coordinate gives an all-zero map, so landmarks from any detector (5-point,
    68-point) can be turned into heatmaps ("can be readily regenerated", §5 AS6).

    Args:
        landmarks: (x, y) positions in pixels of the output map.
        size: (H, W) of the output maps.
        sigma: standard deviation of the Gaussian, in pixels.

    Shape:
        - landmarks: (B, N, 2)
        - output: (B, N, H, W), in landmarks' dtype

    Examples:
        >>> maps = render_heatmaps(torch.tensor([[[3.0, 1.0], [-5.0, 2.0]]]), size=(4, 6))
        >>> maps.shape, maps[0, 0, 1, 3].item(), maps[0, 1].abs().sum().item()
        (torch.Size([1, 2, 4, 6]), 1.0, 0.0)
    """
    check_tensor(landmarks, "landmarks", "(B, N, 2)", sizes=(None, None, 2), floating=True)
    height, width = _check_size(size)
    check_finite_float(sigma, "sigma", positive=True)
    with autocast_disabled(landmarks.device):
        return _render(landmarks, height, width, float(sigma))


def _check_size(size: object) -> tuple[int, int]:
    ok = isinstance(size, (tuple, list)) and len(size) == 2
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    if not ok:
        raise ValueError(f"size: expected (H, W), two positive ints, received {size!r}")
    return int(size[0]), int(size[1])


def _check_indices(landmarks: object) -> tuple[int, ...]:
    """A non-empty sequence of non-negative int indices (numpy ints too), as a tuple."""
    indices: list[int] = []
    if isinstance(landmarks, Sequence) and not isinstance(landmarks, str):
        for index in landmarks:
            if isinstance(index, bool):
                break
            try:
                indices.append(operator.index(index))
            except TypeError:
                break
    if not indices or len(indices) != len(landmarks) or min(indices) < 0:
        raise ValueError(
            f"landmarks: expected a non-empty sequence of non-negative int indices, received "
            f"{landmarks!r}"
        )
    return tuple(indices)


def _render(landmarks: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    x, y = landmarks[..., 0], landmarks[..., 1]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    # Zero out the coordinates of outside/non-finite landmarks before the exponentials so that
    # neither the value nor the gradient can become NaN; the mask then zeroes their maps.
    x = torch.where(inside, x, torch.zeros_like(x))
    y = torch.where(inside, y, torch.zeros_like(y))
    u = torch.arange(width, device=landmarks.device, dtype=landmarks.dtype)
    v = torch.arange(height, device=landmarks.device, dtype=landmarks.dtype)
    gauss_x = torch.exp(-((u - x[..., None]) ** 2) / (2 * sigma**2))  # (B, N, W)
    gauss_y = torch.exp(-((v - y[..., None]) ** 2) / (2 * sigma**2))  # (B, N, H)
    maps = torch.einsum("bnh,bnw->bnhw", gauss_y, gauss_x)
    return maps * inside[..., None, None].to(maps.dtype)


def heatmaps_to_landmarks(
    heatmaps: torch.Tensor,
    method: str = "argmax",
    beta: float = 20.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode landmark positions (and a confidence) from heatmaps.

    ``"argmax"``: the position of each map's maximum, moved a quarter pixel towards the larger
    of its two neighbours along x and along y (the refinement used by FAN/face-alignment and the
    stacked-hourglass papers; no move at the map's border or when the neighbours are equal). Not
    differentiable with respect to the position.

    ``"soft"``: the differentiable soft-argmax Σ_p softmax(β·H)_p · p over the pixel centres p.
    Larger β follows the peak more closely; with peak-1 maps, β = 20 gives a zero background a
    weight of e^-20 per pixel, so on a 64×64 map it moves the estimate by less than 1e-3 pixel.
    A large β also puts nearly all the weight on the few pixels nearest the peak, so on narrow
    maps the estimate snaps towards the grid: for uniformly random landmarks on 64×64 maps the
    mean error is 0.25 px at σ = 1 (the refined argmax: 0.19 px) but 0.04 px at σ = 2. Use
    σ ≥ 2 (or a smaller β) when sub-pixel accuracy from ``"soft"`` matters.

    The confidence is each map's maximum value (FAN's heatmap peak) in both methods. NaN/inf
    heatmap values raise ``ValueError`` (one device→host read); ``beta`` must be finite and > 0.

    Args:
        heatmaps: one map per landmark.
        method: ``"argmax"`` or ``"soft"``.
        beta: inverse temperature of the soft-argmax (``"soft"`` only).

    Shape:
        - heatmaps: (B, N, H, W)
        - output: landmarks (B, N, 2) as (x, y) in pixels of the map, confidence (B, N)

    Examples:
        >>> maps = render_heatmaps(torch.tensor([[[10.3, 4.0]]]), size=(16, 16))
        >>> points, confidence = heatmaps_to_landmarks(maps)
        >>> points.tolist(), round(confidence.item(), 3)
        ([[[10.25, 4.0]]], 0.956)
    """
    check_tensor(heatmaps, "heatmaps", "(B, N, H, W)", floating=True)
    if method not in ("argmax", "soft"):
        raise ValueError(f"method: expected 'argmax' or 'soft', received {method!r}")
    check_finite_float(beta, "beta", positive=True)
    batch, num, height, width = heatmaps.shape
    if height < 1 or width < 1:
        raise ValueError(
            f"heatmaps: expected maps of at least 1×1 pixel (B, N, H, W), received shape "
            f"{tuple(heatmaps.shape)}"
        )
    raise_bad_data([finite_check(heatmaps, "heatmaps")])
    flat = heatmaps.flatten(2)
    confidence, index = flat.max(dim=-1)
    if method == "soft":
        compute = torch.promote_types(heatmaps.dtype, torch.float32)  # softmax stats in >= fp32
        weights = torch.softmax(beta * flat.to(compute), dim=-1).to(heatmaps.dtype)
        weights = weights.view(batch, num, height, width)
        u = torch.arange(width, device=heatmaps.device, dtype=heatmaps.dtype)
        v = torch.arange(height, device=heatmaps.device, dtype=heatmaps.dtype)
        x = torch.einsum("bnhw,w->bn", weights, u)
        y = torch.einsum("bnhw,h->bn", weights, v)
        return torch.stack((x, y), dim=-1), confidence
    row, col = index // width, index % width

    def value_at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r, c = r.clamp(0, height - 1), c.clamp(0, width - 1)
        return flat.gather(-1, (r * width + c).unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(value_at(row, col + 1) - value_at(row, col - 1))
    dy = torch.sign(value_at(row + 1, col) - value_at(row - 1, col))
    dx = torch.where((col > 0) & (col < width - 1), dx, torch.zeros_like(dx))
    dy = torch.where((row > 0) & (row < height - 1), dy, torch.zeros_like(dy))
    x = col.to(heatmaps.dtype) + 0.25 * dx
    y = row.to(heatmaps.dtype) + 0.25 * dy
    return torch.stack((x, y), dim=-1).detach(), confidence


class HeatmapStacker(nn.Module):
    """Stack selected landmark heatmaps, resampled to the tensor's size, with an image or features.

    FAN-Face §3.2, eq. 1: I_H ∈ R^{(C+N)×M_I×M_I}, the image with the heatmaps re-sampled to its
    resolution stacked on (the "H2" variant); applied to intermediate recognizer features it is
    the "H2+" variant (§5 AS1). The heatmaps come after x's channels, so a first convolution grown
    with :func:`~faceaux.layers.integration.expand_input_channels` keeps its RGB filters.

    Args:
        landmarks: indices of the heatmaps to keep (default :data:`INTERNAL_51`, the paper's
            choice); ``None`` keeps all of them.
        size: (H', W') to stack at; ``None`` (default) uses x's (H, W). When given, x is resampled
            to it as well (with ``mode``).
        mode: interpolation mode of ``torch.nn.functional.interpolate`` for the resampling.
        normalize: ``"max"`` rescales each resampled heatmap to [0, 1] (negatives clipped to 0,
            then divided by the map's maximum); ``None`` keeps values. The division is by
            ``max(peak, 1e-6)``: an all-zero map stays zero, a map whose peak is below 1e-6
            (no landmark there) is scaled by 1e6 instead of blown up to peak 1, and the
            gradient stays bounded (≤ 1e6 per entry; a division by the smallest float would
            give inf). It runs in float32 for half-precision inputs.

    NaN/inf values in ``x`` or ``heatmaps`` raise ``ValueError`` (one device→host read for
    both).

    Shape:
        - x: (B, C, H, W)
        - heatmaps: (B, N, h, w)
        - output: (B, C + K, H, W), K = len(landmarks) or N

    Examples:
        >>> stacker = HeatmapStacker()
        >>> stacker(torch.randn(2, 3, 112, 112), torch.rand(2, 68, 64, 64)).shape
        torch.Size([2, 54, 112, 112])
    """

    def __init__(
        self,
        landmarks: tuple[int, ...] | list[int] | None = INTERNAL_51,
        size: tuple[int, int] | None = None,
        mode: str = "bilinear",
        normalize: str | None = "max",
    ) -> None:
        super().__init__()
        if normalize not in ("max", None):
            raise ValueError(f"normalize: expected 'max' or None, received {normalize!r}")
        if landmarks is not None:
            landmarks = _check_indices(landmarks)
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, received {mode!r}")
        indices = None if landmarks is None else torch.tensor(list(landmarks), dtype=torch.long)
        self.register_buffer("indices", indices, persistent=False)
        self.landmarks = None if landmarks is None else tuple(int(i) for i in landmarks)
        self.size = None if size is None else _check_size(tuple(size))
        self.mode = mode
        self.normalize = normalize

    def num_maps(self, num_heatmaps: int) -> int:
        """K, the number of channels added for an input of ``num_heatmaps`` heatmaps."""
        return num_heatmaps if self.landmarks is None else len(self.landmarks)

    def _resize(self, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(t.shape[-2:]) == size:
            return t
        align = False if self.mode in ("linear", "bilinear", "bicubic", "trilinear") else None
        return F.interpolate(t, size=size, mode=self.mode, align_corners=align)

    def forward(self, x: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(B, C, H, W)", floating=True)
        check_tensor(heatmaps, "heatmaps", "(B, N, h, w)", floating=True)
        check_same_batch(x, "x", heatmaps, "heatmaps")
        raise_bad_data([finite_check(x, "x"), finite_check(heatmaps.to(x.device), "heatmaps")])
        if self.landmarks is not None:
            if max(self.landmarks) >= heatmaps.shape[1]:
                raise ValueError(
                    f"heatmaps: landmark index {max(self.landmarks)} is out of range for shape "
                    f"{tuple(heatmaps.shape)} (B, N, h, w) with N = {heatmaps.shape[1]}"
                )
            heatmaps = heatmaps.index_select(1, self.indices)
        size = self.size if self.size is not None else tuple(x.shape[-2:])
        x = self._resize(x, size)
        maps = self._resize(heatmaps.to(x.dtype), size)
        if self.normalize == "max":
            work = maps.float() if maps.dtype in (torch.float16, torch.bfloat16) else maps
            work = work.clamp(min=0)
            peak = work.amax(dim=(-2, -1), keepdim=True)
            maps = (work / peak.clamp(min=_PEAK_FLOOR)).to(maps.dtype)
        return torch.cat((x, maps), dim=1)

    def extra_repr(self) -> str:
        count = "all" if self.landmarks is None else len(self.landmarks)
        return (
            f"landmarks={count}, size={self.size}, mode={self.mode!r}, normalize={self.normalize!r}"
        )
