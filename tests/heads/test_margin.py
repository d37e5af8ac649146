"""Margin heads against hand-written formulas: ArcFace, CosFace, combined, SphereFace, AdaFace."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64
from hypothesis import given, settings
from hypothesis import strategies as st

import faceaux
from faceaux import (
    AdaFace,
    AdaFaceMargin,
    ArcFace,
    CombinedMargin,
    CosFace,
    NormSoftmax,
    SphereFace,
    SubCenterArcFace,
    adaface_logits,
    margin_logits,
    sphereface_logits,
)
from faceaux.heads import sphereface_psi
from faceaux.heads.margin import normalized_cosine

# ---------------------------------------------------------------------------------------------
# slow, obviously-correct references (python floats, one entry at a time)


def reference_arcface_insightface(cosine, labels, s, m):
    """ArcFace with the original code's th/mm fallback: phi = cos(θ + m) if cos θ > cos(π − m)."""
    out = s * cosine.clone()
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        c = float(cosine[i, y])
        sine = math.sqrt(max(0.0, 1.0 - c * c))
        phi = c * math.cos(m) - sine * math.sin(m)
        out[i, y] = s * (phi if c > th else c - mm)
    return out


def reference_combined(cosine, labels, s, m1, m2, m3, easy_margin=False):
    """s·(cos(m1·θ + m2) − m3) on the target; the documented fallback past m1·θ + m2 > π."""
    out = s * cosine.clone()
    theta_star = (math.pi - m2) / m1
    mm = max(m2 * math.sin(m2), 1 + math.cos(theta_star))
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        c = float(cosine[i, y])
        theta = math.acos(min(1.0, max(-1.0, c)))
        margined = math.cos(m1 * theta + m2) - m3
        if easy_margin:
            value = margined if c > 0 else c
        elif m1 * theta + m2 <= math.pi:
            value = margined
        else:
            value = c - m3 - mm
        out[i, y] = s * value
    return out


def hard_cosines(batch: int, classes: int, m: float, dtype=torch.float64):
    """Random cosines plus targets at θ near 0, near π − m (both sides) and near π."""
    cosine = torch.rand(batch, classes, dtype=dtype) * 2 - 1
    labels = torch.randint(0, classes, (batch,))
    special = [1e-7, 1e-4, 0.01, math.pi - m - 1e-3, math.pi - m - 1e-7, math.pi - m + 1e-7]
    special += [math.pi - m + 1e-3, math.pi - 1e-4, math.pi / 2]
    for i, theta in enumerate(special):
        cosine[i, labels[i]] = math.cos(theta)
    return cosine, labels


# ---------------------------------------------------------------------------------------------
# margin_logits: formulas


@pytest.mark.parametrize("m", [0.5, 0.3, 0.7])
def test_arcface_logits_equal_insightface_formula_float64(m):
    cosine, labels = hard_cosines(12, 9, m)
    got = margin_logits(cosine, labels, s=64.0, m1=1.0, m2=m, m3=0.0)
    torch.testing.assert_close(got, reference_arcface_insightface(cosine, labels, 64.0, m))


def test_arcface_module_equals_formula_on_normalised_inputs():
    head = ArcFace(6, 9, s=30.0, m=0.5).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 9, (10,))
    cosine = F.normalize(x) @ F.normalize(head.weight.detach()).T
    torch.testing.assert_close(head(x, y), reference_arcface_insightface(cosine, y, 30.0, 0.5))
    torch.testing.assert_close(head(x), 30.0 * cosine)


def test_cosface_logits_equal_formula_float64():
    cosine, labels = hard_cosines(12, 9, 0.35)
    got = margin_logits(cosine, labels, s=64.0, m1=1.0, m2=0.0, m3=0.35)
    expected = 64.0 * cosine.clone()
    expected[torch.arange(12), labels] -= 64.0 * 0.35
    torch.testing.assert_close(got, expected)
    head = CosFace(6, 9, s=64.0, m=0.35).double()
    x = torch.randn(12, 6, dtype=torch.float64)
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).T
    torch.testing.assert_close(head(x, labels), reference_combined(cos, labels, 64, 1, 0, 0.35))


COMBINATIONS = list(
    itertools.product([0.8, 1.0, 1.35, 2.0, 4.0], [0.0, 0.2, 0.5, 1.2], [0.0, 0.2, 0.35])
)


