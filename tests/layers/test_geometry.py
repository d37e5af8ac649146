"""Alignment geometry: matrices (eqs. 1, 6), the warp (eq. 2) vs loops and kornia, pixel maps,
landmark similarity vs an SVD Umeyama, degenerate inputs, gradients, CUDA parity (the compile
smoke test of warp is the module's, in test_alignment.py)."""

from __future__ import annotations

import math

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from alignment_images import smooth_shapes
from checks import assert_cuda_parity, gradcheck_f64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    TRANSFORM_PARAMETERS,
    from_pixel_matrix,
    params_from_matrix,
    similarity_from_landmarks,
    to_pixel_matrix,
    transform_matrix,
    warp,
)

# warp vs kornia.warp_perspective, max abs difference on [0, 1] images: both sample with
# F.grid_sample; only the rounding of the sampling coordinates differs (measured ~1e-5 in
# float32, ~1e-14 in float64).
KORNIA_ATOL = {torch.float32: 1e-4, torch.float64: 1e-10}

KNOWN_PARAMS = {
    "similarity": [[0.8, 0.4, 0.1, -0.15], [1.2, -0.3, -0.05, 0.1]],
    "affine": [[0.9, 0.2, 0.1, -0.1, 0.8, 0.05], [1.1, -0.1, 0.0, 0.15, 0.95, -0.1]],
    "projective": [
        [0.9, 0.1, 0.05, -0.1, 0.85, 0.1, 0.15, -0.1],
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -0.2, 0.25],
    ],
}


def reference_matrix(params: list[float], kind: str) -> list[list[float]]:
    """The paper's matrices written out entry by entry."""
    if kind == "identity":
        return [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    if kind == "translation":
        t1, t2 = params
        return [[1, 0, t1], [0, 1, t2], [0, 0, 1]]
    if kind == "similarity":  # eq. 6
        lam, alpha, t1, t2 = params
        return [
            [lam * math.cos(alpha), -lam * math.sin(alpha), t1],
            [lam * math.sin(alpha), lam * math.cos(alpha), t2],
            [0, 0, 1],
        ]
    if kind == "affine":
        return [params[0:3], params[3:6], [0, 0, 1]]
    return [params[0:3], params[3:6], [params[6], params[7], 1]]  # eq. 1


def reference_warp(
    x: torch.Tensor, matrix: torch.Tensor, out_size: tuple[int, int]
) -> torch.Tensor:
    """Eqs. 1-2 with loops: project each output pixel, sum the bilinear kernel over the input."""
    batch, channels, height, width = x.shape
    out_h, out_w = out_size
    rows = torch.arange(height, dtype=x.dtype)[:, None]
    cols = torch.arange(width, dtype=x.dtype)[None, :]
    out = torch.zeros(batch, channels, out_h, out_w, dtype=x.dtype)
    for b in range(batch):
        m = matrix[b].tolist()
        for i in range(out_h):
            for j in range(out_w):
                xt, yt = (2 * j + 1) / out_w - 1, (2 * i + 1) / out_h - 1
                z = m[2][0] * xt + m[2][1] * yt + m[2][2]
                xs = (m[0][0] * xt + m[0][1] * yt + m[0][2]) / z
                ys = (m[1][0] * xt + m[1][1] * yt + m[1][2]) / z
                u, v = ((xs + 1) * width - 1) / 2, ((ys + 1) * height - 1) / 2  # pixel coords
                kernel = (1 - (cols - u).abs()).clamp(min=0) * (1 - (rows - v).abs()).clamp(min=0)
                out[b, :, i, j] = (x[b] * kernel).sum(dim=(-2, -1))
    return out


def reference_umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) with SVD and the reflection correction, one sample, numpy float64."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    covariance = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(sigma) @ sign) / (s**2).sum(1).mean()
    out = np.eye(3)
    out[:2, :2] = scale * rotation
    out[:2, 2] = dst_mean - scale * rotation @ src_mean
    return out


