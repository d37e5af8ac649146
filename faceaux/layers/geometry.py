"""Geometry for learned face alignment: transform matrices, the differentiable warp, pixel maps.

The functional core of :class:`~faceaux.layers.alignment.SpatialTransformerAlign`, after Tang et
al., "An End-to-End Face Recognition Method with Alignment Learning" (Optik 2020), §3.3, which
builds on the spatial transformer of Jaderberg et al. (NeurIPS 2015).

Conventions (the ``F.affine_grid`` / STN ones):

- A *matrix* is ``(B, 3, 3)`` and maps **output** normalised coordinates ``(x_t, y_t, 1)`` in
  ``[-1, 1]`` to **input** normalised coordinates ``(x_s, y_s)`` (eq. 1), ``x`` along the width.
  ``align_corners=False`` (the default) puts ``±1`` on the outer pixel *edges*; ``True`` puts them
  on the outer pixel *centres*.
- A *pixel matrix* is the forward map from **input** pixel coordinates to **output** pixel
  coordinates, pixel centres on integers, as OpenCV's ``warpAffine``, scikit-image's
  ``SimilarityTransform.estimate(src, dst)`` and kornia's ``warp_perspective`` use it.
  :func:`to_pixel_matrix` and :func:`from_pixel_matrix` convert between the two.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from faceaux._checks import (
    autocast_disabled,
    check_finite,
    check_same_batch,
    check_tensor,
    data_checks_enabled,
    finite_check,
    raise_bad_data,
)

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "COORD_BOUND",
    "MATRIX_BOUND",
    "TRANSFORM_PARAMETERS",
    "Z_EPS",
    "align_faces",
    "from_pixel_matrix",
    "params_from_matrix",
    "similarity_from_landmarks",
    "to_pixel_matrix",
    "transform_matrix",
    "warp",
]

TRANSFORM_PARAMETERS: dict[str, int] = {
    "identity": 0,
    "translation": 2,
    "similarity": 4,
    "affine": 6,
    "projective": 8,
}
"""Number of parameters of each transform kind (STN paper §3.1: projective 8, affine 6,
similarity 4; identity and translation added for ablations).

Shape:
    A ``dict`` ``kind → P``: the ``params`` argument of
    [`transform_matrix`][faceaux.transform_matrix] for that kind is ``(B, P)``.
"""

#: The projective denominator ``z = θ31·x + θ32·y + 1`` is kept at least this far from 0.
Z_EPS = 1e-6
#: Matrix entries are clamped to ``[-MATRIX_BOUND, MATRIX_BOUND]`` before the grid is built.
MATRIX_BOUND = 1e6
#: Sampling coordinates are clamped to ``[-COORD_BOUND, COORD_BOUND]`` (normalised units).
COORD_BOUND = 1e4

ARCFACE_TEMPLATE_112 = torch.tensor(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=torch.float32,
)
"""The ArcFace 112×112 five-point template in pixel coordinates (x, y), pixel centres on
integers: left eye, right eye, nose tip, left and right mouth corners (left = image left).

Shape:
    ``(5, 2)`` float32, on the CPU; move it with ``.to(landmarks)``.
