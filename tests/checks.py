"""Assertions shared by the layer tests: gradcheck in float64, CPU/CUDA parity, compile smoke.

Import them in a test module with ``from checks import gradcheck_f64, assert_cuda_parity``
(``tests/`` is on ``pythonpath`` in ``pyproject.toml``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _as_tuple(inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def gradcheck_f64(
    fn: Callable[..., torch.Tensor] | nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    eps: float = 1e-6,
) -> None:
    """Run ``torch.autograd.gradcheck`` on ``fn`` in float64, failing the test on a mismatch.

    A module is deep-copied and cast to float64 (its parameters are checked through the
    inputs' gradients only); floating-point inputs are cast to float64 and get
    ``requires_grad=True``, other inputs (labels, indices) are passed as they are.
    """
    if isinstance(fn, nn.Module):
        fn = copy.deepcopy(fn).double()
    args = []
    for x in _as_tuple(inputs):
        if x.is_floating_point():
            x = x.detach().double().requires_grad_(True)
        args.append(x)
    assert torch.autograd.gradcheck(fn, tuple(args), atol=atol, rtol=rtol, eps=eps)


def _flat(out: torch.Tensor | Sequence[torch.Tensor] | dict) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(_as_tuple(out))


def _outputs_and_grads(
    module: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = module(*leaves)
    outs = _flat(out)
    total = sum(o.float().sum() for o in outs if o.is_floating_point())
    total.backward()
    grads = [x.grad for x in leaves] + [p.grad for p in module.parameters()]
    return outs, grads


def assert_cuda_parity(
    module: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> None:
    """Same weights and inputs on CPU and CUDA give ``allclose`` outputs and gradients.

    Gradients are those of the sum of all floating outputs, for every floating input and every
    parameter. Call it from a test marked ``@pytest.mark.cuda`` (skipped without a GPU).
    """
    inputs = _as_tuple(inputs)
    cpu_module = copy.deepcopy(module).cpu()
    cuda_module = copy.deepcopy(module).cuda()
    cpu_out, cpu_grads = _outputs_and_grads(cpu_module, tuple(x.cpu() for x in inputs))
    cuda_out, cuda_grads = _outputs_and_grads(cuda_module, tuple(x.cuda() for x in inputs))
    for a, b in zip(cpu_out, cuda_out, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=atol, rtol=rtol)
    for a, b in zip(cpu_grads, cuda_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b.cpu(), a, atol=atol, rtol=rtol)


def assert_compiles(
    module: nn.Module | Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    backend: str = "inductor",
) -> None:
    """``torch.compile(module)`` runs without graph-break errors and matches eager outputs."""
    inputs = _as_tuple(inputs)
    torch._dynamo.reset()
    expected = module(*inputs)
    compiled = torch.compile(module, backend=backend, fullgraph=False)
    got = compiled(*inputs)
    for a, b in zip(_flat(expected), _flat(got), strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol)