@pytest.mark.parametrize(("m1", "m2", "m3"), COMBINATIONS)
def test_every_margin_combination_equals_formula(m1, m2, m3):
    cosine, labels = hard_cosines(12, 7, m2)
    got = margin_logits(cosine, labels, s=32.0, m1=m1, m2=m2, m3=m3)
    torch.testing.assert_close(got, reference_combined(cosine, labels, 32.0, m1, m2, m3))
    module = CombinedMargin(5, 7, s=32.0, m1=m1, m2=m2, m3=m3).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    cos = F.normalize(x) @ F.normalize(module.weight.detach()).T
    torch.testing.assert_close(module(x, labels), reference_combined(cos, labels, 32, m1, m2, m3))


@pytest.mark.parametrize(("m1", "m2", "m3"), [c for c in COMBINATIONS if c[0] >= 1])
def test_target_is_non_increasing_in_theta_and_never_easier(m1, m2, m3):
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    cosine = torch.cos(theta).unsqueeze(1)
    target = margin_logits(cosine, torch.zeros(4001, dtype=torch.long), 1.0, m1, m2, m3)[:, 0]
    assert (target.diff() <= 1e-12).all()
    assert (target <= cosine[:, 0] + 1e-12).all()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    m1=st.floats(1.0, 3.0),
    m2=st.floats(0.0, 1.0),
    m3=st.floats(0.0, 0.5),
)
def test_relabelling_classes_permutes_the_logits(seed, m1, m2, m3):
    generator = torch.Generator().manual_seed(seed)
    cosine = torch.rand(5, 6, dtype=torch.float64, generator=generator) * 2 - 1
    labels = torch.randint(-1, 6, (5,), generator=generator)
    permutation = torch.randperm(6, generator=generator)
    inverse = permutation.argsort()
    relabelled = torch.where(labels >= 0, inverse[labels.clamp_min(0)], -1)
    logits = margin_logits(cosine, labels, 8.0, m1, m2, m3)
    permuted = margin_logits(cosine[:, permutation], relabelled, 8.0, m1, m2, m3)
    torch.testing.assert_close(permuted, logits[:, permutation])


