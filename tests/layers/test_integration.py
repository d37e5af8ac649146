"""FAN-Face integration (§3.3–3.4): AdaIN, the BL/SL/AL integration layers, expanding the first
convolution, and FANFeatureIntegrator (the recognizer on a BackboneAdapter) on backbones built
here and on IResNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from checks import assert_compiles, assert_cuda_parity, gradcheck_f64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from faceaux import FANFeatureIntegrator
from faceaux.conventions import INTERNAL_51
from faceaux.layers.heatmaps import HeatmapStacker
from faceaux.layers.integration import FANIntegrationLayer, adain, expand_input_channels
from faceaux.models import FAN
from faceaux.models.iresnet import IResNet

# ---------------------------------------------------------------------------------------------
# AdaIN


def reference_adain(content: torch.Tensor, style: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(content)
    for b in range(content.shape[0]):
        for c in range(content.shape[1]):
            cm, cv = content[b, c].mean(), content[b, c].var(unbiased=False)
            sm, sv = style[b, c].mean(), style[b, c].var(unbiased=False)
            out[b, c] = (content[b, c] - cm) / torch.sqrt(cv + eps) * torch.sqrt(sv + eps) + sm
    return out


@settings(max_examples=30, deadline=None)
@given(
    scale=st.floats(0.5, 20.0),
    shift=st.floats(-50.0, 50.0),
    content_scale=st.floats(0.5, 20.0),
    seed=st.integers(0, 2**16),
)
def test_adain_output_has_the_style_statistics(
    scale: float, shift: float, content_scale: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    content = content_scale * torch.randn(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    style = shift + scale * torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    out = adain(content, style, eps=1e-12)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), style.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.std(dim=(-2, -1), unbiased=False),
        style.std(dim=(-2, -1), unbiased=False),
        atol=1e-5,
        rtol=0,
    )


def test_adain_matches_reference_and_statistics_at_default_eps(dtype: torch.dtype) -> None:
    content = torch.randn(2, 4, 7, 7, dtype=dtype)
    style = 2 + 3 * torch.randn(2, 4, 7, 7, dtype=dtype)
    out = adain(content, style)
    torch.testing.assert_close(out, reference_adain(content, style, 1e-5))
    torch.testing.assert_close(out.mean((-2, -1)), style.mean((-2, -1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.std((-2, -1), unbiased=False), style.std((-2, -1), unbiased=False), atol=1e-5, rtol=1e-5
    )


def test_adain_constant_content_is_finite_with_finite_gradients() -> None:
    content = torch.ones(1, 2, 4, 4, requires_grad=True)
    style = torch.randn(1, 2, 4, 4, requires_grad=True)
    out = adain(content, style)
    torch.testing.assert_close(out, style.mean((-2, -1), keepdim=True).expand_as(out).detach())
    out.sum().backward()
    assert torch.isfinite(content.grad).all()
    assert torch.isfinite(style.grad).all()


def test_adain_gradcheck_and_shape_errors() -> None:
    gradcheck_f64(adain, (torch.randn(2, 3, 3, 3), torch.randn(2, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"style.*size 3 at dim 1"):
        adain(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"style.*batch size 1"):
        adain(torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------------------------------------
# FANIntegrationLayer vs a direct re-implementation of Fig. 3


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """BatchNorm written out: batch statistics in training, running ones in eval."""
    if bn.training:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    else:
        mean = bn.running_mean.view(1, -1, 1, 1)
        var = bn.running_var.view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def _prelu(x: torch.Tensor, act: nn.PReLU) -> torch.Tensor:
    return torch.where(x >= 0, x, act.weight.view(1, -1, 1, 1) * x)


def _conv1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    out = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


def reference_layer(layer: FANIntegrationLayer, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] != y.shape[-2:]:
        x = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
    x_aligned = _conv1x1(_bn(x, layer.norm), layer.align)
    y_styled = reference_adain(y, x_aligned, layer.eps)
    if layer.variant == "simple":
        f = y_styled + x_aligned
    else:
        z = torch.cat((y_styled, x_aligned), 1)
        if layer.variant == "basic":
            z = _conv1x1(z, layer.fuse)
        else:
            conv1, bn1, act1, conv3, bn3, act3, conv2 = layer.fuse
            z = _prelu(_bn(_conv1x1(z, conv1), bn1), act1)
            z = _prelu(_bn(F.conv2d(z, conv3.weight, padding=1), bn3), act3)
            z = _conv1x1(z, conv2)
        f = _prelu(_bn(z, layer.bn), layer.act)
    return y + layer.gamma * f


def _randomise(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm/PReLU parameters and running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5)
    return module


@pytest.mark.parametrize("variant", ["basic", "simple", "advanced"])
@pytest.mark.parametrize("training", [True, False])
def test_layer_matches_direct_reimplementation(variant: str, training: bool, dtype) -> None:
    layer = _randomise(FANIntegrationLayer(6, 8, variant, gamma=0.7)).to(dtype).train(training)
    y = torch.randn(3, 8, 5, 5, dtype=dtype)
    x = torch.randn(3, 6, 7, 6, dtype=dtype)  # different size: resized to y's (5, 5)
    with torch.no_grad():
        torch.testing.assert_close(layer(y, x), reference_layer(layer, y, x))


def test_gamma_zero_returns_y_exactly() -> None:
    y, x = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 4, 4)
    fixed = FANIntegrationLayer(6, 8, gamma=0.0)
    assert fixed(y, x) is y
    learnable = FANIntegrationLayer(6, 8, gamma=0.0, learnable_gamma=True)
    out = learnable(y, x)
    assert torch.equal(out, y)
    out.sum().backward()
    assert learnable.gamma.grad is not None
    assert learnable.gamma.grad.abs() > 0  # γ can move away from 0


def test_gamma_scales_the_integration_term() -> None:
    y, x = torch.randn(2, 8, 4, 4), torch.randn(2, 6, 4, 4)
    one = FANIntegrationLayer(6, 8, gamma=1.0).eval()
    three = copy.deepcopy(one)
    three.gamma = 3.0
    torch.testing.assert_close(three(y, x) - y, 3 * (one(y, x) - y))
    assert isinstance(FANIntegrationLayer(6, 8, learnable_gamma=True).gamma, nn.Parameter)


@pytest.mark.parametrize("variant", ["basic", "simple", "advanced"])
def test_layer_gradcheck(variant: str) -> None:
    layer = _randomise(FANIntegrationLayer(3, 4, variant, gamma=0.5, learnable_gamma=True))
    gradcheck_f64(layer, (torch.randn(2, 4, 3, 3), torch.randn(2, 3, 4, 4)))


def test_layer_rejects_bad_shapes() -> None:
    layer = FANIntegrationLayer(6, 8)
    with pytest.raises(ValueError, match=r"x.*size 6 at dim 1.*\(2, 5, 4, 4\)"):
        layer(torch.zeros(2, 8, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"y.*size 8 at dim 1"):
        layer(torch.zeros(2, 7, 4, 4), torch.zeros(2, 6, 4, 4))
    with pytest.raises(ValueError, match=r"x.*batch size 2"):
        layer(torch.zeros(2, 8, 4, 4), torch.zeros(3, 6, 4, 4))
    with pytest.raises(ValueError, match="variant"):
        FANIntegrationLayer(6, 8, "fancy")


def _formula(variant: str, cl: int, ck: int) -> int:
    if variant == "basic":
        return 2 * ck * ck + cl * ck + 2 * cl + 4 * ck
    if variant == "simple":
        return cl * ck + 2 * cl + ck
    cb = ck // 4
    return cl * ck + 2 * cl + 4 * ck + 3 * ck * cb + 9 * cb * cb + 6 * cb


@pytest.mark.parametrize(
    ("variant", "per_stage", "total"),
    [
        ("basic", (25_344, 66_560, 198_144, 657_920), 947_968),
        ("simple", (16_960, 33_408, 66_304, 132_096), 248_768),
        ("advanced", (22_624, 55_488, 153_472, 478_464), 710_048),
    ],
)
def test_parameter_counts_for_iresnet34_widths(variant, per_stage, total) -> None:
    """The docstring's figures (FAN's Cl = 256; IResNet-34 widths), from the real modules."""
    counts = []
    for ck in (64, 128, 256, 512):
        layer = FANIntegrationLayer(256, ck, variant)
        counts.append(sum(p.numel() for p in layer.parameters()))
        assert counts[-1] == _formula(variant, 256, ck)
    assert tuple(counts) == per_stage
    assert sum(counts) == total
    # The paper (§3.5) claims 40K-110K extra parameters in total; the layer as described has more.
    assert total > 110_000
    one_to_many = sum(n * (c + 1) for n, c in zip((3, 4, 6, 3), counts, strict=True))
    if variant == "basic":
        assert one_to_many == 3_504_912  # with one learnable γ_k per block


# ---------------------------------------------------------------------------------------------
# expand_input_channels


def test_expand_input_channels_keeps_rgb_filters() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    before = conv(x)
    old = conv.weight.detach().clone()
    assert expand_input_channels(conv, 4) is conv
    assert conv.in_channels == 7
    assert conv.weight.shape == (5, 7, 3, 3)
    assert torch.equal(conv.weight[:, :3], old)
    assert torch.equal(conv.weight[:, 3:], torch.zeros(5, 4, 3, 3))
    torch.testing.assert_close(conv(torch.cat((x, torch.randn(2, 4, 6, 6)), 1)), before)
    conv(torch.randn(1, 7, 6, 6)).sum().backward()
    assert conv.weight.grad[:, 3:].abs().sum() > 0  # the new filters train
    assert expand_input_channels(conv, 0).in_channels == 7
    with pytest.raises(ValueError, match="groups"):
        expand_input_channels(nn.Conv2d(4, 4, 3, groups=2), 1)
    with pytest.raises(ValueError, match="Conv2d"):
        expand_input_channels(nn.Linear(3, 3), 1)
    with pytest.raises(ValueError, match="extra"):
        expand_input_channels(nn.Conv2d(3, 3, 1), -1)


# ---------------------------------------------------------------------------------------------
# FANFeatureIntegrator


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """A torchvision-style ResNet in miniature: stem, four stages, pooling, linear."""

    def __init__(self, in_channels: int = 3, widths=(8, 16, 24, 32), blocks: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        previous = widths[0]
        for i, width in enumerate(widths, start=1):
            stage = [BasicBlock(previous, width, 2)]
            stage += [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            previous = width
        self.fc = nn.Linear(previous, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(-2, -1)))


H2L = {"layer1": "h2l.2.64", "layer2": "h2l.2.32", "layer3": "h2l.2.16", "layer4": "h2l.2.8"}
FAN_SIZE = 64  # FAN runs on any multiple of 64; 64 keeps the tests fast (native: 256)


@pytest.fixture(scope="module")
def fan() -> FAN:
    """One small-width FAN (random weights, real layout) shared by the integrator tests."""
    torch.manual_seed(11)
    return _randomise(FAN(2, 68, num_features=16))


def _integrated(fan: FAN, **kwargs) -> FANFeatureIntegrator:
    torch.manual_seed(3)
    heatmaps = kwargs.get("heatmaps", "input")
    blocks = 2 if kwargs.get("connectivity") == "1-many" else 1
    in_channels = 3 + (len(INTERNAL_51) if heatmaps != "none" else 0)
    backbone = _randomise(TinyResNet(in_channels, blocks=blocks))
    kwargs.setdefault("connections", H2L)
    model = FANFeatureIntegrator(
        backbone, fan, fan_input_size=FAN_SIZE, input_size=(32, 32), **kwargs
    )
    for layer in model.integration.values():
        _randomise(layer)
    return model


def _manual(model: FANFeatureIntegrator, x: torch.Tensor, features: dict) -> torch.Tensor:
    """The integrated forward pass written out stage by stage (1-1 connectivity)."""
    net = model.backbone.model
    h = F.relu(
        net.bn1(net.conv1(HeatmapStacker(INTERNAL_51, normalize=None)(x, features["heatmaps.2"])))
    )
    for name, key in H2L.items():
        h = model.integration[name](getattr(net, name)(h), features[key])
    return net.fc(h.mean(dim=(-2, -1)))


def _fan_at_64(fan: FAN, images: torch.Tensor) -> dict:
    resized = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
    return fan.forward_features(resized)


def test_integrator_matches_manual_computation(fan) -> None:
    model = _integrated(fan).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _manual(model, x, _fan_at_64(fan, x)))
    assert set(model.integration) == set(H2L)
    assert model.integration["layer3"].frn_channels == 24
    assert model.integration["layer3"].fan_channels == 16
    assert "integration.layer1.align.weight" in model.state_dict()


def test_integrated_model_trains_integration_but_not_fan(fan) -> None:
    model = _integrated(fan).train()
    assert not fan.training
    assert not any(p.requires_grad for p in fan.parameters())
    fan_before = {k: v.clone() for k, v in fan.state_dict().items()}
    layer_before = {k: v.clone() for k, v in model.integration.state_dict().items()}
    backbone_before = model.backbone.model.conv1.weight.detach().clone()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=5e-4)
    logits = model(torch.rand(4, 3, 32, 32))
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in fan.parameters())
    for key, value in fan.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, fan_before[key]), key
    assert not fan.training
    for name in H2L:
        for param in ("align.weight", "fuse.weight", "bn.weight", "act.weight", "norm.weight"):
            key = f"{name}.{param}"
            assert not torch.equal(model.integration.state_dict()[key], layer_before[key]), key
    assert not torch.equal(model.backbone.model.conv1.weight, backbone_before)
    assert not torch.equal(
        model.backbone.model.conv1.weight[:, 3:], torch.zeros_like(backbone_before[:, 3:])
    )


def test_one_to_many_gives_every_block_its_own_learnable_gamma(fan) -> None:
    model = _integrated(fan, connectivity="1-many", gamma=0.5).train()
    expected = {f"layer{i}__{j}" for i in (1, 2, 3, 4) for j in (0, 1)}
    assert set(model.integration) == expected
    gammas = [layer.gamma for layer in model.integration.values()]
    assert all(isinstance(g, nn.Parameter) and g.item() == 0.5 for g in gammas)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(g.grad is not None and g.grad.abs() > 0 for g in gammas)
    # Each block's output is replaced: a manual pass through the blocks agrees.
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = fan.forward_features(F.interpolate(x, size=(64, 64), mode="bilinear"))
        net = model.backbone.model
        h = F.relu(net.bn1(net.conv1(HeatmapStacker(normalize=None)(x, features["heatmaps.2"]))))
        for name, key in H2L.items():
            for j, block in enumerate(getattr(net, name)):
                h = model.integration[f"{name}__{j}"](block(h), features[key])
        torch.testing.assert_close(model(x), net.fc(h.mean(dim=(-2, -1))))


def test_heatmap_modes(fan) -> None:
    x = torch.rand(2, 3, 32, 32)
    plain = _integrated(fan, heatmaps="none").eval()
    assert plain.backbone.model.conv1.in_channels == 3
    assert plain(x).shape == (2, 10)
    # "all" (H2+): at initialisation the per-connection projection is [I | 0], so the output
    # equals the "input" model with the same weights.
    stacked_input = _integrated(fan, heatmaps="input").eval()
    everywhere = _integrated(fan, heatmaps="all").eval()
    everywhere.backbone.load_state_dict(stacked_input.backbone.state_dict())
    everywhere.integration.load_state_dict(stacked_input.integration.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(everywhere(x), stacked_input(x))
        for projection in everywhere.projection.values():
            projection.weight.add_(0.1)
        assert not torch.allclose(everywhere(x), stacked_input(x))
    assert everywhere.projection["layer2"].weight.shape == (16, 16 + 51, 1, 1)
    # Heatmap-only connections (H2+ without feature integration).
    only_heatmaps = _integrated(fan, heatmaps="all", connections=dict.fromkeys(H2L))
    assert len(only_heatmaps.integration) == 0
    assert len(only_heatmaps.projection) == 4


def test_given_fan_features_and_image_range(fan) -> None:
    model = _integrated(fan).eval()
    x = torch.rand(2, 3, 32, 32)
    features = fan.forward_features(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        given = model(x, fan_features=features)
        torch.testing.assert_close(given, _manual(model, x, features))
        model.image_range = (-1.0, 1.0)  # inputs in [-1, 1]: FAN sees (x + 1) / 2
        shifted = model(x * 2 - 1)
        torch.testing.assert_close(shifted, _manual(model, x * 2 - 1, _fan_at_64(fan, x)))
    with pytest.raises(ValueError, match=r"images.*size 3 at dim 1"):
        model(torch.rand(2, 4, 32, 32))


def test_integrator_grows_the_first_convolution(fan) -> None:
    backbone = _randomise(TinyResNet(3))
    reference = copy.deepcopy(backbone).eval()
    model = FANFeatureIntegrator(
        backbone, fan, H2L, fan_input_size=FAN_SIZE, input_size=(32, 32), gamma=0.0
    ).eval()
    assert backbone.conv1.in_channels == 3 + 51
    assert torch.equal(backbone.conv1.weight[:, 3:], torch.zeros(8, 51, 3, 3))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # γ = 0 and zero heatmap filters: exactly the original network
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_integrator_errors(fan) -> None:
    backbone = TinyResNet(3 + 51)
    build = lambda **kw: FANFeatureIntegrator(  # noqa: E731
        backbone, fan, fan_input_size=FAN_SIZE, input_size=(32, 32), **kw
    )
    with pytest.raises(ValueError, match=r"stages: .*not found: \['layer9'\]"):
        build(connections={"layer9": "h2l.2.64"})
    with pytest.raises(ValueError, match=r"unknown FAN feature keys \['h2l\.3\.64'\]"):
        build(connections={"layer1": "h2l.3.64"})
    with pytest.raises(ValueError, match="first convolution takes 5"):
        FANFeatureIntegrator(TinyResNet(5), fan, H2L, fan_input_size=FAN_SIZE, input_size=(32, 32))
    with pytest.raises(ValueError, match="connectivity"):
        build(connections=H2L, connectivity="all")
    with pytest.raises(ValueError, match="heatmaps"):
        build(connections=H2L, heatmaps="some")
    with pytest.raises(TypeError, match="forward_features"):
        FANFeatureIntegrator(backbone, nn.Conv2d(3, 3, 1), H2L, input_size=(32, 32))


def test_hooks_are_inert_outside_the_integrator(fan) -> None:
    model = _integrated(fan).eval()
    bare = copy.deepcopy(model.backbone.model)  # carries the adapter's (inert) hooks along
    stacked = torch.rand(2, 3 + 51, 32, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.model(stacked), bare(stacked))
        integrated = model(x)
        features = _fan_at_64(fan, x)
        plain = bare(HeatmapStacker(normalize=None)(x, features["heatmaps.2"]))
    assert not torch.allclose(integrated, plain)


def test_deepcopy_gives_an_independent_model(fan) -> None:
    model = _integrated(fan).eval()
    twin = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
        twin.integration["layer2"].align.weight.mul_(3)
        assert not torch.allclose(twin(x), model(x))
        torch.testing.assert_close(model(x), _manual(model, x, _fan_at_64(fan, x)))
        torch.testing.assert_close(twin(x), _manual(twin, x, _fan_at_64(twin.fan, x)))


def test_works_on_iresnet(fan) -> None:
    """FAN-Face(H2, 1-1, BL, h2l-2) on our IResNet, built for the 3 + 51 stacked channels."""
    backbone = IResNet(
        (1, 1, 1, 1),
        widths=(8, 16, 24, 32),
        embedding_size=16,
        input_size=(32, 32),
        in_channels=3 + 51,
    )
    model = FANFeatureIntegrator(
        backbone, fan, H2L, fan_input_size=FAN_SIZE, input_size=(32, 32)
    ).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = _fan_at_64(fan, x)
        h = backbone.forward_stem(HeatmapStacker(normalize=None)(x, features["heatmaps.2"]))
        for name, key in H2L.items():
            h = model.integration[name](getattr(backbone, name)(h), features[key])
        torch.testing.assert_close(model(x), backbone.forward_head(h))
    assert [model.integration[n].frn_channels for n in H2L] == [8, 16, 24, 32]


def test_layer_compiles() -> None:
    layer = _randomise(FANIntegrationLayer(3, 4, "basic", learnable_gamma=True)).eval()
    with torch.no_grad():
        assert_compiles(layer, (torch.randn(1, 4, 4, 4), torch.randn(1, 3, 5, 5)))


def test_integrator_compiles() -> None:
    """torch.compile traces FAN, the adapter's hooks and the integration layers as one graph.

    The aot_eager backend checks dynamo's tracing through the forward hooks and AOT autograd;
    inductor's C++ code generation for the whole FAN takes over a minute on a 2-core CPU, far
    beyond the test budget (the integration layer alone is compiled with inductor above).
    """
    torch.manual_seed(5)
    fan = FAN(1, 6, num_features=8, depth=1, input_size=8)
    backbone = nn.Sequential(
        nn.Conv2d(3 + 2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1)
    )
    model = FANFeatureIntegrator(
        backbone,
        fan,
        {"1": "h2l.1.2", "2": "l2h.1.1"},
        landmarks=(0, 5),
        fan_input_size=8,
        input_size=(8, 8),
    ).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.rand(1, 3, 8, 8))
    assert explanation.graph_break_count == 0
    assert_compiles(model, torch.rand(1, 3, 8, 8), backend="aot_eager")


@pytest.mark.cuda
def test_layer_cuda_parity() -> None:
    for variant in ("basic", "simple", "advanced"):
        layer = _randomise(FANIntegrationLayer(6, 8, variant, learnable_gamma=True))
        assert_cuda_parity(layer, (torch.randn(2, 8, 5, 5), torch.randn(2, 6, 7, 7)))


@pytest.mark.cuda
def test_integrator_cuda_parity(fan) -> None:
    assert_cuda_parity(_integrated(fan).train(), torch.rand(2, 3, 32, 32))
