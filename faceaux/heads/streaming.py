"""The margin-softmax cross-entropy streamed over chunks of classes: exact, and memory-flat.

A margin head's loss for a batch of ``B`` embeddings against ``C`` class centres is

    loss = mean_i [log Σ_j exp(z_ij) − z_i,y_i],   z_ij = s·cos θ_ij (j ≠ y_i),   z_i,y_i = margin

(ArcFace, Deng et al., CVPR 2019, Eq. 3–4). The dense heads hold the ``(B, C)`` logits; at
C = 1M and B = 256 that is 1 GB per tensor in float32, which is why Partial FC samples classes
(An, Deng et al., ICCVW 2021, §3.2). Here the logits are never held: the forward pass walks the
classes in chunks and keeps, per row, the running maximum and the sum of exponentials (the online
log-sum-exp of Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018, as in
FlashAttention); the backward pass recomputes each chunk's logits from the saved log-sum-exp and
writes that chunk's rows of ``dL/dW`` directly. The margin changes each row's target logit only,
so it is computed once per row, outside the chunks. Memory: ``O(B·chunk_size + C·D)`` — the
centres, their gradient, and a few ``(B, chunk_size)`` blocks. The price is one more matrix
product than the dense head (the logits are recomputed in backward).

The result is the dense head's to rounding (float64 tests: loss and both gradients to 1e-10),
for ArcFace, CosFace, the combined margin and AdaFace, and it composes with sharding: inside
:class:`~faceaux.heads.partial_fc.PartialFC` (``chunk_size=``) each rank streams over its own
shard and the row statistics are combined across ranks exactly as ``sharded_cross_entropy``
combines them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from faceaux._checks import (
    DataCheck,
    autocast_disabled,
    check_positive_int,
    check_tensor,
    data_checks_enabled,
    finite_check,
    label_check,
    raise_bad_data,
    stable_vector_norm,
)
from faceaux.heads.adaptive import AdaFaceMargin, adaface_logits, adaface_target
from faceaux.heads.margin import (
    _NORM_EPS,
    MARGIN_GRADS,
    _coefficient,
    _row_dots,
    check_labels,
    check_margins,
    margin_logits,
    margin_target,
    row_norms,
)

__all__ = ["margin_cross_entropy"]

DEFAULT_CHUNK_SIZE = 8192


# -- margins that change the target logit only -------------------------------------------------


@dataclass(frozen=True)
class TargetOnlyMargin:
    """A margin in the form the streaming loss needs: every logit but the target's is elementwise.

    Off-target logits are ``s·f(cos θ)`` with ``f`` the identity, clamped into ``[low, high]``
    (AdaFace's clamp; zero gradient outside) and, when ``filter_threshold > 0``, set to 0 above
    it (InsightFace's inter-class filter; zero gradient). ``target(cosines, norms)`` returns each
    row's target logit and its derivative with respect to the target cosine, both ``(B,)``.
    """

    s: float
    target: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
    low: float = -math.inf
    high: float = math.inf
    filter_threshold: float = 0.0
    needs_norms: bool = False

    @property
    def elementwise(self) -> bool:
        """Whether the off-target logits are anything but ``s·cos θ``."""
        return self.low > -math.inf or self.high < math.inf or self.filter_threshold > 0


def _keywords(fn: Callable, keywords: dict, name: str = "margin_fn") -> inspect.BoundArguments:
    try:
        bound = inspect.signature(fn).bind_partial(**keywords)
    except TypeError as error:
        raise ValueError(f"{name}: {error}") from None
    bound.apply_defaults()
    return bound


def _combined(keywords: dict) -> TargetOnlyMargin:
    """``margin_logits`` (ArcFace/CosFace/combined) with the given keyword arguments."""
    args = _keywords(margin_logits, keywords).arguments
    s, m1, m2, m3 = (float(args[key]) for key in ("s", "m1", "m2", "m3"))
    check_margins(s, m1, m2, m3)
    easy_margin, margin_grad = bool(args["easy_margin"]), args["margin_grad"]
    if margin_grad not in MARGIN_GRADS:
        raise ValueError(f"margin_grad: expected one of {MARGIN_GRADS}, received {margin_grad!r}")
    threshold = float(args["interclass_filtering_threshold"])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(
            f"interclass_filtering_threshold: expected a value in [0, 1], received {threshold}"
        )

    def target(cosine: torch.Tensor, norms: torch.Tensor | None):
        value, slope = margin_target(cosine, m1, m2, m3, easy_margin, margin_grad)
        return s * value, s * slope

    return TargetOnlyMargin(s, target, filter_threshold=threshold)


def _adaface(m: float, h: float, s: float, eps: float, mean, std) -> TargetOnlyMargin:
    def target(cosine: torch.Tensor, norms: torch.Tensor | None):
        value, slope = adaface_target(cosine, norms, mean, std, m, h, eps)
        return s * value, s * slope

    return TargetOnlyMargin(s, target, low=-1 + eps, high=1 - eps, needs_norms=True)


def target_only_margin(margin_fn: object) -> TargetOnlyMargin:
    """The streaming form of a margin callable, or ``ValueError`` naming ``margin_fn``.

    Accepted: ``None`` (ArcFace, s = 64, m = 0.5), :func:`~faceaux.heads.margin.margin_logits`
    and :func:`~faceaux.heads.adaptive.adaface_logits` (directly or through
    ``functools.partial`` with keyword arguments; ``adaface_logits`` needs ``batch_mean`` and
    ``batch_std``), and an :class:`~faceaux.heads.adaptive.AdaFaceMargin` (whose running
    statistics are read at each call). SphereFace's logits scale with ``‖x‖`` and any other
    callable is opaque: both are refused.
    """
    if margin_fn is None:
        return _combined({})
    if isinstance(margin_fn, AdaFaceMargin):
        return _adaface(
            margin_fn.m,
            margin_fn.h,
            margin_fn.s,
            margin_fn.eps,
            margin_fn.batch_mean,
            margin_fn.batch_std,
        )
    fn, keywords = margin_fn, {}
    if isinstance(margin_fn, functools.partial):
        if margin_fn.args:
            raise ValueError(
                "margin_fn: expected functools.partial with keyword arguments only, received "
                f"positional arguments {margin_fn.args!r}"
            )
        fn, keywords = margin_fn.func, dict(margin_fn.keywords)
    if fn is margin_logits:
        return _combined(keywords)
    if fn is adaface_logits:
        if "batch_mean" not in keywords or "batch_std" not in keywords:
            raise ValueError(
                "margin_fn: adaface_logits needs batch_mean and batch_std as keyword arguments "
                "(or pass an AdaFaceMargin, which keeps them)"
            )
        args = _keywords(adaface_logits, keywords).arguments
        return _adaface(
            float(args["m"]),
            float(args["h"]),
            float(args["s"]),
            float(args["eps"]),
            args["batch_mean"],
            args["batch_std"],
        )
    raise ValueError(
        "margin_fn: streaming over class chunks needs a margin that changes the target logit "
        "only: margin_logits or adaface_logits (optionally through functools.partial with "
        f"keyword arguments) or an AdaFaceMargin; received {margin_fn!r}"
    )


# -- the row statistics, combined over ranks ---------------------------------------------------


def reduce_row_statistics(
    sum_exp: torch.Tensor,
    shifted_target: torch.Tensor,
    has_target: torch.Tensor,
    invalid: torch.Tensor,
    not_finite: torch.Tensor,
    group,
    distributed: bool,
    checks: Sequence[DataCheck] = (),
    not_finite_name: str = "logits",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the per-row softmax statistics over ranks and raise on bad input, on every rank.

    ``sum_exp`` (Σ exp(z − M), ``M`` the global row maximum) and ``shifted_target``
    (``z_y − M``, zero where the target is elsewhere) are summed over the ranks in one
    all-reduce together with the per-row counts of targets found, labels out of range and
    non-finite logits, so that every rank sees every rank's errors and raises the same
    ``ValueError``. The counts (and the ``checks``, read in the same transfer) are read in one
    device→host transfer, skipped where data checks are (``torch.compile``, meta tensors).

    Returns:
        ``sum_exp`` and ``shifted_target`` summed over the ranks.
    """
    columns = [sum_exp, shifted_target, has_target, invalid, not_finite]
    stats = torch.stack([column.to(sum_exp.dtype) for column in columns], dim=1)
    if distributed:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    sum_exp, shifted_target, targets_found, invalid, not_finite = stats.unbind(dim=1)
    if not data_checks_enabled(sum_exp):
        return sum_exp, shifted_target
    counts = [count.reshape(()).to(torch.int64) for count, _ in checks]
    counts += [invalid.sum(), not_finite.count_nonzero(), (targets_found != 1).sum()]
    errors = torch.stack([count.to(sum_exp.device) for count in counts]).tolist()
    for count, (_, message) in zip(errors, checks, strict=False):
        if count:
            raise ValueError(message(count))
    invalid_rows, bad_rows, unmatched = errors[len(checks) :]
    if invalid_rows:
        raise ValueError(
            f"labels: expected each row's target column in [0, C_local) or -1 (target on "
            f"another rank), received {int(invalid_rows)} rows outside it"
        )
    if bad_rows:
        raise ValueError(
            f"{not_finite_name}: expected finite values, received NaN/inf logits in "
            f"{int(bad_rows)} of {sum_exp.shape[0]} rows"
        )
    if unmatched:
        raise ValueError(
            "labels: every row needs its target class on exactly one shard: expected labels "
            "in [0, num_classes)"
        )
    return sum_exp, shifted_target


# -- the streaming autograd function -----------------------------------------------------------


class _Chunks:
    """Everything one chunk of classes needs, shared by forward and backward."""

    def __init__(self, unit, weight, w_inverse, scale, margin, compute, accumulate, chunk_size):
        self.unit, self.weight, self.w_inverse, self.scale = unit, weight, w_inverse, scale
        self.margin, self.compute, self.accumulate = margin, compute, accumulate
        self.chunk_size = chunk_size

    def ranges(self):
        columns = self.weight.shape[0]
        for start in range(0, columns, self.chunk_size):  # chunks of classes, not classes
            yield start, min(start + self.chunk_size, columns)

    def centres(self, start: int, stop: int) -> torch.Tensor:
        """The chunk's centres in the compute dtype (under autocast: cast one chunk at a time)."""
        return self.weight[start:stop].to(self.compute)

    def logits(self, start: int, stop: int, centres: torch.Tensor):
        """``(N, n)`` off-target logits of the chunk (accumulate dtype), and the mask of entries
        with a gradient (``None`` when every entry has one)."""
        logits = (self.unit @ centres.t()).to(self.accumulate)
        margin = self.margin
        if not margin.elementwise:
            return logits.mul_(self.scale[start:stop]), None
        cosine = logits.mul_(self.w_inverse[start:stop])
        passes = (cosine >= margin.low) & (cosine <= margin.high)
        cosine.clamp_(margin.low, margin.high)
        if margin.filter_threshold > 0:
            filtered = cosine > margin.filter_threshold
            cosine.masked_fill_(filtered, 0.0)
            passes &= ~filtered
        return cosine.mul_(margin.s), passes


def _place_targets(block, index, has_target, start, stop, values):
    """Write ``values`` (N,) at each row's target column when the target lies in the chunk."""
    inside = has_target & (index >= start) & (index < stop)
    column = (index - start).clamp(0, stop - start - 1).unsqueeze(1)
    current = block.gather(1, column).squeeze(1)
    block.scatter_(1, column, torch.where(inside, values.to(block.dtype), current).unsqueeze(1))


class _StreamedMarginCrossEntropy(torch.autograd.Function):
    """Mean margin-softmax cross-entropy over class chunks; see the module docstring."""

    @staticmethod
    def forward(ctx, embeddings, weight, labels, norms, margin, options):
        chunk_size, compute, group, distributed, checks, not_finite_name = options
        accumulate = torch.promote_types(compute, torch.float32)
        work = torch.promote_types(embeddings.dtype, torch.float32)
        rows, columns = labels.shape[0], weight.shape[0]
        x_norms = row_norms(embeddings)
        x_inverse = x_norms.clamp_min(_NORM_EPS).reciprocal().to(work)
        unit = (embeddings.to(work) * x_inverse.unsqueeze(1)).to(compute)
        w_norms = torch.linalg.vector_norm(weight, dim=1, dtype=accumulate)
        w_inverse = w_norms.clamp_min(_NORM_EPS).reciprocal()
        scale = margin.s * w_inverse
        radial = torch.threshold(w_norms, _NORM_EPS, math.inf).pow(-2)  # 0 where clamped
        chunks = _Chunks(unit, weight, w_inverse, scale, margin, compute, accumulate, chunk_size)

        # -1: the target lives on another rank; anything else outside [0, C) is counted (and
        # raised after the statistics all-reduce), never used as an index
        invalid = (labels < -1) | (labels >= columns)
        has_target = (labels >= 0) & ~invalid
        index = torch.where(has_target, labels, 0).long()
        target_centres = weight.index_select(0, index).to(compute)  # (N, D): one centre per row
        target_cosine = torch.einsum("nd,nd->n", unit, target_centres).to(accumulate)
        target_cosine = target_cosine * w_inverse[index]
        target_logit, target_slope = margin.target(target_cosine, norms)
        target_logit = torch.where(has_target, target_logit, 0.0)

        row_max = torch.full((rows,), -math.inf, dtype=accumulate, device=weight.device)
        sum_exp = torch.zeros(rows, dtype=accumulate, device=weight.device)
        not_finite = torch.zeros(rows, dtype=torch.bool, device=weight.device)
        for start, stop in chunks.ranges():
            block, _ = chunks.logits(start, stop, chunks.centres(start, stop))
            _place_targets(block, index, has_target, start, stop, target_logit)
            low, high = torch.aminmax(block, dim=1)
            not_finite |= ~(torch.isfinite(low) & torch.isfinite(high))
            new_max = torch.maximum(row_max, high)
            block.sub_(new_max.unsqueeze(1)).exp_()
            sum_exp = sum_exp * torch.exp(row_max - new_max) + block.sum(dim=1)
            row_max = new_max
        if distributed and rows > 0:  # (N is global: every rank skips together)
            global_max = row_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
            sum_exp = sum_exp * torch.exp(row_max - global_max)
            row_max = global_max
        shifted_target = (target_logit - row_max) * has_target
        sum_exp, shifted_target = reduce_row_statistics(
            sum_exp,
            shifted_target,
            has_target,
            invalid,
            not_finite,
            group,
            distributed and rows > 0,
            checks,
            not_finite_name,
        )
        log_sum_exp = sum_exp.log()
        loss = (log_sum_exp - shifted_target).sum() / max(rows, 1)

        ctx.margin, ctx.chunk_size, ctx.compute, ctx.work = margin, chunk_size, compute, work
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
            has_target,
            target_logit,
            target_slope,
            row_max + log_sum_exp,
        )
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
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
            has_target,
            target_logit,
            target_slope,
            log_sum_exp,
        ) = ctx.saved_tensors
        compute, work = ctx.compute, ctx.work
        accumulate = log_sum_exp.dtype
        needs_x, needs_w = ctx.needs_input_grad[:2]
        rows = index.shape[0]
        chunks = _Chunks(
            unit, weight, w_inverse, scale, ctx.margin, compute, accumulate, ctx.chunk_size
        )
        step = grad_loss.to(accumulate) / max(rows, 1)  # dL/dz = step·(p − 1[target])
        # the target entries of dL/dz: step·(p_y − 1)·(d logit_y / d cos_y)/‖W_y‖
        target_grad = step * (torch.exp(target_logit - log_sum_exp) - 1) * target_slope
        target_grad = target_grad * w_inverse[index]
        grad_unit = torch.zeros(rows, unit.shape[1], dtype=accumulate, device=unit.device)
        grad_weight = torch.empty_like(weight) if needs_w else None
        with autocast_disabled(weight.device):
            for start, stop in chunks.ranges():
                centres = chunks.centres(start, stop)
                block, passes = chunks.logits(start, stop, centres)
                block.sub_(log_sum_exp.unsqueeze(1)).exp_()  # softmax probabilities
                block.mul_(step * scale[start:stop])  # dL/dz off the targets
                if passes is not None:
                    block.mul_(passes)
                _place_targets(block, index, has_target, start, stop, target_grad)
                block = block.to(compute)
                if needs_x:
                    grad_unit.add_(block @ centres)
                if needs_w:
                    part = grad_weight[start:stop]
                    part.copy_(block.t() @ unit)
                    along = _row_dots(part, weight[start:stop]).to(accumulate) * radial[start:stop]
                    part.addcmul_(
                        weight[start:stop], _coefficient(along, part.dtype)[:, None], value=-1
                    )
            grad_embeddings = None
            if needs_x:
                grad_unit = grad_unit.to(work)
                unit_work = unit if unit.dtype == work else embeddings.to(work) * x_inverse[:, None]
                radial_x = torch.einsum("bd,bd->b", grad_unit, unit_work)
                radial_x = torch.where(x_norms > _NORM_EPS, radial_x, 0.0)
                grad_unit.addcmul_(unit_work, radial_x.unsqueeze(1), value=-1)
                grad_embeddings = grad_unit.mul_(x_inverse.unsqueeze(1)).to(embeddings.dtype)
        return grad_embeddings, grad_weight, None, None, None, None