"""

_MODES = ("bilinear", "nearest", "bicubic")
_PADDING_MODES = ("zeros", "border", "reflection")


def _check_kind(kind: str) -> int:
    if kind not in TRANSFORM_PARAMETERS:
        raise ValueError(f"kind: expected one of {sorted(TRANSFORM_PARAMETERS)}, received {kind!r}")
    return TRANSFORM_PARAMETERS[kind]


def _check_size(size: object, name: str) -> tuple[int, int]:
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name}: expected two positive ints (h, w), received {size!r}")
    return int(size[0]), int(size[1])


def transform_matrix(params: torch.Tensor, kind: str) -> torch.Tensor:
    """Build the ``(B, 3, 3)`` transform matrix of a kind from the paper's parameters.

    Tang et al. 2020, §3.3: projective eq. (1) (θ33 = 1), similarity eq. (6); affine and
    translation are the STN's (Jaderberg et al. 2015) usual forms. The matrix maps output
    normalised coordinates to input normalised coordinates.

    Parameters per kind, in order:

    - ``"identity"`` (0): none.
    - ``"translation"`` (2): ``t1, t2``.
    - ``"similarity"`` (4): scale ``λ`` (the scale itself, not its log), angle ``α`` in radians,
      ``t1, t2``: ``[[λcosα, −λsinα, t1], [λsinα, λcosα, t2], [0, 0, 1]]``.
    - ``"affine"`` (6): ``θ11, θ12, θ13, θ21, θ22, θ23`` (row-major).
    - ``"projective"`` (8): ``θ11 … θ32`` (row-major), ``θ33 = 1``.

    A sample with a NaN or infinite parameter gets an all-NaN matrix, detached from its
    parameters (their gradient there is 0, not NaN); :func:`warp` turns it into padding.

    Args:
        params: the parameters, ``(B, P)`` with ``P`` as above.
        kind: one of the kinds above.

    Returns:
        The matrices, ``(B, 3, 3)``, in ``params``' dtype and device.

    Shape:
        - params: ``(B, P)``
        - output: ``(B, 3, 3)``

    Examples:
        >>> import math
        >>> m = transform_matrix(torch.tensor([[2.0, math.pi / 2, 0.1, -0.2]]), "similarity")
        >>> m.round(decimals=4) + 0.0  # (+ 0.0 turns cos(π/2)'s rounding into a plain 0)
        tensor([[[ 0.0000, -2.0000,  0.1000],
                 [ 2.0000,  0.0000, -0.2000],
                 [ 0.0000,  0.0000,  1.0000]]])
    """
    count = _check_kind(kind)
    check_tensor(params, "params", "(B, P)", sizes=(None, count), floating=True)
    batch = params.shape[0]
    # A sample with a non-finite parameter gets an all-NaN matrix that is cut off from the
    # gradient (so no NaN flows back into the other parameters); ``warp`` samples padding there.
    finite = torch.isfinite(params).all(dim=1, keepdim=True)
    params = torch.where(finite, params, torch.zeros_like(params))
    zero = params.new_zeros(batch)
    one = params.new_ones(batch)
    if kind == "identity":
        entries = [one, zero, zero, zero, one, zero]
    elif kind == "translation":
        t1, t2 = params.unbind(-1)
        entries = [one, zero, t1, zero, one, t2]
    elif kind == "similarity":
        scale, angle, t1, t2 = params.unbind(-1)
        cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
        entries = [cos, -sin, t1, sin, cos, t2]
    elif kind == "affine":
        entries = list(params.unbind(-1))
    if kind == "projective":
        matrix = torch.cat([params, one[:, None]], dim=-1).reshape(batch, 3, 3)
    else:
        matrix = torch.stack([*entries, zero, zero, one], dim=-1).reshape(batch, 3, 3)
    return torch.where(finite[:, :, None], matrix, torch.full_like(matrix, math.nan))


def params_from_matrix(matrix: torch.Tensor, kind: str) -> torch.Tensor:
    """Recover a kind's parameters from ``(B, 3, 3)`` matrices; the inverse of ``transform_matrix``.

    A matrix that is not exactly of the kind is projected onto it: ``"projective"`` divides by
    ``θ33`` first; ``"affine"`` keeps the top two rows; ``"similarity"`` takes the nearest
    similarity in the least-squares sense (``λcosα = (θ11 + θ22) / 2``,
    ``λsinα = (θ21 − θ12) / 2``); ``"translation"`` keeps ``θ13, θ23``.

    Degenerate matrices raise ``ValueError`` (one device→host read): a NaN/inf entry, and for
    ``"projective"`` a ``θ33`` of 0 (or so small that dividing by it overflows) — such a
    homography maps the image centre to infinity and has no ``θ33 = 1`` form (eq. 1).

    Args:
        matrix: the matrices, ``(B, 3, 3)``.
        kind: one of ``TRANSFORM_PARAMETERS``.

    Returns:
        ``(B, P)`` parameters (``P = TRANSFORM_PARAMETERS[kind]``).

    Shape:
        - matrix: ``(B, 3, 3)``
        - output: ``(B, P)``

    Examples:
        >>> p = torch.tensor([[0.8, 0.3, 0.1, -0.1]])
        >>> torch.allclose(params_from_matrix(transform_matrix(p, "similarity"), "similarity"), p)
        True
    """
    _check_kind(kind)
    check_tensor(matrix, "matrix", "(B, 3, 3)", sizes=(None, 3, 3), floating=True)
    batch = matrix.shape[0]
    if kind == "projective":
        params = (matrix / matrix[:, 2:, 2:]).reshape(batch, 9)[:, :8]
        if data_checks_enabled(matrix):
            count, message = finite_check(matrix, "matrix")
            degenerate = (~torch.isfinite(params).all(dim=1)).sum()
            raise_bad_data(
                [
                    (count, message),
                    (
                        degenerate,
                        lambda n: (
                            f"matrix: expected θ33 ≠ 0 for kind='projective' (the parameters "
                            f"fix θ33 = 1), received {n} matrices with θ33 = 0 or too close "
                            f"to 0 to divide by"
                        ),
                    ),
                ]
            )
        return params
    check_finite(matrix, "matrix")
    if kind == "identity":
        return matrix.new_zeros(batch, 0)
    if kind == "translation":
        return matrix[:, :2, 2]
    if kind == "affine":
        return matrix[:, :2].reshape(batch, 6)
    a = (matrix[:, 0, 0] + matrix[:, 1, 1]) / 2
    b = (matrix[:, 1, 0] - matrix[:, 0, 1]) / 2
    return torch.stack([torch.hypot(a, b), torch.atan2(b, a), matrix[:, 0, 2], matrix[:, 1, 2]], -1)


def _axis(steps: int, align_corners: bool, device: torch.device, dtype: torch.dtype):
    """Normalised output coordinates along one axis ``(steps,)``, exactly as ``F.affine_grid``'s."""
    if steps <= 1:
        return torch.zeros(1, device=device, dtype=dtype)
    values = torch.linspace(-1.0, 1.0, steps, device=device, dtype=dtype)
    return values if align_corners else values * ((steps - 1) / steps)


