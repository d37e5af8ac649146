"""MobileFaceNet: Table 1 layout, parameter count, GDConv head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from faceaux.models import create_model
from faceaux.models.mobilefacenet import InvertedResidual, MobileFaceNet


@pytest.fixture(scope="module")
def model() -> MobileFaceNet:
    return create_model("mobilefacenet", embedding_size=128)


def test_parameter_count_close_to_paper(model: MobileFaceNet) -> None:
    # MobileFaceNets paper: 0.99 M parameters at D = 128 (our count includes BN and PReLU)
    count = sum(p.numel() for p in model.parameters())
    assert count == 1_003_136
    assert abs(count - 0.99e6) / 0.99e6 < 0.02


def test_table1_resolutions(model: MobileFaceNet) -> None:
    model.eval()
    x = torch.randn(1, 3, 112, 112)
    sizes = []
    with torch.no_grad():
        x = model.conv2_dw(model.conv1(x))
        sizes.append(tuple(x.shape[1:]))
        for block in model.blocks:
            x = block(x)
            sizes.append(tuple(x.shape[1:]))
    assert sizes[0] == (64, 56, 56)
    # bottleneck groups (t, c, n, s) = (2,64,5,2) (4,128,1,2) (2,128,6,1) (4,128,1,2) (2,128,2,1)
    assert len(model.blocks) == 5 + 1 + 6 + 1 + 2
    assert sizes[1] == (64, 28, 28)
    assert sizes[5] == (64, 28, 28)
    assert sizes[6] == (128, 14, 14)
    assert sizes[12] == (128, 14, 14)
    assert sizes[13] == (128, 7, 7)
    assert sizes[15] == (128, 7, 7)
    assert model.gdc.conv.kernel_size == (7, 7)
    assert model.gdc.conv.groups == 512
    assert model.gdc.prelu is None  # linear GDConv


def test_forward_backward_and_head(model: MobileFaceNet) -> None:
    model.train()
    images = torch.randn(2, 3, 112, 112, requires_grad=True)
    out = model(images)
    assert out.shape == (2, 128)
    out.square().sum().backward()
    assert torch.isfinite(images.grad).all()
    model.eval()
    with torch.no_grad():
        fmap = model.forward_features(images)
        assert fmap.shape == (2, 512, 7, 7)
        gdc = model.gdc.bn(torch.nn.functional.conv2d(fmap, model.gdc.conv.weight, groups=512))
        expected = model.features(gdc.flatten(1) @ model.linear.weight.T)
        torch.testing.assert_close(model(images), expected)


def test_inverted_residual_formula() -> None:
    block = InvertedResidual(8, 8, expansion=2, stride=1).eval()
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(block(x), x + block.project(block.depthwise(block.expand(x))))
    strided = InvertedResidual(8, 16, expansion=4, stride=2).eval()
    assert not strided.use_residual
    assert strided(x).shape == (2, 16, 4, 4)
    assert isinstance(strided.depthwise.conv, nn.Conv2d)
    assert strided.depthwise.conv.groups == 32


def test_bad_input(model: MobileFaceNet) -> None:
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 1, 112, 112))
    with pytest.raises(ValueError, match="pooling"):
        MobileFaceNet(pooling="avg")
