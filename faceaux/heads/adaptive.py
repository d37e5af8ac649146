"""Margin heads that read the embedding's norm: SphereFace (A-Softmax) and AdaFace.

Unlike :mod:`faceaux.heads.margin`, these keep the feature norm ``‖x‖`` in play: SphereFace
scales every logit by it, AdaFace sets each sample's margin from it (a proxy for image
quality). Both come as a logits-in function taking ``(cosine, labels, norms)`` — the form
:class:`~faceaux.heads.partial_fc.PartialFC` passes norms to — and a module owning the centres.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from faceaux._checks import (
    autocast_disabled,
    check_finite_float,
    check_same_batch,
    check_same_device,
    check_tensor,
    stable_vector_norm,
)
from faceaux.heads.margin import (
    _LOW_PRECISION,
    check_head_inputs,
    check_labels,
    check_margin_inputs,
    check_sizes,
    inputs_already_checked,
    normalized_cosine,
    with_slope,
)


def _check_norms(norms: object, cosine: torch.Tensor) -> None:
    check_tensor(norms, "norms", "(B,)", floating=True)
    check_same_batch(cosine, "cosine", norms, "norms")
    check_same_device(cosine, "cosine", norms, "norms")


def _check_adaface_margins(m: object, h: object, s: object, eps: object) -> None:
    check_finite_float(m, "m")
    check_finite_float(h, "h", positive=True)
    check_finite_float(s, "s", positive=True)
    if not (check_finite_float(eps, "eps", positive=True) < 0.5):
        raise ValueError(f"eps: expected a clamp margin in (0, 0.5), received {eps!r}")


def _check_margin_int(m: object) -> None:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m: expected a positive int angular multiplier, received {m!r}")


def _chebyshev(cosine: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m·θ)`` as the Chebyshev polynomial ``T_m(cos θ)`` (no acos, smooth at ±1)."""
    previous, current = torch.ones_like(cosine), cosine
    for _ in range(m - 1):  # loop over the polynomial degree, not over data
        previous, current = current, 2 * cosine * current - previous
    return current