def warp(
    x: torch.Tensor,
    matrix: torch.Tensor,
    output_size: tuple[int, int] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> torch.Tensor:
    """Sample ``x`` on the grid that ``matrix`` maps the output pixels to (the STN sampler).

    Tang et al. 2020, §3.3, eqs. (1)–(2): each output pixel's normalised coordinates
    ``(x_t, y_t, 1)`` are mapped by the matrix to ``(x_s·z, y_s·z, z)`` and divided by
    ``z = θ31·x_t + θ32·y_t + θ33``; the input is then sampled there with ``F.grid_sample``
    (bilinear is eq. 2's kernel). For affine matrices ``z = 1`` exactly and the grid is
    ``F.affine_grid``'s (to the last bit or so), so an identity matrix gives the plain
    ``F.interpolate`` bilinear resize with the same ``align_corners``.

    Degenerate inputs give finite outputs and gradients, never an error (no data-dependent
    checks, so ``warp`` stays cheap, compilable and exportable):

    - **projective z → 0** (the horizon line): ``z`` is clamped away from zero keeping its sign,
      ``|z| ≥ Z_EPS = 1e-6``; inside that band the gradient with respect to ``z`` is zero.
    - **huge entries**: matrix entries are clamped to ``±MATRIX_BOUND = 1e6`` and sampling
      coordinates to ``±COORD_BOUND = 1e4`` (a no-op for ``"zeros"``/``"border"`` padding, where
      anything beyond ``±3`` samples only padding). A huge scale thus samples padding / edges.
    - **NaN or ±inf in a matrix** (e.g. from NaN parameters, see :func:`transform_matrix`): that
      sample's matrix is replaced by one that maps every pixel outside the input, so its output
      is the padding (zeros for ``padding_mode="zeros"``, the edge value for ``"border"``) and
      its matrix gets a zero gradient.

    The grid is built and the image sampled in ``float32`` or wider (``float64`` when ``x`` or
    ``matrix`` is), with autocast disabled; the output is cast back to ``x``'s dtype (bf16 /
    fp16 inputs are sampled on a float32 grid, not on a grid rounded to 8 or 11 bits).

    A NaN/inf *pixel* in ``x`` raises ``ValueError`` (one device→host read; skipped under
    ``torch.compile``): unlike a bad matrix it has no padding to fall back to.

    Args:
        x: the input images, ``(B, C, H, W)``.
        matrix: output-normalised → input-normalised maps, ``(B, 3, 3)``.
        output_size: ``(h, w)`` of the output; ``None`` keeps ``(H, W)``.
        mode: ``"bilinear"``, ``"nearest"`` or ``"bicubic"`` (``F.grid_sample``).
        padding_mode: ``"zeros"``, ``"border"`` or ``"reflection"`` (``F.grid_sample``).
        align_corners: the ``F.affine_grid`` / ``F.grid_sample`` convention for ``±1``.

    Returns:
        The warped images, ``(B, C, h, w)``, in ``x``'s dtype.

    Shape:
        - x: ``(B, C, H, W)``
        - matrix: ``(B, 3, 3)``
        - output: ``(B, C, h, w)``

    Examples:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> flip = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> warp(x, flip)[0, 0, 0]
        tensor([3., 2., 1., 0.])
        >>> warp(x, torch.eye(3)[None], output_size=(2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """
    check_tensor(x, "x", "(B, C, H, W)", floating=True)
    check_tensor(matrix, "matrix", "(B, 3, 3)", sizes=(None, 3, 3), floating=True)
    check_same_batch(x, "x", matrix, "matrix")
    height, width = x.shape[-2:] if output_size is None else _check_size(output_size, "output_size")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, received {mode!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(
            f"padding_mode: expected one of {_PADDING_MODES}, received {padding_mode!r}"
        )

    check_finite(x, "x")
    return _warp(x, matrix, (height, width), mode, padding_mode, align_corners)


def _warp(
    x: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    padding_mode: str,
    align_corners: bool,
) -> torch.Tensor:
    """:func:`warp` on validated arguments (``SpatialTransformerAlign`` has checked ``x``)."""
    with autocast_disabled(x.device):
        return _sample(x, matrix, size, mode, padding_mode, align_corners)


def _sample(
    x: torch.Tensor,
    matrix: torch.Tensor,
    size: tuple[int, int],
    mode: str,
    padding_mode: str,
    align_corners: bool,
) -> torch.Tensor:
    height, width = size
    dtype = torch.promote_types(torch.promote_types(x.dtype, matrix.dtype), torch.float32)
    matrix = matrix.to(dtype)
    # A sample whose matrix is not finite maps every pixel beyond the input (pure padding).
    outside = matrix.new_tensor(
        [[0.0, 0.0, 2 * COORD_BOUND], [0.0, 0.0, 2 * COORD_BOUND], [0.0, 0.0, 1.0]]
    )
    finite = torch.isfinite(matrix).flatten(1).all(dim=1)[:, None, None]
    matrix = torch.where(finite, matrix, outside).clamp(-MATRIX_BOUND, MATRIX_BOUND)
    reflection = padding_mode == "reflection"
    grid = _ProjectiveGrid.apply(matrix, height, width, align_corners, reflection)
    out = F.grid_sample(
        x.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
    )
    return out.to(x.dtype)


class _ProjectiveGrid(torch.autograd.Function):
    """The sampling grid ``(B, h, w, 2)`` of eq. (1), from separable parts, with its backward.

    The coordinates are affine in ``x_t`` (columns) and ``y_t`` (rows) before the division, so
    ``θk1·x_t + θk3`` is computed per column ``(B, 3, w)``, ``θk2·y_t`` per row ``(B, 3, h)``,
    and one broadcast addition writes the numerators ``(B, h, w, 2)`` (another the denominators
    ``z``). Then ``1/z`` clamped into ``±1/Z_EPS`` (the same as ``|z| ≥ Z_EPS`` with its sign
    kept; zero gradient inside the band), one multiplication and the ``±COORD_BOUND`` clamp. The
    backward reduces the gradient over rows and columns (no ``(B, h·w, 3)`` product).
    Coordinates clamped to ``±COORD_BOUND`` get no gradient; for ``"zeros"``/``"border"``
    padding ``grid_sample`` already gives them none (they sample padding only), so the mask is
    applied for ``"reflection"`` only.

    On CPU the guards are skipped when the ``(B, 3, 3)`` matrices prove them no-ops (see
    :func:`_guards_idle`; NumPy on the matrices, microseconds): no clamp, no band or coordinate
    mask, and for affine matrices (``z ≡ 1`` exactly) no division, with the matrix gradient from
    nine moments of the incoming gradient (:func:`_affine_grid_backward`, one matrix product
    over it instead of six masked element-wise passes). The grid is the same to the bit and the
    gradient to float rounding. On other devices (where those passes are cheap and the check
    would be a device→host read) and under ``torch.compile``/tracing the guards always run.

    The grid is stored ``(B, 2, h, w)`` in memory (the broadcast additions' natural order) and
    passed as a ``(B, h, w, 2)`` view. ``grid_sample`` reads it as fast as an interleaved grid
    forward and 4–7 % slower in its backward (B = 64, 112², 2 CPU cores); a version writing the
    interleaved layout (``addcmul`` over rows of ``2w`` numbers, ``z`` written twice) measured
    slower overall, and complex arithmetic, which would write it cheaply, does not export to ONNX.
    """

    @staticmethod
    def forward(ctx, matrix, height, width, align_corners, reflection):
        xt = _axis(width, align_corners, matrix.device, matrix.dtype)
        yt = _axis(height, align_corners, matrix.device, matrix.dtype)
        idle, affine = _guards_idle(matrix, xt, yt)
        columns = torch.addcmul(matrix[:, :, 2:3], matrix[:, :, 0:1], xt)  # (B, 3, w)
        rows = matrix[:, :, 1:2] * yt  # (B, 3, h)
        columns, rows = columns.transpose(1, 2), rows.transpose(1, 2)  # (B, w, 3), (B, h, 3)
        grid = columns[:, None, :, :2] + rows[:, :, None, :2]  # numerators, (B, h, w, 2)
        inverse = None
        if not affine:
            inverse = (columns[:, None, :, 2] + rows[:, :, None, 2]).reciprocal_()  # 1/z
            if not idle:
                inverse.clamp_(-1 / Z_EPS, 1 / Z_EPS)
            grid.mul_(inverse.unsqueeze(3))
        if not idle:
            grid.clamp_(-COORD_BOUND, COORD_BOUND)
        ctx.reflection, ctx.idle, ctx.affine = reflection, idle, affine
        ctx.save_for_backward(xt, yt, *((matrix,) if affine else (inverse, grid)))
        return grid

    @staticmethod
    def backward(ctx, grad):
        if ctx.affine:
            return _affine_grid_backward(grad, *ctx.saved_tensors), None, None, None, None
        xt, yt, inverse, grid = ctx.saved_tensors
        if ctx.reflection and not ctx.idle:
            grad = torch.where(grid.abs() < COORD_BOUND, grad, 0.0)
        # d/d numerator_k = grad_k / z, per coordinate (two maps: a broadcast over the last
        # dimension of size 2 would not vectorise)
        grad_x, grad_y = grad[..., 0] * inverse, grad[..., 1] * inverse  # (B, h, w) each
        # d(numerator/z)/dz = −grid/z: −Σ_k grad_k·grid_k/z, zero inside the band where 1/z
        # was clamped
        grad_z = torch.addcmul(grad_x * grid[..., 0], grad_y, grid[..., 1]).neg_()
        if not ctx.idle:
            grad_z = torch.where(inverse.abs() < 1 / Z_EPS, grad_z, 0.0)
        maps = (grad_x, grad_y, grad_z)  # the gradients of θk1·x_t + θk2·y_t + θk3, k = 1, 2, 3
        by_column = torch.stack([m.sum(1) for m in maps], 1)  # (B, 3, w)
        by_row = torch.stack([m.sum(2) for m in maps], 1)  # (B, 3, h)
        grad_matrix = torch.stack([by_column @ xt, by_row @ yt, by_column.sum(2)], 2)
        return grad_matrix, None, None, None, None


#: ``φ = (x_t, y_t, 1)`` as ``y_t^a·x_t^c``: the index ``3·(a_i + a_j) + c_i + c_j`` of each
#: product ``φ_i·φ_j`` among the nine moments ``y_t^a·x_t^c``, ``a, c ∈ {0, 1, 2}``.
_AFFINE_MOMENTS = [
    [3 * (ai + aj) + ci + cj for aj, cj in ((0, 1), (1, 0), (0, 0))]
    for ai, ci in ((0, 1), (1, 0), (0, 0))
]


def _affine_grid_backward(
    grad: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, matrix: torch.Tensor
) -> torch.Tensor:
    """The matrix gradient ``(B, 3, 3)`` of an affine grid (``z ≡ 1``) in one pass over ``grad``.

    With ``φ = (x_t, y_t, 1)`` and ``grid_k = Σ_i θki·φ_i``: ``∂/∂θkj = Σ_p g_k·φ_j`` and, from
    the ``−grid/z`` term at ``z = 1``, ``∂/∂θ3j = −Σ_k Σ_i θki·Σ_p g_k·φ_i·φ_j``. Every sum is a
    moment ``Σ_p g_k·y_t^a·x_t^c`` with ``a + c ≤ 2``: one matrix product contracts the rows of
    ``grad`` with ``(1, y_t, y_t²)``, a small one its columns with ``(1, x_t, x_t²)``.
    """
    batch, height, width, _ = grad.shape
    powers = torch.arange(3, device=grad.device)
    by_row = (yt ** powers[:, None]) @ grad.reshape(batch, height, 2 * width)  # (B, a, 2w)
    moments = by_row.view(batch, 3, width, 2).transpose(2, 3) @ (xt[:, None] ** powers)
    # Σ_p g_k·φ_i·φ_j for φ = (x_t, y_t, 1) = y_t^a·x_t^c, (a, c) = (0, 1), (1, 0), (0, 0)
    square = moments.transpose(1, 2).reshape(batch, 2, 9)[:, :, _AFFINE_MOMENTS]  # (B, k, i, j)
    numerators = square[:, :, 2]  # φ_i = 1: Σ_p g_k·φ_j, (B, k, j)
    z = (matrix[:, :2, :, None] * square).sum((1, 2)).neg_()  # (B, j)
    return torch.cat([numerators, z[:, None]], 1)


def _guards_idle(matrix: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor) -> tuple[bool, bool]:
    """Whether the grid's guards are no-ops for these matrices, and whether ``z ≡ 1``.

    ``z = θ31·x_t + θ32·y_t + θ33`` is affine in the output coordinates, so over the output
    rectangle its extremes are at the four corners; where ``z`` keeps one sign there, each
    coordinate ``numerator_k / z`` is monotone along every line and its extremes are at the
    corners too. So the band ``|z| < Z_EPS`` is never entered when every corner has
    ``|z| > 2·Z_EPS`` plus a rounding allowance (``1e-5`` of ``|θ31| + |θ32| + |θ33|``) with one
    sign, and no coordinate is clamped when every corner's is within ``COORD_BOUND / 2``.

    Returns ``(False, False)`` (keep every guard) off the CPU and wherever data-reading checks
    are off (``torch.compile``, tracing, meta tensors): the answer costs a device→host read.
    """
    if matrix.device.type != "cpu" or not data_checks_enabled(matrix) or matrix.shape[0] == 0:
        return False, False
    # NumPy on the (B, 3, 3) matrices: microseconds, where a dozen tiny torch ops cost 0.5 ms
    theta = matrix.detach().numpy().astype(np.float64)
    (x0, x1), (y0, y1) = xt.numpy()[[0, -1]], yt.numpy()[[0, -1]]
    corners = np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1.0, 1.0, 1.0, 1.0]])
    mapped = theta @ corners  # (B, 3, 4): numerators and z at the output rectangle's corners
    z = mapped[:, 2]
    allowance = 2 * Z_EPS + 1e-5 * np.abs(theta[:, 2]).sum(1, keepdims=True)
    one_sign = (z > allowance).all(1) | (z < -allowance).all(1)
    inside = (np.abs(mapped[:, :2]) <= COORD_BOUND / 2 * np.abs(z)[:, None]).all((1, 2))
    idle = bool((one_sign & inside).all())
    return idle, idle and bool((theta[:, 2] == (0.0, 0.0, 1.0)).all())


