"""Identity-stable facial attributes learned jointly with identity (multi-task face recognition).

From "Multi-task deep face recognition with facial attributes"
(ICMR 2017, doi:10.1145/3078971.3078973):

- ``AttributeHead`` (§3.3, Fig. 1, Fig. 9): configuration 1 (the paper's) is the attribute-only
  fully connected layer ``g`` on top of the shared embedding, then the attribute weights ``W_a``;
  ``hidden_features=None`` is configuration 2 (``W_a`` straight on the shared embedding).
- ``attribute_loss``: the attribute loss ``L_a`` (mean squared error in the paper, or binary
  cross-entropy), ignoring unlabelled entries.
- ``MultiTaskLoss`` (eq. 2): ``λ1 · L_a + λ2 · L_p``.
- ``TrainingStage`` / ``MULTITASK_STAGES`` (§4.4): the paper's two training stages (λ1 = 0
  for 70k iterations, then λ1 = 0.1 for 30k at a tenth of the learning rate).
- ``majority_vote`` (§3.2): every image of an identity gets that identity's majority label.
- ``CELEBA_FACE_ATTRIBUTES`` (Table 1): the seven identity-stable CelebA attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from faceaux._checks import (
    DataCheck,
    check_batch_for_training,
    check_module_input,
    check_positive_int,
    check_same_batch,
    check_tensor,
    data_checks_enabled,
    finite_check,
    label_check,
    raise_bad_data,
)

__all__ = [
    "CELEBA_ATTRIBUTE_NAMES",
    "CELEBA_FACE_ATTRIBUTES",
    "MULTITASK_STAGES",
    "AttributeHead",
    "AttributeSelection",
    "MultiTaskLoss",
    "TrainingStage",
    "attribute_loss",
    "majority_vote",
]

_LOSSES = ("mse", "bce")

CELEBA_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
"""The 40 columns of CelebA's ``list_attr_celeba.txt``, in file order (0-based column = index).

Shape:
    A tuple of 40 names, one per column of CelebA's ``(N, 40)`` ±1 annotation matrix.
"""


@dataclass(frozen=True)
class AttributeSelection:
    """Groups of attribute names chosen from a dataset's annotation columns.

    Attributes:
        groups: group name → attribute names, in the order the paper lists them.
        columns: every column name of the annotation file, in file order.
        names: all selected names, group after group (the order of ``indices``).
        indices: 0-based annotation column of each name in ``names``.

    Examples:
        >>> CELEBA_FACE_ATTRIBUTES.names[:3]
        ('Narrow_Eyes', 'Big_Nose', 'Pointy_Nose')
        >>> CELEBA_FACE_ATTRIBUTES.indices
        (23, 7, 27, 13, 14, 19, 20)
    """

    groups: Mapping[str, tuple[str, ...]]
    columns: tuple[str, ...]
    names: tuple[str, ...] = field(init=False)
    indices: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(name for group in self.groups.values() for name in group)
        unknown = [name for name in names if name not in self.columns]
        if unknown:
            raise ValueError(
                f"groups: expected names among the annotation columns, received unknown {unknown}"
            )
        object.__setattr__(self, "groups", MappingProxyType(dict(self.groups)))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "indices", tuple(self.columns.index(n) for n in names))

    def __len__(self) -> int:
        return len(self.names)

    def group_positions(self, group: str) -> tuple[int, ...]:
        """Positions in ``names`` (= columns of the selected labels) of one group's attributes."""
        if group not in self.groups:
            raise ValueError(f"group: expected one of {tuple(self.groups)}, received {group!r}")
        return tuple(self.names.index(name) for name in self.groups[group])


CELEBA_FACE_ATTRIBUTES = AttributeSelection(
    groups={
        "eye": ("Narrow_Eyes",),
        "nose": ("Big_Nose", "Pointy_Nose"),
        "global": ("Chubby", "Double_Chin", "High_Cheekbones", "Male"),
    },
    columns=CELEBA_ATTRIBUTE_NAMES,
)
"""The multi-task paper's Table 1: identity-stable CelebA attributes by group (eye, nose,
global).

Shape:
    Selects 7 of CelebA's 40 columns: ``annotations[:, list(CELEBA_FACE_ATTRIBUTES.indices)]``
    maps ``(N, 40)`` to ``(N, 7)``, columns in ``CELEBA_FACE_ATTRIBUTES.names`` order (the
    ``num_attributes=7`` of [`AttributeHead`][faceaux.AttributeHead]).
"""


