"""Angular-margin softmax heads: ArcFace, CosFace, their combination, sub-centre ArcFace.

All of them replace the target logit of a cosine classifier by a harder one and leave the others
at ``s·cos θ_j`` (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019, §2.1–2.2, Eq. 3–4):

    target logit   s·(cos(m1·θ_y + m2) − m3)        (SphereFace m1, ArcFace m2, CosFace m3)
    other logits   s·cos θ_j

``margin_logits`` is the functional core; it takes cosines ``(B, C)`` so it works on any cosine
matrix (a shard of classes inside :class:`~faceaux.heads.partial_fc.PartialFC` included). The
modules own the class centres ``(num_classes, embedding_size)``, normalise them and the
embeddings in forward, and return logits for ``F.cross_entropy``. The feature-norm-aware heads
(SphereFace, AdaFace) live in :mod:`faceaux.heads.adaptive`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from faceaux._checks import (
    autocast_disabled,
    check_module_input,
    check_positive_int,
    check_same_batch,
    check_same_device,
    check_tensor,
    data_checks_enabled,
    finite_check,
    label_check,
    raise_bad_data,
    stable_normalize,
    stable_vector_norm,
)

MarginGrad = Literal["exact", "straight_through"]
MARGIN_GRADS: tuple[str, ...] = ("exact", "straight_through")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_labels(labels: object, batch_of: torch.Tensor, batch_name: str) -> None:
    """``labels`` must be an integer tensor ``(B,)`` with the batch size and device of ``batch_of``.

    Shapes and dtypes only; the range of the values is checked by :func:`check_inputs`.
    """
    check_tensor(labels, "labels", "(B,)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, received dtype {labels.dtype}")
    check_same_batch(batch_of, batch_name, labels, "labels")
    check_same_device(batch_of, batch_name, labels, "labels")


_INPUTS_CHECKED = contextvars.ContextVar("faceaux_margin_inputs_checked", default=False)


def inputs_already_checked() -> contextlib.AbstractContextManager:
    """Within this block the logits-in functions skip their data checks.

    A head that has already read its embeddings and labels (in one device→host transfer) passes
    cosines it computed itself to the margin function; reading them again would cost a second
    synchronisation per step on a GPU. (A no-op where data checks are off anyway: under
    ``torch.compile`` a context variable would break the graph.)
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return contextlib.nullcontext()
    return _inputs_checked()


@contextlib.contextmanager
def _inputs_checked() -> Iterator[None]:
    token = _INPUTS_CHECKED.set(True)
    try:
        yield
    finally:
        _INPUTS_CHECKED.reset(token)


def check_margin_inputs(
    values: torch.Tensor,
    values_name: str,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None,
    *extra: tuple[torch.Tensor, str],
) -> None:
    """The data checks of a margin head, read in one transfer: finite values, labels in range.

    ``values`` (embeddings or cosines) and every ``(tensor, name)`` in ``extra`` must be finite;
    labels must lie in ``[0, num_classes)`` or equal ``ignore_index``. Skipped under
    :func:`inputs_already_checked`, ``torch.compile``, tracing and for meta tensors.
    """
    if not data_checks_enabled(values, labels) or _INPUTS_CHECKED.get():
        return
    checks = [finite_check(values, values_name)]
    checks += [finite_check(tensor, name) for tensor, name in extra]
    checks.append(label_check(labels, num_classes, ignore_index))
    raise_bad_data(checks)


def check_margins(s: float, m1: float, m2: float, m3: float) -> None:
    """Range checks shared by the functional core and the modules."""
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"s: expected a finite scale > 0, received {s}")
    if not (m1 > 0 and math.isfinite(m1)):
        raise ValueError(f"m1: expected a finite multiplicative margin > 0, received {m1}")
    if not 0 <= m2 < math.pi:
        raise ValueError(f"m2: expected an additive angular margin in [0, π), received {m2}")
    if not math.isfinite(m3):
        raise ValueError(f"m3: expected a finite additive cosine margin, received {m3}")


def _fallback_constant(m1: float, m2: float) -> tuple[float, float]:
    """Where the angular margin stops being monotonic, and the constant of the linear fallback.

    ``cos(m1·θ + m2)`` decreases in θ only while ``m1·θ + m2 ≤ π``, i.e. up to
    ``θ* = (π − m2) / m1``. Beyond it the target becomes ``cos θ − m3 − mm``. For ArcFace
    (m1 = 1) InsightFace and pytorch-metric-learning use ``mm = m2·sin(m2)``; we keep that
    constant and raise it to ``1 + cos θ*`` when that is larger, which is exactly what keeps the
    target non-increasing across θ* for every (m1, m2) (the jump at θ* is then ≤ 0).
    """
    theta_star = (math.pi - m2) / m1
    if theta_star >= math.pi:  # the margin never leaves [0, π]: no fallback needed
        return math.pi, 0.0
    return theta_star, max(m2 * math.sin(m2), 1.0 + math.cos(theta_star))


