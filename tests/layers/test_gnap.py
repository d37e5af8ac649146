"""GNAP and norm_aware_reweight against a loop reference of eqs. 1-3, plus its invariances."""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from faceaux import GNAP, norm_aware_reweight
from faceaux.layers.gnap import FixedGammaBatchNorm, faster_fc_param_groups


def reference_reweight(
    x: torch.Tensor, eps: float = 1e-6, batch_mean: bool = False
) -> torch.Tensor:
    """Eqs. 1-3 written out with loops over samples and positions; ``batch_mean``: eq. 2's
    mean over every position of every sample (InsightFace's ``mx.sym.mean(spatial_sqrt)``)."""
    batch, channels, height, width = x.shape
    out = torch.empty_like(x)
    norms = [
        [
            [
                math.sqrt(sum(float(x[b, c, i, j]) ** 2 for c in range(channels)))
                for j in range(width)
            ]
            for i in range(height)
        ]
        for b in range(batch)
    ]
    sums = [sum(sum(row) for row in sample) for sample in norms]
    for b in range(batch):
        mean = sum(sums) / (batch * height * width) if batch_mean else sums[b] / (height * width)
        for i in range(height):
            for j in range(width):
                out[b, :, i, j] = x[b, :, i, j] * (mean / max(norms[b][i][j], eps))
    return out