def sphereface_psi(cosine: torch.Tensor, m: int = 4) -> torch.Tensor:
    """A-Softmax's monotonic target function ``ψ(θ) = (−1)^k·cos(mθ) − 2k``.

    Liu et al., "SphereFace: Deep Hypersphere Embedding Learning for Face Recognition",
    CVPR 2017, §3.3, Eq. 7: ``θ ∈ [kπ/m, (k+1)π/m]``, ``k ∈ {0, …, m−1}``. ``cos(mθ)`` is the
    Chebyshev polynomial of ``cos θ``; ``k`` is piecewise constant (no gradient). ψ decreases
    from 1 at θ = 0 to ``1 − 2m`` at θ = π and is continuous.

    Args:
        cosine: ``cos θ``; clamped into [−1, 1].
        m: the integer angular multiplier (4 in the paper).

    Shape:
        - cosine: any shape; output: the same

    Examples:
        >>> import torch
        >>> sphereface_psi(torch.tensor([1.0, 0.0, -1.0]), m=4).tolist()
        [1.0, -3.0, -7.0]
    """
    _check_margin_int(m)
    cosine = cosine.clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(torch.acos(cosine) * (m / math.pi)).clamp_(0, m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (−1)^k
    return sign * _chebyshev(cosine, m) - 2.0 * k


def sphereface_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    norms: torch.Tensor,
    m: int = 4,
    lambda_: float = 0.0,
    ignore_index: int = -1,
) -> torch.Tensor:
    """A-Softmax logits: ``‖x‖·ψ(θ_y)`` for the target, ``‖x‖·cos θ_j`` for the others.

    SphereFace (Liu et al., CVPR 2017) §3.3, Eq. 7 with normalised weights and zero biases.
    With ``lambda_ > 0`` the target is the annealed ``‖x‖·(λ·cos θ_y + ψ(θ_y)) / (1 + λ)`` of
    the authors' released training code (the L-Softmax scheme, Liu et al., ICML 2016);
    ``lambda_ = 0`` is exactly
    ``‖x‖·ψ(θ_y)``. The target is computed in float32 for half-precision input. The logits have
    the promoted dtype of ``cosine`` and ``norms`` (float32 for bf16 cosines under autocast with
    float32 norms), since they grow with the norm, which half precision may not hold. Cosines
    are clamped into [−1, 1] (so no logit exceeds ``‖x‖`` in magnitude).
    A label outside ``[0, C)`` (other than ``ignore_index``) or a NaN/inf cosine or norm raises
    ``ValueError`` (one device→host read).

    Args:
        cosine: cosines between normalised embeddings and normalised centres.
        labels: target classes; ``ignore_index`` rows get no margin.
        norms: ``‖x‖`` per row (keep its gradient: A-Softmax trains the norm too).
        m: integer angular multiplier.
        lambda_: annealing weight λ ≥ 0.
        ignore_index: label value meaning "no target in these columns".

    Shape:
        - cosine: ``(B, C)``; labels: ``(B,)``; norms: ``(B,)``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> cosine = torch.tensor([[1.0, 0.0]])
        >>> sphereface_logits(cosine, torch.tensor([1]), torch.tensor([2.0]), m=4).tolist()
        [[2.0, -6.0]]
    """
    check_tensor(cosine, "cosine", "(B, C)", floating=True)
    check_labels(labels, cosine, "cosine")
    _check_norms(norms, cosine)
    _check_margin_int(m)
    if not (lambda_ >= 0 and math.isfinite(lambda_)):
        raise ValueError(f"lambda_: expected a finite value ≥ 0, received {lambda_}")
    check_margin_inputs(cosine, "cosine", labels, cosine.shape[1], ignore_index, (norms, "norms"))
    has_target = labels != ignore_index
    index = torch.where(has_target, labels, 0).long().unsqueeze(1)
    target = cosine.gather(1, index).squeeze(1)
    out_dtype = torch.promote_types(cosine.dtype, norms.dtype)
    with autocast_disabled(cosine.device):
        exact = target.float() if target.dtype in _LOW_PRECISION else target
        psi = sphereface_psi(exact, m)
        if lambda_ > 0:
            psi = (lambda_ * exact + psi) / (1.0 + lambda_)
        new_target = torch.where(has_target, psi, exact)
        scale = norms.to(exact.dtype)
        new_target = (scale * new_target).to(out_dtype)
        # cosines outside [-1, 1] are rounding (or nonsense): clamped, so ‖x‖·cos stays ≤ ‖x‖
        logits = cosine.to(out_dtype).clamp(-1.0, 1.0) * norms.to(out_dtype).unsqueeze(1)
    return logits.scatter(1, index, new_target.unsqueeze(1))