def attribute_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    loss: str = "mse",
) -> torch.Tensor:
    """Attribute loss ``L_a`` averaged over the labelled entries only.

    Multi-task paper, §3.3, eq. 2: ``L_a`` is the mean squared error between predictions and
    attribute labels (``loss="mse"``); ``loss="bce"`` uses binary cross-entropy with logits
    (targets in ``[0, 1]``; map CelebA's ±1 labels with ``(a + 1) / 2``).

    An entry is labelled where ``mask`` is true (or non-zero) and ``target`` is not NaN; the loss
    is the mean over labelled entries. Unlabelled entries contribute neither value nor gradient;
    a batch with no labelled entry (or ``B = 0``) gives ``0`` (with a zero gradient), never NaN.
    NaN/inf predictions and ±inf targets raise ``ValueError`` (one device→host read), as do, for
    ``"mse"``, magnitudes so large that the squared error would overflow (1e18 and up in float32
    for a small batch: a diverged model).

    Args:
        pred: predictions (``"mse"``) or logits (``"bce"``).
        target: attribute labels; NaN marks an unlabelled entry.
        mask: optional, true where labelled.
        loss: ``"mse"`` or ``"bce"``.

    Shape:
        - pred, target, mask: ``(B, M)``
        - output: ``()``

    Examples:
        >>> pred = torch.tensor([[0.5, 2.0]])
        >>> attribute_loss(pred, torch.tensor([[1.0, float("nan")]]))
        tensor(0.2500)
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss: expected one of {_LOSSES}, received {loss!r}")
    check_tensor(pred, "pred", "(B, M)", floating=True)
    check_tensor(target, "target", "(B, M)", sizes=tuple(pred.shape))
    if mask is not None:
        check_tensor(mask, "mask", "(B, M)", sizes=tuple(pred.shape))
    if data_checks_enabled(pred):
        raise_bad_data(_attribute_checks(pred, "pred", target, "target", loss))
    return _attribute_loss(pred, target, mask, loss)


def _attribute_checks(
    pred: torch.Tensor, pred_name: str, target: torch.Tensor, target_name: str, loss: str
) -> list[DataCheck]:
    """Finite predictions; targets finite or NaN (NaN marks an unlabelled entry); for MSE,
    magnitudes whose squared error cannot overflow (a diverged model, named as such)."""
    checks = [finite_check(pred, pred_name)]
    if loss == "mse":
        # (p − t)² summed over n entries stays below the dtype's max while |p|, |t| ≤ bound
        bound = math.sqrt(torch.finfo(pred.dtype).max / max(pred.numel(), 1)) / 2
        for tensor, name in ((pred, pred_name), (target, target_name)):
            if tensor.is_floating_point():
                large = torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0).abs() > bound
                checks.append(
                    (
                        large.sum(),
                        lambda n, name=name: (
                            f"{name}: expected magnitudes ≤ {bound:.3g}, whose squared errors "
                            f"cannot overflow {pred.dtype}, received {n} larger entries (a "
                            f"diverged model?)"
                        ),
                    )
                )
    if target.is_floating_point():
        shape = tuple(target.shape)
        checks.append(
            (
                torch.isinf(target).sum(),
                lambda n: (
                    f"{target_name}: expected finite labels or NaN (unlabelled), received {n} "
                    f"±inf entries in shape {shape}"
                ),
            )
        )
    return checks


def _attribute_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, loss: str
) -> torch.Tensor:
    """:func:`attribute_loss` on validated arguments."""
    labelled = (
        ~torch.isnan(target)
        if target.is_floating_point()
        else torch.ones_like(target, dtype=torch.bool)
    )
    if mask is not None:
        labelled = labelled & mask.bool()
    clean = torch.where(
        labelled, target.to(pred.dtype), torch.zeros((), dtype=pred.dtype, device=pred.device)
    )
    if loss == "mse":
        per_entry = (pred - clean).square()
    else:
        per_entry = F.binary_cross_entropy_with_logits(pred, clean, reduction="none")
    weight = labelled.to(pred.dtype)
    return (per_entry * weight).sum() / weight.sum().clamp_min(1.0)


class AttributeHead(nn.Module):
    """Predict facial attributes from a face embedding: the paper's attribute-only FC + ``W_a``.

    Multi-task paper, §3.3, eq. 2 and Fig. 9. Configuration 1 (the paper's choice, the
    default): the shared embedding ``f`` goes through one extra fully connected layer ``g`` used
    for attributes only — ``Linear(in_features, hidden_features, bias=False) → BatchNorm1d →
    PReLU`` (the paper puts BN then PReLU after every FC; the bias is dropped as BN cancels it)
    — then dropout, then ``W_a = Linear(hidden_features, num_attributes)``. Configuration 2
    ("a shared structure of both tasks", ``hidden_features=None``): no ``g``, dropout then
    ``W_a`` straight on ``f``, as ``W_p`` is. Configuration 3 (an independent FC for *each*
    task) is configuration 1 plus an identity-only FC in front of ``W_p``:
    :func:`faceaux.models.multitask.identity_branch`. The output is the raw prediction: the
    regression output for ``loss="mse"`` (the paper's), logits for ``loss="bce"``.

    Args:
        in_features: embedding size ``D`` (1024 in the paper).
        num_attributes: number of attributes ``M`` (7 for ``CELEBA_FACE_ATTRIBUTES``).
        hidden_features: width of ``g`` (1024 in the paper); ``None`` for configuration 2.
        loss: ``"mse"`` or ``"bce"``, used by ``loss()``.
        dropout: dropout probability before ``W_a``; 0.5, the paper's for its fully connected
            layers (§4.4: "Dropout is used for fully connected layers and the ratio is set to
            0.5").

    Bad input: NaN/inf embeddings raise ``ValueError`` (one device→host read) before the batch
    norm sees them; ``B = 1`` in training mode raises ``ValueError`` (its ``BatchNorm1d`` has no
    variance over one sample; configuration 2 has no batch norm and takes it); ``B = 0`` returns
    an empty ``(0, M)`` output without touching the running statistics. Outside autocast the
    embedding must have the dtype of the module's parameters.

    Shape:
        - embedding: ``(B, D)``
        - output: ``(B, M)``

    Examples:
        >>> head = AttributeHead(512, len(CELEBA_FACE_ATTRIBUTES), hidden_features=256)
        >>> pred = head(torch.randn(4, 512))
        >>> head.loss(pred, torch.randint(0, 2, (4, 7)).float()).shape
        torch.Size([])
        >>> shared = AttributeHead(512, 7, hidden_features=None)  # Fig. 9 configuration 2
        >>> shared.attribute_fc is None, shared.classifier.in_features
        (True, 512)
    """

    def __init__(
        self,
        in_features: int,
        num_attributes: int,
        hidden_features: int | None = 1024,
        loss: str = "mse",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_attributes", num_attributes),
        ):
            check_positive_int(value, name)
        if hidden_features is not None:
            check_positive_int(hidden_features, "hidden_features")
        if loss not in _LOSSES:
            raise ValueError(f"loss: expected one of {_LOSSES}, received {loss!r}")
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0.0 <= dropout < 1.0
        ):
            raise ValueError(f"dropout: expected a probability in [0, 1), received {dropout!r}")
        self.in_features = in_features
        self.num_attributes = num_attributes
        self.hidden_features = hidden_features
        self.loss_kind = loss
        self.attribute_fc: nn.Sequential | None = None
        if hidden_features is not None:
            self.attribute_fc = nn.Sequential(
                nn.Linear(in_features, hidden_features, bias=False),
                nn.BatchNorm1d(hidden_features),
                nn.PReLU(hidden_features),
            )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_features or in_features, num_attributes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        check_tensor(
            embedding, "embedding", "(B, D)", sizes=(None, self.in_features), floating=True
        )
        check_module_input(embedding, "embedding", self)
        if self.attribute_fc is not None:
            check_batch_for_training(self, embedding, "embedding")
        raise_bad_data([finite_check(embedding, "embedding")])
        hidden = embedding
        if self.attribute_fc is not None:
            if embedding.shape[0] == 0:  # an empty batch never reaches the batch norm
                linear, _, prelu = self.attribute_fc
                hidden = prelu(linear(embedding))
            else:
                hidden = self.attribute_fc(embedding)
        return self.classifier(self.dropout(hidden))

    def loss(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attribute loss of this head's kind; see ``attribute_loss``."""
        return attribute_loss(pred, target, mask, loss=self.loss_kind)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_attributes={self.num_attributes}, "
            f"hidden_features={self.hidden_features}, loss={self.loss_kind!r}"
        )


class MultiTaskLoss(nn.Module):
    """Joint identity + attribute objective: ``λ1 · L_a + λ2 · L_p`` (multi-task paper, eq. 2).

    ``L_p`` is the identity loss: soft-max cross-entropy of identity logits (``W_p · f``, or a
    margin head's logits) by default, or any ``identity_loss(logits, labels)`` module you pass.
    ``L_a`` is ``attribute_loss`` (MSE in the paper) over labelled attribute entries. The
    defaults ``λ1 = lambda_attr = 0.1``, ``λ2 = lambda_id = 1`` are the paper's fine-tuning stage
    (§4.4; its first stage trains with ``λ1 = 0``).

    Validation (all data read in one device→host transfer): identity labels must be integers
    in ``[0, P)`` or the identity loss's ``ignore_index`` (−100, PyTorch's default);
    logits and attribute predictions finite; attribute targets finite or NaN (unlabelled).
    Empty batches and batches with every label ignored give a zero loss that back-propagates
    (the default identity loss is the sum over labelled rows over their number, at least 1;
    a custom ``identity_loss`` is called as it is).

    Args:
        lambda_attr: ``λ1``, weight of the attribute loss.
        lambda_id: ``λ2``, weight of the identity loss.
        attribute_loss: ``"mse"`` or ``"bce"``.
        identity_loss: module computing ``L_p`` from ``(logits, labels)``; default
            ``nn.CrossEntropyLoss()``.

    Shape:
        - identity_logits: ``(B, P)``; identity_labels: ``(B,)`` int64
        - attribute_pred, attribute_target, attribute_mask: ``(B, M)``
        - output: ``()``

    Examples:
        >>> criterion = MultiTaskLoss()
        >>> logits, labels = torch.randn(4, 10), torch.tensor([0, 3, 3, 9])
        >>> criterion(logits, labels, torch.zeros(4, 7), torch.ones(4, 7)).item() > 0
        True
    """

    def __init__(
        self,
        lambda_attr: float = 0.1,
        lambda_id: float = 1.0,
        attribute_loss: str = "mse",
        identity_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("lambda_attr", lambda_attr), ("lambda_id", lambda_id)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a non-negative float, received {value!r}")
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name}: expected a non-negative float, received {value!r}")
        if identity_loss is not None and not callable(identity_loss):
            raise ValueError(
                f"identity_loss: expected a module (logits, labels) -> loss, received "
                f"{type(identity_loss).__name__}"
            )
        if attribute_loss not in _LOSSES:
            raise ValueError(
                f"attribute_loss: expected one of {_LOSSES}, received {attribute_loss!r}"
            )
        self.lambda_attr = float(lambda_attr)
        self.lambda_id = float(lambda_id)
        self.attribute_loss_kind = attribute_loss
        self.identity_loss = nn.CrossEntropyLoss() if identity_loss is None else identity_loss
        self._default_identity_loss = identity_loss is None

    def forward(
        self,
        identity_logits: torch.Tensor,
        identity_labels: torch.Tensor,
        attribute_pred: torch.Tensor,
        attribute_target: torch.Tensor,
        attribute_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(identity_logits, "identity_logits", "(B, P)", floating=True)
        check_tensor(identity_labels, "identity_labels", "(B,)")
        if (
            identity_labels.is_floating_point()
            or identity_labels.is_complex()
            or (identity_labels.dtype == torch.bool)
        ):
            raise ValueError(
                f"identity_labels: expected an integer tensor of class indices, received dtype "
                f"{identity_labels.dtype}"
            )
        check_same_batch(identity_logits, "identity_logits", identity_labels, "identity_labels")
        check_tensor(attribute_pred, "attribute_pred", "(B, M)", floating=True)
        check_same_batch(identity_logits, "identity_logits", attribute_pred, "attribute_pred")
        shape = tuple(attribute_pred.shape)
        check_tensor(attribute_target, "attribute_target", "(B, M)", sizes=shape)
        if attribute_mask is not None:
            check_tensor(attribute_mask, "attribute_mask", "(B, M)", sizes=shape)
        ignore_index = getattr(self.identity_loss, "ignore_index", -100)
        if data_checks_enabled(identity_logits, identity_labels):
            labels = label_check(
                identity_labels, identity_logits.shape[1], ignore_index, name="identity_labels"
            )
            raise_bad_data(
                [
                    finite_check(identity_logits, "identity_logits"),
                    labels,
                    *_attribute_checks(
                        attribute_pred,
                        "attribute_pred",
                        attribute_target,
                        "attribute_target",
                        self.attribute_loss_kind,
                    ),
                ]
            )
        if self._default_identity_loss:  # mean over labelled rows; 0 (not NaN) if there are none
            per_row = F.cross_entropy(
                identity_logits, identity_labels.long(), ignore_index=ignore_index, reduction="none"
            )
            labelled = (identity_labels != ignore_index).sum().clamp_min(1)
            identity = per_row.sum() / labelled.to(per_row.dtype)
        else:
            identity = self.identity_loss(identity_logits, identity_labels)
        attributes = _attribute_loss(
            attribute_pred, attribute_target, attribute_mask, self.attribute_loss_kind
        )
        return self.lambda_attr * attributes + self.lambda_id * identity

    def extra_repr(self) -> str:
        return (
            f"lambda_attr={self.lambda_attr}, lambda_id={self.lambda_id}, "
            f"attribute_loss={self.attribute_loss_kind!r}"
        )


@dataclass(frozen=True)
class TrainingStage:
    """One stage of the multi-task paper's training schedule (§4.4), as loss and scheduler.

    §4.4 trains in two stages: 70k iterations with ``λ1 = 0, λ2 = 1`` (identity only) at base
    learning rate 0.01, divided by 10 at 40k and 58k; then fine-tunes 30k iterations with
    ``λ1 = 0.1, λ2 = 1`` at 0.001, divided by 10 at 10k and 20k (SGD, mini-batch 40 for the
    Full-Model and 48 for the Fast-Model, identity loss soft-max). :data:`MULTITASK_STAGES`
    holds the two; run them in order on the same model and optimiser::

        for stage in MULTITASK_STAGES:
            criterion, scheduler = stage.loss(), stage.scheduler(optimizer)
            for _ in range(stage.iterations):
                ...  # forward, criterion(identity logits, labels, attributes, targets)
                optimizer.step()
                scheduler.step()  # once per iteration: the milestones count iterations

    Attributes:
        name: ``"train"`` or ``"fine-tune"``.
        iterations: the stage's length in iterations.
        lambda_attr: ``λ1``, the attribute loss weight.
        lambda_id: ``λ2``, the identity loss weight.
        lr: the stage's base learning rate.
        milestones: iterations (from the stage's start) at which the rate is multiplied by
            ``gamma``.
        gamma: the rate's factor at each milestone (1/10).

    Shape:
        No tensors.

    Examples:
        >>> first, second = MULTITASK_STAGES
        >>> first.lambda_attr, second.lambda_attr, second.lr
        (0.0, 0.1, 0.001)
        >>> optimizer = torch.optim.SGD(nn.Linear(4, 2).parameters(), lr=1.0, momentum=0.9)
        >>> quick = second.scaled(0.001)  # 30 iterations, milestones 10 and 20
        >>> scheduler = quick.scheduler(optimizer)
        >>> for _ in range(quick.iterations):
        ...     optimizer.step()
        ...     scheduler.step()
        >>> round(optimizer.param_groups[0]["lr"], 8)
        1e-05
    """

    name: str
    iterations: int
    lambda_attr: float
    lambda_id: float
    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def loss(self, **kwargs) -> MultiTaskLoss:
        """A :class:`MultiTaskLoss` with this stage's ``λ1``, ``λ2`` (kwargs: its other args)."""
        return MultiTaskLoss(lambda_attr=self.lambda_attr, lambda_id=self.lambda_id, **kwargs)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
        """Set every parameter group's rate to ``lr`` and return the stage's step schedule."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer: expected a torch.optim.Optimizer, received {type(optimizer).__name__}"
            )
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.lr
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.milestones), gamma=self.gamma
        )

    def scaled(self, fraction: float) -> TrainingStage:
        """The same stage with its iterations and milestones scaled (for short runs)."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction <= 0:
            raise ValueError(f"fraction: expected a positive number, received {fraction!r}")
        return TrainingStage(
            self.name,
            max(1, round(self.iterations * fraction)),
            self.lambda_attr,
            self.lambda_id,
            self.lr,
            tuple(max(1, round(m * fraction)) for m in self.milestones),
            self.gamma,
        )


MULTITASK_STAGES: tuple[TrainingStage, TrainingStage] = (
    TrainingStage("train", 70_000, 0.0, 1.0, 0.01, (40_000, 58_000)),
    TrainingStage("fine-tune", 30_000, 0.1, 1.0, 0.001, (10_000, 20_000)),
)
"""The multi-task paper's two training stages (§4.4): identity only (``λ1 = 0``) for 70k
iterations at 0.01, then ``λ1 = 0.1`` for 30k at 0.001. See :class:`TrainingStage`.

Shape:
    A tuple of two :class:`TrainingStage`; no tensors.
"""


def majority_vote(attribute_labels: torch.Tensor, identity_labels: torch.Tensor) -> torch.Tensor:
    """Give every sample its identity's most frequent label, per attribute (§3.2 of the paper).

    Multi-task paper, §3.2: attributes predicted per image are made consistent per identity by
    majority voting ("15 images of Bruce Lee, 14 predicted male, one female → all male").

    Labels may be any values (0/1, ±1, class ids, even continuous scores), integer, floating or
    bool. Only the (identity, attribute, value) triples that occur are counted — one sort of the
    ``N·M`` keys (``torch.unique``) and two scatter reductions — so time is O(N·M log(N·M)) and
    memory O(N·M) whatever the number of distinct values; no loop over identities or attributes.

    Ties: among the most frequent values of an (identity, attribute) pair, the **smallest**
    value wins (0 over 1 for 0/1 labels, −1 over +1 for CelebA's ±1), the same on every device.
    Floating labels may use NaN for "no prediction": NaN never votes, and a pair with no vote at
    all stays NaN.

    Args:
        attribute_labels: per-sample attribute labels.
        identity_labels: per-sample identity (any integer ids, not necessarily contiguous).

    Shape:
        - attribute_labels: ``(N, M)``
        - identity_labels: ``(N,)``
        - output: ``(N, M)``, dtype and device of ``attribute_labels``

    Examples:
        >>> labels = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
        >>> majority_vote(labels, torch.tensor([7, 7, 7, 2]))
        tensor([[1, 1],
                [1, 1],
                [1, 1],
                [0, 0]])
    """
    check_tensor(attribute_labels, "attribute_labels", "(N, M)")
    check_tensor(identity_labels, "identity_labels", "(N,)")
    check_same_batch(attribute_labels, "attribute_labels", identity_labels, "identity_labels")
    if identity_labels.is_floating_point() or identity_labels.is_complex():
        raise ValueError(
            f"identity_labels: expected an integer tensor, received dtype {identity_labels.dtype}"
        )
    attribute_labels = attribute_labels.detach()  # a vote has no gradient
    if attribute_labels.is_complex():
        raise ValueError(
            f"attribute_labels: expected real labels, received dtype {attribute_labels.dtype}"
        )
    if attribute_labels.dtype == torch.bool:
        return majority_vote(attribute_labels.to(torch.uint8), identity_labels).bool()
    num_samples, num_attributes = attribute_labels.shape
    if num_samples == 0 or num_attributes == 0:
        return attribute_labels.clone()
    device = attribute_labels.device
    if attribute_labels.is_floating_point():
        votes = ~torch.isnan(attribute_labels)
    else:
        votes = torch.ones_like(attribute_labels, dtype=torch.bool)
    identity_labels = identity_labels.to(device)
    identities, identity_index = torch.unique(identity_labels, return_inverse=True)
    values = torch.unique(attribute_labels[votes])  # sorted ascending
    if values.numel() == 0:
        return attribute_labels.clone()
    num_values, num_cells = values.numel(), identities.numel() * num_attributes
    # Index of every label among the sorted distinct values (NaN entries are masked out below).
    value_index = torch.searchsorted(values, attribute_labels.contiguous()).clamp_max(
        num_values - 1
    )
    attribute_index = torch.arange(num_attributes, device=device)
    cell = identity_index.unsqueeze(1) * num_attributes + attribute_index  # (N, M)
    # Count only the (cell, value) pairs that occur: at most N·M of them, sorted by cell, then
    # by value (the key below), whatever the number of distinct values.
    keys, counts = torch.unique((cell * num_values + value_index)[votes], return_counts=True)
    pair_cell, pair_value = keys // num_values, keys % num_values
    best = torch.zeros(num_cells, dtype=counts.dtype, device=device)
    best = best.scatter_reduce(0, pair_cell, counts, reduce="amax")
    # Ties -> smallest value: among the pairs with the cell's largest count, the least index.
    is_best = counts == best[pair_cell]
    winner = torch.full((num_cells,), num_values, dtype=torch.long, device=device)
    winner = winner.scatter_reduce(0, pair_cell[is_best], pair_value[is_best], reduce="amin")
    result = values[winner.clamp_max(num_values - 1)].view(identities.numel(), num_attributes)
    if attribute_labels.is_floating_point():
        no_vote = (winner == num_values).view(identities.numel(), num_attributes)
        result = result.masked_fill(no_vote, float("nan"))
    return result[identity_index]
