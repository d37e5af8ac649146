"""Global Norm-Aware Pooling (GNAP): re-weight local features by their L2 norm, then pool.

From "Global Norm-Aware Pooling for Pose-Robust Face Recognition at Low False Positive Rate"
(Chen et al., arXiv:1808.00435, 2018), §3.2, eqs. 1–3. The block replaces the
flatten + FC (or the global depthwise convolution) that maps a backbone's last feature map to the
embedding, and keeps spatial symmetry: permuting the spatial positions leaves its output unchanged.

The block is, in order: BatchNorm with fixed gamma → norm-aware re-weighting (eq. 3) → global
average pooling → BatchNorm with fixed gamma. ``norm_aware_reweight`` is the re-weighting step on
its own; ``FixedGammaBatchNorm`` is MXNet's ``BatchNorm(fix_gamma=True)`` in PyTorch.

Two readings of eq. 2's mean norm ``‖F‖_mean`` (``norm_mean=``):

- ``"sample"`` (default): over the ``W·H`` positions of each sample, as eq. 2 is written — the
  embedding of a face depends on that face only (the same in training, evaluation and any batch).
- ``"batch"``: over every position of every sample in the batch, as InsightFace's own GNAP
  (``symbol_utils.py``, ``fc_type="GNAP"``, by the paper's second author) computes it with
  ``mx.sym.mean(spatial_sqrt)``. The re-weighting of one face then depends on the other faces of
  its batch, also at test time.

``faster_fc_param_groups`` builds the optimiser groups of the paper's "FasterFC" setting (§4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from faceaux._checks import (
    check_batch_for_training,
    check_finite,
    check_module_input,
    check_positive_int,
    check_tensor,
    stable_vector_norm,
)

__all__ = ["GNAP", "FixedGammaBatchNorm", "faster_fc_param_groups", "norm_aware_reweight"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_NORM_MEANS = ("sample", "batch")


def norm_aware_reweight(
    x: torch.Tensor, eps: float = 1e-6, norm_mean: str = "sample"
) -> torch.Tensor:
    """Re-weight every local feature by the sample's mean local-feature norm over its own norm.

    GNAP paper, §3.2, eqs. 1–3: with ``‖F_ij‖`` the L2 norm of the local feature at spatial
    position ``(i, j)`` (over channels, eq. 1) and ``‖F‖_mean`` the mean of those norms over the
    ``H·W`` positions of the same sample (eq. 2), the output is
    ``G[b, :, i, j] = ‖F[b]‖_mean / max(‖F[b, :, i, j]‖, eps) · F[b, :, i, j]`` (eq. 3).

    Every non-zero local feature comes out with norm ``‖F‖_mean``: the block equalises the
    contribution of "easy" (large-norm) and "hard" (small-norm) viewpoints before pooling.
    ``norm_mean="batch"`` takes ``‖F‖_mean`` over all ``B·H·W`` positions instead
    (InsightFace's GNAP; see the module docstring).

    Zero local features: ``eps`` only guards the division. A local feature whose norm is below
    ``eps`` is scaled by ``‖F‖_mean / eps`` instead of being blown up to norm ``‖F‖_mean``; an
    exactly-zero local feature therefore stays exactly zero, and an all-zero sample maps to zeros.
    Values and gradients stay finite (the gradient at an exactly-zero feature is
    ``‖F‖_mean / eps`` times the identity, large but finite). The ratio is invariant to a global
    positive rescaling of ``x`` as long as the local norms stay above ``eps``.

    Norms and the ratio are computed in float32 for float16/bfloat16 inputs, without overflow
    (as ``max|F| · ‖F / max|F|‖``, so features of magnitude 1e20 keep their true norms); the
    result has the dtype of ``x``. NaN/inf features raise ``ValueError`` (one device→host read).

    Args:
        x: feature map.
        eps: lower bound on a local-feature norm in the division.
        norm_mean: ``"sample"`` (eq. 2, per sample) or ``"batch"`` (over the whole batch).

    Shape:
        - x: ``(B, C, H, W)``
        - output: ``(B, C, H, W)``

    Examples:
        >>> x = torch.randn(2, 8, 7, 7)
        >>> g = norm_aware_reweight(x)
        >>> torch.allclose(g.norm(dim=1), x.norm(dim=1).mean(dim=(1, 2), keepdim=True))
        True
        >>> g = norm_aware_reweight(x, norm_mean="batch")
        >>> torch.allclose(g.norm(dim=1), x.norm(dim=1).mean().expand(2, 7, 7))
        True
    """
    check_tensor(x, "x", "(B, C, H, W)", floating=True)
    _check_eps(eps)
    _check_norm_mean(norm_mean)
    check_finite(x, "x")
    return _reweight(x, eps, norm_mean)


def _check_norm_mean(norm_mean: object) -> None:
    if norm_mean not in _NORM_MEANS:
        raise ValueError(f"norm_mean: expected one of {_NORM_MEANS}, received {norm_mean!r}")


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise ValueError(f"eps: expected a positive float, received {eps!r}")


def _reweight(x: torch.Tensor, eps: float, norm_mean: str = "sample") -> torch.Tensor:
    """:func:`norm_aware_reweight` on validated input (eqs. 1–3)."""
    if x.shape[2] * x.shape[3] == 0 or x.shape[0] == 0:
        return x.clone()  # no positions: nothing to re-weight (and no mean over zero norms)
    work = x.float() if x.dtype in _LOW_PRECISION else x
    local_norm = stable_vector_norm(work, dim=1, keepdim=True)  # (B, 1, H, W), eq. 1
    dims = (2, 3) if norm_mean == "sample" else (0, 2, 3)
    mean_norm = local_norm.mean(dim=dims, keepdim=True)  # eq. 2: (B, 1, 1, 1) or (1, 1, 1, 1)
    ratio = mean_norm / local_norm.clamp_min(eps)  # eq. 3
    return x * ratio.to(x.dtype)


class FixedGammaBatchNorm(nn.Module):
    """Batch normalisation whose scale (gamma) is fixed to 1: only the shift (beta) is learned.

    The GNAP paper's "BN with fixed gamma" (MXNet's ``BatchNorm(fix_gamma=True)``). There is no
    weight parameter at all, so no optimiser, ``requires_grad_(True)`` or ``load_state_dict``
    can change the scale. The normalisation itself is a ``BatchNorm1d``/``BatchNorm2d`` child
    with ``affine=False`` (so ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts it) and the
    learned shift is the parameter ``bias``. ``state_dict`` keys: ``bias``, ``norm.running_mean``,
    ``norm.running_var``, ``norm.num_batches_tracked``.

    Args:
        num_features: number of channels ``C``.
        spatial: ``True`` for ``(B, C, H, W)`` inputs (BatchNorm2d), ``False`` for ``(B, C)``.
        eps: added to the variance, as in ``nn.BatchNorm2d``.
        momentum: running-statistics momentum, as in ``nn.BatchNorm2d``.

    Shape:
        - input: ``(B, C, H, W)`` if ``spatial`` else ``(B, C)``
        - output: same as input

    Examples:
        >>> bn = FixedGammaBatchNorm(8, spatial=False)
        >>> sorted(name for name, _ in bn.named_parameters())
        ['bias']
        >>> bn(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(
        self, num_features: int, spatial: bool, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        norm_class = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        self.norm = norm_class(num_features, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.bias.view(-1, 1, 1) if self.spatial else self.bias
        return self.norm(x) + shift.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}, spatial={self.spatial}, gamma=1 (fixed)"


class GNAP(nn.Module):
    """Global Norm-Aware Pooling: a spatially symmetric map from a feature map to an embedding.

    GNAP paper, §3.2, Fig. 2 and eqs. 1–3. The block is
    ``FixedGammaBatchNorm2d → norm_aware_reweight (eq. 3) → global average pooling →
    FixedGammaBatchNorm1d``. Both batch norms have gamma fixed to 1 (no weight parameter) and a
    learned shift; the re-weighting's mean norm (eq. 2) is taken per sample over its ``H·W``
    positions (``norm_mean="batch"``: over the whole batch, as InsightFace's implementation
    does — the module docstring compares the two). The whole block has ``2·C`` learned
    parameters.

    ``out_features`` (when set and different from ``C``): the paper allows "pointwise convolution
    layers before or after the GNAP block" to change the channel number. This module puts it
    after: a bias-free ``Linear(C, out_features)`` (a 1×1 convolution on the pooled vector) and a
    third fixed-gamma BatchNorm1d after the block above. Put your own 1×1 convolution in front of
    the block if you want to project before pooling.

    Zero local features after the first batch norm stay zero in the re-weighting (see
    ``norm_aware_reweight``); outputs and gradients are finite.

    Bad input: NaN/inf features raise ``ValueError`` (one device→host read) before any batch
    norm sees them, so the running statistics never absorb them; ``B = 1`` in training mode
    raises ``ValueError`` (the pooled ``(B, C)`` batch norm has no variance over one sample);
    ``B = 0`` returns an empty ``(0, out_features)`` output without touching the statistics.
    Outside autocast the features must have the dtype of the module's parameters.

    Args:
        channels: number of input channels ``C``.
        out_features: embedding size; ``None`` (or ``C``) keeps ``C`` and adds no projection.
        eps: lower bound on a local-feature norm in the re-weighting's division.
        norm_mean: ``"sample"`` (eq. 2 per sample, default) or ``"batch"`` (InsightFace's).

    Shape:
        - features: ``(B, C, H, W)``
        - output: ``(B, C)``, or ``(B, out_features)``

    Examples:
        >>> gnap = GNAP(64, out_features=32)
        >>> gnap(torch.randn(4, 64, 7, 7)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        channels: int,
        out_features: int | None = None,
        eps: float = 1e-6,
        norm_mean: str = "sample",
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        if out_features is not None:
            check_positive_int(out_features, "out_features")
        _check_eps(eps)
        _check_norm_mean(norm_mean)
        self.eps = eps
        self.norm_mean = norm_mean
        self.out_features = channels if out_features is None else out_features
        self.input_norm = FixedGammaBatchNorm(channels, spatial=True)
        self.output_norm = FixedGammaBatchNorm(channels, spatial=False)
        if self.out_features != channels:
            self.projection: nn.Linear | None = nn.Linear(channels, self.out_features, bias=False)
            self.projection_norm: FixedGammaBatchNorm | None = FixedGammaBatchNorm(
                self.out_features, spatial=False
            )
        else:
            self.projection = None
            self.projection_norm = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_tensor(
            features,
            "features",
            "(B, C, H, W)",
            sizes=(None, self.channels, None, None),
            floating=True,
        )
        if features.shape[2] * features.shape[3] == 0:
            raise ValueError(
                f"features: expected a feature map of at least 1×1 (B, C, H, W), received shape "
                f"{tuple(features.shape)}"
            )
        check_module_input(features, "features", self)
        check_batch_for_training(self, features, "features")
        check_finite(features, "features")
        if features.shape[0] == 0:  # an empty batch: no statistics to update, or to use
            x = features.mean(dim=(2, 3))
            return x if self.projection is None else self.projection(x)
        x = self.input_norm(features)
        x = _reweight(x, self.eps, self.norm_mean)
        x = self.output_norm(x.mean(dim=(2, 3)))
        if self.projection is not None and self.projection_norm is not None:
            x = self.projection_norm(self.projection(x))
        return x

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, out_features={self.out_features}, eps={self.eps}, "
            f"norm_mean={self.norm_mean!r}"
        )


def faster_fc_param_groups(
    model: nn.Module,
    classifier: nn.Module,
    lr: float,
    classifier_lr_scale: float = 10.0,
    weight_decay: float = 5e-4,
) -> list[dict]:
    """Optimiser parameter groups of the GNAP paper's "FasterFC" setting.

    GNAP paper, §4: "Set the learning rate of the last FC layer (that is not included in the
    feature embedding CNN) to be 10x over the learning rate of the other layers. And set all the
    weight decay parameters to be 5e-4." The last FC layer is the classifier that the margin
    loss trains (e.g. :class:`faceaux.ArcFace`'s class centres), not the embedding's own FC.
    Table 1's LResNet18E(FasterFC), (GAP) and (GNAP) rows and Table 2's MobileFaceNet++ are
    trained this way. Every parameter of ``model`` goes into a group with ``lr`` and every
    parameter of ``classifier`` into one with ``lr · classifier_lr_scale``, both with
    ``weight_decay``; a parameter shared by both counts as the classifier's, and empty groups
    are left out.

    Args:
        model: the embedding network.
        classifier: the last FC layer (a margin head or an ``nn.Linear``).
        lr: the embedding network's learning rate.
        classifier_lr_scale: the classifier's factor (10 in the paper).
        weight_decay: every group's weight decay (5e-4 in the paper).

    Returns:
        A list of ``{"params", "lr", "weight_decay"}`` dicts for any ``torch.optim`` optimiser.

    Shape:
        No tensors: one or two parameter groups (embedding network first, classifier second).

    Examples:
        >>> from faceaux import ArcFace
        >>> model, head = nn.Linear(8, 4), ArcFace(4, 10)
        >>> groups = faster_fc_param_groups(model, head, lr=0.1)
        >>> [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        [(0.1, 0.0005, 2), (1.0, 0.0005, 1)]
        >>> optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    """
    for name, value in (("model", model), ("classifier", classifier)):
        if not isinstance(value, nn.Module):
            raise ValueError(f"{name}: expected an nn.Module, received {type(value).__name__}")
    for name, value, low in (
        ("lr", lr, 0.0),
        ("classifier_lr_scale", classifier_lr_scale, 0.0),
        ("weight_decay", weight_decay, None),
    ):
        bad = isinstance(value, bool) or not isinstance(value, (int, float))
        if bad or not math.isfinite(value) or (value <= low if low is not None else value < 0):
            kind = "a positive" if low is not None else "a non-negative"
            raise ValueError(f"{name}: expected {kind} finite number, received {value!r}")
    head_ids = {id(p) for p in classifier.parameters()}
    body, seen = [], set(head_ids)
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            body.append(parameter)
    head = list({id(p): p for p in classifier.parameters()}.values())
    groups = [
        {"params": body, "lr": lr, "weight_decay": weight_decay},
        {"params": head, "lr": lr * classifier_lr_scale, "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]
