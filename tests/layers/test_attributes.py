"""AttributeHead, attribute_loss, MultiTaskLoss (eq. 2), majority_vote (§3.2), Table 1 constant."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64

from faceaux import (
    CELEBA_ATTRIBUTE_NAMES,
    CELEBA_FACE_ATTRIBUTES,
    AttributeHead,
    MultiTaskLoss,
    attribute_loss,
    majority_vote,
)
from faceaux.layers.attributes import MULTITASK_STAGES, AttributeSelection


def reference_vote(labels: list[list[float]], identities: list[int]) -> list[list[float]]:
    """Per identity and attribute: the most frequent non-NaN label, smallest on ties."""
    out = []
    for identity in identities:
        row = []
        for m in range(len(labels[0])):
            votes = Counter(
                labels[n][m]
                for n in range(len(labels))
                if identities[n] == identity and not math.isnan(labels[n][m])
            )
            if not votes:
                row.append(float("nan"))
                continue
            best = max(votes.values())
            row.append(min(value for value, count in votes.items() if count == best))
        out.append(row)
    return out


def reference_head(head: AttributeHead, x: torch.Tensor) -> torch.Tensor:
    fc, bn, prelu = head.attribute_fc
    hidden = x @ fc.weight.T
    mean, var = hidden.mean(dim=0), hidden.var(dim=0, unbiased=False)
    hidden = (hidden - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    hidden = torch.where(hidden > 0, hidden, prelu.weight * hidden)
    return hidden @ head.classifier.weight.T + head.classifier.bias


def test_head_matches_reference() -> None:
    head = AttributeHead(6, 3, hidden_features=5, dropout=0.0).double()  # training mode
    with torch.no_grad():
        head.attribute_fc[1].weight.uniform_(0.5, 2.0)
        head.attribute_fc[1].bias.normal_()
        head.attribute_fc[2].weight.uniform_(0.1, 0.4)
    x = torch.randn(8, 6, dtype=torch.float64)
    out = head(x)
    assert out.shape == (8, 3)
    torch.testing.assert_close(out, reference_head(head, x))


def test_head_layout_follows_the_paper() -> None:
    head = AttributeHead(1024, len(CELEBA_FACE_ATTRIBUTES))
    fc, bn, prelu = head.attribute_fc
    assert (fc.in_features, fc.out_features, fc.bias) == (1024, 1024, None)
    assert isinstance(bn, torch.nn.BatchNorm1d)
    assert prelu.weight.numel() == 1024
    assert (head.classifier.in_features, head.classifier.out_features) == (1024, 7)
    assert head.dropout.p == 0.5  # §4.4: dropout 0.5 on the fully connected layers


def test_configuration_2_has_no_attribute_fc() -> None:
    """Fig. 9 configuration 2: W_a straight on the shared embedding, like W_p."""
    head = AttributeHead(6, 3, hidden_features=None, dropout=0.0).double()
    assert head.attribute_fc is None
    assert [name for name, _ in head.named_parameters()] == ["classifier.weight", "classifier.bias"]
    x = torch.randn(1, 6, dtype=torch.float64)  # no batch norm: one sample trains too
    torch.testing.assert_close(head(x), x @ head.classifier.weight.T + head.classifier.bias)
    assert head(x[:0]).shape == (0, 3)
    dropped = AttributeHead(6, 3, hidden_features=None).train()
    assert (dropped(torch.ones(64, 6)) != dropped.eval()(torch.ones(64, 6))).any()
    with pytest.raises(ValueError, match="hidden_features"):
        AttributeHead(6, 3, hidden_features=0)


def test_two_training_stages_of_section_4_4() -> None:
    first, second = MULTITASK_STAGES
    assert (first.iterations, first.lambda_attr, first.lambda_id, first.lr) == (70_000, 0, 1, 0.01)
    assert first.milestones == (40_000, 58_000)
    assert (second.iterations, second.lambda_attr, second.lr) == (30_000, 0.1, 0.001)
    assert second.milestones == (10_000, 20_000)
    criterion = second.loss(attribute_loss="bce")
    assert (criterion.lambda_attr, criterion.lambda_id) == (0.1, 1.0)
    assert criterion.attribute_loss_kind == "bce"
    assert first.loss().lambda_attr == 0.0
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    rates = []
    for stage in (first.scaled(1e-3), second.scaled(1e-3)):
        scheduler = stage.scheduler(optimizer)
        for _ in range(stage.iterations):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    expected = [0.01] * 40 + [1e-3] * 18 + [1e-4] * 12 + [1e-3] * 10 + [1e-4] * 10 + [1e-5] * 10
    assert rates == pytest.approx(expected)
    with pytest.raises(ValueError, match="optimizer: expected"):
        first.scheduler(model)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_loss_matches_reference_and_ignores_unlabelled(kind: str) -> None:
    pred = torch.randn(4, 3, dtype=torch.float64)
    target = torch.randint(0, 2, (4, 3)).double()
    target[0, 1] = float("nan")
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 2] = False
    total, count = 0.0, 0
    for b in range(4):
        for m in range(3):
            t = float(target[b, m])
            if math.isnan(t) or not mask[b, m]:
                continue
            p = float(pred[b, m])
            if kind == "mse":
                total += (p - t) ** 2
            else:
                s = 1 / (1 + math.exp(-p))
                total += -(t * math.log(s) + (1 - t) * math.log(1 - s))
            count += 1
    pred.requires_grad_(True)
    loss = attribute_loss(pred, target, mask, loss=kind)
    torch.testing.assert_close(loss, torch.tensor(total / count, dtype=torch.float64))
    loss.backward()
    assert pred.grad[0, 1] == 0.0
    assert pred.grad[2, 2] == 0.0
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_loss_without_labels_is_zero_with_finite_gradient(kind: str) -> None:
    head = AttributeHead(4, 2, hidden_features=3, loss=kind)
    x = torch.randn(3, 4, requires_grad=True)
    pred = head(x)
    loss = head.loss(pred, torch.full((3, 2), float("nan")))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad, torch.zeros_like(x.grad))
    masked = head.loss(head(x), torch.ones(3, 2), torch.zeros(3, 2))
    assert masked.item() == 0.0


def test_multitask_loss_is_eq2() -> None:
    logits, labels = torch.randn(5, 10), torch.randint(0, 10, (5,))
    pred, target = torch.randn(5, 7), torch.randint(0, 2, (5, 7)).float()
    identity = -torch.log_softmax(logits, dim=1)[torch.arange(5), labels].mean()
    attributes = ((pred - target) ** 2).mean()
    expected = 0.1 * attributes + 1.0 * identity
    torch.testing.assert_close(MultiTaskLoss()(logits, labels, pred, target), expected)
    weighted = MultiTaskLoss(lambda_attr=0.5, lambda_id=2.0)(logits, labels, pred, target)
    torch.testing.assert_close(weighted, 0.5 * attributes + 2.0 * identity)


def test_multitask_loss_first_stage_ignores_attributes() -> None:
    logits, labels = torch.randn(5, 10), torch.randint(0, 10, (5,))
    pred = torch.randn(5, 7, requires_grad=True)
    loss = MultiTaskLoss(lambda_attr=0.0)(logits, labels, pred, torch.ones(5, 7))
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred.grad))


def test_majority_vote_bruce_lee() -> None:
    male = torch.tensor([1] * 14 + [0])
    labels = torch.stack((male, torch.ones(15, dtype=torch.long)), dim=1)
    out = majority_vote(labels, torch.full((15,), 42))
    assert torch.equal(out, torch.ones(15, 2, dtype=torch.long))


@pytest.mark.parametrize("values", [(0.0, 1.0), (-1.0, 1.0), (0.0, 1.0, 2.0)])
def test_majority_vote_matches_reference(values: tuple[float, ...]) -> None:
    generator = torch.Generator().manual_seed(len(values))
    choices = torch.tensor(values)
    labels = choices[torch.randint(0, len(values), (60, 4), generator=generator)]
    labels[torch.rand(60, 4, generator=generator) < 0.1] = float("nan")
    identities = torch.randint(100, 108, (60,), generator=generator) * 1000
    identities[:4] = 5  # an identity whose attributes are all NaN at column 3
    labels[:4, 3] = float("nan")
    out = majority_vote(labels, identities)
    expected = torch.tensor(reference_vote(labels.tolist(), identities.tolist()))
    torch.testing.assert_close(out, expected, equal_nan=True)
    assert torch.isnan(out[:4, 3]).all()


def test_majority_vote_ties_take_the_smallest_value() -> None:
    labels = torch.tensor([[1, -1, 3], [0, 1, 2], [1, -1, 2], [0, 1, 3]])
    out = majority_vote(labels, torch.tensor([9, 9, 9, 9]))
    assert torch.equal(out, torch.tensor([[0, -1, 2]]).expand(4, 3))


def test_majority_vote_large_n() -> None:
    """500k samples, 10k identities: exactly 20 of each identity's 50 labels are flipped."""
    generator = torch.Generator().manual_seed(1)
    identities, samples, attributes = 10_000, 50, 7
    truth = torch.randint(0, 2, (identities, attributes), generator=generator)
    identity = torch.arange(identities).repeat_interleave(samples)
    position = torch.arange(samples).repeat(identities)
    flipped = (position < 20).unsqueeze(1)
    labels = torch.where(flipped, 1 - truth[identity], truth[identity])
    order = torch.randperm(identities * samples, generator=generator)
    out = majority_vote(labels[order], identity[order] * 7 + 3)
    assert torch.equal(out, truth[identity[order]])


