"""The papers' reference models: registry names, forward/backward, wiring, parameter overheads.

Forward/backward runs on small widths (the layer counts, code paths and hooks are the
full models'); full-size models are built (no forward) for their parameter counts. Set
``FACEAUX_FULL_MODELS=1`` to also run every registered model at full size on a (2, 3, 112, 112)
batch (about a minute on a 2-core CPU).
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from model_configs import ALL_MODELS, NARROW, input_size, small_fan, small_kwargs, small_parser

from faceaux import GNAP, PartMaskPooling, StructureCorrelation
from faceaux.bench import count_flops, count_parameters
from faceaux.conventions import FSENET_PARTS, PARSING_CLASSES
from faceaux.models import FaceRecognizer, create_model, get_model_cfg, list_models
from faceaux.models.fanface import fanface_connections
from faceaux.models.fsenet import fsenet


def test_list_models_has_every_name() -> None:
    assert set(ALL_MODELS) <= set(list_models())


def _forward_backward(name: str, kwargs: dict) -> None:
    model = create_model(name, **kwargs).train()
    images = torch.randn(2, 3, *input_size(name), requires_grad=True)
    out = model(images)
    assert out.ndim == 2
    assert out.shape[0] == 2
    assert torch.isfinite(out).all()
    (out.square().sum()).backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    with_grad = [p for p in trainable if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > 0.9 * len(trainable)  # gradients reach (nearly) every parameter
    if hasattr(model, "forward_aux"):
        aux = model.eval().forward_aux(images.detach())
        torch.testing.assert_close(aux["embedding"], model(images.detach()))
    features = model.eval().forward_features(images.detach())
    assert features.ndim == 4


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_small(name: str) -> None:
    _forward_backward(name, small_kwargs(name))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_full_size_graph_on_meta_device(name: str) -> None:
    """Every model at full size: forward and backward on a (2, 3, 112, 112) batch, shapes only."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore", UserWarning)  # random FAN / parser
        model = create_model(name).train()
        images = torch.zeros(2, 3, *input_size(name), requires_grad=True)
        out = model(images)
        out.sum().backward()
    assert out.shape == (2, get_model_cfg(name)["embedding_size"])
    assert images.grad.shape == images.shape