def _normalization(
    size: tuple[int, int], align_corners: bool, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(3, 3)`` pixel → normalised coordinate map of an image size, and its inverse."""

    def scale_offset(steps: int) -> tuple[float, float]:
        if align_corners:
            return (1.0, 0.0) if steps == 1 else (2.0 / (steps - 1), -1.0)
        return 2.0 / steps, 1.0 / steps - 1.0

    (sy, oy), (sx, ox) = scale_offset(size[0]), scale_offset(size[1])
    forward = torch.tensor([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]], dtype=dtype)
    inverse = torch.tensor(
        [[1 / sx, 0.0, -ox / sx], [0.0, 1 / sy, -oy / sy], [0.0, 0.0, 1.0]], dtype=dtype
    )
    return forward.to(device), inverse.to(device)


def _inverse(matrix: torch.Tensor, name: str) -> torch.Tensor:
    """Inverse of finite, invertible matrices; one device→host read for both checks."""
    inverse, info = torch.linalg.inv_ex(matrix)
    if not data_checks_enabled(matrix):
        return inverse
    singular = (info != 0) | ~torch.isfinite(inverse).flatten(1).all(dim=1)

    def message(_: int) -> str:
        bad = torch.nonzero(singular).flatten().tolist()
        return f"{name}: expected invertible (B, 3, 3) matrices, singular at {bad}"

    # a NaN/inf input is named as such, before "singular"
    raise_bad_data([finite_check(matrix, name), (singular.sum(), message)])
    return inverse


def _geometry_dtype(matrix: torch.Tensor) -> torch.dtype:
    """float32 or wider: pixel-matrix algebra is never done in half precision."""
    return torch.promote_types(matrix.dtype, torch.float32)


def to_pixel_matrix(
    matrix: torch.Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    align_corners: bool = False,
) -> torch.Tensor:
    """Convert normalised output→input matrices to forward input→output **pixel** matrices.

    The result is what ``kornia.geometry.transform.warp_perspective(x, P, out_size,
    align_corners=align_corners)`` and OpenCV's ``warpPerspective`` take, so that they warp
    like ``warp(x, matrix, out_size, align_corners=align_corners)``: with ``N_in``, ``N_out``
    the pixel → normalised maps of the two sizes, ``P = (N_in⁻¹ · matrix · N_out)⁻¹``.
    Pixel centres sit on integers; ``align_corners=False`` maps pixel ``u`` of a size-``W`` axis to
    ``(2u + 1) / W − 1``, ``True`` maps it to ``2u / (W − 1) − 1``.

    Args:
        matrix: normalised output → input maps, ``(B, 3, 3)``; must be invertible.
        in_size: ``(H, W)`` of the input image.
        out_size: ``(h, w)`` of the output image.
        align_corners: the convention ``warp`` is called with.

    Returns:
        Input-pixel → output-pixel matrices, ``(B, 3, 3)``, in float32 or wider: computed with
        autocast disabled, from half-precision input too (a bf16/fp16 matrix is promoted).

    Raises:
        ValueError: for a bad shape or size, a NaN/inf entry, or a singular matrix.

    Shape:
        - matrix: ``(B, 3, 3)``
        - output: ``(B, 3, 3)``

    Examples:
        >>> half = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]]])
        >>> to_pixel_matrix(half, in_size=(8, 8), out_size=(8, 8))
        tensor([[[ 2.0000,  0.0000, -3.5000],
                 [ 0.0000,  2.0000, -3.5000],
                 [ 0.0000,  0.0000,  1.0000]]])
    """
    check_tensor(matrix, "matrix", "(B, 3, 3)", sizes=(None, 3, 3), floating=True)
    in_size, out_size = _check_size(in_size, "in_size"), _check_size(out_size, "out_size")
    dtype = _geometry_dtype(matrix)
    with autocast_disabled(matrix.device):
        _, in_denorm = _normalization(in_size, align_corners, dtype, matrix.device)
        out_norm, _ = _normalization(out_size, align_corners, dtype, matrix.device)
        backward = in_denorm @ matrix.to(dtype) @ out_norm  # output pixel -> input pixel
        return _inverse(backward, "matrix")


def from_pixel_matrix(
    pixel_matrix: torch.Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    align_corners: bool = False,
) -> torch.Tensor:
    """Convert forward input→output **pixel** matrices to normalised output→input matrices.

    The inverse of :func:`to_pixel_matrix`: ``matrix = N_in · P⁻¹ · N_out⁻¹``. Use it to start
    from a classical alignment, e.g. the OpenCV / scikit-image matrix that maps detected
    landmarks onto a template (see :func:`similarity_from_landmarks`).

    Args:
        pixel_matrix: input-pixel → output-pixel maps, ``(B, 3, 3)``; must be invertible.
        in_size: ``(H, W)`` of the input image.
        out_size: ``(h, w)`` of the output image.
        align_corners: the convention ``warp`` will be called with.

    Returns:
        Normalised output → input matrices for :func:`warp`, ``(B, 3, 3)``, in float32 or wider:
        computed with autocast disabled, from half-precision input too.

    Raises:
        ValueError: for a bad shape or size, a NaN/inf entry, or a singular matrix.

    Shape:
        - pixel_matrix: ``(B, 3, 3)``
        - output: ``(B, 3, 3)``

    Examples:
        >>> shift = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> x = torch.arange(4.0).reshape(1, 1, 1, 4)
        >>> warp(x, from_pixel_matrix(shift, (1, 4), (1, 4)))  # content moves one pixel right
        tensor([[[[0., 0., 1., 2.]]]])
    """
    check_tensor(pixel_matrix, "pixel_matrix", "(B, 3, 3)", sizes=(None, 3, 3), floating=True)
    in_size, out_size = _check_size(in_size, "in_size"), _check_size(out_size, "out_size")
    dtype, device = _geometry_dtype(pixel_matrix), pixel_matrix.device
    with autocast_disabled(device):
        in_norm, _ = _normalization(in_size, align_corners, dtype, device)
        _, out_denorm = _normalization(out_size, align_corners, dtype, device)
        return in_norm @ _inverse(pixel_matrix.to(dtype), "pixel_matrix") @ out_denorm


def similarity_from_landmarks(src: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares similarity (Umeyama) mapping landmarks ``src`` onto ``dst``, batched.

    The "traditional 2D alignment" that Tang et al. 2020 (§1, §3.3) learn to replace: the
    non-reflective similarity ``T`` minimising ``Σ_n ‖dst_n − T(src_n)‖²`` (Umeyama 1991). In 2-D
    the rotation-and-scale block is ``[[a, −b], [b, a]]`` and the least-squares solution has the
    closed form ``a = Σ(x·u + y·v) / Σ(x² + y²)``, ``b = Σ(x·v − y·u) / Σ(x² + y²)`` on centred
    coordinates (``(x, y)`` from ``src``, ``(u, v)`` from ``dst``), which equals Umeyama's SVD
    solution with its reflection correction; it has no SVD, so its gradient is smooth
    everywhere. Coincident ``src`` points — zero spread, or a spread below ``ε`` (the dtype's
    machine epsilon) times the spread of ``dst`` — give ``a = b = 0`` (a singular matrix) with
    finite gradients (zero through ``a`` and ``b``) rather than NaN; :func:`from_pixel_matrix`
    then refuses that matrix. NaN/inf landmarks raise ``ValueError`` (one device→host read).

    The result is a forward **pixel** matrix (``src`` pixel → ``dst`` pixel, as OpenCV's
    ``estimateAffinePartial2D`` or scikit-image's ``SimilarityTransform``); pass it through
    :func:`from_pixel_matrix` to use it with :func:`warp`.

    Args:
        src: detected landmarks in input pixel coordinates, ``(B, N, 2)``, ``N ≥ 2``, as (x, y).
        dst: the template, ``(N, 2)`` or ``(B, N, 2)``; default ``ARCFACE_TEMPLATE_112``
            (five points on a 112×112 crop).

    Returns:
        ``(B, 3, 3)`` similarity matrices, computed (with autocast disabled) and returned in
        the promoted dtype of ``src``, ``dst`` and float32: float32 or wider, also for
        half-precision landmarks.

    Shape:
        - src: ``(B, N, 2)``
        - dst: ``(N, 2)`` or ``(B, N, 2)``
        - output: ``(B, 3, 3)``

    Examples:
        >>> landmarks = ARCFACE_TEMPLATE_112[None] * 2 + 10  # the template, twice as big, moved
        >>> similarity_from_landmarks(landmarks).round(decimals=4)
        tensor([[[ 0.5000, -0.0000, -5.0000],
                 [ 0.0000,  0.5000, -5.0000],
                 [ 0.0000,  0.0000,  1.0000]]])
    """
    check_tensor(src, "src", "(B, N, 2)", sizes=(None, None, 2), floating=True)
    if dst is None:
        dst = ARCFACE_TEMPLATE_112
    if isinstance(dst, torch.Tensor) and dst.ndim == 3:
        check_tensor(dst, "dst", "(B, N, 2)", sizes=(src.shape[0], src.shape[1], 2), floating=True)
    else:
        check_tensor(dst, "dst", "(N, 2)", sizes=(src.shape[1], 2), floating=True)
    if src.shape[1] < 2:
        raise ValueError(
            f"src: expected at least 2 landmarks (B, N, 2), received {tuple(src.shape)}"
        )
    raise_bad_data([finite_check(src, "src"), finite_check(dst.to(src.device), "dst")])
    dtype = torch.promote_types(torch.promote_types(src.dtype, dst.dtype), torch.float32)
    with autocast_disabled(src.device):
        return _similarity(src.to(dtype), dst.to(device=src.device, dtype=dtype).expand_as(src))