class SphereFace(nn.Module):
    """SphereFace head (A-Softmax): target logit ``‖x‖·ψ(θ_y)``, others ``‖x‖·cos θ_j``.

    Liu et al., "SphereFace: Deep Hypersphere Embedding Learning for Face Recognition",
    CVPR 2017, §3.3 Eq. 7 (ψ). The margin ``m`` makes the target angle ``m`` times larger;
    that is hard to train from scratch, so the authors' released code (following L-Softmax,
    Liu et al., ICML 2016) blends in the plain softmax target:
    ``‖x‖·(λ·cos θ + ψ(θ)) / (1 + λ)``, with λ decaying per training step ``i`` (counted in
    the ``iteration`` buffer, advanced by each training-mode forward with labels; eval-mode
    forwards use λ = 0):

        ``λ_i = max(lambda_min, lambda_base · (1 + lambda_gamma · i) ^ (−lambda_power))``

    (defaults 1000, 0.12, 1, 5: λ falls from 1000 to its floor of 5 after ~1,650 steps).
    ``anneal=False`` uses λ = 0, i.e. exactly ``‖x‖·ψ(θ)``; ``lambda_min=0`` lets λ decay to 0.

    Args:
        embedding_size: D.
        num_classes: C.
        m: integer angular multiplier (4 in the paper).
        anneal: use the λ schedule (True) or none (False).
        lambda_base: λ's starting value in the schedule above.
        lambda_gamma: the schedule's γ.
        lambda_power: the schedule's power.
        lambda_min: the schedule's floor.
        ignore_index: label value meaning "no margin for this row".

    Shape:
        - embeddings: ``(B, D)``, un-normalised (their norm scales the logits)
        - labels: ``(B,)`` or ``None`` (then ``‖x‖·cos θ_j`` for every class)
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = SphereFace(8, 4, m=4, anneal=False)
        >>> x, y = torch.randn(3, 8), torch.tensor([0, 1, 3])
        >>> cosine = head(x) / x.norm(dim=1, keepdim=True)
        >>> expected = x.norm(dim=1) * sphereface_psi(cosine[[0, 1, 2], y], 4)
        >>> torch.allclose(head(x, y)[[0, 1, 2], y], expected)
        True
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: int = 4,
        *,
        anneal: bool = True,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        _check_margin_int(m)
        for name, value in (
            ("lambda_base", lambda_base),
            ("lambda_gamma", lambda_gamma),
            ("lambda_power", lambda_power),
            ("lambda_min", lambda_min),
        ):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}: expected a finite value ≥ 0, received {value}")
        self.embedding_size, self.num_classes, self.m = embedding_size, num_classes, m
        self.anneal = anneal
        self.lambda_base, self.lambda_gamma = lambda_base, lambda_gamma
        self.lambda_power, self.lambda_min = lambda_power, lambda_min
        self.ignore_index = ignore_index
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """λ for the next training step (0 when ``anneal`` is off)."""
        if not self.anneal:
            return 0.0
        step = 0 if self.iteration.is_meta else int(self.iteration)
        decayed = self.lambda_base * (1.0 + self.lambda_gamma * step) ** (-self.lambda_power)
        return max(self.lambda_min, decayed)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_head_inputs(self, embeddings, labels, self.num_classes, self.ignore_index)
        cosine = normalized_cosine(embeddings, self.weight)
        norms = stable_vector_norm(embeddings, dim=1)  # no overflow for norms > 1e19
        if labels is None:
            out_dtype = torch.promote_types(cosine.dtype, norms.dtype)
            return cosine.to(out_dtype) * norms.to(out_dtype).unsqueeze(1)
        lambda_ = self.current_lambda() if self.training else 0.0
        if self.training:
            self.iteration += 1
        with inputs_already_checked():
            return sphereface_logits(cosine, labels, norms, self.m, lambda_, self.ignore_index)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, m={self.m}, "
            f"anneal={self.anneal}"
        )


def adaface_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    norms: torch.Tensor,
    batch_mean: float | torch.Tensor,
    batch_std: float | torch.Tensor,
    m: float = 0.4,
    h: float = 0.333,
    s: float = 64.0,
    eps: float = 1e-3,
    ignore_index: int = -1,
) -> torch.Tensor:
    """AdaFace logits: a margin that moves from angular to additive with the feature norm.

    Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022, §3.3,
    Eq. 7–9. The norm, standardised by the running statistics and clipped,
    ``ẑ = clip(h·(‖x‖ − μ)/(σ + eps), −1, 1)``, sets ``g_angle = −m·ẑ`` and
    ``g_add = m·ẑ + m``; the target logit is ``s·(cos(clip(θ_y + g_angle, eps, π − eps)) −
    g_add)``, the others ``s·cos θ_j``. High-norm (good quality) samples get an additive
    CosFace-like margin up to 2m, low-norm ones an ArcFace-like angular one. Cosines are clamped
    into ``[−1 + eps, 1 − eps]`` and norms into [0.001, 100] and detached, as in the authors'
    code; the target (its clamp included) is computed in float32 for half-precision input, so
    cosines of exactly ±1 under bf16 autocast keep finite gradients. A label outside ``[0, C)``
    (other than ``ignore_index``) or a NaN/inf cosine, norm or statistic raises ``ValueError``
    (one device→host read).

    Args:
        cosine: cosines between normalised embeddings and normalised centres.
        labels: target classes; ``ignore_index`` rows get no margin.
        norms: ``‖x‖`` per row (its gradient is not used).
        batch_mean: μ, the running mean of the norms.
        batch_std: σ, the running standard deviation of the norms.
        m: margin (0.4 in the paper).
        h: concentration of ẑ (0.333 in the paper).
        s: scale.
        eps: clamp margin for cosines and angles, and σ's offset.
        ignore_index: label value meaning "no target in these columns".

    Shape:
        - cosine: ``(B, C)``; labels: ``(B,)``; norms: ``(B,)``
        - output: ``(B, C)``

    Examples:
        >>> import math, torch
        >>> cosine = torch.tensor([[0.5, 0.2]], dtype=torch.float64)
        >>> out = adaface_logits(cosine, torch.tensor([0]), torch.tensor([20.0]), 20.0, 100.0)
        >>> round(out[0, 0].item(), 6) == round(64 * (math.cos(math.acos(0.5)) - 0.4), 6)
        True
    """
    check_tensor(cosine, "cosine", "(B, C)", floating=True)
    check_labels(labels, cosine, "cosine")
    _check_norms(norms, cosine)
    _check_adaface_margins(m, h, s, eps)
    statistics = []
    for name, value in (("batch_mean", batch_mean), ("batch_std", batch_std)):
        if not isinstance(value, torch.Tensor):
            check_finite_float(value, name)
        elif not value.is_floating_point() or value.numel() != 1:
            raise ValueError(
                f"{name}: expected a float or a one-element floating tensor, received dtype "
                f"{value.dtype} and shape {tuple(value.shape)}"
            )
        else:
            statistics.append((value, name))
    check_margin_inputs(
        cosine, "cosine", labels, cosine.shape[1], ignore_index, (norms, "norms"), *statistics
    )
    has_target = labels != ignore_index
    index = torch.where(has_target, labels, 0).long().unsqueeze(1)
    target = cosine.gather(1, index).squeeze(1)
    cosine = cosine.clamp(-1 + eps, 1 - eps)
    with autocast_disabled(cosine.device):
        # the clamp of the target runs in float32 or wider: in bf16, 1 − 1e-3 rounds back to 1,
        # where acos has an infinite slope
        exact = target.float() if target.dtype in _LOW_PRECISION else target
        with torch.no_grad():
            value, slope = adaface_target(exact, norms, batch_mean, batch_std, m, h, eps)
        new_target = with_slope(exact, value, slope)
        new_target = torch.where(has_target, new_target, exact.clamp(-1 + eps, 1 - eps))
        new_target = (s * new_target).to(cosine.dtype)
    logits = cosine * s
    return logits.scatter_(1, index, new_target.unsqueeze(1))


def adaface_target(
    cosine: torch.Tensor,
    norms: torch.Tensor,
    batch_mean: float | torch.Tensor,
    batch_std: float | torch.Tensor,
    m: float = 0.4,
    h: float = 0.333,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaFace's target ``cos(clip(θ + g_angle, eps, π − eps)) − g_add`` and its slope in ``c``.

    For target cosines ``c`` (float32/float64, ``(B,)``) and the rows' norms: the value of
    :func:`adaface_logits`'s target column divided by ``s``, and its derivative with respect to
    ``c`` written out (``sin(angle)/sqrt(1 − c²)`` inside both clamps, 0 outside either), so that
    the streaming head can apply it without a graph. The norms are read detached.
    """
    exact = cosine.clamp(-1 + eps, 1 - eps)
    safe_norms = norms.detach().to(exact.dtype).clamp(0.001, 100.0)
    z = ((safe_norms - batch_mean) / (batch_std + eps) * h).clamp(-1.0, 1.0)
    g_angle, g_add = -m * z, m * z + m
    raw = torch.acos(exact) + g_angle
    angle = raw.clamp(eps, math.pi - eps)
    value = torch.cos(angle) - g_add
    inside = (cosine >= -1 + eps) & (cosine <= 1 - eps) & (raw >= eps) & (raw <= math.pi - eps)
    slope = torch.where(inside, torch.sin(angle) * torch.rsqrt(1 - exact * exact), 0.0)
    return value, slope


