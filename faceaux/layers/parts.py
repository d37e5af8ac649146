"""Part features from face-parsing masks, and the structure correlation between them (FSENet).

From FSENet: Cheng et al., "Face Segmentor-Enhanced Deep Feature Learning for Face Recognition",
IEEE T-BIOM 2019, doi:10.1109/TBIOM.2019.2936624:

- ``part_mask_pooling`` / ``PartMaskPooling`` (§3.5, eq. 6, Table 13): pool a backbone feature
  map under each part's parsing mask into one ``C``-vector per part.
- ``structure_correlation`` / ``StructureCorrelation`` (§3.6, eq. 7): append to every part
  feature its Euclidean distance and cosine to each other part.

With the paper's six parts (skin, left eye, right eye, nose, upper lip, lower lip) and 128-channel
part features the flattened descriptor has ``6 · (128 + 2·5) = 828`` dimensions.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    check_same_batch,
    check_tensor,
    data_checks_enabled,
    finite_check,
    raise_bad_data,
    stable_vector_norm,
)

__all__ = [
    "PartMaskPooling",
    "StructureCorrelation",
    "part_mask_pooling",
    "structure_correlation",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_ACTIVATIONS = (None, "softmax", "sigmoid")
_MODES = ("weighted", "mean", "max")
_RESIZES = ("max", "avg", "bilinear")


def _check_choice(value: object, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, received {value!r}")


def _check_parts(parts: Sequence[int] | None) -> tuple[int, ...] | None:
    """Normalise ``parts`` to a tuple of non-negative ints (ints, numpy or 0-d tensor ints)."""
    if parts is None:
        return None
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Iterable):
        raise ValueError(
            f"parts: expected a sequence of channel indices or None, received {parts!r}"
        )
    indices = []
    for index in parts:
        try:
            if isinstance(index, bool):
                raise TypeError
            value = operator.index(index)
        except TypeError:
            value = -1
        if value < 0:
            raise ValueError(
                f"parts: expected non-negative int channel indices, received {list(parts)!r}"
            )
        indices.append(value)
    if not indices:
        raise ValueError("parts: expected at least one channel index, received an empty sequence")
    return tuple(indices)


def _check_eps(eps: object, name: str = "eps") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"{name}: expected a positive float, received {eps!r}")


def part_mask_pooling(
    features: torch.Tensor,
    masks: torch.Tensor,
    *,
    parts: Sequence[int] | None = None,
    mask_activation: str | None = None,
    mode: str = "weighted",
    normalize: bool = True,
    mask_resize: str = "max",
    eps: float = 1e-6,
    area_threshold: float = 0.5,
) -> torch.Tensor:
    """Pool a feature map under each part's parsing mask into one feature vector per part.

    FSENet, §3.5, eq. 6 and §4.7.4 (Table 13). With ``F`` the features of one sample, ``P_k``
    the mask of part ``k`` (both at the feature map's ``H × W``) and ``A_k`` its masked area,
    the positions with ``P_k[i, j] ≥ area_threshold``:

    - ``mode="weighted"`` (the paper's "sum-weighted"): ``L̂[k, c] = Σ_ij F[c, i, j] · P_k[i, j]``,
      the probabilities used as weights; one batched matrix product for all samples and parts.
    - ``mode="mean"`` (Table 13's "mean-pooling": "choose average … backbone features under the
      masked area in each channel"): ``L̂[k, c] = Σ_{ij ∈ A_k} F[c, i, j] / |A_k|``, the plain
      average over the area, the probabilities not used as weights. Also one matrix product.
    - ``mode="max"`` (Table 13's "max-pooling", "… or maximum backbone features under the masked
      area"): ``L̂[k, c] = max_{ij ∈ A_k} F[c, i, j]``. It materialises a ``(B, K, C, H·W)``
      tensor.

    An empty area (no position reaches ``area_threshold``) gives a zero part feature for
    ``"mean"``/``"max"``, as an all-zero mask does for ``"weighted"``.

    ``normalize=True`` (Table 13's "Norm"; eq. 6 for ``"weighted"``) divides every mode's result
    by the part's probability sum, as §4.7.4 describes the normalisation ("normalized the
    generated features with the probability sum of parsing maps"):
    ``L[k, c] = L̂[k, c] / (Σ_ij P_k[i, j] + eps)``. ``normalize=False`` returns ``L̂``.

    The paper does not say how its soft probability maps delimit the "masked area";
    ``area_threshold=0.5`` takes the positions where the part is more likely than not (for
    one-hot ground-truth masks: exactly the labelled region).

    Masks are prepared in this order: ``mask_activation`` over all ``P`` channels
    (``"softmax"`` across channels, ``"sigmoid"`` per element, ``None`` = already
    probabilities) → selection of the ``parts`` channels → resizing to ``(H, W)`` when
    ``(Hm, Wm) ≠ (H, W)`` (``"max"``: adaptive max pooling, the paper's 128×128 → 28×28;
    ``"avg"``: adaptive average pooling; ``"bilinear"``: bilinear interpolation,
    ``align_corners=False``). The paper also mentions L2-normalising the parsing maps across
    channels; do that before calling if you want it.

    The activation and the probability sum run in float32 for float16/bfloat16 inputs; masks are
    cast to ``features.dtype`` for the pooling.

    Data checks: NaN/inf features or masks, and (only with ``mask_activation=None`` and
    ``normalize=True``, as the probability sum is then meaningless) a negative mask value,
    raise ``ValueError``. They are read from the device in one transfer (a synchronisation on a
    GPU) and skipped under ``torch.compile`` / export and for meta tensors. ``B = 0`` gives an
    empty ``(0, K, C)`` output.

    Args:
        features: backbone feature map ``F``.
        masks: parsing maps (scores or probabilities), one channel per parsing class.
        parts: indices of the mask channels to pool under, in output order; ``None`` = all.
        mask_activation: ``None``, ``"softmax"`` or ``"sigmoid"``.
        mode: ``"weighted"``, ``"mean"`` or ``"max"``.
        normalize: divide by the probability sum of each part's mask (eq. 6).
        mask_resize: ``"max"``, ``"avg"`` or ``"bilinear"``.
        eps: added to the probability sum.
        area_threshold: the probability from which a position belongs to a part's masked area
            (``"mean"``/``"max"`` only).

    Raises:
        ValueError: a tensor of the wrong rank or dtype, different batch sizes, a part index
            outside ``[0, P)``, NaN/inf values, or (``mask_activation=None`` with
            ``normalize=True``) a negative mask value.

    Shape:
        - features: ``(B, C, H, W)``
        - masks: ``(B, P, Hm, Wm)``
        - output: ``(B, K, C)``, ``K = len(parts)`` (``P`` when ``parts`` is ``None``)

    Examples:
        >>> features, masks = torch.randn(2, 16, 28, 28), torch.rand(2, 11, 128, 128)
        >>> part_mask_pooling(features, masks, parts=[1, 2, 3, 4, 5, 6]).shape
        torch.Size([2, 6, 16])
    """
    check_tensor(features, "features", "(B, C, H, W)", floating=True)
    check_tensor(masks, "masks", "(B, P, Hm, Wm)", floating=True)
    check_same_batch(features, "features", masks, "masks")
    _check_choice(mask_activation, "mask_activation", _ACTIVATIONS)
    _check_choice(mode, "mode", _MODES)
    _check_choice(mask_resize, "mask_resize", _RESIZES)
    parts = _check_parts(parts)
    _check_eps(eps)
    _check_eps(area_threshold, "area_threshold")
    num_classes = masks.shape[1]
    if parts is not None and max(parts) >= num_classes:
        raise ValueError(
            f"parts: expected channel indices in 0..{num_classes - 1} (P = {num_classes} in masks "
            f"of shape {tuple(masks.shape)}), received index {max(parts)}"
        )

    work = masks.float() if masks.dtype in _LOW_PRECISION else masks
    if mask_activation == "softmax":
        work = work.softmax(dim=1)
    elif mask_activation == "sigmoid":
        work = work.sigmoid()
    if parts is not None:
        work = work[:, list(parts)]
    if data_checks_enabled(features, masks):
        checks = [finite_check(features, "features"), finite_check(masks, "masks")]
        if mask_activation is None and normalize:
            selected = work

            def negative(_: int) -> str:
                return (
                    f"masks: expected non-negative probabilities with mask_activation=None and "
                    f"normalize=True, received minimum {selected.min().item():.4g} in masks of "
                    f"shape {tuple(masks.shape)}"
                )

            # the minimum, not a count of negatives: one reduction, no boolean copy
            below = work.detach().amin() < 0 if work.numel() else work.new_zeros((), dtype=bool)
            checks.append((below, negative))
        raise_bad_data(checks)
    height, width = features.shape[-2:]
    if work.shape[-2:] != (height, width):
        if mask_resize == "max":
            work = F.adaptive_max_pool2d(work, (height, width))
        elif mask_resize == "avg":
            work = F.adaptive_avg_pool2d(work, (height, width))
        else:
            work = F.interpolate(work, size=(height, width), mode="bilinear", align_corners=False)

    work = work.flatten(2)  # (B, K, H·W)
    flat = features.flatten(2)  # (B, C, H·W)
    mass = work.sum(dim=-1, keepdim=True) + eps  # eq. 6's denominator, (B, K, 1)
    if mode == "weighted":
        # divide the weights, not the pooled sums: Σ F·P / (ΣP + eps) cannot overflow
        weights = work / mass if normalize else work
        return torch.bmm(weights.to(features.dtype), flat.transpose(1, 2))  # (B, K, C)
    area = work >= area_threshold  # (B, K, H·W)
    if mode == "mean":
        weights = area.to(work.dtype) / area.sum(dim=-1, keepdim=True).clamp_min(1)
        weights = weights / mass if normalize else weights
        return torch.bmm(weights.to(features.dtype), flat.transpose(1, 2))
    masked = torch.where(area.unsqueeze(2), flat.unsqueeze(1), -math.inf)  # (B, K, C, H·W)
    pooled = torch.where(area.any(dim=-1, keepdim=True), masked.amax(dim=-1), 0.0)
    return pooled / mass.to(pooled.dtype) if normalize else pooled


class PartMaskPooling(nn.Module):
    """Pool a backbone feature map under face-parsing masks into one feature per facial part.

    FSENet, §3.5, eq. 6: ``L[k, c] = Σ_ij F[c, i, j] · P_k[i, j] / (Σ_ij P_k[i, j] + eps)``.
    ``mode="mean"``/``"max"`` (the average / maximum of the features over each part's masked
    area) and ``normalize=False`` are the ablations of Table 13. See ``part_mask_pooling`` for
    exactly what every option computes; this module only stores them.

    Args:
        parts: mask channels to pool under, in output order (the paper's six: skin, left eye,
            right eye, nose, upper lip, lower lip of an 11-class Helen parsing); ``None`` = all.
        mask_activation: ``None`` (masks are probabilities), ``"softmax"`` (over all ``P``
            channels, before selection) or ``"sigmoid"``.
        mode: ``"weighted"`` (eq. 6), ``"mean"`` or ``"max"``.
        normalize: divide by each part's probability sum (eq. 6).
        mask_resize: how masks reach the feature size: ``"max"`` (the paper's), ``"avg"``,
            ``"bilinear"``.
        eps: added to the probability sum.
        area_threshold: probability from which a position is in a part's masked area
            (``"mean"``/``"max"``).

    Shape:
        - features: ``(B, C, H, W)``
        - masks: ``(B, P, Hm, Wm)``
        - output: ``(B, K, C)``

    Examples:
        >>> pool = PartMaskPooling(parts=[1, 2, 3, 4, 5, 6], mask_activation="softmax")
        >>> pool(torch.randn(2, 128, 28, 28), torch.randn(2, 11, 128, 128)).shape
        torch.Size([2, 6, 128])
    """

    def __init__(
        self,
        parts: Sequence[int] | None = None,
        mask_activation: str | None = None,
        mode: str = "weighted",
        normalize: bool = True,
        mask_resize: str = "max",
        eps: float = 1e-6,
        area_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        _check_choice(mask_activation, "mask_activation", _ACTIVATIONS)
        _check_choice(mode, "mode", _MODES)
        _check_choice(mask_resize, "mask_resize", _RESIZES)
        _check_eps(eps)
        _check_eps(area_threshold, "area_threshold")
        self.area_threshold = float(area_threshold)
        self.parts = _check_parts(parts)
        self.mask_activation = mask_activation
        self.mode = mode
        self.normalize = bool(normalize)
        self.mask_resize = mask_resize
        self.eps = eps

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return part_mask_pooling(
            features,
            masks,
            parts=self.parts,
            mask_activation=self.mask_activation,
            mode=self.mode,
            normalize=self.normalize,
            mask_resize=self.mask_resize,
            eps=self.eps,
            area_threshold=self.area_threshold,
        )

    def extra_repr(self) -> str:
        return (
            f"parts={self.parts}, mask_activation={self.mask_activation!r}, mode={self.mode!r}, "
            f"normalize={self.normalize}, mask_resize={self.mask_resize!r}, eps={self.eps}"
            + (f", area_threshold={self.area_threshold}" if self.mode != "weighted" else "")
        )


def structure_correlation(
    parts: torch.Tensor, *, flatten: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Append to each part feature its distance and cosine to every other part (FSENet eq. 7).

    FSENet, §3.6, eq. 7. For part ``n`` and each other part ``i`` in ascending index order
    (``i ≠ n``): ``D_{n,i} = ‖L_n − L_i‖₂`` and ``A_{n,i} = L_n · L_i / (‖L_n‖₂ ‖L_i‖₂)``; row
    ``n`` of the output is ``d_n = [L_n, D_{n,i1}, A_{n,i1}, D_{n,i2}, A_{n,i2}, …]``, interleaved
    exactly as eq. 7 writes it. All pairs are computed at once (no loop over parts).

    Edge cases: identical parts give ``D = 0`` with a zero (sub)gradient for the distance (the
    square root is taken of ``max(‖L_n − L_i‖², eps²)``, so its gradient never divides by zero);
    an all-zero part gives ``A = 0`` (each norm in the cosine is bounded below by ``eps``). Values
    and gradients are finite. Distances and cosines are computed in float32 for float16/bfloat16
    inputs and cast back, without overflow: norms are taken as ``max|v| · ‖v / max|v|‖`` and the
    cosine from the unit vectors, so part features of magnitude 1e20 still give their true
    distances and cosines. NaN/inf part features raise ``ValueError`` (one device→host read);
    ``B = 0`` gives an empty output of the documented shape.

    Args:
        parts: part features ``L`` (e.g. the output of ``part_mask_pooling``).
        flatten: return one ``K·(C + 2(K−1))`` vector per sample (the paper's 828-D local
            descriptor for ``K = 6``, ``C = 128``) instead of one row per part.
        eps: lower bound for the squared distance's square root (as ``eps²``) and each norm in
            the cosine.

    Shape:
        - parts: ``(B, K, C)``
        - output: ``(B, K·(C + 2(K−1)))`` if ``flatten`` else ``(B, K, C + 2(K−1))``

    Examples:
        >>> parts = torch.randn(2, 6, 128)
        >>> structure_correlation(parts).shape
        torch.Size([2, 828])
    """
    check_tensor(parts, "parts", "(B, K, C)", floating=True)
    _check_eps(eps)
    raise_bad_data([finite_check(parts, "parts")])
    batch, num_parts, channels = parts.shape
    work = parts.float() if parts.dtype in _LOW_PRECISION else parts
    # others[n, j] = j-th part other than n, ascending: j if j < n else j + 1.
    column = torch.arange(num_parts - 1, device=parts.device)
    row = torch.arange(num_parts, device=parts.device)
    others = column.unsqueeze(0) + (column.unsqueeze(0) >= row.unsqueeze(1)).long()
    anchor = work.unsqueeze(2)  # (B, K, 1, C)
    other = work[:, others]  # (B, K, K-1, C)
    # ‖L_n − L_i‖ without overflow; a distance below eps is 0 with a zero gradient
    distance = stable_vector_norm(anchor - other, dim=-1)  # (B, K, K-1)
    distance = torch.where(distance > eps, distance, torch.zeros_like(distance))
    norms = stable_vector_norm(work, dim=-1, keepdim=True)  # (B, K, 1)
    unit = work / norms.clamp_min(eps)  # the cosine of unit vectors: no overflowing product
    cosine = (unit.unsqueeze(2) * unit[:, others]).sum(dim=-1)
    pairs = torch.stack((distance, cosine), dim=-1).flatten(2)  # (B, K, 2(K-1)): D, A, D, A…
    out = torch.cat((parts, pairs.to(parts.dtype)), dim=-1)
    if flatten:
        return out.reshape(batch, num_parts * (channels + 2 * (num_parts - 1)))
    return out


class StructureCorrelation(nn.Module):
    """Part features plus their pairwise distances and cosines: FSENet's structure correlation.

    FSENet, §3.6, eq. 7: row ``n`` is ``[L_n, D_{n,i1}, A_{n,i1}, D_{n,i2}, A_{n,i2}, …]`` over
    the other parts in ascending order, ``D = ‖L_n − L_i‖₂``, ``A = cos(L_n, L_i)``. See
    ``structure_correlation`` for the edge cases. No parameters.

    Args:
        flatten: return ``(B, K·(C + 2(K−1)))`` (the paper's 828-D descriptor for ``K = 6``,
            ``C = 128``) instead of ``(B, K, C + 2(K−1))``.
        eps: numerical floor of the distance's square root and the cosine's norms.

    Shape:
        - parts: ``(B, K, C)``
        - output: ``(B, K·(C + 2(K−1)))`` if ``flatten`` else ``(B, K, C + 2(K−1))``

    Examples:
        >>> correlation = StructureCorrelation(flatten=False)
        >>> correlation(torch.randn(2, 6, 128)).shape
        torch.Size([2, 6, 138])
    """

    def __init__(self, flatten: bool = True, eps: float = 1e-8) -> None:
        super().__init__()
        _check_eps(eps)
        self.flatten = bool(flatten)
        self.eps = eps

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        return structure_correlation(parts, flatten=self.flatten, eps=self.eps)

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}, eps={self.eps}"