def batch_matrices(kind: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return transform_matrix(torch.tensor(KNOWN_PARAMS[kind], dtype=dtype), kind)


# --- transform_matrix / params_from_matrix -----------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TRANSFORM_PARAMETERS))
def test_transform_matrix_matches_paper_entries(kind: str, dtype: torch.dtype) -> None:
    params = torch.randn(5, TRANSFORM_PARAMETERS[kind], dtype=torch.float64)
    got = transform_matrix(params.to(dtype), kind)
    assert got.shape == (5, 3, 3)
    assert got.dtype == dtype
    expected = torch.tensor([reference_matrix(p, kind) for p in params.tolist()], dtype=dtype)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kind", sorted(TRANSFORM_PARAMETERS))
def test_params_from_matrix_inverts_transform_matrix(kind: str) -> None:
    params = torch.randn(4, TRANSFORM_PARAMETERS[kind], dtype=torch.float64) * 0.3
    if kind == "similarity":
        params[:, 0] = params[:, 0].abs() + 0.5  # λ > 0 and α in (−π, π): a unique inverse
    torch.testing.assert_close(params_from_matrix(transform_matrix(params, kind), kind), params)


def test_params_from_matrix_projects_onto_the_kind() -> None:
    affine = batch_matrices("affine")
    similarity = transform_matrix(params_from_matrix(affine, "similarity"), "similarity")
    # The nearest similarity in Frobenius norm: no other (λ, α) near it is closer.
    best = (similarity - affine)[:, :2, :2].square().sum()
    for delta in ([0.01, 0.0], [-0.01, 0.0], [0.0, 0.01], [0.0, -0.01]):
        params = params_from_matrix(affine, "similarity") + torch.tensor([*delta, 0.0, 0.0])
        other = transform_matrix(params, "similarity")
        assert (other - affine)[:, :2, :2].square().sum() > best
    scaled = batch_matrices("projective") * 3.0  # a homography up to scale
    torch.testing.assert_close(
        transform_matrix(params_from_matrix(scaled, "projective"), "projective"),
        batch_matrices("projective"),
    )


def test_transform_matrix_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"params: .*size 4 at dim 1.*\(2, 6\)"):
        transform_matrix(torch.zeros(2, 6), "similarity")
    with pytest.raises(ValueError, match="kind: expected one of"):
        transform_matrix(torch.zeros(2, 4), "homography")
    with pytest.raises(ValueError, match="floating-point"):
        transform_matrix(torch.zeros(2, 2, dtype=torch.long), "translation")