def margin_target(
    cosine: torch.Tensor,
    m1: float,
    m2: float,
    m3: float,
    easy_margin: bool = False,
    margin_grad: MarginGrad = "exact",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The margin's target function ``ψ(c) = cos(m1·acos c + m2) − m3`` and its slope ``dψ/dc``.

    Target cosines ``c`` (float32 or float64, any shape) in, ``(ψ(c), dψ/dc)`` out, both written
    out rather than left to autograd, so that the fused and streaming heads can apply the margin
    to one column without a graph. The definition is :func:`margin_logits`'s:

    - ``acos`` has the exact value of ``acos(clamp(c, −1, 1))`` and the slope it has at ``c``
      clamped into ``[−1 + ε, 1 − ε]`` (ε the dtype's machine epsilon), which is zero outside
      that interval: ``dψ/dc = m1·sin(m1·θ + m2) / sqrt(1 − c²)``, at most ``m1/sqrt(2ε)``;
    - past ``θ* = (π − m2)/m1`` the target falls back to ``c − m3 − mm`` (slope 1), see
      ``_fallback_constant``; with ``easy_margin`` the margin applies only where ``c > 0``;
    - ``m1 = 1, m2 = 0`` (CosFace) computes no angle: ``ψ = c − m3``, slope 1;
    - ``margin_grad="straight_through"`` keeps the value and sets the slope to 1.
    """
    if m1 == 1.0 and m2 == 0.0:  # CosFace / plain softmax: no angle needed, exact and smooth
        value, slope = cosine - m3, torch.ones_like(cosine)
    else:
        eps = torch.finfo(cosine.dtype).eps
        clamped = cosine.clamp(-1 + eps, 1 - eps)
        inner = torch.acos(clamped)
        theta = inner + (torch.acos(cosine.clamp(-1.0, 1.0)) - inner)  # exact at ±1
        angle = m1 * theta + m2
        value = torch.cos(angle) - m3
        inside = (cosine >= -1 + eps) & (cosine <= 1 - eps)
        slope = m1 * torch.sin(angle) * torch.rsqrt(1 - clamped * clamped)
        slope = torch.where(inside, slope, 0.0)
        if not easy_margin:
            theta_star, mm = _fallback_constant(m1, m2)
            if theta_star < math.pi:
                fallback = theta > theta_star
                value = torch.where(fallback, cosine - m3 - mm, value)
                slope = torch.where(fallback, 1.0, slope)
    if easy_margin:
        positive = cosine > 0
        value = torch.where(positive, value, cosine)
        slope = torch.where(positive, slope, 1.0)
    if margin_grad == "straight_through":
        value, slope = cosine + (value - cosine), torch.ones_like(cosine)
    return value, slope


def with_slope(x: torch.Tensor, value: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """``value`` (computed without a graph) whose gradient with respect to ``x`` is ``slope``.

    ``value + slope·(x − x.detach())``: the second term is exactly zero, its derivative is
    ``slope`` (finite by construction of :func:`margin_target`).
    """
    return value.detach() + slope.detach() * (x - x.detach())


def margin_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    easy_margin: bool = False,
    margin_grad: MarginGrad = "exact",
    interclass_filtering_threshold: float = 0.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Scaled logits with the combined angular margin on each row's target class.

    ArcFace (Deng et al., CVPR 2019) §2.2 "Comparison with SphereFace and CosFace", the combined
    margin of Eq. 4: the target logit becomes ``s·(cos(m1·θ_y + m2) − m3)`` with
    ``θ_y = arccos(cosine[i, y_i])``, every other logit ``s·cos θ_j``.
    ArcFace is ``(m1, m2, m3) = (1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``, SphereFace-style
    multiplicative margins use ``m1 > 1``; any combination works.

    Numerics: the target column is computed in float32 (or float64 for float64 input), with
    autocast disabled, then cast back to the cosine's dtype. ``acos`` takes its gradient at the
    cosine clamped into ``[−1 + ε, 1 − ε]`` (ε the machine epsilon) while its value is the exact
    ``acos`` of the cosine clamped into [−1, 1], so values are exact and values and gradients
    are finite for cosines of exactly ±1. Once ``m1·θ + m2 > π`` the margin would make
    the target *easier*; there the target becomes ``cos θ − m3 − mm`` with ArcFace's constant
    ``mm = m2·sin m2`` (InsightFace's ``th``/``mm``, pytorch-metric-learning's fallback), raised
    to ``1 + cos((π − m2)/m1)`` when needed to keep the target non-increasing in θ for m1 ≠ 1.
    With ``easy_margin`` the margin applies only where ``cos θ > 0`` (the original ArcFace code's
    option) and there is no fallback. When ``m1 = 1`` and ``m2 = 0`` (CosFace) no angle is
    computed at all: the target is ``s·(cos θ − m3)`` exactly.

    Validation: besides shapes and dtypes, a label outside ``[0, C)`` (other than
    ``ignore_index``) or a NaN/inf cosine raises ``ValueError``; both are read from the device
    in one transfer (free on the CPU, one synchronisation per call on a GPU; skipped under
    ``torch.compile``). An empty batch ``B = 0`` gives empty ``(0, C)`` logits.

    Gradients (``margin_grad``):
        ``"exact"`` — the true derivative through the margin (and through the clamp, so a cosine
        of exactly ±1 gets zero gradient on its target entry). Derivative of the target
        ``s·m1·sin(m1·θ + m2)/sin θ``, which grows like ``1/θ`` for well-fitted samples.
        ``"straight_through"`` — the margin is added as a constant (computed under no_grad), so
        every entry passes gradient ``s`` to its cosine and ``dL/dcosine = s·(p − y)`` for the
        softmax cross-entropy: InsightFace's ``arcface_torch`` and opensphere's choice, more
        stable with ViT backbones and in fp16.

    Args:
        cosine: cosines between embeddings and class centres, usually in [−1, 1].
        labels: target class per row; rows equal to ``ignore_index`` get no margin (PartialFC
            marks rows whose class lives on another shard with −1).
        s: logit scale (> 0).
        m1: multiplicative angular margin (> 0; 1 = none).
        m2: additive angular margin in radians, in [0, π) (0 = none).
        m3: additive cosine margin (0 = none).
        easy_margin: apply the margin only to targets with ``cos θ > 0``.
        margin_grad: ``"exact"`` or ``"straight_through"`` (see above).
        interclass_filtering_threshold: when > 0, non-target cosines above it are set to 0
            (with zero gradient) before the margin: InsightFace's filter for samples whose
            identity is duplicated under another label in noisy web data. Rows with the ignore
            label have no target, so all their cosines above it are filtered.
        ignore_index: the label value that means "no target in these columns".

    Returns:
        The logits, same dtype as ``cosine``; feed them to ``F.cross_entropy``.

    Shape:
        - cosine: ``(B, C)``
        - labels: ``(B,)``, integer, values in ``[0, C)`` or ``ignore_index``
        - output: ``(B, C)``

    Examples:
        >>> import math, torch
        >>> cosine = torch.tensor([[0.5, 0.1], [0.2, 0.9]], dtype=torch.float64)
        >>> logits = margin_logits(cosine, torch.tensor([0, -1]), s=10.0, m2=0.5)
        >>> round(logits[0, 0].item(), 4) == round(10 * math.cos(math.acos(0.5) + 0.5), 4)
        True
        >>> logits[1].tolist()  # ignored row: plain scaled cosines
        [2.0, 9.0]
    """
    check_tensor(cosine, "cosine", "(B, C)", floating=True)
    check_labels(labels, cosine, "cosine")
    check_margins(s, m1, m2, m3)
    if margin_grad not in MARGIN_GRADS:
        raise ValueError(f"margin_grad: expected one of {MARGIN_GRADS}, received {margin_grad!r}")
    if not 0.0 <= interclass_filtering_threshold <= 1.0:
        raise ValueError(
            "interclass_filtering_threshold: expected a value in [0, 1], received "
            f"{interclass_filtering_threshold}"
        )
    check_margin_inputs(cosine, "cosine", labels, cosine.shape[1], ignore_index)

    has_target = labels != ignore_index
    index = torch.where(has_target, labels, 0).long().unsqueeze(1)  # (B, 1)
    if interclass_filtering_threshold > 0:
        is_target = torch.zeros_like(cosine, dtype=torch.bool).scatter_(
            1, index, has_target.unsqueeze(1)
        )
        dirty = (cosine > interclass_filtering_threshold) & ~is_target
        cosine = cosine.masked_fill(dirty, 0.0)

    target = cosine.gather(1, index).squeeze(1)  # (B,)
    with autocast_disabled(cosine.device):
        exact = target.float() if target.dtype in _LOW_PRECISION else target
        with torch.no_grad():
            value, slope = margin_target(exact, m1, m2, m3, easy_margin, margin_grad)
        new_target = torch.where(has_target, with_slope(exact, value, slope), exact)
        new_target = (s * new_target).to(cosine.dtype)

    logits = cosine * s
    return logits.scatter_(1, index, new_target.unsqueeze(1))


def check_head_inputs(
    head: nn.Module,
    embeddings: object,
    labels: object | None,
    num_classes: int,
    ignore_index: int | None,
) -> None:
    """Everything a head checks on its inputs, with the data read in one transfer.

    ``embeddings (B, D)`` with ``D = head.embedding_size``, floating, of the dtype of the head's
    parameters outside autocast, finite; ``labels`` (optional) integer ``(B,)`` on the same
    device, in ``[0, num_classes)`` or ``ignore_index``.
    """
    check_tensor(
        embeddings, "embeddings", "(B, D)", sizes=(None, head.embedding_size), floating=True
    )
    check_module_input(embeddings, "embeddings", head)
    if labels is not None:
        check_labels(labels, embeddings, "embeddings")
    if not data_checks_enabled(embeddings):
        return
    checks = [finite_check(embeddings, "embeddings")]
    if labels is not None:
        checks.append(label_check(labels, num_classes, ignore_index))
    raise_bad_data(checks)


def check_sizes(embedding_size: int, num_classes: int) -> None:
    """``embedding_size`` and ``num_classes`` must be positive integers."""
    check_positive_int(embedding_size, "embedding_size")
    check_positive_int(num_classes, "num_classes")


_NORM_EPS = 1e-12  # as F.normalize


class _CosineToCentres(torch.autograd.Function):
    """``cos_bc = x̂_b · W_c / ‖W_c‖`` without materialising the normalised centres ``(C, D)``.

    With C ≫ B, normalising the centres and back-propagating through that normalisation is
    several element-wise passes over ``(C, D)`` and costs more than the matrix products. Here
    the norm is applied to the ``(B, C)`` product instead, and the backward is written out:
    ``dL/dW_c = (Σ_b g_bc·x̂_b − r_c·Ŵ_c) / ‖W_c‖`` with ``r_c = Σ_b g_bc·cos_bc`` — one
    product and two in-place passes over the ``(C, D)`` gradient. Centres of norm below 1e-12
    are divided by 1e-12 (F.normalize's clamp) and get no gradient through their norm.
    """

    @staticmethod
    def forward(ctx, unit_embeddings, weight):
        accumulate = torch.float32 if weight.dtype in _LOW_PRECISION else weight.dtype
        norms = torch.linalg.vector_norm(weight, dim=1, dtype=accumulate)
        inverse = norms.clamp_min(_NORM_EPS).reciprocal()  # float32/64, (C,)
        cosine = (unit_embeddings @ weight.t()) * _cast(inverse, weight.dtype)
        ctx.save_for_backward(unit_embeddings, weight, inverse, cosine, norms > _NORM_EPS)
        return cosine

    @staticmethod
    def backward(ctx, grad):
        unit_embeddings, weight, inverse, cosine, unclamped = ctx.saved_tensors
        grad_embeddings = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_embeddings = (grad * _cast(inverse, grad.dtype)) @ weight
        if ctx.needs_input_grad[1]:
            along = (grad.to(inverse.dtype) * cosine.to(inverse.dtype)).sum(dim=0)  # r_c
            along = torch.where(unclamped, along, 0.0)
            # dL/dW = diag(1/‖W‖)·(gᵀ·x̂ − diag(r/‖W‖)·W): the two row scalings are applied
            # separately, since 1/‖W‖² can overflow float16
            grad_weight = grad.t() @ unit_embeddings
            grad_weight.addcmul_(weight, _cast(-along * inverse, weight.dtype).unsqueeze(1))
            grad_weight.mul_(_cast(inverse, weight.dtype).unsqueeze(1))
        return grad_embeddings, grad_weight


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast, saturating at the dtype's largest finite value (1/‖W‖ of a dead centre in fp16)."""
    largest = torch.finfo(dtype).max
    if torch.finfo(x.dtype).max <= largest:  # nothing to saturate (float32 into float32/64)
        return x.to(dtype)
    return x.clamp(-largest, largest).to(dtype)


def normalized_cosine(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cosines ``(B, C)`` between embeddings ``(B, D)`` and class centres ``(C, D)``.

    Equal to ``F.linear(F.normalize(embeddings), F.normalize(weight))`` in value and gradient,
    and faster for many classes (see ``_CosineToCentres``); the embeddings' norms are computed
    without overflow (``F.normalize`` turns an embedding of magnitude 1e20 into zeros). Under
    autocast the product runs in the autocast dtype, as ``F.linear`` would, with the centre
    norms in float32.
    """
    device_type = embeddings.device.type
    unit = stable_normalize(embeddings, dim=1)  # no overflow for embeddings of norm > 1e19
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        unit, weight = unit.to(dtype), weight.to(dtype)
    with autocast_disabled(embeddings.device):
        return _CosineToCentres.apply(unit, weight)


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of the rows of ``x (B, D)`` in float64, without overflow or underflow.

    float16/bfloat16/float32 rows are reduced in float64 (their squares cannot overflow there:
    one reduction); float64 rows use :func:`~faceaux._checks.stable_vector_norm`.
    """
    if x.dtype == torch.float64:
        return stable_vector_norm(x, dim=1)
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)


def _coefficient(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A per-row coefficient for ``addcmul_`` on ``dtype`` tensors: float16 keeps float32 (its
    range is too small for ``1/‖W‖²``), other dtypes get the value cast (saturated)."""
    return x if dtype == torch.float16 else _cast(x, dtype)


def _linear_backward(
    grad: torch.Tensor,
    unit: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    needs_x: bool,
    needs_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dz·W, dzᵀ·x̂)`` for ``dz = grad·scale`` (one scale per column), without forming ``dz``.

    The centres' gradient buffer ``(C, D)`` first holds the scaled centres ``scale_c·W_c`` (for
    ``grad·(scale·W)``), then ``gradᵀ·x̂`` with its rows scaled in place: no ``(B, C)``
    temporary, and no allocation beyond the ``(C, D)`` gradient itself.
    """
    grad_unit = grad_weight = None
    if needs_w:
        if needs_x:
            grad_weight = weight * scale.unsqueeze(1)
            grad_unit = grad @ grad_weight
            torch.mm(grad.t(), unit, out=grad_weight)
        else:
            grad_weight = grad.t() @ unit
        grad_weight.mul_(scale.unsqueeze(1))
    elif needs_x:
        grad_unit = (grad * scale) @ weight
    return grad_unit, grad_weight


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_d a_cd·b_cd`` for every row of two ``(C, D)`` tensors, without a ``(C, D)`` temporary.

    Small batched products over blocks of 4 rows (the diagonal of each 4×4 block is kept):
    faster than one dot per row, and no element-wise product is materialised.
    """
    rows, size = a.shape
    block = 4 if rows % 4 == 0 else 2 if rows % 2 == 0 else 1
    blocks = torch.bmm(a.reshape(-1, block, size), b.reshape(-1, block, size).transpose(1, 2))
    return blocks.diagonal(dim1=1, dim2=2).reshape(rows)


class _MarginLogits(torch.autograd.Function):
    """Margin logits ``(B, C)`` straight from raw embeddings and centres, in one graph node.

    The fused form of ``margin_logits(normalized_cosine(x, W), y)`` used by the modules: the
    embeddings are normalised here, the centres never are (their norms scale the product's
    columns, ``s/‖W_c‖`` in the same pass as the scale), the margin touches the target column
    only, and the backward is written out, so that a training step costs the two matrix products
    of a linear layer plus a few passes over ``(B, C)`` and ``(C, D)``, with no ``(B, C)``
    tensor saved for backward:

    - ``dL/dz_bc = g_bc·s/‖W_c‖`` (``g`` the incoming gradient), except at the targets, where
      ``s`` becomes the margin's slope ``s·ψ'(cos θ_y)`` (:func:`margin_target`);
    - ``dL/dx̂ = dz·W`` and ``dL/dW_c = P_c − (W_c·P_c)/‖W_c‖²·W_c`` with ``P = dzᵀ·x̂`` (the
      radial part of ``P`` removed: the derivative of ``W_c/‖W_c‖``); centres of norm ≤ 1e-12
      are divided by 1e-12 and get no radial term, as with ``F.normalize``;
    - ``dL/dx = (dL/dx̂ − (x̂·dL/dx̂)·x̂)/‖x‖`` (no radial term below the same 1e-12).

    ``k > 1`` (sub-centres): the centres are ``(C·k, D)`` and a class's cosine is the largest of
    its ``k``; its gradient goes to that sub-centre (the first one on a tie).
    """

    @staticmethod
    def forward(ctx, embeddings, weight, labels, k, s, m1, m2, m3, easy, margin_grad, ignore):
        compute = weight.dtype
        accumulate = torch.float32 if compute in _LOW_PRECISION else compute
        work = torch.promote_types(embeddings.dtype, torch.float32)
        x_norms = row_norms(embeddings)
        x_inverse = x_norms.clamp_min(_NORM_EPS).reciprocal().to(work)
        unit = (embeddings.to(work) * x_inverse.unsqueeze(1)).to(compute)
        w_norms = torch.linalg.vector_norm(weight, dim=1, dtype=accumulate)
        w_inverse = w_norms.clamp_min(_NORM_EPS).reciprocal()
        scale = s * w_inverse  # d logit / d z off the targets
        # 1/‖W_c‖² for the radial part of dL/dW, 0 where the norm is clamped (no gradient there)
        radial = torch.threshold(w_norms, _NORM_EPS, math.inf).pow(-2)
        products = unit @ weight.t()  # (B, C·k)
        index = chosen = target_slope = None
        if labels is not None:
            has_target = labels != ignore
            index = torch.where(has_target, labels, 0).long().unsqueeze(1)  # (B, 1)
        if k == 1:
            if index is not None:
                target_inverse = _cast(w_inverse[index.squeeze(1)], compute)
                target = products.gather(1, index).squeeze(1) * target_inverse
            logits = products.mul_(_cast(scale, compute))
        else:
            cosine = products.mul_(_cast(w_inverse, compute)).unflatten(1, (-1, k))
            logits, chosen = cosine.max(dim=2)  # (B, C): the closest sub-centre's cosine
            if index is not None:
                target = logits.gather(1, index).squeeze(1)
            logits.mul_(s)
        if index is not None:
            exact = target.to(accumulate)
            value, slope = margin_target(exact, m1, m2, m3, easy, margin_grad)
            current = logits.gather(1, index).squeeze(1)
            logits.scatter_(
                1, index, torch.where(has_target, (s * value).to(compute), current)[:, None]
            )
            target_slope = torch.where(has_target, s * slope, s)  # d logit_y / d cos θ_y
        ctx.s, ctx.k, ctx.work = s, k, work
        ctx.save_for_backward(
            embeddings,
            x_norms,
            x_inverse,
            unit,
            weight,
            w_inverse,
            scale,
            radial,
            index,
            target_slope,
            chosen,
        )
        return logits

    @staticmethod
    def backward(ctx, grad):
        (
            embeddings,
            x_norms,
            x_inverse,
            unit,
            weight,
            w_inverse,
            scale,
            radial,
            index,
            target_slope,
            chosen,
        ) = ctx.saved_tensors
        s, k, work = ctx.s, ctx.k, ctx.work
        needs_x, needs_w = ctx.needs_input_grad[:2]
        grad_unit = grad_weight = grad_embeddings = None
        with autocast_disabled(grad.device):
            scale = _cast(s * w_inverse, grad.dtype)  # d logit_bc / d z_bc off the targets
            if k == 1:
                grad_unit, grad_weight = _linear_backward(
                    grad, unit, weight, scale, needs_x, needs_w
                )
                if index is not None:  # the targets' d logit / d z is the margin's slope instead
                    target = index.squeeze(1)
                    grad_target = grad.gather(1, index).squeeze(1).to(target_slope.dtype)
                    change = grad_target * (target_slope - s) * w_inverse[target]
                    change = _cast(change, grad.dtype).unsqueeze(1)
                    if needs_x:
                        grad_unit.addcmul_(weight[target], change)
                    if needs_w:
                        grad_weight.index_add_(0, target, unit * change)
            else:
                grad_cosine = grad * s  # (B, C)
                if index is not None:
                    grad_target = grad.gather(1, index).squeeze(1).to(target_slope.dtype)
                    grad_cosine.scatter_(
                        1, index, (grad_target * target_slope).to(grad.dtype)[:, None]
                    )
                batch, classes = grad_cosine.shape
                grad_products = grad.new_zeros(batch, classes, k)
                grad_products.scatter_(2, chosen.unsqueeze(2), grad_cosine.unsqueeze(2))
                grad_products = grad_products.flatten(1).mul_(_cast(w_inverse, grad.dtype))
                if needs_x:
                    grad_unit = grad_products @ weight
                if needs_w:
                    grad_weight = grad_products.t() @ unit
            if needs_w:  # remove the radial part: the derivative of W_c / ‖W_c‖
                along = _row_dots(grad_weight, weight).to(w_inverse.dtype)
                along = along * radial
                grad_weight.addcmul_(weight, _coefficient(along, weight.dtype)[:, None], value=-1)
            if needs_x:  # through x̂ = x / ‖x‖
                grad_unit = grad_unit.to(work)
                unit_work = unit if unit.dtype == work else embeddings.to(work) * x_inverse[:, None]
                radial = torch.einsum("bd,bd->b", grad_unit, unit_work)
                radial = torch.where(x_norms > _NORM_EPS, radial, 0.0)
                grad_unit.addcmul_(unit_work, radial.unsqueeze(1), value=-1)
                grad_embeddings = grad_unit.mul_(x_inverse.unsqueeze(1)).to(embeddings.dtype)
        return grad_embeddings, grad_weight, *([None] * 9)


def fused_margin_logits(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    k: int = 1,
    s: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.5,
    m3: float = 0.0,
    easy_margin: bool = False,
    margin_grad: MarginGrad = "exact",
    ignore_index: int = -1,
) -> torch.Tensor:
    """``margin_logits(normalized_cosine(embeddings, weight), labels, ...)`` in one fused step.

    Inputs are not checked here (the modules check them first). ``weight`` is ``(C·k, D)``
    (``k`` sub-centres per class, consecutive rows); ``labels=None`` gives the scaled cosines
    ``s·cos θ`` without a margin. Under autocast the products run in the autocast dtype, as
    ``F.linear``'s, with norms and margin in float32 or wider. See ``_MarginLogits``.
    """
    device_type = embeddings.device.type
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        weight = weight.to(torch.get_autocast_dtype(device_type))
    with autocast_disabled(embeddings.device):
        return _MarginLogits.apply(
            embeddings, weight, labels, k, s, m1, m2, m3, easy_margin, margin_grad, ignore_index
        )


class CombinedMargin(nn.Module):
    """Cosine classifier with the combined margin ``s·(cos(m1·θ + m2) − m3)`` on the target.

    ArcFace (Deng et al., CVPR 2019) Eq. 4; the defaults ``(1.0, 0.3, 0.2)`` are InsightFace's
    combined-margin setting. Owns the class centres ``weight (num_classes, embedding_size)``;
    embeddings and centres are L2-normalised in forward, the math is :func:`margin_logits`.
    The forward is fused (``fused_margin_logits``): the centres are never copied into a
    normalised ``(C, D)`` tensor, the margin touches the target column only, and the backward is
    written out without ``(B, C)`` temporaries, so a training step costs about what a plain
    ``nn.Linear`` + ``F.cross_entropy`` costs (the same values and gradients as the unfused
    composition to float rounding). With ``interclass_filtering_threshold > 0`` it falls back to
    the unfused composition (the filter reads every cosine).

    Args:
        embedding_size: D, the embedding dimension.
        num_classes: C, the number of identities.
        s: scale; see :func:`margin_logits`, as for every argument below.
        m1: multiplicative angular margin.
        m2: additive angular margin.
        m3: additive cosine margin.
        easy_margin: apply the margin only to targets with ``cos θ > 0``.
        margin_grad: ``"exact"`` or ``"straight_through"``.
        interclass_filtering_threshold: when > 0, non-target cosines above it are zeroed.
        ignore_index: label value meaning "no margin for this row".

    Shape:
        - embeddings: ``(B, D)``, not necessarily normalised
        - labels: ``(B,)`` integer, or ``None`` at inference
        - output: ``(B, C)`` logits; with ``labels=None`` the scaled cosines ``s·cos θ``

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> head = CombinedMargin(8, 5, m1=1.0, m2=0.3, m3=0.2)
        >>> logits = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 4]))
        >>> loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 4]))
        >>> logits.shape, head(torch.randn(4, 8)).abs().max().item() <= 64.0
        (torch.Size([4, 5]), True)
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        easy_margin: bool = False,
        *,
        margin_grad: MarginGrad = "exact",
        interclass_filtering_threshold: float = 0.0,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        check_margins(s, m1, m2, m3)
        if margin_grad not in MARGIN_GRADS:
            raise ValueError(
                f"margin_grad: expected one of {MARGIN_GRADS}, received {margin_grad!r}"
            )
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.margin_grad = margin_grad
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.ignore_index = ignore_index
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Shapes, dtypes, finite embeddings and labels in ``[0, C)`` (or ``ignore_index``)."""
        check_head_inputs(self, embeddings, labels, self.num_classes, self.ignore_index)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines ``(B, C)`` between the embeddings ``(B, D)`` and every class centre."""
        self._check_inputs(embeddings, None)
        return self._cosine(embeddings)

    def _cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return normalized_cosine(embeddings, self.weight)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        if labels is not None and self.interclass_filtering_threshold > 0:
            with inputs_already_checked():  # the filter reads every cosine: the unfused path
                return margin_logits(
                    self._cosine(embeddings),
                    labels,
                    s=self.s,
                    m1=self.m1,
                    m2=self.m2,
                    m3=self.m3,
                    easy_margin=self.easy_margin,
                    margin_grad=self.margin_grad,
                    interclass_filtering_threshold=self.interclass_filtering_threshold,
                    ignore_index=self.ignore_index,
                )
        return self._logits(embeddings, labels)

    def _logits(self, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The fused forward (``labels=None``: ``s·cos θ``, no margin)."""
        return fused_margin_logits(
            embeddings,
            self.weight.flatten(0, -2),
            labels,
            k=self.weight.shape[1] if self.weight.ndim == 3 else 1,
            s=self.s,
            m1=self.m1,
            m2=self.m2,
            m3=self.m3,
            easy_margin=self.easy_margin,
            margin_grad=self.margin_grad,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, "
            f"m1={self.m1}, m2={self.m2}, m3={self.m3}, margin_grad={self.margin_grad!r}"
        )


class ArcFace(CombinedMargin):
    """ArcFace head: additive angular margin, target logit ``s·cos(θ_y + m)``.

    Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019,
    §2.1, Eq. 3. Past ``θ > π − m`` the target falls back to ``s·(cos θ − m·sin m)`` (the paper's
    code; see :func:`margin_logits`), unless ``easy_margin``.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64 in the paper).
        m: additive angular margin in radians (0.5 in the paper).
        easy_margin: apply the margin only where ``cos θ > 0``.
        **kwargs: ``margin_grad``, ``interclass_filtering_threshold``, ``ignore_index``.

    Shape:
        - embeddings: ``(B, D)``; labels: ``(B,)`` or ``None``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = ArcFace(16, 10)
        >>> head(torch.randn(3, 16), torch.tensor([1, 2, 3])).shape
        torch.Size([3, 10])
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, 1.0, m, 0.0, easy_margin, **kwargs)


