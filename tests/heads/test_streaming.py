"""The streaming margin cross-entropy against the dense heads: exact, memory-flat, robust."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from checks import gradcheck_f64

from faceaux.heads import (
    AdaFace,
    AdaFaceMargin,
    ArcFace,
    CombinedMargin,
    CosFace,
    PartialFC,
    adaface_logits,
    margin_cross_entropy,
    margin_logits,
    sphereface_logits,
)
from faceaux.heads.margin import normalized_cosine
from faceaux.heads.streaming import target_only_margin

B, D, C = 12, 6, 37  # 37 classes: no chunk size below divides it

MARGINS = {
    "arcface": None,
    "cosface": functools.partial(margin_logits, s=30.0, m1=1.0, m2=0.0, m3=0.35),
    "combined": functools.partial(margin_logits, s=32.0, m1=1.35, m2=0.25, m3=0.1),
    "sphereface_style_m1": functools.partial(margin_logits, s=16.0, m1=2.0, m2=0.0, m3=0.0),
    "straight_through": functools.partial(
        margin_logits, s=16.0, m1=1.2, m2=0.3, m3=0.1, margin_grad="straight_through"
    ),
    "easy_margin": functools.partial(margin_logits, s=20.0, m2=0.5, easy_margin=True),
    "interclass_filter": functools.partial(
        margin_logits, s=20.0, m2=0.5, interclass_filtering_threshold=0.2
    ),
    "adaface": functools.partial(adaface_logits, batch_mean=2.0, batch_std=0.5, s=16.0),
}


def _data(dtype=torch.float64, seed: int = 0):
    """Embeddings with a spread of norms, centres, labels in the first, middle and last chunks
    (chunk boundaries 6/7, 12/13, 36), and targets near θ = 0, θ* = π − m and θ = π."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, dtype=dtype, generator=generator)
    labels = torch.tensor([0, 36, 6, 7, 12, 13, 20, 36, 5, 30, 0, 18])
    x = torch.randn(B, D, dtype=dtype, generator=generator)
    x = x * torch.linspace(0.5, 4.0, B, dtype=dtype)[:, None]
    unit = F.normalize(weight[labels], dim=1)
    other = F.normalize(torch.randn(B, D, dtype=dtype, generator=generator), dim=1)
    other = F.normalize(other - (other * unit).sum(1, keepdim=True) * unit, dim=1)
    for row, theta in enumerate([1e-3, math.pi - 0.5 - 1e-3, math.pi - 0.5 + 1e-3, math.pi - 1e-3]):
        x[row] = 3.0 * (math.cos(theta) * unit[row] + math.sin(theta) * other[row])
    return x, weight, labels


def _dense_loss(x, weight, labels, margin_fn):
    """The dense reference: the normalised cosines, the margin, F.cross_entropy."""
    cosine = normalized_cosine(x, weight)
    margin_fn = margin_fn or functools.partial(margin_logits, s=64.0, m1=1.0, m2=0.5, m3=0.0)
    if getattr(margin_fn, "func", None) is adaface_logits:
        logits = margin_fn(cosine, labels, norms=x.norm(dim=1))
    else:
        logits = margin_fn(cosine, labels)
    return F.cross_entropy(logits, labels)


def _loss_and_grads(loss_fn, x, weight):
    x = x.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss = loss_fn(x, weight)
    grads = torch.autograd.grad(loss, (x, weight))
    return loss.detach(), *grads


