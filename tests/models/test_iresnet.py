"""IResNet: published parameter counts, InsightFace state-dict layout, forward/backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faceaux.models import create_model
from faceaux.models.iresnet import IBasicBlock, IResNet

# InsightFace arcface_torch figures (sum of parameter numels, embedding 512, 112×112 input)
PUBLISHED = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
}
LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_insightface(name: str) -> None:
    model = create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01
    assert count == PUBLISHED[name]  # in fact identical


def test_lresnet18e_is_the_18_layer_ir_network() -> None:
    a, b = create_model("lresnet18e"), create_model("iresnet18")
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


def _bn_entries(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def insightface_layout(layers, embedding_size=512) -> dict[str, tuple[int, ...]]:
    """Key → shape of an arcface_torch ``IResNet`` state dict, written out from its definition."""
    spec: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 3, 3)}
    spec |= _bn_entries("bn1", 64)
    spec["prelu.weight"] = (64,)
    inplanes = 64
    for stage, (blocks, planes) in enumerate(
        zip(layers, (64, 128, 256, 512), strict=True), start=1
    ):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            spec |= _bn_entries(f"{p}.bn1", inplanes)
            spec[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            spec |= _bn_entries(f"{p}.bn2", planes)
            spec[f"{p}.prelu.weight"] = (planes,)
            spec[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            spec |= _bn_entries(f"{p}.bn3", planes)
            if i == 0:
                spec[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                spec |= _bn_entries(f"{p}.downsample.1", planes)
            inplanes = planes
    spec |= _bn_entries("bn2", 512)
    spec["fc.weight"] = (embedding_size, 512 * 7 * 7)
    spec["fc.bias"] = (embedding_size,)
    spec |= _bn_entries("features", embedding_size)
    return spec


def random_insightface_state(layers) -> dict[str, torch.Tensor]:
    state = {}
    for key, shape in insightface_layout(layers).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        elif key.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape) / fan_in**0.5
        elif key.endswith(".weight") and len(shape) == 2:
            state[key] = torch.randn(shape) / shape[1] ** 0.5
        else:
            state[key] = torch.randn(shape) * 0.1 + (1.0 if key.endswith(".weight") else 0.0)
    return state


def reference_forward(state: dict[str, torch.Tensor], layers, x: torch.Tensor) -> torch.Tensor:
    """arcface_torch's eval-mode forward written with functional ops on the state dict."""

    def bn(name, t):
        return F.batch_norm(
            t,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.prelu(bn("bn1", F.conv2d(x, state["conv1.weight"], padding=1)), state["prelu.weight"])
    for stage, blocks in enumerate(layers, start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            stride = 2 if i == 0 else 1
            out = F.conv2d(bn(f"{p}.bn1", x), state[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(f"{p}.bn2", out), state[f"{p}.prelu.weight"])
            out = F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1)
            out = bn(f"{p}.bn3", out)
            if i == 0:
                x = bn(
                    f"{p}.downsample.1", F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=2)
                )
            x = out + x
    x = torch.flatten(bn("bn2", x), 1)
    x = F.linear(x, state["fc.weight"], state["fc.bias"])
    return bn("features", x)


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34"])
def test_state_dict_keys_and_shapes_identical_to_insightface(name: str) -> None:
    ours = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    assert ours == insightface_layout(LAYERS[name])


def test_insightface_checkpoint_loads_strict_and_gives_same_embeddings(tmp_path) -> None:
    layers = LAYERS["iresnet18"]
    state = random_insightface_state(layers)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = create_model("iresnet18", checkpoint_path=path).eval()
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        got = model(images)
        expected = reference_forward(state, layers, images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.abs().mean() > 0.1  # a real, non-degenerate embedding


@pytest.fixture(scope="module")
def nano() -> IResNet:
    return create_model("iresnet_nano")


def test_forward_backward_and_features(nano: IResNet) -> None:
    nano.train()
    images = torch.randn(2, 3, 112, 112, requires_grad=True)
    embedding = nano(images)
    assert embedding.shape == (2, 128)
    embedding.square().sum().backward()
    assert images.grad is not None
    assert torch.isfinite(images.grad).all()
    assert nano.conv1.weight.grad is not None
    assert nano.features.weight.grad is None  # fixed gamma, as InsightFace
    assert not nano.features.weight.requires_grad
    nano.eval()
    with torch.no_grad():
        fmap = nano.forward_features(images)
        assert fmap.shape == (2, 128, 7, 7)
        # the embedding is the output block (BN2d → flatten → FC → BN1d) applied to the map
        expected = nano.features(nano.fc(torch.flatten(nano.bn2(fmap), 1)))
        torch.testing.assert_close(nano(images), expected)
        torch.testing.assert_close(nano.forward_head(fmap), expected)


def test_bad_input(nano: IResNet) -> None:
    with pytest.raises(ValueError, match=r"images: .*size 3 at dim 1"):
        nano(torch.randn(2, 1, 112, 112))
    with pytest.raises(ValueError, match=r"images: .*size 112 at dim 2"):
        nano(torch.randn(2, 3, 96, 112))
    with pytest.raises(ValueError, match="4-D"):
        nano(torch.randn(3, 112, 112))
    with pytest.raises(ValueError, match="pooling"):
        IResNet((1, 1, 1, 1), pooling="avg")


def test_other_input_size_and_channels() -> None:
    model = IResNet(
        (1, 1, 1, 1), widths=(8, 8, 16, 16), input_size=(112, 96), in_channels=4, embedding_size=8
    ).eval()
    out = model(torch.randn(2, 4, 112, 96))
    assert out.shape == (2, 8)
    assert model.fc.in_features == 16 * 7 * 6


def test_grown_stem_accepts_the_stacked_input() -> None:
    """After expand_input_channels on conv1 (FAN-Face eq. 1 on a pretrained model) the input
    check follows the grown convolution, and the output is unchanged on the old channels."""
    from faceaux import expand_input_channels

    model = IResNet((1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_size=8).eval()
    images = torch.randn(2, 3, 112, 112)
    before = model(images)
    expand_input_channels(model.conv1, 5)
    assert model.in_channels == 8
    stacked = torch.cat([images, torch.rand(2, 5, 112, 112)], 1)
    torch.testing.assert_close(model(stacked), before)
    with pytest.raises(ValueError, match=r"images: .*size 8 at dim 1"):
        model(images)


def test_basic_block_matches_formula() -> None:
    block = IBasicBlock(4, 6, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    expected = block.bn3(block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(x))))))
    expected = expected + block.downsample[1](block.downsample[0](x))
    torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 6, 5, 5)
    assert IBasicBlock(6, 6).downsample is None