def test_easy_margin_only_where_cosine_positive():
    cosine = torch.tensor([[0.6, 0.0], [-0.3, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    got = margin_logits(cosine, labels, s=2.0, m2=0.5, easy_margin=True)
    torch.testing.assert_close(got, reference_combined(cosine, labels, 2.0, 1, 0.5, 0, True))
    assert got[1, 0] == -0.6  # cos θ < 0: untouched


def test_ignored_rows_get_no_margin():
    cosine = torch.rand(5, 4, dtype=torch.float64)
    labels = torch.tensor([1, -1, 3, -1, 0])
    got = margin_logits(cosine, labels, s=10.0, m1=1.2, m2=0.3, m3=0.1)
    torch.testing.assert_close(got[[1, 3]], 10.0 * cosine[[1, 3]])
    assert not torch.allclose(got[[0, 2, 4]], 10.0 * cosine[[0, 2, 4]])
    other = margin_logits(cosine, labels.where(labels >= 0, 7), s=10.0, ignore_index=7)
    torch.testing.assert_close(other, margin_logits(cosine, labels, s=10.0))


def test_norm_softmax_has_no_margin():
    head = NormSoftmax(6, 5, s=16.0).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    cosine = F.normalize(x) @ F.normalize(head.weight.detach()).T
    torch.testing.assert_close(head(x, y), 16.0 * cosine)


def test_subcenter_arcface_takes_max_over_subcentres():
    head = SubCenterArcFace(6, 5, k=3, s=8.0, m=0.4).double()
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 4, 2, 2])
    w = head.weight.detach()
    cosine = torch.empty(4, 5, dtype=torch.float64)
    for b in range(4):
        for c in range(5):
            cosine[b, c] = max(float(F.cosine_similarity(x[b], w[c, j], dim=0)) for j in range(3))
    torch.testing.assert_close(head(x, y), reference_arcface_insightface(cosine, y, 8.0, 0.4))
    torch.testing.assert_close(head(x), 8.0 * cosine)


# ---------------------------------------------------------------------------------------------
# gradients


def test_straight_through_gradient_is_s_times_p_minus_y():
    s = 16.0
    cosine = (torch.rand(6, 5, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 4, -1])
    logits = margin_logits(
        cosine, labels, s=s, m1=1.3, m2=0.4, m3=0.1, margin_grad="straight_through"
    )
    F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum").backward()
    p = logits.detach().softmax(dim=1)
    y = F.one_hot(labels.clamp_min(0), 5).double()
    expected = s * (p - y)
    expected[5] = 0.0  # ignored row: no loss
    torch.testing.assert_close(cosine.grad, expected)
    exact = margin_logits(cosine, labels, s=s, m1=1.3, m2=0.4, m3=0.1, margin_grad="exact")
    torch.testing.assert_close(exact, logits)  # same values, different gradient


def test_exact_gradient_is_true_derivative_of_margin():
    s, m = 4.0, 0.5
    cosine = torch.tensor([[0.3, -0.2]], dtype=torch.float64, requires_grad=True)
    margin_logits(cosine, torch.tensor([0]), s=s, m2=m)[0, 0].backward()
    theta = math.acos(0.3)
    assert cosine.grad[0, 0].item() == pytest.approx(s * math.sin(theta + m) / math.sin(theta))
    assert cosine.grad[0, 1].item() == 0.0


@pytest.mark.parametrize(("m1", "m2", "m3"), [(1.0, 0.5, 0.0), (1.35, 0.2, 0.1), (2.0, 0.0, 0.0)])
def test_gradcheck_margin_logits_exact(m1, m2, m3):
    cosine = torch.rand(4, 5, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.tensor([0, -1, 4, 2])
    gradcheck_f64(lambda c: margin_logits(c, labels, 8.0, m1, m2, m3, margin_grad="exact"), cosine)
    # straight-through: the Jacobian is s·I, whatever the margin
    jacobian = torch.autograd.functional.jacobian(
        lambda c: margin_logits(c, labels, 8.0, m1, m2, m3, margin_grad="straight_through"), cosine
    )
    torch.testing.assert_close(jacobian.reshape(20, 20), 8.0 * torch.eye(20, dtype=torch.float64))


def test_gradcheck_modules():
    x, y = torch.randn(4, 6), torch.tensor([0, 2, 1, -1])
    arcface, combined = ArcFace(6, 3, s=8.0).double(), CombinedMargin(6, 3, 8.0, 1.5, 0.2, 0.1)
    gradcheck_f64(lambda e: arcface(e, y), x)
    gradcheck_f64(lambda e: combined.double()(e, y), x)
    subcenter = SubCenterArcFace(6, 3, s=8.0).double()
    gradcheck_f64(lambda e: subcenter(e, y), x)
    sphere = SphereFace(6, 3, m=3, anneal=False).double()
    gradcheck_f64(lambda e: sphere(e, y), x)
    # AdaFace's margin reads the norms detached (as the authors' code): check it with them fixed
    norms = torch.tensor([5.0, 30.0, 18.0, 1.0], dtype=torch.float64)
    cosine = torch.rand(4, 3) * 1.6 - 0.8
    gradcheck_f64(lambda c: adaface_logits(c, y, norms, 20.0, 10.0, s=8.0), cosine)


def test_normalized_cosine_matches_f_normalize_values_and_gradients():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 7, dtype=torch.float64, requires_grad=True)
    gradcheck_f64(normalized_cosine, (x, w))
    with torch.no_grad():
        w[3] = 0.0  # a dead centre: finite values and gradients, like F.normalize
    ours, theirs = normalized_cosine(x, w), F.linear(F.normalize(x), F.normalize(w))
    torch.testing.assert_close(ours, theirs)
    g = torch.randn_like(ours)
    for a, b in zip(
        torch.autograd.grad(ours, (x, w), g), torch.autograd.grad(theirs, (x, w), g), strict=True
    ):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


# ---------------------------------------------------------------------------------------------
# edge inputs and low precision

EDGE_HEADS = [
    {"m1": 1.0, "m2": 0.5, "m3": 0.0},
    {"m1": 1.0, "m2": 0.0, "m3": 0.35},
    {"m1": 1.35, "m2": 0.25, "m3": 0.15},
    {"m1": 4.0, "m2": 0.0, "m3": 0.0},
    {"m1": 1.0, "m2": 0.5, "m3": 0.0, "easy_margin": True},
]


@pytest.mark.dtypes("float32", "float16", "bfloat16")
@pytest.mark.parametrize("config", EDGE_HEADS)
@pytest.mark.parametrize("margin_grad", ["exact", "straight_through"])
def test_cosine_exactly_plus_minus_one_is_finite(dtype, config, margin_grad):
    cosine = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]], dtype=dtype)
    cosine.requires_grad_(True)
    labels = torch.tensor([0, 0, 2])
    logits = margin_logits(cosine, labels, s=64.0, margin_grad=margin_grad, **config)
    assert logits.dtype == dtype
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    assert torch.isfinite(logits).all()
    assert torch.isfinite(loss)
    assert torch.isfinite(cosine.grad).all()
    # the margin itself was computed in float32: compare with the float64 formula
    expected = reference_combined(cosine.detach().double(), labels, 64.0, **config)
    tol = {torch.float32: 1e-3, torch.float16: 0.1, torch.bfloat16: 0.5}[dtype]
    torch.testing.assert_close(logits.double(), expected, atol=tol, rtol=0)