@pytest.mark.skipif(
    os.environ.get("FACEAUX_FULL_MODELS") != "1",
    reason="full-size forward/backward of every model: set FACEAUX_FULL_MODELS=1 (slow on CPU)",
)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward_full_size(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random FAN / parser
        _forward_backward(name, {})


# --- parameter counts and overheads of the full-size models (built, not run) ----------------


@pytest.fixture(scope="module")
def full_counts() -> dict[str, int]:
    counts = {}
    with warnings.catch_warnings(), torch.device("meta"):  # shapes only: no initialisation cost
        warnings.simplefilter("ignore", UserWarning)
        for name in ("iresnet18", "iresnet34", "iresnet18_gnap", "fanface_iresnet34"):
            counts[name] = count_parameters(create_model(name), trainable_only=True)
    return counts


def test_fanface_parameter_overhead_under_3_percent(full_counts: dict[str, int]) -> None:
    # trainable parameters (FAN is frozen); IResNet's output BN weight is fixed in both
    extra = full_counts["fanface_iresnet34"] - full_counts["iresnet34"]
    # 4 Basic Layers (Cl = 256; Ck = 64, 128, 256, 512): Σ 2Ck² + Cl·Ck + 2Cl + 4Ck = 947,968
    # + conv1 grown by 51 heatmap channels: 51 · 64 · 3 · 3 = 29,376
    assert extra == 947_968 + 29_376
    assert extra / full_counts["iresnet34"] < 0.03


def test_gnap_model_parameters(full_counts: dict[str, int]) -> None:
    # GNAP replaces BN2d → FC (25088 × 512 + 512) → BN1d with two fixed-gamma BNs (2 × 512)
    plain = full_counts["iresnet18"]
    removed = 2 * 512 + 25088 * 512 + 512 + 512  # bn2 (w, b), fc (w, b), features bias
    assert full_counts["iresnet18_gnap"] == plain - removed + 2 * 512


def test_gnap_adds_under_a_thousandth_of_the_flops() -> None:
    images = torch.zeros(1, 3, 112, 112, device="meta")
    with torch.device("meta"):
        plain, gnap = create_model("iresnet18"), create_model("iresnet18_gnap")
    plain_flops, gnap_flops = count_flops(plain, images), count_flops(gnap, images)
    # the GNAP model drops the 25088 × 512 FC: fewer matmul/conv FLOPs than the plain model
    assert plain_flops - gnap_flops == 2 * 25088 * 512
    # GNAP's own arithmetic is element-wise (not counted by FlopCounterMode): bound it by hand.
    # Per element of the (512, 7, 7) map: BN (2), square + sum (2), divide + multiply (2),
    # pooling sum (1) → 7 per element; + 2 per channel for the output BN.
    gnap_elementwise = 7 * 512 * 7 * 7 + 2 * 512
    assert gnap_elementwise / plain_flops < 1e-3
    assert isinstance(gnap.gnap, GNAP)


# --- wiring of each paper's model ---------------------------------------------------------


def test_fanface_wiring_and_frozen_fan() -> None:
    assert fanface_connections() == {
        "layer1": "h2l.2.64",
        "layer2": "h2l.2.32",
        "layer3": "h2l.2.16",
        "layer4": "h2l.2.8",
    }
    fan = small_fan()
    model = create_model("fanface_iresnet34", fan=fan, fan_input_size=64, widths=NARROW)
    assert isinstance(model, FaceRecognizer)
    assert model.backbone.conv1.in_channels == 3 + 51
    assert model.integration_points == fanface_connections(fan_input_size=64)
    assert not any(p.requires_grad for p in model.fan.parameters())
    model.train()
    assert not model.fan.training
    images = torch.rand(2, 3, 112, 112) * 2 - 1
    model.eval()
    with torch.no_grad():
        aux = model.forward_aux(images)
        # heatmaps are FAN's last stack on the [0, 1] image resized to FAN's input size
        fan_in = F.interpolate((images + 1) / 2, size=(64, 64), mode="bilinear")
        torch.testing.assert_close(aux["heatmaps"], fan(fan_in))
        # the paper stacks the heatmaps as they are (no per-map rescaling)
        stacked = model.stacker(images, aux["heatmaps"])
        resized = F.interpolate(aux["heatmaps"][:, 17:], size=(112, 112), mode="bilinear")
        torch.testing.assert_close(stacked[:, 3:], resized)
        # integration changes the embedding (γ = 1): the backbone alone gives another result
        plain = model.backbone(stacked)
    assert not torch.allclose(plain, aux["embedding"], atol=1e-3)


def test_fanface_ablation_knobs() -> None:
    fan = small_fan()
    kwargs = {"fan": fan, "fan_input_size": 64, "widths": NARROW}
    h1 = create_model("fanface_iresnet34", heatmap_key="heatmaps.1", **kwargs)
    assert h1.heatmap_key == "heatmaps.1"
    maxed = create_model("fanface_iresnet34", heatmap_normalize="max", **kwargs)
    assert maxed.stacker.normalize == "max"
    none = create_model("fanface_iresnet34", heatmaps="none", **kwargs)
    assert none.stacker is None
    assert none.backbone.conv1.in_channels == 3
    plus = create_model("fanface_iresnet34", heatmaps="all", **kwargs)
    assert set(plus.projection) == {"layer1", "layer2", "layer3", "layer4"}
    many = create_model("fanface_iresnet34", connectivity="1-many", **kwargs)
    assert len(many.integration) == 3 + 4 + 6 + 3
    assert all(layer.learnable_gamma for layer in many.integration.values())
    stacking_only = create_model("fanface_iresnet34", fan_part=None, **kwargs)
    assert len(stacking_only.integration) == 0
    for variant in ("simple", "advanced"):
        model = create_model("fanface_iresnet34", variant=variant, **kwargs)
        assert model.integration["layer1"].variant == variant
    with torch.no_grad():
        for model in (h1, maxed, none, plus, many, stacking_only):
            assert model.eval()(torch.rand(2, 3, 112, 112)).shape == (2, 512)


def test_fanface_warns_without_fan() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        create_model("fanface_iresnet34", widths=NARROW)


def test_fsenet_descriptor_matches_its_parts() -> None:
    assert [PARSING_CLASSES[i] for i in FSENET_PARTS] == [
        "skin",
        "left_eye",
        "right_eye",
        "nose",
        "upper_lip",
        "lower_lip",
    ]
    parser = small_parser()
    model = create_model("fsenet_iresnet50", parsing_net=parser, widths=NARROW).eval()
    assert isinstance(model, FaceRecognizer)
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        aux = model.forward_aux(images)
        net = model.backbone
        features = net.layer2(net.layer1(net.forward_stem(images)))
        assert features.shape == (2, 16, 28, 28)
        scores = F.interpolate(
            parser(F.interpolate(images, size=(128, 128), mode="bilinear")),
            size=(128, 128),
            mode="bilinear",
        )
        probabilities = scores.softmax(dim=1)[:, list(FSENET_PARTS)]
        pooled = F.adaptive_max_pool2d(probabilities, (28, 28))  # 128 → 28, the paper's
        parts = PartMaskPooling()(features, pooled)
        local = StructureCorrelation()(parts)
        # §4.7.2 L2-normalises the global half; Table 8 implies the local one too; then 1 : 0.6
        halves = [F.normalize(net(images), dim=1), 0.6 * F.normalize(local, dim=1)]
        expected = torch.cat(halves, dim=1)
    assert aux["local"].shape == (2, 6 * (16 + 2 * 5))
    assert aux["embedding"].shape == (2, 512 + 6 * (16 + 2 * 5))
    torch.testing.assert_close(aux["parts"], parts)
    torch.testing.assert_close(aux["embedding"], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aux["embedding"][:, :512].norm(dim=1), torch.ones(2))
    torch.testing.assert_close(aux["masks"].sum(dim=1), torch.ones(2, 128, 128))
    model.train()
    assert not model.parser.training
    assert not any(p.requires_grad for p in model.parser.parameters())


@pytest.mark.parametrize(("stage", "size"), [(0, 56), (1, 28), (2, 14)])
def test_fsenet_part_resolution(stage: int, size: int) -> None:
    """Table 12: part features at 56, 28 or 14."""
    model = fsenet((1, 1, 1, 1), parsing_net=small_parser(), widths=NARROW, part_stage=stage)
    assert model.part_stage == f"layer{stage + 1}"
    captured = {}
    model.backbone.get_submodule(model.part_stage)[-1].register_forward_hook(
        lambda _m, _i, out: captured.setdefault("map", out)
    )
    with torch.no_grad():
        out = model.eval().forward_aux(torch.randn(2, 3, 112, 112))
    assert captured["map"].shape[-1] == size
    assert out["parts"].shape == (2, 6, NARROW[stage])


def test_fsenet_warns_and_loads_parser_checkpoint(tmp_path) -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        fsenet((1, 1, 1, 1), widths=NARROW)
    source = small_parser()
    path = tmp_path / "parser.pt"
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fsenet(
            (1, 1, 1, 1), widths=NARROW, parsing_net=small_parser(), parsing_checkpoint=path
        )
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.parser.state_dict()[key], value)


