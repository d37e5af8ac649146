"""Every faceaux layer at once on networks faceaux did not write: timm's and torchvision's
ResNet-18 (through :class:`faceaux.models.BackboneAdapter`), and the adapter's own contract.

timm and torchvision are test-only extras. PyPI's torchvision wheels need a CUDA build of torch,
so in the CPU-torch CI environment these tests skip; CI runs them in a second environment with
``torch==2.14.1 torchvision==0.29.1 timm`` (see ``.ci/run``).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from recognizer_cases import check_gradients, compose_everything, train_steps
from torch import nn

from faceaux import BackboneAdapter, FaceRecognizer
from faceaux.models.iresnet import IResNet


def _skip(reason: str) -> None:
    """Skip, unless FACEAUX_REQUIRE_FOREIGN=1 (CI's foreign-backbone environment): then fail."""
    if os.environ.get("FACEAUX_REQUIRE_FOREIGN") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _timm_resnet18(**kwargs) -> nn.Module:
    try:
        import timm
    except (ImportError, RuntimeError) as error:  # RuntimeError: torchvision built for CUDA
        _skip(f"needs timm with a torchvision matching torch (test-only extra): {error}")
    return timm.create_model("resnet18", pretrained=False, **kwargs)


def _torchvision_resnet18() -> nn.Module:
    try:
        import torchvision
    except (ImportError, RuntimeError) as error:  # RuntimeError: CUDA-built wheel on CPU torch
        _skip(f"needs torchvision matching torch (test-only extra): {error}")
    return torchvision.models.resnet18(weights=None)


STAGES = ("layer1", "layer2", "layer3", "layer4")


@pytest.mark.parametrize("source", ["timm", "torchvision"])
@pytest.mark.parametrize("connectivity", ["1-1", "1-many"])
def test_everything_at_once_on_a_foreign_resnet(source: str, connectivity: str) -> None:
    torch.manual_seed(0)
    if source == "timm":
        network = _timm_resnet18(num_classes=0)  # no classifier: the adapter never runs it
    else:
        network = _torchvision_resnet18()
        network.fc = nn.Identity()
    backbone = BackboneAdapter(network, STAGES, head="gnap", embedding_size=512)
    assert [f["num_chs"] for f in backbone.feature_info] == [64, 128, 256, 512]
    assert [f["reduction"] for f in backbone.feature_info] == [4, 8, 16, 32]
    model = compose_everything(backbone, connectivity)
    assert network.conv1.in_channels == 3 + 51  # grown for the stacked heatmaps
    assert model.part_stage == "layer1"  # the reduction-4 stage
    check_gradients(model)
    losses = train_steps(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    if connectivity == "1-many":
        assert len(model.integration) == 8  # two BasicBlocks per stage


def test_timm_features_only_model() -> None:
    network = _timm_resnet18(features_only=True)
    backbone = BackboneAdapter(network, head="gap", embedding_size=64)  # stages from timm
    assert [f["module"] for f in backbone.feature_info] == ["act1", *STAGES]
    model = FaceRecognizer(backbone).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 64)
    with torch.no_grad():
        maps = backbone.forward_intermediates(
            torch.randn(2, 3, 112, 112), indices=[1, 4], intermediates_only=True
        )
    assert [m.shape[1] for m in maps] == [64, 512]


def test_adapter_matches_a_native_backbone() -> None:
    """An IResNet wrapped like a foreign network gives the native stage contract's outputs."""
    torch.manual_seed(0)
    native = IResNet((1, 1, 1, 1), widths=(8, 16, 32, 64), embedding_size=32).eval()
    adapter = BackboneAdapter(copy.deepcopy(native), STAGES, head="gap", embedding_size=32).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        final, maps = native.forward_intermediates(x)
        adapted_final, adapted_maps = adapter.forward_intermediates(x)
        torch.testing.assert_close(adapted_final, final)
        for a, b in zip(adapted_maps, maps, strict=True):
            torch.testing.assert_close(a, b)
        # the wrapped network alone still runs as before (hooks inert outside the adapter)
        torch.testing.assert_close(adapter.model(x), native(x))
    assert adapter.feature_info[1]["blocks"] == ("layer2.0",)


def test_adapter_tap_changes_the_next_stage() -> None:
    torch.manual_seed(0)
    native = IResNet((1, 1, 1, 1), widths=(8, 16, 32, 64), embedding_size=32).eval()
    adapter = BackboneAdapter(native, STAGES, head="gap", embedding_size=32).eval()
    x = torch.randn(2, 3, 112, 112)
    seen = []

    def tap(name: str, feature: torch.Tensor) -> torch.Tensor:
        seen.append(name)
        return torch.zeros_like(feature) if name == "layer3" else feature

    with torch.no_grad():
        out = adapter.forward_stages(x, tap)
        expected = native.layer4(torch.zeros(2, 32, 14, 14))
    torch.testing.assert_close(out, expected)
    assert seen == [
        "layer1.0",
        "layer1",
        "layer2.0",
        "layer2",
        "layer3.0",
        "layer3",
        "layer4.0",
        "layer4",
    ]


def test_adapter_stops_before_the_classifier() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
            self.classifier_calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.body(x)
            self.classifier_calls += 1
            return x.mean()

    net = Net()
    adapter = BackboneAdapter(net, ["body"], embedding_size=8, input_size=(8, 8))
    calls = net.classifier_calls  # the construction-time dry run ran the whole network
    adapter(torch.randn(2, 3, 8, 8))
    assert net.classifier_calls == calls
    keep_going = BackboneAdapter(
        net, ["body"], embedding_size=8, input_size=(8, 8), stop_early=False
    )
    keep_going(torch.randn(2, 3, 8, 8))
    assert net.classifier_calls == calls + 2


def test_adapter_errors() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="not found"):
        BackboneAdapter(net, ["nope"], input_size=(8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) tensor"):
        BackboneAdapter(net, ["1"], input_size=(8, 8))
    with pytest.raises(ValueError, match="feature_info"):
        BackboneAdapter(net, input_size=(8, 8))
    with pytest.raises(ValueError, match="head"):
        BackboneAdapter(net, ["0"], head="max", input_size=(8, 8))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        BackboneAdapter(lambda x: x, ["0"])