@pytest.mark.dtypes("float16", "bfloat16")
def test_autocast_no_nan_over_1000_steps_with_cosines_pushed_to_one(dtype):
    """1000 random steps of 4 samples, run as 20 batches of 50 steps each to stay fast."""
    heads = [
        ArcFace(8, 6, s=64.0, m=0.5),
        CombinedMargin(8, 6, 64.0, 1.35, 0.25, 0.15, margin_grad="straight_through"),
        CosFace(8, 6),
        SubCenterArcFace(8, 6, k=2),
    ]
    rows = 50 * 4
    for batch in range(20):
        head = heads[batch % len(heads)]
        centres = F.normalize(head.weight.detach().reshape(-1, 8), dim=1)
        y = torch.randint(0, 6, (rows,))
        k = 2 if isinstance(head, SubCenterArcFace) else 1
        sign = torch.where(torch.rand(rows, 1) < 0.5, -1.0, 1.0)
        # each embedding sits on (or against) its own centre or a wrong one: cosines at ±1
        picked = torch.where(torch.rand(rows) < 0.7, y, torch.randint(0, 6, (rows,))) * k
        x = sign * centres[picked] * (1 + 30 * torch.rand(rows, 1))
        x = (x + 1e-4 * torch.randn_like(x) * (batch % 2)).requires_grad_(True)
        head.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            logits = head(x, y)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        assert logits.dtype == dtype
        assert torch.isfinite(logits).all(), batch
        assert torch.isfinite(loss), batch
        assert torch.isfinite(x.grad).all(), batch
        assert torch.isfinite(head.weight.grad).all(), batch


def test_interclass_filtering_zeroes_high_non_target_cosines():
    cosine = torch.tensor(
        [[0.9, 0.5, 0.1], [0.2, 0.95, 0.6], [0.7, 0.8, 0.1]], dtype=torch.float64
    ).requires_grad_(True)
    labels = torch.tensor([0, 1, -1])
    logits = margin_logits(cosine, labels, s=1.0, m2=0.0, interclass_filtering_threshold=0.55)
    expected = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.95, 0.0], [0.0, 0.0, 0.1]])
    torch.testing.assert_close(logits, expected.double())
    logits.sum().backward()
    assert cosine.grad[1, 2] == 0
    assert cosine.grad[2, 0] == 0
    assert cosine.grad[2, 1] == 0
    assert cosine.grad[0, 0] == 1
    assert cosine.grad[1, 1] == 1


# ---------------------------------------------------------------------------------------------
# SphereFace


def reference_psi(c: float, m: int) -> float:
    theta = math.acos(max(-1.0, min(1.0, c)))
    k = min(m - 1, int(theta * m / math.pi))
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_psi_matches_piecewise_definition(m):
    c = torch.cat([torch.linspace(-1, 1, 201, dtype=torch.float64), torch.rand(50).double()])
    expected = torch.tensor([reference_psi(float(v), m) for v in c], dtype=torch.float64)
    torch.testing.assert_close(sphereface_psi(c, m), expected)
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    assert (sphereface_psi(torch.cos(theta), m).diff() <= 1e-12).all()  # monotonic


def test_sphereface_without_annealing_is_exactly_norm_times_psi():
    head = SphereFace(6, 5, m=4, anneal=False).double()
    x, y = 3 * torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 5, (7,))
    logits = head(x, y)
    w = F.normalize(head.weight.detach())
    for b in range(7):
        norm = math.sqrt(sum(float(v) ** 2 for v in x[b]))
        for c in range(5):
            cos = float(x[b] @ w[c]) / norm
            expected = norm * (reference_psi(cos, 4) if c == y[b] else cos)
            assert logits[b, c].item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert int(head.iteration) == 1


def test_sphereface_lambda_schedule_and_blend():
    head = SphereFace(4, 3, m=4, lambda_base=1000.0, lambda_gamma=0.12, lambda_min=5.0).double()
    lambdas = []
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2])
    for step in range(3):
        lambdas.append(head.current_lambda())
        assert lambdas[-1] == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * step)))
        logits = head(x, y)
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).T
    norms = x.norm(dim=1)
    lam = lambdas[-1]
    target = cos[[0, 1], y]
    psi = sphereface_psi(target, 4)
    torch.testing.assert_close(logits[[0, 1], y], norms * (lam * target + psi) / (1 + lam))
    head.iteration.fill_(10**6)
    assert head.current_lambda() == 5.0
    head.eval()  # inference: no blend, no counting
    torch.testing.assert_close(head(x, y), sphereface_logits(cos, y, norms, m=4))
    assert int(head.iteration) == 10**6