# --- warp against references --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["similarity", "affine", "projective"])
def test_warp_matches_loop_reference_of_eqs_1_2(kind: str) -> None:
    x = smooth_shapes(2, 2, 10, 9, seed=1, dtype=torch.float64)
    matrix = batch_matrices(kind)
    expected = reference_warp(x, matrix, (7, 8))
    torch.testing.assert_close(warp(x, matrix, (7, 8)), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("kind", ["similarity", "affine", "projective"])
def test_warp_matches_kornia_warp_perspective(
    kind: str, align_corners: bool, dtype: torch.dtype
) -> None:
    x = smooth_shapes(2, 3, 48, 40, seed=2, dtype=dtype)
    matrix = batch_matrices(kind, dtype)
    ours = warp(x, matrix, (36, 30), align_corners=align_corners)
    pixel = to_pixel_matrix(matrix, (48, 40), (36, 30), align_corners=align_corners)
    theirs = kornia.geometry.transform.warp_perspective(
        x, pixel, (36, 30), align_corners=align_corners
    )
    assert ours.dtype == dtype
    # the comparison must see the image: a good part of the output is content, not padding
    assert (ours > 0).float().mean() > 0.5
    assert (ours - theirs).abs().max() <= KORNIA_ATOL[dtype]


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_matrix_round_trip(align_corners: bool) -> None:
    matrix = batch_matrices("projective")
    pixel = to_pixel_matrix(matrix, (48, 40), (20, 30), align_corners=align_corners)
    back = from_pixel_matrix(pixel, (48, 40), (20, 30), align_corners=align_corners)
    torch.testing.assert_close(back, matrix)


def test_pixel_matrix_pixel_centres_on_integers() -> None:
    # A 2× downscale maps output pixel centre (j) to input position 2j + 0.5 (half-pixel
    # convention, as OpenCV's resize): the forward pixel map is u_out = (u_in − 0.5) / 2.
    pixel = to_pixel_matrix(torch.eye(3)[None].double(), (8, 8), (4, 4))
    expected = torch.tensor([[[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1]]], dtype=torch.float64)
    torch.testing.assert_close(pixel, expected)
    pixel = to_pixel_matrix(torch.eye(3)[None].double(), (9, 9), (5, 5), align_corners=True)
    expected = torch.tensor([[[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]]], dtype=torch.float64)
    torch.testing.assert_close(pixel, expected)


def test_from_pixel_matrix_integer_shift_moves_content() -> None:
    x = smooth_shapes(1, 1, 6, 7, seed=3, dtype=torch.float64)
    shift = torch.tensor([[[1.0, 0, 2], [0, 1, -1], [0, 0, 1]]], dtype=torch.float64)
    out = warp(x, from_pixel_matrix(shift, (6, 7), (6, 7)))
    # output pixel (r, c) shows input pixel (r + 1, c − 2)
    torch.testing.assert_close(out[..., :5, 2:], x[..., 1:, :5], atol=1e-12, rtol=0)
    assert out[..., 5, :].abs().max() < 1e-12
    assert out[..., :, :2].abs().max() < 1e-12


def test_pixel_matrix_rejects_singular_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match=r"matrix: expected invertible .* singular at \[1\]"):
        to_pixel_matrix(torch.stack([torch.eye(3), torch.zeros(3, 3)]), (4, 4), (4, 4))
    with pytest.raises(ValueError, match="in_size: expected two positive ints"):
        from_pixel_matrix(torch.eye(3)[None], (0, 4), (4, 4))
    with pytest.raises(ValueError, match=r"pixel_matrix: .*\(1, 2, 3\)"):
        from_pixel_matrix(torch.zeros(1, 2, 3), (4, 4), (4, 4))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    ("in_size", "out_size", "padding_mode"),
    [
        ((40, 36), (40, 36), "zeros"),
        ((40, 36), (17, 23), "zeros"),  # downscale: no sample leaves the image
        ((20, 18), (33, 40), "border"),  # upscale: F.interpolate clamps like "border"
    ],
)
def test_identity_warp_equals_plain_resize(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    padding_mode: str,
    align_corners: bool,
    dtype: torch.dtype,
) -> None:
    x = smooth_shapes(2, 3, *in_size, seed=4, dtype=dtype)
    eye = torch.eye(3, dtype=dtype).expand(2, 3, 3)
    out = warp(x, eye, out_size, padding_mode=padding_mode, align_corners=align_corners)
    resized = F.interpolate(x, size=out_size, mode="bilinear", align_corners=align_corners)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, resized, atol=atol, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.integers(1, 3),
    align_corners=st.booleans(),
    padding_mode=st.sampled_from(["zeros", "border", "reflection"]),
    mode=st.sampled_from(["bilinear", "nearest", "bicubic"]),
    seed=st.integers(0, 2**16),
)
def test_identity_matrix_warp_is_the_input(
    height: int,
    width: int,
    channels: int,
    align_corners: bool,
    padding_mode: str,
    mode: str,
    seed: int,
) -> None:
    x = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(seed))
    x = x.double()
    eye = torch.eye(3, dtype=x.dtype).expand(2, 3, 3)
    out = warp(x, eye, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    torch.testing.assert_close(out, x, atol=1e-10, rtol=0)


def test_warp_low_precision_follows_float32() -> None:
    x = smooth_shapes(2, 3, 16, 16, seed=5)
    matrix = batch_matrices("projective", torch.float32)
    out = warp(x.bfloat16(), matrix, (12, 12))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), warp(x, matrix, (12, 12)), atol=8e-3, rtol=0)


# --- degenerate inputs: finite outputs and gradients, documented behaviour ---------------------


def _warp_with_grads(x: torch.Tensor, matrix: torch.Tensor, **kwargs) -> tuple:
    matrix = matrix.detach().clone().requires_grad_(True)
    x = x.detach().clone().requires_grad_(True)
    out = warp(x, matrix, **kwargs)
    out.square().sum().backward()
    return out, x.grad, matrix.grad