def streamed_margin_loss(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin: TargetOnlyMargin,
    norms: torch.Tensor | None,
    chunk_size: int,
    *,
    group=None,
    distributed: bool = False,
    checks: Sequence[DataCheck] = (),
    not_finite_name: str = "logits",
) -> torch.Tensor:
    """The streaming loss on validated arguments (``labels``: column in ``weight`` or −1).

    Under autocast the products run in the autocast dtype, one chunk of centres cast at a time;
    statistics, norms and the margin run in float32 or wider.
    """
    device_type = embeddings.device.type
    compute = weight.dtype
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        compute = torch.get_autocast_dtype(device_type)
    options = (chunk_size, compute, group, distributed, tuple(checks), not_finite_name)
    with autocast_disabled(embeddings.device):
        return _StreamedMarginCrossEntropy.apply(embeddings, weight, labels, norms, margin, options)


def margin_cross_entropy(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin_fn: Callable[..., torch.Tensor] | AdaFaceMargin | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Mean margin-softmax cross-entropy, streamed over chunks of classes: no ``(B, C)`` tensor.

    Exactly ``F.cross_entropy(margin_fn(normalized cosines, labels), labels)`` — the ArcFace /
    CosFace / combined margin of ArcFace (Deng et al., CVPR 2019) Eq. 3–4, or AdaFace's (Kim et
    al., CVPR 2022) Eq. 6–9 — for embeddings ``(B, D)`` and class centres ``(C, D)``, without
    ever holding the ``(B, C)`` logits: an online log-sum-exp over chunks of ``chunk_size``
    classes in forward, the chunks recomputed in backward, ``dL/dW`` written chunk by chunk.
    Memory: the centres, their gradient and a few ``(B, chunk_size)`` blocks (about
    ``3·B·chunk_size`` floats); time: one matrix product more than the dense head. See
    :mod:`faceaux.heads.streaming`.

    ``margin_fn`` is the margin as :class:`~faceaux.heads.partial_fc.PartialFC` takes it:
    ``None`` (ArcFace, s = 64, m = 0.5), ``functools.partial(margin_logits, ...)``,
    ``functools.partial(adaface_logits, batch_mean=..., batch_std=...)`` or an
    :class:`~faceaux.heads.adaptive.AdaFaceMargin` (whose running norm statistics are updated
    once per call in training mode, after the inputs are checked). Inside ``PartialFC`` use its
    ``chunk_size=`` argument, which streams each rank's shard.

    Validation: shapes, dtypes (outside autocast ``embeddings`` must have ``weight``'s dtype),
    NaN/inf embeddings, labels outside ``[0, C)`` and non-finite centres raise ``ValueError``
    naming the argument, all read in one device→host transfer after the forward pass (skipped
    under ``torch.compile``). ``B = 0`` gives a zero loss that back-propagates. Under autocast
    the products run in the autocast dtype (one chunk of centres cast at a time, never all of
    them), the statistics and the margin in float32.

    Args:
        embeddings: the backbone's embeddings, not necessarily normalised.
        weight: the class centres (normalised here, never copied).
        labels: the class of each row, in ``[0, C)``.
        margin_fn: the margin (see above).
        chunk_size: classes per chunk (> 0); memory grows with it, the time hardly does once it
            is in the thousands.

    Returns:
        The scalar loss (float32 for half-precision inputs, as ``F.cross_entropy`` under
        autocast).

    Shape:
        - embeddings: ``(B, D)``
        - weight: ``(C, D)``
        - labels: ``(B,)`` integer
        - output: ``()``

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from faceaux import ArcFace
        >>> head = ArcFace(8, 100)
        >>> x, y = torch.randn(4, 8), torch.tensor([3, 50, 99, 3])
        >>> streamed = margin_cross_entropy(x, head.weight, y, chunk_size=32)
        >>> torch.allclose(streamed, F.cross_entropy(head(x, y), y))
        True
    """
    check_tensor(embeddings, "embeddings", "(B, D)", floating=True)
    check_tensor(weight, "weight", "(C, D)", sizes=(None, embeddings.shape[1]), floating=True)
    if weight.shape[0] == 0:
        raise ValueError(
            f"weight: expected at least one class centre (C, D), received shape "
            f"{tuple(weight.shape)}"
        )
    check_labels(labels, embeddings, "embeddings")
    if weight.device != embeddings.device:
        raise ValueError(
            f"weight: expected a tensor on {embeddings.device} (the device of embeddings), "
            f"received one on {weight.device}"
        )
    autocast = embeddings.device.type != "meta" and torch.is_autocast_enabled(
        embeddings.device.type
    )
    if embeddings.dtype != weight.dtype and not autocast:
        raise ValueError(
            f"embeddings: expected dtype {weight.dtype} (that of weight) outside torch.autocast, "
            f"received {embeddings.dtype}"
        )
    check_positive_int(chunk_size, "chunk_size")
    margin = target_only_margin(margin_fn)
    checks: list[DataCheck] = []
    if data_checks_enabled(embeddings, labels):
        checks = [finite_check(embeddings, "embeddings"), label_check(labels, weight.shape[0])]
    norms = stable_vector_norm(embeddings.detach(), dim=1) if margin.needs_norms else None
    if isinstance(margin_fn, AdaFaceMargin) and margin_fn.training:
        raise_bad_data(checks)  # the statistics never absorb a bad batch: check first
        checks = []
        margin_fn._update_statistics(norms)
    return streamed_margin_loss(
        embeddings,
        weight,
        labels.long(),
        margin,
        norms,
        chunk_size,
        checks=checks,
        not_finite_name="weight",
    )