# ---------------------------------------------------------------------------------------------
# AdaFace


def reference_adaface(cosine, labels, norms, mean, std, m, h, s, eps=1e-3):
    out = s * cosine.clamp(-1 + eps, 1 - eps)
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            continue
        norm = min(100.0, max(0.001, float(norms[i])))
        z = max(-1.0, min(1.0, h * (norm - mean) / (std + eps)))
        theta = math.acos(min(1 - eps, max(-1 + eps, float(cosine[i, y]))))
        angle = min(math.pi - eps, max(eps, theta - m * z))
        out[i, y] = s * (math.cos(angle) - (m * z + m))
    return out


def test_adaface_logits_match_paper_formula():
    cosine = torch.rand(6, 4, dtype=torch.float64) * 2 - 1
    cosine[0, 1] = 1.0
    labels = torch.tensor([1, 0, 3, -1, 2, 2])
    norms = torch.tensor([5.0, 20.0, 35.0, 10.0, 80.0, 0.0], dtype=torch.float64)
    got = adaface_logits(cosine, labels, norms, 22.0, 9.0, m=0.4, h=0.333, s=64.0)
    torch.testing.assert_close(got, reference_adaface(cosine, labels, norms, 22, 9, 0.4, 0.333, 64))


def test_adaface_module_updates_running_norm_statistics():
    head = AdaFace(6, 4, m=0.4, h=0.333, s=64.0, t_alpha=0.1).double()
    x = (
        torch.randn(5, 6, dtype=torch.float64)
        * torch.tensor([1, 5, 10, 20, 40.0]).double()[:, None]
    )
    y = torch.tensor([0, 1, 2, 3, 0])
    norms = x.norm(dim=1)
    mean = 0.9 * 20 + 0.1 * norms.mean().item()
    std = 0.9 * 100 + 0.1 * norms.std().item()
    logits = head(x, y)
    assert head.margin.batch_mean.item() == pytest.approx(mean)
    assert head.margin.batch_std.item() == pytest.approx(std)
    cos = F.normalize(x) @ F.normalize(head.weight.detach()).T
    torch.testing.assert_close(logits, reference_adaface(cos, y, norms, mean, std, 0.4, 0.333, 64))
    head.eval()
    head(x, y)
    assert head.margin.batch_mean.item() == pytest.approx(mean)  # frozen in eval
    torch.testing.assert_close(head(x), 64 * cos)


# ---------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: margin_logits(torch.rand(3), torch.tensor([0, 1, 2])), "cosine"),
        (lambda: margin_logits(torch.rand(3, 4), torch.tensor([0, 1])), "labels"),
        (lambda: margin_logits(torch.rand(3, 4), torch.rand(3)), "labels"),
        (lambda: margin_logits(torch.rand(3, 4).long(), torch.tensor([0, 1, 2])), "cosine"),
        (lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), s=0.0), "s"),
        (lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), m1=0.0), "m1"),
        (lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), m2=-0.1), "m2"),
        (lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), m2=4.0), "m2"),
        (lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), m3=math.inf), "m3"),
        (
            lambda: margin_logits(torch.rand(2, 4), torch.tensor([0, 1]), margin_grad="x"),
            "margin_grad",
        ),
        (
            lambda: margin_logits(
                torch.rand(2, 4), torch.tensor([0, 1]), interclass_filtering_threshold=-1
            ),
            "interclass_filtering_threshold",
        ),
        (lambda: ArcFace(0, 4), "embedding_size"),
        (lambda: ArcFace(4, 2.5), "num_classes"),
        (lambda: ArcFace(4, 3)(torch.rand(2, 5), torch.tensor([0, 1])), "embeddings"),
        (lambda: ArcFace(4, 3)(torch.rand(2, 4), torch.tensor([[0, 1]])), "labels"),
        (lambda: CosFace(4, 3, s=-1.0), "s"),
        (lambda: SubCenterArcFace(4, 3, k=0), "k"),
        (lambda: SphereFace(4, 3, m=1.5), "m"),
        (lambda: SphereFace(4, 3, lambda_min=-1.0), "lambda_min"),
        (lambda: sphereface_logits(torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(3)), "norms"),
        (lambda: AdaFaceMargin(t_alpha=0.0), "t_alpha"),
        (lambda: AdaFace(4, 3)(torch.rand(2, 4), torch.tensor([0, 1, 2])), "labels"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()


# ---------------------------------------------------------------------------------------------
# docs, devices, compile


def test_heads_are_exported_at_top_level():
    for name in ("ArcFace", "CosFace", "CombinedMargin", "NormSoftmax", "SphereFace"):
        assert name in faceaux.__all__
        assert getattr(faceaux, name) is not None
    for name in ("SubCenterArcFace", "AdaFace", "PartialFC", "margin_logits"):
        assert name in faceaux.__all__


def test_heads_run_on_device_and_dtype(device, dtype):
    labels = torch.tensor([0, 1, 4], device=device)
    x = torch.randn(3, 8, device=device, dtype=dtype)
    for head in (ArcFace(8, 5), SubCenterArcFace(8, 5), SphereFace(8, 5), AdaFace(8, 5)):
        out = head.to(device=device, dtype=dtype)(x, labels)
        assert out.dtype == dtype
        assert out.device == x.device
        assert out.shape == (3, 5)
        assert torch.isfinite(out).all()


@pytest.mark.cuda
@pytest.mark.parametrize(
    "head",
    [
        ArcFace(8, 5),
        CombinedMargin(8, 5, 32.0, 1.35, 0.25, 0.1),
        CosFace(8, 5),
        SubCenterArcFace(8, 5),
        SphereFace(8, 5, anneal=False),
        AdaFace(8, 5).eval(),
    ],
    ids=lambda h: type(h).__name__,
)
def test_cuda_parity(head):
    assert_cuda_parity(head, (torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, -1])))