class AdaFaceMargin(nn.Module):
    """AdaFace's margin as a logits-in module holding the running norm statistics.

    Call it as ``margin(cosine, labels, norms)``; in training mode it first updates the running
    mean and std of the (detached, clipped) norms with momentum ``t_alpha`` (Kim et al.,
    CVPR 2022, §3.3 Eq. 6: ``μ ← α·μ_batch + (1 − α)·μ``, same for σ, with the authors'
    starting values μ = 20, σ = 100), then applies :func:`adaface_logits`. In eval mode the
    statistics are frozen, like BatchNorm's (the authors' code always updates them). A batch of
    one norm leaves σ unchanged (its standard deviation is undefined).

    The statistics never absorb a bad batch: every input is validated *before* the update (a
    NaN/inf norm or cosine, or a label out of range, raises ``ValueError`` and leaves μ and σ as
    they were), and an empty batch (``B = 0``) leaves them unchanged with a ``UserWarning``
    (once per module). Where the data checks are skipped (``torch.compile``), an update that
    would not be finite is dropped on the device instead, without a synchronisation.

    Pass it as ``PartialFC(margin_fn=AdaFaceMargin())``: PartialFC sees its ``norms``
    argument and passes the gathered embeddings' norms; every rank gathers the same norms, so
    the statistics stay identical across ranks.

    Args:
        m: margin. h: concentration. s: scale. t_alpha: momentum of the running statistics.
        eps: clamp / offset, as in :func:`adaface_logits`. ignore_index: "no target" label.

    Shape:
        - cosine: ``(B, C)``; labels: ``(B,)``; norms: ``(B,)``
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> margin = AdaFaceMargin()
        >>> out = margin(torch.rand(4, 6), torch.tensor([0, 1, 2, -1]), torch.full((4,), 30.0))
        >>> out.shape, round(margin.batch_mean.item(), 2)
        (torch.Size([4, 6]), 20.1)
    """

    def __init__(
        self,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        if not 0.0 < t_alpha <= 1.0:
            raise ValueError(f"t_alpha: expected a momentum in (0, 1], received {t_alpha}")
        _check_adaface_margins(m, h, s, eps)
        self.m, self.h, self.s, self.t_alpha, self.eps = m, h, s, t_alpha, eps
        self.ignore_index = ignore_index
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))
        self._warned_empty = False

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        check_tensor(cosine, "cosine", "(B, C)", floating=True)
        check_labels(labels, cosine, "cosine")
        _check_norms(norms, cosine)
        check_margin_inputs(
            cosine, "cosine", labels, cosine.shape[1], self.ignore_index, (norms, "norms")
        )
        if self.training:
            self._update_statistics(norms)
        with inputs_already_checked():
            return adaface_logits(
                cosine,
                labels,
                norms,
                self.batch_mean,
                self.batch_std,
                m=self.m,
                h=self.h,
                s=self.s,
                eps=self.eps,
                ignore_index=self.ignore_index,
            )

    @torch.no_grad()
    def _update_statistics(self, norms: torch.Tensor) -> None:
        """Eq. 6's running mean and std; an empty or non-finite batch leaves them unchanged."""
        if norms.numel() == 0:
            if not self._warned_empty:
                warnings.warn(
                    "AdaFaceMargin: an empty batch (B = 0) left the running norm statistics "
                    "unchanged (this warning is shown once per module)",
                    stacklevel=3,
                )
                self._warned_empty = True
            return
        safe = norms.detach().to(self.batch_mean.dtype).clamp(0.001, 100.0)
        updates = [(self.batch_mean, safe.mean())]
        if safe.numel() > 1:
            updates.append((self.batch_std, safe.std()))
        for statistic, batch_value in updates:
            updated = statistic.lerp(batch_value, self.t_alpha)
            statistic.copy_(torch.where(torch.isfinite(updated), updated, statistic))

    def extra_repr(self) -> str:
        return f"m={self.m}, h={self.h}, s={self.s}, t_alpha={self.t_alpha}"


