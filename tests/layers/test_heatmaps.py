"""Heatmap rendering/decoding, landmark index sets and HeatmapStacker (FAN-Face §3.2, eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64
from hypothesis import given, settings
from hypothesis import strategies as st

from faceaux.conventions import FIVE_POINT, INTERNAL_51, LANDMARKS_68
from faceaux.layers.heatmaps import HeatmapStacker, heatmaps_to_landmarks, render_heatmaps


def reference_render(landmarks: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """Pixel by pixel, straight from the formula."""
    batch, num, _ = landmarks.shape
    height, width = size
    out = torch.zeros(batch, num, height, width, dtype=torch.float64)
    for b in range(batch):
        for n in range(num):
            x, y = (float(c) for c in landmarks[b, n])
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
                continue
            for v in range(height):
                for u in range(width):
                    out[b, n, v, u] = math.exp(-((u - x) ** 2 + (v - y) ** 2) / (2 * sigma**2))
    return out


def test_index_sets() -> None:
    assert tuple(range(68)) == LANDMARKS_68
    assert len(INTERNAL_51) == 51
    assert set(INTERNAL_51) == set(range(68)) - set(range(17))  # no jaw line 0..16
    assert FIVE_POINT == (36, 45, 30, 48, 54)


def test_render_matches_reference(dtype: torch.dtype) -> None:
    landmarks = torch.tensor(
        [[[3.0, 2.0], [0.4, 5.7], [8.2, -0.3]], [[-2.0, 1.0], [4.5, 6.5], [9.49, 7.49]]],
        dtype=dtype,
    )
    maps = render_heatmaps(landmarks, size=(8, 10), sigma=1.5)
    assert maps.shape == (2, 3, 8, 10)
    assert maps.dtype == dtype
    torch.testing.assert_close(maps.double(), reference_render(landmarks, (8, 10), 1.5))


def test_render_peak_is_one_at_the_landmark() -> None:
    maps = render_heatmaps(torch.tensor([[[5.0, 3.0]]]), size=(7, 9), sigma=2.0)
    assert maps.max().item() == 1.0
    assert maps[0, 0, 3, 5].item() == 1.0


def test_render_outside_and_nonfinite_give_zero_maps_and_finite_gradients() -> None:
    landmarks = torch.tensor(
        [[[-0.6, 2.0], [3.0, 7.6], [float("nan"), 1.0], [2.0, float("inf")], [1.0, 1.0]]],
        requires_grad=True,
    )
    maps = render_heatmaps(landmarks, size=(8, 8))
    assert torch.all(maps[0, :4] == 0)
    assert maps[0, 4].max() == 1.0
    maps.sum().backward()
    assert torch.isfinite(landmarks.grad).all()
    assert torch.all(landmarks.grad[0, :4] == 0)


def test_render_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"landmarks.*\(B, N, 2\).*\(2, 3\)"):
        render_heatmaps(torch.zeros(2, 3), size=(4, 4))
    with pytest.raises(ValueError, match="size"):
        render_heatmaps(torch.zeros(1, 1, 2), size=(0, 4))


def test_render_gradcheck() -> None:
    landmarks = torch.tensor([[[2.3, 1.7], [4.1, 3.2]]])
    gradcheck_f64(lambda p: render_heatmaps(p, size=(6, 7), sigma=1.2), landmarks)


def test_argmax_quarter_pixel_refinement_matches_reference() -> None:
    torch.manual_seed(1)
    heatmaps = torch.rand(2, 5, 7, 9)
    points, confidence = heatmaps_to_landmarks(heatmaps, method="argmax")
    for b in range(2):
        for n in range(5):
            h = heatmaps[b, n]
            flat_index = int(torch.argmax(h))
            row, col = divmod(flat_index, 9)
            x, y = float(col), float(row)
            if 0 < col < 8:
                x += 0.25 * float(torch.sign(h[row, col + 1] - h[row, col - 1]))
            if 0 < row < 6:
                y += 0.25 * float(torch.sign(h[row + 1, col] - h[row - 1, col]))
            assert points[b, n].tolist() == [x, y]
            assert confidence[b, n].item() == h.max().item()


@settings(max_examples=25, deadline=None)
@given(
    x=st.floats(1.0, 14.0, allow_nan=False),
    y=st.floats(1.0, 10.0, allow_nan=False),
)
def test_argmax_round_trip_within_a_quarter_pixel(x: float, y: float) -> None:
    maps = render_heatmaps(torch.tensor([[[x, y]]], dtype=torch.float64), size=(12, 16))
    points, _ = heatmaps_to_landmarks(maps)
    # Rounding to the nearest pixel then a quarter-pixel step: error at most 0.25 per axis
    # (+ a hair for ties at the half pixel).
    assert abs(points[0, 0, 0].item() - x) <= 0.25 + 1e-6
    assert abs(points[0, 0, 1].item() - y) <= 0.25 + 1e-6


def test_argmax_recovers_integer_landmarks_exactly() -> None:
    landmarks = torch.tensor([[[0.0, 0.0], [5.0, 3.0], [15.0, 11.0]]])
    points, confidence = heatmaps_to_landmarks(render_heatmaps(landmarks, size=(12, 16)))
    assert torch.equal(points, landmarks)
    assert torch.equal(confidence, torch.ones(1, 3))


def test_soft_argmax_matches_reference_and_is_differentiable() -> None:
    torch.manual_seed(2)
    heatmaps = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    points, confidence = heatmaps_to_landmarks(heatmaps, method="soft", beta=3.0)
    for b in range(2):
        for n in range(3):
            weights = torch.softmax(3.0 * heatmaps[b, n].flatten(), 0).view(5, 6)
            x = sum(weights[v, u] * u for v in range(5) for u in range(6))
            y = sum(weights[v, u] * v for v in range(5) for u in range(6))
            torch.testing.assert_close(points[b, n], torch.stack((x, y)))
    torch.testing.assert_close(confidence, heatmaps.flatten(2).amax(-1))
    small = heatmaps[:1, :2, :3, :4]
    gradcheck_f64(lambda h: heatmaps_to_landmarks(h, method="soft", beta=3.0)[0], small)


def test_soft_argmax_on_rendered_maps_finds_the_landmark() -> None:
    landmarks = torch.tensor([[[20.0, 30.0], [40.3, 10.0]]], dtype=torch.float64)
    maps = render_heatmaps(landmarks, size=(64, 64), sigma=2.0)
    points, _ = heatmaps_to_landmarks(maps, method="soft")
    # The zero background weighs e^-20 per pixel: it pulls the estimate by < 1e-3 pixel.
    torch.testing.assert_close(points[0, 0], landmarks[0, 0], atol=1e-3, rtol=0)
    assert (points[0, 1] - landmarks[0, 1]).abs().max() < 0.1


def test_decode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"heatmaps.*\(B, N, H, W\)"):
        heatmaps_to_landmarks(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="method"):
        heatmaps_to_landmarks(torch.zeros(1, 1, 4, 4), method="mean")


def test_stacker_matches_reference(device: torch.device, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 12, 10, device=device, dtype=dtype)
    heatmaps = torch.randn(2, 68, 8, 8, device=device, dtype=dtype)
    out = HeatmapStacker()(x, heatmaps)
    assert out.shape == (2, 3 + 51, 12, 10)
    torch.testing.assert_close(out[:, :3], x)
    for k, index in enumerate(INTERNAL_51):
        resized = F.interpolate(
            heatmaps[:, index : index + 1], size=(12, 10), mode="bilinear", align_corners=False
        ).clamp(min=0)
        expected = resized / resized.amax(dim=(-2, -1), keepdim=True)
        torch.testing.assert_close(out[:, 3 + k : 4 + k], expected)
    assert out[:, 3:].min() >= 0
    torch.testing.assert_close(out[:, 3:].amax(dim=(-2, -1)), torch.ones_like(out[:, 3:, 0, 0]))


def test_stacker_options() -> None:
    x = torch.randn(1, 4, 6, 6)
    heatmaps = torch.rand(1, 5, 6, 6) * 3
    raw = HeatmapStacker(landmarks=None, normalize=None)(x, heatmaps)
    torch.testing.assert_close(raw, torch.cat((x, heatmaps), 1))  # same size: no resampling
    picked = HeatmapStacker(landmarks=(4, 0), normalize=None)(x, heatmaps)
    torch.testing.assert_close(picked[:, 4:], heatmaps[:, [4, 0]])
    sized = HeatmapStacker(landmarks=None, size=(3, 3), mode="nearest", normalize=None)
    out = sized(x, heatmaps)
    assert out.shape == (1, 9, 3, 3)
    torch.testing.assert_close(out[:, :4], F.interpolate(x, size=(3, 3), mode="nearest"))
    zero = HeatmapStacker(landmarks=None)(x, torch.zeros(1, 5, 6, 6))
    assert torch.equal(zero[:, 4:], torch.zeros(1, 5, 6, 6))


def test_stacker_rejects_bad_input() -> None:
    stacker = HeatmapStacker()
    with pytest.raises(ValueError, match=r"heatmaps.*batch size 2.*\(3, 68, 8, 8\)"):
        stacker(torch.zeros(2, 3, 8, 8), torch.zeros(3, 68, 8, 8))
    with pytest.raises(ValueError, match=r"index 67 is out of range.*\(2, 5, 8, 8\)"):
        stacker(torch.zeros(2, 3, 8, 8), torch.zeros(2, 5, 8, 8))
    with pytest.raises(ValueError, match="landmarks"):
        HeatmapStacker(landmarks=(-1, 2))
    with pytest.raises(ValueError, match=r"x.*\(B, C, H, W\)"):
        stacker(torch.zeros(3, 8, 8), torch.zeros(1, 68, 8, 8))


def test_stacker_gradcheck() -> None:
    stacker = HeatmapStacker(landmarks=(0, 2))
    gradcheck_f64(stacker, (torch.randn(1, 2, 5, 5), torch.rand(1, 3, 4, 4) + 0.1))


@pytest.mark.cuda
def test_stacker_cuda_parity() -> None:
    assert_cuda_parity(HeatmapStacker(), (torch.randn(2, 3, 16, 16), torch.rand(2, 68, 8, 8)))


def test_stacker_compiles() -> None:
    assert_compiles(
        HeatmapStacker(landmarks=(0, 1, 2)), (torch.randn(1, 3, 8, 8), torch.rand(1, 5, 4, 4))
    )


# --- robustness (issue 13) ----------------------------------------------------------------------


def test_stacker_all_zero_and_tiny_heatmaps_have_bounded_gradients():
    """Dividing by a peak clamped to the smallest float gave ~1e38 per entry and inf sums."""
    x = torch.rand(2, 3, 16, 16)
    heatmaps = torch.zeros(2, 68, 8, 8)
    heatmaps[1, :, 3, 3] = 1e-30  # a landmark "present" at 1e-30: no better than absent
    heatmaps.requires_grad_(True)
    out = HeatmapStacker()(x, heatmaps)
    assert out[:, 3:].abs().max() < 1e-20  # zero maps stay zero, tiny maps stay tiny
    out.sum().backward()
    assert torch.isfinite(heatmaps.grad).all()
    # 1 / the 1e-6 peak floor, times the 4 output pixels each input pixel feeds (8 → 16)
    assert heatmaps.grad.abs().max() <= 4e6


def test_stacker_normal_maps_still_peak_at_one():
    maps = render_heatmaps(torch.rand(2, 68, 2) * 7, (8, 8)) * 0.3
    out = HeatmapStacker(landmarks=None)(torch.rand(2, 3, 8, 8), maps)
    torch.testing.assert_close(out[:, 3:].amax(dim=(-2, -1)), torch.ones(2, 68))


@pytest.mark.parametrize("sigma", [math.nan, math.inf, 0.0, -1.0])
def test_render_heatmaps_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match=r"^sigma: expected a finite number > 0"):
        render_heatmaps(torch.rand(1, 2, 2), (4, 4), sigma=sigma)


@pytest.mark.parametrize("size", [(4.5, 4), (0, 4), (4,), "44"])
def test_render_heatmaps_rejects_bad_size(size):
    with pytest.raises(ValueError, match=r"^size: expected \(H, W\), two positive ints"):
        render_heatmaps(torch.rand(1, 2, 2), size)


@pytest.mark.parametrize("beta", [math.nan, math.inf, 0.0])
def test_soft_argmax_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match=r"^beta: expected a finite number > 0"):
        heatmaps_to_landmarks(torch.rand(1, 2, 4, 4), method="soft", beta=beta)


def test_non_finite_heatmaps_and_images_are_refused_by_name():
    maps = torch.rand(1, 68, 4, 4)
    maps[0, 5, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"^heatmaps: expected finite values"):
        heatmaps_to_landmarks(maps)
    with pytest.raises(ValueError, match=r"^heatmaps: expected finite values"):
        HeatmapStacker()(torch.rand(1, 3, 4, 4), maps)
    image = torch.rand(1, 3, 4, 4)
    image[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"^x: expected finite values"):
        HeatmapStacker()(image, torch.rand(1, 68, 4, 4))


def test_stacker_arguments_are_validated():
    with pytest.raises(ValueError, match=r"^mode: expected one of"):
        HeatmapStacker(mode="cubic")
    with pytest.raises(ValueError, match=r"^landmarks: expected a non-empty sequence"):
        HeatmapStacker(landmarks=[1, 2.5])
    with pytest.raises(ValueError, match=r"^size: expected \(H, W\)"):
        HeatmapStacker(size=(0, 3))
    assert HeatmapStacker(landmarks=range(3)).landmarks == (0, 1, 2)


def test_rendering_under_autocast_stays_in_the_landmarks_dtype():
    landmarks = torch.rand(2, 5, 2) * 15
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = render_heatmaps(landmarks, (16, 16))
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps, render_heatmaps(landmarks, (16, 16)))