@pytest.mark.parametrize("transform", ["identity", "similarity", "affine", "projective"])
def test_stnface_starts_as_plain_resize(transform: str) -> None:
    model = create_model("stnface_iresnet34", transform=transform, widths=NARROW).eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        aux = model.forward_aux(images)
        resized = F.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False)
        torch.testing.assert_close(aux["aligned"], resized, atol=1e-4, rtol=0)
        torch.testing.assert_close(aux["embedding"], model.backbone(aux["aligned"]))
        assert model.forward_features(images).shape == (2, NARROW[-1], 7, 7)
    torch.testing.assert_close(aux["matrix"], torch.eye(3).expand(2, 3, 3))
    assert model.align.transform == transform


def test_stnface_default_is_projective() -> None:
    assert create_model("stnface_iresnet34", widths=NARROW).align.transform == "projective"


@pytest.mark.parametrize(("name", "convs"), [("mtl_attr_full", 3), ("mtl_attr_fast", 2)])
def test_multitask_structure(name: str, convs: int) -> None:
    with torch.device("meta"):
        model = create_model(name).eval()
        assert model.forward_features(torch.zeros(1, 3, 112, 96)).shape == (1, 512, 5, 4)
    net = model.backbone
    assert len(net.groups[0][0].body) == convs
    assert [len(g) for g in net.groups] == [3, 4 + 2, 6 + 2, 3 + 2]  # + transition conv, pool
    assert [g[-1].body[0][0].out_channels for g in net.groups] == [64, 128, 256, 512]
    assert net.fc.in_features == 512 * 5 * 4
    assert model.embedding_size == 1024
    assert model.attributes.num_attributes == 7
    small = create_model(name, **small_kwargs(name)).eval()
    images = torch.randn(2, 3, 112, 96)
    with torch.no_grad():
        aux = small.forward_aux(images)
        torch.testing.assert_close(aux["attributes"], small.attributes(aux["embedding"]))
        block = small.backbone.groups[0][-1]
        x = torch.randn(1, 8, 6, 5)
        torch.testing.assert_close(block(x), x + block.body(x))
    with pytest.raises(ValueError, match="images"):
        small(torch.randn(1, 3, 112, 112))