def _similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    src_mean, dst_mean = src.mean(dim=1), dst.mean(dim=1)  # (B, 2)
    s = src - src_mean[:, None]
    d = dst - dst_mean[:, None]
    spread = (s * s).sum(dim=(1, 2))
    # "coincident": a spread that is 0, or negligible against the template's (the scale a would
    # be ~1/ε); there a = b = 0 and the division never sees a zero (no 0/0 in the gradient)
    floor = torch.finfo(src.dtype).eps * (d * d).sum(dim=(1, 2))
    spread_ok = spread > floor.clamp(min=torch.finfo(src.dtype).tiny)
    safe_spread = torch.where(spread_ok, spread, torch.ones_like(spread))
    a = torch.where(spread_ok, (s * d).sum(dim=(1, 2)) / safe_spread, 0.0)
    cross = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1)
    b = torch.where(spread_ok, cross / safe_spread, 0.0)
    tx = dst_mean[:, 0] - (a * src_mean[:, 0] - b * src_mean[:, 1])
    ty = dst_mean[:, 1] - (b * src_mean[:, 0] + a * src_mean[:, 1])
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, -b, tx, b, a, ty, zero, zero, one], dim=-1).reshape(-1, 3, 3)


def align_faces(
    images: torch.Tensor,
    landmarks: torch.Tensor,
    output_size: int | tuple[int, int] = 112,
    template: torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Crop a batch of faces onto the ArcFace template from their five landmarks, in one call.

    The classical alignment that Tang et al. 2020 (§1, §3.3) learn to replace, as InsightFace
    does it (``face_align.norm_crop``): the least-squares similarity from each face's detected
    points onto the template (:func:`similarity_from_landmarks`), then a bilinear warp of the
    image through it (:func:`from_pixel_matrix` + :func:`warp`), with zeros outside the image.
    It matches ``norm_crop`` on the same points to within interpolation rounding (OpenCV's
    ``warpAffine`` uses 5-bit fixed-point weights on 8-bit images); pixel centres sit on
    integers in both.

    The template for ``output_size`` follows InsightFace's ``estimate_norm``: a size that is a
    multiple of 112 scales :data:`ARCFACE_TEMPLATE_112` by ``size / 112``; a multiple of 128
    scales it by ``size / 128`` and shifts it right by ``8 · size / 128`` pixels. Any other
    size needs an explicit ``template``.

    ``uint8`` images are aligned in float32 and rounded back to ``uint8``, as OpenCV returns
    them; floating images keep their dtype. The result is differentiable with respect to
    floating images and to the landmarks.

    Args:
        images: the faces, ``(B, C, H, W)``, floating or ``uint8`` (any value range).
        landmarks: five points per face in pixels of ``images`` (x along the width, pixel
            centres on integers): left eye, right eye, nose tip, left and right mouth corners,
            left = image left (RetinaFace's and InsightFace's order), ``(B, 5, 2)``. With a
            ``template`` of N points, ``(B, N, 2)``.
        output_size: the crop's side (a multiple of 112 or 128) or, with ``template``, its
            ``(h, w)``; default 112.
        template: target points in output pixels, ``(N, 2)`` or ``(B, N, 2)``; default the
            ArcFace template for ``output_size``.
        mode: ``"bilinear"`` (InsightFace's), ``"nearest"`` or ``"bicubic"``.
        padding_mode: ``"zeros"`` (InsightFace's black border), ``"border"`` or
            ``"reflection"``.

    Returns:
        The aligned faces, ``(B, C, h, w)``, in the dtype of ``images``.

    Raises:
        ValueError: a bad shape, dtype or size; NaN/inf landmarks; points of a face that all
            coincide (no similarity maps them onto the template).

    Shape:
        - images: ``(B, C, H, W)``
        - landmarks: ``(B, N, 2)``, N = 5 for the ArcFace template
        - output: ``(B, C, h, w)``, ``(B, C, 112, 112)`` by default

    Examples:
        >>> images = torch.rand(2, 3, 250, 250)
        >>> landmarks = ARCFACE_TEMPLATE_112.expand(2, 5, 2) * 2 + 8  # faces twice as large
        >>> align_faces(images, landmarks).shape
        torch.Size([2, 3, 112, 112])
        >>> align_faces(images.mul(255).byte(), landmarks, output_size=128).dtype
        torch.uint8
    """
    check_tensor(images, "images", "(B, C, H, W)")
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ValueError(f"images: expected a floating or uint8 tensor, received {images.dtype}")
    check_tensor(landmarks, "landmarks", "(B, N, 2)", sizes=(None, None, 2), floating=True)
    check_same_batch(images, "images", landmarks, "landmarks")
    if template is None:
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size <= 0:
            raise ValueError(
                f"output_size: expected a positive int side (a multiple of 112 or 128) for the "
                f"ArcFace template, received {output_size!r}"
            )
        if output_size % 112 == 0:
            ratio, shift = output_size / 112, 0.0
        elif output_size % 128 == 0:
            ratio, shift = output_size / 128, 8.0 * output_size / 128
        else:
            raise ValueError(
                f"output_size: the ArcFace template is defined for multiples of 112 or 128, "
                f"received {output_size}; pass template= for other sizes"
            )
        template = ARCFACE_TEMPLATE_112 * ratio + torch.tensor([shift, 0.0])
        size = (output_size, output_size)
    else:
        if isinstance(template, torch.Tensor) and template.ndim == 3:
            batch = landmarks.shape[0]
            check_tensor(template, "template", "(B, N, 2)", sizes=(batch, None, 2), floating=True)
        else:
            check_tensor(template, "template", "(N, 2)", sizes=(None, 2), floating=True)
        size = (output_size, output_size) if isinstance(output_size, int) else output_size
        size = _check_size(size, "output_size")
    if template.shape[-2] != landmarks.shape[1]:
        raise ValueError(
            f"landmarks: expected (B, {template.shape[-2]}, 2) points, one per template point "
            f"(template shape {tuple(template.shape)}), received {tuple(landmarks.shape)}"
        )
    raise_bad_data([finite_check(images, "images"), finite_check(landmarks, "landmarks")])
    source = images if images.is_floating_point() else images.to(torch.float32)
    pixel_matrix = similarity_from_landmarks(landmarks, template)
    try:
        matrix = from_pixel_matrix(pixel_matrix, tuple(images.shape[-2:]), size)
    except ValueError as error:
        raise ValueError(
            f"landmarks: the points of a face coincide, so no similarity maps them onto the "
            f"template ({error})"
        ) from error
    aligned = warp(source, matrix, size, mode=mode, padding_mode=padding_mode)
    if images.dtype == torch.uint8:
        return aligned.round().clamp(0, 255).to(torch.uint8)
    return aligned
