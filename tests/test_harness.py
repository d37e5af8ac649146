"""The test harness itself: fixtures parametrize as documented and the helpers can fail."""

from __future__ import annotations

import sys

import pytest
import torch
from checks import assert_compiles, gradcheck_f64

GradcheckError = sys.modules["torch.autograd.gradcheck"].GradcheckError


def test_device_fixture_gives_a_usable_device(device):
    x = torch.ones(3, device=device)
    assert x.device.type == device.type
    assert x.sum().item() == 3


def test_dtype_fixture_defaults_to_float32_and_float64(dtype, request):
    assert dtype in (torch.float32, torch.float64)
    assert request.node.callspec.id in ("float32", "float64")


@pytest.mark.dtypes("bfloat16")
def test_dtype_marker_selects_dtypes(dtype):
    assert dtype == torch.bfloat16


def test_device_option_lists_cuda_case(request):
    ids = [item.name for item in request.session.items if "test_device_fixture" in item.name]
    if request.config.getoption("--device") == "all":
        assert any("cuda" in i for i in ids)
        assert any("cpu" in i for i in ids)


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        return grad  # wrong on purpose: d(x²)/dx is 2x


def test_gradcheck_helper_passes_a_correct_function():
    gradcheck_f64(lambda x: (x * x).sum(-1), torch.randn(4, 3))


def test_gradcheck_helper_catches_a_wrong_gradient():
    with pytest.raises(GradcheckError):
        gradcheck_f64(_WrongBackward.apply, torch.randn(4, 3))


def test_compile_helper_matches_eager():
    assert_compiles(torch.nn.Linear(4, 2), torch.randn(3, 4), backend="aot_eager")
