"""The shared validation helpers name the argument and show expected vs received shapes."""

from __future__ import annotations

import pytest
import torch

from faceaux._checks import check_positive_int, check_same_batch, check_tensor


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