def test_celeba_face_attributes_table_1() -> None:
    assert len(CELEBA_ATTRIBUTE_NAMES) == 40
    assert dict(CELEBA_FACE_ATTRIBUTES.groups) == {
        "eye": ("Narrow_Eyes",),
        "nose": ("Big_Nose", "Pointy_Nose"),
        "global": ("Chubby", "Double_Chin", "High_Cheekbones", "Male"),
    }
    assert len(CELEBA_FACE_ATTRIBUTES) == 7
    for name, index in zip(
        CELEBA_FACE_ATTRIBUTES.names, CELEBA_FACE_ATTRIBUTES.indices, strict=True
    ):
        assert CELEBA_ATTRIBUTE_NAMES[index] == name
    # Spot checks against the column order of CelebA's list_attr_celeba.txt.
    assert CELEBA_ATTRIBUTE_NAMES[20] == "Male"
    assert CELEBA_ATTRIBUTE_NAMES[39] == "Young"
    annotations = torch.arange(40).expand(3, 40)
    selected = annotations[:, list(CELEBA_FACE_ATTRIBUTES.indices)]
    assert selected[0].tolist() == [23, 7, 27, 13, 14, 19, 20]
    assert CELEBA_FACE_ATTRIBUTES.group_positions("nose") == (1, 2)


