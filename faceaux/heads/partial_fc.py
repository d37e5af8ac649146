"""Partial FC: a margin-softmax classifier whose class centres are sharded over torch.distributed.

An, Deng et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCV 2021
workshops (§3), as in InsightFace's ``arcface_torch`` (``PartialFC_V2``). With ``W`` ranks,
rank ``r`` holds a contiguous slice of about ``num_classes / W`` class centres. Each step:

1. the embeddings (with gradient) and labels of all ranks are all-gathered: ``(N, D)``, ``(N,)``
   with ``N`` the global batch;
2. each rank computes the cosines of all ``N`` embeddings against its shard only — optionally a
   random subset of it that always keeps the batch's positive classes (``sample_rate``) — and
   applies the margin (``margin_fn``), marking rows whose class lives elsewhere with label −1;
3. the softmax cross-entropy is computed exactly across ranks (all-reduce of the row max, of
   the sum of exponentials and of the target logit), so no rank ever holds the full
   ``(N, num_classes)`` logits.

Without ``torch.distributed`` initialised the same code runs on one process holding every
centre (and ``sample_rate < 1`` still samples negatives).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    DataCheck,
    check_module_input,
    check_positive_int,
    check_tensor,
    data_checks_enabled,
    finite_check,
    label_check,
    raise_bad_data,
    stable_vector_norm,
)
from faceaux.heads.adaptive import AdaFaceMargin
from faceaux.heads.margin import (
    _LOW_PRECISION,
    check_labels,
    check_sizes,
    inputs_already_checked,
    margin_logits,
    normalized_cosine,
)
from faceaux.heads.streaming import (
    reduce_row_statistics,
    streamed_margin_loss,
    target_only_margin,
)

STATE_FORMAT = "faceaux.PartialFC/1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes ``[start, stop)`` that rank ``rank`` of ``world_size`` holds.

    Contiguous slices; the first ``num_classes % world_size`` ranks hold one class more.

    Examples:
        >>> [shard_range(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank: expected 0 ≤ rank < world_size={world_size}, received {rank}")
    if num_classes < world_size:
        raise ValueError(
            f"num_classes: expected at least one class per rank (≥ world_size={world_size}), "
            f"received {num_classes}"
        )
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + int(rank < extra)


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _gather_padded(x: torch.Tensor, sizes: Sequence[int], group) -> torch.Tensor:
    """All-gather rows of tensors whose row count differs per rank (``sizes``), in rank order."""
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's rows.

    Forward: ``(B_r, D)`` on each rank → ``(N, D)`` on every rank. Backward: every rank holds a
    gradient for all ``N`` rows (from its shard of classes); the true gradient of a row is their
    sum, so we all-reduce and keep this rank's rows, times ``grad_scale``.
    """

    @staticmethod
    def forward(ctx, x, sizes, rank, group, grad_scale):
        ctx.sizes, ctx.rank, ctx.group, ctx.grad_scale = sizes, rank, group, grad_scale
        return _gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        grad = grad[start : start + ctx.sizes[ctx.rank]]
        if ctx.grad_scale != 1.0:
            grad = grad * ctx.grad_scale
        return grad, None, None, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over classes split across ranks; see sharded_cross_entropy."""

    @staticmethod
    def forward(ctx, logits, labels, group, distributed):
        z = logits.float() if logits.dtype in _LOW_PRECISION else logits.clone()
        rows, columns = z.shape
        ctx.logits_dtype = logits.dtype
        if rows == 0:  # every rank has N = 0 (N is global): a zero loss, no communication
            ctx.save_for_backward(z, labels.long().unsqueeze(1), labels >= 0)
            return z.sum()
        # -1 means "target on another shard"; anything else outside [0, C_local) is an error,
        # which is counted here (no gather out of bounds) and reported after the all-reduce
        invalid = (labels < -1) | (labels >= columns)
        has_target = (labels >= 0) & ~invalid
        not_finite = ~torch.isfinite(z).all(dim=1)
        row_max = z.amax(dim=1)
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        z.sub_(row_max.unsqueeze(1)).exp_()  # z now holds exp(logit − max)
        index = torch.where(has_target, labels, 0).long().unsqueeze(1)
        shifted_target = (logits.gather(1, index).squeeze(1).to(z.dtype) - row_max) * has_target
        # one all-reduce for the row statistics and the error counts (so that every rank sees
        # every rank's bad input and raises the same), one device→host read of the counts
        sum_exp, shifted_target = reduce_row_statistics(
            z.sum(dim=1), shifted_target, has_target, invalid, not_finite, group, distributed
        )
        loss = (sum_exp.log() - shifted_target).mean()
        z.div_(sum_exp.unsqueeze(1))  # softmax probabilities of this shard's classes
        ctx.save_for_backward(z, index, has_target)
        return loss  # float32 for half-precision logits, as F.cross_entropy under autocast

    @staticmethod
    def backward(ctx, grad_loss):
        probabilities, index, has_target = ctx.saved_tensors
        grad = probabilities.scatter_add(1, index, -has_target.to(probabilities.dtype)[:, None])
        grad.mul_(grad_loss.to(grad.dtype) / max(grad.shape[0], 1))
        return grad.to(ctx.logits_dtype), None, None, None


def sharded_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, process_group=None
) -> torch.Tensor:
    """Mean softmax cross-entropy when each rank holds the logits of a slice of the classes.

    Exact, not an approximation: with ``z_i`` the full logit row spread over the ranks,
    ``loss = mean_i (log Σ_j exp(z_ij) − z_i,y_i)``, from two all-reduce calls (the row max;
    then the sum of exponentials, the target logit and a target count together), as InsightFace's
    ``DistCrossEntropy``. Statistics and loss are float32 for half-precision logits. The
    gradient with respect to this rank's logits, ``(softmax − one_hot) / N``, needs no
    communication.
    Without ``torch.distributed`` initialised it is the ordinary cross-entropy.

    Bad input raises ``ValueError`` on every rank together (the error counts travel in the
    statistics all-reduce): a label outside ``[-1, C_local)``, NaN/inf logits, a row whose
    target is on no rank or on two. Called directly in a distributed run, it first exchanges each
    rank's shape/dtype validity and ``N`` (one small all-gather), so that a malformed call on
    one rank does not leave the others waiting. ``N = 0`` gives a zero loss that
    back-propagates.

    Args:
        logits: this rank's logits for all ``N`` rows of the global batch.
        labels: the target's column in this rank's logits, or −1 when the target lives on another
            rank; every row's target must be on exactly one rank (``ValueError`` otherwise).
        process_group: the group the classes are sharded over (``None``: the default group).

    Returns:
        The scalar loss, the same on every rank.

    Shape:
        - logits: ``(N, C_local)``; labels: ``(N,)``; output: ``()``

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> logits, labels = torch.randn(4, 6), torch.tensor([0, 5, 2, 2])
        >>> torch.allclose(sharded_cross_entropy(logits, labels), F.cross_entropy(logits, labels))
        True
    """
    distributed = _is_distributed()
    try:
        check_tensor(logits, "logits", "(N, C_local)", floating=True)
        if logits.shape[1] == 0:
            raise ValueError(
                f"logits: expected at least one class column (N, C_local), received shape "
                f"{tuple(logits.shape)}"
            )
        check_labels(labels, logits, "logits")
        message = None
    except ValueError as error:
        if not distributed:
            raise
        message = str(error)
    if distributed:  # every rank must enter the all-reduces with the same N, or raise together
        rows = logits.shape[0] if message is None else -1
        local = torch.tensor(
            [int(message is not None), rows], device=_exchange_device(process_group)
        )
        table = _agree_or_raise(
            local, 1, lambda row: message, process_group, "sharded_cross_entropy"
        )
        if len({row[0] for row in table}) > 1:
            raise ValueError(
                f"logits: expected the same number of rows N (the global batch) on every rank, "
                f"received {[row[0] for row in table]} by rank"
            )
    return _ShardedCrossEntropy.apply(logits, labels, process_group, distributed)


def _exchange_device(process_group) -> torch.device:
    """Where a small tensor for a collective must live: CUDA for NCCL, else the CPU."""
    if dist.get_backend(process_group) == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_or_raise(
    local: torch.Tensor,
    num_flags: int,
    describe: Callable[[list[int]], str | None],
    process_group,
    caller: str,
) -> list[list[int]]:
    """All-gather every rank's ``local`` row; if any rank flags an error, every rank raises it.

    ``local`` is an int64 vector ``[flag_1 … flag_k, value_1 …]`` (``k = num_flags``): error
    counts (non-zero = bad input on that rank), then values to exchange (the batch size). A rank
    with bad input must not raise alone: the others would wait in the next collective until the
    process-group timeout (10–30 minutes by default). When any flag is set, the ranks exchange
    their messages (``all_gather_object``, only on this error path; ``describe`` builds this
    rank's message from its own gathered row, or returns None) and every rank raises the same
    ``ValueError``: the first bad rank's message, naming that rank.

    Returns:
        Every rank's values (the row after the flags), in rank order.
    """
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, local, group=process_group)
    table = torch.stack(parts).tolist()  # the one device→host read
    bad = [rank for rank, row in enumerate(table) if any(row[:num_flags])]
    if bad:
        mine = describe(table[dist.get_rank(process_group)])
        messages: list[str | None] = [None] * len(table)
        dist.all_gather_object(messages, mine, group=process_group)
        raise ValueError(
            f"{messages[bad[0]]} [rank {bad[0]} of {len(table)}; {caller} raises this error on "
            "every rank]"
        )
    return [row[num_flags:] for row in table]


MarginFn = Callable[..., torch.Tensor]


class PartialFC(nn.Module):
    """Margin-softmax classifier with class centres sharded over ``torch.distributed`` ranks.

    An, Deng et al., "Partial FC: Training 10 Million Identities on a Single Machine",
    ICCVW 2021, §3 (model parallel centres, exact distributed softmax, Eq. 1–3, and positive-plus-
    random-negative class sampling, §3.2). The ``forward`` returns the loss (mean over the
    global batch) directly; the step is described in the module docstring.

    **Sharding.** Rank ``r`` of ``W`` holds classes ``shard_range(num_classes, r, W)``
    (contiguous; the first ``num_classes % W`` ranks hold one more). ``weight`` is that shard,
    ``(C_local, D)``, so centre memory — and the optimizer state, which follows the parameter —
    is ∝ ``num_classes / W`` and stays on its rank. Do not wrap this module in
    DistributedDataParallel: its parameters differ per rank and their gradients are already
    the full gradients of the global loss.

    **Sampling.** With ``sample_rate < 1`` each rank keeps ``int(sample_rate · C_local)``
    centres per step: every class that occurs in the global batch, plus uniformly random others
    (all positives when they alone exceed that number). The logits are ``(N, C_sampled)``.
    Sampling saves the logits' memory and compute; ``weight.grad`` stays a dense
    ``(C_local, D)`` tensor (zero in the rows not sampled), as does the optimiser's state.

    **Embedding gradient scale.** With ``scale_embedding_grad_by_world_size=True`` (default,
    InsightFace's convention) the gradient that reaches the local embeddings is ``W`` times the
    gradient of the returned loss: DistributedDataParallel then averages the backbone's
    gradients over ranks (÷W), and the backbone ends up with the exact gradient of the global
    mean loss. Set it to ``False`` for the plain gradient (e.g. when the backbone's gradients are
    summed, not averaged). Centre gradients are never scaled. Without torch.distributed, W = 1.

    **margin_fn.** A callable ``(cosine (N, C_local), labels (N,)) → logits (N, C_local)``,
    where ``labels`` is −1 for rows whose class is on another shard. ``None`` means ArcFace,
    ``functools.partial(margin_logits, s=64.0, m1=1.0, m2=0.5, m3=0.0)``. If it accepts a
    ``norms`` argument (e.g. :class:`AdaFaceMargin`, ``partial(sphereface_logits, m=4)``) it
    also gets the gathered embeddings' L2 norms ``(N,)``. An ``nn.Module`` margin is registered
    as a sub-module, so its buffers are saved.

    **Streaming (``chunk_size``).** With ``chunk_size=k`` each rank never forms its
    ``(N, C_sampled)`` logits: it walks its (sampled) centres ``k`` at a time with an online
    log-sum-exp, combines the row statistics over the ranks as above, and recomputes each chunk
    in backward (:mod:`faceaux.heads.streaming`). The loss and the gradients are those of the
    dense path to float rounding; memory per rank is the centres, their gradient and a few
    ``(N, k)`` blocks; the time is one matrix product more. ``sample_rate=1.0`` with
    ``chunk_size`` is thus an exact, memory-light alternative to sampling. The margin must
    change the target logit only: ``margin_logits`` or ``adaface_logits`` (through
    ``functools.partial``) or an :class:`AdaFaceMargin` (SphereFace's norm-scaled logits are
    refused, naming ``margin_fn``).

    **Bad input and empty batches.** Every rank checks its own input (shapes, dtype, NaN/inf
    embeddings, labels outside ``[0, num_classes)``) and sends the result along with its batch
    size in the size exchange that happens anyway; if any rank's input is bad, *every* rank
    raises the same ``ValueError`` (naming the argument and the bad rank) at once — no rank is
    left waiting in a collective. A rank may hold ``B = 0`` while others do not; when the
    global batch is empty (``N = 0`` on every rank) the loss is an exact 0 that still
    back-propagates (zero gradients).

    **State dict format.** ``weight`` — this rank's centres ``(C_local, D)``; ``_extra_state`` —
    ``{"format": "faceaux.PartialFC/1", "num_classes", "embedding_size", "rank", "world_size",
    "class_start", "class_stop"}``; plus ``margin_fn.*`` buffers when the margin is a module
    (identical on every rank). ``load_state_dict`` refuses a shard of a different slice.
    :meth:`merge_shards` joins the shard state dicts of all ranks into one whole-classifier state
    dict (world size 1); :meth:`reshard_state_dict` cuts a whole state dict, a full centre
    tensor ``(num_classes, D)`` or a list of shard state dicts into the shard of rank ``r`` of
    world size ``w``; :meth:`full_weight` gathers all centres at run time.

    Args:
        embedding_size: D.
        num_classes: C, over all ranks.
        margin_fn: the margin (see above).
        sample_rate: fraction of each shard's centres used per step, in (0, 1].
        process_group: the group to shard over; ``None`` is the default group.
        scale_embedding_grad_by_world_size: see above.
        chunk_size: stream the softmax over this many centres at a time (see above); ``None``
            (default) forms the logits.

    Shape:
        - embeddings: ``(B, D)`` on each rank (B may differ per rank); labels: ``(B,)`` integer in
          ``[0, num_classes)``
        - output: ``()``, the cross-entropy averaged over the global batch ``N = Σ_r B_r``

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> head = PartialFC(8, 20)  # no process group: one process holds all 20 centres
        >>> x, y = torch.randn(6, 8), torch.randint(0, 20, (6,))
        >>> reference = F.cross_entropy(margin_logits(head.full_weight_cosine(x), y), y)
        >>> torch.allclose(head(x, y), reference)
        True
        >>> sampled = PartialFC(8, 20, sample_rate=0.5)
        >>> sampled.local_logits(x, y)[0].shape  # 10 of the 20 centres, positives included
        torch.Size([6, 10])
        >>> streamed = PartialFC(8, 20, chunk_size=6)  # 6 + 6 + 6 + 2 centres, no (6, 20) logits
        >>> streamed.load_state_dict(head.state_dict())
        <All keys matched successfully>
        >>> torch.allclose(streamed(x, y), head(x, y))
        True
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin_fn: MarginFn | None = None,
        sample_rate: float = 1.0,
        process_group=None,
        *,
        scale_embedding_grad_by_world_size: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_sizes(embedding_size, num_classes)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate: expected a value in (0, 1], received {sample_rate}")
        self.distributed = _is_distributed()
        self.process_group = process_group
        if self.distributed:
            self.rank = dist.get_rank(process_group)
            self.world_size = dist.get_world_size(process_group)
        else:
            self.rank, self.world_size = 0, 1
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.class_stop = shard_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_stop - self.class_start
        self.sample_rate = float(sample_rate)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.embedding_grad_scale = (
            float(self.world_size) if scale_embedding_grad_by_world_size else 1.0
        )
        if margin_fn is None:
            margin_fn = functools.partial(margin_logits, s=64.0, m1=1.0, m2=0.5, m3=0.0)
        if not callable(margin_fn):
            raise ValueError(f"margin_fn: expected a callable, received {type(margin_fn)}")
        self.margin_fn = margin_fn
        self.chunk_size = chunk_size
        if chunk_size is not None:
            check_positive_int(chunk_size, "chunk_size")
            target_only_margin(margin_fn)  # refuses, by name, a margin it cannot stream
        signature_of = margin_fn.forward if isinstance(margin_fn, nn.Module) else margin_fn
        self._margin_takes_norms = "norms" in inspect.signature(signature_of).parameters
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.chunk_size is not None:
            return self._streamed_loss(embeddings, labels)
        logits, local_labels, _ = self.local_logits(embeddings, labels)
        return _ShardedCrossEntropy.apply(
            logits, local_labels, self.process_group, self.distributed
        )

    def _streamed_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss streamed over chunks of this rank's (sampled) centres: no ``(N, C)`` logits."""
        embeddings, local_labels, weight, _ = self._shard_inputs(embeddings, labels)
        margin = target_only_margin(self.margin_fn)  # (re-read: AdaFace's statistics move)
        norms = stable_vector_norm(embeddings.detach(), dim=1) if margin.needs_norms else None
        if isinstance(self.margin_fn, AdaFaceMargin) and self.margin_fn.training:
            self.margin_fn._update_statistics(norms)  # inputs validated above, on every rank
        return streamed_margin_loss(
            embeddings,
            weight,
            local_labels,
            margin,
            norms,
            self.chunk_size,
            group=self.process_group,
            distributed=self.distributed,
        )

    def local_logits(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's margin logits for the global batch, before the sharded cross-entropy.

        Returns:
            ``logits (N, C_sampled)``, ``local_labels (N,)`` (column of the target in
            ``logits``, −1 when it is on another rank) and ``class_ids (C_sampled,)`` (the global
            class of each column). ``C_sampled`` is ``C_local`` at ``sample_rate=1``.
        """
        embeddings, local_labels, weight, index = self._shard_inputs(embeddings, labels)
        cosine = normalized_cosine(embeddings, weight)
        with inputs_already_checked():  # validated above, on every rank: no second read
            if self._margin_takes_norms:
                norms = stable_vector_norm(embeddings, dim=1)
                logits = self.margin_fn(cosine, local_labels, norms=norms)
            else:
                logits = self.margin_fn(cosine, local_labels)
        return logits, local_labels, index + self.class_start

    def _shard_inputs(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check, gather and localise a step's inputs; pick the centres (sampling).

        Returns the gathered embeddings ``(N, D)``, the labels as columns of the returned
        centres (−1: on another rank), the centres ``(C_sampled, D)`` and their shard indices.
        """
        message, checks = self._check_inputs(embeddings, labels)
        if self.distributed:
            sizes = self._exchange_sizes(embeddings, message, checks)
            embeddings = _AllGatherWithGrad.apply(
                embeddings, sizes, self.rank, self.process_group, self.embedding_grad_scale
            )
            labels = _gather_padded(labels, sizes, self.process_group)
        else:
            if message is not None:
                raise ValueError(message)
            raise_bad_data(checks)
        labels = labels.long()
        in_shard = (labels >= self.class_start) & (labels < self.class_stop)
        local_labels = torch.where(in_shard, labels - self.class_start, -1)

        weight = self.weight
        if self.num_sample < self.num_local:
            index, local_labels = self.sample_classes(local_labels)
            # (a gather whose backward adds into one zero (C_local, D) buffer in place;
            # index_select's allocates two)
            weight = F.embedding(index, weight)
        else:
            index = torch.arange(self.num_local, device=weight.device)
        return embeddings, local_labels, weight, index

    def _check_inputs(
        self, embeddings: object, labels: object
    ) -> tuple[str | None, list[DataCheck]]:
        """The shape/dtype error message (or None) and the data checks of this rank's input."""
        try:
            check_tensor(
                embeddings,
                "embeddings",
                "(B, D)",
                sizes=(None, self.embedding_size),
                floating=True,
            )
            check_module_input(embeddings, "embeddings", self)
            check_labels(labels, embeddings, "embeddings")
        except ValueError as error:
            return str(error), []
        if not data_checks_enabled(embeddings):
            return None, []
        return None, [finite_check(embeddings, "embeddings"), label_check(labels, self.num_classes)]

    def _exchange_sizes(
        self, embeddings: torch.Tensor, message: str | None, checks: list[DataCheck]
    ) -> list[int]:
        """All-gather every rank's batch size together with its input's validity.

        The size exchange happens anyway (ranks may hold different batch sizes); it also carries
        each rank's shape/dtype error flag, the counts of its data checks (NaN/inf embeddings,
        labels out of range) and its embeddings' dtype, so a bad input on one rank makes every
        rank raise the same ``ValueError`` at once instead of leaving the others waiting in the
        next collective. No extra synchronisation: the sizes are read on the host anyway.
        """
        device = self.weight.device
        zero = torch.zeros((), dtype=torch.int64, device=device)
        counts = [count.to(device=device, dtype=torch.int64) for count, _ in checks]
        counts += [zero] * (2 - len(counts))
        if message is None:
            batch = embeddings.shape[0]
            dtype_code = _DTYPES.index(embeddings.dtype) if embeddings.dtype in _DTYPES else -1
        else:
            batch, dtype_code = 0, -1
        head = torch.tensor([int(message is not None)], dtype=torch.int64, device=device)
        tail = torch.tensor([batch, dtype_code], dtype=torch.int64, device=device)
        local = torch.cat([head, torch.stack(counts), tail])

        def describe(row: list[int]) -> str | None:
            if message is not None:
                return message
            failed = [build(n) for (_, build), n in zip(checks, row[1:3], strict=False) if n]
            return failed[0] if failed else None

        table = _agree_or_raise(local, 3, describe, self.process_group, "PartialFC")
        if len({row[1] for row in table}) > 1:
            names = [str(_DTYPES[row[1]]) if row[1] >= 0 else "?" for row in table]
            raise ValueError(
                f"embeddings: expected the same dtype on every rank, received {names} by rank"
            )
        return [row[0] for row in table]

    def sample_classes(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick this step's centres: all positives of the batch plus random negatives.

        Partial FC §3.2. Uses the global torch RNG (seed it for reproducible sampling).

        Args:
            local_labels: ``(N,)`` target index in this shard, −1 when elsewhere.

        Returns:
            ``index (C_sampled,)`` sorted shard-local indices of the kept centres, with
            ``C_sampled = max(num_sample, #positives)``, and the labels remapped to columns of
            the sampled logits (−1 kept).
        """
        positives = torch.unique(local_labels[local_labels >= 0])
        if positives.numel() >= self.num_sample:
            index = positives
        else:
            score = torch.rand(self.num_local, device=local_labels.device)
            score[positives] = 2.0  # above every random score: always kept
            index = score.topk(self.num_sample).indices.sort().values
        remapped = torch.searchsorted(index, local_labels.clamp_min(0))
        return index, torch.where(local_labels >= 0, remapped, -1)

    # -- state -----------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "num_classes": self.num_classes,
            "embedding_size": self.embedding_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "class_start": self.class_start,
            "class_stop": self.class_stop,
        }

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        keys = ("format", "num_classes", "embedding_size", "class_start", "class_stop")
        if any(state.get(key) != mine[key] for key in keys):
            got = {key: state.get(key) for key in keys}
            want = {key: mine[key] for key in keys}
            raise ValueError(
                f"state_dict: this shard is {want}, received {got}; convert it with "
                "PartialFC.reshard_state_dict(..., rank, world_size)"
            )

    @staticmethod
    def merge_shards(shards: Sequence[Mapping[str, object]]) -> dict:
        """Join the shard state dicts of every rank (any order) into a world-size-1 state dict."""
        if not shards:
            raise ValueError("shards: expected the state dicts of every rank, received none")
        ordered = sorted(shards, key=lambda sd: _extra(sd)["class_start"])
        first = _extra(ordered[0])
        expected_start = 0
        for sd in ordered:
            extra = _extra(sd)
            if extra["num_classes"] != first["num_classes"] or extra["class_start"] != (
                expected_start
            ):
                raise ValueError(
                    f"shards: expected contiguous shards of {first['num_classes']} classes; the "
                    f"shard starting at {extra['class_start']} does not follow class "
                    f"{expected_start}"
                )
            expected_start = extra["class_stop"]
        if expected_start != first["num_classes"]:
            raise ValueError(
                f"shards: they cover classes [0, {expected_start}), expected "
                f"[0, {first['num_classes']})"
            )
        weight = torch.cat([sd["weight"] for sd in ordered])
        merged = {k: v for k, v in ordered[0].items() if not _is_own_key(k)}
        merged["weight"] = weight
        merged["_extra_state"] = {
            **first,
            "rank": 0,
            "world_size": 1,
            "class_start": 0,
            "class_stop": first["num_classes"],
        }
        return merged

    @staticmethod
    def reshard_state_dict(
        source: torch.Tensor | Mapping[str, object] | Sequence[Mapping[str, object]],
        rank: int,
        world_size: int,
    ) -> dict:
        """The state dict of rank ``rank`` of ``world_size`` from any saved form of the centres.

        Args:
            source: the full centres ``(num_classes, D)``; or a PartialFC state dict of world
                size 1 (e.g. from :meth:`merge_shards`); or the shard state dicts of all ranks of
                any earlier world size.
            rank: the target rank.
            world_size: the target world size.

        Examples:
            >>> import torch
            >>> shards = [PartialFC.reshard_state_dict(torch.randn(10, 4), r, 3) for r in range(3)]
            >>> [tuple(sd["weight"].shape) for sd in shards]
            [(4, 4), (3, 4), (3, 4)]
            >>> PartialFC.reshard_state_dict(shards, 1, 2)["weight"].shape
            torch.Size([5, 4])
        """
        if isinstance(source, torch.Tensor):
            check_tensor(source, "source", "(num_classes, D)", floating=True)
            num_classes, embedding_size = source.shape
            full: dict = {
                "weight": source,
                "_extra_state": {"format": STATE_FORMAT, "num_classes": int(num_classes)},
            }
            full["_extra_state"]["embedding_size"] = int(embedding_size)
        elif isinstance(source, Mapping):
            full = PartialFC.merge_shards([source])
        else:
            full = PartialFC.merge_shards(list(source))
        extra = full["_extra_state"]
        start, stop = shard_range(extra["num_classes"], rank, world_size)
        shard = {k: v for k, v in full.items() if not _is_own_key(k)}
        shard["weight"] = full["weight"][start:stop].clone()
        shard["_extra_state"] = {
            "format": STATE_FORMAT,
            "num_classes": extra["num_classes"],
            "embedding_size": extra["embedding_size"],
            "rank": rank,
            "world_size": world_size,
            "class_start": start,
            "class_stop": stop,
        }
        return shard

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """All centres ``(num_classes, D)``, gathered from every rank (a collective call)."""
        if not self.distributed:
            return self.weight.detach().clone()
        sizes = [
            stop - start
            for start, stop in (
                shard_range(self.num_classes, r, self.world_size) for r in range(self.world_size)
            )
        ]
        return _gather_padded(self.weight.detach(), sizes, self.process_group)

    def full_weight_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosines ``(B, num_classes)`` against every centre, e.g. for evaluation (collective)."""
        check_tensor(
            embeddings, "embeddings", "(B, D)", sizes=(None, self.embedding_size), floating=True
        )
        weight = self.weight if not self.distributed else self.full_weight()
        return normalized_cosine(embeddings, weight)

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"classes=[{self.class_start}, {self.class_stop}) on rank {self.rank}/"
            f"{self.world_size}, sample_rate={self.sample_rate}"
        )


def _is_own_key(key: str) -> bool:
    return key in ("weight", "_extra_state")


def _extra(state_dict: Mapping[str, object]) -> dict:
    extra = state_dict.get("_extra_state")
    if not isinstance(extra, Mapping) or extra.get("format") != STATE_FORMAT:
        raise ValueError(
            f"shards: expected PartialFC state dicts with an '_extra_state' of format "
            f"{STATE_FORMAT!r}, received keys {sorted(state_dict)}"
        )
    return dict(extra)