def test_arcface_compiles():
    head = ArcFace(8, 5, s=16.0)
    assert_compiles(head, (torch.randn(4, 8), torch.tensor([0, 1, 2, 4])))


# ---------------------------------------------------------------------------------------------
# robustness (issue 13): labels, non-finite input, dtypes, running state, overflow, bf16


def all_heads(d: int = 8, c: int = 5) -> list[torch.nn.Module]:
    return [
        ArcFace(d, c),
        CosFace(d, c),
        CombinedMargin(d, c),
        SphereFace(d, c),
        AdaFace(d, c),
        SubCenterArcFace(d, c),
        NormSoftmax(d, c),
    ]


@pytest.mark.parametrize("head", all_heads(), ids=lambda h: type(h).__name__)
@pytest.mark.parametrize("bad", [5, 10**9, -2, -7])
def test_every_head_rejects_labels_out_of_range(head, bad):
    with pytest.raises(ValueError, match=r"^labels: expected class indices in \[0, 5\) or -1"):
        head(torch.randn(3, 8), torch.tensor([0, bad, 1]))


@pytest.mark.parametrize(
    "call",
    [
        lambda y: margin_logits(torch.rand(3, 5), y),
        lambda y: sphereface_logits(torch.rand(3, 5), y, torch.rand(3)),
        lambda y: adaface_logits(torch.rand(3, 5), y, torch.rand(3), 20.0, 100.0),
        lambda y: AdaFaceMargin()(torch.rand(3, 5), y, torch.rand(3)),
    ],
)
def test_logits_in_functions_reject_labels_out_of_range(call):
    call(torch.tensor([0, -1, 4]))  # -1 (ignore_index) and C - 1 are fine
    for bad in (5, -2):
        with pytest.raises(ValueError, match=r"^labels: expected class indices in \[0, 5\)"):
            call(torch.tensor([0, bad, 4]))


@pytest.mark.parametrize("head", all_heads(), ids=lambda h: type(h).__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_every_head_rejects_non_finite_embeddings(head, bad):
    x = torch.randn(3, 8)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"^embeddings: expected finite values, received 1 "):
        head(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"^embeddings: expected finite values"):
        head(x)


def test_logits_in_functions_reject_non_finite_cosines_and_norms():
    cosine, y = torch.rand(2, 3), torch.tensor([0, 1])
    cosine[0, 2] = math.nan
    with pytest.raises(ValueError, match=r"^cosine: expected finite values"):
        margin_logits(cosine, y)
    with pytest.raises(ValueError, match=r"^norms: expected finite values"):
        sphereface_logits(torch.rand(2, 3), y, torch.tensor([1.0, math.inf]))
    with pytest.raises(ValueError, match=r"^batch_std: expected finite values"):
        adaface_logits(torch.rand(2, 3), y, torch.rand(2), 20.0, torch.tensor(math.nan))
    with pytest.raises(ValueError, match=r"^batch_mean: expected a finite number"):
        adaface_logits(torch.rand(2, 3), y, torch.rand(2), math.nan, 100.0)