class AdaFace(nn.Module):
    """AdaFace head: quality-adaptive margin read from the un-normalised embeddings' norms.

    Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022, §3.3.
    Owns the centres ``weight (num_classes, embedding_size)`` and an :class:`AdaFaceMargin`
    (``margin``) with the running norm statistics as buffers. Give it the backbone's raw
    embeddings: it reads their norms, then normalises them.

    Args:
        embedding_size: D.
        num_classes: C.
        m: margin, see :class:`AdaFaceMargin` (paper: 0.4).
        h: concentration of ẑ (paper: 0.333).
        s: scale (paper: 64).
        t_alpha: momentum of the running norm statistics (paper: 0.01).

    Shape:
        - embeddings: ``(B, D)``, un-normalised
        - labels: ``(B,)`` or ``None`` (then ``s·cos θ_j``)
        - output: ``(B, C)``

    Examples:
        >>> import torch
        >>> head = AdaFace(16, 10)
        >>> head(torch.randn(4, 16), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float = 64.0,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.margin = AdaFaceMargin(m=m, h=h, s=s, t_alpha=t_alpha)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        check_head_inputs(self, embeddings, labels, self.num_classes, self.margin.ignore_index)
        cosine = normalized_cosine(embeddings, self.weight)
        if labels is None:
            return cosine * self.margin.s
        norms = stable_vector_norm(embeddings, dim=1)
        with inputs_already_checked():
            return self.margin(cosine, labels, norms)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"