class CosFace(CombinedMargin):
    """CosFace head (large margin cosine loss): target logit ``s·(cos θ_y − m)``.

    Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018,
    §3.2, Eq. 4. No angle is computed, so the target is exact and smooth everywhere.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale (64 here, as InsightFace; the paper uses 64 too).
        m: additive cosine margin (0.35 in the paper).
        **kwargs: ``margin_grad``, ``interclass_filtering_threshold``, ``ignore_index``.

    Shape:
        - embeddings: ``(B, D)``; labels: ``(B,)`` or ``None``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = CosFace(16, 10, s=30.0, m=0.4)
        >>> x, y = torch.randn(2, 16), torch.tensor([3, 7])
        >>> gap = head(x) - head(x, y)  # only the targets moved, by s·m
        >>> torch.allclose(gap[[0, 1], [3, 7]], torch.tensor(12.0)), gap.count_nonzero().item()
        (True, 2)
    """

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35, **kwargs
    ) -> None:
        super().__init__(embedding_size, num_classes, s, 1.0, 0.0, m, **kwargs)


class NormSoftmax(CombinedMargin):
    """Normalised softmax (no margin): logits ``s·cos θ_j`` for every class, for ablations.

    NormFace (Wang et al., ACM MM 2017), the "L2-normalised features and weights" baseline that
    ArcFace §2.1 starts from before adding the margin. Labels are accepted and checked but do
    not change the logits.

    Args:
        embedding_size: D.
        num_classes: C.
        s: scale.

    Shape:
        - embeddings: ``(B, D)``; labels: ``(B,)`` or ``None``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = NormSoftmax(16, 10, s=10.0)
        >>> x = torch.randn(2, 16)
        >>> torch.equal(head(x), head(x, torch.tensor([0, 1])))
        True
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0) -> None:
        super().__init__(embedding_size, num_classes, s, 1.0, 0.0, 0.0)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(embeddings, labels)
        return self._logits(embeddings, None)


class SubCenterArcFace(CombinedMargin):
    """Sub-center ArcFace: ``k`` centres per class, the class cosine is the closest one's.

    Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web Faces",
    ECCV 2020, §3.1, Eq. 2: ``cos θ_j = max_k cos(x, W_jk)``, then the ArcFace margin. Noisy
    samples of a class gather around a non-dominant sub-centre instead of pulling the dominant
    one. (The paper's later step of dropping non-dominant sub-centres and cleaning the data is
    offline data work and is not part of this head.) The max is not differentiable where two
    sub-centres tie; there the gradient goes to the first of them.

    Args:
        embedding_size: D.
        num_classes: C.
        k: sub-centres per class (3 in the paper).
        s: scale, as :class:`ArcFace`.
        m: additive angular margin, as :class:`ArcFace`.
        easy_margin: as :class:`ArcFace`.
        **kwargs: ``margin_grad``, ``interclass_filtering_threshold``, ``ignore_index``.

    Shape:
        - weight: ``(C, k, D)``
        - embeddings: ``(B, D)``; labels: ``(B,)`` or ``None``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = SubCenterArcFace(16, 10, k=3)
        >>> head.weight.shape, head(torch.randn(2, 16), torch.tensor([0, 9])).shape
        (torch.Size([10, 3, 16]), torch.Size([2, 10]))
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        k: int = 3,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(embedding_size, num_classes, s, 1.0, m, 0.0, easy_margin, **kwargs)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int number of sub-centres, received {k!r}")
        self.k = k
        self.weight = nn.Parameter(torch.empty(num_classes, k, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def _cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines ``(B, C)``: for each class, the largest over its ``k`` sub-centres."""
        flat = normalized_cosine(embeddings, self.weight.flatten(0, 1))  # (B, C·k)
        return flat.unflatten(1, (self.num_classes, self.k)).amax(dim=2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"