@pytest.mark.parametrize("head", all_heads(), ids=lambda h: type(h).__name__)
def test_half_precision_input_outside_autocast_is_a_clear_error(head):
    x, y = torch.randn(3, 8), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"^embeddings: expected dtype torch.float32 .*autocast"):
        head(x.bfloat16(), y)
    with pytest.raises(ValueError, match=r"^embeddings: expected dtype torch.float32"):
        head(x.double(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mix is what autocast is for
        assert torch.isfinite(head(x.bfloat16(), y)).all()
    assert head.double()(x.double(), y).dtype == torch.float64


@pytest.mark.filterwarnings("ignore:AdaFaceMargin. an empty batch")
@pytest.mark.parametrize("head", all_heads(), ids=lambda h: type(h).__name__)
def test_every_head_on_an_empty_batch(head):
    x = torch.randn(0, 8, requires_grad=True)
    logits = head(x, torch.zeros(0, dtype=torch.long))
    assert logits.shape == (0, 5)
    logits.sum().backward()
    assert x.grad.shape == (0, 8)


def test_labels_on_another_device_are_named():
    with pytest.raises(ValueError, match=r"^labels: expected a tensor on cpu"):
        ArcFace(8, 5)(torch.randn(2, 8), torch.tensor([0, 1], device="meta"))


def test_adaface_statistics_unchanged_by_a_non_finite_or_empty_batch():
    head = AdaFace(8, 5, t_alpha=0.5)
    head(torch.randn(6, 8) * 30, torch.randint(0, 5, (6,)))  # move them off the start values
    before = {k: v.clone() for k, v in head.state_dict().items()}
    bad = torch.randn(6, 8)
    bad[3, 0] = math.nan
    with pytest.raises(ValueError, match=r"^embeddings: expected finite"):
        head(bad, torch.randint(0, 5, (6,)))
    with pytest.warns(UserWarning, match="empty batch"):
        head(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))
    head(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))  # warned once only
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key
    head.eval()
    assert torch.isfinite(head(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))).all()


def test_adaface_margin_statistics_unchanged_by_bad_logits_in_input():
    margin = AdaFaceMargin()
    before = (margin.batch_mean.clone(), margin.batch_std.clone())
    with pytest.raises(ValueError, match=r"^norms: expected finite"):
        margin(torch.rand(2, 3), torch.tensor([0, 1]), torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match=r"^labels: expected class indices"):
        margin(torch.rand(2, 3), torch.tensor([0, 3]), torch.tensor([1.0, 2.0]))
    assert torch.equal(margin.batch_mean, before[0])
    assert torch.equal(margin.batch_std, before[1])


def test_adaface_statistics_update_drops_non_finite_values_without_a_host_read():
    """Where the data checks are skipped (torch.compile), the update itself keeps μ, σ finite."""
    margin = AdaFaceMargin()
    margin._update_statistics(torch.tensor([1.0, math.nan, 3.0]))
    assert margin.batch_mean.item() == 20.0  # the mean was NaN: dropped
    assert margin.batch_std.item() == 100.0  # the std was NaN: dropped
    margin._update_statistics(torch.tensor([30.0, 40.0]))
    assert margin.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 35)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"m": math.nan}, "m"), ({"h": 0.0}, "h"), ({"eps": 0.7}, "eps"), ({"s": math.inf}, "s")],
)
def test_adaface_hyper_parameters_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        AdaFaceMargin(**kwargs)
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        adaface_logits(torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(2), 20.0, 100.0, **kwargs)