def reference_batch_norm(x: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Training-mode batch norm with gamma = 1: per channel over every other dimension."""
    dims = [d for d in range(x.ndim) if d != 1]
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - mean) / torch.sqrt(var + eps) + bias.view(shape)


def reference_gnap(gnap: GNAP, x: torch.Tensor) -> torch.Tensor:
    y = reference_batch_norm(x, gnap.input_norm.bias.detach())
    y = reference_reweight(y, gnap.eps)
    y = y.mean(dim=(2, 3))
    y = reference_batch_norm(y, gnap.output_norm.bias.detach())
    if gnap.projection is not None:
        y = y @ gnap.projection.weight.detach().T
        y = reference_batch_norm(y, gnap.projection_norm.bias.detach())
    return y


def randomise_biases(gnap: GNAP) -> GNAP:
    with torch.no_grad():
        for name, parameter in gnap.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    return gnap


def test_reweight_matches_loop_reference(dtype: torch.dtype) -> None:
    x = torch.randn(2, 5, 3, 4, dtype=dtype)
    x[1] *= 7.0
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(norm_aware_reweight(x), reference_reweight(x), **tol)


def test_reweight_mean_is_per_sample() -> None:
    """Scaling one sample must not change another sample's output (eq. 2 per sample)."""
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    scaled = x.clone()
    scaled[0] *= 100.0
    torch.testing.assert_close(norm_aware_reweight(scaled)[1:], norm_aware_reweight(x)[1:])
    local = norm_aware_reweight(x).norm(dim=1)
    torch.testing.assert_close(local, x.norm(dim=1).mean(dim=(1, 2), keepdim=True).expand_as(local))


def test_batch_norm_mean_is_insightface_gnap() -> None:
    """norm_mean="batch": one mean norm for the whole batch, so one sample's scale changes the
    others' outputs; the per-sample default stays eq. 2 as written."""
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    x[2] *= 5.0
    batch = norm_aware_reweight(x, norm_mean="batch")
    torch.testing.assert_close(batch, reference_reweight(x, batch_mean=True))
    torch.testing.assert_close(batch.norm(dim=1), x.norm(dim=1).mean().expand(3, 5, 5))
    assert not torch.allclose(batch, norm_aware_reweight(x))
    scaled = x.clone()
    scaled[0] *= 100.0
    assert not torch.allclose(norm_aware_reweight(scaled, norm_mean="batch")[1:], batch[1:])
    gnap = randomise_biases(GNAP(4, norm_mean="batch")).double()
    y = reference_batch_norm(x, gnap.input_norm.bias.detach())
    y = reference_reweight(y, gnap.eps, batch_mean=True).mean(dim=(2, 3))
    torch.testing.assert_close(gnap(x), reference_batch_norm(y, gnap.output_norm.bias.detach()))
    assert "norm_mean='batch'" in repr(gnap)
    with pytest.raises(ValueError, match="norm_mean: expected one of"):
        GNAP(4, norm_mean="channel")
    with pytest.raises(ValueError, match="norm_mean: expected one of"):
        norm_aware_reweight(x, norm_mean=None)


def test_faster_fc_param_groups() -> None:
    """§4 FasterFC: the classifier at 10× the learning rate, weight decay 5e-4 everywhere."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 8))
    classifier = nn.Linear(8, 100, bias=False)
    groups = faster_fc_param_groups(model, classifier, lr=0.1)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [
        (0.1, 5e-4),
        (pytest.approx(1.0), 5e-4),
    ]
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]
    assert [id(p) for p in groups[1]["params"]] == [id(classifier.weight)]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(1.0)]
    shared = nn.Sequential(model, classifier)  # the classifier inside the model: counted once
    groups = faster_fc_param_groups(shared, classifier, lr=0.1, classifier_lr_scale=5.0)
    assert sum(len(g["params"]) for g in groups) == len(list(shared.parameters()))
    assert groups[1]["lr"] == pytest.approx(0.5)
    assert len(faster_fc_param_groups(nn.ReLU(), classifier, lr=0.1)) == 1
    with pytest.raises(ValueError, match="lr: expected a positive finite number"):
        faster_fc_param_groups(model, classifier, lr=0.0)
    with pytest.raises(ValueError, match="weight_decay: expected a non-negative"):
        faster_fc_param_groups(model, classifier, lr=0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"classifier: expected an nn\.Module"):
        faster_fc_param_groups(model, classifier.weight, lr=0.1)


@pytest.mark.parametrize("out_features", [None, 6, 12])
def test_gnap_matches_reference(out_features: int | None) -> None:
    gnap = randomise_biases(GNAP(6, out_features=out_features)).double()
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64) * 3 + 1
    out = gnap(x)
    assert out.shape == (4, out_features or 6)
    torch.testing.assert_close(out, reference_gnap(gnap, x))


def test_gnap_eval_uses_running_statistics() -> None:
    gnap = GNAP(4).double()
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64) + 2
    gnap(x)
    gnap.eval()
    norm = gnap.input_norm.norm
    stats = norm.running_mean.view(1, -1, 1, 1), norm.running_var.view(1, -1, 1, 1)
    y = (x - stats[0]) / torch.sqrt(stats[1] + norm.eps)
    y = reference_reweight(y).mean(dim=(2, 3))
    out_norm = gnap.output_norm.norm
    y = (y - out_norm.running_mean) / torch.sqrt(out_norm.running_var + out_norm.eps)
    torch.testing.assert_close(gnap(x), y)
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))


def test_gamma_is_fixed_and_state_dict_is_plain() -> None:
    gnap = GNAP(8, out_features=4)
    names = {name for name, _ in gnap.named_parameters()}
    assert names == {"input_norm.bias", "output_norm.bias", "projection.weight",
                     "projection_norm.bias"}  # fmt: skip
    assert set(gnap.state_dict()) == names | {
        f"{layer}.norm.{stat}"
        for layer in ("input_norm", "output_norm", "projection_norm")
        for stat in ("running_mean", "running_var", "num_batches_tracked")
    }
    # No optimiser step, nor re-enabling gradients, can introduce a learned scale.
    gnap.requires_grad_(True)
    optimiser = torch.optim.SGD(gnap.parameters(), lr=1.0, weight_decay=0.1)
    gnap(torch.randn(4, 8, 3, 3)).square().sum().backward()
    optimiser.step()
    batch_norms = [m for m in gnap.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(batch_norms) == 3
    assert all(m.weight is None for m in batch_norms)
    x = torch.randn(16, 8, 3, 3) * 5 + 3
    bn = gnap.input_norm
    centred = bn(x) - bn.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(centred.var(dim=(0, 2, 3), unbiased=False), torch.ones(8),
                               atol=1e-3, rtol=1e-3)  # fmt: skip
    # A round trip through the state dict reproduces the module.
    copy = GNAP(8, out_features=4)
    copy.load_state_dict(gnap.state_dict())
    gnap.eval()
    copy.eval()
    torch.testing.assert_close(copy(x), gnap(x))


def test_fixed_gamma_batch_norm_converts_to_sync_batch_norm() -> None:
    bn = FixedGammaBatchNorm(3, spatial=True)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bn))
    assert isinstance(converted[0].norm, nn.SyncBatchNorm)
    assert converted[0].bias is bn.bias


def test_zero_local_feature_stays_zero_and_finite() -> None:
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        x[0, :, 1, 1] = 0.0
        x[1] = 0.0
    out = norm_aware_reweight(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, :, 1, 1], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    other = out[0].norm(dim=0)
    other[1, 1] = other[0, 0]
    mean_norm = float(x[0].detach().norm(dim=0).mean())
    torch.testing.assert_close(other, torch.full_like(other, mean_norm))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gnap_all_equal_inputs_are_finite() -> None:
    """Constant input: the first BN maps it to its bias, here 0, so every local feature is 0."""
    gnap = GNAP(4)
    x = torch.ones(3, 4, 2, 2, requires_grad=True)
    out = gnap(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()


@settings(max_examples=15, deadline=None)
@given(
    permutation=st.permutations(list(range(12))),
    seed=st.integers(0, 2**16),
)
def test_gnap_is_invariant_to_spatial_permutation(permutation: list[int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    gnap = randomise_biases(GNAP(5, out_features=3)).double()
    x = torch.randn(3, 5, 3, 4, generator=generator, dtype=torch.float64)
    shuffled = x.flatten(2)[:, :, permutation].view_as(x)
    torch.testing.assert_close(gnap(shuffled), gnap(x))


@settings(max_examples=15, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_reweighting_ratio_is_scale_invariant(scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 4, 4, generator=generator, dtype=torch.float64)
    ratio = norm_aware_reweight(x) / x
    scaled_ratio = norm_aware_reweight(x * scale) / (x * scale)
    torch.testing.assert_close(scaled_ratio, ratio)


def test_reweight_gradcheck() -> None:
    gradcheck_f64(norm_aware_reweight, torch.randn(2, 3, 3, 2))


def test_gnap_gradcheck() -> None:
    gradcheck_f64(randomise_biases(GNAP(3, out_features=2)), torch.randn(4, 3, 2, 3))


def test_autocast_bfloat16_cpu_has_no_nan() -> None:
    stem = nn.Conv2d(3, 16, 3, padding=1)
    gnap = GNAP(16, out_features=8)
    x = torch.randn(4, 3, 7, 7) * 50
    x[0, :, :, :] = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = stem(x)
        assert features.dtype == torch.bfloat16
        reweighted = norm_aware_reweight(features)
        out = gnap(features)
    assert reweighted.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    out.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in [*stem.parameters(), *gnap.parameters()])


def test_works_on_device(device: torch.device) -> None:
    gnap = GNAP(4).to(device)
    assert gnap(torch.randn(2, 4, 3, 3, device=device)).device.type == device.type


@pytest.mark.cuda
def test_cuda_parity() -> None:
    assert_cuda_parity(randomise_biases(GNAP(8, out_features=4)), torch.randn(4, 8, 5, 5))


def test_compiles() -> None:
    assert_compiles(randomise_biases(GNAP(4, out_features=3)), torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: GNAP(4)(torch.randn(2, 5, 3, 3)), "features"),
        (lambda: GNAP(4)(torch.randn(2, 4, 3)), "features"),
        (lambda: GNAP(4)(torch.ones(2, 4, 3, 3, dtype=torch.long)), "features"),
        (lambda: GNAP(0), "channels"),
        (lambda: GNAP(4, out_features=0), "out_features"),
        (lambda: GNAP(4, eps=0.0), "eps"),
        (lambda: norm_aware_reweight(torch.randn(4, 3)), "x"),
    ],
)
def test_bad_input_names_the_argument(make, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        make()


# --- robustness (issue 13) ----------------------------------------------------------------------


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_gnap_single_sample_in_training_names_the_module_and_the_cause():
    gnap = GNAP(8)
    with pytest.raises(ValueError, match=r"^features: GNAP in training mode needs a batch of at"):
        gnap(torch.randn(1, 8, 3, 3))
    assert gnap.eval()(torch.randn(1, 8, 3, 3)).shape == (1, 8)  # eval: running statistics


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_gnap_refuses_non_finite_features_and_keeps_its_statistics(bad):
    gnap = GNAP(8, out_features=4)
    gnap(torch.randn(4, 8, 3, 3))
    before = _state(gnap)
    features = torch.randn(4, 8, 3, 3)
    features[2, 1, 0, 0] = bad
    with pytest.raises(ValueError, match=r"^features: expected finite values, received 1 "):
        gnap(features)
    _assert_same_state(gnap, before)


def test_gnap_empty_batch_is_an_empty_embedding_and_leaves_the_statistics():
    for gnap in (GNAP(8), GNAP(8, out_features=4)):
        before = _state(gnap)
        features = torch.randn(0, 8, 3, 3, requires_grad=True)
        out = gnap(features)
        assert out.shape == (0, gnap.out_features)
        out.sum().backward()
        _assert_same_state(gnap, before)


def test_gnap_half_input_outside_autocast_is_a_clear_error():
    gnap = GNAP(8, out_features=4)
    with pytest.raises(ValueError, match=r"^features: expected dtype torch.float32 .*autocast"):
        gnap(torch.randn(2, 8, 3, 3).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(gnap(torch.randn(2, 8, 3, 3).bfloat16())).all()


def test_norm_aware_reweight_does_not_overflow():
    """Local norms of 1e20-sized features square to inf in float32: computed scaled instead."""
    x = torch.randn(2, 16, 3, 3)
    big = (x * 1e20).requires_grad_(True)
    out = norm_aware_reweight(big)
    torch.testing.assert_close(out / 1e20, norm_aware_reweight(x))
    out.sum().backward()
    assert torch.isfinite(big.grad).all()


@pytest.mark.parametrize("eps", [math.nan, math.inf, 0.0, True])
def test_norm_aware_reweight_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match=r"^eps: expected a positive float"):
        norm_aware_reweight(torch.randn(1, 2, 2, 2), eps=eps)
