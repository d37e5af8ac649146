"""PartMaskPooling (FSENet eq. 6, Table 13) and StructureCorrelation (eq. 7) vs loop references."""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64

from faceaux import PartMaskPooling, StructureCorrelation, part_mask_pooling, structure_correlation


def reference_pooling(
    features: torch.Tensor,
    masks: torch.Tensor,
    mode: str,
    normalize: bool,
    eps: float = 1e-6,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Eq. 6 and the Table 13 variants, one (sample, part, channel) at a time: "sum-weighted"
    weights by the probabilities; "mean-pooling" / "max-pooling" take the average / maximum of
    the features over the masked area (probability ≥ threshold), 0 for an empty area."""
    batch, channels, height, width = features.shape
    out = torch.empty(batch, masks.shape[1], channels, dtype=features.dtype)
    for b in range(batch):
        for k in range(masks.shape[1]):
            mass = float(masks[b, k].sum())
            area = [
                (i, j)
                for i in range(height)
                for j in range(width)
                if masks[b, k, i, j] >= threshold
            ]
            for c in range(channels):
                if mode == "weighted":
                    value = float((features[b, c] * masks[b, k]).sum())
                elif not area:
                    value = 0.0
                elif mode == "mean":
                    value = sum(float(features[b, c, i, j]) for i, j in area) / len(area)
                else:
                    value = max(float(features[b, c, i, j]) for i, j in area)
                out[b, k, c] = value / (mass + eps) if normalize else value
    return out


def reference_block_pool(masks: torch.Tensor, factor: int, reduce: str) -> torch.Tensor:
    batch, parts, height, width = masks.shape
    out = torch.empty(batch, parts, height // factor, width // factor, dtype=masks.dtype)
    for i in range(height // factor):
        for j in range(width // factor):
            block = masks[:, :, i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
            out[:, :, i, j] = block.amax(dim=(2, 3)) if reduce == "max" else block.mean((2, 3))
    return out


def reference_correlation(parts: torch.Tensor) -> torch.Tensor:
    """Eq. 7: d_n = [L_n, D_1, A_1, ..., D_{K-1}, A_{K-1}] over the other parts, ascending."""
    batch, num_parts, _ = parts.shape
    rows = []
    for b in range(batch):
        sample_rows = []
        for n in range(num_parts):
            row = [float(v) for v in parts[b, n]]
            for i in range(num_parts):
                if i == n:
                    continue
                a, c = parts[b, n].tolist(), parts[b, i].tolist()
                distance = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, c, strict=True)))
                dot = sum(x * y for x, y in zip(a, c, strict=True))
                norm_a = math.sqrt(sum(x * x for x in a))
                norm_c = math.sqrt(sum(y * y for y in c))
                row += [distance, dot / (norm_a * norm_c)]
            sample_rows.append(row)
        rows.append(sample_rows)
    return torch.tensor(rows, dtype=parts.dtype)


@pytest.mark.parametrize("mode", ["weighted", "mean", "max"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooling_matches_reference(mode: str, normalize: bool, dtype: torch.dtype) -> None:
    features = torch.randn(2, 3, 4, 5, dtype=dtype)
    masks = torch.rand(2, 4, 4, 5, dtype=dtype)
    out = part_mask_pooling(features, masks, mode=mode, normalize=normalize)
    assert out.shape == (2, 4, 3)
    tol = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, reference_pooling(features, masks, mode, normalize), **tol)


def test_mean_pooling_is_not_a_rescaled_weighted_sum() -> None:
    """Table 13's mean-pooling averages the features over the masked area; it used to be the
    weighted sum divided by H·W, i.e. "sum-weighted" up to a constant, so its rows could not
    be reproduced."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 6, 6, generator=generator, dtype=torch.float64)
    masks = torch.rand(2, 3, 6, 6, generator=generator, dtype=torch.float64)
    for normalize in (True, False):
        weighted = part_mask_pooling(features, masks, mode="weighted", normalize=normalize)
        mean = part_mask_pooling(features, masks, mode="mean", normalize=normalize)
        ratio = mean / weighted  # one constant per part if mean were a rescaled weighted sum
        assert (ratio.amax(dim=-1) - ratio.amin(dim=-1)).abs().min() > 1e-3
        assert not torch.allclose(mean, weighted / 36)
    # on a one-hot mask the mean is the plain average of the labelled region
    one_hot = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    one_hot[0, 0, 1:4, 2:5] = 1.0
    region = features[:1, :, 1:4, 2:5]
    mean = part_mask_pooling(features[:1], one_hot, mode="mean", normalize=False)
    torch.testing.assert_close(mean[0, 0], region.mean(dim=(2, 3))[0])
    top = part_mask_pooling(features[:1], one_hot, mode="max", normalize=False)
    torch.testing.assert_close(top[0, 0], region.amax(dim=(2, 3))[0])
    normalized = part_mask_pooling(features[:1], one_hot, mode="mean")
    torch.testing.assert_close(normalized, mean / (9 + 1e-6))  # "Norm": / probability sum
    # the area threshold is a knob; an empty area gives zeros
    assert part_mask_pooling(features, masks * 0.4, mode="max").abs().max() == 0
    low = part_mask_pooling(features, masks, mode="mean", area_threshold=0.1)
    torch.testing.assert_close(low, reference_pooling(features, masks, "mean", True, threshold=0.1))
    with pytest.raises(ValueError, match="area_threshold: expected a positive float"):
        PartMaskPooling(mode="mean", area_threshold=0.0)


@pytest.mark.parametrize("activation", [None, "softmax", "sigmoid"])
def test_activation_then_selection(activation: str | None) -> None:
    features = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    scores = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    if activation is None:
        scores = scores.abs()
    module = PartMaskPooling(parts=[3, 0, 4], mask_activation=activation)
    if activation == "softmax":
        exp = scores.exp()
        probabilities = exp / exp.sum(dim=1, keepdim=True)  # over all 5 classes
    elif activation == "sigmoid":
        probabilities = 1 / (1 + (-scores).exp())
    else:
        probabilities = scores
    expected = reference_pooling(features, probabilities[:, [3, 0, 4]], "weighted", True)
    torch.testing.assert_close(module(features, scores), expected)


@pytest.mark.parametrize("resize", ["max", "avg", "bilinear"])
def test_mask_resize(resize: str) -> None:
    features = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    masks = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    # Bilinear halving (align_corners=False) samples between the pixels of each 2x2 block.
    pooled = reference_block_pool(masks, 2, "max" if resize == "max" else "avg")
    expected = reference_pooling(features, pooled, "weighted", True)
    out = part_mask_pooling(features, masks, mask_resize=resize)
    torch.testing.assert_close(out, expected)


def test_parts_accept_integer_like_indices() -> None:
    features, masks = torch.randn(1, 2, 3, 3), torch.rand(1, 4, 3, 3)
    expected = part_mask_pooling(features, masks, parts=[2, 0])
    for parts in ((2, 0), torch.tensor([2, 0]), range(2, -1, -2)):
        torch.testing.assert_close(part_mask_pooling(features, masks, parts=parts), expected)


def test_paper_sizes() -> None:
    """128x128 parsing maps max-pooled onto a 28x28 map, six of eleven classes selected."""
    module = PartMaskPooling(parts=[1, 2, 3, 4, 5, 6], mask_activation="softmax")
    features, masks = torch.randn(2, 16, 28, 28), torch.randn(2, 11, 128, 128)
    out = module(features, masks)
    assert out.shape == (2, 6, 16)
    probabilities = masks.softmax(dim=1)[:, 1:7]
    resized = torch.nn.functional.adaptive_max_pool2d(probabilities, 28)
    expected = reference_pooling(features.double(), resized.double(), "weighted", True).float()
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_normalised_weighted_pooling_of_constant_features_is_the_constant() -> None:
    features = torch.full((2, 3, 5, 5), 2.5)
    masks = torch.rand(2, 4, 5, 5)
    torch.testing.assert_close(part_mask_pooling(features, masks), torch.full((2, 4, 3), 2.5))


def test_empty_mask_gives_zero_and_finite_gradient() -> None:
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    masks = torch.rand(1, 2, 4, 4)
    masks[0, 1] = 0.0
    masks.requires_grad_(True)
    out = part_mask_pooling(features, masks)
    assert torch.equal(out[0, 1], torch.zeros(3))
    out.sum().backward()
    assert torch.isfinite(features.grad).all()
    assert torch.isfinite(masks.grad).all()


@pytest.mark.parametrize("mode", ["weighted", "mean", "max"])
def test_pooling_gradcheck(mode: str) -> None:
    def pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return part_mask_pooling(features, masks, mode=mode, mask_activation="sigmoid")

    gradcheck_f64(pool, (torch.randn(2, 2, 2, 2), torch.randn(2, 2, 4, 4)))


def test_pooling_works_on_device(device: torch.device) -> None:
    out = PartMaskPooling()(
        torch.randn(2, 3, 4, 4, device=device), torch.rand(2, 2, 8, 8, device=device)
    )
    assert out.device.type == device.type


@pytest.mark.cuda
def test_pooling_cuda_parity() -> None:
    module = PartMaskPooling(parts=[0, 2], mask_activation="softmax", mask_resize="bilinear")
    assert_cuda_parity(module, (torch.randn(2, 8, 7, 7), torch.randn(2, 4, 14, 14)))


def test_pooling_compiles() -> None:
    module = PartMaskPooling(parts=[1, 0], mask_activation="softmax")
    assert_compiles(module, (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: part_mask_pooling(torch.randn(2, 3, 4, 4), torch.rand(3, 2, 4, 4)), "masks"),
        (lambda: part_mask_pooling(torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4)), "masks"),
        (lambda: part_mask_pooling(torch.randn(3, 4, 4), torch.rand(2, 2, 4, 4)), "features"),
        (lambda: PartMaskPooling(parts=[0, 5])(torch.randn(2, 3, 4, 4), torch.rand(2, 5, 4, 4)),
         "parts"),
        (lambda: PartMaskPooling(parts=[-1]), "parts"),
        (lambda: PartMaskPooling(parts=[0.5]), "parts"),
        (lambda: PartMaskPooling(parts=[True]), "parts"),
        (lambda: PartMaskPooling(parts=3), "parts"),
        (lambda: PartMaskPooling(parts=[]), "parts"),
        (lambda: PartMaskPooling(mode="sum"), "mode"),
        (lambda: PartMaskPooling(mask_activation="relu"), "mask_activation"),
        (lambda: PartMaskPooling(mask_resize="nearest"), "mask_resize"),
        (lambda: part_mask_pooling(torch.randn(2, 3, 4, 4), -torch.rand(2, 2, 4, 4)), "masks"),
    ],
)  # fmt: skip
def test_pooling_bad_input_names_the_argument(call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        call()


def test_pooling_error_messages_show_shapes() -> None:
    with pytest.raises(ValueError, match=r"batch size 2.*received shape \(3, 2, 4, 4\)"):
        part_mask_pooling(torch.randn(2, 3, 4, 4), torch.rand(3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"0\.\.4 .*\(2, 5, 4, 4\)\), received index 5"):
        part_mask_pooling(torch.randn(2, 3, 4, 4), torch.rand(2, 5, 4, 4), parts=[5])
    with pytest.raises(ValueError, match=r"non-negative.*minimum -"):
        part_mask_pooling(torch.randn(2, 3, 4, 4), torch.rand(2, 2, 4, 4) - 0.5)


def test_negative_masks_are_allowed_where_the_issue_allows_them() -> None:
    features, masks = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4)
    assert part_mask_pooling(features, masks, mask_activation="softmax").shape == (2, 2, 3)
    unnormalised = part_mask_pooling(features, masks, normalize=False)
    torch.testing.assert_close(
        unnormalised, reference_pooling(features, masks, "weighted", False), atol=1e-5, rtol=1e-5
    )


def test_correlation_paper_size_and_layout() -> None:
    parts = torch.randn(2, 6, 128, dtype=torch.float64)
    out = StructureCorrelation()(parts)
    assert out.shape == (2, 828)
    expected = reference_correlation(parts)
    torch.testing.assert_close(out, expected.reshape(2, -1))
    rows = StructureCorrelation(flatten=False)(parts)
    assert rows.shape == (2, 6, 138)
    torch.testing.assert_close(rows, expected)


def test_correlation_interleaving_on_a_hand_example() -> None:
    parts = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
    out = structure_correlation(parts, flatten=False)
    root5, root13 = math.sqrt(5.0), math.sqrt(13.0)
    expected = torch.tensor(
        [
            [
                [1.0, 0.0, root5, 0.0, 2.0, 1.0],  # part 0 vs parts 1, 2
                [0.0, 2.0, root5, 0.0, root13, 0.0],  # part 1 vs parts 0, 2
                [3.0, 0.0, 2.0, 1.0, root13, 0.0],  # part 2 vs parts 0, 1
            ]
        ]
    )
    torch.testing.assert_close(out, expected)


def test_correlation_matches_reference(dtype: torch.dtype) -> None:
    parts = torch.randn(3, 4, 5, dtype=dtype)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(
        structure_correlation(parts), reference_correlation(parts).reshape(3, -1), **tol
    )


def test_correlation_identical_and_zero_parts_have_finite_gradients() -> None:
    parts = torch.randn(2, 4, 6, dtype=torch.float64)
    parts[0, 1] = parts[0, 0]
    parts[1, 2] = 0.0
    parts.requires_grad_(True)
    rows = structure_correlation(parts, flatten=False)
    assert rows[0, 0, 6] == 0.0  # D between parts 0 and 1
    assert rows[0, 1, 6] == 0.0
    torch.testing.assert_close(rows[0, 0, 7], torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(rows[1, 2, 7::2], torch.zeros(3, dtype=torch.float64))  # A of zero part
    (rows * torch.randn_like(rows)).sum().backward()
    assert torch.isfinite(parts.grad).all()


def test_correlation_single_part() -> None:
    parts = torch.randn(2, 1, 5)
    torch.testing.assert_close(structure_correlation(parts), parts.reshape(2, 5))


def test_correlation_bfloat16_keeps_dtype() -> None:
    parts = torch.randn(2, 6, 16)
    out = structure_correlation(parts.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), structure_correlation(parts), atol=0.1, rtol=0.05)


def test_correlation_gradcheck() -> None:
    gradcheck_f64(structure_correlation, torch.randn(2, 4, 5))


def test_correlation_works_on_device(device: torch.device) -> None:
    assert StructureCorrelation()(torch.randn(2, 3, 4, device=device)).device.type == device.type


@pytest.mark.cuda
def test_correlation_cuda_parity() -> None:
    assert_cuda_parity(StructureCorrelation(), torch.randn(4, 6, 32))


def test_correlation_compiles() -> None:
    assert_compiles(StructureCorrelation(), torch.randn(2, 3, 4))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: structure_correlation(torch.randn(2, 6)), "parts"),
        (lambda: structure_correlation(torch.ones(2, 3, 4, dtype=torch.long)), "parts"),
        (lambda: StructureCorrelation(eps=-1.0), "eps"),
    ],
)
def test_correlation_bad_input_names_the_argument(call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        call()


# --- robustness (issue 13) ----------------------------------------------------------------------


@pytest.mark.parametrize("flatten", [True, False])
def test_structure_correlation_empty_batch(flatten):
    parts = torch.randn(0, 6, 16, requires_grad=True)
    out = structure_correlation(parts, flatten=flatten)
    assert out.shape == ((0, 6 * 26) if flatten else (0, 6, 26))
    assert StructureCorrelation(flatten=flatten)(parts).shape == out.shape
    out.sum().backward()


def test_structure_correlation_does_not_overflow():
    parts = torch.randn(2, 4, 8)
    big = (parts * 1e20).requires_grad_(True)
    out = structure_correlation(big, flatten=False)
    expected = structure_correlation(parts, flatten=False)
    torch.testing.assert_close(out[..., :8] / 1e20, expected[..., :8])
    torch.testing.assert_close(out[..., 8::2] / 1e20, expected[..., 8::2])  # distances scale
    torch.testing.assert_close(out[..., 9::2], expected[..., 9::2])  # cosines do not
    out.sum().backward()
    assert torch.isfinite(big.grad).all()


def test_non_finite_parts_features_and_masks_are_refused_by_name():
    parts = torch.randn(2, 4, 8)
    parts[1, 2, 3] = math.nan
    with pytest.raises(ValueError, match=r"^parts: expected finite values"):
        structure_correlation(parts)
    features, masks = torch.randn(2, 4, 5, 5), torch.rand(2, 3, 5, 5)
    features[0, 0, 0, 0] = math.inf
    with pytest.raises(ValueError, match=r"^features: expected finite values"):
        part_mask_pooling(features, masks)
    masks[1, 1, 1, 1] = math.nan
    with pytest.raises(ValueError, match=r"^masks: expected finite values"):
        part_mask_pooling(torch.randn(2, 4, 5, 5), masks, mask_activation="softmax")


def test_part_mask_pooling_empty_batch_and_bad_eps():
    out = part_mask_pooling(torch.randn(0, 4, 5, 5), torch.rand(0, 3, 10, 10))
    assert out.shape == (0, 3, 4)
    for eps in (math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match=r"^eps: expected a positive float"):
            part_mask_pooling(torch.randn(1, 4, 5, 5), torch.rand(1, 3, 5, 5), eps=eps)
        with pytest.raises(ValueError, match=r"^eps: expected a positive float"):
            StructureCorrelation(eps=eps)


def test_parts_on_meta_tensors_give_shapes_only():
    features = torch.empty(2, 16, 7, 7, device="meta")
    masks = torch.empty(2, 11, 28, 28, device="meta")
    assert part_mask_pooling(features, masks, parts=[1, 2, 3]).shape == (2, 3, 16)
    assert structure_correlation(torch.empty(2, 3, 16, device="meta")).shape == (2, 3 * 20)
