"""The shared validation helpers name the argument and show expected vs received shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from faceaux._checks import (
    check_batch_for_training,
    check_finite,
    check_finite_float,
    check_module_input,
    check_positive_int,
    check_same_batch,
    check_tensor,
    data_checks_enabled,
    finite_check,
    label_check,
    raise_bad_data,
    stable_normalize,
    stable_vector_norm,
)


def test_check_tensor_accepts_matching_tensor():
    check_tensor(torch.zeros(2, 3, 4, 5), "x", "(B, C, H, W)", sizes=(None, 3, None, None))


def test_check_tensor_wrong_ndim_message():
    with pytest.raises(ValueError, match=r"features: expected a 4-D tensor \(B, C, H, W\), "):
        check_tensor(torch.zeros(2, 3), "features", "(B, C, H, W)")


def test_check_tensor_wrong_size_message():
    with pytest.raises(ValueError, match=r"size 3 at dim 1, received shape \(2, 4\)"):
        check_tensor(torch.zeros(2, 4), "x", "(B, C)", sizes=(None, 3))


def test_check_tensor_floating():
    with pytest.raises(ValueError, match="floating-point"):
        check_tensor(torch.zeros(2, 4, dtype=torch.long), "x", "(B, C)", floating=True)


def test_check_tensor_rejects_non_tensor():
    with pytest.raises(ValueError, match="received list"):
        check_tensor([1, 2], "x", "(B, C)")


def test_check_same_batch():
    check_same_batch(torch.zeros(2, 3), "a", torch.zeros(2), "b")
    with pytest.raises(ValueError, match=r"masks: expected batch size 2"):
        check_same_batch(torch.zeros(2, 3), "features", torch.zeros(3, 1), "masks")


def test_check_positive_int():
    assert check_positive_int(3, "k") == 3
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="k: expected a positive int"):
            check_positive_int(bad, "k")


# --- data checks and the safe norm (issue 13) ---------------------------------------------------


def test_raise_bad_data_reads_all_checks_and_raises_the_first_failure():
    x = torch.tensor([1.0, math.nan, math.inf])
    labels = torch.tensor([0, 5, -3])
    with pytest.raises(ValueError, match=r"^x: expected finite values, received 2 NaN/inf"):
        raise_bad_data([finite_check(x, "x"), label_check(labels, 4)])
    with pytest.raises(ValueError, match=r"^labels: expected class indices in \[0, 4\) or -3, "):
        raise_bad_data([finite_check(x[:1], "x"), label_check(labels, 4, ignore_index=-3)])
    raise_bad_data([finite_check(x[:1], "x"), label_check(labels[:1], 4)])
    raise_bad_data([])


@pytest.mark.parametrize("precision", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finite_check_finds_one_bad_entry_anywhere_and_counts_them_all(bad, precision):
    dtype = precision  # the conftest's ``dtype`` fixture takes that name
    x = torch.randn(3, 5, 7).to(dtype)
    check_finite(x, "x")
    check_finite(torch.full((4,), torch.finfo(dtype).max, dtype=dtype), "x")  # huge but finite
    for index in [(0, 0, 0), (2, 4, 6), (1, 2, 3)]:
        y = x.clone()
        y[index] = bad
        with pytest.raises(ValueError, match=r"^x: expected finite values, received 1 NaN/inf"):
            check_finite(y, "x")
    y = x.clone().requires_grad_(True)
    z = y * torch.tensor([1.0, math.nan, math.inf, 1.0, -math.inf], dtype=dtype).reshape(5, 1)
    with pytest.raises(ValueError, match=r"received 63 NaN/inf entries in shape \(3, 5, 7\)"):
        check_finite(z, "x")
    check_finite(x[:0], "x")  # empty: nothing to check
    check_finite(torch.tensor([1, 2]), "x")  # integers are always finite


def test_label_check_message_names_the_argument_and_the_range():
    with pytest.raises(ValueError, match=r"^pairs: expected row indices in \[0, 3\), received 1 "):
        raise_bad_data([label_check(torch.tensor([0, 3]), 3, name="pairs", what="row indices")])


def test_data_checks_are_skipped_for_meta_tensors():
    meta = torch.empty(3, device="meta")
    assert not data_checks_enabled(meta)
    assert data_checks_enabled(torch.zeros(3))
    check_finite(meta, "x")  # nothing to read: no error


def test_check_finite_float():
    assert check_finite_float(2, "s", positive=True) == 2.0
    for bad in (math.nan, math.inf, 0.0, -1, True, "1"):
        with pytest.raises(ValueError, match=r"^s: expected a finite number > 0"):
            check_finite_float(bad, "s", positive=True)
    assert check_finite_float(-1.5, "m") == -1.5


def test_check_batch_for_training_names_module_and_cause():
    bn = nn.BatchNorm1d(3)
    check_batch_for_training(bn, torch.zeros(2, 3), "x")
    with pytest.raises(ValueError, match=r"^x: BatchNorm1d in training mode needs a batch of"):
        check_batch_for_training(bn, torch.zeros(1, 3), "x")
    check_batch_for_training(bn.eval(), torch.zeros(1, 3), "x")


def test_check_module_input_dtype_and_device():
    linear = nn.Linear(3, 2)
    check_module_input(torch.zeros(1, 3), "x", linear)
    with pytest.raises(ValueError, match=r"^x: expected dtype torch.float32 \(that of Linear"):
        check_module_input(torch.zeros(1, 3, dtype=torch.float16), "x", linear)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_module_input(torch.zeros(1, 3, dtype=torch.bfloat16), "x", linear)
    with pytest.raises(ValueError, match=r"^x: expected a tensor on cpu"):
        check_module_input(torch.zeros(1, 3, device="meta"), "x", linear)
    check_module_input(torch.zeros(1, 3, dtype=torch.float16), "x", nn.ReLU())  # no parameters


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e20, 1e35])
def test_stable_vector_norm_neither_overflows_nor_underflows(scale):
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]]) * scale
    x.requires_grad_(True)
    norm = stable_vector_norm(x, dim=1)
    torch.testing.assert_close(norm, torch.tensor([5.0 * scale, 0.0]))
    norm.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    if scale >= 1:  # (below F.normalize's eps = 1e-12, both divide by eps instead)
        torch.testing.assert_close(stable_normalize(x.detach())[0], torch.tensor([0.6, 0.8]))


def test_stable_vector_norm_matches_vector_norm_in_float64():
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    for dim in (1, (1, 2)):
        torch.testing.assert_close(
            stable_vector_norm(x, dim, keepdim=True),
            torch.linalg.vector_norm(x, dim=dim, keepdim=True),
            rtol=1e-15,
            atol=0,
        )