def test_head_gradcheck() -> None:
    gradcheck_f64(AttributeHead(4, 2, hidden_features=3, dropout=0.0), torch.randn(5, 4))


def test_loss_gradcheck() -> None:
    target = torch.rand(3, 4)
    target[0, 0] = float("nan")

    def bce(pred: torch.Tensor) -> torch.Tensor:
        return attribute_loss(pred, target.double(), loss="bce")

    gradcheck_f64(bce, torch.randn(3, 4))


def test_head_works_on_device(device: torch.device) -> None:
    head = AttributeHead(4, 2, hidden_features=3).to(device)
    assert head(torch.randn(3, 4, device=device)).device.type == device.type


def test_majority_vote_on_device(device: torch.device) -> None:
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]], device=device)
    out = majority_vote(labels, torch.tensor([1, 1, 1], device=device))
    assert torch.equal(out.cpu(), torch.tensor([[1, 1]]).expand(3, 2))


@pytest.mark.cuda
def test_cuda_parity() -> None:
    assert_cuda_parity(AttributeHead(16, 7, hidden_features=32), torch.randn(8, 16))


def test_compiles() -> None:
    assert_compiles(AttributeHead(4, 2, hidden_features=3).eval(), torch.randn(3, 4))


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: AttributeHead(4, 2)(torch.randn(3, 5)), "embedding"),
        (lambda: AttributeHead(0, 2), "in_features"),
        (lambda: AttributeHead(4, 2, loss="l1"), "loss"),
        (lambda: AttributeHead(4, 2, dropout=1.0), "dropout"),
        (lambda: attribute_loss(torch.randn(3, 2), torch.randn(3, 3)), "target"),
        (lambda: attribute_loss(torch.randn(3, 2), torch.randn(3, 2), torch.ones(2, 2)), "mask"),
        (lambda: majority_vote(torch.ones(4, 2), torch.ones(3, dtype=torch.long)),
         "identity_labels"),
        (lambda: majority_vote(torch.ones(4, 2), torch.ones(4)), "identity_labels"),
        (lambda: majority_vote(torch.ones(4), torch.ones(4, dtype=torch.long)),
         "attribute_labels"),
        (lambda: MultiTaskLoss(lambda_attr=-1.0), "lambda_attr"),
        (lambda: MultiTaskLoss(attribute_loss="l2"), "attribute_loss"),
        (lambda: MultiTaskLoss()(torch.randn(3, 5), torch.zeros(3, dtype=torch.long),
                                 torch.randn(3, 2), torch.ones(3, 4)), "attribute_target"),
        (lambda: MultiTaskLoss()(torch.randn(3, 5), torch.zeros(3, dtype=torch.long),
                                 torch.randn(3, 2), torch.ones(3, 2), torch.ones(2)),
         "attribute_mask"),
        (lambda: AttributeSelection({"eye": ("Third_Eye",)}, CELEBA_ATTRIBUTE_NAMES), "groups"),
        (lambda: CELEBA_FACE_ATTRIBUTES.group_positions("mouth"), "group"),
        (lambda: MultiTaskLoss()(torch.randn(3, 5), torch.zeros(4, dtype=torch.long),
                                 torch.randn(3, 2), torch.ones(3, 2)), "identity_labels"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        call()


# --- robustness (issue 13) ----------------------------------------------------------------------


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_attribute_head_single_sample_in_training_names_the_module_and_the_cause():
    head = AttributeHead(8, 3, hidden_features=4)
    with pytest.raises(ValueError, match=r"^embedding: AttributeHead in training mode needs"):
        head(torch.randn(1, 8))
    assert head.eval()(torch.randn(1, 8)).shape == (1, 3)


def test_attribute_head_bad_batches_leave_the_statistics_unchanged():
    head = AttributeHead(8, 3, hidden_features=4)
    head(torch.randn(4, 8))
    before = _state(head)
    bad = torch.randn(4, 8)
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^embedding: expected finite values"):
        head(bad)
    empty = torch.randn(0, 8, requires_grad=True)
    out = head(empty)
    assert out.shape == (0, 3)
    out.sum().backward()
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_multitask_loss_with_every_label_ignored_is_zero_and_back_propagates():
    logits = torch.randn(4, 10, requires_grad=True)
    pred = torch.randn(4, 7, requires_grad=True)
    loss = MultiTaskLoss()(logits, torch.full((4,), -100), pred, torch.full((4, 7), math.nan))
    loss.backward()
    assert loss.item() == 0.0  # was NaN
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    empty = MultiTaskLoss()(
        torch.randn(0, 10), torch.zeros(0, dtype=torch.long), torch.randn(0, 7), torch.ones(0, 7)
    )
    assert empty.item() == 0.0


def test_multitask_loss_partially_ignored_labels_average_over_the_labelled_rows():
    logits, labels = torch.randn(4, 10), torch.tensor([1, -100, 3, -100])
    loss = MultiTaskLoss(lambda_attr=0.0)(logits, labels, torch.zeros(4, 7), torch.zeros(4, 7))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.parametrize(
    ("labels", "pattern"),
    [
        (
            torch.tensor([0, 10, 1]),
            r"^identity_labels: expected class indices in \[0, 10\) or -100",
        ),
        (torch.tensor([0, -2, 1]), r"^identity_labels: expected class indices"),
        (torch.tensor([0.0, 1.0, 2.0]), r"^identity_labels: expected an integer tensor"),
        (torch.tensor([True, False, True]), r"^identity_labels: expected an integer tensor"),
    ],
)
def test_multitask_loss_rejects_bad_identity_labels(labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        MultiTaskLoss()(torch.randn(3, 10), labels, torch.randn(3, 7), torch.ones(3, 7))


def test_attribute_losses_reject_non_finite_predictions_and_infinite_targets():
    pred, target = torch.randn(2, 3), torch.ones(2, 3)
    pred[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^pred: expected finite values"):
        attribute_loss(pred, target)
    target[1, 1] = math.inf
    with pytest.raises(ValueError, match=r"^target: expected finite labels or NaN"):
        attribute_loss(torch.randn(2, 3), target)
    with pytest.raises(ValueError, match=r"^attribute_pred: expected finite values"):
        MultiTaskLoss()(torch.randn(2, 5), torch.tensor([0, 1]), pred, torch.ones(2, 3))


def test_majority_vote_continuous_labels_are_not_quadratic():
    """Continuous labels once counted every value for every (identity, attribute) cell:
    20,000 × 7 labels tried to allocate 78 GB. Now only the occurring triples are counted."""
    labels = torch.rand(20_000, 7, generator=torch.Generator().manual_seed(0))
    identities = torch.randint(0, 2_000, (20_000,), generator=torch.Generator().manual_seed(1))
    labels[identities == 0] = 0.5  # identity 0 agrees on every attribute
    out = majority_vote(labels, identities)
    assert (out[identities == 0] == 0.5).all()
    # every other cell's values are distinct: the tie goes to the smallest value
    some = identities == 7
    assert torch.equal(out[some], labels[some].amin(dim=0, keepdim=True).expand_as(out[some]))


def test_majority_vote_bool_and_continuous_against_the_reference():
    labels = torch.tensor([[0.25, 0.5], [0.25, 0.75], [0.75, 0.75], [0.5, math.nan]])
    identities = [3, 3, 3, 8]
    expected = reference_vote(labels.tolist(), identities)
    got = majority_vote(labels, torch.tensor(identities))
    torch.testing.assert_close(got, torch.tensor(expected), equal_nan=True)
    flags = torch.tensor([[True], [False], [False]])
    assert majority_vote(flags, torch.tensor([1, 1, 1])).tolist() == [[False]] * 3