@pytest.mark.dtypes("bfloat16", "float16")
@pytest.mark.parametrize("make", [AdaFace, SphereFace], ids=["AdaFace", "SphereFace"])
def test_norm_aware_heads_under_autocast_with_cosines_exactly_plus_minus_one(dtype, make):
    """bf16 rounds the clamp 1 − 1e-3 back to 1 (acos' infinite slope): the clamp runs in fp32."""
    head = make(8, 6)
    y = torch.arange(6).repeat(2)
    side = torch.tensor([1.0, -1.0]).repeat_interleave(6)[:, None]
    x = side * torch.linspace(1, 60, 12)[:, None] * F.normalize(head.weight.detach())[y]
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        loss = F.cross_entropy(head(x, y).float(), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_overflowing_embedding_norms():
    """1e20 squares to inf in float32: the heads' norms are computed without overflow."""
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    arc = ArcFace(8, 5)
    torch.testing.assert_close(arc(x * 1e20, y), arc(x, y))  # was: all logits 0
    sphere = SphereFace(8, 5, anneal=False)
    big = (x * 1e20).requires_grad_(True)
    logits = sphere(big, y)
    torch.testing.assert_close(logits / 1e20, sphere(x, y))
    F.cross_entropy(logits, y).backward()
    assert torch.isfinite(big.grad).all()
    ada = AdaFace(8, 5).eval()
    torch.testing.assert_close(ada(x * 1e20, y), ada(x * 1e2, y))  # norms clipped at 100


# ---------------------------------------------------------------------------------------------
# the fused forward/backward of the modules (issue 19) against the unfused composition


def _unfused(head, x, labels):
    """normalized_cosine, the sub-centre max, then margin_logits: the modules' reference."""
    weight = head.weight
    cosine = normalized_cosine(x, weight.flatten(0, -2))
    if weight.ndim == 3:
        cosine = cosine.unflatten(1, (weight.shape[0], weight.shape[1])).amax(dim=2)
    if labels is None or isinstance(head, NormSoftmax):
        return cosine * head.s
    return margin_logits(
        cosine,
        labels,
        s=head.s,
        m1=head.m1,
        m2=head.m2,
        m3=head.m3,
        easy_margin=head.easy_margin,
        margin_grad=head.margin_grad,
    )


FUSED_HEADS = [
    lambda: ArcFace(6, 9, s=30.0),
    lambda: CosFace(6, 9),
    lambda: CombinedMargin(6, 9, 32.0, 1.35, 0.25, 0.1),
    lambda: CombinedMargin(6, 9, 16.0, 1.2, 0.3, 0.1, margin_grad="straight_through"),
    lambda: ArcFace(6, 9, easy_margin=True),
    lambda: SubCenterArcFace(6, 9, k=3, s=16.0),
    lambda: NormSoftmax(6, 9, s=10.0),
]


@pytest.mark.parametrize("make", FUSED_HEADS)
@pytest.mark.parametrize("with_labels", [True, False])
def test_fused_heads_equal_the_unfused_composition_in_float64(make, with_labels):
    head = make().double()
    with torch.no_grad():
        # a dead centre (for sub-centres one of three: all dead would tie, and the tie's
        # gradient goes to one sub-centre here, split evenly by amax)
        head.weight[(2, 0) if head.weight.ndim == 3 else 2] = 0.0
    x = torch.randn(10, 6, dtype=torch.float64) * torch.linspace(0.1, 30.0, 10)[:, None]
    x[4] = 1e-14 * x[4]  # a norm below the 1e-12 clamp
    labels = torch.tensor([0, 8, 2, 3, -1, 5, 5, 1, 7, 6]) if with_labels else None
    grad = torch.randn(10, 9, dtype=torch.float64)
    results = []
    for forward in (head, lambda e, y: _unfused(head, e, y)):
        xs = x.clone().requires_grad_(True)
        out = forward(xs, labels)
        results.append([out, *torch.autograd.grad(out, (xs, head.weight), grad)])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", FUSED_HEADS[:3] + FUSED_HEADS[5:6])
def test_fused_heads_under_bf16_autocast_follow_float32(make):
    head = make()
    x, labels = torch.randn(16, 6), torch.randint(0, 9, (16,))
    reference = F.cross_entropy(head(x, labels), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x, labels)
    assert logits.dtype == torch.bfloat16
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    assert head.weight.grad.dtype == torch.float32
    assert torch.isfinite(head.weight.grad).all()
    torch.testing.assert_close(loss, reference, rtol=0.05, atol=0.1)


def test_fused_head_saves_no_batch_by_classes_tensor():
    head = ArcFace(16, 1000)
    x, labels = torch.randn(8, 16, requires_grad=True), torch.randint(0, 1000, (8,))
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: sizes.append(t.numel()) or t, lambda t: t
    ):
        logits = head(x, labels)
    assert max(sizes) == 1000 * 16  # the centres themselves (not a copy); no (8, 1000) tensor
    assert sum(size == 8 * 1000 for size in sizes) == 0
    logits.sum().backward()
    assert torch.isfinite(head.weight.grad).all()


def test_interclass_filtering_still_matches_the_functional_form():
    head = ArcFace(6, 9, interclass_filtering_threshold=0.1).double()
    x, labels = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4])
    expected = margin_logits(
        normalized_cosine(x, head.weight),
        labels,
        s=64.0,
        m2=0.5,
        interclass_filtering_threshold=0.1,
    )
    torch.testing.assert_close(head(x, labels), expected)