# ---------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 13, 36, 37, 64])
@pytest.mark.parametrize("name", list(MARGINS))
def test_streaming_equals_dense_to_1e10_in_float64(name, chunk_size):
    x, weight, labels = _data()
    margin_fn = MARGINS[name]
    dense = _loss_and_grads(lambda a, w: _dense_loss(a, w, labels, margin_fn), x, weight)
    streamed = _loss_and_grads(
        lambda a, w: margin_cross_entropy(a, w, labels, margin_fn, chunk_size=chunk_size),
        x,
        weight,
    )
    for got, want in zip(streamed, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("head_type", [ArcFace, CosFace, CombinedMargin])
def test_streaming_equals_the_dense_modules(head_type):
    head = head_type(D, C).double()
    x, _, labels = _data()
    margin_fn = functools.partial(
        margin_logits, s=head.s, m1=head.m1, m2=head.m2, m3=head.m3, easy_margin=head.easy_margin
    )
    x = x.requires_grad_(True)
    dense = F.cross_entropy(head(x, labels), labels)
    dense_grads = torch.autograd.grad(dense, (x, head.weight))
    streamed = margin_cross_entropy(x, head.weight, labels, margin_fn, chunk_size=8)
    streamed_grads = torch.autograd.grad(streamed, (x, head.weight))
    torch.testing.assert_close(streamed, dense, rtol=0, atol=1e-10)
    for got, want in zip(streamed_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_adaface_margin_module_updates_its_statistics_once_like_the_dense_head():
    x, weight, labels = _data()
    dense_head = AdaFace(D, C, s=16.0).double()
    with torch.no_grad():
        dense_head.weight.copy_(weight)
    xs = x.clone().requires_grad_(True)
    dense = F.cross_entropy(dense_head(xs, labels), labels)
    dense_grads = torch.autograd.grad(dense, (xs, dense_head.weight))
    margin = AdaFaceMargin(s=16.0).double()
    streamed = _loss_and_grads(
        lambda a, w: margin_cross_entropy(a, w, labels, margin, chunk_size=10), x, weight
    )
    torch.testing.assert_close(streamed[0], dense.detach(), rtol=0, atol=1e-10)
    for got, want in zip(streamed[1:], dense_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert torch.equal(margin.batch_mean, dense_head.margin.batch_mean)
    assert torch.equal(margin.batch_std, dense_head.margin.batch_std)
    assert margin.batch_mean.item() != 20.0  # it moved


def test_gradcheck_streaming():
    x, weight, labels = _data()
    combined = MARGINS["combined"]
    gradcheck_f64(
        lambda a, w: margin_cross_entropy(a, w, labels, combined, chunk_size=5), (x, weight)
    )


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
@pytest.mark.parametrize("margin", ["arcface", "adaface"])
def test_partial_fc_chunk_size_equals_dense_partial_fc(sample_rate, margin):
    x, weight, labels = _data()
    losses, grads = [], []
    for chunk_size in (None, 6):
        torch.manual_seed(3)  # the same sampled classes
        margin_fn = AdaFaceMargin(s=16.0) if margin == "adaface" else None
        head = PartialFC(D, C, margin_fn=margin_fn, sample_rate=sample_rate, chunk_size=chunk_size)
        head = head.double()
        with torch.no_grad():
            head.weight.copy_(weight)
        xs = x.clone().requires_grad_(True)
        loss = head(xs, labels)
        loss.backward()
        losses.append(loss.detach())
        grads.append((xs.grad, head.weight.grad))
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-10)
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# memory: no (B, C) tensor is ever saved, the centres are not copied


def test_no_batch_by_classes_tensor_is_saved_and_the_centres_are_not_copied():
    batch, classes, dim = 8, 1000, 16
    x = torch.randn(batch, dim, requires_grad=True)
    weight = torch.randn(classes, dim, requires_grad=True)
    labels = torch.randint(0, classes, (batch,))
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = margin_cross_entropy(x, weight, labels, chunk_size=64)
    assert saved, "the hook saw the saved tensors"
    largest_other = max(t.numel() for t in saved if t.data_ptr() != weight.data_ptr())
    assert largest_other <= max(batch * dim, classes)  # x̂, per-row and per-centre vectors
    assert any(t.data_ptr() == weight.data_ptr() for t in saved)  # W itself, not a copy
    # the dense head saves (B, C) tensors: the hook does see them when they are there
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.cross_entropy(ArcFace(dim, classes)(x, labels), labels)
    assert max(t.numel() for t in saved) >= batch * classes
    loss.backward()
    assert weight.grad.shape == weight.shape


# ---------------------------------------------------------------------------------------------
# low precision, edge inputs, validation


@pytest.mark.dtypes("bfloat16", "float16")
@pytest.mark.parametrize("name", ["arcface", "combined", "adaface"])
def test_autocast_with_cosines_exactly_plus_minus_one_is_finite(dtype, name):
    weight = torch.randn(C, D)
    labels = torch.randint(0, C, (16,))
    side = torch.tensor([1.0, -1.0]).repeat_interleave(8)[:, None]
    x = (side * 5.0 * F.normalize(weight, dim=1)[labels]).requires_grad_(True)
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss = margin_cross_entropy(x, weight, labels, MARGINS[name], chunk_size=8)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(weight.grad).all()
    reference = margin_cross_entropy(x.detach(), weight.detach(), labels, MARGINS[name])
    torch.testing.assert_close(loss.detach(), reference, rtol=0.05, atol=0.5)


def test_empty_batch_gives_a_zero_loss_that_back_propagates():
    x = torch.randn(0, D, requires_grad=True)
    weight = torch.randn(C, D, requires_grad=True)
    loss = margin_cross_entropy(x, weight, torch.zeros(0, dtype=torch.long), chunk_size=5)
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad.shape == (0, D)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_meta_tensors_give_a_scalar_loss():
    x = torch.empty(4, D, device="meta")
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    loss = margin_cross_entropy(x, torch.empty(C, D, device="meta"), labels, chunk_size=8)
    assert loss.shape == ()
    assert loss.device.type == "meta"


def test_dead_centre_and_tiny_embedding_have_finite_gradients_like_the_dense_head():
    x, weight, labels = _data()
    weight[3] = 0.0  # a dead centre
    x[5] = 1e-14 * x[5]  # below the 1e-12 clamp of the norm
    dense = _loss_and_grads(lambda a, w: _dense_loss(a, w, labels, None), x, weight)
    streamed = _loss_and_grads(
        lambda a, w: margin_cross_entropy(a, w, labels, chunk_size=4), x, weight
    )
    for got, want in zip(streamed, dense, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_huge_embeddings_keep_their_direction():
    x, weight, labels = _data(torch.float32)
    loss = margin_cross_entropy(x * 1e20, weight, labels)
    torch.testing.assert_close(loss, margin_cross_entropy(x, weight, labels))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda x, w, y: margin_cross_entropy(x[0], w, y), r"^embeddings: expected a 2-D"),
        (lambda x, w, y: margin_cross_entropy(x, w[:, :3], y), r"^weight: expected shape"),
        (lambda x, w, y: margin_cross_entropy(x, w[:0], y), r"^weight: expected at least one"),
        (lambda x, w, y: margin_cross_entropy(x, w, y.double()), r"^labels: expected an integer"),
        (lambda x, w, y: margin_cross_entropy(x, w, y[:3]), r"^labels: expected batch size"),
        (lambda x, w, y: margin_cross_entropy(x, w, y + 40), r"^labels: expected class indices"),
        (lambda x, w, y: margin_cross_entropy(x, w, y - 20), r"^labels: expected class indices"),
        (lambda x, w, y: margin_cross_entropy(x, w.float(), y), r"^embeddings: expected dtype"),
        (
            lambda x, w, y: margin_cross_entropy(x, w, y, chunk_size=0),
            r"^chunk_size: expected a positive int",
        ),
        (
            lambda x, w, y: margin_cross_entropy(x, w, y, lambda cosine, labels: cosine),
            r"^margin_fn: streaming over class chunks needs a margin",
        ),
        (
            lambda x, w, y: margin_cross_entropy(x, w, y, functools.partial(sphereface_logits)),
            r"^margin_fn: streaming",
        ),
        (
            lambda x, w, y: margin_cross_entropy(x, w, y, functools.partial(margin_logits, m2=4.0)),
            r"^m2: expected an additive angular margin",
        ),
        (
            lambda x, w, y: margin_cross_entropy(
                x, w, y, functools.partial(margin_logits, bogus=1)
            ),
            r"^margin_fn: got an unexpected keyword argument 'bogus'",
        ),
        (
            lambda x, w, y: margin_cross_entropy(x, w, y, functools.partial(adaface_logits)),
            r"^margin_fn: adaface_logits needs batch_mean and batch_std",
        ),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, pattern):
    x, weight, labels = _data()
    with pytest.raises(ValueError, match=pattern):
        call(x, weight, labels)


@pytest.mark.parametrize("where", ["embeddings", "weight"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_are_named(where, bad):
    x, weight, labels = _data()
    (x if where == "embeddings" else weight)[2, 1] = bad
    with pytest.raises(ValueError, match=rf"^{where}: expected finite values"):
        margin_cross_entropy(x, weight, labels, chunk_size=5)


def test_adaface_statistics_unchanged_by_a_bad_batch():
    x, weight, labels = _data()
    margin = AdaFaceMargin().double()
    before = {k: v.clone() for k, v in margin.state_dict().items()}
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^embeddings: expected finite"):
        margin_cross_entropy(x, weight, labels, margin)
    with pytest.raises(ValueError, match=r"^labels: expected class indices"):
        margin_cross_entropy(x.nan_to_num(), weight, labels + C, margin)
    for key, value in margin.state_dict().items():
        assert torch.equal(value, before[key])


def test_partial_fc_refuses_a_margin_it_cannot_stream():
    with pytest.raises(ValueError, match=r"^margin_fn: streaming over class chunks"):
        PartialFC(D, C, margin_fn=functools.partial(sphereface_logits, m=4), chunk_size=8)
    with pytest.raises(ValueError, match=r"^chunk_size: expected a positive int"):
        PartialFC(D, C, chunk_size=-1)


def test_target_only_margin_reads_adaface_statistics_at_call_time():
    margin = AdaFaceMargin()
    spec = target_only_margin(margin)
    assert (spec.low, spec.high) == (-1 + margin.eps, 1 - margin.eps)
    assert spec.needs_norms
    assert not target_only_margin(None).elementwise


def test_streaming_compiles():
    x, weight, labels = _data(torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda a, w, y: margin_cross_entropy(a, w, y, chunk_size=16), backend="eager"
    )
    torch.testing.assert_close(compiled(x, weight, labels), margin_cross_entropy(x, weight, labels))


def test_runs_on_device(device):
    x, weight, labels = _data(torch.float32)
    x, weight = x.to(device).requires_grad_(True), weight.to(device).requires_grad_(True)
    loss = margin_cross_entropy(x, weight, labels.to(device), chunk_size=10)
    loss.backward()
    assert loss.device.type == device.type
    reference = margin_cross_entropy(x.detach().cpu(), weight.detach().cpu(), labels)
    torch.testing.assert_close(loss.detach().cpu(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_parity():
    x, weight, labels = _data(torch.float32)
    results = []
    for device in ("cpu", "cuda"):
        xs = x.to(device).requires_grad_(True)
        ws = weight.to(device).requires_grad_(True)
        loss = margin_cross_entropy(xs, ws, labels.to(device), MARGINS["combined"], chunk_size=9)
        loss.backward()
        results.append([loss.detach().cpu(), xs.grad.cpu(), ws.grad.cpu()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