def test_projective_z_crossing_zero_stays_finite() -> None:
    x = smooth_shapes(2, 1, 12, 12, seed=6, dtype=torch.float64)
    # z = 1 + 1.0·x_t + 0.5·y_t vanishes on a line through the output image; sample 2: z ≡ 0
    matrix = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 1.0]],
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    for padding_mode in ("zeros", "border", "reflection"):
        out, x_grad, m_grad = _warp_with_grads(x, matrix, padding_mode=padding_mode)
        assert torch.isfinite(out).all()
        assert torch.isfinite(x_grad).all()
        assert torch.isfinite(m_grad).all()
    # away from the horizon the guard changes nothing: compare with the loop reference
    ref = reference_warp(x[:1], matrix[:1], (12, 12))
    z = 1 + torch.linspace(-1, 1, 12)[None, :] * 11 / 12 + 0.5 * torch.linspace(-1, 1, 12)[:, None]
    far = z.abs() > 0.2
    torch.testing.assert_close(
        warp(x[:1], matrix[:1])[0, 0][far], ref[0, 0][far], atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("scale", [1e10, 1e30, 1e-30])
def test_huge_and_tiny_scales_stay_finite(scale: float, dtype: torch.dtype) -> None:
    x = smooth_shapes(2, 2, 10, 10, seed=7, dtype=dtype)
    params = torch.tensor([[scale, 0.3, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    for padding_mode in ("zeros", "border"):
        out, x_grad, m_grad = _warp_with_grads(
            x, transform_matrix(params, "similarity"), padding_mode=padding_mode
        )
        assert torch.isfinite(out).all()
        assert torch.isfinite(x_grad).all()
        assert torch.isfinite(m_grad).all()
        torch.testing.assert_close(out[1], x[1])  # the sane sample is untouched
    if scale < 1:  # every output pixel samples the image centre: a constant image
        out = warp(x, transform_matrix(params, "similarity"))
        assert (out[0] - out[0, :, :1, :1]).abs().max() < 1e-6


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_matrix_gives_padding_not_nan(bad: float) -> None:
    x = smooth_shapes(3, 2, 8, 8, seed=8, dtype=torch.float64)
    params = torch.tensor(
        [[bad, 0.1, 0.0, 0.0], [0.9, bad, 0.0, 0.0], [0.9, 0.1, 0.05, 0.0]], dtype=torch.float64
    )
    params.requires_grad_(True)
    out = warp(x, transform_matrix(params, "similarity"))
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(params.grad).all()
    assert out[:2].abs().max() == 0  # documented: a non-finite matrix samples only padding
    assert params.grad[:2].abs().max() == 0
    assert params.grad[2].abs().max() > 0
    border = warp(x, transform_matrix(params.detach(), "similarity"), padding_mode="border")
    assert torch.isfinite(border).all()
    expected = warp(x[2:], transform_matrix(params.detach()[2:], "similarity"))
    torch.testing.assert_close(out[2:], expected)


def test_warp_rejects_bad_input() -> None:
    x, eye = torch.rand(2, 3, 8, 8), torch.eye(3).expand(2, 3, 3)
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor \(B, C, H, W\).*\(3, 8, 8\)"):
        warp(x[0], eye)
    with pytest.raises(ValueError, match=r"matrix: .*size 3 at dim 1.*\(2, 2, 3\)"):
        warp(x, torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match=r"matrix: expected batch size 2 .*\(1, 3, 3\)"):
        warp(x, eye[:1])
    with pytest.raises(ValueError, match="output_size: expected two positive ints"):
        warp(x, eye, (8,))
    with pytest.raises(ValueError, match="mode: expected one of"):
        warp(x, eye, mode="area")
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        warp(x, eye, padding_mode="fill")


def _elementwise_grid(matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. (1) written out per pixel with autograd, the guards as warp documents them: z kept
    at |z| ≥ Z_EPS with its sign (zero gradient inside the band), coordinates clamped to
    ±COORD_BOUND. The reference for warp's hand-written grid and its backward."""
    from faceaux.layers.geometry import COORD_BOUND, Z_EPS

    h, w = size
    yt, xt = torch.meshgrid(
        torch.linspace(-1, 1, h, dtype=matrix.dtype) * (h - 1) / h,
        torch.linspace(-1, 1, w, dtype=matrix.dtype) * (w - 1) / w,
        indexing="ij",
    )
    m = matrix[:, :, :, None, None]
    xs = m[:, 0, 0] * xt + m[:, 0, 1] * yt + m[:, 0, 2]
    ys = m[:, 1, 0] * xt + m[:, 1, 1] * yt + m[:, 1, 2]
    z = m[:, 2, 0] * xt + m[:, 2, 1] * yt + m[:, 2, 2]
    z = torch.where(z >= 0, z.clamp(min=Z_EPS), z.clamp(max=-Z_EPS))
    return (torch.stack([xs, ys], dim=-1) / z[..., None]).clamp(-COORD_BOUND, COORD_BOUND)


def test_hand_written_grid_and_its_gradient_equal_the_elementwise_formula() -> None:
    from faceaux.layers.geometry import _ProjectiveGrid

    generator = torch.Generator().manual_seed(21)
    matrix = torch.eye(3, dtype=torch.float64).repeat(6, 1, 1)
    matrix += 0.3 * torch.randn(6, 3, 3, dtype=torch.float64, generator=generator)
    matrix[0, 2] = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)  # z crosses 0 in the image
    matrix[1, 2] = 0.0  # z ≡ 0: every pixel in the band
    matrix[2, 2] = torch.tensor([0.0, 0.0, 1e-7], dtype=torch.float64)  # band, tiny numerators
    matrix[2, :2] *= 1e-3
    matrix[3, :2] *= 1e5  # coordinates beyond ±COORD_BOUND
    matrix.requires_grad_(True)
    grad = torch.randn(6, 9, 7, 2, dtype=torch.float64, generator=generator)
    expected = _elementwise_grid(matrix, (9, 7))
    (expected_grad,) = torch.autograd.grad(expected, matrix, grad)
    got = _ProjectiveGrid.apply(matrix, 9, 7, False, True)  # the reflection mask included
    (got_grad,) = torch.autograd.grad(got, matrix, grad)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-9, atol=1e-9)
    assert got_grad[1, 2].abs().max() == 0  # z ≡ 0: no gradient for z from inside the band


def test_guards_idle_only_when_the_corners_prove_it() -> None:
    from faceaux.layers.geometry import _axis, _guards_idle

    xt, yt = _axis(7, False, "cpu", torch.float64), _axis(9, False, "cpu", torch.float64)
    eye = torch.eye(3, dtype=torch.float64)

    def idle(*rows: list[list[float]]) -> tuple[bool, bool]:
        return _guards_idle(torch.tensor(rows, dtype=torch.float64), xt, yt)

    assert _guards_idle(eye[None], xt, yt) == (True, True)
    assert idle([[0.9, 0.1, 0.2], [0.0, 1.1, -0.1], [0.1, -0.2, 1.0]]) == (True, False)
    assert idle([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.5, 1.0]]) == (False, False)  # z = 0
    assert idle([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3e-6]]) == (False, False)
    assert idle([[1e5, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) == (False, False)  # clamped
    assert _guards_idle(torch.stack([eye, eye.flip(0)]), xt, yt) == (False, False)  # one is bad
    assert _guards_idle(eye[None].expand(0, 3, 3), xt, yt) == (False, False)


@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_grid_without_its_idle_guards_is_the_guarded_grid(kind: str, monkeypatch) -> None:
    """The CPU fast path (guards proven no-ops and skipped) equals the always-guarded path, in
    value and gradient (to float rounding: the affine gradient sums in another order), for every
    padding mode's backward."""
    import faceaux.layers.geometry as geometry

    generator = torch.Generator().manual_seed(22)
    matrix = torch.eye(3, dtype=torch.float64) + 0.1 * torch.randn(
        5, 3, 3, dtype=torch.float64, generator=generator
    )
    matrix[:, 2] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    if kind == "projective":
        matrix[:, 2, :2] = 0.2 * torch.randn(5, 2, dtype=torch.float64, generator=generator)
    x = smooth_shapes(5, 2, 10, 11, seed=23, dtype=torch.float64)
    assert geometry._guards_idle(
        matrix,
        geometry._axis(7, False, "cpu", matrix.dtype),
        geometry._axis(9, False, "cpu", matrix.dtype),
    )[0]
    for padding_mode in ("zeros", "border", "reflection"):
        fast = _warp_with_grads(x, matrix, output_size=(9, 7), padding_mode=padding_mode)
        with monkeypatch.context() as patch:
            patch.setattr(geometry, "_guards_idle", lambda *_: (False, False))
            guarded = _warp_with_grads(x, matrix, output_size=(9, 7), padding_mode=padding_mode)
        for got, want in zip(fast, guarded, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        geometry._ProjectiveGrid.apply(matrix, 9, 7, False, False),
        _elementwise_grid(matrix, (9, 7)),
        rtol=1e-12,
        atol=1e-12,
    )


def test_non_finite_pixels_are_counted_in_the_message() -> None:
    x = torch.rand(2, 3, 8, 8)
    x[0, 1, 2, 3], x[1, 0, 0, 0], x[1, 2, 7, 7] = math.nan, math.inf, -math.inf
    with pytest.raises(ValueError, match=r"^x: expected finite values, received 3 NaN/inf"):
        warp(x, torch.eye(3).repeat(2, 1, 1))
    assert warp(x[:0], torch.eye(3)[None][:0]).shape == (0, 3, 8, 8)  # nothing to check


# --- gradients, compile, devices ----------------------------------------------------------------


def sampling_pixels(matrix: torch.Tensor, in_size: tuple, out_size: tuple) -> torch.Tensor:
    """Input pixel coordinates (u, v) of every output pixel centre, eq. 1, ``(B, h·w, 2)``."""
    ys, xs = torch.meshgrid(
        (2 * torch.arange(out_size[0], dtype=matrix.dtype) + 1) / out_size[0] - 1,
        (2 * torch.arange(out_size[1], dtype=matrix.dtype) + 1) / out_size[1] - 1,
        indexing="ij",
    )
    points = torch.stack([xs.flatten(), ys.flatten(), torch.ones(xs.numel(), dtype=xs.dtype)])
    mapped = matrix @ points
    normalised = mapped[:, :2] / mapped[:, 2:]
    sizes = torch.tensor([in_size[1], in_size[0]], dtype=matrix.dtype)[:, None]
    return (((normalised + 1) * sizes - 1) / 2).transpose(1, 2)


def away_from_kinks(params: torch.Tensor, kind: str, in_size: tuple, out_size: tuple) -> None:
    """Bilinear sampling is not differentiable where a coordinate is an integer: keep clear."""
    pixels = sampling_pixels(transform_matrix(params, kind), in_size, out_size)
    assert (pixels - pixels.round()).abs().min() > 1e-4  # gradcheck steps move them ~1e-5


def jittered_params(kind: str) -> torch.Tensor:
    jitter = torch.rand(2, TRANSFORM_PARAMETERS[kind], generator=torch.Generator().manual_seed(9))
    return torch.tensor(KNOWN_PARAMS[kind], dtype=torch.float64) + 0.02 * jitter.double()


@pytest.mark.parametrize("kind", ["similarity", "affine", "projective"])
def test_warp_gradcheck_wrt_matrix_and_image(kind: str) -> None:
    x = smooth_shapes(2, 2, 7, 6, seed=9, dtype=torch.float64)
    params = jittered_params(kind)
    away_from_kinks(params, kind, (7, 6), (5, 4))
    matrix = transform_matrix(params, kind)
    gradcheck_f64(lambda m: warp(x, m, (5, 4)), matrix)
    gradcheck_f64(lambda image, m: warp(image, m, (5, 4)), (x, matrix))


@pytest.mark.parametrize("kind", ["translation", "similarity", "affine", "projective"])
def test_gradcheck_through_transform_matrix(kind: str) -> None:
    x = smooth_shapes(2, 1, 7, 6, seed=10, dtype=torch.float64)
    params = jittered_params(kind) if kind in KNOWN_PARAMS else torch.tensor([[0.1, -0.05]] * 2)
    away_from_kinks(params.double(), kind, (7, 6), (5, 4))
    gradcheck_f64(lambda p: warp(x, transform_matrix(p, kind), (5, 4)), params)


class _Warp(nn.Module):
    def __init__(self, kind: str, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.params = nn.Parameter(torch.tensor(KNOWN_PARAMS[kind]))
        self.kind, self.output_size = kind, output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return warp(x, transform_matrix(self.params, self.kind), self.output_size)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["similarity", "projective"])
def test_warp_cuda_parity(kind: str) -> None:
    assert_cuda_parity(_Warp(kind, (12, 10)), smooth_shapes(2, 3, 16, 14, seed=11))


def test_warp_runs_on_device(device: torch.device) -> None:
    x = smooth_shapes(2, 3, 16, 14, seed=12).to(device)
    matrix = batch_matrices("projective", torch.float32).to(device)
    out = warp(x, matrix, (12, 10))
    assert out.device.type == device.type
    torch.testing.assert_close(out.cpu(), warp(x.cpu(), matrix.cpu(), (12, 10)), atol=1e-5, rtol=0)


# --- similarity_from_landmarks ------------------------------------------------------------------


def test_arcface_template_constant() -> None:
    assert ARCFACE_TEMPLATE_112.shape == (5, 2)
    left_eye, right_eye, nose, left_mouth, right_mouth = ARCFACE_TEMPLATE_112.tolist()
    assert left_eye[0] < nose[0] < right_eye[0]
    assert left_mouth[0] < right_mouth[0]
    assert left_eye[1] < nose[1] < left_mouth[1]  # eyes above the nose above the mouth
    assert abs(ARCFACE_TEMPLATE_112[:, 0].mean() - 56) < 1  # centred horizontally in 112


def test_similarity_from_landmarks_recovers_a_known_similarity() -> None:
    params = torch.tensor([[1.7, 0.4, 30.0, -12.0], [0.6, -1.0, 5.0, 8.0]])
    true = transform_matrix(params, "similarity").double()
    template = ARCFACE_TEMPLATE_112.double()
    # src such that true(src) = template: src = true⁻¹(template)
    homogeneous = torch.cat([template, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    src = torch.einsum("bij,nj->bni", torch.linalg.inv(true), homogeneous)[..., :2]
    torch.testing.assert_close(similarity_from_landmarks(src), true)


def test_similarity_from_landmarks_matches_svd_umeyama() -> None:
    generator = torch.Generator().manual_seed(14)
    src = torch.rand(6, 7, 2, generator=generator, dtype=torch.float64) * 100
    dst = torch.rand(7, 2, generator=generator, dtype=torch.float64) * 100  # noisy: no exact fit
    got = similarity_from_landmarks(src, dst)
    for b in range(6):
        expected = reference_umeyama(src[b].numpy(), dst.numpy())
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-10)
    batched_dst = dst.expand(6, 7, 2).clone()
    torch.testing.assert_close(similarity_from_landmarks(src, batched_dst), got)


def test_similarity_from_landmarks_degenerate_and_errors() -> None:
    same = torch.full((1, 5, 2), 40.0)
    out = similarity_from_landmarks(same)
    assert torch.isfinite(out).all()
    assert out[0, :2, :2].abs().max() == 0
    with pytest.raises(ValueError, match=r"dst: .*size 5 at dim 0.*\(4, 2\)"):
        similarity_from_landmarks(torch.rand(2, 5, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"src: expected at least 2 landmarks"):
        similarity_from_landmarks(torch.rand(2, 1, 2), torch.rand(1, 2))
    with pytest.raises(ValueError, match=r"src: .*\(2, 5, 3\)"):
        similarity_from_landmarks(torch.rand(2, 5, 3))


def test_similarity_from_landmarks_gradcheck() -> None:
    src = ARCFACE_TEMPLATE_112.double()[None] * 1.3 + torch.rand(2, 5, 2, dtype=torch.float64)
    gradcheck_f64(similarity_from_landmarks, src)


def test_landmark_alignment_puts_landmarks_on_the_template() -> None:
    """Classical 5-point alignment end to end: blobs at the detected landmarks of a 160×140
    image land on the ArcFace template after warp(from_pixel_matrix(similarity_from_landmarks))."""
    true = transform_matrix(torch.tensor([[1.25, -0.2, 20.0, 15.0]]), "similarity").double()
    template = ARCFACE_TEMPLATE_112.double()
    homogeneous = torch.cat([template, torch.ones(5, 1, dtype=torch.float64)], dim=1)
    landmarks = (homogeneous @ true[0].T)[:, :2]  # pixel positions in the big image
    rows = torch.arange(160, dtype=torch.float64)[:, None, None]
    cols = torch.arange(140, dtype=torch.float64)[None, :, None]
    distance2 = (cols - landmarks[:, 0]) ** 2 + (rows - landmarks[:, 1]) ** 2  # (H, W, 5)
    image = torch.exp(-distance2 / (2 * 2.5**2)).permute(2, 0, 1)[None]  # one channel per blob
    pixel = similarity_from_landmarks(landmarks[None])
    aligned = warp(image, from_pixel_matrix(pixel, (160, 140), (112, 112)), (112, 112))
    # sub-pixel blob centres: intensity-weighted mean position per channel
    weights = aligned[0] / aligned[0].sum(dim=(-2, -1), keepdim=True)
    ys = (weights * torch.arange(112, dtype=torch.float64)[:, None]).sum(dim=(-2, -1))
    xs = (weights * torch.arange(112, dtype=torch.float64)[None, :]).sum(dim=(-2, -1))
    torch.testing.assert_close(torch.stack([xs, ys], dim=-1), template, atol=0.05, rtol=0)


# --- robustness (issue 13): low precision, degenerate landmarks and matrices, bad data ---------


def _landmarks_to_aligned(landmarks: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    pixel = similarity_from_landmarks(landmarks)
    return warp(image, from_pixel_matrix(pixel, tuple(image.shape[-2:]), (24, 24)), (24, 24))


@pytest.mark.dtypes("float16", "bfloat16")
def test_pixel_matrices_stay_float32_under_autocast(dtype: torch.dtype) -> None:
    """Under autocast the matrix products would run in half precision: they must not."""
    image = smooth_shapes(2, 3, 40, 36, seed=11)
    landmarks = ARCFACE_TEMPLATE_112[None].repeat(2, 1, 1) * 0.3 + torch.rand(2, 5, 2)
    reference = _landmarks_to_aligned(landmarks, image)
    landmarks = landmarks.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        pixel = similarity_from_landmarks(landmarks)
        matrix = from_pixel_matrix(pixel, (40, 36), (24, 24))
        back = to_pixel_matrix(matrix, (40, 36), (24, 24))
        aligned = warp(image, matrix, (24, 24))
    assert pixel.dtype == matrix.dtype == back.dtype == aligned.dtype == torch.float32
    torch.testing.assert_close(aligned, reference, atol=1e-5, rtol=0)  # was off by up to 0.95
    aligned.sum().backward()
    assert torch.isfinite(landmarks.grad).all()  # was NaN with fp16


@pytest.mark.dtypes("float16", "bfloat16")
def test_pixel_matrices_accept_half_precision_input(dtype: torch.dtype) -> None:
    matrix = batch_matrices("projective", torch.float32).to(dtype)
    pixel = to_pixel_matrix(matrix, (20, 16), (12, 12))
    assert pixel.dtype == torch.float32
    torch.testing.assert_close(pixel, to_pixel_matrix(matrix.float(), (20, 16), (12, 12)))
    back = from_pixel_matrix(pixel.to(dtype), (20, 16), (12, 12))
    assert back.dtype == torch.float32
    landmarks = similarity_from_landmarks(ARCFACE_TEMPLATE_112[None].to(dtype))
    assert landmarks.dtype == torch.float32


@pytest.mark.parametrize("points", ["coincident", "all_zero", "nearly_coincident"])
def test_similarity_from_coincident_landmarks_has_finite_gradients(points: str) -> None:
    src = {
        "coincident": torch.full((2, 5, 2), 37.5),
        "all_zero": torch.zeros(2, 5, 2),
        "nearly_coincident": 37.5 + 1e-6 * torch.rand(2, 5, 2, generator=torch.Generator()),
    }[points].requires_grad_(True)
    matrix = similarity_from_landmarks(src)
    matrix.square().sum().backward()
    assert torch.isfinite(matrix).all()
    assert torch.isfinite(src.grad).all()  # was NaN
    assert matrix[:, :2, :2].abs().max() == 0  # a = b = 0: a singular matrix, as documented
    with pytest.raises(ValueError, match=r"pixel_matrix: expected invertible .* singular"):
        from_pixel_matrix(matrix.detach(), (112, 112), (112, 112))


def test_params_from_matrix_refuses_degenerate_matrices() -> None:
    matrix = torch.eye(3).repeat(3, 1, 1)
    matrix[1, 2, 2] = 0.0  # θ33 = 0: no θ33 = 1 form
    with pytest.raises(ValueError, match=r"^matrix: expected θ33 ≠ 0 .* received 1 matrices"):
        params_from_matrix(matrix, "projective")
    params_from_matrix(matrix, "affine")  # θ33 plays no part there
    matrix[1, 2, 2] = math.nan
    for kind in TRANSFORM_PARAMETERS:
        with pytest.raises(ValueError, match=r"^matrix: expected finite values"):
            params_from_matrix(matrix, kind)


def test_non_finite_images_and_matrices_are_refused_by_name() -> None:
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"^x: expected finite values, received 1 NaN/inf"):
        warp(x, torch.eye(3)[None])
    bad = torch.eye(3)[None].clone()
    bad[0, 0, 1] = math.inf
    with pytest.raises(ValueError, match=r"^matrix: expected finite values"):
        to_pixel_matrix(bad, (4, 4), (4, 4))
    with pytest.raises(ValueError, match=r"^pixel_matrix: expected finite values"):
        from_pixel_matrix(bad, (4, 4), (4, 4))
    with pytest.raises(ValueError, match=r"^src: expected finite values"):
        similarity_from_landmarks(torch.full((1, 5, 2), math.nan))


def test_geometry_on_meta_tensors_gives_shapes_only() -> None:
    """Shape-only use (e.g. tracing a model's sizes): no data is read, shapes come out right."""
    matrix = torch.empty(2, 3, 3, device="meta")
    assert warp(torch.empty(2, 3, 8, 8, device="meta"), matrix, (4, 5)).shape == (2, 3, 4, 5)
    assert to_pixel_matrix(matrix, (8, 8), (4, 4)).shape == (2, 3, 3)
    assert params_from_matrix(matrix, "projective").shape == (2, 8)
    assert similarity_from_landmarks(torch.empty(2, 5, 2, device="meta")).shape == (2, 3, 3)
