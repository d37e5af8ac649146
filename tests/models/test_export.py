"""Export and compile every registered model: ONNX (+ onnxruntime parity), torch.export,
torch.compile, channels_last.

All models run in their small configurations from ``model_configs.small_kwargs`` (narrow
widths, a small FAN / parser, the full models' layer counts and code paths), batch 2 — the
full-width IResNet-50/100 share every line of code with these, and exporting them on a 2-core
CPU would cost minutes without testing anything more. BatchNorm statistics are first set from
one training-mode batch so that the randomly initialised deep networks have O(1) outputs in
eval mode (as trained ones do); otherwise a 100-layer net's eval outputs reach 1e10 and no
absolute tolerance means anything.

Exceptions:

- ONNX, ``fsenet_iresnet50``: :class:`faceaux.PartMaskPooling` max-pools the 128×128 parsing
  masks to the feature map's 28×28 with ``adaptive_max_pool2d``; the ONNX exporter supports
  adaptive pooling only with a constant output size that divides the input (here the size is
  read from the traced feature shape, and 128 / 28 is not an integer). Marked ``xfail`` (strict,
  so the test reports when it starts working).
- torch.export: none.

ONNX parity: onnxruntime's outputs match PyTorch's to 1e-4 absolute (1e-3 relative for the few
large entries). channels_last: compared in float64 to 1e-10 (in float32 the two memory formats
pick kernels that sum in different orders, ~1e-4 apart after 20+ layers).
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from model_configs import ALL_MODELS, input_size, small_kwargs
from torch import nn

from faceaux.models import create_model

ONNX_EXCEPTIONS = {
    "fsenet_iresnet50": "PartMaskPooling's adaptive_max_pool2d 128→28: the ONNX exporter needs "
    "a constant output size dividing the input",
}
# One model per model class. Inductor code generation costs 20–100 s per model on a 2-core CPU,
# so only the IResNet runs through inductor; the others go through dynamo + AOTAutograd
# ("aot_eager": the same graph capture and functionalisation, without code generation).
COMPILED = [
    ("iresnet_nano", "inductor"),
    ("iresnet18_gnap", "aot_eager"),
    ("mobilefacenet_gnap", "aot_eager"),
    ("fanface_iresnet34", "aot_eager"),
    ("fsenet_iresnet50", "aot_eager"),
    ("stnface_iresnet34", "aot_eager"),
    ("mtl_attr_fast", "aot_eager"),
]


def calibrated(name: str) -> nn.Module:
    """The small model in eval mode, its BatchNorm statistics set from one training batch."""
    torch.manual_seed(0)
    model = create_model(name, **small_kwargs(name))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, *input_size(name)))
    return model.eval()


def images(name: str, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *input_size(name), generator=torch.Generator().manual_seed(1))


def _onnx_params():
    params = []
    for name in ALL_MODELS:
        marks = []
        if name in ONNX_EXCEPTIONS:
            marks.append(pytest.mark.xfail(reason=ONNX_EXCEPTIONS[name], strict=True))
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.parametrize("name", _onnx_params())
def test_onnx_export_matches_onnxruntime(name: str) -> None:
    pytest.importorskip("onnx", reason="ONNX export check needs the onnx extra: faceaux[onnx]")
    ort = pytest.importorskip(
        "onnxruntime", reason="ONNX parity check needs the onnx extra: faceaux[onnx]"
    )
    model = calibrated(name)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python values
        torch.onnx.export(
            model,
            (images(name),),
            buffer,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch: other sizes than the traced one
        x = images(name, batch)
        with torch.no_grad():
            expected = model(x)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert got.shape == expected.shape
        # 1e-4 absolute; 1e-3 relative for the few large entries of deep nets (float32 kernels
        # of onnxruntime and PyTorch sum in different orders)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torch_export(name: str) -> None:
    model = calibrated(name)
    x = images(name)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_last_gives_identical_outputs(name: str) -> None:
    # float64, so that only the memory format differs, not float32 kernels' summation order
    model = calibrated(name).double()
    x = images(name).double()
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("name", "backend"), COMPILED)
def test_torch_compile_forward(name: str, backend: str) -> None:
    model = calibrated(name)
    x = images(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
